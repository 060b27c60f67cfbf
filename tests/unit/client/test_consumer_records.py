"""`ConsumerRecords`, what poll() returns, behaves as the list of records it replaced (order,
len, truth, indexing, slices, equality, `+`), builds the records from the batches' rows, and the
consumer hands out its runs with positions moving exactly as before."""

from __future__ import annotations

import json

import pytest

from client.aio.consumer import Consumer, _Chunk, decode_runs, scan_fetched
from client.consumer_records import ConsumerRecords, ListRun, RowsRun
from client.serialization import SerializationError
from client.types import ConsumerRecord, TopicPartition
from wire.batch import build_batch, repack_batch, unpack_header

TP = TopicPartition("t", 3)
T0 = 1_700_000_000_000


def batch(base_offset: int, count: int) -> bytes:
    records = [
        (T0 + i, b"k%d" % i, b"v%d" % (base_offset + i), [("h", b"x")] if i % 2 else None)
        for i in range(count)
    ]
    return build_batch(records, base_offset=base_offset)


def expected(base_offset: int, count: int, start: int = 0) -> list[ConsumerRecord]:
    """The records `batch(base_offset, count)` holds from its `start`-th, built by hand."""
    return [
        ConsumerRecord(
            "t", 3, base_offset + i, T0 + i, b"k%d" % i, b"v%d" % (base_offset + i),
            (("h", b"x"),) if i % 2 else None,
        )
        for i in range(start, count)
    ]  # fmt: skip


def compacted(base_offset: int, kept: list[int]) -> bytes:
    """A batch of 5 offsets from which the cleaner kept `kept` (rows carry offset deltas)."""
    header = unpack_header(batch(base_offset, 5))
    rows = [[i, b"k%d" % i, b"v%d" % (base_offset + i), None, i] for i in kept]
    return repack_batch(header, rows)


def test_rows_become_the_same_records_as_before() -> None:
    runs = decode_runs(TP, batch(10, 4) + batch(14, 3), 12)
    assert [type(run) for run in runs] == [RowsRun, RowsRun]  # no record built yet
    records = ConsumerRecords(runs)
    assert list(records) == expected(10, 4, start=2) + expected(14, 3)
    assert all(type(record) is ConsumerRecord for record in records)
    assert records[0].headers is None and records[1].headers == (("h", b"x"),)


def test_compacted_batches_are_built_records_in_the_same_sequence() -> None:
    data = batch(0, 2) + compacted(2, [1, 3]) + batch(7, 1)
    runs = decode_runs(TP, data, 0)
    assert [type(run) for run in runs] == [RowsRun, ListRun, RowsRun]
    assert [r.offset for r in ConsumerRecords(runs)] == [0, 1, 3, 5, 7]
    # A fetch offset inside the compacted batch drops the kept records below it.
    assert [r.offset for r in ConsumerRecords(decode_runs(TP, data, 4))] == [5, 7]


def test_it_behaves_as_the_list_it_replaced() -> None:
    records = ConsumerRecords(decode_runs(TP, batch(0, 3) + batch(3, 4), 0))
    as_list = expected(0, 3) + expected(3, 4)
    assert len(records) == 7 and records
    assert (
        records == as_list
        and as_list == records
        and records == ConsumerRecords(decode_runs(TP, batch(0, 3) + batch(3, 4), 0))
    )
    assert records != as_list[:-1] and records != tuple(as_list)
    assert [records[i] for i in range(-7, 7)] == as_list + as_list
    for bad in (7, -8):
        with pytest.raises(IndexError):
            records[bad]
    assert records[2:5] == as_list[2:5] and records[::-2] == as_list[::-2]
    assert isinstance(records[1:], list)
    assert list(reversed(records)) == as_list[::-1]
    assert as_list[4] in records and records.index(as_list[4]) == 4
    assert records + as_list[:1] == as_list + as_list[:1]
    assert as_list[:1] + records == as_list[:1] + as_list
    gathered: list[ConsumerRecord] = []
    gathered += records  # the common `records += consumer.poll()`
    assert gathered == as_list
    assert repr(records) == f"ConsumerRecords({as_list!r})"
    with pytest.raises(TypeError):
        hash(records)


def test_an_empty_one_is_falsy_and_equals_the_empty_list() -> None:
    empty = ConsumerRecords()
    assert not empty and len(empty) == 0 and list(empty) == []
    assert empty == [] and [] == empty  # noqa: SIM300 - both orders, as tests write them
    assert ConsumerRecords([RowsRun("t", 0, 0, T0, (), 0, 0)]) == []
    with pytest.raises(IndexError):
        empty[0]


def test_records_are_built_again_on_each_read_and_equal() -> None:
    records = ConsumerRecords(decode_runs(TP, batch(0, 2), 0))
    assert list(records) == list(records)
    assert records[1] == records[1] and records[1] is not records[1]


def test_split_runs_share_the_rows_and_know_the_next_offset() -> None:
    (run,) = decode_runs(TP, batch(20, 5), 21)
    assert isinstance(run, RowsRun) and len(run) == 4 and run.next_offset == 25
    head, tail = run.split(3)
    assert head.rows is tail.rows is run.rows
    assert (len(head), head.next_offset, len(tail), tail.next_offset) == (3, 24, 1, 25)
    assert list(ConsumerRecords([head, tail])) == list(ConsumerRecords([run]))
    listed = ListRun(expected(0, 4))
    first, rest = listed.split(1)
    assert (first.next_offset, rest.next_offset) == (1, 4)
    assert list(ConsumerRecords([rest, first])) == expected(0, 4)[1:] + expected(0, 1)


# --- the consumer hands runs out ------------------------------------------------------------------


def make_consumer(**options: object) -> Consumer:
    consumer = Consumer("127.0.0.1:1", auto_offset_reset="earliest", **options)  # type: ignore[arg-type]
    consumer.assign([TP])
    consumer._states[TP].fetch_offset = consumer._states[TP].position = 0
    return consumer


def buffer(consumer: Consumer, data: bytes) -> None:
    offset = consumer._states[TP].fetch_offset
    next_offset, count = scan_fetched(data, offset)
    consumer._buffer_chunk(_Chunk(TP, consumer._states[TP].epoch, data, offset, next_offset, count))


def test_polls_split_batches_and_move_the_position_as_before() -> None:
    consumer = make_consumer()
    buffer(consumer, batch(0, 4) + batch(4, 3))
    buffer(consumer, batch(7, 2))
    assert consumer._buffered == 9
    taken: list[int] = []
    positions: list[int] = []
    while records := consumer.poll_nowait(max_records=3):
        assert isinstance(records, ConsumerRecords) and len(records) <= 3
        taken += [r.offset for r in records]
        positions.append(consumer._states[TP].position)
    assert taken == list(range(9))
    assert positions == [3, 6, 9]
    assert consumer._buffered == 0 and consumer._buffered_bytes == 0
    assert not consumer._buffer


def test_deserializers_still_apply_and_a_refused_record_still_raises() -> None:
    values = [json.dumps({"n": i}).encode() for i in range(3)] + [b"not json"]
    data = build_batch([(T0, None, value, None) for value in values], base_offset=0)
    consumer = make_consumer(value_deserializer=json.loads)
    buffer(consumer, data)
    assert [r.value for r in consumer.poll_nowait()] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert consumer._states[TP].position == 3
    # The refused record is fetched again (the fetcher does so, from the new fetch offset).
    assert consumer._states[TP].fetch_offset == 3
    buffer(consumer, data)
    for _ in range(2):  # it stays at the head: every poll raises until a seek
        with pytest.raises(SerializationError):
            consumer.poll_nowait()
    assert consumer._states[TP].position == 3
