"""Memory: what partitions cost an idle broker, and what a consumer holds while it reads a backlog.

    python -m benchmarks.memory                          # both phases, 1,000 partitions
    python -m benchmarks.memory --phases broker --partitions 1000 --cluster
    python -m benchmarks.memory --phases consumer --backlog-mb 256
    python -m benchmarks.memory --quick                  # 100 partitions, a 32 MB backlog

Two phases, each on real `broker serve` processes:

broker: one single-node broker (and, with `--cluster`, three brokers at replication factor 3, where
    each broker holds a replica of every partition), `--partitions` partitions created (topics of at
    most 1,000, as `benchmarks.partitions` makes them), one 100-byte record written to each, then
    `--idle-seconds` of idling. The figures come from /proc/<pid>/smaps_rollup: RSS, its anonymous
    (Python heap) and file-backed (mapped index pages and the interpreter's own files) parts, PSS
    and USS, at start (no topics) and idle; the growth divided by the partition count is the cost of
    one partition. Target (issue 15): < 200 MB RSS idle at 1,000 partitions.
consumer: one topic of `--backlog-partitions` partitions filled with `--backlog-mb` of
    `--record-bytes` records; then, per fetch-limit profile, a fresh consumer process (so RSS is its
    own) reads the whole backlog from the beginning. It stalls `--stall-seconds` after its first
    poll (an application busy elsewhere: the fetcher fills its buffer to whatever bounds it), then
    drains. Its peak RSS (VmHWM) minus its RSS before the first poll is what prefetching cost, shown
    next to the fetched bytes the profile's limits let it hold (`fetched_allowed_mb`, buffered plus
    in flight: docs/client.md); without a byte bound it would be the backlog.

Results print as tables and go to benchmarks/results/memory.json (git-ignored) or `--json PATH`.
Memory figures do not depend on CPU load the way timings do, but the partition counts and backlog
sizes must match to compare two runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.partitions import (
    PHASE_TIMEOUT_S,
    POLL_S,
    Metadata,
    create_topic,
    topic_names,
    wait_for,
)
from client.blocking import AdminClient, Consumer, Producer
from client.embedded import EmbeddedBroker
from client.embedded_cluster import EmbeddedCluster
from client.errors import TopicAlreadyExistsError
from client.types import TopicPartition
from wire.error_codes import BrokerError, ErrorCode

RESULTS_DEFAULT = Path(__file__).parent / "results" / "memory.json"
RSS_TARGET_MB = 200.0
# A consumer process that has not read the whole backlog by then reports what it read.
READ_DEADLINE_S = 600.0
MIB = 1024 * 1024
# smaps_rollup fields reported, in MiB: Rss splits into anonymous and file-backed pages; USS (what
# the process alone holds) is its private pages.
_ROLLUP_FIELDS = (
    "Rss",
    "Pss",
    "Pss_Anon",
    "Pss_File",
    "Anonymous",
    "Private_Clean",
    "Private_Dirty",
)
# The fetch-limit profiles the consumer phase compares (SDK option -> value); "default" is the
# SDK's own defaults.
CONSUMER_PROFILES: dict[str, dict[str, int]] = {
    "default": {},
    "small": {
        "fetch_max_bytes": 1 * MIB,
        "max_partition_fetch_bytes": 256 * 1024,
        "max_poll_records": 100,
    },
    "medium": {
        "fetch_max_bytes": 8 * MIB,
        "max_partition_fetch_bytes": 2 * MIB,
    },
}


@dataclasses.dataclass(frozen=True)
class ProcessMemory:
    """One process's memory at one moment, in MiB (from /proc/<pid>/smaps_rollup)."""

    rss_mb: float
    anon_mb: float
    file_mb: float
    pss_mb: float
    uss_mb: float

    @classmethod
    def of(cls, pid: int) -> ProcessMemory:
        """The process with its children (a broker's fsync helper processes), added up."""
        fields: dict[str, int] = {}
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for each in (pid, *map(int, children)):
            try:
                rollup = Path(f"/proc/{each}/smaps_rollup").read_text()
            except FileNotFoundError:
                if each == pid:
                    raise
                continue  # a child that exited since it was listed holds nothing
            for line in rollup.splitlines()[1:]:
                name, value = line.split(":", 1)
                fields[name.strip()] = fields.get(name.strip(), 0) + int(value.split()[0])  # kB
        mb = {name: round(fields.get(name, 0) / 1024, 1) for name in _ROLLUP_FIELDS}
        return cls(
            rss_mb=mb["Rss"],
            anon_mb=mb["Anonymous"],
            file_mb=round(mb["Rss"] - mb["Anonymous"], 1),
            pss_mb=mb["Pss"],
            uss_mb=round(mb["Private_Clean"] + mb["Private_Dirty"], 1),
        )


def status_kb(pid: int | str, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {field}")


# --- broker phase ---------------------------------------------------------------------------------


@dataclasses.dataclass
class BrokerResult:
    """Memory of each broker process of one deployment, at start and idle with the partitions."""

    deployment: str  # "single" or "rf3"
    partitions: int
    start: dict[int, ProcessMemory] = dataclasses.field(default_factory=dict)
    idle: dict[int, ProcessMemory] = dataclasses.field(default_factory=dict)

    def per_partition_kb(self, node_id: int) -> float:
        growth_mb = self.idle[node_id].rss_mb - self.start[node_id].rss_mb
        return round(1024 * growth_mb / self.partitions, 1)


def _broker_pids(deployment: EmbeddedBroker | EmbeddedCluster) -> dict[int, int]:
    if isinstance(deployment, EmbeddedBroker):
        assert deployment.process is not None
        return {deployment.node_id: deployment.process.pid}
    pids = {}
    for node_id in deployment.node_ids:
        process = deployment.node(node_id).process
        assert process is not None
        pids[node_id] = process.pid
    return pids


def write_one_record_each(bootstrap: str, topics: dict[str, int]) -> None:
    """One 100-byte record to every partition (acks=all), so every log has a touched segment."""
    with Producer(bootstrap, acks=-1) as producer:
        for name, count in topics.items():
            for partition in range(count):
                producer.send(name, b"x" * 100, partition=partition)
        producer.flush()


def create_replicated_topic(admin: AdminClient, name: str, partitions: int) -> None:
    """`benchmarks.partitions.create_topic`, also retried while a broker is fenced for a moment
    (a late heartbeat on a loaded machine makes the controller refuse RF 3 until it is back)."""
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while True:
        try:
            create_topic(admin, name, partitions)
            return
        except TopicAlreadyExistsError:
            # On this fresh cluster only we create topics: one that exists is ours, created by
            # an attempt whose answer was lost while the controller was busy.
            return
        except BrokerError as exc:
            if exc.code is not ErrorCode.INVALID_REPLICATION_FACTOR:
                raise
            if time.monotonic() > deadline:
                raise
            print(f"  create {name}: {exc}; retrying", flush=True)
            time.sleep(POLL_S)


def run_broker(partitions: int, *, cluster: bool, options: argparse.Namespace) -> BrokerResult:
    """Create `partitions` partitions on a fresh deployment and read its memory, start and idle."""
    extra_args = [argument for value in options.set for argument in ("--set", value)]
    deployment: EmbeddedBroker | EmbeddedCluster
    if cluster:
        deployment = EmbeddedCluster(3, extra_args=extra_args, ready_timeout_s=120)
    else:
        deployment = EmbeddedBroker(extra_args=extra_args)
    result = BrokerResult("rf3" if cluster else "single", partitions)
    with deployment, AdminClient(deployment.bootstrap) as admin:
        pids = _broker_pids(deployment)
        result.start = {node_id: ProcessMemory.of(pid) for node_id, pid in pids.items()}
        topics = topic_names(partitions)
        for name, count in topics.items():
            if cluster:
                create_replicated_topic(admin, name, count)
                if wait_for(Metadata(admin, [name]).all_led) is None:
                    raise RuntimeError(f"{name}: not every partition had a leader in time")
            else:
                admin.create_topic(name, count, 1)
        write_one_record_each(deployment.bootstrap, topics)
        time.sleep(options.idle_seconds)
        result.idle = {node_id: ProcessMemory.of(pid) for node_id, pid in pids.items()}
    return result


def print_broker_table(results: list[BrokerResult]) -> None:
    print(
        f"{'deployment':>10} {'partitions':>10} {'node':>4} {'RSS start':>9} {'RSS idle':>9} "
        f"{'anon':>6} {'file':>6} {'PSS':>6} {'USS':>6} {'KiB/part':>8}"
    )
    for result in results:
        for node_id, idle in sorted(result.idle.items()):
            start = result.start[node_id]
            print(
                f"{result.deployment:>10} {result.partitions:>10} {node_id:>4} "
                f"{start.rss_mb:>9.1f} {idle.rss_mb:>9.1f} {idle.anon_mb:>6.1f} "
                f"{idle.file_mb:>6.1f} {idle.pss_mb:>6.1f} {idle.uss_mb:>6.1f} "
                f"{result.per_partition_kb(node_id):>8.1f}"
            )
    print(f"MiB; target: RSS idle < {RSS_TARGET_MB:.0f} MB per broker at 1,000 partitions")


# --- consumer phase -------------------------------------------------------------------------------


@dataclasses.dataclass
class ConsumerResult:
    """One consumer process reading the whole backlog under one fetch-limit profile."""

    profile: str
    limits: dict[str, int]
    fetched_allowed_mb: float
    records: int = 0
    seconds: float = 0.0
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0

    @property
    def growth_mb(self) -> float:
        return round(self.rss_peak_mb - self.rss_before_mb, 1)


def fetched_bytes_allowed(limits: dict[str, int], *, leaders: int, partitions: int) -> int:
    """The raw fetched bytes a consumer with these limits may hold (docs/client.md): what it
    buffered ahead of the application (it stops fetching at `fetch_max_bytes`) plus one response
    in flight per leader (at most `fetch_max_bytes`, and `max_partition_fetch_bytes` per
    partition). A response exists about three times over while it is received and split."""
    from client.aio.consumer import FETCH_MAX_BYTES_DEFAULT, MAX_PARTITION_FETCH_BYTES_DEFAULT

    fetch_max_bytes = limits.get("fetch_max_bytes", FETCH_MAX_BYTES_DEFAULT)
    partition_max_bytes = limits.get("max_partition_fetch_bytes", MAX_PARTITION_FETCH_BYTES_DEFAULT)
    response_max_bytes = min(fetch_max_bytes, partitions * partition_max_bytes)
    return fetch_max_bytes + leaders * response_max_bytes


def fill_backlog(bootstrap: str, topic: str, options: argparse.Namespace) -> int:
    """Write `--backlog-mb` of `--record-bytes` records spread over the topic; returns the count."""
    count = options.backlog_mb * MIB // options.record_bytes
    value = b"v" * options.record_bytes
    with Producer(bootstrap, acks=1) as producer:
        for _ in range(count):
            producer.send(topic, value)
        producer.flush()
    return count


def run_consumer_child(
    bootstrap: str, topic: str, partitions: int, profile: str, stall_s: float
) -> dict[str, Any]:
    """In a fresh process: read `topic` from the beginning with the profile's limits, stalling
    after the first poll, and print one JSON line with the records read and the RSS figures."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--consumer-child",
        json.dumps(
            {
                "bootstrap": bootstrap,
                "topic": topic,
                "partitions": partitions,
                "limits": CONSUMER_PROFILES[profile],
                "stall_s": stall_s,
            }
        ),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    return json.loads(output.stdout.strip().splitlines()[-1])


def consumer_child(arguments: dict[str, Any]) -> None:
    """The consumer process of `run_consumer_child`: its own RSS is what is measured."""
    tps = [TopicPartition(arguments["topic"], p) for p in range(arguments["partitions"])]
    with Consumer(
        arguments["bootstrap"], auto_offset_reset="earliest", **arguments["limits"]
    ) as consumer:
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        total = sum(ends.values())
        rss_before_kb = status_kb("self", "VmRSS")
        started = time.monotonic()
        records = len(consumer.poll(timeout_ms=10_000))
        time.sleep(arguments["stall_s"])
        deadline = time.monotonic() + READ_DEADLINE_S
        while records < total and time.monotonic() < deadline:
            records += len(consumer.poll(timeout_ms=1000))
        seconds = time.monotonic() - started
    print(
        json.dumps(
            {
                "records": records,
                "seconds": round(seconds, 2),
                "rss_before_mb": round(rss_before_kb / 1024, 1),
                "rss_peak_mb": round(status_kb("self", "VmHWM") / 1024, 1),
            }
        )
    )


def run_consumers(options: argparse.Namespace) -> list[ConsumerResult]:
    """Fill one backlog on a fresh broker, then read it once per profile."""
    results = []
    topic = "backlog"
    with EmbeddedBroker() as broker:
        with AdminClient(broker.bootstrap) as admin:
            admin.create_topic(topic, options.backlog_partitions, 1)
        written = fill_backlog(broker.bootstrap, topic, options)
        print(f"  backlog: {written} records of {options.record_bytes} B", flush=True)
        for profile in options.profiles.split(","):
            limits = CONSUMER_PROFILES[profile]
            allowed = fetched_bytes_allowed(
                limits, leaders=1, partitions=options.backlog_partitions
            )
            result = ConsumerResult(profile, limits, round(allowed / MIB, 1))
            figures = run_consumer_child(
                broker.bootstrap, topic, options.backlog_partitions, profile, options.stall_seconds
            )
            result.records = figures["records"]
            result.seconds = figures["seconds"]
            result.rss_before_mb = figures["rss_before_mb"]
            result.rss_peak_mb = figures["rss_peak_mb"]
            if result.records < written:
                print(f"  {profile}: read only {result.records} of {written} records", flush=True)
            results.append(result)
    return results


def print_consumer_table(results: list[ConsumerResult]) -> None:
    print(
        f"{'profile':>8} {'fetch_max':>9} {'part_max':>8} {'poll':>5} {'allowed MB':>10} "
        f"{'records':>8} {'s':>6} {'RSS before':>10} {'RSS peak':>9} {'growth':>7}"
    )
    from client.aio.consumer import (
        FETCH_MAX_BYTES_DEFAULT,
        MAX_PARTITION_FETCH_BYTES_DEFAULT,
        MAX_POLL_RECORDS_DEFAULT,
    )

    for r in results:
        fetch_max = r.limits.get("fetch_max_bytes", FETCH_MAX_BYTES_DEFAULT) / MIB
        part_max = r.limits.get("max_partition_fetch_bytes", MAX_PARTITION_FETCH_BYTES_DEFAULT)
        poll = r.limits.get("max_poll_records", MAX_POLL_RECORDS_DEFAULT)
        print(
            f"{r.profile:>8} {fetch_max:>8.0f}M {part_max / MIB:>7.2f}M {poll:>5} "
            f"{r.fetched_allowed_mb:>10.1f} {r.records:>8} {r.seconds:>6.1f} "
            f"{r.rss_before_mb:>10.1f} {r.rss_peak_mb:>9.1f} {r.growth_mb:>7.1f}"
        )
    print(
        "MiB; allowed = fetched bytes the limits let the consumer hold (buffered + in flight); "
        "growth = peak RSS while reading minus RSS before the first poll"
    )


# --- command line ---------------------------------------------------------------------------------


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="broker,consumer")
    parser.add_argument("--quick", action="store_true", help="100 partitions, a 32 MB backlog")
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--cluster", action="store_true", help="also three brokers at RF 3")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--set", action="append", default=[], help="broker config key=value (repeatable)"
    )
    parser.add_argument("--backlog-mb", type=int, default=256)
    parser.add_argument("--backlog-partitions", type=int, default=4)
    parser.add_argument("--record-bytes", type=int, default=1024)
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    parser.add_argument("--profiles", default=",".join(CONSUMER_PROFILES))
    parser.add_argument("--json", type=Path, default=RESULTS_DEFAULT)
    parser.add_argument("--consumer-child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.quick:
        options.partitions, options.backlog_mb, options.idle_seconds = 100, 32, 5.0
    return options


def main() -> None:
    options = parse_options()
    if options.consumer_child:
        consumer_child(json.loads(options.consumer_child))
        return
    phases = options.phases.split(",")
    brokers: list[BrokerResult] = []
    consumers: list[ConsumerResult] = []
    if "broker" in phases:
        print(f"broker: {options.partitions} partitions, single node", flush=True)
        brokers.append(run_broker(options.partitions, cluster=False, options=options))
        if options.cluster:
            print(f"broker: {options.partitions} partitions, 3 brokers RF 3", flush=True)
            try:
                brokers.append(run_broker(options.partitions, cluster=True, options=options))
            except (BrokerError, RuntimeError) as exc:  # reported; the other figures stand
                print(f"  the RF 3 run failed: {exc}", flush=True)
        print_broker_table(brokers)
    if "consumer" in phases:
        print(f"consumer: a {options.backlog_mb} MB backlog", flush=True)
        consumers = run_consumers(options)
        print_consumer_table(consumers)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "settings": {
                    key: getattr(options, key)
                    for key in ("partitions", "idle_seconds", "set", "backlog_mb", "record_bytes")
                },
                "brokers": [dataclasses.asdict(r) for r in brokers],
                "consumers": [
                    {**dataclasses.asdict(r), "growth_mb": r.growth_mb} for r in consumers
                ],
            },
            indent=2,
        )
    )
    print(f"results: {options.json}")


if __name__ == "__main__":
    main()
