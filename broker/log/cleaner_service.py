"""`LogCleanerService`: the trio task that compacts `cleanup.policy=compact` logs in the background.

Every `backoff_ms` it asks for the hosted logs and their high watermarks (a single node's
durable end, a replica's applied Raft index + 1: nothing that may still be truncated is
cleaned), picks the dirtiest compacted log above its `min_cleanable_dirty_ratio`, and runs one
pass (broker/log/cleaner.py): choosing segments and swapping cleaned ones in happen on the trio
thread (the log is single-threaded); mapping keys and rewriting segments happen in a worker
thread, throttled to `io_bytes_per_second`. One pass at a time: the machine's disk, not the
cleaner's parallelism, is the bound. A failed pass is logged and retried later; it never takes
the broker down (its partial files are discarded by the next pass or open).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from broker.config import FlushPolicy
from broker.log.cleaner import (
    CleanStats,
    install_cleaned,
    plan_clean,
    select_clean,
    write_cleaned,
)
from broker.log.log import wall_clock_ms
from wire.error_codes import BrokerError

logger = logging.getLogger(__name__)


class CleanerStoppedError(Exception):
    """The service stopped while its worker thread was rewriting a segment."""


class IoThrottle:
    """Paces a worker thread's I/O to `bytes_per_second` (it sleeps; it runs in a thread)."""

    def __init__(self, bytes_per_second: int) -> None:
        assert bytes_per_second > 0
        self.bytes_per_second = bytes_per_second
        self.stopped = threading.Event()
        self._started = time.monotonic()
        self._bytes = 0

    def __call__(self, size_bytes: int) -> None:
        self._bytes += size_bytes
        due_s = self._bytes / self.bytes_per_second - (time.monotonic() - self._started)
        if due_s > 0 and self.stopped.wait(due_s):
            raise CleanerStoppedError("the log cleaner stopped")
        if self.stopped.is_set():
            raise CleanerStoppedError("the log cleaner stopped")


# (log, high watermark) of every log this broker hosts.
Candidates = Callable[[], Iterable[tuple[Any, int]]]


class LogCleanerService:
    """See the module docstring. `statistics()` reports what the cleaner did so far."""

    def __init__(
        self,
        candidates: Candidates,
        *,
        backoff_ms: int,
        io_bytes_per_second: int,
        keys_max: int,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._candidates = candidates
        self._backoff_s = backoff_ms / 1000
        self._io_bytes_per_second = io_bytes_per_second
        self._keys_max = keys_max
        self._clock_ms = clock_ms
        self.passes = 0
        self.totals = CleanStats()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self._backoff_s)
            await self.clean_once()

    async def clean_once(self, *, force: bool = False) -> CleanStats | None:
        """One pass over the dirtiest compacted log; None if no log needs one."""
        now_ms = self._clock_ms()
        best = None
        for log, high_watermark in self._candidates():
            if not log.config.compacted:
                continue
            candidate = select_clean(log, high_watermark=high_watermark, now_ms=now_ms, force=force)
            if candidate is not None and (
                best is None or candidate.dirty_ratio > best[1].dirty_ratio
            ):
                best = (log, candidate)
        if best is None:
            return None
        log, candidate = best
        throttle = IoThrottle(self._io_bytes_per_second)
        try:
            plan, stats = await trio.to_thread.run_sync(
                self._rewrite, candidate, log.config, throttle, abandon_on_cancel=True
            )
            installed = install_cleaned(log, plan, now_ms=self._clock_ms())
        except (OSError, BrokerError) as exc:
            # An I/O error, or a damaged batch (the cleaner CRC-checks what it reads): the log
            # is as it was; the segment's reads report damage the way they always do.
            logger.error("%s: log cleaning failed, retrying later: %s", candidate.directory, exc)
            return None
        except BaseException:
            throttle.stopped.set()  # an abandoned worker stops at its next chunk
            raise
        self.passes += 1
        for field in ("segments", "records_read", "records_kept", "bytes_read", "bytes_written"):
            setattr(self.totals, field, getattr(self.totals, field) + getattr(stats, field))
        logger.info(
            "%s: cleaned %d of %d segment(s) (dirty ratio %.2f): %d of %d records kept",
            candidate.directory,
            installed,
            stats.segments,
            candidate.dirty_ratio,
            stats.records_kept,
            stats.records_read,
        )
        return stats

    def _rewrite(self, candidate: Any, config: Any, throttle: IoThrottle) -> tuple[Any, CleanStats]:
        plan = plan_clean(candidate, keys_max=self._keys_max)
        return plan, write_cleaned(plan, config, throttle=throttle)


def cleaner_for(broker_config: Any, candidates: Candidates) -> LogCleanerService:
    """The service a `BrokerConfig`'s log_cleaner_* fields describe."""
    return LogCleanerService(
        candidates,
        backoff_ms=broker_config.log_cleaner_backoff_ms,
        io_bytes_per_second=broker_config.log_cleaner_io_bytes_per_second,
        keys_max=broker_config.log_cleaner_keys_max,
    )


def single_node_candidates(logs: Any) -> Candidates:
    """A single node's logs: everything durable is committed (nothing is ever truncated there,
    but an unsynced tail could still vanish in a crash, so flush=always cleans only below it)."""

    def candidates() -> list[tuple[Any, int]]:
        return [
            (
                log,
                log.flushed_offset
                if log.config.flush_policy is FlushPolicy.ALWAYS
                else log.log_end_offset,
            )
            for log in logs.logs()
        ]

    return candidates


def replica_candidates(replicas: Any) -> Candidates:
    """A cluster member's hosted replicas, each below its applied Raft index: a follower may
    still truncate anything above its commit index (followers compact independently)."""

    def candidates() -> list[tuple[Any, int]]:
        hosted = []
        for replica in replicas.replicas():
            if replica.deleting:
                continue
            driver = replica.driver
            applied_end = min(driver.core.applied_index, driver.storage.last_index()) + 1
            hosted.append((replica.log, applied_end))
        return hosted

    return candidates
