"""Round trip: what one request costs, when nothing is amortised over a batch.

    python -m benchmarks.round_trip                    # acks=1, 5 s, a broker of its own
    python -m benchmarks.round_trip --acks all --seconds 10
    python -m benchmarks.round_trip --brokers 3 --acks all   # a 3-broker cluster, RF 3
    python -m benchmarks.round_trip --bootstrap 127.0.0.1:9092

One `aio.Producer` sends one `--record-bytes` record and waits for its acknowledgement, again and
again, for `--seconds` (after a warm-up). Nothing overlaps, so each round trip pays the whole
per-request path: the SDK's tasks and scheduler passes, the framing, the system calls on both
sides, the broker's dispatch. That path is what the end-to-end latency at a low rate (issue 15's
10,000 records/s) is made of, and what the throughput benchmarks hide by batching.

It prints and writes (`--json`, default benchmarks/results/round_trip.json) the round trips per
second, the wall time per round trip (mean, p50, p99), and the CPU per round trip of the client
process and, when it started the brokers itself, of the brokers (from /proc; with `--brokers 3`
their sum, the topic at replication factor 3, so a round trip includes the replication). CPU per
round trip is the figure to compare between two trees: it moves far less with the machine's
load than the wall time does (docs/performance.md, "Per-request overhead at low rates").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.throughput import _cpu_total
from client import aio
from client.embedded import EmbeddedBroker
from client.embedded_cluster import EmbeddedCluster
from client.errors import TopicAlreadyExistsError

RESULTS_DEFAULT = Path(__file__).parent / "results" / "round_trip.json"
TOPIC = "round-trip"
WARM_UP_ROUND_TRIPS = 500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=None, help="a running broker (default: start one)")
    parser.add_argument(
        "--brokers", type=int, default=1, help="brokers to start (the topic's replication factor)"
    )
    parser.add_argument("--acks", choices=["0", "1", "all"], default="1")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time")
    parser.add_argument("--record-bytes", type=int, default=100)
    parser.add_argument("--json", type=Path, default=RESULTS_DEFAULT, help="where to write")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.record_bytes < 0:
        parser.error("--seconds must be positive and --record-bytes not negative")
    if args.brokers < 1:
        parser.error("--brokers must be >= 1")
    if args.acks == "0":
        parser.error("--acks 0 has no acknowledgement to wait for: use 1 or all")
    return args


async def measure(
    bootstrap: str, args: argparse.Namespace, broker_pids: list[int]
) -> dict[str, Any]:
    acks: int | str = "all" if args.acks == "all" else int(args.acks)
    value = os.urandom(args.record_bytes)
    async with aio.AdminClient(bootstrap) as admin:
        # A broker given with --bootstrap may hold the topic from an earlier run.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topic(TOPIC, 1, replication_factor=args.brokers)
    async with aio.Producer(bootstrap, acks=acks) as producer:
        await producer.load_topic(TOPIC)
        for _ in range(WARM_UP_ROUND_TRIPS):
            await (await producer.send(TOPIC, value))
        walls: list[float] = []
        broker_before = _cpu_total(broker_pids)
        cpu_before, started = time.process_time(), time.perf_counter()
        end = started + args.seconds
        now = started
        while now < end:
            await (await producer.send(TOPIC, value))
            then, now = now, time.perf_counter()
            walls.append(now - then)
        elapsed, client_cpu = now - started, time.process_time() - cpu_before
        broker_after = _cpu_total(broker_pids)
        broker_cpu = (
            broker_after - broker_before
            if broker_after is not None and broker_before is not None
            else None
        )
    count = len(walls)
    walls.sort()
    return {
        "workload": {
            "acks": args.acks,
            "brokers": args.brokers,
            "record_bytes": args.record_bytes,
            "seconds": elapsed,
        },
        "round_trips": count,
        "round_trips_per_s": round(count / elapsed),
        "wall_us_mean": round(1e6 * elapsed / count, 1),
        "wall_us_p50": round(1e6 * statistics.median(walls), 1),
        "wall_us_p99": round(1e6 * walls[min(count - 1, int(0.99 * count))], 1),
        "client_cpu_us_per_round_trip": round(1e6 * client_cpu / count, 1),
        "broker_cpu_us_per_round_trip": (
            round(1e6 * broker_cpu / count, 1) if broker_cpu is not None else None
        ),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.bootstrap is not None:
        result = trio.run(measure, args.bootstrap, args, [])
    elif args.brokers == 1:
        with EmbeddedBroker() as broker:
            assert broker.process is not None
            result = trio.run(measure, broker.bootstrap, args, [broker.process.pid])
    else:
        with EmbeddedCluster(args.brokers) as cluster:
            pids = [cluster.node(node).process.pid for node in range(1, args.brokers + 1)]  # type: ignore[union-attr]
            result = trio.run(measure, cluster.bootstrap, args, pids)
    print(
        f"round trips ({args.brokers} broker(s), acks={args.acks}, {args.record_bytes}-byte "
        "records, one at a time): "
        f"{result['round_trips_per_s']:,}/s; wall µs mean {result['wall_us_mean']}, "
        f"p50 {result['wall_us_p50']}, p99 {result['wall_us_p99']}; CPU µs per round trip: "
        f"client {result['client_cpu_us_per_round_trip']}, "
        f"broker {result['broker_cpu_us_per_round_trip']}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
