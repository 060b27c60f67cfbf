"""Writes and lock takes that skip trio's pass through the scheduler when they can finish at once.

Why: trio's `SocketStream.send_all`, `Lock.acquire` and `Semaphore.acquire` each end in a
checkpoint, one whole run-loop iteration (the task rescheduled, an `epoll_wait`, the deadlines
checked), even when the socket takes the bytes or the lock is free. A sequential produce round
trip through the SDK took ten loop iterations and about 400 µs of client CPU, and the broker spent
about as much per request: at 10,000 records/s both processes were most of a core busy with that
overhead alone, and the end-to-end latency queued behind it (docs/performance.md, "Per-request
overhead"). Here the common case, an uncontended lock and a socket buffer with room, costs no
iteration; anything else falls back to the awaiting call, so behaviour under back-pressure is
unchanged.

Rules:
- `write_now` writes only to a plain `trio.SocketStream` (a TLS stream has its own state: all of
  `data` comes back unwritten, for `send_all`), and only for the stream's one writer: the caller
  holds its send lock, as every caller of `send_all` here already does. It bypasses trio's
  send-conflict detector, so an unlocked second writer would interleave bytes instead of getting
  `BusyResourceError`. POSIX only (`os.write` on a socket's descriptor), as the broker is.
- Neither function checkpoints on its fast path, so neither is a cancellation point there; every
  caller awaits something else in each loop round (a queue, a response, a socket read).
"""

from __future__ import annotations

import os

import trio


def write_now(stream: trio.abc.SendStream, data: bytes | memoryview) -> bytes | memoryview:
    """Write what the kernel takes of `data` without waiting; return the rest (empty when all
    was written). A dead socket raises `trio.BrokenResourceError`, as `send_all` would."""
    if type(stream) is not trio.SocketStream:
        return data
    try:
        sent = os.write(stream.socket.fileno(), data)
    except BlockingIOError:
        return data
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket write failed: {exc!r}") from exc
    return memoryview(data)[sent:] if sent < len(data) else b""


async def acquire_now(lock: trio.Lock | trio.Semaphore) -> None:
    """`await lock.acquire()`, without the checkpoint when it is free."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
