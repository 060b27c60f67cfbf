"""The cleaner service picks the dirtiest compacted log, leaves other policies alone, and its I/O
throttle both paces and stops a worker."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from broker.config import LogConfig
from broker.log.cleaner_service import CleanerStoppedError, IoThrottle, LogCleanerService
from broker.log.log import PartitionLog

from .test_cleaner import NOW_MS, fill, latest_by_key, open_log, read_all


def service(logs: list[PartitionLog]) -> LogCleanerService:
    return LogCleanerService(
        lambda: [(log, log.log_end_offset) for log in logs],
        backoff_ms=10,
        io_bytes_per_second=1 << 30,
        keys_max=1000,
        clock_ms=lambda: NOW_MS,
    )


async def test_cleans_compacted_logs_only(tmp_path: Path) -> None:
    compacted = open_log(tmp_path / "compacted")
    kept = open_log(tmp_path / "kept", LogConfig(segment_bytes=1024, max_batch_bytes=1024))
    for log in (compacted, kept):
        fill(log)
    before = {id(log): read_all(log) for log in (compacted, kept)}
    cleaner = service([kept, compacted])
    stats = await cleaner.clean_once()
    assert stats is not None and stats.records_kept < stats.records_read
    assert latest_by_key(read_all(compacted)) == latest_by_key(before[id(compacted)])
    assert read_all(kept) == before[id(kept)]
    assert await cleaner.clean_once() is None  # nothing dirty left
    assert cleaner.passes == 1
    for log in (compacted, kept):
        log.close()


def test_throttle_stops_a_waiting_worker() -> None:
    throttle = IoThrottle(1024)
    threading.Timer(0.05, throttle.stopped.set).start()
    with pytest.raises(CleanerStoppedError):
        throttle(1 << 20)  # due in 1024 s: only the stop ends the wait
