"""Throughput and end-to-end latency of the SDK against a real broker.

    python -m benchmarks.throughput                       # starts its own broker
    python -m benchmarks.throughput --bootstrap HOST:PORT --records 2000000 --partitions 4

Three phases, each on a fresh topic of `--partitions` partitions:
1. produce: `--producers` processes each send records/P records of `--record-bytes` bytes
   (trio-native `client.aio.Producer`, or the blocking facade with `--api blocking`);
2. consume: one consumer reads every record back from the beginning;
3. latency: one producer sends at `--rate` records/s for `--latency-seconds` while a consumer
   in the same process reads; each value carries its send time, so latency = receive - send.
Results print as a table and go to benchmarks/results/throughput.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from client import aio
from client.blocking import Producer as BlockingProducer
from client.embedded import EmbeddedBroker
from client.types import TopicPartition

RESULTS_PATH = Path(__file__).parent / "results" / "throughput.json"
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
    parser.add_argument("--acks", default="1", choices=["0", "1", "all"])
    parser.add_argument("--linger-ms", type=float, default=5)
    parser.add_argument("--batch-bytes", type=int, default=512 * 1024)
    parser.add_argument("--compression", choices=["gzip", "zstd", "lz4"], default=None)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=1,
        help="producer max_in_flight_per_partition (1 keeps strict order across retries)",
    )
    parser.add_argument("--api", choices=["aio", "blocking"], default="aio")
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
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    return parser.parse_args(argv)


def topic_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in args.topic_config:
        key, _, value = item.partition("=")
        config[key] = int(value) if value.lstrip("-").isdigit() else value
    return config


def producer_options(args: argparse.Namespace, *, linger_ms: float | None = None) -> dict[str, Any]:
    return {
        "acks": args.acks if args.acks == "all" else int(args.acks),
        "linger_ms": args.linger_ms if linger_ms is None else linger_ms,
        "batch_bytes": args.batch_bytes,
        "compression": args.compression,
        "max_in_flight_per_partition": args.max_in_flight,
    }


# --- produce --------------------------------------------------------------------------------------


async def _produce_aio(
    bootstrap: str, topic: str, count: int, size: int, options: dict[str, Any], sync: Any,
    report: Callable[[int], None],
) -> tuple[float, float]:  # fmt: skip
    value = os.urandom(size)
    async with aio.Producer(bootstrap, **options) as producer:
        await producer.load_topic(topic)
        await trio.to_thread.run_sync(sync.wait)  # everyone connected: start the clock
        wall, cpu = time.perf_counter(), time.process_time()
        send = producer.send
        for i in range(count):
            await send(topic, value)
            if not i % 65_536:
                report(i)
        await producer.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    report(count)
    return wall, cpu


def _produce_blocking(
    bootstrap: str, topic: str, count: int, size: int, options: dict[str, Any], sync: Any,
    report: Callable[[int], None],
) -> tuple[float, float]:  # fmt: skip
    value = os.urandom(size)
    with BlockingProducer(bootstrap, **options) as producer:
        producer.partitions_for(topic)
        sync.wait()
        wall, cpu = time.perf_counter(), time.process_time()
        send = producer.send
        for i in range(count):
            send(topic, value)
            if not i % 65_536:
                report(i)
        producer.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    report(count)
    return wall, cpu


def produce_worker(
    bootstrap: str, topic: str, count: int, size: int, options: dict[str, Any], api: str,
    sync: Any, progress: Any, timings: Any, index: int,
) -> None:  # fmt: skip
    """One producer process: connect, wait at the barrier `sync`, send, flush.

    Writes its wall-clock and CPU seconds (from the barrier to the end of the flush) into
    `timings[2 * index]` and `timings[2 * index + 1]`.
    """
    last = [0]

    def report(done: int) -> None:
        with progress.get_lock():
            progress.value += done - last[0]
        last[0] = done

    if api == "aio":
        wall, cpu = trio.run(_produce_aio, bootstrap, topic, count, size, options, sync, report)
    else:
        wall, cpu = _produce_blocking(bootstrap, topic, count, size, options, sync, report)
    timings[2 * index], timings[2 * index + 1] = wall, cpu


def run_produce(args: argparse.Namespace, bootstrap: str, topic: str) -> dict[str, Any]:
    counter = multiprocessing.Value("q", 0)
    timings = multiprocessing.Array("d", 2 * args.producers)
    # Producers start together once all have connected, so process start-up is not timed.
    sync = multiprocessing.Barrier(args.producers + 1)
    share = args.records // args.producers
    options = producer_options(args)
    workers = [
        multiprocessing.Process(
            target=produce_worker,
            args=(
                bootstrap,
                topic,
                share,
                args.record_bytes,
                options,
                args.api,
                sync,
                counter,
                timings,
                index,
            ),
        )
        for index in range(args.producers)
    ]
    total = share * args.producers
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
    wall = max(timings[0::2])
    cpu = sum(timings[1::2])
    return _rates("produce", total, args.record_bytes, wall, cpu)


# --- consume --------------------------------------------------------------------------------------


async def _consume(bootstrap: str, topic: str, partitions: int, total: int, size: int) -> dict:
    async with aio.Consumer(
        bootstrap, auto_offset_reset="earliest", max_poll_records=100_000
    ) as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        seen = 0
        with _progress() as progress:
            task = progress.add_task("consume", total=total)
            wall, cpu = time.perf_counter(), time.process_time()
            while seen < total:
                seen += len(await consumer.poll(timeout_ms=5000))
                progress.update(task, completed=seen)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return _rates("consume", seen, size, wall, cpu)


# --- latency --------------------------------------------------------------------------------------


async def _latency(args: argparse.Namespace, bootstrap: str, topic: str) -> dict[str, Any]:
    total = int(args.rate * args.latency_seconds)
    padding = b"\0" * max(args.record_bytes - _STAMP.size, 0)
    latencies_ns: list[int] = []
    options = {"auto_offset_reset": "latest", "fetch_max_wait_ms": args.latency_fetch_wait_ms}
    async with aio.Consumer(bootstrap, **options) as c:
        c.assign([TopicPartition(topic, p) for p in range(args.partitions)])
        for p in range(args.partitions):
            await c.position(TopicPartition(topic, p))  # pin "latest" before sending
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_paced_send, args, bootstrap, topic, total, padding)
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

    def pct(q: float) -> float:
        return latencies_ns[min(int(q * len(latencies_ns)), len(latencies_ns) - 1)] / 1e6

    return {
        "rate_records_per_s": args.rate,
        "records": len(latencies_ns),
        "p50_ms": round(pct(0.50), 3),
        "p99_ms": round(pct(0.99), 3),
        "p999_ms": round(pct(0.999), 3),
        "max_ms": round(latencies_ns[-1] / 1e6, 3),
    }


async def _paced_send(
    args: argparse.Namespace, bootstrap: str, topic: str, total: int, padding: bytes
) -> None:
    # Bursts of LATENCY_BURST records on a fixed schedule: the rate is exact on average and the
    # schedule does not drift when one tick runs late.
    interval = LATENCY_BURST / args.rate
    async with aio.Producer(bootstrap, **producer_options(args, linger_ms=0)) as producer:
        await producer.load_topic(topic)
        start = trio.current_time()
        for tick in range(total // LATENCY_BURST):
            await trio.sleep_until(start + tick * interval)
            for _ in range(LATENCY_BURST):
                await producer.send(topic, _STAMP.pack(time.time_ns()) + padding)
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


def _create_topic(bootstrap: str, partitions: int, config: dict[str, Any]) -> str:
    topic = f"bench-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with aio.AdminClient(bootstrap) as admin:
            await admin.create_topic(topic, partitions, config=config or None)

    trio.run(create)
    return topic


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) a process has used so far, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of stat (utime, stime), counted after the ")" that ends the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_broker_cpu(result: dict[str, Any], pid: int | None, before: float | None) -> None:
    after = _cpu_seconds(pid)
    if before is not None and after is not None:
        result["broker_cpu_us_per_record"] = round((after - before) / result["records"] * 1e6, 3)


def run(args: argparse.Namespace, bootstrap: str, broker_pid: int | None = None) -> dict[str, Any]:
    config = topic_config(args)
    results: dict[str, Any] = {
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    topic = _create_topic(bootstrap, args.partitions, config)
    before = _cpu_seconds(broker_pid)
    results["produce"] = run_produce(args, bootstrap, topic)
    _with_broker_cpu(results["produce"], broker_pid, before)
    console.print(f"produce: {results['produce']}")
    total = results["produce"]["records"]
    before = _cpu_seconds(broker_pid)
    results["consume"] = trio.run(
        _consume, bootstrap, topic, args.partitions, total, args.record_bytes
    )
    _with_broker_cpu(results["consume"], broker_pid, before)
    console.print(f"consume: {results['consume']}")
    if not args.skip_latency:
        latency_topic = _create_topic(bootstrap, args.partitions, config)
        results["latency"] = trio.run(_latency, args, bootstrap, latency_topic)
        console.print(f"latency: {results['latency']}")
    return results


def print_table(results: dict[str, Any]) -> None:
    table = Table(title="throughput benchmark")
    table.add_column("phase")
    table.add_column("result")
    for phase in ("produce", "consume"):
        r = results[phase]
        table.add_row(
            phase,
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
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.bootstrap:
        results = run(args, args.bootstrap)
    else:
        with EmbeddedBroker() as broker:
            console.print(f"started a broker at {broker.bootstrap} (data in {broker.data_dir})")
            pid = broker.process.pid if broker.process is not None else None
            results = run(args, broker.bootstrap, pid)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    console.print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
