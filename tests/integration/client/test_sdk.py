"""The SDK against a real `broker serve`: round trips, positions, seeks, errors, restarts."""

from __future__ import annotations

import time

import pytest
import trio

from client import AdminClient, Consumer, OffsetAndTimestamp, Producer, TopicPartition, aio
from client.embedded import EmbeddedBroker
from client.errors import BrokerUnavailableError
from client.partitioner import partition_for_key
from wire.error_codes import BrokerError, ErrorCode

# Bound on how long a test waits for records it knows were acknowledged.
READ_DEADLINE_S = 20.0


def create(bootstrap: str, topic: str, partitions: int, **config: object) -> None:
    with AdminClient(bootstrap) as admin:
        admin.create_topic(topic, partitions, config=config or None)


def read_n(consumer: Consumer, count: int) -> list:
    records: list = []
    deadline = time.monotonic() + READ_DEADLINE_S
    while len(records) < count:
        assert time.monotonic() < deadline, f"only {len(records)} of {count} records arrived"
        records += consumer.poll(timeout_ms=500)
    return records


def test_produce_consume_round_trip(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic, 3)
    with Producer(bootstrap, linger_ms=2) as producer:
        futures = [
            producer.send(unique_topic, b"v%d" % i, key=b"k%d" % (i % 7), headers={"i": b"%d" % i})
            for i in range(3000)
        ]
        producer.flush()
        metadata = [f.result(5) for f in futures]
    for i, md in enumerate(metadata):
        assert md.partition == partition_for_key(b"k%d" % (i % 7), 3)
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.subscribe([unique_topic])
        records = read_n(consumer, 3000)
    assert sorted(r.value for r in records) == sorted(b"v%d" % i for i in range(3000))
    by_partition: dict[int, list[int]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(int(r.value[1:]))
        assert r.headers == (("i", r.value[1:]),)
    for values in by_partition.values():
        assert values == sorted(values)  # per-partition order is send order
    assert {(r.partition, r.offset) for r in records} == {(m.partition, m.offset) for m in metadata}


@pytest.mark.parametrize("compression", ["gzip", "zstd", "lz4"])
def test_compression_round_trip(
    session_broker: EmbeddedBroker, unique_topic: str, compression: str
) -> None:
    create(session_broker.bootstrap, unique_topic, 1)
    with Producer(session_broker.bootstrap, compression=compression) as producer:
        for i in range(500):
            producer.send(unique_topic, b"payload-%d" % i * 10)
    with Consumer(session_broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(unique_topic, 0)])
        records = read_n(consumer, 500)
    assert [r.value for r in records] == [b"payload-%d" % i * 10 for i in range(500)]


def test_seek_position_and_iteration(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    create(session_broker.bootstrap, unique_topic, 1)
    tp = TopicPartition(unique_topic, 0)
    # acks="all": the high watermark (what "latest" means) covers only durable records.
    with Producer(session_broker.bootstrap, acks="all") as producer:
        for i in range(10):
            producer.send(unique_topic, b"%d" % i, timestamp_ms=1_000_000 + i * 1000)
        producer.flush()
    with Consumer(session_broker.bootstrap, auto_offset_reset="latest") as consumer:
        consumer.assign([tp])
        assert consumer.position(tp) == 10
        consumer.seek_to_beginning()
        assert consumer.position(tp) == 0
        consumer.seek(tp, 7)
        taken = []
        for record in consumer:
            taken.append(record.offset)
            if len(taken) == 3:
                break
        assert taken == [7, 8, 9]
        assert consumer.position(tp) == 10
        assert consumer.end_offsets([tp]) == {tp: 10}
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        found = consumer.offsets_for_times({tp: 1_004_500})
        # Kafka's answer: the record's own offset and timestamp (at or after the time asked).
        assert found == {tp: OffsetAndTimestamp(5, 1_005_000)}
        assert consumer.offsets_for_times({tp: 9_999_999_999}) == {tp: None}


def test_trio_client_round_trip(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    async def main() -> list[bytes]:
        async with aio.AdminClient(session_broker.bootstrap) as admin:
            await admin.create_topic(unique_topic, 2)
        async with aio.Producer(session_broker.bootstrap) as producer:
            last = None
            for i in range(200):
                last = await producer.send(unique_topic, b"%d" % i, partition=i % 2)
            assert last is not None
            assert (await last).offset == 99
        async with aio.Consumer(session_broker.bootstrap, auto_offset_reset="earliest") as c:
            c.subscribe([unique_topic])
            values: list[bytes] = []
            with trio.fail_after(READ_DEADLINE_S):
                async for record in c:
                    values.append(record.value)
                    if len(values) == 200:
                        break
            return values

    values = trio.run(main)
    assert sorted(values) == sorted(b"%d" % i for i in range(200))


def test_restart_reads_everything_back(broker: EmbeddedBroker) -> None:
    create(broker.bootstrap, "durable", 2)
    with Producer(broker.bootstrap, acks="all") as producer:
        for i in range(1000):
            producer.send("durable", b"%d" % i, partition=i % 2)
    broker.restart()
    with Consumer(broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.subscribe(["durable"])
        records = read_n(consumer, 1000)
    assert sorted(int(r.value) for r in records) == list(range(1000))


def test_producer_survives_a_broker_restart(broker: EmbeddedBroker) -> None:
    create(broker.bootstrap, "t", 1)
    with Producer(broker.bootstrap, retry_backoff_ms=50, retries=50) as producer:
        producer.send("t", b"before").result(10)
        broker.restart()
        assert producer.send("t", b"after").result(30).offset == 1


def test_connection_refused_says_what_to_do() -> None:
    with EmbeddedBroker() as stopped:
        address = stopped.bootstrap
    with pytest.raises(BrokerUnavailableError, match=r"is 'broker serve' running\?") as info:
        Producer(address)
    assert f"cannot reach broker at {address}" in str(info.value)


def test_server_errors_carry_their_code(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    bootstrap = session_broker.bootstrap
    with AdminClient(bootstrap) as admin:
        admin.create_topic(unique_topic, 1)
        cases = [
            (lambda: admin.create_topic(unique_topic, 1), ErrorCode.TOPIC_ALREADY_EXISTS),
            (lambda: admin.describe_topic("no-such-topic"), ErrorCode.UNKNOWN_TOPIC),
            (lambda: admin.create_topic("bad name!", 1), ErrorCode.INVALID_TOPIC),
            (lambda: admin.create_topic(unique_topic + "x", 0), ErrorCode.INVALID_PARTITIONS),
            (
                lambda: admin.create_topic(unique_topic + "y", 1, config={"retention.ms": "x"}),
                ErrorCode.INVALID_CONFIG,
            ),
        ]
        for call, code in cases:
            with pytest.raises(BrokerError) as info:
                call()
            assert info.value.code is code, info.value
            assert info.value.message
    with Producer(bootstrap) as producer:
        with pytest.raises(BrokerError) as info:
            producer.send("no-such-topic", b"x")
        assert info.value.code is ErrorCode.UNKNOWN_TOPIC
        with pytest.raises(BrokerError) as info:
            producer.send(unique_topic, b"x", partition=5)
        assert info.value.code is ErrorCode.UNKNOWN_PARTITION


def test_delete_and_list_topics(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    with AdminClient(session_broker.bootstrap) as admin:
        admin.create_topic(unique_topic, 2, config={"retention.ms": 60_000})
        assert unique_topic in admin.list_topics()
        description = admin.describe_topic(unique_topic)
        assert description.partition_count == 2
        assert description.configs["retention.ms"] == 60_000
        admin.delete_topic(unique_topic)
        assert unique_topic not in admin.list_topics()


def test_offset_out_of_range_resets(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    create(session_broker.bootstrap, unique_topic, 1)
    tp = TopicPartition(unique_topic, 0)
    with Producer(session_broker.bootstrap) as producer:
        for i in range(3):
            producer.send(unique_topic, b"%d" % i)
    with Consumer(session_broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([tp])
        consumer.seek(tp, 1000)  # beyond the end: the broker says OFFSET_OUT_OF_RANGE
        assert [r.offset for r in read_n(consumer, 3)] == [0, 1, 2]
