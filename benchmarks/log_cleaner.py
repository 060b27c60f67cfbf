"""Log cleaner throughput: records per second one pass reads, maps, rewrites and swaps in.

Workload: `--records` records of `--value-bytes` bytes over `--keys` distinct keys, in msgpack
batches of `--batch-records` (no compression), in 1 MiB segments of a flush=never log; then one
forced pass (`clean_log`, inline, unthrottled: the service's I/O limit would only measure the
limit). Prints records read per second, records kept, and bytes before and after.

Run: python -m benchmarks.log_cleaner [--records 200000] [--keys 1000] [--value-bytes 100]
     [--batch-records 100] [--dir PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from broker.config import MIB, FlushPolicy, LogConfig
from broker.log.cleaner import clean_log
from broker.log.log import PartitionLog
from wire.batch import build_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--batch-records", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    config = LogConfig(
        segment_bytes=1 * MIB,
        cleanup_policy="compact",
        min_cleanable_dirty_ratio=0.0,
        flush_policy=FlushPolicy.NEVER,
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        log = PartitionLog.open(Path(directory) / "bench-0", config)
        value = b"v" * args.value_bytes
        for first in range(0, args.records, args.batch_records):
            rows = [
                (1_700_000_000_000, b"key-%d" % ((first + n) % args.keys), value, None)
                for n in range(args.batch_records)
            ]
            log.append(build_batch(rows))
        size_before = log.size_bytes
        started = time.perf_counter()
        stats = clean_log(log, high_watermark=log.log_end_offset, now_ms=0, force=True)
        elapsed_s = time.perf_counter() - started
        assert stats is not None
        print(
            f"log cleaner: {stats.records_read / elapsed_s:,.0f} records/s cleaned "
            f"({stats.records_read:,} read, {stats.records_kept:,} kept, {stats.segments} "
            f"segments, {elapsed_s:.2f} s); {size_before:,} -> {log.size_bytes:,} bytes"
        )
        log.close()


if __name__ == "__main__":
    main()
