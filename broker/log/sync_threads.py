"""`SyncThreads`: long-lived threads that run a broker's fsyncs, handed work without a checkpoint.

Why not `trio.to_thread.run_sync`: before its worker starts, it acquires a capacity limiter
and passes a checkpoint, so the fsync that makes an acks=all append durable starts only after
every other runnable task of the event loop has had its turn (at 10 k records/s, the connection
readers and fetch answers of that moment). Here the job is queued synchronously: a waiting
thread takes it at once while the event loop goes on. The result comes back as to_thread's does
(`TrioToken.run_sync_soon` reschedules the waiting task), and an exception raised by the job
is raised in the waiting task; or, with `submit`, it is handed to a callback and no task waits.

Threads are started as needed, up to `max_threads` (fsyncs of different logs run in parallel,
as they did in to_thread's pool; one log has at most one flush at a time, so the queue holds at
most one job per log), and stopped by `close()` (the end of the `with` block): each finishes
its current job, then exits. The owner must not submit after that (`LogFlusher` falls back to
`trio.to_thread`). Not cancellable: once queued, the job runs and its result is delivered.

A broker starts them with `fsync_workers`, which puts two faster ways in front for a job that is
only an fsync of open descriptors (the common one: a segment's group commit): run inline on the
event loop while the loop's budget allows (broker/log/inline_fsync.py says why and how much),
else the fsync helper process (broker/log/fsync_process.py), where no thread of the broker takes
the GIL for it. Inline jobs run in a system task of their own, the inline runner, parked while it
has none and woken by `trio.lowlevel.reschedule`: it runs after the submitting task's step, as a
`run_sync_soon` callback would, without the wake-up socket's write, read and epoll round that
such a callback costs per fsync.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import outcome  # trio's own dependency: what `trio.lowlevel.reschedule` delivers
import trio

from broker.log.fsync_helper import fdatasync_each
from broker.log.fsync_process import FsyncProcess
from broker.log.inline_fsync import loop_budget

logger = logging.getLogger(__name__)

T = TypeVar("T")

# trio.to_thread's default limit: as many fsyncs of different logs in parallel as before.
MAX_THREADS_DEFAULT = 40
# How long `close()` waits for an idle thread to exit (they are daemons: a hung disk cannot keep
# the process alive).
JOIN_TIMEOUT_S = 5.0

# The job, and what receives its outcome in the trio thread (through the token).
_Job = tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None], trio.lowlevel.TrioToken]


class SyncThreads:
    """See the module docstring. Use from the trio thread only (except the threads themselves)."""

    def __init__(self, *, max_threads: int = MAX_THREADS_DEFAULT, name: str = "fsync") -> None:
        assert max_threads > 0
        self._max_threads = max_threads
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._closed = False
        # Where a job given with its descriptors goes when not inline (`fsync_workers` sets it).
        self.helper: FsyncProcess | None = None
        self.inline_count = 0  # jobs run inline so far
        # The inline runner (`start_inline_runner`; None: no job runs inline), its cancel scope,
        # whether it is parked, and the jobs waiting for it: (job, on_done, descriptor copies).
        self._runner: trio.lowlevel.Task | None = None
        self._runner_scope = trio.CancelScope()
        self._runner_parked = False
        self._inline_jobs: collections.deque[tuple[Callable[[], Any], Any, list[int]]] = (
            collections.deque()
        )
        self._deferred_done: trio.Event | None = None

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        return tuple(self._threads)

    async def run(self, job: Callable[[], T], fds: Sequence[int] = ()) -> T:
        """Run `job()` as `submit` would; return its result or raise its exception."""
        task = trio.lowlevel.current_task()
        self.submit(job, lambda result: trio.lowlevel.reschedule(task, result), fds)
        # Returns the job's result, or raises its exception (the outcome is unwrapped).
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def submit(
        self,
        job: Callable[[], T],
        on_done: Callable[[outcome.Outcome[T]], None],
        fds: Sequence[int] = (),
    ) -> None:
        """Run `job()` in one of the threads, and `on_done(outcome)` in this trio thread after
        (a `run_sync_soon` callback: it must not block or raise). No task waits: for a caller
        that has none to spare a scheduler pass on, such as the fsync that makes an acks=1
        append readable.

        `fds`: `job` does nothing but fsync these descriptors, so it may run inline instead (while
        the inline runner runs and the loop's budget allows) or in the fsync helper process (when
        there is one and it takes the job; `job` runs here after all if the descriptors did not
        reach it). `on_done` then gets None or the fsync's OSError (EIO if the helper died before
        answering)."""
        assert not self._closed, "no jobs after close()"
        # Deferred to the inline runner only while the budget has room now (a spent budget, or
        # a share of 0, hands the job over at once, with no turn of the loop first); checked
        # again when the runner has it, since many logs may ask within one turn.
        runner = self._runner
        if fds and runner is not None and loop_budget().allows(time.perf_counter()):
            copies = _copies(fds)
            if copies is not None:
                self._inline_jobs.append((job, on_done, copies))
                if self._runner_parked:
                    self._runner_parked = False
                    trio.lowlevel.reschedule(runner)
                return
        self._run_elsewhere(job, on_done, fds)

    def _run_elsewhere(
        self,
        job: Callable[[], T],
        on_done: Callable[[outcome.Outcome[T]], None],
        fds: Sequence[int],
    ) -> None:
        if fds and self.helper is not None:
            redo = functools.partial(self._start, job, on_done)
            if self.helper.submit(fds, on_done, redo):  # type: ignore[arg-type]
                return
        self._start(job, on_done)

    def start_inline_runner(self) -> None:
        """Start the inline runner (once): a system task (a nursery around the owner's code would
        wrap whatever that code raises in an ExceptionGroup). It runs the jobs `submit` defers,
        in order, then parks until the next one; `stop_inline_runner` ends it."""
        assert self._runner is None and not self._closed
        self._runner = trio.lowlevel.spawn_system_task(
            self._run_inline_jobs, name=f"{self._name}-inline"
        )

    def stop_inline_runner(self) -> None:
        """From now on `submit` hands every job on; the runner runs what it still holds, then
        ends."""
        self._runner = None
        self._runner_scope.cancel()

    async def _run_inline_jobs(self) -> None:
        with self._runner_scope:
            try:
                while True:
                    self._run_queued()
                    self._runner_parked = True
                    await trio.lowlevel.wait_task_rescheduled(self._unpark)
            finally:
                self._run_queued()  # stopped (`stop_inline_runner`): what it still holds

    def _run_queued(self) -> None:
        while self._inline_jobs:
            self._run_inline(*self._inline_jobs.popleft())

    def _unpark(self, _: object) -> trio.lowlevel.Abort:
        self._runner_parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait_deferred(self) -> None:
        """Return once every job deferred to the inline runner has run (or been handed on)."""
        while self._inline_jobs:
            self._deferred_done = trio.Event()
            await self._deferred_done.wait()

    def _run_inline(
        self,
        job: Callable[[], T],
        on_done: Callable[[outcome.Outcome[T]], None],
        copies: list[int],
    ) -> None:
        """In the inline runner (the task that submitted the job has finished its step, a
        produce response has been written): fdatasync `copies` here if the loop's budget
        allows, else hand the job on as `submit` would have. After `close()`, here in any case
        (nothing else is left to take it). Closes the copies. Never raises (the runner's failure
        would end the broker): a failure to hand the job on is the job's outcome."""
        try:
            budget = loop_budget()
            started = time.perf_counter()
            if budget.allows(started) or self._closed:
                result = outcome.capture(_fdatasync_all, copies)
                finished = time.perf_counter()
                self.inline_count += 1
                if budget.spend(finished - started, finished):
                    logger.warning(
                        "an fsync on the event loop took %.0f ms: fsyncs go to the fsync helper "
                        "process for the next %.0f s",
                        (finished - started) * 1000,
                        budget.cooldown_s,
                    )
                on_done(result)  # type: ignore[arg-type]
            else:
                try:
                    self._run_elsewhere(job, on_done, copies)  # the helper gets its own copies
                except Exception as exc:  # no thread could start, say
                    on_done(outcome.Error(exc))
        finally:
            _close_all(copies)
            if not self._inline_jobs and self._deferred_done is not None:
                self._deferred_done.set()

    def _start(self, job: Callable[[], T], on_done: Callable[[outcome.Outcome[T]], None]) -> None:
        if self._busy == len(self._threads) and len(self._threads) < self._max_threads:
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._busy += 1

        def done(result: outcome.Outcome[T]) -> None:
            self._busy -= 1
            on_done(result)

        self._jobs.put((job, done, trio.lowlevel.current_trio_token()))

    def __enter__(self) -> SyncThreads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads (each after its current job); wait for them only when none is busy.

        It runs on the trio thread: joining a thread that is inside a slow fsync would freeze the
        event loop (every connection, every timer) for as long. Idle threads exit at once on their
        stop signal; a busy one (a daemon) exits after its job, whose waiter still gets the result.
        """
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        if not self._busy:
            for thread in self._threads:
                thread.join(JOIN_TIMEOUT_S)
        self._threads.clear()

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, on_done, token = item
            result = outcome.capture(job)
            # Only a `submit`ted job can outlive its run (a `run` caller cannot be cancelled, so
            # it keeps the run alive): the broker stopped during its fsync, which is done;
            # nobody is left to tell.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(on_done, result)
            del item, job, on_done, result


def _copies(fds: Sequence[int]) -> list[int] | None:
    """Duplicates of `fds`: they stay valid however the log's own descriptors change before the
    job runs (a roll, a deletion), and name the same open files (so a write-back error is
    reported to their fsync as to the originals'). None if the process is out of descriptors."""
    copies: list[int] = []
    try:
        for fd in fds:
            copies.append(os.dup(fd))
    except OSError:
        _close_all(copies)
        return None
    return copies


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):  # its fsync's outcome is what counts
            os.close(fd)


def _fdatasync_all(fds: Sequence[int]) -> None:
    """The helper's `fdatasync_each` here, raising its first error."""
    failure = fdatasync_each(fds)
    if failure is not None:
        raise failure


async def _settled(threads: SyncThreads) -> None:
    """Before the workers stop: the jobs deferred to the inline runner have run (shielded, as
    the helper's answers are awaited: a job once submitted is done or failed)."""
    with trio.CancelScope(shield=True):
        await threads.wait_deferred()


@contextlib.asynccontextmanager
async def fsync_workers(
    name: str, *, helper: bool = True, inline: bool = True
) -> AsyncIterator[SyncThreads]:
    """`SyncThreads` as a broker runs its fsyncs: plain fsyncs run inline while the event loop's
    budget allows (unless `inline=False`), else go to the fsync helper process (unless
    `helper=False`); the rest (and all of them, should the helper fail to start or die) go to
    the threads. On exit the jobs deferred to the inline runner run, then the helper answers
    what it was given, then the threads stop: every job submitted is done or failed, none
    forgotten."""
    async with contextlib.AsyncExitStack() as stack:
        threads = stack.enter_context(SyncThreads(name=name))
        if helper:
            try:
                threads.helper = await stack.enter_async_context(FsyncProcess.open())
            except OSError as exc:
                logger.warning("no fsync helper process (%s): fsyncs run in threads", exc)
        if inline:
            threads.start_inline_runner()
            # Undone after the jobs deferred to it have run (below): the runner stops.
            stack.callback(threads.stop_inline_runner)
        # Undone first: the jobs deferred to the inline runner run (or reach the helper or a
        # thread) before those stop.
        stack.push_async_callback(_settled, threads)
        yield threads
