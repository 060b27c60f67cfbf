"""Durability plumbing of a partition log: flush tickets, the recovery checkpoint, atomic files.

A `FlushTicket` names the files whose fsync makes a log's appends durable; its `run()` touches only
those paths and the thread-safe `RecoveryCheckpoint`, so it may run in a worker thread while the
log keeps appending (group commit, see `broker/log/flusher.py`). Small metadata files (checkpoint,
epoch cache, clean-shutdown marker) are replaced atomically: write a temporary file, fsync it,
rename it over the old one, fsync the directory.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path


class RecoveryCheckpoint:
    """The recovery checkpoint: segments below it are trusted (not re-validated) at an unclean open.

    Shared by the log (trio thread) and its flush tickets (maybe a worker thread), hence the lock.
    `generation` counts the times a segment below some ticket's target was reopened for writing
    (truncate, reset): a ticket taken before that must not raise the checkpoint over a segment
    that is being rewritten, whatever order the two threads run in.
    """

    def __init__(self, path: Path, value: int) -> None:
        self.path = path
        self.value = value
        self.generation = 0
        self._lock = threading.Lock()

    def reopened(self, segment_base_offset: int) -> None:
        """A segment at `segment_base_offset` is written again: a crash must re-validate it."""
        with self._lock:
            self.generation += 1
            if segment_base_offset < self.value:
                self._store(segment_base_offset)

    def advance(self, value: int, generation: int) -> bool:
        """Raise the checkpoint to `value` unless a segment was reopened since `generation`."""
        with self._lock:
            if generation != self.generation or value <= self.value:
                return False
            self._store(value)
            return True

    def store(self, value: int) -> None:
        with self._lock:
            self._store(value)

    def _store(self, value: int) -> None:
        write_atomically(self.path, b"%d\n" % value)
        self.value = value


@dataclasses.dataclass(frozen=True, slots=True)
class FlushTicket:
    """Files to fsync so that everything below `end_offset` is durable.

    `run()` touches only these paths and the thread-safe `RecoveryCheckpoint` (never the log's
    other objects), so it may run in a worker thread.
    """

    directory: Path
    paths: tuple[Path, ...]
    # The log files of the sealed segments among `paths` (synced with their indexes).
    sealed: tuple[Path, ...]
    end_offset: int
    directory_changes: int
    sync_directory: bool
    checkpoint: int | None
    recovery_checkpoint: RecoveryCheckpoint | None = None
    checkpoint_generation: int = 0
    # When all `run()` has to do is fsync the active segment's file: its descriptor, which the
    # fsync helper process can be handed instead (broker/log/fsync_process.py).
    fds: tuple[int, ...] = ()

    def run(self) -> None:
        for path in self.paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # deleted by retention or truncation meanwhile: nothing left to sync
            try:
                # The data and the size, not the timestamps (see fsync_helper.fsync_all).
                os.fdatasync(fd)
            finally:
                os.close(fd)
        # Only after the segments below it are synced may the checkpoint pass them.
        if (
            self.checkpoint is not None
            and self.recovery_checkpoint is not None
            and self.recovery_checkpoint.advance(self.checkpoint, self.checkpoint_generation)
        ):
            return  # advancing wrote the file atomically, which synced the directory
        if self.sync_directory or self.checkpoint is not None:
            fsync_directory(self.directory)


def read_checkpoint(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` so that a crash leaves either the old or the new contents."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(path.parent)
