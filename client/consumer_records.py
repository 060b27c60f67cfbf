"""`ConsumerRecords`: what `Consumer.poll` returns, records built only when the application
reads them.

Why: building one `ConsumerRecord` per record when a fetched chunk was decoded measured about a
third of the consumer's CPU, and every record then stayed alive, in the buffer and in the list
poll returned, until the application dropped the whole list. Here poll hands out the decoded
batches themselves (the rows of one `msgpack.unpackb` per batch) and a record object is made as
the application iterates or indexes, then freed as soon as it lets go of it.

Rules:
- It behaves as the list poll returned before: a read-only `Sequence[ConsumerRecord]` in the
  same order, with `len()`, truth, indexing (negative too), slices (a plain list), `in`,
  `reversed`, `==` with a list or another `ConsumerRecords`, and `+` with a list (a list). It is
  not a `list` (`isinstance(records, list)` is False); `list(records)` makes one.
- Each read builds the record again: equal every time, not the same object.
- A run is one batch's records, or a part of one: `RowsRun` keeps msgpack rows and builds
  records on the fly; `ListRun` holds records already built (Kafka's varint batches, compacted
  batches, records passed through deserializers). Runs never change once made: `split` makes
  two new ones, so a batch shared by two polls' containers is safe to read from both.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, overload

from client.types import ConsumerRecord

_new_record = tuple.__new__


class RowsRun:
    """Records `start` to `stop` (row indexes) of a dense msgpack batch: row `i` is
    `(timestamp_delta, key, value, headers)` and its record has offset `base_offset + i`."""

    __slots__ = ("base_offset", "base_timestamp", "partition", "rows", "start", "stop", "topic")

    def __init__(
        self,
        topic: str,
        partition: int,
        base_offset: int,
        base_timestamp: int,
        rows: Sequence[Any],
        start: int,
        stop: int,
    ) -> None:
        assert 0 <= start <= stop <= len(rows), (start, stop, len(rows))
        self.topic = topic
        self.partition = partition
        self.base_offset = base_offset
        self.base_timestamp = base_timestamp
        self.rows = rows
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def next_offset(self) -> int:
        """The offset after the run's last record (the position once it is handed out)."""
        return self.base_offset + self.stop

    def __iter__(self) -> Iterator[ConsumerRecord]:
        topic, partition, base_timestamp = self.topic, self.partition, self.base_timestamp
        rows = self.rows
        if self.start or self.stop != len(rows):
            rows = rows[self.start : self.stop]
        offset = self.base_offset + self.start
        # Unpacking the row in the loop header and tuple.__new__ (rather than calling the
        # NamedTuple) are the cheapest ways CPython has to make these; measured, a generator is
        # as fast as a chain of C iterators (map/zip/count) and reads far better.
        for timestamp_delta, key, value, headers in rows:
            yield _new_record(
                ConsumerRecord,
                (topic, partition, offset, base_timestamp + timestamp_delta, key, value, headers),
            )
            offset += 1

    def record(self, index: int) -> ConsumerRecord:
        """The run's `index`-th record (0 is `start`); the caller checks the bounds."""
        position = self.start + index
        timestamp_delta, key, value, headers = self.rows[position]
        return _new_record(
            ConsumerRecord,
            (
                self.topic,
                self.partition,
                self.base_offset + position,
                self.base_timestamp + timestamp_delta,
                key,
                value,
                headers,
            ),
        )

    def split(self, count: int) -> tuple[RowsRun, RowsRun]:
        """The first `count` records and the rest, as two runs over the same rows."""
        assert 0 < count < len(self), (count, len(self))
        middle = self.start + count
        head = RowsRun(*self._fields(), self.start, middle)
        tail = RowsRun(*self._fields(), middle, self.stop)
        return head, tail

    def _fields(self) -> tuple[str, int, int, int, Sequence[Any]]:
        return self.topic, self.partition, self.base_offset, self.base_timestamp, self.rows


class ListRun:
    """Records `start` to `stop` of a list of records built already."""

    __slots__ = ("records", "start", "stop")

    def __init__(self, records: Sequence[ConsumerRecord], start: int = 0, stop: int = -1) -> None:
        self.records = records
        self.start = start
        self.stop = len(records) if stop < 0 else stop
        assert 0 <= self.start <= self.stop <= len(records), (start, stop, len(records))

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def next_offset(self) -> int:
        assert self.stop > self.start, "an empty run has no last record"
        return self.records[self.stop - 1].offset + 1

    def __iter__(self) -> Iterator[ConsumerRecord]:
        return itertools.islice(self.records, self.start, self.stop)

    def record(self, index: int) -> ConsumerRecord:
        return self.records[self.start + index]

    def split(self, count: int) -> tuple[ListRun, ListRun]:
        assert 0 < count < len(self), (count, len(self))
        middle = self.start + count
        return ListRun(self.records, self.start, middle), ListRun(self.records, middle, self.stop)


Run = RowsRun | ListRun


class ConsumerRecords(Sequence[ConsumerRecord]):
    """The records one `poll` returned, in order (offset order within each partition).

    Iterate it as the list poll used to return; see the module docstring for what else works.
    """

    __slots__ = ("_ends", "_runs")

    def __init__(self, runs: Sequence[Run] = ()) -> None:
        self._runs = [run for run in runs if len(run)]
        # Cumulative record counts, so indexing finds its run by bisection.
        self._ends = list(itertools.accumulate(map(len, self._runs)))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __bool__(self) -> bool:
        return bool(self._runs)

    def __iter__(self) -> Iterator[ConsumerRecord]:
        return itertools.chain.from_iterable(self._runs)

    @overload
    def __getitem__(self, index: int) -> ConsumerRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[ConsumerRecord]: ...

    def __getitem__(self, index: int | slice) -> ConsumerRecord | list[ConsumerRecord]:
        if isinstance(index, slice):
            return list(self)[index]
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("ConsumerRecords index out of range")
        which = bisect.bisect_right(self._ends, index)
        before = self._ends[which - 1] if which else 0
        return self._runs[which].record(index - before)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConsumerRecords):
            return len(self) == len(other) and list(self) == list(other)
        if isinstance(other, list):
            return len(self) == len(other) and list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a list: equal to one, so not hashable

    def __add__(self, other: object) -> list[ConsumerRecord]:
        if isinstance(other, ConsumerRecords | list):
            return [*self, *other]
        return NotImplemented

    def __radd__(self, other: object) -> list[ConsumerRecord]:
        if isinstance(other, list):
            return [*other, *self]
        return NotImplemented

    def __repr__(self) -> str:
        return f"ConsumerRecords({list(self)!r})"
