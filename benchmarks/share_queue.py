"""Queue throughput: share consumers on one partition, beside a consumer group (issue 12).

    python -m benchmarks.throughput --share-group --consumers 4          # starts its own broker
    python -m benchmarks.throughput --share-group --consumers 2 --runs 3 --max-poll-records 2000
    python -m benchmarks.throughput --share-group --bootstrap HOST:PORT --records 2000000

Before any clock starts, `--records` records of `--record-bytes` bytes go to a fresh topic of one
partition (the produce phase of benchmarks/throughput.py, with its producer flags). Each run then
measures two cases on that topic, each with a fresh group, the order alternating ABBA-style over
`--runs` so that drift on a shared machine falls on both:
1. share: the group is configured with share.auto.offset.reset=earliest; `--consumers` processes
   each run a `client.aio.ShareConsumer` in implicit mode (`--max-poll-records` per poll): the
   records of one poll are accepted by the next (`--share-fetch-max-bytes` sets their
   fetch_max_bytes). They connect, meet at a barrier, and poll until told to stop. The clock
   runs from the first record any of them got to the moment DescribeShareGroups shows the
   share-partition start offset (SPSO) at the topic's end offset: every record accepted. The
   describe is asked every `DESCRIBE_INTERVAL_S` once the consumers have received as many
   records as the topic holds. It shows the coordinator's window, which runs ahead of its
   fsynced log by at most the group-committed write in flight.
2. consumer group: one `client.aio.Consumer` member (the topic has one partition) in a process of
   its own, subscribed with auto_offset_reset=earliest and the same max_poll_records; its clock
   runs from its first record to the end of its commit() of the last offset.
Per case: records/s, MB/s, records per consumer, the redeliveries DescribeShareGroups counted
(0 unless a lock expired), the time of each poll that returned records (for a share consumer one
ShareFetch round trip, whose acknowledgements the coordinator writes before answering, plus the
decoding), and the CPU per record of the consumers and of the broker(s). The summary is the median
of the runs and of the per-run share / consumer-group ratios. Results print as a table and go to
benchmarks/results/throughput-share.json.

Times are `time.monotonic()` (CLOCK_MONOTONIC on Linux: one clock for every process).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import statistics
import threading
import time
import uuid
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from benchmarks.throughput import (
    CONSUME_STALL_S,
    _brokers,
    _consume_cell,
    _cpu_total,
    _create_topic,
    _delete_topics,
    _machine,
    _params,
    _progress,
    _quantile,
    _rates,
    _settle,
    _with_broker_cpu,
    console,
    run_produce,
    topic_config,
)
from client import aio
from client.types import TopicPartition

# Issue 12's target: records/s accepted by 4 share consumers on one partition (2 cores).
SHARE_TARGET_RECORDS_PER_S = 100_000
SHARE_TARGET_CONSUMERS = 4
# Consumer processes connect and meet at a barrier; one that has not arrived by then failed.
BARRIER_TIMEOUT_S = 60.0
# How often the parent looks at the consumers' progress, and then asks DescribeShareGroups.
WATCH_INTERVAL_S = 0.05
DESCRIBE_INTERVAL_S = 0.01
# How long SPSO may take to reach the end once every record was delivered: past the lock
# duration (30 s by default), a record whose acknowledgement got lost is redelivered.
TAIL_TIMEOUT_S = 60.0
# A consumer's poll timeout: it looks at the stop signal at least this often.
POLL_TIMEOUT_MS = 1000
SHARE_FINISH = "SPSO at the end offset in DescribeShareGroups (every record accepted)"
GROUP_FINISH = "the member's commit() of the last offset returned"


# --- the consumer processes -----------------------------------------------------------------------


class _Tally:
    """One consumer's count, first record time, poll times and CPU; `add` after each poll."""

    def __init__(self, counter: Any, firsts: Any, index: int) -> None:
        self.counter, self.firsts, self.index = counter, firsts, index
        self.records = 0
        self.polls: list[float] = []
        self.cpu_start = time.process_time()
        self.cpu = 0.0

    def add(self, got: int, began: float) -> None:
        if not got:
            return
        now = time.monotonic()
        if not self.records:
            self.firsts[self.index] = now
        self.records += got
        self.polls.append(now - began)
        self.cpu = time.process_time() - self.cpu_start
        with self.counter.get_lock():
            self.counter.value += got

    def result(self, **extra: Any) -> dict[str, Any]:
        return {"records": self.records, "polls": self.polls, "cpu": self.cpu, **extra}


async def _share_consumer(
    bootstrap: str, topic: str, group: str, options: dict[str, Any], total: int, sync: Any,
    stop: Any, tally: _Tally,
) -> dict[str, Any]:  # fmt: skip
    async with aio.ShareConsumer(bootstrap, group_id=group, **options) as consumer:
        consumer.subscribe([topic])
        await trio.to_thread.run_sync(sync.wait, BARRIER_TIMEOUT_S)
        tally.cpu_start = time.process_time()
        poll = consumer.poll
        while not stop.is_set():
            began = time.monotonic()
            tally.add(len(await poll(timeout_ms=POLL_TIMEOUT_MS)), began)
        # Leaving: close() sends what is pending (nothing: the last poll accepted it all).
    return tally.result()


async def _group_consumer(
    bootstrap: str, topic: str, group: str, options: dict[str, Any], total: int, sync: Any,
    stop: Any, tally: _Tally,
) -> dict[str, Any]:  # fmt: skip
    async with aio.Consumer(
        bootstrap, group_id=group, auto_offset_reset="earliest", **options
    ) as consumer:
        await trio.to_thread.run_sync(sync.wait, BARRIER_TIMEOUT_S)
        # Only now: subscribed before the barrier, its fetcher would fill the buffer untimed.
        consumer.subscribe([topic])
        tally.cpu_start = time.process_time()
        poll = consumer.poll
        while tally.records < total and not stop.is_set():
            began = time.monotonic()
            tally.add(len(await poll(timeout_ms=POLL_TIMEOUT_MS)), began)
        await consumer.commit()
        end = time.monotonic()
    return tally.result(end=end)


CONSUMERS = {"share": _share_consumer, "group": _group_consumer}


def consumer_process(
    case: str, bootstrap: str, topic: str, group: str, options: dict[str, Any], total: int,
    sync: Any, stop: Any, counter: Any, firsts: Any, results: Any, index: int,
) -> None:  # fmt: skip
    """One consumer process of `case` ("share" or "group"), created with `options`: connect,
    wait at the barrier `sync`, consume (adding to `counter`, writing its first record's time
    into `firsts[index]`) until `stop` is set (a group member also stops after `total` records),
    then put (index, result) on the `results` queue."""
    tally = _Tally(counter, firsts, index)
    result = trio.run(CONSUMERS[case], bootstrap, topic, group, options, total, sync, stop, tally)
    results.put((index, result))


# --- one case -------------------------------------------------------------------------------------


async def _end_offset(bootstrap: str, topic: str) -> int:
    async with aio.Consumer(bootstrap) as consumer:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]


async def _configure_share_group(bootstrap: str, group: str) -> None:
    async with aio.AdminClient(bootstrap) as admin:
        await admin.alter_group_config(group, {"share.auto.offset.reset": "earliest"})


async def _watch(
    case: str, bootstrap: str, group: str, total: int, end_offset: int, counter: Any,
    workers: list[multiprocessing.Process],
) -> dict[str, Any]:  # fmt: skip
    """Progress until the consumers received `total` records; then, for a share group, ask
    DescribeShareGroups until SPSO reaches `end_offset`. Returns {"end": monotonic time,
    "partition": its description} (share), {} (group), or {"stalled": reason}."""
    async with aio.AdminClient(bootstrap) as admin:
        with _progress() as progress:
            task = progress.add_task(case, total=total)
            seen, moved = 0, time.monotonic()
            while seen < total:
                await trio.sleep(WATCH_INTERVAL_S)
                now, value = time.monotonic(), counter.value
                if value != seen:
                    seen, moved = value, now
                    progress.update(task, completed=min(seen, total))
                if any(worker.exitcode not in (None, 0) for worker in workers):
                    raise SystemExit(f"a {case} consumer process failed; see its traceback above")
                if now - moved > CONSUME_STALL_S:
                    return {"stalled": f"{seen:,} of {total:,} records after {CONSUME_STALL_S} s"}
        if case == "group":
            return {}
        spso = -1
        with trio.move_on_after(TAIL_TIMEOUT_S):
            while True:
                description = await admin.describe_share_group(group)
                now = time.monotonic()
                (partition,) = description.partitions
                if partition.start_offset >= end_offset:
                    return {"end": now, "partition": partition}
                spso = partition.start_offset
                await trio.sleep(DESCRIBE_INTERVAL_S)
    return {"stalled": f"SPSO {spso:,} < end offset {end_offset:,} after {TAIL_TIMEOUT_S} s"}


def run_case(
    case: str, args: argparse.Namespace, bootstrap: str, pids: list[int], topic: str,
    total: int, end_offset: int,
) -> dict[str, Any]:  # fmt: skip
    """One measurement of `case` ("share": `--consumers` share consumers; "group": one consumer
    group member) on `topic`, which holds `total` records ending at `end_offset`."""
    group = f"bench-{case}-{uuid.uuid4().hex[:8]}"
    count = args.consumers if case == "share" else 1
    if case == "share":
        trio.run(_configure_share_group, bootstrap, group)
    counter = multiprocessing.Value("q", 0)
    firsts = multiprocessing.Array("d", count)
    sync = multiprocessing.Barrier(count + 1)
    stop = multiprocessing.Event()
    results: Any = multiprocessing.Queue()
    options = {"max_poll_records": args.max_poll_records}
    if case == "share" and args.share_fetch_max_bytes:
        options["fetch_max_bytes"] = args.share_fetch_max_bytes
    shared = (
        case, bootstrap, topic, group, options, total, sync, stop, counter, firsts, results,
    )  # fmt: skip
    workers = [
        multiprocessing.Process(target=consumer_process, args=(*shared, index))
        for index in range(count)
    ]
    # Started before any trio.run in this process (a child forked inside one could not run its
    # own); stopped on every way out, failures included.
    for worker in workers:
        worker.start()
    try:
        sync.wait(BARRIER_TIMEOUT_S)
        before = _cpu_total(pids)
        watched = trio.run(_watch, case, bootstrap, group, total, end_offset, counter, workers)
        broker_cpu = _cpu_total(pids)
        stop.set()
        per_worker: list[dict[str, Any]] = [{}] * count
        for _ in range(count):
            index, result = results.get(timeout=BARRIER_TIMEOUT_S)
            per_worker[index] = result
        for worker in workers:
            worker.join(BARRIER_TIMEOUT_S)
    except (queue.Empty, threading.BrokenBarrierError) as exc:
        raise SystemExit(f"{case}: a consumer process did not answer ({exc!r})") from exc
    finally:
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()
    if any(worker.exitcode != 0 for worker in workers):
        raise SystemExit(f"a {case} consumer process failed; see its traceback above")
    return _case_result(case, args, total, watched, per_worker, firsts, pids, before, broker_cpu)


def _case_result(
    case: str, args: argparse.Namespace, total: int, watched: dict[str, Any],
    per_worker: list[dict[str, Any]], firsts: Any, pids: list[int], before: float | None,
    broker_cpu: float | None,
) -> dict[str, Any]:  # fmt: skip
    delivered = [w["records"] for w in per_worker]
    if "stalled" in watched:
        console.print(f"[red]{case} stalled: {watched['stalled']}")
        return {"records": sum(delivered), "expected": total, "stalled": watched["stalled"],
                "per_consumer": delivered}  # fmt: skip
    start = min(first for first in firsts if first > 0)
    end = watched["end"] if case == "share" else per_worker[0]["end"]
    result = _rates(case, total, args.record_bytes, end - start, sum(w["cpu"] for w in per_worker))
    if before is not None and broker_cpu is not None:
        result["broker_cpu_us_per_record"] = round((broker_cpu - before) / total * 1e6, 3)
    polls = sorted(seconds for w in per_worker for seconds in w["polls"])
    result.update(
        consumers=len(per_worker),
        finish=SHARE_FINISH if case == "share" else GROUP_FINISH,
        per_consumer=delivered,
        delivered=sum(delivered),
        polls=len(polls),
        poll_p50_ms=round(_quantile(polls, 0.5) * 1e3, 3),
        poll_p99_ms=round(_quantile(polls, 0.99) * 1e3, 3),
    )
    if case == "share":
        partition = watched["partition"]
        result.update(
            redelivered=partition.redelivered_total,
            lock_expired=partition.lock_expired_total,
            archived=partition.archived_total,
        )
    return result


# --- the runs -------------------------------------------------------------------------------------


def share_workload(args: argparse.Namespace) -> str:
    return (
        f"{args.records:,} records of {args.record_bytes} B on 1 partition, "
        f"{args.consumers} share consumer(s) vs 1 consumer group member, "
        f"max_poll_records {args.max_poll_records}"
        + (
            f", share fetch_max_bytes {args.share_fetch_max_bytes:,}"
            if args.share_fetch_max_bytes
            else ""
        )
        + (f", {args.brokers} brokers, RF {args.replication_factor}" if args.brokers > 1 else "")
        + (f", topic config {args.topic_config}" if args.topic_config else "")
    )


def run_share_group(args: argparse.Namespace) -> dict[str, Any]:
    """Prefill one topic, then the share and consumer-group cases on it, `--runs` times (ABBA)."""
    results: dict[str, Any] = {
        "params": _params(args),
        "machine": _machine(),
        "workload": share_workload(args),
        "baseline": "one consumer group member reading the same topic, in the same run",
        "order": [],
        "load_average": [],
        "cases": {"share": [], "group": []},
    }
    console.print(f"workload: {results['workload']}")
    with _brokers(args, args.brokers) as (bootstrap, pids):
        topic = _create_topic(bootstrap, 1, topic_config(args), args.replication_factor)
        try:
            if args.brokers > 1:  # a cluster: its preferred leader, past the Raft no-ops
                _settle(bootstrap, topic, 1)
            before = _cpu_total(pids)
            results["prefill"] = run_produce(args, bootstrap, topic)
            _with_broker_cpu(results["prefill"], pids, before)
            console.print(f"prefill: {results['prefill']}")
            end_offset = trio.run(_end_offset, bootstrap, topic)
            total = results["prefill"]["records"]
            results["end_offset"] = end_offset
            order = ["share", "group"]
            for run_index in range(args.runs):
                results["load_average"].append(os.getloadavg()[0])
                cases = order if run_index % 2 == 0 else order[::-1]
                results["order"].append(cases)
                for case in cases:
                    console.rule(f"run {run_index + 1}: {case}")
                    result = run_case(case, args, bootstrap, pids, topic, total, end_offset)
                    console.print(f"{case}: {result}")
                    results["cases"][case].append(result)
        finally:
            _delete_topics(bootstrap, [topic])
    results["summary"] = summarize_share(results["cases"], args.consumers)
    return results


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r and not r.get("stalled")]
    return statistics.median(values) if values else None


def summarize_share(cases: dict[str, list[dict[str, Any]]], consumers: int) -> dict[str, Any]:
    """Per case the medians of its runs; share / consumer group, run by run and its median."""
    summary: dict[str, Any] = {}
    for name, runs in cases.items():
        summary[name] = {
            key: _median_of(runs, key)
            for key in (
                "records_per_s", "mb_per_s", "client_cpu_us_per_record",
                "broker_cpu_us_per_record", "poll_p50_ms", "poll_p99_ms",
            )
        }  # fmt: skip
    ratios = [
        round(s["records_per_s"] / g["records_per_s"], 3)
        for s, g in zip(cases["share"], cases["group"], strict=True)
        if not s.get("stalled") and not g.get("stalled")
    ]
    summary["share_over_group_per_run"] = ratios
    summary["share_over_group"] = statistics.median(ratios) if ratios else None
    accepted = summary["share"]["records_per_s"]
    summary["target"] = {
        "records_per_s": SHARE_TARGET_RECORDS_PER_S,
        "consumers": SHARE_TARGET_CONSUMERS,
        "met": None if consumers != SHARE_TARGET_CONSUMERS or accepted is None
        else accepted >= SHARE_TARGET_RECORDS_PER_S,
    }  # fmt: skip
    return summary


def _cell(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_share_table(results: dict[str, Any]) -> None:
    table = Table(title=f"queue throughput: {results['workload']}")
    for column in (
        "case", "run", "accepted rec/s", "MB/s", "records per consumer", "redelivered",
        "poll p50/p99 ms", "client CPU µs/rec", "broker CPU µs/rec",
    ):  # fmt: skip
        table.add_column(column)
    summary = results["summary"]
    labels = {"share": f"share x{results['params']['consumers']}", "group": "consumer group"}
    for name, runs in results["cases"].items():
        for index, r in enumerate(runs, 1):
            stalled = bool(r.get("stalled"))
            table.add_row(
                labels[name],
                str(index),
                _consume_cell(r),
                "-" if stalled else f"{r['mb_per_s']}",
                ", ".join(f"{n:,}" for n in r["per_consumer"]),
                f"{r['redelivered']:,}" if "redelivered" in r else "-",
                "-" if stalled else f"{r['poll_p50_ms']:.1f} / {r['poll_p99_ms']:.1f}",
                "-" if stalled else f"{r['client_cpu_us_per_record']}",
                f"{r.get('broker_cpu_us_per_record', '?')}",
            )
        m = summary[name]
        table.add_row(
            f"[bold]{labels[name]}",
            "median",
            f"[bold]{_cell(m['records_per_s'])}",
            _cell(m["mb_per_s"], "g"),
            "",
            "",
            f"{_cell(m['poll_p50_ms'], '.1f')} / {_cell(m['poll_p99_ms'], '.1f')}",
            _cell(m["client_cpu_us_per_record"], "g"),
            _cell(m["broker_cpu_us_per_record"], "g"),
            end_section=True,
        )
    out = Console(width=max(Console().width, 140))
    out.print(table)
    out.print(f"share clock ends at: {SHARE_FINISH}; consumer group: {GROUP_FINISH}")
    ratio = summary["share_over_group"]
    if ratio is not None:
        per_run = ", ".join(f"{x:.0%}" for x in summary["share_over_group_per_run"])
        out.print(f"share / consumer group: {ratio:.0%} (median of runs: {per_run})")
    target = summary["target"]
    if target["met"] is not None:
        out.print(
            f"target >= {target['records_per_s']:,} records/s accepted by {target['consumers']} "
            f"share consumers: {'met' if target['met'] else 'NOT met'}"
        )
