"""`Producer.send_many` end to end: against a real `broker serve` (order, offsets, splits, keys,
back-pressure, transactions, refusals) and against the fake broker where a test needs a lost
acknowledgement or a broker that never answers."""

from __future__ import annotations

import pytest
import trio

from client import AdminClient, Producer, TopicPartition, aio
from client.embedded import EmbeddedBroker
from client.errors import BufferFullError
from client.partitioner import partition_for_key
from tests.integration.client.fake_broker import FakeBroker
from tests.integration.client.reading import read_partitions
from wire.error_codes import BrokerError, ErrorCode

READ_DEADLINE_S = 20.0


def create(bootstrap: str, topic: str, partitions: int) -> None:
    with AdminClient(bootstrap) as admin:
        admin.create_topic(topic, partitions)


def test_every_record_arrives_in_order_with_its_offset_interleaved_with_send(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic, 1)
    first = [b"first-%d" % i for i in range(2000)]
    second = [b"second-%d" % i for i in range(700)]

    async def main() -> list[int]:
        # Idempotent (the default) with 4 KiB batches: one call fills dozens of wire batches,
        # each numbered with its own sequence.
        async with aio.Producer(bootstrap, batch_bytes=4096) as producer:
            before = await producer.send(unique_topic, b"before")
            many = await producer.send_many(unique_topic, first)
            between = await producer.send(unique_topic, b"between")
            more = await producer.send_many(unique_topic, second)
            assert len(many._batches) > 10
            offsets = [(await before).offset]
            offsets += [m.offset for m in await many]
            offsets.append((await between).offset)
            offsets += [m.offset for m in await more]
            return offsets

    offsets = trio.run(main)
    expected = [b"before", *first, b"between", *second]
    assert offsets == list(range(len(expected)))
    records = read_partitions(bootstrap, unique_topic, 1)[0]
    assert [(offset, value) for offset, _, value in records] == list(enumerate(expected))


def test_keyed_records_land_on_their_key_partitions_in_call_order(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic, 4)
    keys = [b"key-%d" % (i % 13) for i in range(3000)]
    values = [b"%d" % i for i in range(3000)]
    with Producer(bootstrap, batch_bytes=8192) as producer:  # the blocking facade's twin
        result = producer.send_many(unique_topic, values, keys=keys).result(timeout=30)
    assert [m.partition for m in result] == [partition_for_key(k, 4) for k in keys]
    stored = read_partitions(bootstrap, unique_topic, 4)
    for partition, records in stored.items():
        mine = [i for i in range(3000) if result[i].partition == partition]
        assert [(o, k, v) for o, k, v in records] == [
            (result[i].offset, keys[i], values[i]) for i in mine
        ]
    assert sum(map(len, stored.values())) == 3000


def test_a_call_bigger_than_buffer_memory_waits_for_it_and_delivers_everything(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic, 1)
    values = [b"%06d" % i + b"." * 94 for i in range(20_000)]  # ~2.3 MB through a 64 KiB buffer
    options = {"buffer_memory_bytes": 64 * 1024, "batch_bytes": 16 * 1024, "acks": 1}

    async def main() -> tuple[list[int], int]:
        async with aio.Producer(bootstrap, **options) as producer:  # type: ignore[arg-type]
            future = await producer.send_many(unique_topic, values)
            assert producer._acc.memory_used <= options["buffer_memory_bytes"]
            return [m.offset for m in await future], producer._acc.memory_used

    offsets, left = trio.run(main)
    assert offsets == list(range(20_000)) and left == 0
    # acks=1: acknowledged before the fsync that makes the last records readable.
    records = read_partitions(bootstrap, unique_topic, 1, acked_ends={0: 20_000})[0]
    assert len(records) == len(values)
    assert [value for _, _, value in records] == values


def test_transactional_send_many_commits_and_aborts_atomically(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic, 2)
    with Producer(bootstrap, transactional_id=f"{unique_topic}-tx", batch_bytes=4096) as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send_many(unique_topic, [b"kept-%d" % i for i in range(500)], partition=0)
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send_many(unique_topic, [b"dropped-%d" % i for i in range(500)], partition=1)
        producer.flush()
        producer.abort_transaction()
    committed = read_partitions(bootstrap, unique_topic, 2, "read_committed")
    assert [value for _, _, value in committed.get(0, [])] == [b"kept-%d" % i for i in range(500)]
    assert committed.get(1, []) == []


def test_refusals_are_clear_and_queue_nothing(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic, 1)
    with Producer(bootstrap, max_record_bytes=10_000) as producer:
        with pytest.raises(BrokerError) as info:
            producer.send_many("no-such-topic", [b"x"])
        assert info.value.code is ErrorCode.UNKNOWN_TOPIC
        with pytest.raises(BrokerError) as info:
            producer.send_many(unique_topic, [b"small", b"x" * 20_000, b"small"])
        assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
        assert "record 1" in info.value.message and "nothing was queued" in info.value.message
        with pytest.raises(BrokerError) as info:
            producer.send_many(unique_topic, [b"x"], partition=3)
        assert info.value.code is ErrorCode.UNKNOWN_PARTITION
        producer.send_many(unique_topic, [b"after"]).result(timeout=10)
    records = read_partitions(bootstrap, unique_topic, 1)[0]
    assert [value for _, _, value in records] == [b"after"]


async def test_a_retry_after_a_lost_acknowledgement_stores_nothing_twice(fake: FakeBroker) -> None:
    # The fake writes the first produce, then drops the connection: the idempotent producer
    # resends those batches with their sequence numbers and the broker answers, not stores.
    fake.drop_after_next_append = True
    values = [b"%d" % i for i in range(1000)]
    async with aio.Producer(fake.bootstrap, batch_bytes=2048, retry_backoff_ms=1) as producer:
        future = await producer.send_many("t", values, partition=0)
        offsets = [m.offset for m in await future]
    assert offsets == list(range(1000)) and fake.connections >= 2
    async with aio.Consumer(fake.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition("t", 0)])
        read: list[bytes | None] = []
        with trio.fail_after(10):
            while len(read) < 1000:
                read += [r.value for r in await consumer.poll(timeout_ms=500)]
        assert await consumer.end_offsets([TopicPartition("t", 0)]) == {
            TopicPartition("t", 0): 1000
        }
    assert read == values


async def test_a_full_buffer_raises_with_the_future_of_what_was_queued(fake: FakeBroker) -> None:
    fake.hold_produce = True
    options = {"linger_ms": 0, "buffer_memory_bytes": 2000, "max_block_ms": 100,
               "request_timeout_ms": 300, "retry_backoff_ms": 1}  # fmt: skip
    producer = aio.Producer(fake.bootstrap, **options)  # type: ignore[arg-type]
    await producer.start()
    try:
        with pytest.raises(BufferFullError, match="max_block_ms=100") as info:
            await producer.send_many("t", [b"x" * 100] * 100, partition=0)
        assert 0 < len(info.value.queued) < 100
    finally:
        fake.hold_produce = False
        await producer.aclose()

    def blocking() -> int:
        fake.hold_produce = True
        with Producer(fake.bootstrap, **options) as producer:
            try:
                with pytest.raises(BufferFullError) as info:
                    producer.send_many("t", [b"x" * 100] * 100, partition=0)
            finally:
                fake.hold_produce = False
            return len(info.value.queued)

    assert 0 < await trio.to_thread.run_sync(blocking) < 100


def test_a_big_record_after_a_half_full_batch_is_delivered_in_its_own_batch(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    """Default batch_bytes (512 KiB) and a record near max_record_bytes (1 MiB - 1 KiB) after it:
    joined to the open batch they would make a batch over the broker's max.message.bytes (1 MiB),
    refused whole; sealed before the big record, both batches are accepted."""
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic, 1)
    values = [b"a" * (500 * 1024), b"b" * (1000 * 1024), b"c" * 100]

    async def main() -> list[int]:
        async with aio.Producer(bootstrap, linger_ms=1000, adaptive_batching=False) as producer:
            sent = [await producer.send(unique_topic, value) for value in values]
            more = await producer.send_many(unique_topic, values)
            await producer.flush()
            return [(await f).offset for f in sent] + [m.offset for m in await more]

    assert trio.run(main) == list(range(6))
    records = read_partitions(bootstrap, unique_topic, 1)[0]
    assert [value for _, _, value in records] == values + values
