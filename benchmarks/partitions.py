"""Partition scale: what thousands of Raft groups cost three brokers, idle and in a failover.

    python -m benchmarks.partitions                    # N = 100, 1000, 3000
    python -m benchmarks.partitions --sizes 300,1000 --json /tmp/partitions.json
    python -m benchmarks.partitions --quick            # N = 30, 100 (a smoke run)
    python -m benchmarks.partitions --set raft_quiesce=false   # the same without quiescence

For each N, on a fresh cluster of three real `broker serve` processes (`EmbeddedCluster`), N
partitions at replication factor 3 (topics of at most 1,000 partitions, the broker's default
max_partitions_per_topic), four figures:

(b) create: CreateTopics until every partition has a leader in the metadata (DescribeTopics);
    bigger N are topics of 1,000 created one after another, each led before the next.
(a) idle CPU: after the cluster settled (`--settle-seconds`), the CPU seconds (utime + stime from
    /proc/<pid>/stat) each broker process used over `--idle-seconds` of wall time, as a % of one
    core. The machine may be shared: this is CPU time of the broker process itself, not load.
(c) restart: broker 3 stopped cleanly (SIGTERM: it hands its leaderships over first) and started
    again; from the start until every partition has a leader and broker 3 in its in-sync set
    again (all its replicas caught up), with the time until it was ACTIVE again on the side.
(d) failover: broker 2 (leading about N/3 partitions) killed with SIGKILL; from the kill until
    every partition it led has another leader in the metadata.

The targets (issue 13): (a) <= 5% of a core per broker at 3,000 partitions, (b) <= 30 s at 1,000,
(c) <= 20 s at 1,000, (d) <= 10 s. Results print as a table of how each figure grows with N, and go
to benchmarks/results/partitions.json (git-ignored) or `--json PATH`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from client.blocking import AdminClient
from client.embedded_cluster import EmbeddedCluster
from client.types import TopicDescription
from wire.error_codes import BrokerError, ErrorCode

SIZES_DEFAULT = (100, 1000, 3000)
SIZES_QUICK = (30, 100)
# The broker's default max_partitions_per_topic: bigger N are several topics.
PARTITIONS_PER_TOPIC_MAX = 1000
REPLICATION_FACTOR = 3
# How often the metadata is polled while a phase waits for its condition.
POLL_S = 0.2
# A phase that has not reached its condition by then is reported as failed (None), not waited on.
PHASE_TIMEOUT_S = 120.0
TARGETS = {"idle_cpu_percent": 5.0, "create_s": 30.0, "restart_s": 20.0, "failover_s": 10.0}
RESULTS_DEFAULT = Path(__file__).parent / "results" / "partitions.json"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class SizeResult:
    """The four figures for one partition count (None: the phase did not finish in time)."""

    partitions: int
    create_s: float | None = None
    idle_cpu_percent: dict[int, float] = dataclasses.field(default_factory=dict)
    restart_active_s: float | None = None
    restart_s: float | None = None
    failover_partitions: int = 0
    failover_s: float | None = None


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis don't.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def topic_names(partitions: int) -> dict[str, int]:
    """The topics (name -> partition count) that make up `partitions` partitions."""
    names: dict[str, int] = {}
    left = partitions
    while left > 0:
        count = min(left, PARTITIONS_PER_TOPIC_MAX)
        names[f"scale-{len(names)}"] = count
        left -= count
    return names


def wait_for(condition: Callable[[], bool], timeout_s: float = PHASE_TIMEOUT_S) -> float | None:
    """Seconds until `condition()` held (polled), or None after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(POLL_S)
    return None


class Metadata:
    """DescribeTopics of the benchmark's topics, asked of whichever broker answers."""

    def __init__(self, admin: AdminClient, names: list[str]) -> None:
        self.admin = admin
        self.names = names

    def describe(self) -> list[TopicDescription] | None:
        try:
            return self.admin.describe_topics(self.names)
        except Exception:  # a broker going away mid-call: poll again
            return None

    def all_led(self, *, excluding: int = 0, in_sync: int = 0) -> bool:
        topics = self.describe()
        if topics is None:
            return False
        return all(
            partition.leader_id > 0
            and partition.leader_id != excluding
            and (in_sync == 0 or in_sync in partition.isr)
            for topic in topics
            for partition in topic.partitions
        )

    def led_by(self, node_id: int) -> list[tuple[str, int]]:
        topics = self.describe() or []
        return [
            (topic.name, partition.partition)
            for topic in topics
            for partition in topic.partitions
            if partition.leader_id == node_id
        ]


def create_topic(admin: AdminClient, name: str, partitions: int) -> None:
    """CreateTopics, retried while the cluster has no controller leader yet (just started) or
    the answer timed out (the outcome is then unknown: a retry that finds the topic is done)."""
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    retried = False
    while True:
        try:
            admin.create_topic(name, partitions, REPLICATION_FACTOR)
            return
        except BrokerError as exc:
            if retried and exc.code is ErrorCode.TOPIC_ALREADY_EXISTS:
                return
            if not exc.code.retriable or time.monotonic() > deadline:
                raise
            print(f"  create {name}: {exc}; retrying", flush=True)
            retried = True
            time.sleep(POLL_S)


def measure_idle_cpu(cluster: EmbeddedCluster, seconds: float) -> dict[int, float]:
    pids = {
        node_id: cluster.node(node_id).process.pid  # type: ignore[union-attr]
        for node_id in cluster.node_ids
    }
    before = {node_id: cpu_seconds(pid) for node_id, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {
        node_id: round(100 * (cpu_seconds(pid) - before[node_id]) / elapsed, 2)
        for node_id, pid in pids.items()
    }


def run_size(partitions: int, options: argparse.Namespace) -> SizeResult:
    result = SizeResult(partitions)
    extra_args = [argument for value in options.set for argument in ("--set", value)]
    cluster = EmbeddedCluster(3, extra_args=extra_args, ready_timeout_s=120)
    with cluster, AdminClient(cluster.bootstrap) as admin:
        topics = topic_names(partitions)
        metadata = Metadata(admin, sorted(topics))
        started = time.monotonic()
        led: float | None = 0.0
        for name, count in topics.items():
            # One topic (<= 1,000 partitions) at a time, each led before the next: three
            # thousand new groups electing at once overload the brokers (see docs/cluster.md).
            create_topic(admin, name, count)
            led = wait_for(Metadata(admin, [name]).all_led)
            if led is None:
                break
        result.create_s = None if led is None else round(time.monotonic() - started, 2)
        print(f"  N={partitions}: created, all led in {result.create_s} s", flush=True)

        time.sleep(options.settle_seconds)
        result.idle_cpu_percent = measure_idle_cpu(cluster, options.idle_seconds)
        print(f"  N={partitions}: idle CPU % {result.idle_cpu_percent}", flush=True)

        cluster.stop(3)
        started = time.monotonic()
        cluster.start(3)
        cluster.wait_ready(PHASE_TIMEOUT_S)
        result.restart_active_s = round(time.monotonic() - started, 2)
        caught_up = wait_for(lambda: metadata.all_led(in_sync=3))
        if caught_up is not None:
            result.restart_s = round(time.monotonic() - started, 2)
        print(
            f"  N={partitions}: restart ACTIVE in {result.restart_active_s} s, "
            f"caught up in {result.restart_s} s",
            flush=True,
        )

        # Leaders go back to their preferred brokers (auto.leader.rebalance) before the kill.
        wait_for(lambda: len(metadata.led_by(2)) >= partitions // 3, timeout_s=30)
        led_before = metadata.led_by(2)
        result.failover_partitions = len(led_before)
        cluster.kill(2)
        started = time.monotonic()
        failed_over = wait_for(lambda: metadata.all_led(excluding=2))
        if failed_over is not None:
            result.failover_s = round(time.monotonic() - started, 2)
        print(
            f"  N={partitions}: failover of {len(led_before)} partitions in {result.failover_s} s",
            flush=True,
        )
    return result


def print_table(results: list[SizeResult]) -> None:
    header = (
        f"{'partitions':>10} {'replicas/broker':>15} {'create s':>9} {'idle CPU % (1/2/3)':>22} "
        f"{'restart s':>10} {'(ACTIVE s)':>10} {'failover s':>10} {'(led)':>6}"
    )
    print(header)
    for r in results:
        idle = "/".join(f"{r.idle_cpu_percent.get(n, float('nan')):.1f}" for n in (1, 2, 3))
        print(
            f"{r.partitions:>10} {r.partitions:>15} {r.create_s!s:>9} {idle:>22} "
            f"{r.restart_s!s:>10} {r.restart_active_s!s:>10} {r.failover_s!s:>10} "
            f"{r.failover_partitions:>6}"
        )
    print(
        "targets: idle <= 5% of a core per broker at 3,000 partitions; create <= 30 s, restart "
        "<= 20 s at 1,000; failover <= 10 s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES_DEFAULT)))
    parser.add_argument("--quick", action="store_true", help=f"sizes {SIZES_QUICK}")
    parser.add_argument("--settle-seconds", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--set", action="append", default=[], help="broker config key=value (repeatable)"
    )
    parser.add_argument("--json", type=Path, default=RESULTS_DEFAULT)
    options = parser.parse_args()
    sizes = SIZES_QUICK if options.quick else tuple(int(s) for s in options.sizes.split(","))
    results = []
    for size in sizes:
        print(f"N = {size} partitions at RF {REPLICATION_FACTOR} on 3 brokers", flush=True)
        results.append(run_size(size, options))
    print_table(results)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "settings": {
                    "settle_seconds": options.settle_seconds,
                    "idle_seconds": options.idle_seconds,
                    "set": options.set,
                },
                "targets": TARGETS,
                "results": [dataclasses.asdict(r) for r in results],
            },
            indent=2,
        )
    )
    print(f"results: {options.json}")


if __name__ == "__main__":
    main()
