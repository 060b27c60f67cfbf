"""`Producer.send_many`: many records queued by one call, with one future for all of them.

Why: a per-record `await producer.send(topic, value)` costs, in CPython, a coroutine, a clock
read, the row tuple and a `RecordFuture` (about 1.1 us a record, the client's whole budget at
1 M records/s). A bulk call, like librdkafka's `rd_kafka_produce_batch`, pays those once: one
timestamp for the call, the checks and sizes run in C (`map`, `min`, `max`, `accumulate`), the
rows are made by `zip` in C, and one `SendManyFuture` stands for every record.

Rules:
- Records go into the accumulator's ordinary batches (`ProducerBatch`), filled under its lock
  with `_append`'s rules: a record fits while buffer memory allows (any record when nothing is
  buffered), and a batch is sealed once it reaches `batch_bytes` or `max_records_per_batch` or
  the next record would take it past `batch_bytes`, so a call bigger than a batch fills several
  wire batches split exactly where per-record sends would split them. Everything after the
  append (idempotence sequence numbers, retries with the same payload, transactions,
  per-partition order, also with `send` calls before and after) is the sender's, as for any
  batch; the broker sees ordinary batches.
- Everything is checked before anything is queued: types, each record's size against
  `max_record_bytes`, the partition, the lengths of `keys` and `headers`. A refusal raises and
  queues nothing.
- Partitions: keyless records take the topic's sticky partition (moving on when a batch seals,
  as `send` does); keyed ones the key's partition (Kafka's murmur2), grouped by partition in
  call order; an explicit `partition` takes every record.
- Back-pressure: the records are queued batch after batch, at most `APPEND_ROWS_MAX` between
  two chances for the sender to run; when buffer memory is full the caller waits for it (up to
  `max_block_ms` without progress), then `BufferFullError`, whose `queued` is the future of the
  records queued so far (they are still delivered).
- The rows are made with the GC paused and then moved past the young generations
  (`client/_gc.py`): they hold bytes, ints, None and header lists, never a cycle, and the young
  collection that every 700 new rows start cost more than making them (150 -> 50 ns a row).
- The common call (bytes values, no keys, headers or serializers) runs no Python per record;
  keys, headers, serializers and non-bytes values take a per-record Python loop (still no
  coroutine, clock read or future per record).
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Generator, Iterable, Mapping, Sequence
from itertools import accumulate, repeat
from operator import add
from typing import Any, Protocol, overload

from client.accumulator import (
    RECORD_OVERHEAD_BYTES,
    ProducerBatch,
    RecordAccumulator,
    RecordFuture,
)
from client.errors import ClientClosedError
from client.partitioner import partition_for_key
from client.serialization import Serializer, as_bytes, normalise_headers, serialize
from client.types import RecordMetadata
from wire.error_codes import BrokerError, ErrorCode


class BulkProducer(Protocol):
    """What a bulk append reads of its producer (`client.aio.Producer`, which imports this
    module): its accumulator, partition counts, state and limits."""

    _acc: RecordAccumulator
    _counts: dict[str, int]
    _closed: bool
    _refuse: BaseException | None
    _serializers: tuple[Serializer | None, Serializer | None] | None
    max_record_bytes: int


Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes]
# Rows one `append_some` queues at most (several batches' worth, in one GC pause and one hold
# of the accumulator's lock, about a millisecond), before the caller may yield to the sender.
APPEND_ROWS_MAX = 16_384
# Record sizes (bytes counted against batch and buffer memory): one per record, or one int when
# every record has that size (the common call, which then builds no per-record list).
Sizes = list[int] | int
# (batch, index of the first record in the batch, record count): where a run of records went.
Span = tuple[ProducerBatch, int, int]


class SendManyFuture(Sequence[RecordFuture]):
    """The delivery outcome of one `send_many` call.

    `await future` (or `future.result(timeout)`, blocking) waits for every batch the records
    went into and returns a `SendManyResult`, the records' metadata in call order, made only
    when read; if a batch failed it raises that error (the first failed batch's, in the order
    they were filled). `future[i]` is record i's own `RecordFuture`, for per-record outcomes
    after a partial failure. Nothing here allocates per record until asked.
    """

    __slots__ = ("_batches", "_order", "_spans", "_starts", "_where")

    def __init__(self, spans: list[Span], order: list[int] | None) -> None:
        """`spans` in fill order; `order[position]` is the call index of the record at that
        position of the fill order, None when the fill order is the call order."""
        self._spans = spans
        self._starts = list(accumulate((span[2] for span in spans), initial=0))
        self._order = order
        self._where: list[int] | None = None
        self._batches = list(dict.fromkeys(span[0] for span in spans))

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, index: int) -> tuple[ProducerBatch, int]:
        """The batch record `index` (call order) went into, and its index there."""
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"record {index} of a send_many of {count}")
        if self._order is not None:
            if self._where is None:
                where = [0] * count
                for position, call_index in enumerate(self._order):
                    where[call_index] = position
                self._where = where
            index = self._where[index]
        span = bisect_right(self._starts, index) - 1
        batch, first, _ = self._spans[span]
        return batch, first + index - self._starts[span]

    @overload
    def __getitem__(self, index: int) -> RecordFuture: ...
    @overload
    def __getitem__(self, index: slice) -> list[RecordFuture]: ...
    def __getitem__(self, index: int | slice) -> RecordFuture | list[RecordFuture]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return RecordFuture(self.locate(index))

    def done(self) -> bool:
        return all(batch.done for batch in self._batches)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Block until every record is acknowledged or failed; the first failure, or None.

        Blocking: from a trio task use `await future`. `TimeoutError` after `timeout` s.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for batch in self._batches:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not batch.wait_blocking(left):
                raise TimeoutError(f"send_many not acknowledged within {timeout} s")
        return self._first_error()

    def result(self, timeout: float | None = None) -> SendManyResult:
        """Block until delivered; raise the first delivery error, or `TimeoutError`."""
        error = self.exception(timeout)
        if error is not None:
            raise error
        return SendManyResult(self)

    get = result

    def __await__(self) -> Generator[Any, None, SendManyResult]:
        for batch in self._batches:
            yield from batch.wait().__await__()
        error = self._first_error()
        if error is not None:
            raise error
        return SendManyResult(self)

    def _first_error(self) -> BaseException | None:
        for batch in self._batches:
            if batch.error is not None:
                return batch.error
        return None

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("failed" if self._first_error() else "done")
        return f"<SendManyFuture {len(self)} records in {len(self._batches)} batches {state}>"


class SendManyResult(Sequence[RecordMetadata]):
    """The metadata of a delivered `send_many` call, in call order; `result[i]` is record i's
    `RecordMetadata` (offset = its batch's base offset + its index there), made when read."""

    __slots__ = ("_future",)

    def __init__(self, future: SendManyFuture) -> None:
        self._future = future

    def __len__(self) -> int:
        return len(self._future)

    @overload
    def __getitem__(self, index: int) -> RecordMetadata: ...
    @overload
    def __getitem__(self, index: slice) -> list[RecordMetadata]: ...
    def __getitem__(self, index: int | slice) -> RecordMetadata | list[RecordMetadata]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        batch, position = self._future.locate(index)
        return batch.metadata(position)

    def __repr__(self) -> str:
        return f"<SendManyResult of {len(self)} records>"


class _Run:
    """Records bound for one partition (-1: the sticky one), as columns, with their sizes:
    `unit` when every record has the same size (no per-record list needed), else `ends`, the
    running totals (`ends[i]` = bytes of records 0..i)."""

    __slots__ = ("count", "ends", "headers", "keys", "partition", "unit", "values")

    def __init__(
        self,
        partition: int,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None,
        headers: Sequence[Any] | None,
        sizes: Sizes,
    ) -> None:
        self.partition = partition
        self.values = values
        self.keys = keys
        self.headers = headers
        self.count = len(values)
        if isinstance(sizes, int):
            self.unit, self.ends = sizes, None
        else:
            low, high = min(sizes), max(sizes)
            self.unit = high if low == high else 0
            self.ends = list(accumulate(sizes)) if not self.unit else None

    def bytes(self, start: int, count: int) -> int:
        if self.ends is None:
            return self.unit * count
        return self.ends[start + count - 1] - (self.ends[start - 1] if start else 0)

    def within(self, start: int, room: int) -> int:
        """How many records from `start` fit in `room` bytes."""
        if self.ends is None:
            return min(max(room, 0) // self.unit, self.count - start)
        base = self.ends[start - 1] if start else 0
        return bisect_right(self.ends, base + room, start, self.count) - start


class BulkAppend:
    """One `send_many` call: its records checked, sized and routed (`route`), then queued by
    `append_some` calls, shared by the trio producer and the blocking
    facade (which differ only in how they wait for metadata and memory)."""

    def __init__(
        self,
        producer: BulkProducer,
        topic: str,
        values: Iterable[Any],
        keys: Iterable[Any] | None,
        headers: Iterable[Headers | None] | None,
        partition: int | None,
        timestamp_ms: int | None,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._partition = partition
        values = values if isinstance(values, list | tuple) else list(values)
        keys = _column("keys", keys, len(values))
        headers = _column("headers", headers, len(values))
        if producer._serializers is not None:
            key_column = keys if keys is not None else repeat(None)
            pairs = [
                serialize(*producer._serializers, topic, key, value)
                for key, value in zip(key_column, values, strict=False)
            ]
            values = [value for _, value in pairs]
            if keys is not None:
                keys = [key for key, _ in pairs]
        self._values: Sequence[bytes | None]
        self._keys: Sequence[bytes | None] | None = None
        self._headers: list[Any] | None = None
        # The common call (bytes values, nothing else): no Python per record from here on.
        sizes = _value_sizes(values) if keys is None and headers is None else None
        if sizes is None:
            sizes = self._normalise(values, keys, headers)
        else:
            self._values = values
        self._sizes = sizes
        largest = sizes if isinstance(sizes, int) else max(sizes, default=0)
        if largest > producer.max_record_bytes:
            index = 0 if isinstance(sizes, int) else sizes.index(largest)
            raise BrokerError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"send_many record {index} is {largest} bytes, over "
                f"max_record_bytes={producer.max_record_bytes}; nothing was queued: split it or "
                "raise the topic's max.message.bytes and the producer's limit",
            )
        self._timestamp = timestamp_ms
        self._runs: list[_Run] = []
        self._order: list[int] | None = None
        self._run = 0
        self._next = 0
        self._left = 0  # records not queued yet
        self._spans: list[Span] = []

    def _normalise(
        self,
        values: Sequence[Any],
        keys: Sequence[Any] | None,
        headers: Sequence[Headers | None] | None,
    ) -> list[int]:
        """The general case, one record at a time: `send`'s conversions (str to UTF-8,
        bytearray/memoryview to bytes); returns the sizes."""
        self._values = [
            value if value.__class__ is bytes or value is None else as_bytes("value", value)
            for value in values
        ]
        sizes = [RECORD_OVERHEAD_BYTES + len(value or b"") for value in self._values]
        if keys is not None:
            self._keys = [
                key if key.__class__ is bytes or key is None else as_bytes("key", key)
                for key in keys
            ]
            sizes = list(map(add, sizes, (len(key or b"") for key in self._keys)))
        if headers is not None:
            self._headers = []
            for index, record_headers in enumerate(headers):
                if record_headers is None:
                    self._headers.append(None)
                    continue
                normalised, sizes[index] = normalise_headers(record_headers, sizes[index])
                self._headers.append(normalised)
        return sizes

    def route(self) -> bool:
        """Pick the partitions; False while the topic's partition count is not known (the
        caller loads it and calls again). Raises `BrokerError(UNKNOWN_PARTITION)` for a
        partition beyond it (the caller looks the topic up afresh and calls once more)."""
        producer = self._producer
        count = producer._counts.get(self.topic)
        if count is None:
            if producer._closed:
                raise ClientClosedError("the producer is closed; create a new one")
            return False
        partition = self._partition
        if partition is not None and not 0 <= partition < count:
            raise BrokerError(
                ErrorCode.UNKNOWN_PARTITION,
                f"topic {self.topic!r} has partitions 0..{count - 1}, not {partition}",
            )
        values, keys, headers, sizes = self._values, self._keys, self._headers, self._sizes
        if not values:
            self._runs = []
        elif partition is not None or keys is None:
            self._runs = [
                _Run(-1 if partition is None else partition, values, keys, headers, sizes)
            ]
        else:
            groups: dict[int, list[int]] = {}
            for index, key in enumerate(keys):
                target = partition_for_key(key, count) if key is not None else -1
                group = groups.get(target)
                if group is None:
                    group = groups[target] = []
                group.append(index)
            if len(groups) == 1:
                self._runs = [_Run(next(iter(groups)), values, keys, headers, sizes)]
            else:
                assert isinstance(sizes, list)  # keyed records are sized one by one
                self._runs = [
                    _Run(
                        target,
                        [values[i] for i in indexes],
                        [keys[i] for i in indexes],
                        [headers[i] for i in indexes] if headers is not None else None,
                        [sizes[i] for i in indexes],
                    )
                    for target, indexes in groups.items()
                ]
                self._order = [index for indexes in groups.values() for index in indexes]
        self._left = len(values)
        if self._timestamp is None:
            self._timestamp = time.time_ns() // 1_000_000
        return True

    @property
    def finished(self) -> bool:
        return self._run >= len(self._runs)

    def next_size(self) -> int:
        """The size of the next record to queue (what a memory wait waits for)."""
        run = self._runs[self._run]
        return run.bytes(self._next, 1)

    def append_some(self) -> int:
        """Queue the next records, batch after batch while buffer memory allows, up to
        `APPEND_ROWS_MAX`; return how many (0: buffer memory is full, wait for some and call
        again)."""
        producer = self._producer
        if producer._refuse is not None:
            raise producer._refuse.with_traceback(None)
        count = producer._counts.get(self.topic)
        if count is None:
            raise ClientClosedError("the producer was closed during send_many")
        acc = producer._acc
        # The batches take slices of the caller's lists: nothing is allocated per record, so
        # the GC has nothing to walk.
        queued = 0
        with acc.lock:
            while queued < APPEND_ROWS_MAX and not self.finished:
                taken = self._fill_one(acc, count)
                if not taken:
                    break
                queued += taken
        return queued

    def _fill_one(self, acc: RecordAccumulator, partition_count: int) -> int:
        """Append the next records to the open batch of the current run's partition, as many
        as fit in it and in buffer memory (see the module rules); caller holds the lock."""
        run = self._runs[self._run]
        start = self._next
        timestamp = self._timestamp
        assert timestamp is not None
        acc.close_topic_lane(self.topic)  # its reservation is counted in memory_used
        used = acc.memory_used
        taken = run.within(start, acc.buffer_memory_bytes - used)
        if not taken and acc.reclaim_lanes():
            used = acc.memory_used
            taken = run.within(start, acc.buffer_memory_bytes - used)
        if not taken:
            if used:
                return 0
            taken = 1  # an empty buffer takes any record, as `_append` does
        batch = acc.open_batch(self.topic, run.partition, timestamp, partition_count)
        first = batch.record_count
        fits = run.within(start, acc.batch_bytes - batch.size_bytes)
        if not fits:
            if first:
                # The next record does not fit: the batch leaves without it, as in `_append`.
                acc.seal(batch, partition_count)
                return self._fill_one(acc, partition_count)
            fits = 1  # a record larger than `batch_bytes` goes alone
        taken = min(taken, fits, acc.max_records_per_batch - first)
        stop = start + taken
        batch.extend(
            timestamp,
            run.keys[start:stop] if run.keys is not None else None,
            run.values[start:stop],
            run.headers[start:stop] if run.headers is not None else None,
        )
        size = run.bytes(start, taken)
        batch.size_bytes += size
        acc.memory_used = used + size
        if batch.size_bytes >= acc.batch_bytes or first + taken >= acc.max_records_per_batch:
            acc.seal(batch, partition_count)
        self._spans.append((batch, first, taken))
        self._left -= taken
        if stop < run.count:
            self._next = stop
        else:
            self._run += 1
            self._next = 0
        return taken

    def future(self) -> SendManyFuture:
        """The future of every record queued so far (all of them once `finished`). Before
        that (a `BufferFullError`), records with keys over several partitions are indexed in
        the order they were queued, partition by partition, not in call order."""
        return SendManyFuture(self._spans, self._order if self.finished else None)


def _value_sizes(values: Sequence[Any]) -> Sizes | None:
    """The sizes of keyless, headerless records, found in C: one int when they are all alike;
    None if a value is not bytes (then `send`'s conversions apply, record by record)."""
    if not values:
        return []
    try:
        # `bytes.__len__` is also the type check: it refuses anything but bytes.
        low = min(map(_bytes_len, values))
    except TypeError:
        return None
    high = max(map(len, values))
    if low == high:
        return RECORD_OVERHEAD_BYTES + low
    return list(map(add, map(len, values), repeat(RECORD_OVERHEAD_BYTES)))


_bytes_len = bytes.__len__


def _column(what: str, column: Iterable[Any] | None, count: int) -> Sequence[Any] | None:
    """`keys` or `headers` as a sequence with one entry per value (None: no such column)."""
    if column is None:
        return None
    column = column if isinstance(column, list | tuple) else list(column)
    if len(column) != count:
        raise ValueError(f"send_many got {count} values but {len(column)} {what}")
    return column
