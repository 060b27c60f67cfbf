"""`send_many`'s bulk append (client/bulk.py) without a broker: it splits, bounds memory, routes
and indexes exactly as the per-record path does. The producer is built but never started; its
topic's partition count is set by hand."""

from __future__ import annotations

import random

import pytest
import trio

from client.accumulator import ProducerBatch
from client.aio import Producer
from client.bulk import BulkAppend, SendManyFuture
from client.partitioner import partition_for_key
from tests.unit.client.batch_rows import rows_of
from wire.batch import build_batch_columns, decode_records, unpack_header
from wire.error_codes import BrokerError, ErrorCode

TIMESTAMP = 1_700_000_000_000


def producer(partitions: int = 1, **options: object) -> Producer:
    options = {"batch_bytes": 1000, "adaptive_batching": False, **options}
    made = Producer("127.0.0.1:1", acks=1, **options)  # type: ignore[arg-type]
    made._counts["t"] = partitions
    return made


def queued(made: Producer) -> list[ProducerBatch]:
    """Every batch of the producer's accumulator, sealed then open, in creation order."""
    acc = made._acc
    batches = [b for queue in acc._sealed.values() for b in queue] + list(acc._open.values())
    return sorted(batches, key=lambda b: b.sequence)


def bulk(made: Producer, values: list, **kwargs: object) -> BulkAppend:
    options: dict = {"keys": None, "headers": None, "partition": None, "timestamp_ms": TIMESTAMP}
    options.update(kwargs)
    appended = BulkAppend(made, "t", values, **options)
    appended.route()
    return appended


def append_all(appended: BulkAppend) -> SendManyFuture:
    while not appended.finished:
        assert appended.append_some() > 0
    return appended.future()


def test_batches_split_exactly_where_per_record_sends_split_them() -> None:
    rng = random.Random(7)
    values = [b"v" * rng.randrange(0, 300) for _ in range(500)]
    one_by_one = producer(max_records_per_batch=37)
    for value in values:
        assert one_by_one._append("t", value, None, None, 0, TIMESTAMP, None) is not None
    many = producer(max_records_per_batch=37)
    future = append_all(bulk(many, values, partition=0))
    expected = [(b.record_count, b.size_bytes, rows_of(b)) for b in queued(one_by_one)]
    assert len(expected) > 10  # several batches: split by batch_bytes and by record count
    assert [(b.record_count, b.size_bytes, rows_of(b)) for b in queued(many)] == expected
    assert len(future) == len(values)
    assert many._acc.memory_used == one_by_one._acc.memory_used


def test_uniform_records_split_as_per_record_sends_do() -> None:
    values = [b"x" * 100] * 1000
    one_by_one = producer()
    for value in values:
        one_by_one._append("t", value, None, None, None, TIMESTAMP, None)
    many = producer()
    append_all(bulk(many, values))
    assert [b.record_count for b in queued(many)] == [b.record_count for b in queued(one_by_one)]
    assert [b.partition for b in queued(many)] == [b.partition for b in queued(one_by_one)]


def test_the_built_batch_carries_every_record_in_call_order() -> None:
    values = [b"%d" % i for i in range(300)]
    made = producer(batch_bytes=1 << 20)
    future = append_all(bulk(made, values, partition=0))
    (batch,) = queued(made)
    payload = build_batch_columns(
        batch.deltas, batch.keys, batch.values, batch.headers, base_timestamp=batch.base_timestamp
    )
    records = decode_records(payload, header=unpack_header(payload))
    assert [r.value for r in records] == values
    assert {r.timestamp for r in records} == {TIMESTAMP}
    assert future.locate(299) == (batch, 299)


def test_buffer_memory_bounds_each_append_and_an_empty_buffer_takes_one() -> None:
    made = producer(batch_bytes=100_000, buffer_memory_bytes=1000)
    appended = bulk(made, [b"x" * 84] * 30)  # 100 bytes a record with the overhead
    assert appended.append_some() == 10
    assert made._acc.memory_used == 1000
    assert appended.append_some() == 0  # full: the caller waits for memory
    (batch,) = queued(made)
    made._acc.abort_all()
    made._acc.release(batch)
    assert appended.append_some() == 10
    huge = producer(batch_bytes=100_000, buffer_memory_bytes=50)
    assert bulk(huge, [b"x" * 84] * 3).append_some() == 1  # nothing buffered: one goes anyway


def test_keys_go_to_their_partitions_in_call_order_and_index_back() -> None:
    made = producer(partitions=4, batch_bytes=1 << 20)
    keys = [b"k%d" % (i % 7) for i in range(200)]
    values = [b"%d" % i for i in range(200)]
    future = append_all(bulk(made, values, keys=keys))
    for i in range(200):
        batch, index = future.locate(i)
        assert batch.partition == partition_for_key(keys[i], 4)
        assert rows_of(batch)[index][1:3] == (keys[i], values[i])
    for batch in queued(made):
        indexes = [int(row[2]) for row in rows_of(batch)]
        assert indexes == sorted(indexes)  # each partition keeps the call order


def test_an_explicit_partition_takes_every_record() -> None:
    made = producer(partitions=4)
    append_all(bulk(made, [b"a", b"b"], keys=[b"x", b"y"], partition=3))
    assert {b.partition for b in queued(made)} == {3}


def test_send_many_joins_the_open_sticky_batch_that_send_uses() -> None:
    made = producer(batch_bytes=1 << 20)
    first = made._append("t", b"one", None, None, None, TIMESTAMP, None)
    assert first is not None
    future = append_all(bulk(made, [b"two", b"three"]))
    last = made._append("t", b"four", None, None, None, TIMESTAMP + 5, None)
    assert last is not None
    (batch,) = queued(made)
    assert [row[2] for row in rows_of(batch)] == [b"one", b"two", b"three", b"four"]
    assert future.locate(0) == (batch, 1) and last[1] == 3


def test_values_and_keys_are_converted_as_send_converts_them() -> None:
    made = producer(batch_bytes=1 << 20)
    headers = [None, {"h": "v"}, [("a", b"1")]]
    append_all(bulk(made, ["é", bytearray(b"b"), None], keys=[None, "k", b"k"], headers=headers))
    (batch,) = queued(made)
    rows = [row[1:] for row in rows_of(batch)]
    assert rows == [
        (None, "é".encode(), None),
        (b"k", b"b", [("h", b"v")]),
        (b"k", None, [("a", b"1")]),
    ]


def test_refusals_queue_nothing() -> None:
    made = producer(max_record_bytes=200)
    with pytest.raises(BrokerError) as info:
        bulk(made, [b"ok", b"x" * 300])
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE and "record 1" in str(info.value)
    with pytest.raises(ValueError, match="2 values but 1 keys"):
        bulk(made, [b"a", b"b"], keys=[b"k"])
    with pytest.raises(TypeError, match="must be bytes"):
        bulk(made, [b"a", 5])
    with pytest.raises(BrokerError) as info:
        bulk(made, [b"a"], partition=1)
    assert info.value.code is ErrorCode.UNKNOWN_PARTITION
    assert queued(made) == [] and made._acc.memory_used == 0


def test_the_future_resolves_lazily_to_metadata_and_reports_a_failed_batch() -> None:
    made = producer(batch_bytes=300)  # three 100-byte records (84 + overhead) a batch
    future = append_all(bulk(made, [b"x" * 84] * 7, partition=0))
    batches = queued(made)
    assert [b.record_count for b in batches] == [3, 3, 1]
    assert not future.done()
    for base, batch in zip((10, 13, 16), batches, strict=True):
        batch.complete(base, None)
    result = future.result(timeout=0)
    assert [m.offset for m in result] == list(range(10, 17))
    assert result[-1].timestamp == TIMESTAMP and result[2:4][1].offset == 13
    other = producer()
    failed = append_all(bulk(other, [b"y"] * 2, partition=0))
    error = BrokerError(ErrorCode.NOT_LEADER, "gone")
    queued(other)[-1].complete(-1, error)
    assert failed.exception(timeout=0) is error
    with pytest.raises(BrokerError):
        failed.result(timeout=0)
    assert failed[1].exception(timeout=0) is error


def test_an_empty_call_resolves_to_nothing() -> None:
    future = append_all(bulk(producer(), []))
    assert future.done() and len(future.result(timeout=0)) == 0


def test_a_record_that_does_not_fit_seals_the_batch_before_it_in_every_path() -> None:
    """No batch outgrows batch_bytes unless it holds one record (the broker refuses batches over
    its max.message.bytes: a big record after a nearly full batch must not join it)."""
    values = [b"a" * 600, b"b" * 600, b"c" * 2500, b"d" * 100, b"e" * 950]
    one_by_one = producer()
    for value in values:
        assert one_by_one._append("t", value, None, None, 0, TIMESTAMP, None) is not None
    many = producer()
    append_all(bulk(many, values, partition=0))
    for made in (one_by_one, many):
        batches = queued(made)
        assert [[row[2][:1] for row in rows_of(b)] for b in batches] == [
            [b"a"],
            [b"b"],
            [b"c"],
            [b"d"],
            [b"e"],
        ]
        assert all(b.size_bytes <= 1000 or b.record_count == 1 for b in batches)


def test_the_send_fast_path_does_not_overfill_the_sticky_batch() -> None:
    made = producer()
    assert made._append("t", b"a" * 600, None, None, None, TIMESTAMP, None) is not None
    assert made._acc.lanes.get("t") is not None  # the next keyless send takes the fast path

    async def send_big() -> None:
        await made.send("t", b"b" * 600)

    trio.run(send_big)
    assert [b.record_count for b in queued(made)] == [1, 1]
    assert all(b.size_bytes <= 1000 for b in queued(made))
