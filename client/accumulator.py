"""The producer's record accumulator: per-partition batches, buffer memory, delivery results.

Rules:
- `append` is the per-record hot path. It runs in the caller's thread (the application's thread
  for the blocking `Producer`, the trio thread for `client.aio.Producer`) under one uncontended
  `threading.Lock`, and does only O(1) work: a dict lookup, a list append and two additions. The
  record stays a plain `(timestamp_ms, key, value, headers)` tuple until `wire.batch.
  build_batch` packs the whole list in one msgpack call at drain time.
- A batch is sealed when it reaches `batch_bytes` or `max_records_per_batch`; an open batch is
  drained after `linger_ms`, or at once when a flush is asked for. `notify` is called when a batch
  opens (its linger timer starts) or seals, at most once between two drains.
- Ordering per partition: batches of a partition leave in creation order, one per `drain`, and
  none while an earlier one waits out its retry backoff or the partition has `max_in_flight`
  batches in flight (1 while it is retrying). A retried batch goes back before every later batch
  of its partition. With `max_in_flight=1` (the producer's default) order is strict, retries
  included; above 1, a batch that fails while a later one succeeds lands after it (Kafka's rule
  without idempotence).
- Buffer memory is bounded: `append` refuses (returns None) when `buffer_memory_bytes` would be
  exceeded; the caller waits on `memory_freed` (blocking) or its own trio event, then retries.
- Delivery: one `ProducerBatch` per batch carries the outcome; `RecordFuture(batch, index)` is the
  per-record view, created only when the caller asks for one.
Everything but `ProducerBatch.wait` is plain thread-safe Python, so the blocking facade and the
trio core share it; `wait` is the one bridge to trio, kept here with the batch it waits on so that
nothing below the producer imports `client.aio`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Container, Mapping
from typing import Any

import trio

from client.partitioner import StickyPartitioner
from client.types import RecordMetadata

# Bytes counted per record on top of key and value: msgpack framing, the timestamp delta, tuple
# bookkeeping. It keeps many tiny records from escaping the size and memory bounds.
RECORD_OVERHEAD_BYTES = 16

RecordTuple = tuple[int, bytes | None, bytes | None, Any]
DeliveryCallback = Callable[[RecordMetadata | None, BaseException | None], None]

# Guards callback registration against completion racing in from the I/O thread. One lock for all
# batches is enough: both sides hold it for a few instructions, once per batch or per callback.
_callback_lock = threading.Lock()


class ProducerBatch:
    """Records bound for one partition, sent and acknowledged as a unit.

    Completed exactly once, in the I/O thread, by `complete`: `base_offset` (or -1 with acks=0) or
    `error`. `event` is a `threading.Event` for blocking waiters; trio waiters register through
    `add_waker`.
    """

    __slots__ = (
        "ambiguous",
        "attempts",
        "base_offset",
        "base_sequence",
        "callbacks",
        "created_at",
        "error",
        "event",
        "partition",
        "payload",
        "producer_epoch",
        "producer_id",
        "records",
        "retry_at",
        "sequence",
        "settled",
        "size_bytes",
        "topic",
        "wakers",
    )

    def __init__(self, topic: str, partition: int, created_at: float, sequence: int = 0) -> None:
        self.topic = topic
        # Creation order within the producer: a retried batch goes back before later ones.
        self.sequence = sequence
        self.partition = partition
        self.records: list[RecordTuple] = []
        self.size_bytes = 0
        self.created_at = created_at
        self.attempts = 0
        self.retry_at = 0.0
        # The broker acknowledged it at this base offset, but an earlier batch of its partition
        # is still unacknowledged: it completes after that one (callbacks fire in offset order).
        self.settled: int | None = None
        self.base_offset = -1
        self.error: BaseException | None = None
        self.event = threading.Event()
        self.callbacks: list[tuple[int, DeliveryCallback]] | None = None
        self.wakers: list[Callable[[], None]] | None = None
        # The built batch bytes, kept so that a retry resends exactly the same batch.
        self.payload: bytes | None = None
        # Idempotence: the producer id, epoch and first sequence this batch was numbered with
        # (-1 until its first send); a retry keeps them, so the broker recognises a duplicate.
        self.producer_id = -1
        self.producer_epoch = -1
        self.base_sequence = -1
        # True once an attempt ended without telling whether the broker wrote the batch (a
        # timeout, a lost connection): such a batch must not be renumbered under a new producer
        # id, or a retry could store it twice.
        self.ambiguous = False

    @property
    def done(self) -> bool:
        return self.event.is_set()

    def metadata(self, index: int) -> RecordMetadata:
        offset = self.base_offset + index if self.base_offset >= 0 else -1
        return RecordMetadata(self.topic, self.partition, offset, self.records[index][0])

    def add_callback(self, index: int, callback: DeliveryCallback) -> None:
        with _callback_lock:
            if not self.event.is_set():
                if self.callbacks is None:
                    self.callbacks = []
                self.callbacks.append((index, callback))
                return
        self._fire(index, callback)

    def add_waker(self, waker: Callable[[], None]) -> bool:
        """Call `waker()` on completion; False (and no call) if the batch is already done."""
        with _callback_lock:
            if self.event.is_set():
                return False
            if self.wakers is None:
                self.wakers = []
            self.wakers.append(waker)
            return True

    async def wait(self) -> None:
        """Return once the batch is complete (successfully or not); safe from any trio loop.

        Batches complete in their producer's trio thread. A waiter is woken through its own
        loop's token (`run_sync_soon` is thread-safe, and also correct when that thread is this
        one), so awaiting works from the producer's loop and from any other.
        """
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        token = trio.lowlevel.current_trio_token()
        if self.add_waker(lambda: token.run_sync_soon(event.set)):
            await event.wait()
        else:
            await trio.lowlevel.checkpoint()

    def complete(self, base_offset: int, error: BaseException | None) -> None:
        """Record the outcome, wake every waiter and run the delivery callbacks (I/O thread)."""
        with _callback_lock:
            assert not self.event.is_set(), "a batch completes exactly once"
            self.base_offset = base_offset
            self.error = error
            self.event.set()
            callbacks, self.callbacks = self.callbacks, None
            wakers, self.wakers = self.wakers, None
        for waker in wakers or ():
            waker()
        for index, callback in callbacks or ():
            self._fire(index, callback)

    def _fire(self, index: int, callback: DeliveryCallback) -> None:
        # A failing user callback must not kill the I/O thread or skip the other callbacks, so it
        # is reported and swallowed (Kafka's clients do the same).
        try:
            if self.error is None:
                callback(self.metadata(index), None)
            else:
                callback(None, self.error)
        except Exception:
            import logging

            logging.getLogger("client.producer").exception("delivery callback raised")


class RecordFuture(tuple[ProducerBatch, int]):
    """The delivery outcome of one record: a view `(batch, index)` on its batch.

    A tuple subclass so that the hot path allocates it in one C call (`_new_future`), with no
    Python `__init__` frame: it is the only per-record object the producer creates.
    """

    __slots__ = ()

    @property
    def batch(self) -> ProducerBatch:
        return self[0]

    def done(self) -> bool:
        return self[0].event.is_set()

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """Block until delivered; raise the delivery error, or `TimeoutError` after `timeout` s.

        Blocking: do not call it from inside a trio task (use `await future` there).
        """
        batch, index = self
        if not batch.event.wait(timeout):
            raise TimeoutError(f"record not acknowledged within {timeout} s")
        if batch.error is not None:
            raise batch.error
        return batch.metadata(index)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self[0].event.wait(timeout):
            raise TimeoutError(f"record not acknowledged within {timeout} s")
        return self[0].error

    def add_done_callback(self, callback: DeliveryCallback) -> None:
        """`callback(metadata, None)` on success, `callback(None, error)` on failure."""
        self[0].add_callback(self[1], callback)

    def __await__(self) -> Any:
        batch, index = self
        yield from batch.wait().__await__()
        if batch.error is not None:
            raise batch.error
        return batch.metadata(index)

    def __repr__(self) -> str:
        batch, index = self
        state = "pending" if not batch.done else ("failed" if batch.error else "done")
        return f"<RecordFuture {batch.topic}/{batch.partition} #{index} {state}>"


_new_future = tuple.__new__


class _NoLock:
    """Stands in for the lock when one thread does everything (the trio-native producer)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class RecordAccumulator:
    """Thread-safe per-partition batching with bounded memory (see the module rules)."""

    def __init__(
        self,
        *,
        batch_bytes: int,
        linger_ms: float,
        buffer_memory_bytes: int,
        max_records_per_batch: int,
        sticky: StickyPartitioner | None = None,
        clock: Callable[[], float] = time.monotonic,
        thread_safe: bool = True,
    ) -> None:
        self.batch_bytes = batch_bytes
        self.linger_s = linger_ms / 1000.0
        self.buffer_memory_bytes = buffer_memory_bytes
        self.max_records_per_batch = max_records_per_batch
        self.sticky = sticky if sticky is not None else StickyPartitioner()
        self._sticky_current = self.sticky.current
        self.clock = clock
        # With thread_safe=False every call comes from one thread (the trio-native producer), and
        # the hot path skips the lock: on this 2-core VM an uncontended lock costs ~0.4 us, a
        # third of the whole per-record budget.
        self.thread_safe = thread_safe
        self.lock: Any = threading.Lock() if thread_safe else _NoLock()
        self.append = self._append_locked if thread_safe else self._append
        # Blocking senders wait here for memory; notified whenever a batch releases its bytes.
        self.memory_freed = threading.Condition(self.lock if thread_safe else threading.Lock())
        self.memory_used = 0
        self._open: dict[tuple[str, int], ProducerBatch] = {}
        self._sealed: deque[ProducerBatch] = deque()
        self._incomplete: set[ProducerBatch] = set()
        self._flushing = 0
        self._sequence = 0
        # Called (at most once until the next drain) when a batch becomes ready to send.
        self.notify: Callable[[], None] = _nothing
        self._notified = False
        self.closed = False

    # --- hot path -------------------------------------------------------------------------------

    def _append_locked(
        self, topic: str, partition: int, record: RecordTuple, size: int, partition_count: int
    ) -> RecordFuture | None:
        with self.lock:
            return self._append(topic, partition, record, size, partition_count)

    def _append(
        self, topic: str, partition: int, record: RecordTuple, size: int, partition_count: int
    ) -> RecordFuture | None:
        """Add `record` to its partition's open batch; None if buffer memory is exhausted.

        `partition` -1 means the topic's sticky partition (keyless records); `partition_count`
        lets the sticky partitioner move on when this batch seals. Called as `append`, which
        holds the lock when the accumulator is thread-safe.
        """
        used = self.memory_used
        if used + size > self.buffer_memory_bytes and used > 0:
            return None
        if partition < 0:
            partition = self._sticky_current.get(topic, -1)
            if not 0 <= partition < partition_count:
                partition = self.sticky.partition(topic, partition_count)
        key = (topic, partition)
        batch = self._open.get(key)
        if batch is None:
            self._sequence += 1
            batch = self._open[key] = ProducerBatch(topic, partition, self.clock(), self._sequence)
            self._incomplete.add(batch)
            # A new batch starts a linger timer the sender must learn about.
            self._wake_sender()
        records = batch.records
        records.append(record)
        batch.size_bytes += size
        self.memory_used = used + size
        if batch.size_bytes >= self.batch_bytes or len(records) >= self.max_records_per_batch:
            del self._open[key]
            self._sealed.append(batch)
            self.sticky.next_batch(topic, partition, partition_count)
            self._wake_sender()
        return _new_future(RecordFuture, (batch, len(records) - 1))

    def _wake_sender(self) -> None:
        # At most one notification between two drains: the sender looks at everything anyway.
        if not self._notified:
            self._notified = True
            self.notify()

    # --- sender side ----------------------------------------------------------------------------

    def drain(
        self,
        now: float,
        in_flight: Mapping[tuple[str, int], int],
        *,
        max_in_flight: int = 1,
        retrying: Container[tuple[str, int]] = (),
    ) -> tuple[list[ProducerBatch], float | None]:
        """Take the batches to send now: at most one per partition per call, and none for a
        partition that already has `max_in_flight` batches in flight (1 while it is `retrying`).

        Returns the batches and the monotonic time at which the next open batch's linger (or a
        retry backoff) ends, None if nothing is waiting on a timer.
        """
        blocked: set[tuple[str, int]] = set()
        ready: list[ProducerBatch] = []
        next_at: float | None = None

        def full(key: tuple[str, int]) -> bool:
            return in_flight.get(key, 0) >= (1 if key in retrying else max_in_flight)

        with self.lock:
            self._notified = False
            keep: deque[ProducerBatch] = deque()
            for batch in self._sealed:
                key = (batch.topic, batch.partition)
                if key not in blocked and batch.retry_at > now:
                    next_at = batch.retry_at if next_at is None else min(next_at, batch.retry_at)
                    blocked.add(key)
                if key in blocked or full(key):
                    # Later batches of this partition wait behind this one: order is kept.
                    blocked.add(key)
                    keep.append(batch)
                    continue
                blocked.add(key)
                ready.append(batch)
            self._sealed = keep
            for key, batch in list(self._open.items()):
                deadline = batch.created_at + self.linger_s
                if key in blocked or full(key):
                    continue
                if self._flushing or deadline <= now:
                    del self._open[key]
                    ready.append(batch)
                elif next_at is None or deadline < next_at:
                    next_at = deadline
        return ready, next_at

    def reenqueue(self, batch: ProducerBatch, retry_at: float) -> None:
        """Put a failed batch back in its partition's queue, before every later batch of that
        partition (by creation `sequence`), to leave at `retry_at`."""
        batch.attempts += 1
        batch.retry_at = retry_at
        with self.lock:
            sealed = self._sealed
            for index, queued in enumerate(sealed):
                if (
                    queued.topic == batch.topic
                    and queued.partition == batch.partition
                    and queued.sequence > batch.sequence
                ):
                    sealed.insert(index, batch)
                    return
            sealed.append(batch)

    def release(self, batch: ProducerBatch) -> None:
        """Free a completed batch's memory and wake blocked senders."""
        with self.lock:
            self.memory_used -= batch.size_bytes
            self._incomplete.discard(batch)
            if self.thread_safe:
                self.memory_freed.notify_all()

    # --- flush / close --------------------------------------------------------------------------

    def begin_flush(self) -> list[ProducerBatch]:
        """Make every open batch ready now; return every unfinished batch to wait for."""
        with self.lock:
            self._flushing += 1
            pending = list(self._incomplete)
        self.notify()
        return pending

    def end_flush(self) -> None:
        with self.lock:
            self._flushing -= 1

    def abort_all(self) -> list[ProducerBatch]:
        """Take every unfinished batch, sent or not, for the caller to fail (on close)."""
        with self.lock:
            self._sealed.clear()
            self._open.clear()
            return [batch for batch in self._incomplete if not batch.done]

    def abort_unsent(self) -> list[ProducerBatch]:
        """Take every batch not sent or waiting for a retry, for the caller to fail (a
        transaction being aborted: nothing more of it may be written)."""
        with self.lock:
            taken = [*self._sealed, *self._open.values()]
            self._sealed.clear()
            self._open.clear()
            return taken

    def take_sealed(self, predicate: Callable[[ProducerBatch], bool]) -> list[ProducerBatch]:
        """Remove and return the queued batches `predicate` picks (the idempotent producer
        fails the ones whose fate is unknown when its producer id is replaced)."""
        with self.lock:
            taken = [batch for batch in self._sealed if predicate(batch)]
            if taken:
                self._sealed = deque(batch for batch in self._sealed if not predicate(batch))
            return taken

    def has_unsent(self) -> bool:
        with self.lock:
            return bool(self._sealed or self._open)


def _nothing() -> None:
    pass
