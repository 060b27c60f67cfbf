"""The fsync helper process: fsyncs the file descriptors the broker passes it, and says when.

Run as `python -I -S .../broker/log/fsync_helper.py FD THREADS` (by path, standard library
only), where FD is one end of a SOCK_SEQPACKET socketpair (`FsyncProcess` in
broker/log/fsync_process.py starts it). Each request is one
message: a job id (8 bytes) and how many descriptors it carries (1 byte), with the descriptors to
fsync attached (SCM_RIGHTS, the same open files as the broker's, so a write-back error is
reported to this fsync as it would be to the broker's own). The answer is the job id and 0, the
errno of the first failed fsync, or `NOT_RECEIVED` when not all the descriptors arrived (the
kernel truncated them: a descriptor limit here, say), in which case nothing was fsynced: a
request must never be answered 0 without its fsyncs. Every descriptor received is closed after.

`THREADS` threads each wait in `recvmsg` on the socket, so fsyncs of different logs run in
parallel with no dispatcher between them. The helper has its own interpreter and GIL: the
broker's event loop never waits for a thread of this process to hand the GIL back, which on a
busy 2-core machine cost the broker's event loop up to half a millisecond per fsync.

It exits when the broker's end of the socket closes (the broker stopped or died), and only
then: it ignores SIGINT and SIGTERM, which a terminal's Ctrl-C or a service manager sends to
the broker's whole process group, so that the broker, stopping, still gets its answers.
"""

from __future__ import annotations

import array
import errno
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Sequence

REQUEST = struct.Struct(">QB")
ANSWER = struct.Struct(">Qi")
# The answer's code when the descriptors did not all arrive: nothing was fsynced.
NOT_RECEIVED = -1
# The most descriptors one request may carry (a ticket's files: the log, its indexes).
MAX_FDS = 16
_FDS_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def fdatasync_each(fds: Sequence[int]) -> OSError | None:
    """fdatasync every descriptor, even after a failure; the first error, or None. (The broker's
    event loop runs it too, on its own descriptors: broker/log/sync_threads.py.)

    `fdatasync`: the data and what reading it back needs (the file's size), not the timestamps,
    whose journal commit is what an fsync of a preallocated segment would otherwise still pay.
    """
    failure: OSError | None = None
    for fd in fds:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            failure = failure or exc
    return failure


def fsync_all(fds: list[int]) -> int:
    """`fdatasync_each`, then close every descriptor; 0 or the first error's errno."""
    try:
        failure = fdatasync_each(fds)
    finally:
        for fd in fds:
            os.close(fd)
    if failure is None:
        return 0
    # Never 0 (that says "synced") nor NOT_RECEIVED (that has the job redone).
    return failure.errno if failure.errno and failure.errno > 0 else errno.EIO


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def answer(message: bytes, ancillary: list[tuple[int, int, bytes]], flags: int) -> bytes:
    """The answer to one request (its descriptors fsynced and closed)."""
    fds = _received_fds(ancillary)
    job, count = REQUEST.unpack(message)
    if flags & socket.MSG_CTRUNC or len(fds) != count:
        for fd in fds:
            os.close(fd)
        return ANSWER.pack(job, NOT_RECEIVED)
    return ANSWER.pack(job, fsync_all(fds))


def serve(sock: socket.socket) -> None:
    """One worker: answer requests until the broker's end closes."""
    while True:
        try:
            message, ancillary, flags, _address = sock.recvmsg(REQUEST.size, _FDS_SPACE)
        except OSError:
            return
        if not message:
            return  # the broker closed its end
        try:
            sock.send(answer(message, ancillary, flags))
        except OSError:
            return


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    workers = [
        threading.Thread(target=serve, args=(sock,), daemon=True) for _ in range(int(argv[1]))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main(sys.argv[1:])
