"""`StoreSyncer`: one LMDB fsync for the term and vote changes of many Raft groups at once.

A vote must never be forgotten (Raft §5.2): a group's new term and vote are durable before any
message of the Ready that made them leaves. Syncing LMDB once per group on the trio thread made an
election storm (a thousand groups created, or failing over, at once) a thousand fsyncs in a row
that blocked every other group and the broker's heartbeats for seconds. Instead each group writes
its hard state to LMDB without a sync, and before sending awaits `sync()`: a sync of the whole
environment in a worker thread, group-committed like the segment flusher. A caller waits for a
sync that *started after* its call, and every caller queued while one runs shares the next one.
"""

from __future__ import annotations

import trio

from broker.kvstore import KvStore


class StoreSyncer:
    """Group commit of `KvStore.sync()` (one per broker, shared by its Raft drivers)."""

    def __init__(self, store: KvStore, *, in_thread: bool = True) -> None:
        """`in_thread=False` syncs on the trio thread itself (tests on a mock clock, which a
        worker thread would let jump ahead while it runs)."""
        self._store = store
        self._in_thread = in_thread
        # Callers so far, and the number of callers the last completed sync covered: a caller
        # is covered by a sync that began after it was counted.
        self._requested = 0
        self._covered = 0
        self._running = False
        self._finished = trio.Event()
        # After a failed fsync the kernel may have dropped dirty pages (fsyncgate): a later sync
        # that succeeds proves nothing, so every later call fails too.
        self._failure: OSError | None = None
        self.sync_count = 0

    async def sync(self) -> None:
        """Return once every LMDB write committed before this call is on disk. Raises OSError
        if the sync failed (the caller's group must stop: nothing after it is known durable)."""
        self._requested += 1
        wanted = self._requested
        while self._covered < wanted:
            if self._failure is not None:
                raise OSError(f"an earlier LMDB sync failed: {self._failure}") from self._failure
            if self._running:
                await self._finished.wait()
                continue
            self._running = True
            covering = self._requested
            try:
                if self._in_thread:
                    await trio.to_thread.run_sync(self._store.sync)
                else:
                    self._store.sync()
                    await trio.lowlevel.checkpoint()
                self._covered = covering
                self.sync_count += 1
            except OSError as exc:
                self._failure = exc
                raise
            finally:
                self._running = False
                finished, self._finished = self._finished, trio.Event()
                finished.set()
