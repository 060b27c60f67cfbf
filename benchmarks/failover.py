"""Failover: from a partition leader's SIGKILL to the first acknowledged write, over several trials.

    python -m benchmarks.failover                       # 5 trials, 3 brokers, RF 3
    python -m benchmarks.failover --trials 10 --json /tmp/failover.json
    python -m benchmarks.failover --set raft_tick_ms=50  # broker config key=value (repeatable)

One cluster of three real `broker serve` processes (`EmbeddedCluster`) and one topic of one
partition at replication factor 3. A producer (the SDK's defaults: acks=all, idempotent) writes
small records to it one after another, so the client always has a write in flight, as a real
application would. Each trial:

1. waits until the partition has three in-sync replicas and the producer has had acknowledgements;
2. kills the partition's leader with SIGKILL, and at once sends a probe record through the same
   producer (`send_and_wait`);
3. measures, from the kill, (a) **ack**: until the probe is acknowledged (acks=all: a majority of
   the two survivors stored it, the new leader committed it), the issue-15 target (<= 1.5 s); and
   (b) **elected**: until a surviving broker's metadata names another leader (polled every
   `POLL_S`, so up to that much late), which is the election plus the leader report;
4. starts the killed broker again (same data, same port) and waits until it is back in sync.

Prints each trial and p50/max of both figures; writes `{"trials": [...], "summary": {...}}` to
benchmarks/results/failover.json (git-ignored) or `--json PATH`. The machine may be shared: the
figures are wall-clock, so run it on a quiet machine when comparing changes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import trio

from client import aio
from client.embedded_cluster import EmbeddedCluster
from client.errors import ClientError
from wire.error_codes import BrokerError

TOPIC = "failover-bench"
TRIALS_DEFAULT = 5
# Acknowledged records before each kill: the producer is warm and the metadata cached.
WARM_RECORDS = 20
# Between two metadata polls while waiting for a condition.
POLL_S = 0.02
# A trial whose probe is not acknowledged within this is reported as failed (None).
TRIAL_TIMEOUT_S = 30.0
# How long to wait for the cluster to be whole again after the killed broker restarts.
RECOVER_TIMEOUT_S = 60.0
TARGET_ACK_S = 1.5
RESULTS_DEFAULT = Path(__file__).parent / "results" / "failover.json"


async def partition_state(admin: aio.AdminClient) -> tuple[int, int, bool]:
    """(leader id, in-sync replica count, whether the leader is the preferred replica) of
    partition 0; (-1, 0, False) if no broker answered."""
    try:
        description = await admin.describe_topic(TOPIC)
    except (ClientError, BrokerError):
        return -1, 0, False
    partition = description.partitions[0]
    preferred = bool(partition.replicas) and partition.replicas[0] == partition.leader_id
    return partition.leader_id, len(partition.isr), preferred


async def wait_until_whole(admin: aio.AdminClient) -> int:
    """Wait until partition 0 has three in-sync replicas and is led by its preferred replica
    (where the preferred-leader rule moves it back after a restart: killing any other leader
    would race that move); return the leader."""
    with trio.fail_after(RECOVER_TIMEOUT_S):
        while True:
            leader, in_sync, preferred = await partition_state(admin)
            if leader > 0 and in_sync == 3 and preferred:
                return leader
            await trio.sleep(POLL_S)


class Load:
    """Writes records one after another through `producer`, counting acknowledgements."""

    def __init__(self, producer: aio.Producer) -> None:
        self.producer = producer
        self.acked = 0
        self.acked_event = trio.Event()

    async def run(self) -> None:
        value = b"x" * 100
        while True:
            await self.producer.send_and_wait(TOPIC, value, partition=0)
            self.acked += 1
            self.acked_event.set()
            self.acked_event = trio.Event()

    async def wait_acked(self, count: int) -> None:
        target = self.acked + count
        while self.acked < target:
            await self.acked_event.wait()


async def one_trial(
    cluster: EmbeddedCluster, admin: aio.AdminClient, load: Load, number: int
) -> dict[str, float | int | None]:
    leader = await wait_until_whole(admin)
    await load.wait_acked(WARM_RECORDS)
    elected: list[float] = []

    async def watch_election(started: float) -> None:
        while True:
            new_leader, _, _ = await partition_state(admin)
            if new_leader > 0 and new_leader != leader:
                elected.append(time.monotonic() - started)
                return
            await trio.sleep(POLL_S)

    ack_s: float | None = None
    async with trio.open_nursery() as nursery:
        started = time.monotonic()
        cluster.kill(leader)  # SIGKILL then waitpid: a few ms, the broker is dead on return
        nursery.start_soon(watch_election, started)
        with trio.move_on_after(TRIAL_TIMEOUT_S):
            await load.producer.send_and_wait(TOPIC, b"probe", partition=0)
            ack_s = time.monotonic() - started
        with trio.move_on_after(TRIAL_TIMEOUT_S):
            while not elected:
                await trio.sleep(POLL_S)
        nursery.cancel_scope.cancel()
    result = {
        "trial": number,
        "killed": leader,
        "ack_s": None if ack_s is None else round(ack_s, 3),
        "elected_s": round(elected[0], 3) if elected else None,
    }
    print(f"  trial {number}: {result}", flush=True)
    await trio.to_thread.run_sync(cluster.start, leader)
    await trio.to_thread.run_sync(cluster.wait_ready)
    return result


def summarise(values: list[float | None]) -> dict[str, float | int | None]:
    done = [value for value in values if value is not None]
    return {
        "p50": round(statistics.median(done), 3) if done else None,
        "max": round(max(done), 3) if done else None,
        "failed": len(values) - len(done),
    }


async def run(options: argparse.Namespace) -> dict[str, object]:
    extra_args = [argument for value in options.set for argument in ("--set", value)]
    cluster = EmbeddedCluster(3, extra_args=extra_args)
    await trio.to_thread.run_sync(cluster.start)
    try:
        async with aio.AdminClient(cluster.bootstrap) as admin:
            await admin.create_topic(TOPIC, 1, replication_factor=3)
            async with aio.Producer(cluster.bootstrap) as producer:
                load = Load(producer)
                trials = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load.run)
                    for number in range(1, options.trials + 1):
                        trials.append(await one_trial(cluster, admin, load, number))
                    nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(cluster.close)
    return {
        "trials": trials,
        "summary": {
            "ack_s": summarise([trial["ack_s"] for trial in trials]),  # type: ignore[misc]
            "elected_s": summarise([trial["elected_s"] for trial in trials]),  # type: ignore[misc]
            "target_ack_s": TARGET_ACK_S,
        },
        "settings": {"set": options.set, "trials": options.trials},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=TRIALS_DEFAULT)
    parser.add_argument("--set", action="append", default=[], help="broker config key=value")
    parser.add_argument("--json", type=Path, default=RESULTS_DEFAULT)
    options = parser.parse_args()
    if options.trials < 1:
        parser.error("--trials must be at least 1")
    report = trio.run(run, options)
    summary = report["summary"]
    print(
        f"kill -9 of the leader -> first acknowledged write: {summary['ack_s']} s "  # type: ignore[index]
        f"(target <= {TARGET_ACK_S} s); a new leader in the metadata: {summary['elected_s']} s"  # type: ignore[index]
    )
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {options.json}")


if __name__ == "__main__":
    main()
