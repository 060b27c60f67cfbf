"""`python -m benchmarks.compare`: this broker beside NATS JetStream and Redis Streams.

    python -m benchmarks.compare                       # every system, 3 interleaved runs
    python -m benchmarks.compare --quick               # a reduced size, under 5 minutes
    python -m benchmarks.compare --systems pybroker,nats-r1 --json out.json
    python -m benchmarks.compare --workloads latency   # one workload (consume needs produce)

Each run starts one system, runs produce, consume and latency on it, and stops it, so that no
idle server takes CPU from the measured one; runs go round-robin over the systems, the order
rotated each time (run 1: A B C, run 2: B C A, ...), so that drift on a shared machine falls on
every system alike. A system whose client or server is not installed is skipped with a note.
The table goes to stdout; the JSON and the PNG chart to `--results-dir` (benchmarks/results/),
the JSON also to `--json PATH`. See docs/benchmarks-compare.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.compare import report, system_nats, system_pybroker, system_redis
from benchmarks.compare.measure import WORKLOADS, Session, System, Workload, server_cpu
from benchmarks.throughput import _machine, _step, console

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
JSON_NAME = "compare.json"
CHART_NAME = "compare.png"
SYSTEM_NAMES = ("pybroker", "pybroker-send-many", "pybroker-rf3", "nats-r1", "nats-r3", "redis")
# Sizes: (records, runs, latency seconds) for a full run and for --quick.
FULL = (1_000_000, 3, 5.0)
QUICK = (50_000, 1, 3.0)
# Share of the records produced and consumed, untimed, before each system's timed workloads.
WARM_UP_SHARE = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEM_NAMES),
        help=f"comma-separated subset of {', '.join(SYSTEM_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"reduced size: {QUICK[0]:,} records, {QUICK[1]} run, {QUICK[2]:g} s of latency",
    )
    parser.add_argument(
        "--records", type=int, default=None, help=f"records per produce/consume (full {FULL[0]:,})"
    )
    parser.add_argument("--runs", type=int, default=None, help=f"runs per system (full {FULL[1]})")
    parser.add_argument("--record-bytes", type=int, default=100, help="value size in bytes")
    parser.add_argument("--rate", type=int, default=10_000, help="latency phase records/s")
    parser.add_argument(
        "--latency-seconds", type=float, default=None, help=f"latency phase (full {FULL[2]:g} s)"
    )
    parser.add_argument(
        "--peer-fsync",
        choices=["default", "always"],
        default="default",
        help="peers' fsync: their defaults (NATS every 2 min, Redis every second) or an fsync "
        "per write (NATS sync_interval: always, Redis appendfsync always)",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {', '.join(WORKLOADS)} (default: all; consume reads "
        "what produce wrote, so it needs produce)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where compare.json/.png go"
    )
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    args.records = size[0] if args.records is None else args.records
    args.runs = size[1] if args.runs is None else args.runs
    args.latency_seconds = size[2] if args.latency_seconds is None else args.latency_seconds
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEM_NAMES))
    if unknown or not args.systems:
        parser.error(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEM_NAMES)}")
    args.workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown or not args.workloads:
        parser.error(f"--workloads: unknown {unknown}; choose from {', '.join(WORKLOADS)}")
    if "consume" in args.workloads and "produce" not in args.workloads:
        parser.error("--workloads: consume reads the records produce wrote: add produce")
    if min(args.records, args.runs, args.record_bytes, args.rate) < 1:
        parser.error("--records, --runs, --record-bytes and --rate must be >= 1")
    if args.record_bytes < 8:
        parser.error("--record-bytes must be >= 8: the latency phase stamps 8 bytes")
    if args.latency_seconds <= 0:
        parser.error("--latency-seconds must be > 0")
    return args


def all_systems(*, fsync_always: bool) -> list[System]:
    """Every system in table order."""
    return [
        *system_pybroker.systems(),
        *system_nats.systems(fsync_always=fsync_always),
        *system_redis.systems(fsync_always=fsync_always),
    ]


def schedule(names: list[str], runs: int) -> list[list[str]]:
    """Run i visits the systems rotated by i: drift falls on every system alike."""
    if not names:
        return []
    return [names[i % len(names) :] + names[: i % len(names)] for i in range(runs)]


def _measure(session: Session, workload: Workload, name: str) -> dict[str, Any]:
    """One workload on a running system, with the servers' CPU around it."""
    result: dict[str, Any] = {}
    with server_cpu(result, session.server_pids):
        result.update(getattr(session, name)(workload))
    if result.get("stalled"):
        raise RuntimeError(f"consume stalled at {result['records']:,} of {result['expected']:,}")
    return result


def warm_up(session: Session, workload: Workload) -> None:
    """Untimed: produce and consume `WARM_UP_SHARE` of the records on a stream of their own, so
    that no system's timed produce is also its first (connections, caches, a server's start-up
    work still under way)."""
    records = max(int(workload.records * WARM_UP_SHARE), 1)
    small = dataclasses.replace(workload, records=records)
    with _step(f"warming up with {records:,} records"):
        session.prepare_produce()
        session.produce(small)
        session.consume(small)


def run_system(
    system: System, workload: Workload, run: int, wanted: list[str]
) -> list[dict[str, Any]]:
    """Start `system`, run those of its workloads that are `wanted` (a system runs all three
    unless it says otherwise), stop it; a system with none of them is not started. A failure is
    recorded as an `error` measurement for the workloads it prevented (consume needs produce's
    records)."""
    names = tuple(name for name in system.workloads if name in wanted)
    if not names:
        return []
    measurements: list[dict[str, Any]] = []
    try:
        with system.running() as session:
            warm_up(session, workload)
            session.prepare_produce()
            for name in names:
                if name == "latency":
                    session.prepare_latency()
                measurements.append(_measure(session, workload, name))
                console.print(f"{system.name} {name}: {measurements[-1]}")
    except Exception as exc:
        console.print(f"[red]{system.name} run {run + 1} failed:[/] {exc!r}")
        traceback.print_exc()
        measurements += [{"error": f"{type(exc).__name__}: {exc}"}] * (
            len(names) - len(measurements)
        )
    return [
        {"system": system.name, "workload": name, "run": run + 1, **measurement}
        for name, measurement in zip(names, measurements, strict=True)
    ]


def title(args: argparse.Namespace) -> str:
    return (
        f"{args.records:,} records of {args.record_bytes} B per produce/consume, latency at "
        f"{args.rate:,} records/s for {args.latency_seconds:g} s, {args.runs} interleaved run(s), "
        f"{os.cpu_count()} cores (shared)"
    )


def runnable_systems(args: argparse.Namespace) -> tuple[list[System], list[str]]:
    """The chosen systems that can run here, and a note for each one skipped."""
    chosen = [
        s for s in all_systems(fsync_always=args.peer_fsync == "always") if s.name in args.systems
    ]
    runnable, notes = [], []
    for system in chosen:
        reason = system.missing()
        if reason:
            notes.append(f"{system.name} skipped: {reason}")
            console.print(f"[yellow]{system.name} skipped:[/] {reason}")
        else:
            runnable.append(system)
    return runnable, notes


def write_outputs(args: argparse.Namespace, results: dict[str, Any]) -> list[Path]:
    """The chart (a note instead without matplotlib) and the JSON; the paths written."""
    written = []
    chart = args.results_dir / CHART_NAME
    if results["rows"]:
        if report.write_chart(results["rows"], chart, title(args)):
            written.append(chart)
        else:
            results["notes"].append(
                "no chart: matplotlib is not installed (pip install -e '.[bench]')"
            )
    for path in [args.results_dir / JSON_NAME, *([args.json] if args.json else [])]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workload = Workload(args.records, args.record_bytes, args.rate, args.latency_seconds)
    runnable, notes = runnable_systems(args)
    by_name = {system.name: system for system in runnable}
    order = schedule([system.name for system in runnable], args.runs)
    machine = {**_machine(), "loadavg_start": os.getloadavg()}
    measurements: list[dict[str, Any]] = []
    for run, names in enumerate(order):
        for name in names:
            console.rule(f"run {run + 1} of {args.runs}: {name}")
            measurements += run_system(by_name[name], workload, run, args.workloads)
    machine["loadavg_end"] = os.getloadavg()
    rows = report.build_rows(
        measurements,
        [
            {"name": s.name, "durability": s.durability, "compared_with": s.compared_with}
            for s in runnable
        ],
    )
    params = {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
    }
    results = report.document(rows, params=params, notes=notes, order=order, machine=machine)
    written = write_outputs(args, results)
    report.print_report(results, Console(width=max(Console().width, 170)), title(args))
    console.print(f"results written to {', '.join(str(path) for path in written)}")
    if any(row["errors"] for row in rows):
        raise SystemExit(1)
