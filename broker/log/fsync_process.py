"""`FsyncProcess`: the broker's fsyncs run in a helper process, answered on a socket trio watches.

Why a process and not threads: an fsync in a thread of the broker takes the GIL five or six
times (woken by the queue, around `open`, `fsync`, `close`, and to hand its result back). On two
busy cores the thread is often descheduled while it holds the GIL, and the event loop, which
wants it back after every socket call, waits: `strace` of the broker at acks=1 round trips
showed the event loop blocked in the GIL's futex for 0.4-0.55 ms at a time. The helper
(broker/log/fsync_helper.py) has its own interpreter: the broker sends it the descriptors to
fsync (SCM_RIGHTS, the very open files, so write-back errors are reported as to the broker's own
fsync), goes on, and a task reads the answers when the socket becomes readable; no thread of the
broker's process is involved.

`submit` never blocks and never passes a checkpoint. It returns False (the caller then runs the
fsync in a thread) when the helper is not running or cannot take that message (its buffer is
full, a descriptor is bad). A job whose descriptors did not reach the helper is handed to its
`redo` (nothing was fsynced, so doing it elsewhere is safe).

If the helper dies with jobs unanswered, those jobs fail with EIO: whether their fsync ran is
unknown, and if it ran and failed, the failure was reported to the helper alone (the kernel
reports a write-back error once per open file), so a second fsync that succeeds would prove
nothing. Their logs go offline as after any failed fsync. The helper is not restarted; later
fsyncs run in threads (an error is logged). It is a child of the broker only: it exits when the
broker's end of the socket closes, so it never outlives the broker, however that stops.
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import outcome  # trio's own dependency: results are handed over as `SyncThreads` hands them
import trio

from broker.log import fsync_helper

logger = logging.getLogger(__name__)

# Threads in the helper: fsyncs of that many logs may run at once (concurrent fsyncs share
# the file system's journal commits).
HELPER_THREADS_DEFAULT = 32
# How long stopping waits for the answers to the fsyncs the helper was given.
STOP_TIMEOUT_S = 5.0
# Then how long for the helper to exit once told (it has nothing left to do) before it is killed.
REAP_TIMEOUT_S = 1.0
_ANSWERS_PER_READ = 256
# sendmsg errors that mean the helper is gone (any other concerns that one message).
_HELPER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED})

OnDone = Callable[[outcome.Outcome[None]], None]


class FsyncProcess:
    """See the module docstring. Use from the trio thread only; start with `FsyncProcess.open()`."""

    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes]) -> None:
        self._sock = sock
        self._process = process
        self._pending: dict[int, tuple[OnDone, Callable[[], None]]] = {}
        self._next_job = 0
        self._all_answered: trio.Event | None = None
        self.alive = True

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, *, threads: int = HELPER_THREADS_DEFAULT) -> AsyncIterator[FsyncProcess]:
        """Start the helper and the task that reads its answers. On exit, wait (up to
        `STOP_TIMEOUT_S`, even when cancelled) for the answers to what was submitted (failing
        what stays unanswered), then stop the helper. OSError if it cannot start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                # -I -S: the helper needs only the standard library; no site, no environment.
                [sys.executable, "-I", "-S", str(Path(fsync_helper.__file__)),
                 str(theirs.fileno()), str(threads)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        helper = cls(ours, process)
        try:
            async with trio.open_nursery() as nursery:
                reader = trio.CancelScope(shield=True)
                nursery.start_soon(helper._read_answers, reader)
                try:
                    yield helper
                finally:
                    deadline = trio.current_time() + STOP_TIMEOUT_S
                    with trio.CancelScope(shield=True, deadline=deadline):
                        await helper._answered()
                    if helper._pending:
                        helper._died(f"it did not answer within {STOP_TIMEOUT_S} s of stopping")
                    helper.alive = False  # from now on, every job goes to the threads
                    reader.cancel()
        finally:
            helper.alive = False
            ours.close()  # the helper exits on it: everything it was given is settled
            with trio.CancelScope(shield=True), trio.move_on_after(REAP_TIMEOUT_S):
                await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
            if process.poll() is None:
                # Lingering (an fsync hung on the disk, which SIGKILL cannot interrupt): reaped
                # by a thread whenever it goes, never waited for on the event loop.
                process.kill()
                threading.Thread(
                    target=process.wait, name="fsync-helper-reaper", daemon=True
                ).start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def in_flight(self) -> int:
        """Jobs sent and not answered yet."""
        return len(self._pending)

    def submit(self, fds: Sequence[int], on_done: OnDone, redo: Callable[[], None]) -> bool:
        """Ask the helper to fsync `fds` (they stay open here); `on_done(outcome)` runs in this
        trio thread once answered (None, or the fsync's OSError), or `redo()` if the descriptors
        did not reach the helper. False, with nothing sent, when the helper cannot take it."""
        if not self.alive or not 0 < len(fds) <= fsync_helper.MAX_FDS:
            return False
        job = self._next_job
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            self._sock.sendmsg([fsync_helper.REQUEST.pack(job, len(fds))], ancillary)
        except OSError as exc:
            if exc.errno in _HELPER_GONE:
                self._died(f"sending to it failed: {exc}")
            return False  # this message only (a full buffer, a bad descriptor): a thread does it
        self._next_job = job + 1
        self._pending[job] = (on_done, redo)
        return True

    async def _read_answers(self, scope: trio.CancelScope) -> None:
        """Run the callbacks of the answers as they come. Shielded (`scope`): answers are still
        read while `open()`'s exit waits for them. Should it fail, the jobs still pending fail
        too, so that no waiter waits forever."""
        try:
            with scope:
                while self.alive:
                    await trio.lowlevel.wait_readable(self._sock)
                    self._read_ready()
        finally:
            if self._pending:
                self._died("its answers can no longer be read")
            self.alive = False

    def _read_ready(self) -> None:
        sock, size = self._sock, fsync_helper.ANSWER.size
        for _ in range(_ANSWERS_PER_READ):
            if not self.alive:
                return  # answers that come after `_died` belong to jobs already settled
            try:
                answer = sock.recv(size)
            except BlockingIOError:
                break
            except OSError as exc:
                self._died(f"reading from it failed: {exc}")
                return
            if not answer:
                self._died(f"it exited (status {self._process.poll()})")
                return
            job, code = fsync_helper.ANSWER.unpack(answer)
            on_done, redo = self._pending.pop(job)
            if code == fsync_helper.NOT_RECEIVED:
                redo()
            elif code:
                on_done(outcome.Error(OSError(code, os.strerror(code))))
            else:
                on_done(outcome.Value(None))
        if not self._pending and self._all_answered is not None:
            self._all_answered.set()

    async def _answered(self) -> None:
        """Return once every submitted job has been answered (or the helper died)."""
        while self._pending and self.alive:
            self._all_answered = trio.Event()
            await self._all_answered.wait()

    def _died(self, why: str) -> None:
        """The helper is gone (or must be treated so): no more jobs go to it, it is told to
        exit, and the jobs it did not answer fail (the module docstring says why)."""
        if not self.alive:
            return
        self.alive = False
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._all_answered is not None:
            self._all_answered.set()
        pending, self._pending = self._pending, {}
        logger.error(
            "the fsync helper process (pid %d) stopped: %s; %d fsync(s) it had not answered "
            "count as failed, later fsyncs run in threads",
            self._process.pid, why, len(pending),
        )  # fmt: skip
        for on_done, _redo in pending.values():
            on_done(
                outcome.Error(
                    OSError(
                        errno.EIO,
                        f"the fsync helper process stopped before answering ({why}): whether "
                        "the fsync happened is unknown",
                    )
                )
            )
