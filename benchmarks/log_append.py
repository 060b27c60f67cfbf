"""Partition-log append and read throughput beside raw sequential file I/O of the same bytes.

Workload: `--mib` MiB (flush=never) or `--always-mib` MiB (flush=always) of pre-built msgpack
batches of 16 KiB and 256 KiB (1 KiB random records, no compression), written twice in the same
run: through `PartitionLog.append` and with `os.write` to a plain file. The two writers take turns
every `--block` batches and each side's time is summed, so page-cache allocation, writeback and
whatever else loads the machine fall on both alike. Matching fsync behaviour:

- `never`:  appends only (page cache), then one `flush()` / one `fsync` at the end.
- `always`: `flush()` after every append / `fsync` after every `os.write` (the worst case for
            `flush=always`; the flusher's group commit only ever does fewer fsyncs).

Reads go sequentially through the whole log with `read(offset, --read-kib)` and through the raw
file with `os.pread` of the same size, alternating call by call, over the page cache. The first
read pass follows a clean close and reopen, so it CRC-checks every batch once (`read_verified`,
see docs/storage.md); the second pass reads already-verified data (`read`).

`--idempotent` stamps every batch with a producer id, epoch and sequence (as an idempotent
producer's are), so the appends also pay for the partition's producer state (`on_write`, once per
batch; docs/transactions.md).

Run: python -m benchmarks.log_append [--sizes-kib 16,256] [--mib 256] [--always-mib 32]
     [--rounds 3] [--block 32] [--read-kib 1024] [--dir PATH] [--idempotent]
Results are printed and written to benchmarks/results/log_append.json: throughput from the
median round, the ratio of total times, and the median of per-block (per-read) time ratios,
which is the robust number on a machine with other load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from broker.config import FlushPolicy, LogConfig
from broker.log.log import PartitionLog
from wire.batch import build_batch

RESULTS = Path(__file__).parent / "results" / "log_append.json"
RECORD_BYTES = 1024
POOL_BATCHES = 32


def make_pool(batch_bytes: int, *, idempotent: bool = False) -> list[bytes]:
    """Distinct batches of about `batch_bytes`, of 1 KiB records (random: incompressible);
    `idempotent`: each from one of 4 producer ids with consecutive sequences."""
    count = max(1, batch_bytes // RECORD_BYTES)
    # msgpack adds ~7 bytes per record and the header 61 per batch: fill the batch to the size.
    value_bytes = max(1, (batch_bytes - 70) // count - 7)
    pool = []
    for number in range(POOL_BATCHES):
        records = [(1_700_000_000_000 + number, None, os.urandom(value_bytes), None)] * count
        stamp = {}
        if idempotent:
            stamp = {
                "producer_id": 1000 + number % 4,
                "producer_epoch": 0,
                "base_sequence": number // 4 * count,
            }
        pool.append(build_batch(records, **stamp))
    return pool


def _log_config(policy: FlushPolicy) -> LogConfig:
    return LogConfig(segment_bytes=1 << 30, max_batch_bytes=8 << 20, flush_policy=policy)


def interleaved_writes(
    root: Path, pool: list[bytes], total: int, *, always: bool, block: int
) -> tuple[float, float, list[float]]:
    """Seconds spent appending to the log and writing the raw file, in alternating blocks.

    Both writers take turns every `block` batches, so page-cache allocation, writeback and
    other load on the machine fall on both alike; each side's time is summed separately.
    Also returns each block's raw/log time ratio: their median shrugs off bursts of load.
    """
    policy = FlushPolicy.ALWAYS if always else FlushPolicy.NEVER
    log = PartitionLog.open(root / "log", _log_config(policy))
    fd = os.open(root / "raw.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    log_seconds = raw_seconds = 0.0
    ratios: list[float] = []
    try:
        for first in range(0, total, block):
            numbers = range(first, min(first + block, total))
            started = time.perf_counter()
            for number in numbers:
                log.append(pool[number % POOL_BATCHES])
                if always:
                    log.flush()
            middle = time.perf_counter()
            for number in numbers:
                data = memoryview(pool[number % POOL_BATCHES])
                while data:
                    data = data[os.write(fd, data) :]
                if always:
                    os.fsync(fd)
            ended = time.perf_counter()
            log_seconds += middle - started
            raw_seconds += ended - middle
            ratios.append((ended - middle) / (middle - started))
        started = time.perf_counter()
        log.flush()
        middle = time.perf_counter()
        os.fsync(fd)
        log_seconds += middle - started
        raw_seconds += time.perf_counter() - middle
    finally:
        os.close(fd)
        log.close()
    return log_seconds, raw_seconds, ratios


def interleaved_reads(
    log: PartitionLog, raw_path: Path, read_bytes: int
) -> tuple[float, float, list[float]]:
    """Seconds for sequential `log.read` calls and raw `os.pread`s of the same size, alternating
    call by call; plus the raw/log time ratio of each pair of calls."""
    fd = os.open(raw_path, os.O_RDONLY)
    offset, position, log_bytes = log.log_start_offset, 0, 0
    log_seconds = raw_seconds = 0.0
    ratios: list[float] = []
    try:
        log_done = raw_done = False
        while not (log_done and raw_done):
            ours = raw = 0.0
            if not log_done:
                started = time.perf_counter()
                result = log.read(offset, read_bytes)
                ours = time.perf_counter() - started
                log_seconds += ours
                log_bytes += len(result.data)
                offset = result.next_offset
                log_done = offset >= log.log_end_offset
            if not raw_done:
                started = time.perf_counter()
                chunk = os.pread(fd, read_bytes, position)
                raw = time.perf_counter() - started
                raw_seconds += raw
                position += len(chunk)
                raw_done = not chunk
            if ours and raw and chunk:
                ratios.append(raw / ours)
    finally:
        os.close(fd)
    assert log_bytes == position, (log_bytes, position)
    return log_seconds, raw_seconds, ratios


def _rate(size_bytes: int, batches: int, seconds: float) -> dict[str, float]:
    return {
        "seconds": round(seconds, 4),
        "mb_per_s": round(size_bytes / seconds / 1e6, 1),
        "batches_per_s": round(batches / seconds, 1),
    }


def run_case(
    root: Path,
    batch_kib: int,
    mib: int,
    rounds: int,
    read_kib: int,
    *,
    always: bool,
    block: int,
    idempotent: bool = False,
):
    pool = make_pool(batch_kib * 1024, idempotent=idempotent)
    batch_bytes = len(pool[0])
    total = max(1, mib * 1024 * 1024 // batch_bytes)
    size = total * batch_bytes
    timings: dict[str, list[float]] = {
        k: []
        for k in ("append", "raw_write", "read", "raw_read", "read_verified", "raw_read_first")
    }
    ratios: dict[str, list[float]] = {"append": [], "read": [], "read_verified": []}
    for _ in range(rounds):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        ours, raw, block_ratios = interleaved_writes(root, pool, total, always=always, block=block)
        timings["append"].append(ours)
        timings["raw_write"].append(raw)
        ratios["append"].extend(block_ratios)
        if always:
            continue
        log = PartitionLog.open(root / "log", _log_config(FlushPolicy.NEVER))
        log.close()  # clean close and reopen: the first read pass verifies every batch's CRC
        log = PartitionLog.open(root / "log", _log_config(FlushPolicy.NEVER))
        ours, raw, call_ratios = interleaved_reads(log, root / "raw.bin", read_kib * 1024)
        timings["read_verified"].append(ours)
        timings["raw_read_first"].append(raw)
        ratios["read_verified"].extend(call_ratios)
        ours, raw, call_ratios = interleaved_reads(log, root / "raw.bin", read_kib * 1024)
        timings["read"].append(ours)
        timings["raw_read"].append(raw)
        ratios["read"].extend(call_ratios)
        log.close()
    shutil.rmtree(root, ignore_errors=True)
    result = {
        "batch_bytes": batch_bytes,
        "batches": total,
        "bytes": size,
        "flush": "always (fsync after every append)" if always else "never (one fsync at end)",
        "idempotent": idempotent,
    }
    for name, values in timings.items():
        if values:
            result[name] = _rate(size, total, statistics.median(values))
    result["append_vs_raw"] = round(result["raw_write"]["seconds"] / result["append"]["seconds"], 3)
    if "read" in result:
        result["read_vs_raw"] = round(result["raw_read"]["seconds"] / result["read"]["seconds"], 3)
        result["read_verified_vs_raw"] = round(
            result["raw_read_first"]["seconds"] / result["read_verified"]["seconds"], 3
        )
    for name, values in ratios.items():
        if values:
            result[f"{name}_vs_raw_block_median"] = round(statistics.median(values), 3)
    return result


def _print(result: dict) -> None:
    print(
        f"  {result['batch_bytes']:>7}-byte batches x {result['batches']:>6}, "
        f"flush={result['flush']}{', idempotent' if result['idempotent'] else ''}"
    )
    rows = [
        ("append", "raw_write", "append_vs_raw"),
        ("read", "raw_read", "read_vs_raw"),
        ("read_verified", "raw_read_first", "read_verified_vs_raw"),
    ]
    for ours, raw, ratio in rows:
        if ours in result:
            print(
                f"    {ours:<14} {result[ours]['mb_per_s']:>8.1f} MB/s "
                f"{result[ours]['batches_per_s']:>10.0f} batches/s | "
                f"raw {result[raw]['mb_per_s']:>8.1f} MB/s | ratio {result[ratio]:.2f} "
                f"(median per block {result[ours + '_vs_raw_block_median']:.2f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-kib", default="16,256", help="batch sizes in KiB, comma-separated")
    parser.add_argument("--mib", type=int, default=256, help="MiB written per round, flush=never")
    parser.add_argument("--always-mib", type=int, default=32, help="MiB per round, flush=always")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case (median reported)")
    parser.add_argument("--read-kib", type=int, default=1024, help="max_bytes of each read")
    parser.add_argument("--block", type=int, default=32, help="batches per turn when alternating")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument(
        "--idempotent", action="store_true", help="stamp producer id, epoch and sequence"
    )
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="log-bench-"))
    sizes = [int(size) for size in args.sizes_kib.split(",")]
    print(f"log_append: {args.rounds} rounds, median; data in {base}; reads of {args.read_kib} KiB")
    results = []
    started = time.perf_counter()
    for batch_kib in sizes:
        for always, mib in ((False, args.mib), (True, args.always_mib)):
            result = run_case(
                base / "case",
                batch_kib,
                mib,
                args.rounds,
                args.read_kib,
                always=always,
                block=args.block,
                idempotent=args.idempotent,
            )
            _print(result)
            results.append(result)
    shutil.rmtree(base, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.1f} s")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "benchmark": "log_append",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "args": vars(args),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
