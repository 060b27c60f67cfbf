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
fsync some other way) when the helper is not running or the socket's buffer is full. If the
helper dies, every job it had not answered is handed to its `redo` callable: whether that fsync
happened is unknown, and fsync is safe to repeat. The helper is not restarted; the broker's
fsyncs go back to threads (a warning is logged).
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
import subprocess
import sys
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
        `STOP_TIMEOUT_S`, even when cancelled) for the answers to what was submitted, hand
        what is still unanswered to its `redo`, then stop the helper. OSError if it cannot
        start."""
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
            helper._stop()

    @property
    def pid(self) -> int:
        return self._process.pid

    def submit(self, fds: Sequence[int], on_done: OnDone, redo: Callable[[], None]) -> bool:
        """Ask the helper to fsync `fds` (they stay open here); `on_done(outcome)` runs in this
        trio thread once answered. False, with nothing sent, when the helper cannot take it."""
        if not self.alive or len(fds) > fsync_helper.MAX_FDS:
            return False
        job = self._next_job
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            self._sock.sendmsg([fsync_helper.REQUEST.pack(job)], ancillary)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._died(f"sending to it failed: {exc}")
            return False
        self._next_job = job + 1
        self._pending[job] = (on_done, redo)
        return True

    async def _read_answers(self, scope: trio.CancelScope) -> None:
        """Run the callbacks of the answers as they come. Shielded (`scope`): answers are still
        read while `open()`'s exit waits for them."""
        sock, size = self._sock, fsync_helper.ANSWER.size
        with scope:
            while self.alive:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(_ANSWERS_PER_READ):
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
                    job, errno = fsync_helper.ANSWER.unpack(answer)
                    on_done, _redo = self._pending.pop(job)
                    if errno:
                        on_done(outcome.Error(OSError(errno, os.strerror(errno))))
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
        """The helper is gone (or being stopped): no more jobs go to it, and those it did not
        answer are redone elsewhere."""
        if not self.alive:
            return
        self.alive = False
        if self._all_answered is not None:
            self._all_answered.set()
        pending, self._pending = self._pending, {}
        logger.warning(
            "the fsync helper process (pid %d) stopped: %s; %d fsync(s) it had not answered are "
            "redone in threads, as are all later ones",
            self._process.pid, why, len(pending),
        )  # fmt: skip
        for _on_done, redo in pending.values():
            redo()

    def _stop(self) -> None:
        """Close our end, on which the helper exits at once (everything it was given has been
        answered or handed on), and reap it; kill it if it lingers (an fsync hung on the disk)."""
        self.alive = False
        self._sock.close()
        try:
            self._process.wait(REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
