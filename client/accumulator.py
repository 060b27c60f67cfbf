"""The producer's record accumulator: per-partition batches, buffer memory, delivery results.

Rules:
- `append` is the per-record hot path. It runs in the caller's thread (the application's thread
  for the blocking `Producer`, the trio thread for `client.aio.Producer`) under one uncontended
  `threading.Lock`, and does only O(1) work: a dict lookup, list appends and two additions. A
  batch keeps its records as columns: the timestamp deltas (from its `base_timestamp`, the
  first record's) and the values, plus the keys and the headers once one record has any (None
  while all are None). Storing a record allocates nothing the GC tracks (a delta is an int,
  CPython's shared one below 257 ms); `wire.batch.build_batch_columns` zips the
  columns into the wire's rows in C and packs them in one msgpack call.
- Lanes (the trio producer's `send` fast path): a topic's lane is the open batch of its sticky
  partition with buffer memory reserved ahead, `lanes[topic]`, up to `batch.lane_limit` bytes.
  `send` appends a keyless bytes value to it inline after ONE comparison (`size_bytes + size <=
  lane_limit`), which stands for every check `append` makes: the room is never more than the
  batch's, the free buffer memory's, the largest record's or `LANE_RESERVE_BYTES`, and lanes
  open only when the byte limit always seals a batch before the record limit. A lane opens when
  `append` adds a keyless record to its sticky batch (so a batch's first record, and one each
  time the room runs out, take the general path), and closes, its unused reservation given
  back, whenever anything else touches the batch or the topic: the general `append`, a bulk
  fill, a seal, a drain, an abort. Buffer memory counts reservations (Kafka's `BufferPool`
  counts a whole batch when it opens), but a record is never refused for them: short of
  memory, `append` and the bulk fill first close every lane (`reclaim_lanes`), so only records
  make a sender wait, and a batch completing is what frees memory.
- A batch is sealed when it reaches `batch_bytes` or `max_records_per_batch`, or when the next
  record would take it past `batch_bytes` (that record opens the next batch; a record larger
  than `batch_bytes` goes alone), so a batch is never larger than `batch_bytes` or its one
  record: the broker's `max.message.bytes` holds for every batch. An open batch is
  drained after `linger_ms`, at once when a flush is asked for, and, with `adaptive` (the
  default), at once when its partition has nothing in flight: a record sent to an idle producer
  leaves immediately, and batches grow only while a request is out (NATS/Redpanda-style
  adaptive batching; Kafka's plain linger waits `linger_ms` even when idle). `notify` is called
  when a batch opens (its linger timer starts, or it can leave now) or seals, at most once
  between two drains.
- Ordering per partition: batches of a partition leave in creation order, one per `drain`, and
  none while an earlier one waits out its retry backoff or the partition has `max_in_flight`
  batches in flight (1 while it is retrying). A retried batch goes back before every later batch
  of its partition. With `max_in_flight=1` (the producer's default) order is strict, retries
  included; above 1, a batch that fails while a later one succeeds lands after it (Kafka's rule
  without idempotence).
- Buffer memory is bounded: `append` refuses (returns None) when `buffer_memory_bytes` would be
  exceeded; the caller waits on `memory_freed` (blocking) or its own trio event, then retries.
- Delivery: one `ProducerBatch` per batch carries the outcome; `RecordFuture((batch, index))` is
  the per-record view.
Everything but `ProducerBatch.wait` is plain thread-safe Python, so the blocking facade and the
trio core share it; `wait` is the one bridge to trio, kept here with the batch it waits on so that
nothing below the producer imports `client.aio`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Container, Mapping, Sequence
from itertools import repeat
from typing import Any

import trio

from client.partitioner import StickyPartitioner
from client.types import RecordMetadata

# Bytes counted per record on top of key and value: msgpack framing, the timestamp delta, tuple
# bookkeeping. It keeps many tiny records from escaping the size and memory bounds.
RECORD_OVERHEAD_BYTES = 16

DeliveryCallback = Callable[[RecordMetadata | None, BaseException | None], None]

# The most buffer memory one lane reserves at a time: a lane that runs out takes the general path
# once, which reserves the next piece (one `send` in ~560 of 100-byte records). Small beside the
# default buffer (32 MiB: 512 lanes' worth), so many topics sending at once rarely reclaim.
LANE_RESERVE_BYTES = 64 * 1024

# Guards callback registration against completion racing in from the I/O thread. One lock for all
# batches is enough: both sides hold it for a few instructions, once per batch or per callback.
_callback_lock = threading.Lock()


class ProducerBatch:
    """Records bound for one partition, sent and acknowledged as a unit.

    Completed exactly once, in the I/O thread, by `complete`: `base_offset` (or -1 with acks=0) or
    `error`. Blocking waiters (`wait_blocking`) share a `threading.Event` made for the first of
    them, so the trio producer, which never blocks, makes none per batch; trio waiters register
    through `add_waker`.
    """

    __slots__ = (
        "_blocking_waiters",
        "_done",
        "ambiguous",
        "attempts",
        "base_offset",
        "base_sequence",
        "base_timestamp",
        "callbacks",
        "created_at",
        "deltas",
        "error",
        "headers",
        "keys",
        "lane_limit",
        "partition",
        "payload",
        "producer_epoch",
        "producer_id",
        "retry_at",
        "sequence",
        "settled",
        "size_bytes",
        "topic",
        "values",
        "wakers",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        created_at: float,
        sequence: int = 0,
        base_timestamp: int = 0,
    ) -> None:
        self.topic = topic
        # Creation order within the producer: a retried batch goes back before later ones.
        self.sequence = sequence
        self.partition = partition
        # The records as columns (see the rules): timestamp - base_timestamp, and the values;
        # the keys and the headers None while every record's are.
        self.deltas: list[int] = []
        self.values: list[bytes | None] = []
        self.keys: list[bytes | None] | None = None
        self.headers: list[Any] | None = None
        self.base_timestamp = base_timestamp
        self.size_bytes = 0
        # While the batch is its topic's lane: the size the fast path may fill it to, the bytes
        # past `size_bytes` being reserved in the buffer memory (see the rules).
        self.lane_limit = 0
        self.created_at = created_at
        self.attempts = 0
        self.retry_at = 0.0
        # The broker acknowledged it at this base offset, but an earlier batch of its partition
        # is still unacknowledged: it completes after that one (callbacks fire in offset order).
        self.settled: int | None = None
        self.base_offset = -1
        self.error: BaseException | None = None
        self._done = False
        self._blocking_waiters: threading.Event | None = None
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
        return self._done

    @property
    def record_count(self) -> int:
        return len(self.values)

    def append(
        self, timestamp_ms: int, key: bytes | None, value: bytes | None, headers: Any
    ) -> int:
        """Add one record; its index. (The fast path appends a keyless, headerless record's
        delta and value itself.)"""
        index = len(self.values)
        if key is not None or self.keys is not None:
            self._column("keys").append(key)
        if headers is not None or self.headers is not None:
            self._column("headers").append(headers)
        self.deltas.append(timestamp_ms - self.base_timestamp)
        self.values.append(value)
        return index

    def extend(
        self,
        timestamp_ms: int,
        keys: Sequence[bytes | None] | None,
        values: Sequence[bytes | None],
        headers: Sequence[Any] | None,
    ) -> None:
        """Add records that share one timestamp (a bulk append); `keys`/`headers` None for all
        None, else one per value."""
        count = len(values)
        if keys is not None or self.keys is not None:
            self._column("keys").extend(keys if keys is not None else repeat(None, count))
        if headers is not None or self.headers is not None:
            self._column("headers").extend(headers if headers is not None else repeat(None, count))
        self.deltas.extend(repeat(timestamp_ms - self.base_timestamp, count))
        self.values.extend(values)

    def _column(self, name: str) -> list[Any]:
        """The `keys` or `headers` column, made first (None for each record so far) if every
        record's was None until now. Called before the new records' values are added."""
        column: list[Any] | None = getattr(self, name)
        if column is None:
            column = [None] * len(self.values)
            setattr(self, name, column)
        return column

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """Block the calling thread until the batch is complete; False after `timeout` s."""
        with _callback_lock:
            if self._done:
                return True
            if self._blocking_waiters is None:
                self._blocking_waiters = threading.Event()
            waiters = self._blocking_waiters
        return waiters.wait(timeout)

    def metadata(self, index: int) -> RecordMetadata:
        offset = self.base_offset + index if self.base_offset >= 0 else -1
        timestamp = self.base_timestamp + self.deltas[index]
        return RecordMetadata(self.topic, self.partition, offset, timestamp)

    def add_callback(self, index: int, callback: DeliveryCallback) -> None:
        with _callback_lock:
            if not self._done:
                if self.callbacks is None:
                    self.callbacks = []
                self.callbacks.append((index, callback))
                return
        self._fire(index, callback)

    def add_waker(self, waker: Callable[[], None]) -> bool:
        """Call `waker()` on completion; False (and no call) if the batch is already done."""
        with _callback_lock:
            if self._done:
                return False
            if self.wakers is None:
                self.wakers = []
            self.wakers.append(waker)
            return True

    async def wait(self) -> None:
        """Return once the batch is complete (successfully or not); safe from any trio loop.

        Batches complete in their producer's trio thread. A waiter in that thread (the producer's
        own loop, the usual case) is woken directly; one in another thread's trio loop through
        that loop's token (`run_sync_soon` is thread-safe, but costs a wake-up of the loop: two
        system calls and a scheduler pass).
        """
        if self._done:
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        token = trio.lowlevel.current_trio_token()
        thread = threading.get_ident()

        def wake() -> None:
            if threading.get_ident() == thread:
                event.set()  # the completing thread runs this trio loop: it is idle in us
            else:
                token.run_sync_soon(event.set)

        if self.add_waker(wake):
            await event.wait()
        else:
            await trio.lowlevel.checkpoint()

    def complete(self, base_offset: int, error: BaseException | None) -> None:
        """Record the outcome, wake every waiter and run the delivery callbacks (I/O thread)."""
        with _callback_lock:
            assert not self._done, "a batch completes exactly once"
            self.base_offset = base_offset
            self.error = error
            self._done = True
            callbacks, self.callbacks = self.callbacks, None
            wakers, self.wakers = self.wakers, None
            blocking = self._blocking_waiters
        if blocking is not None:
            blocking.set()
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

    A tuple subclass so that the hot path allocates it in one C call, `RecordFuture((batch,
    index))`, with no Python `__init__` frame: it is the only per-record object the producer
    creates that the GC tracks. Completion is per batch (one event, one list of callbacks); the
    future only reads it.
    `get` is kafka-python's name for `result`.
    """

    __slots__ = ()

    @property
    def batch(self) -> ProducerBatch:
        return self[0]

    def done(self) -> bool:
        return self[0].done

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """Block until delivered; raise the delivery error, or `TimeoutError` after `timeout` s.

        Blocking: do not call it from inside a trio task (use `await future` there).
        """
        batch, index = self
        if not batch.wait_blocking(timeout):
            raise TimeoutError(f"record not acknowledged within {timeout} s")
        if batch.error is not None:
            raise batch.error
        return batch.metadata(index)

    get = result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self[0].wait_blocking(timeout):
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
        adaptive: bool = True,
        sticky: StickyPartitioner | None = None,
        clock: Callable[[], float] = time.monotonic,
        thread_safe: bool = True,
        lane_record_bytes: int | None = None,
    ) -> None:
        """`lane_record_bytes`: open lanes (see the rules) for a caller that refuses records
        larger than this; None (the default) opens none."""
        self.batch_bytes = batch_bytes
        self.linger_s = linger_ms / 1000.0
        self.adaptive = adaptive
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
        # Per topic, its lane (see the rules); only ever holds batches that are in `_open`.
        self.lanes: dict[str, ProducerBatch] = {}
        # The most a lane reserves: no more than one record may be; 0 opens no lanes, nor do
        # batches that the record limit could seal before the byte limit (the fast path only
        # looks at bytes).
        self._lane_room = (
            lane_record_bytes
            if lane_record_bytes is not None
            and not thread_safe
            and max_records_per_batch * RECORD_OVERHEAD_BYTES >= batch_bytes
            else 0
        )
        # Sealed (and retried) batches per partition, each queue in send order: drain looks at
        # the heads only, so its cost is per partition, never per queued batch.
        self._sealed: dict[tuple[str, int], deque[ProducerBatch]] = {}
        self._incomplete: set[ProducerBatch] = set()
        self._flushing = 0
        self._sequence = 0
        # Called (at most once until the next drain) when a batch becomes ready to send.
        self.notify: Callable[[], None] = _nothing
        self._notified = False
        # A batch was sealed since the last drain: a full batch waits for the sender, so the
        # trio producer's `send` yields to let it run (an opened batch waits for the caller's
        # next await instead).
        self.sealed_pending = False
        self.closed = False

    # --- hot path -------------------------------------------------------------------------------

    def _append_locked(
        self,
        topic: str,
        partition: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        size: int,
        partition_count: int,
    ) -> RecordFuture | None:
        with self.lock:
            return self._append(
                topic, partition, timestamp_ms, key, value, headers, size, partition_count
            )

    def _append(
        self,
        topic: str,
        partition: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        size: int,
        partition_count: int,
    ) -> RecordFuture | None:
        """Add a record to its partition's open batch; None if buffer memory is exhausted.

        `partition` -1 means the topic's sticky partition (keyless records); `partition_count`
        lets the sticky partitioner move on when this batch seals. Called as `append`, which
        holds the lock when the accumulator is thread-safe.
        """
        if self.lanes:
            self.close_topic_lane(topic)
        used = self.memory_used
        if used + size > self.buffer_memory_bytes and used > 0:
            if not self.reclaim_lanes():
                return None
            used = self.memory_used
            if used + size > self.buffer_memory_bytes and used > 0:
                return None
        sticky = partition < 0
        if sticky:
            partition = self._sticky_current.get(topic, -1)
            if not 0 <= partition < partition_count:
                partition = self.sticky.partition(topic, partition_count)
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is not None and batch.values and batch.size_bytes + size > self.batch_bytes:
            # The record does not fit: the batch leaves without it (Kafka's rule), so no batch
            # outgrows `batch_bytes` unless a single record does.
            self.seal(batch, partition_count)
            return self._append(
                topic,
                -1 if sticky else partition,
                timestamp_ms,
                key,
                value,
                headers,
                size,
                partition_count,
            )
        if batch is None:
            self._sequence += 1
            batch = self._open[slot] = ProducerBatch(
                topic, partition, self.clock(), self._sequence, timestamp_ms
            )
            self._incomplete.add(batch)
            # A new batch starts a linger timer, or may leave at once: the sender must know.
            self._wake_sender()
        index = batch.append(timestamp_ms, key, value, headers)
        batch.size_bytes += size
        self.memory_used = used + size
        if batch.size_bytes >= self.batch_bytes or index >= self.max_records_per_batch - 1:
            self.seal(batch, partition_count)
        elif sticky and self._lane_room and batch.keys is None and batch.headers is None:
            self._open_lane(batch)
        return RecordFuture((batch, index))

    def _open_lane(self, batch: ProducerBatch) -> None:
        """Make `batch` (open, its topic's sticky one, no lane) its topic's lane, reserving as
        much room as the batch, the buffer memory, the largest record and `LANE_RESERVE_BYTES`
        allow."""
        room = min(
            self.batch_bytes - batch.size_bytes,
            self.buffer_memory_bytes - self.memory_used,
            self._lane_room,
            LANE_RESERVE_BYTES,
        )
        if room >= RECORD_OVERHEAD_BYTES:
            batch.lane_limit = batch.size_bytes + room
            self.memory_used += room
            self.lanes[batch.topic] = batch

    def close_lane(self, batch: ProducerBatch) -> None:
        """If `batch` is its topic's lane, close it and give back what it did not fill."""
        if self.lanes.get(batch.topic) is batch:
            del self.lanes[batch.topic]
            self.memory_used -= batch.lane_limit - batch.size_bytes
            batch.lane_limit = 0

    def close_topic_lane(self, topic: str) -> None:
        """Close `topic`'s lane, if it has one: before anything but the fast path reads the
        buffer memory or touches the topic's batches."""
        lane = self.lanes.get(topic)
        if lane is not None:
            self.close_lane(lane)

    def open_batch(
        self, topic: str, partition: int, timestamp_ms: int, partition_count: int
    ) -> ProducerBatch:
        """The open batch of `partition` (-1: the topic's sticky one), opened if there is none.

        For bulk appends (`client/bulk.py`), which fill it many records at a time under the
        caller's `lock`, with `_append`'s rules (memory, sizes, sealing); `_append` keeps its own
        inline copy of these lines, being the per-record hot path. The caller has closed the
        topic's lane (`close_topic_lane`) before reading `memory_used`.
        """
        if partition < 0:
            partition = self._sticky_current.get(topic, -1)
            if not 0 <= partition < partition_count:
                partition = self.sticky.partition(topic, partition_count)
        batch = self._open.get((topic, partition))
        if batch is None:
            self._sequence += 1
            batch = self._open[(topic, partition)] = ProducerBatch(
                topic, partition, self.clock(), self._sequence, timestamp_ms
            )
            self._incomplete.add(batch)
            self._wake_sender()
        return batch

    def seal(self, batch: ProducerBatch, partition_count: int) -> None:
        """`batch` (open) is full: queue it to send and move the topic's sticky partition on.
        Caller holds the lock (the trio producer's fast path calls it directly)."""
        key = (batch.topic, batch.partition)
        del self._open[key]
        self.close_lane(batch)
        queue = self._sealed.get(key)
        if queue is None:
            queue = self._sealed[key] = deque()
        queue.append(batch)
        self.sticky.next_batch(batch.topic, batch.partition, partition_count)
        self.sealed_pending = True
        self._wake_sender()

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

        An open batch leaves when its linger is over, on a flush, or (`adaptive`) when its
        partition has nothing in flight and nothing queued. Returns the batches and the
        monotonic time at which the next open batch's linger (or a retry backoff) ends, None if
        nothing is waiting on a timer.
        """
        ready: list[ProducerBatch] = []
        taken: set[tuple[str, int]] = set()  # partitions with a batch in `ready`
        next_at: float | None = None
        adaptive = self.adaptive
        with self.lock:
            self._notified = False
            self.sealed_pending = False
            for key, queue in list(self._sealed.items()):
                # Later batches of a partition wait behind its head: order is kept.
                head = queue[0]
                if head.retry_at > now:
                    next_at = head.retry_at if next_at is None else min(next_at, head.retry_at)
                    continue
                if in_flight.get(key, 0) >= (1 if key in retrying else max_in_flight):
                    continue
                ready.append(queue.popleft())
                taken.add(key)
                if not queue:
                    del self._sealed[key]
            sealed = self._sealed
            for key, batch in list(self._open.items()):
                if key in sealed or key in taken:
                    continue  # behind its partition's queued batches, or one leaves already
                busy = in_flight.get(key, 0)
                if busy >= (1 if key in retrying else max_in_flight):
                    continue
                deadline = batch.created_at + self.linger_s
                if self._flushing or deadline <= now or (adaptive and not busy):
                    del self._open[key]
                    self.close_lane(batch)
                    ready.append(batch)
                elif next_at is None or deadline < next_at:
                    next_at = deadline
        return ready, next_at

    def reenqueue(self, batch: ProducerBatch, retry_at: float) -> None:
        """Put a failed batch back in its partition's queue, before every later batch of that
        partition (by creation `sequence`), to leave at `retry_at`."""
        batch.attempts += 1
        batch.retry_at = retry_at
        key = (batch.topic, batch.partition)
        with self.lock:
            queue = self._sealed.get(key)
            if queue is None:
                queue = self._sealed[key] = deque()
            for index, queued in enumerate(queue):
                if queued.sequence > batch.sequence:
                    queue.insert(index, batch)
                    return
            queue.append(batch)

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
            self._close_lanes()
            self._sealed.clear()
            self._open.clear()
            return [batch for batch in self._incomplete if not batch.done]

    def abort_unsent(self) -> list[ProducerBatch]:
        """Take every batch not sent or waiting for a retry, for the caller to fail (a
        transaction being aborted: nothing more of it may be written)."""
        with self.lock:
            self._close_lanes()
            taken = [batch for queue in self._sealed.values() for batch in queue]
            taken += self._open.values()
            self._sealed.clear()
            self._open.clear()
            return taken

    def _close_lanes(self) -> None:
        for batch in list(self.lanes.values()):
            self.close_lane(batch)

    def reclaim_lanes(self) -> bool:
        """Close every lane, giving its room back; False if there was none. Called before a
        record is refused for want of buffer memory: room reserved is not room used, so a
        refusal (and a sender's wait, which ends only when a batch completes) is only ever for
        memory that records hold."""
        if not self.lanes:
            return False
        self._close_lanes()
        return True

    def take_sealed(self, predicate: Callable[[ProducerBatch], bool]) -> list[ProducerBatch]:
        """Remove and return the queued batches `predicate` picks (the idempotent producer
        fails the ones whose fate is unknown when its producer id is replaced)."""
        with self.lock:
            taken = []
            for key, queue in list(self._sealed.items()):
                picked = [batch for batch in queue if predicate(batch)]
                if not picked:
                    continue
                taken += picked
                kept = deque(batch for batch in queue if not predicate(batch))
                if kept:
                    self._sealed[key] = kept
                else:
                    del self._sealed[key]
            return taken

    def has_unsent(self) -> bool:
        with self.lock:
            return bool(self._sealed or self._open)


def _nothing() -> None:
    pass
