"""Throughput and end-to-end latency of the SDK against a real broker.

    broker-bench                                          # the same as the next line
    python -m benchmarks.throughput                       # starts its own broker
    python -m benchmarks.throughput --bootstrap HOST:PORT --records 2000000 --partitions 4
    python -m benchmarks.throughput --brokers 3 --replication-factor 3 --acks all --partitions 3

Three phases, each on a fresh topic of `--partitions` partitions:
1. produce: `--producers` processes each send records/P records of `--record-bytes` bytes
   (trio-native `client.aio.Producer`, or the blocking facade with `--api blocking`), one
   `send` per record, or with `--produce-api send_many` one `send_many` call per
   `--send-many-records` records (the bulk API: one future per call);
2. consume: one consumer reads every record back from the beginning;
3. latency: one producer sends at `--rate` records/s for `--latency-seconds` while a consumer
   in the same process reads; each value carries its send time, so latency = receive - send.
   The producer has the same options as in phase 1 (the SDK's defaults unless given: adaptive
   batching, so a record leaves at once when nothing is in flight); nothing is tuned for it.
Results print as a table and go to benchmarks/results/throughput.json (git-ignored; `--output`
writes elsewhere). Producer options default to the SDK's (`acks=all`, idempotent, its linger,
batch size and in-flight limit), so the figures are what an application gets out of the box.
Every phase, the untimed set-up steps included, shows a rich progress bar on stderr.

The latency phase also reports the produce latency: send -> acknowledgement of each record.

Replication cost (`--brokers N`, N > 1): the benchmark starts an N-broker cluster
(`client.embedded_cluster.EmbeddedCluster`, real `broker serve --node-id --peers` processes) and
runs the three phases as two cases on that same cluster: a topic with `--replication-factor R`,
and the baseline, a topic with replication factor 1. Same cluster, same acks, same partition count
and record shape: the only difference is replication. Cases run `--runs` times, interleaved
ABBA-style so that drift on a shared machine falls on both. `--single-node-baseline` adds the
plain single-node broker (started after the cluster has stopped). Before the clock starts, every
partition must have its preferred leader (replicas[0]) in DescribeTopics, so the Raft elections
and the leader hand-over after creation are not timed. Each partition's log starts with Raft leader
no-ops (control batches); the consume phase starts at the end offsets read before producing, so it
reads exactly the records produced. Results go to benchmarks/results/throughput-cluster.json.

Producer cost (`--idempotent`, `--transactions N`, issue 11): the three phases run once per
producer variant on a fresh topic, same records, acks=all and `--max-in-flight` for all:
`plain` (enable_idempotence=False), `idempotent` (with --idempotent), `transactional` (with
--transactions N: one transactional producer per process, committing every N records; the
throughput phase times begin + sends + commit of every transaction, and reports the commit time).
Variants run `--runs` times, interleaved and rotated (run 1: plain, idempotent, transactional; run
2: idempotent, transactional, plain; ...) so that drift falls on each alike. Each variant's cost is
1 - its records/s over plain's in the same run (the median of those per-run ratios is reported).
InitProducerId / init_transactions happen before the clock starts. Consumers read with
isolation_level=read_committed (the same as read_uncommitted without transactions), and the
latency phase stamps each record with its scheduled send time, so a commit that holds the producer
up counts in the latency of the records scheduled meanwhile. Works on one broker, on `--brokers N`
(topics of `--replication-factor`) and with `--bootstrap`. Results go to
benchmarks/results/throughput-cost.json (throughput-cost-cluster.json with --brokers > 1).

Queue throughput (`--share-group --consumers N`, issue 12): N share consumers on one partition
beside a consumer group; see benchmarks/share_queue.py. Results go to
benchmarks/results/throughput-share.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import platform
import statistics
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from client import aio
from client.aio.producer import BATCH_BYTES_DEFAULT, LINGER_MS_DEFAULT
from client.blocking import Producer as BlockingProducer
from client.embedded import EmbeddedBroker
from client.embedded_cluster import EmbeddedCluster
from client.types import TopicPartition
from wire.error_codes import BrokerError

RESULTS_PATH = Path(__file__).parent / "results" / "throughput.json"
CLUSTER_RESULTS_PATH = Path(__file__).parent / "results" / "throughput-cluster.json"
COST_RESULTS_PATH = Path(__file__).parent / "results" / "throughput-cost.json"
COST_CLUSTER_RESULTS_PATH = Path(__file__).parent / "results" / "throughput-cost-cluster.json"
SHARE_RESULTS_PATH = Path(__file__).parent / "results" / "throughput-share.json"
# Issue 11's targets: what each variant may cost of the plain producer's records/s.
COST_TARGETS = {"idempotent": 0.10, "transactional": 0.25}
# A producer process reports its progress (and a plain producer checks nothing else) this often.
REPORT_EVERY = 65_536
PRODUCE_APIS = ("send", "send_many")
# Records per send_many call: a few wire batches' worth of 100-byte records.
SEND_MANY_RECORDS_DEFAULT = 10_000
# How long topic creation may take to settle: a leader for every partition, the preferred one.
SETTLE_TIMEOUT_S = 30.0
# The consume phase gives up when no record arrived for this long (it reports what it read).
CONSUME_STALL_S = 20.0
# The latency phase stamps each value with its send time in ns (8 bytes, big-endian).
_STAMP = struct.Struct(">q")
# How many records the latency producer sends per tick; ticks = rate / LATENCY_BURST per second.
LATENCY_BURST = 10
console = Console(stderr=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--records", type=int, default=1_000_000, help="records to produce (N)")
    parser.add_argument("--record-bytes", type=int, default=100, help="value size (S)")
    parser.add_argument("--producers", type=int, default=1, help="producer processes (P)")
    parser.add_argument("--partitions", type=int, default=1, help="topic partitions (K)")
    parser.add_argument(
        "--acks",
        default="all",
        choices=["0", "1", "all"],
        help="producer acks (default all, as the SDK's producer)",
    )
    parser.add_argument("--linger-ms", type=float, default=LINGER_MS_DEFAULT)
    parser.add_argument("--batch-bytes", type=int, default=BATCH_BYTES_DEFAULT)
    parser.add_argument("--compression", choices=["gzip", "zstd", "lz4"], default=None)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="producer max_in_flight_per_partition (default: the producer's, 5 when idempotent "
        "else 1; the cost mode uses 1 for every variant unless given, to compare like for like)",
    )
    parser.add_argument(
        "--retry-backoff-ms",
        type=int,
        default=None,
        help="producer retry_backoff_ms (default: the producer's); a transactional producer also "
        "waits this long before retrying a coordinator call (CONCURRENT_TRANSACTIONS)",
    )
    parser.add_argument("--api", choices=["aio", "blocking"], default="aio")
    parser.add_argument(
        "--produce-api",
        choices=PRODUCE_APIS,
        default="send",
        help="how the produce phase queues records: one send() per record (default), or "
        "send_many() calls of --send-many-records records each",
    )
    parser.add_argument(
        "--send-many-records",
        type=int,
        default=SEND_MANY_RECORDS_DEFAULT,
        help="records per send_many() call with --produce-api send_many",
    )
    parser.add_argument(
        "--topic-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config of the benchmark topics, e.g. flush.policy=never (repeatable)",
    )
    parser.add_argument("--rate", type=int, default=10_000, help="latency phase records/s")
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument(
        "--latency-fetch-wait-ms",
        type=int,
        default=100,
        help="the latency consumer's fetch_max_wait_ms (the long poll's upper bound)",
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="1: one single-node broker (as before); N > 1: an N-broker cluster, measuring "
        "--replication-factor beside RF 1 on that cluster (with --bootstrap: that cluster)",
    )
    parser.add_argument("--replication-factor", type=int, default=1, help="RF of the cluster case")
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="cluster, cost and share-group modes: runs of each case (interleaved)",
    )
    parser.add_argument(
        "--idempotent",
        action="store_true",
        help="cost mode: measure the idempotent producer beside the plain one (acks=all)",
    )
    parser.add_argument(
        "--transactions",
        type=int,
        default=0,
        metavar="N",
        help="cost mode: measure a transactional producer committing every N records beside the "
        "plain one (acks=all)",
    )
    parser.add_argument(
        "--single-node-baseline",
        action="store_true",
        help="cluster mode: also measure a single-node broker, after the cluster stopped",
    )
    parser.add_argument(
        "--share-group",
        action="store_true",
        help="queue mode (benchmarks/share_queue.py): records/s accepted by --consumers share "
        "consumers on one partition, beside a consumer group on the same records",
    )
    parser.add_argument(
        "--consumers", type=int, default=4, help="share-group mode: share consumer processes"
    )
    parser.add_argument(
        "--max-poll-records",
        type=int,
        default=1000,
        help="share-group mode: max_poll_records of every consumer (1 .. 10000)",
    )
    parser.add_argument(
        "--share-fetch-max-bytes",
        type=int,
        default=None,
        help="share-group mode: the share consumers' fetch_max_bytes (default: the SDK's)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help=f"default {RESULTS_PATH.name}, or "
        f"{CLUSTER_RESULTS_PATH.name} with --brokers > 1",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.brokers < 1 or args.replication_factor < 1 or args.runs < 1:
        parser.error("--brokers, --replication-factor and --runs must be >= 1")
    if args.replication_factor > args.brokers:
        parser.error(f"--replication-factor {args.replication_factor} needs as many --brokers")
    if args.transactions < 0:
        parser.error("--transactions N needs N >= 1 records per transaction")
    args.cost = args.idempotent or args.transactions > 0
    if args.share_group:
        if args.cost or args.single_node_baseline:
            parser.error("--share-group does not combine with the cost or baseline flags")
        if args.partitions != 1 or args.consumers < 1:
            parser.error("--share-group measures one partition and --consumers >= 1")
        if not 1 <= args.max_poll_records <= 10_000:
            parser.error("--max-poll-records must be between 1 and 10000")
        args.output = args.output or SHARE_RESULTS_PATH
    if args.cost:
        if args.acks != "all":
            parser.error("--idempotent and --transactions compare producers at --acks all")
        if args.single_node_baseline:
            parser.error("--single-node-baseline is for the replication cost, not the cost mode")
        if args.max_in_flight is None:
            args.max_in_flight = 1
    if args.output is None:
        if args.cost:
            args.output = COST_RESULTS_PATH if args.brokers == 1 else COST_CLUSTER_RESULTS_PATH
        else:
            args.output = RESULTS_PATH if args.brokers == 1 else CLUSTER_RESULTS_PATH
    return args


def topic_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in args.topic_config:
        key, _, value = item.partition("=")
        config[key] = int(value) if value.lstrip("-").isdigit() else value
    return config


def producer_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "acks": args.acks if args.acks == "all" else int(args.acks),
        "linger_ms": args.linger_ms,
        "batch_bytes": args.batch_bytes,
        "compression": args.compression,
    }
    if args.max_in_flight is not None:
        options["max_in_flight_per_partition"] = args.max_in_flight
    if args.retry_backoff_ms is not None:
        options["retry_backoff_ms"] = args.retry_backoff_ms
    return options


@dataclasses.dataclass(frozen=True)
class Variant:
    """How the phases produce: `DEFAULT` as the options say; the cost mode's variants force
    idempotence on or off, and `transaction_records` > 0 commits every that many records."""

    name: str
    idempotent: bool | None = None  # None: the producer's own default for the options
    transaction_records: int = 0
    isolation_level: str = "read_uncommitted"
    # The latency phase stamps records with their scheduled send time (else the actual one).
    scheduled_stamps: bool = False

    def options(self, args: argparse.Namespace) -> dict:
        options = producer_options(args)
        if self.idempotent is not None:
            options["enable_idempotence"] = self.idempotent
        if self.transaction_records:
            options["transactional_id"] = f"bench-{uuid.uuid4().hex[:12]}"
        return options


DEFAULT = Variant("default")


def cost_variants(args: argparse.Namespace) -> list[Variant]:
    """plain, then idempotent (--idempotent), then transactional (--transactions N)."""
    shared = {"isolation_level": "read_committed", "scheduled_stamps": True}
    variants = [Variant("plain", idempotent=False, **shared)]
    if args.idempotent:
        variants.append(Variant("idempotent", idempotent=True, **shared))
    if args.transactions:
        variants.append(
            Variant(
                "transactional", idempotent=True, transaction_records=args.transactions, **shared
            )
        )
    return variants


def send_many_records(args: argparse.Namespace) -> int:
    """Records per `send_many` call, 0 when the produce phase sends record by record."""
    if args.produce_api != "send_many":
        return 0
    if args.send_many_records < 1:
        raise SystemExit("--send-many-records must be at least 1")
    return args.send_many_records


def _chunks(count: int, size: int) -> Iterator[int]:
    """`count` split into pieces of `size` (the last one smaller)."""
    for start in range(0, count, size):
        yield min(size, count - start)


class _Commits:
    """Durations of commit_transaction() calls, in seconds."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def summary(self) -> tuple[float, float, float, float]:
        """(commits, total seconds, p50, p99)."""
        values = sorted(self.seconds)
        if not values:
            return 0, 0.0, 0.0, 0.0
        return len(values), sum(values), _quantile(values, 0.5), _quantile(values, 0.99)


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted `values` (nearest rank)."""
    return values[min(int(q * len(values)), len(values) - 1)]


# --- produce --------------------------------------------------------------------------------------


async def _produce_aio(
    bootstrap: str, topic: str, count: int, size: int, options: dict[str, Any], per_txn: int,
    sync: Any, report: Callable[[int], None], commits: _Commits, many: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """Produce `count` records: one `send` each, or (`many` > 0) `send_many` calls of `many`."""
    value = os.urandom(size)
    async with aio.Producer(bootstrap, **options) as producer:
        await producer.load_topic(topic)
        if per_txn:
            await producer.init_transactions()
        await trio.to_thread.run_sync(sync.wait)  # everyone connected: start the clock
        wall, cpu = time.perf_counter(), time.process_time()
        send, done = producer.send, 0
        for chunk in _chunks(count, per_txn or REPORT_EVERY):
            if per_txn:
                producer.begin_transaction()
            if many:
                for part in _chunks(chunk, many):
                    await producer.send_many(topic, [value] * part)
            else:
                for _ in range(chunk):
                    await send(topic, value)
            if per_txn:
                began = time.perf_counter()
                await producer.commit_transaction()
                commits.seconds.append(time.perf_counter() - began)
            done += chunk
            report(done)
        await producer.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu


def _produce_blocking(
    bootstrap: str, topic: str, count: int, size: int, options: dict[str, Any], per_txn: int,
    sync: Any, report: Callable[[int], None], commits: _Commits, many: int = 0,
) -> tuple[float, float]:  # fmt: skip
    value = os.urandom(size)
    with BlockingProducer(bootstrap, **options) as producer:
        producer.partitions_for(topic)
        if per_txn:
            producer.init_transactions()
        sync.wait()
        wall, cpu = time.perf_counter(), time.process_time()
        send, done = producer.send, 0
        for chunk in _chunks(count, per_txn or REPORT_EVERY):
            if per_txn:
                producer.begin_transaction()
            if many:
                for part in _chunks(chunk, many):
                    producer.send_many(topic, [value] * part)
            else:
                for _ in range(chunk):
                    send(topic, value)
            if per_txn:
                began = time.perf_counter()
                producer.commit_transaction()
                commits.seconds.append(time.perf_counter() - began)
            done += chunk
            report(done)
        producer.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu


# What each producer process writes into the shared `timings` array, in this order.
TIMING_FIELDS = ("wall", "cpu", "commits", "commit_seconds", "commit_p50", "commit_p99")


def produce_worker(
    bootstrap: str, topic: str, count: int, size: int, options: dict[str, Any], per_txn: int,
    api: str, many: int, sync: Any, progress: Any, timings: Any, index: int,
) -> None:  # fmt: skip
    """One producer process: connect (and init_transactions), wait at the barrier `sync`, send
    (committing every `per_txn` records if > 0), flush.

    Writes the `TIMING_FIELDS` (wall-clock and CPU seconds from the barrier to the end of the
    flush; its commits) into `timings[len(TIMING_FIELDS) * index:]`.
    """
    last = [0]

    def report(done: int) -> None:
        with progress.get_lock():
            progress.value += done - last[0]
        last[0] = done

    commits = _Commits()
    run_args = (bootstrap, topic, count, size, options, per_txn, sync, report, commits, many)
    if api == "aio":
        wall, cpu = trio.run(_produce_aio, *run_args)
    else:
        wall, cpu = _produce_blocking(*run_args)
    start = len(TIMING_FIELDS) * index
    timings[start : start + len(TIMING_FIELDS)] = [wall, cpu, *commits.summary()]


def run_produce(
    args: argparse.Namespace, bootstrap: str, topic: str, variant: Variant = DEFAULT
) -> dict[str, Any]:
    counter = multiprocessing.Value("q", 0)
    fields = len(TIMING_FIELDS)
    timings = multiprocessing.Array("d", fields * args.producers)
    # Producers start together once all have connected, so process start-up is not timed.
    sync = multiprocessing.Barrier(args.producers + 1)
    share = args.records // args.producers
    workers = [
        multiprocessing.Process(
            target=produce_worker,
            args=(
                bootstrap,
                topic,
                share,
                args.record_bytes,
                variant.options(args),  # one transactional id per process
                variant.transaction_records,
                args.api,
                send_many_records(args),
                sync,
                counter,
                timings,
                index,
            ),
        )
        for index in range(args.producers)
    ]
    total = share * args.producers
    with _step(f"starting {args.producers} producer process(es)"):
        for worker in workers:
            worker.start()
        sync.wait()
    with _progress() as progress:
        task = progress.add_task("produce", total=total)
        while any(worker.is_alive() for worker in workers):
            for worker in workers:
                worker.join(0.2)
            progress.update(task, completed=counter.value)
    if any(worker.exitcode != 0 for worker in workers):
        raise SystemExit("a producer process failed; see its traceback above")
    per_worker = [
        dict(zip(TIMING_FIELDS, timings[i : i + fields], strict=True))
        for i in range(0, len(timings), fields)
    ]
    wall = max(w["wall"] for w in per_worker)
    cpu = sum(w["cpu"] for w in per_worker)
    result = _rates("produce", total, args.record_bytes, wall, cpu)
    result["produce_api"] = args.produce_api
    commits = sum(int(w["commits"]) for w in per_worker)
    if commits:
        # With several producers: the slowest process's percentiles.
        result["transactions"] = commits
        commit_seconds = sum(w["commit_seconds"] for w in per_worker)
        result["commit_ms_mean"] = round(commit_seconds / commits * 1e3, 3)
        result["commit_p50_ms"] = round(max(w["commit_p50"] for w in per_worker) * 1e3, 3)
        result["commit_p99_ms"] = round(max(w["commit_p99"] for w in per_worker) * 1e3, 3)
        result["commit_share_of_wall"] = round(
            max(w["commit_seconds"] / w["wall"] for w in per_worker), 3
        )
    return result


# --- consume --------------------------------------------------------------------------------------


async def _consume(
    bootstrap: str, topic: str, partitions: int, total: int, size: int,
    start: dict[int, int] | None = None, isolation_level: str = "read_uncommitted",
) -> dict:  # fmt: skip
    """Read `total` records back, from the beginning or from `start` (partition -> offset).

    Stops early when nothing arrived for `CONSUME_STALL_S`; the result then says `stalled`.
    """
    async with aio.Consumer(
        bootstrap,
        auto_offset_reset="earliest",
        max_poll_records=100_000,
        isolation_level=isolation_level,
    ) as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        for partition, offset in (start or {}).items():
            consumer.seek(TopicPartition(topic, partition), offset)
        seen = value_bytes = 0
        stalled = False
        with _progress() as progress:
            task = progress.add_task("consume", total=total)
            wall, cpu = time.perf_counter(), time.process_time()
            last_progress = wall
            while seen < total:
                # Read every record's value, as an application would: poll() builds the record
                # objects as they are read (client/consumer_records.py), so a consumer that only
                # counted them would not pay for them.
                got = 0
                for record in await consumer.poll(timeout_ms=1000):
                    value_bytes += len(record.value)
                    got += 1
                now = time.perf_counter()
                if got:
                    seen, last_progress = seen + got, now
                    progress.update(task, completed=seen)
                elif now - last_progress > CONSUME_STALL_S:
                    stalled = True
                    break
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if stalled:
        console.print(f"[red]consume stalled: {seen:,} of {total:,} records after {wall:.1f} s")
        return {"records": seen, "expected": total, "stalled": True, "seconds": round(wall, 3)}
    assert value_bytes == seen * size, f"read {value_bytes} value bytes of {seen} records"
    return _rates("consume", seen, size, wall, cpu)


# --- latency --------------------------------------------------------------------------------------


async def _latency(
    args: argparse.Namespace, bootstrap: str, topic: str, variant: Variant = DEFAULT
) -> dict[str, Any]:
    total = int(args.rate * args.latency_seconds)
    padding = b"\0" * max(args.record_bytes - _STAMP.size, 0)
    latencies_ns: list[int] = []
    acks_ns: list[int] = []  # produce latency: send -> acknowledgement, per record
    options = {
        "auto_offset_reset": "latest",
        "fetch_max_wait_ms": args.latency_fetch_wait_ms,
        "isolation_level": variant.isolation_level,
    }
    async with aio.Consumer(bootstrap, **options) as c:
        c.assign([TopicPartition(topic, p) for p in range(args.partitions)])
        for p in range(args.partitions):
            await c.position(TopicPartition(topic, p))  # pin "latest" before sending
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _paced_send, args, bootstrap, topic, total, padding, acks_ns, variant
            )
            with (
                _progress(refresh_per_second=1) as progress,
                trio.fail_after(args.latency_seconds * 4 + 30),
            ):
                task = progress.add_task("latency", total=total)
                while len(latencies_ns) < total:
                    records = await c.poll(timeout_ms=1000)
                    now = time.time_ns()
                    latencies_ns += [now - _STAMP.unpack_from(r.value)[0] for r in records]
                    progress.update(task, completed=len(latencies_ns))
    latencies_ns.sort()
    acks_ns.sort()

    def pct(values: list[int], q: float) -> float:
        return round(values[min(int(q * len(values)), len(values) - 1)] / 1e6, 3)

    return {
        "rate_records_per_s": args.rate,
        "records": len(latencies_ns),
        "p50_ms": pct(latencies_ns, 0.50),
        "p99_ms": pct(latencies_ns, 0.99),
        "p999_ms": pct(latencies_ns, 0.999),
        "max_ms": round(latencies_ns[-1] / 1e6, 3),
        "produce_p50_ms": pct(acks_ns, 0.50),
        "produce_p99_ms": pct(acks_ns, 0.99),
        "produce_p999_ms": pct(acks_ns, 0.999),
    }


def _acked(acks_ns: list[int], sent_ns: int, metadata: Any, error: BaseException | None) -> None:
    if error is None:
        acks_ns.append(time.time_ns() - sent_ns)


async def _paced_send(
    args: argparse.Namespace, bootstrap: str, topic: str, total: int, padding: bytes,
    acks_ns: list[int], variant: Variant,
) -> None:  # fmt: skip
    # Bursts of LATENCY_BURST records on a fixed schedule: the rate is exact on average and the
    # schedule does not drift when one tick runs late. A transactional variant commits after
    # every `transaction_records` (rounded up to whole bursts) and at the end.
    interval = LATENCY_BURST / args.rate
    per_txn = variant.transaction_records
    # The producer's own batching (adaptive by default: a record leaves at once when nothing is
    # in flight), as an application gets it: no linger override.
    async with aio.Producer(bootstrap, **variant.options(args)) as producer:
        await producer.load_topic(topic)
        if per_txn:
            await producer.init_transactions()
            producer.begin_transaction()
        start, start_ns, in_txn = trio.current_time(), time.time_ns(), 0
        for tick in range(total // LATENCY_BURST):
            await trio.sleep_until(start + tick * interval)
            scheduled_ns = start_ns + round(tick * interval * 1e9)
            for _ in range(LATENCY_BURST):
                now = scheduled_ns if variant.scheduled_stamps else time.time_ns()
                callback = functools.partial(_acked, acks_ns, now)
                await producer.send(topic, _STAMP.pack(now) + padding, callback=callback)
            in_txn += LATENCY_BURST
            if per_txn and in_txn >= per_txn:
                await producer.commit_transaction()
                producer.begin_transaction()
                in_txn = 0
        if per_txn:
            await producer.commit_transaction()
        await producer.flush()


# --- driver ---------------------------------------------------------------------------------------


def _rates(phase: str, records: int, size: int, wall: float, cpu: float) -> dict[str, Any]:
    # Client CPU per record is the figure that survives a busy machine: wall-clock rates drop
    # when other processes take the cores, CPU per record does not (much).
    return {
        "records": records,
        "seconds": round(wall, 3),
        "records_per_s": round(records / wall),
        "mb_per_s": round(records * size / wall / 1e6, 2),
        "client_cpu_seconds": round(cpu, 3),
        "client_cpu_us_per_record": round(cpu / records * 1e6, 3),
    }


def _progress(refresh_per_second: float = 10) -> Progress:
    # The bar redraws from rich's own thread, which takes the GIL from the measured loop: the
    # latency phase redraws rarely so that the bar does not show up in its tail.
    return Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        refresh_per_second=refresh_per_second,
    )


@contextlib.contextmanager
def _step(description: str) -> Iterator[None]:
    """An untimed step (starting brokers, creating or settling topics): a pulsing bar on stderr,
    so that a wait of several seconds never looks like a hang."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        progress.add_task(description, total=None)
        yield


def _create_topic(
    bootstrap: str, partitions: int, config: dict[str, Any], replication_factor: int = 1
) -> str:
    topic = f"bench-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with aio.AdminClient(bootstrap) as admin:
            await admin.create_topic(
                topic, partitions, replication_factor=replication_factor, config=config or None
            )

    with _step(f"creating topic {topic}"):
        trio.run(create)
    return topic


def _settle(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Wait until every partition of `topic` is led by its preferred leader (replicas[0]), then
    return each partition's end offset: where the benchmark's records will start.

    In a cluster a partition's log starts with Raft leader no-ops, and leadership moves to the
    preferred leader about a second after the first election: neither should be timed.
    """

    async def settle() -> dict[int, int]:
        async with aio.AdminClient(bootstrap) as admin:
            with trio.fail_after(SETTLE_TIMEOUT_S):
                while True:
                    (description,) = await admin.describe_topics([topic])
                    settled = len(description.partitions) == partitions and all(
                        p.leader_id > 0 and p.replicas and p.leader_id == p.replicas[0]
                        for p in description.partitions
                    )
                    if settled:
                        break
                    await trio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        # The consumer asks each partition's leader (AdminClient.list_offsets asks any broker,
        # and a non-leader answers NOT_LEADER in a cluster).
        async with aio.Consumer(bootstrap) as consumer:
            with trio.fail_after(SETTLE_TIMEOUT_S):
                while True:  # a leader that has not committed its no-op yet may answer an error
                    try:
                        ends = await consumer.end_offsets(tps)
                        break
                    except BrokerError:
                        await trio.sleep(0.1)
        return {tp.partition: offset for tp, offset in ends.items()}

    with _step(f"waiting for the preferred leaders of {topic}"):
        return trio.run(settle)


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    async def delete() -> None:
        async with aio.AdminClient(bootstrap) as admin:
            for topic in topics:
                await admin.delete_topic(topic)

    with _step(f"deleting {', '.join(topics)}"):
        trio.run(delete)


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) a process and its running children (a broker's fsync helper
    processes) have used so far, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    # Fields 14 and 15 of stat (utime, stime), counted after the ")" that ends the name.
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(_cpu_seconds(int(child)) or 0.0 for child in children)


def _cpu_total(pids: list[int]) -> float | None:
    """CPU time of all the brokers together; None if any is unknown (or there are none)."""
    seconds = [_cpu_seconds(pid) for pid in pids]
    if not seconds or any(value is None for value in seconds):
        return None
    return sum(value for value in seconds if value is not None)


def _with_broker_cpu(result: dict[str, Any], pids: list[int], before: float | None) -> None:
    after = _cpu_total(pids)
    if before is not None and after is not None and result["records"]:
        result["broker_cpu_us_per_record"] = round((after - before) / result["records"] * 1e6, 3)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version()}


def run_phases(
    args: argparse.Namespace, bootstrap: str, pids: list[int], *, replication_factor: int = 1,
    cluster: bool = False, cleanup: bool = False, variant: Variant = DEFAULT,
) -> dict[str, Any]:  # fmt: skip
    """Produce, consume and (unless --skip-latency) latency on fresh topics of `bootstrap`,
    producing as `variant` says.

    `cluster`: wait for preferred leaders before timing and consume from the end offsets read
    then (past the Raft no-ops). `cleanup`: delete the topics afterwards, so that their idle
    Raft groups do not load the next case.
    """
    config = topic_config(args)
    results: dict[str, Any] = {}
    topic = _create_topic(bootstrap, args.partitions, config, replication_factor)
    start = _settle(bootstrap, topic, args.partitions) if cluster else None
    before = _cpu_total(pids)
    results["produce"] = run_produce(args, bootstrap, topic, variant)
    _with_broker_cpu(results["produce"], pids, before)
    console.print(f"produce: {results['produce']}")
    total = results["produce"]["records"]
    before = _cpu_total(pids)
    results["consume"] = trio.run(
        _consume, bootstrap, topic, args.partitions, total, args.record_bytes, start,
        variant.isolation_level,
    )  # fmt: skip
    _with_broker_cpu(results["consume"], pids, before)
    console.print(f"consume: {results['consume']}")
    topics = [topic]
    if not args.skip_latency:
        latency_topic = _create_topic(bootstrap, args.partitions, config, replication_factor)
        topics.append(latency_topic)
        if cluster:
            _settle(bootstrap, latency_topic, args.partitions)
        results["latency"] = trio.run(_latency, args, bootstrap, latency_topic, variant)
        console.print(f"latency: {results['latency']}")
    if cleanup:
        _delete_topics(bootstrap, topics)
    return results


def run(args: argparse.Namespace, bootstrap: str, broker_pid: int | None = None) -> dict[str, Any]:
    """The single-broker benchmark (--brokers 1)."""
    results: dict[str, Any] = {"params": _params(args), "machine": _machine()}
    results.update(run_phases(args, bootstrap, [] if broker_pid is None else [broker_pid]))
    return results


def workload(args: argparse.Namespace) -> str:
    return (
        f"{args.records:,} records of {args.record_bytes} B, {args.partitions} partition(s), "
        f"{args.producers} producer(s), acks={args.acks}, linger {args.linger_ms} ms, "
        f"{args.brokers} broker(s), RF {args.replication_factor} vs RF 1"
        + (f", topic config {args.topic_config}" if args.topic_config else "")
        + ("" if args.skip_latency else f"; latency at {args.rate:,} records/s")
    )


@contextlib.contextmanager
def _brokers(args: argparse.Namespace, count: int) -> Iterator[tuple[str, list[int]]]:
    """(bootstrap, broker pids): `--bootstrap` (pids unknown), else `count` brokers started here
    (one single-node broker, or an N-broker cluster), stopped on exit."""
    if args.bootstrap:
        yield args.bootstrap, []
        return
    with contextlib.ExitStack() as stack:
        if count > 1:
            with _step(f"starting {count} brokers"):
                cluster = stack.enter_context(EmbeddedCluster(count))
            pids = [
                process.pid
                for node_id in cluster.node_ids
                if (process := cluster.node(node_id).process) is not None
            ]
            console.print(f"started {count} brokers at {cluster.bootstrap} (pids {pids})")
            yield cluster.bootstrap, pids
        else:
            with _step("starting a broker"):
                broker = stack.enter_context(EmbeddedBroker())
            console.print(f"started a broker at {broker.bootstrap} (data in {broker.data_dir})")
            yield broker.bootstrap, [broker.process.pid] if broker.process is not None else []


def run_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """Cluster mode: RF `--replication-factor` beside RF 1 on the same cluster, `--runs` times."""
    rf = args.replication_factor
    results: dict[str, Any] = {
        "params": _params(args),
        "machine": _machine(),
        "workload": workload(args),
        "baseline": f"RF 1 topic on the same {args.brokers}-broker cluster, same acks and "
        "partitions",
        "cases": {f"rf{rf}": [], "rf1": []},
    }
    console.print(f"workload: {results['workload']}")
    # ABBA: run 1 is RF R then RF 1, run 2 RF 1 then RF R...: drift falls on both cases.
    order = [rf, 1] if rf != 1 else [1]

    def measure(bootstrap: str, pids: list[int]) -> None:
        for run_index in range(args.runs):
            for case_rf in order if run_index % 2 == 0 else order[::-1]:
                console.rule(f"run {run_index + 1}: RF {case_rf} on {args.brokers} brokers")
                case = run_phases(
                    args, bootstrap, pids, replication_factor=case_rf, cluster=True, cleanup=True
                )
                results["cases"][f"rf{case_rf}"].append(case)

    with _brokers(args, args.brokers) as (bootstrap, pids):
        measure(bootstrap, pids)
    if args.single_node_baseline and not args.bootstrap:
        results["cases"]["single_node"] = []
        with _brokers(args, 1) as (bootstrap, pids):
            for run_index in range(args.runs):
                console.rule(f"run {run_index + 1}: single-node broker")
                results["cases"]["single_node"].append(run_phases(args, bootstrap, pids))
    results["summary"] = summarize(results["cases"], rf)
    return results


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(cases: dict[str, list[dict[str, Any]]], rf: int) -> dict[str, Any]:
    """Per case the mean of its runs; the RF R / RF 1 ratios (of means, and run by run)."""
    summary: dict[str, Any] = {}
    for name, runs in cases.items():
        produce = [r["produce"] for r in runs]
        summary[name] = {
            "produce_records_per_s": [p["records_per_s"] for p in produce],
            "produce_mb_per_s": [p["mb_per_s"] for p in produce],
            "mean_produce_records_per_s": round(_mean([p["records_per_s"] for p in produce]) or 0),
        }
    if rf != 1 and cases.get("rf1") and cases.get(f"rf{rf}"):
        ours, base = cases[f"rf{rf}"], cases["rf1"]
        summary[f"rf{rf}_over_rf1"] = round(
            summary[f"rf{rf}"]["mean_produce_records_per_s"]
            / summary["rf1"]["mean_produce_records_per_s"],
            3,
        )
        summary[f"rf{rf}_over_rf1_per_run"] = [
            round(a["produce"]["records_per_s"] / b["produce"]["records_per_s"], 3)
            for a, b in zip(ours, base, strict=False)
        ]
    return summary


def print_table(results: dict[str, Any]) -> None:
    table = Table(title="throughput benchmark")
    table.add_column("phase")
    table.add_column("result")
    for phase in ("produce", "consume"):
        r = results[phase]
        api = r.get("produce_api", "send")
        table.add_row(
            f"{phase} ({api})" if phase == "produce" else phase,
            f"{r['records_per_s']:,} records/s  {r['mb_per_s']} MB/s  "
            f"(CPU per record: client {r['client_cpu_us_per_record']} us, "
            f"broker {r.get('broker_cpu_us_per_record', '?')} us)",
        )
    if "latency" in results:
        r = results["latency"]
        table.add_row(
            f"e2e @ {r['rate_records_per_s']:,}/s",
            f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  p99.9 {r['p999_ms']} ms",
        )
        table.add_row(
            f"produce @ {r['rate_records_per_s']:,}/s",
            f"p50 {r['produce_p50_ms']} ms  p99 {r['produce_p99_ms']} ms  "
            f"p99.9 {r['produce_p999_ms']} ms",
        )
    Console().print(table)


def _consume_cell(r: dict[str, Any]) -> str:
    if r.get("stalled"):
        return f"STALLED at {r['records']:,}/{r['expected']:,}"
    return f"{r['records_per_s']:,}"


def print_cluster_table(results: dict[str, Any]) -> None:
    table = Table(title=f"replication cost: {results['workload']}")
    for column in (
        "case", "run", "produce rec/s", "MB/s", "broker CPU µs/rec", "consume rec/s",
        "produce p50/p99 ms", "e2e p50/p99 ms",
    ):  # fmt: skip
        table.add_column(column)
    for name, runs in results["cases"].items():
        label = name.replace("rf", "RF ") if name.startswith("rf") else "single node"
        for index, r in enumerate(runs, 1):
            p, latency = r["produce"], r.get("latency")
            table.add_row(
                label,
                str(index),
                f"{p['records_per_s']:,}",
                f"{p['mb_per_s']}",
                f"{p.get('broker_cpu_us_per_record', '?')}",
                _consume_cell(r["consume"]),
                f"{latency['produce_p50_ms']} / {latency['produce_p99_ms']}" if latency else "-",
                f"{latency['p50_ms']} / {latency['p99_ms']}" if latency else "-",
            )
    Console(width=max(Console().width, 120)).print(table)
    rf = results["params"]["replication_factor"]
    summary = results["summary"]
    if f"rf{rf}_over_rf1" in summary:
        ratio = summary[f"rf{rf}_over_rf1"]
        Console().print(
            f"RF {rf} / RF 1 produce throughput: {ratio:.0%} of the mean "
            f"(per run: {', '.join(f'{x:.0%}' for x in summary[f'rf{rf}_over_rf1_per_run'])}); "
            f"target >= 40%: {'met' if ratio >= 0.4 else 'NOT met'}"
        )


# --- producer cost (--idempotent, --transactions N) --------------------------------------------


def cost_workload(args: argparse.Namespace) -> str:
    where = (
        f"{args.brokers} broker(s), RF {args.replication_factor}"
        if args.brokers > 1
        else "1 broker"
    )
    return (
        f"{args.records:,} records of {args.record_bytes} B per variant, {args.partitions} "
        f"partition(s), {args.producers} producer(s), acks=all, linger {args.linger_ms} ms, "
        f"max in flight {args.max_in_flight}, {where}"
        + (
            f", retry backoff {args.retry_backoff_ms} ms"
            if args.retry_backoff_ms is not None
            else ""
        )
        + (f", {args.transactions:,} records per transaction" if args.transactions else "")
        + (f", topic config {args.topic_config}" if args.topic_config else "")
        + ("" if args.skip_latency else f"; latency at {args.rate:,} records/s")
    )


def run_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Every cost variant on fresh topics of the same broker(s), `--runs` times, rotated."""
    variants = cost_variants(args)
    results: dict[str, Any] = {
        "params": _params(args),
        "machine": _machine(),
        "workload": cost_workload(args),
        "baseline": "plain: enable_idempotence=False, acks=all, in the same run",
        "order": [],
        "cases": {variant.name: [] for variant in variants},
    }
    console.print(f"workload: {results['workload']}")
    with _brokers(args, args.brokers) as (bootstrap, pids):
        for run_index in range(args.runs):
            shift = run_index % len(variants)
            order = variants[shift:] + variants[:shift]
            results["order"].append([variant.name for variant in order])
            for variant in order:
                console.rule(f"run {run_index + 1}: {variant.name}")
                case = run_phases(
                    args, bootstrap, pids, replication_factor=args.replication_factor,
                    cluster=args.brokers > 1, cleanup=True, variant=variant,
                )  # fmt: skip
                results["cases"][variant.name].append(case)
    results["summary"] = summarize_cost(results["cases"])
    return results


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_cost(cases: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant the medians of its runs, and its cost: 1 - (its records/s / plain's records/s
    in the same run), the median of the per-run values."""
    summary: dict[str, Any] = {}
    plain = cases["plain"]
    for name, runs in cases.items():
        produce = [r["produce"] for r in runs]
        latency = [r["latency"] for r in runs if "latency" in r]
        median = {
            key: _median([p[key] for p in produce if key in p])
            for key in (
                "records_per_s", "mb_per_s", "client_cpu_us_per_record",
                "broker_cpu_us_per_record", "commit_p50_ms", "commit_p99_ms",
                "commit_share_of_wall",
            )
        }  # fmt: skip
        for key in ("produce_p50_ms", "produce_p99_ms", "p50_ms", "p99_ms"):
            median[key] = _median([r[key] for r in latency])
        entry: dict[str, Any] = {"median": {k: v for k, v in median.items() if v is not None}}
        if name != "plain":
            costs = [
                round(1 - r["produce"]["records_per_s"] / b["produce"]["records_per_s"], 3)
                for r, b in zip(runs, plain, strict=True)
            ]
            entry["cost_per_run"] = costs
            entry["cost"] = round(statistics.median(costs), 3)
            if name in COST_TARGETS:
                entry["target"] = COST_TARGETS[name]
                entry["target_met"] = entry["cost"] <= COST_TARGETS[name]
        summary[name] = entry
    return summary


def _pair(values: dict[str, Any] | None, low: str, high: str) -> str:
    if not values or values.get(low) is None:
        return "-"
    return f"{values[low]:g} / {values[high]:g}"


def print_cost_table(results: dict[str, Any]) -> None:
    table = Table(title=f"producer cost: {results['workload']}")
    for column in (
        "variant", "run", "produce rec/s", "MB/s", "cost vs plain", "client CPU µs/rec",
        "broker CPU µs/rec", "commit p50/p99 ms", "consume rec/s", "produce p50/p99 ms",
        "e2e p50/p99 ms",
    ):  # fmt: skip
        table.add_column(column)
    summary = results["summary"]
    for name, runs in results["cases"].items():
        plain = results["cases"]["plain"]
        for index, r in enumerate(runs):
            p, latency = r["produce"], r.get("latency")
            cost = 1 - p["records_per_s"] / plain[index]["produce"]["records_per_s"]
            table.add_row(
                name,
                str(index + 1),
                f"{p['records_per_s']:,}",
                f"{p['mb_per_s']}",
                "-" if name == "plain" else f"{cost:.1%}",
                f"{p['client_cpu_us_per_record']}",
                f"{p.get('broker_cpu_us_per_record', '?')}",
                _pair(p, "commit_p50_ms", "commit_p99_ms"),
                _consume_cell(r["consume"]),
                _pair(latency, "produce_p50_ms", "produce_p99_ms"),
                _pair(latency, "p50_ms", "p99_ms"),
            )
        m = summary[name]["median"]
        table.add_row(
            f"[bold]{name}",
            "median",
            f"[bold]{m['records_per_s']:,.0f}",
            f"{m['mb_per_s']:g}",
            f"[bold]{summary[name]['cost']:.1%}" if "cost" in summary[name] else "-",
            f"{m['client_cpu_us_per_record']:g}",
            f"{m['broker_cpu_us_per_record']:g}" if "broker_cpu_us_per_record" in m else "?",
            _pair(m, "commit_p50_ms", "commit_p99_ms"),
            "",
            _pair(m, "produce_p50_ms", "produce_p99_ms"),
            _pair(m, "p50_ms", "p99_ms"),
            end_section=True,
        )
    Console(width=max(Console().width, 160)).print(table)
    for name, entry in summary.items():
        if "target" in entry:
            Console().print(
                f"{name}: costs {entry['cost']:.1%} of plain's records/s (median of per-run "
                f"costs {', '.join(f'{c:.1%}' for c in entry['cost_per_run'])}); target <= "
                f"{entry['target']:.0%}: {'met' if entry['target_met'] else 'NOT met'}"
            )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.share_group:
        from benchmarks import share_queue  # imports this module: only in its mode

        results = share_queue.run_share_group(args)
    elif args.cost:
        results = run_cost(args)
    elif args.brokers > 1:
        results = run_cluster(args)
    else:
        with _brokers(args, 1) as (bootstrap, pids):
            results = run(args, bootstrap, pids[0] if pids else None)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    if args.share_group:
        share_queue.print_share_table(results)
    elif args.cost:
        print_cost_table(results)
    elif args.brokers > 1:
        print_cluster_table(results)
    else:
        print_table(results)
    console.print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
