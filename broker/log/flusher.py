"""`LogFlusher`: the trio shell that makes appends durable, with group commit.

The partition log itself only writes into the page cache. While `run()` runs, an fsync of the
active segment alone (the common case) runs on the event loop at its next turn while the loop's
budget allows (small ones, at low rates: broker/log/inline_fsync.py), else in the fsync helper
process (broker/log/fsync_process.py), so that the loop keeps serving while the disk works; the
rest (sealed segments, checkpoints) in its own long-lived threads (`SyncThreads`); each is taken
the moment it is asked for (no scheduler pass first, as `trio.to_thread` has). Otherwise (before,
after, or with no `run()`: unit tests, shutdown) in `trio.to_thread.run_sync`.

- `flush_soon(log, on_durable)` is the same group commit without a waiting task: the fsync
  starts at once (or after the running one) and `on_durable()` is called when it is done, for
  appends nobody awaits (acks 0/1 under `always`), whose fsync only moves the high watermark.
- `wait_durable(log, end_offset)` returns once the append ending at `end_offset` is durable under
  the log's flush policy. With `always`, the first waiter starts a flush of everything appended so
  far; waiters that arrive while it runs wait for it and then, if their data came after it started,
  for one more flush that covers all of them together (group commit: one fsync per burst, however
  many appends it holds). With `interval` and `never` it returns at once.
- `run()` is the background task: every `tick_ms` it flushes logs whose `flush_interval_ms` has
  passed (policy `interval`) and syncs newly sealed segments for every policy, which moves the
  recovery checkpoint forward so that an unclean restart re-validates only recent data.

An fsync failure takes the log offline for this process (`KAFKA_STORAGE_ERROR` to every later
waiter): after a failed fsync the kernel may have dropped the dirty pages, so a retry that succeeds
proves nothing (the PostgreSQL "fsyncgate" lesson).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import outcome  # trio's own dependency: how SyncThreads hands over a job's result
import trio

from broker.config import FlushPolicy
from broker.log.durability import FlushTicket
from broker.log.log import PartitionLog
from broker.log.sync_threads import SyncThreads, fsync_workers
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

TICK_MS_DEFAULT = 100


class LogFlusher:
    """Group-commit fsyncs for a set of partition logs. See the module docstring."""

    def __init__(
        self,
        logs: Callable[[], Iterable[PartitionLog]],
        *,
        tick_ms: int = TICK_MS_DEFAULT,
        clock_ms: Callable[[], float] | None = None,
        on_fsync: Callable[[float], None] | None = None,
        fsync_helper: bool = True,
        fsync_inline: bool = True,
    ) -> None:
        """`on_fsync` is told each completed fsync's duration in seconds, as the broker waits
        for it (hand-off to the helper process or a thread included): the broker's fsync latency
        histogram. `fsync_helper=False`: `run()` starts no helper process, every fsync runs in
        its threads. `fsync_inline=False`: no plain fsync runs on the event loop
        (broker/log/inline_fsync.py)."""
        assert tick_ms > 0
        self._logs = logs
        self._tick_ms = tick_ms
        self._clock_ms = clock_ms or (lambda: trio.current_time() * 1000)
        self._in_flight: dict[int, trio.Event] = {}
        # `flush_soon` callbacks waiting for the flush after the one running, per log.
        self._next_round: dict[int, list[Callable[[], None]]] = {}
        self._failed: dict[int, OSError] = {}
        self._last_flush_ms: dict[int, float] = {}
        self._on_fsync = on_fsync
        self._threads: SyncThreads | None = None  # while run() runs
        self._fsync_helper = fsync_helper
        self._fsync_inline = fsync_inline
        self.fsync_count = 0

    async def wait_durable(self, log: PartitionLog, end_offset: int) -> None:
        """Return once offsets below `end_offset` are durable under the log's flush policy."""
        if log.config.flush_policy is not FlushPolicy.ALWAYS:
            return
        await self.flush(log, end_offset)

    async def flush(self, log: PartitionLog, end_offset: int | None = None) -> None:
        """Fsync until `log.flushed_offset >= end_offset` (default: the current log end)."""
        target = log.log_end_offset if end_offset is None else end_offset
        while log.flushed_offset < min(target, log.log_end_offset):
            self._raise_if_failed(log)
            running = self._in_flight.get(id(log))
            if running is not None:
                await running.wait()
                continue
            await self._flush_once(log, include_active=True)
        self._raise_if_failed(log)

    def flush_soon(self, log: PartitionLog, on_durable: Callable[[], None]) -> bool:
        """Make what `log` holds now durable without waiting for it: an fsync starts at once in
        the fsync threads if none runs for the log, else right after the running one (group
        commit: every call made meanwhile shares that next one); `on_durable()` runs in the trio
        thread once done (not after a failed fsync: the log is offline then).

        For appends nobody awaits (acks 0/1 under `always`): no task runs before or after the
        fsync, where awaiting `flush` in a task cost two scheduler passes per append. False,
        with nothing started, outside `run()` (no fsync threads) or once the log failed an
        fsync: the caller awaits `flush` instead.
        """
        key = id(log)
        if self._threads is None or key in self._failed:
            return False
        if key in self._in_flight:
            waiting = self._next_round.setdefault(key, [])
            if on_durable not in waiting:
                waiting.append(on_durable)
            return True
        self._flush_in_background(log, [on_durable])
        return True

    def _flush_in_background(self, log: PartitionLog, callbacks: list[Callable[[], None]]) -> None:
        threads = self._threads
        assert threads is not None
        key = id(log)
        done = self._in_flight[key] = trio.Event()
        ticket = log.begin_flush(include_active=True)
        started = time.perf_counter()

        def finished(result: outcome.Outcome[None]) -> None:
            error = result.error if isinstance(result, outcome.Error) else None
            try:
                self._record(log, ticket, started, error)
            finally:
                del self._in_flight[key]
                done.set()
            if error is None:
                for callback in callbacks:
                    callback()
            elif not isinstance(error, OSError):
                logger.error("%s: fsync failed", log.directory, exc_info=error)
            self._start_next_round(log)

        threads.submit(ticket.run, finished, ticket.fds)

    def _start_next_round(self, log: PartitionLog) -> None:
        """After a flush of `log`: the `flush_soon` calls made while it ran get theirs."""
        waiting = self._next_round.pop(id(log), None)
        if not waiting or id(log) in self._failed:
            return
        if self._threads is None:
            return  # stopping: the data stays in the page cache, and is recovered at start
        if log.flushed_offset >= log.log_end_offset:
            for callback in waiting:
                callback()
            return
        self._flush_in_background(log, waiting)

    def _record(
        self, log: PartitionLog, ticket: FlushTicket, started: float, error: BaseException | None
    ) -> None:
        """Book a finished flush: durable up to its ticket, or the log offline after an fsync
        error (any other exception just forgets the ticket)."""
        if error is None:
            log.complete_flush(ticket)
            self.fsync_count += 1
            if self._on_fsync is not None:
                self._on_fsync(time.perf_counter() - started)
            self._last_flush_ms[id(log)] = self._clock_ms()
            return
        log.abort_flush()
        if isinstance(error, OSError):
            self._failed[id(log)] = error
            logger.error("%s: fsync failed, taking the log offline: %s", log.directory, error)

    async def _flush_once(self, log: PartitionLog, *, include_active: bool) -> None:
        done = trio.Event()
        self._in_flight[id(log)] = done
        try:
            ticket = log.begin_flush(include_active=include_active)
            started = time.perf_counter()
            try:
                # Not cancellable: once started, the fsync finishes and its result is recorded.
                if self._threads is not None:
                    await self._threads.run(ticket.run, ticket.fds)
                else:
                    await trio.to_thread.run_sync(ticket.run)
            except BaseException as exc:
                self._record(log, ticket, started, exc)
                raise
            self._record(log, ticket, started, None)
        finally:
            del self._in_flight[id(log)]
            done.set()
            self._start_next_round(log)

    def _raise_if_failed(self, log: PartitionLog) -> None:
        failure = self._failed.get(id(log))
        if failure is not None:
            raise BrokerError(
                ErrorCode.KAFKA_STORAGE_ERROR,
                f"the log in {log.directory} is offline after an fsync failure ({failure}); "
                "check the disk and restart the broker",
            )

    def forget(self, log: PartitionLog) -> None:
        """Drop bookkeeping for a deleted log."""
        self._failed.pop(id(log), None)
        self._last_flush_ms.pop(id(log), None)
        self._next_round.pop(id(log), None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background housekeeping: interval flushes and syncing sealed segments. Runs until
        cancelled; its fsync helper process and threads stop with it (a later flush runs in
        `trio.to_thread`)."""
        async with fsync_workers(
            "log-fsync", helper=self._fsync_helper, inline=self._fsync_inline
        ) as self._threads:
            task_status.started()
            try:
                while True:
                    await trio.sleep(self._tick_ms / 1000)
                    await self.sweep()
            finally:
                self._threads = None

    @property
    def threads(self) -> SyncThreads | None:
        """The fsync threads while `run()` runs (tests look at them)."""
        return self._threads

    async def sweep(self) -> None:
        """One housekeeping pass over every log (what `run` does each tick)."""
        now_ms = self._clock_ms()
        for log in list(self._logs()):
            if id(log) in self._in_flight or id(log) in self._failed:
                continue
            policy = log.config.flush_policy
            due = now_ms - self._last_flush_ms.get(id(log), now_ms) >= log.config.flush_interval_ms
            self._last_flush_ms.setdefault(id(log), now_ms)
            try:
                if policy is FlushPolicy.INTERVAL and due and log.needs_flush:
                    await self._flush_once(log, include_active=True)
                elif log.has_unsynced_segments:
                    await self._flush_once(log, include_active=False)
            except OSError:
                continue  # recorded in _failed; waiters get KAFKA_STORAGE_ERROR
