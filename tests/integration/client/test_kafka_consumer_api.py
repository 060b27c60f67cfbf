"""The consumer and producer API a Kafka user expects, against a real `broker serve`.

Goal: what a kafka-python user writes on day one works: subscribing before the topic exists,
patterns, topics and partitions created later, pause/resume, unsubscribe, commits with metadata,
(de)serializers and `bootstrap_servers=`, in the blocking and the trio-native client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from client import (
    AdminClient,
    Consumer,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    Producer,
    TopicPartition,
    aio,
)
from client.embedded import EmbeddedBroker
from client.pytest_plugin import run_broker
from client.serialization import SerializationError
from wire.config_error import ConfigError

# Short group timers, and a short metadata age where a test waits for a periodic refresh.
GROUP = {"session_timeout_ms": 3_000, "heartbeat_interval_ms": 300, "max_poll_interval_ms": 20_000}


@pytest.fixture(scope="module")
def session_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """One broker for the module whose groups accept short session timeouts and start their
    first rebalance at once (the defaults wait 3 s for more members, as Kafka's do)."""
    yield from run_broker(
        request,
        extra_args=[
            "--set",
            "group_min_session_timeout_ms=500",
            "--set",
            "group_initial_rebalance_delay_ms=0",
        ],
    )


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def poll_until(consumer: Consumer, count: int, timeout_s: float = 20.0) -> list[Any]:
    records: list[Any] = []
    wait_until(
        lambda: records.extend(consumer.poll(timeout_ms=200)) or len(records) >= count,
        f"{count} records (got {len(records)})",
        timeout_s,
    )
    return records


def produce(bootstrap: str, topic: str, values: list[bytes], partition: int | None = None) -> None:
    with Producer(bootstrap) as producer:
        for value in values:
            producer.send(topic, value, partition=partition)
        producer.flush()


def test_a_group_consumer_subscribed_before_its_topic_exists_gets_the_records(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    # The newcomer's first hour: the consumer starts first, the topic comes with the producer.
    with Consumer(
        bootstrap_servers=session_broker.bootstrap,
        group_id=unique_topic,
        auto_offset_reset="earliest",
        **GROUP,
    ) as consumer:
        consumer.subscribe([unique_topic])
        assert consumer.poll(timeout_ms=300) == []
        with AdminClient(session_broker.bootstrap) as admin:
            admin.create_topic(unique_topic, 2)
        produce(session_broker.bootstrap, unique_topic, [b"a", b"b", b"c", b"d"])
        records = poll_until(consumer, 4)
        assert sorted(r.value for r in records) == [b"a", b"b", b"c", b"d"]
        assert consumer.assignment() == {
            TopicPartition(unique_topic, 0),
            TopicPartition(unique_topic, 1),
        }


def test_a_plain_consumer_reads_topics_created_after_it_subscribed(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    # Without a group too, and one missing topic does not hold back the ones that exist.
    existing, later = f"{unique_topic}-now", f"{unique_topic}-later"
    with AdminClient(session_broker.bootstrap) as admin:
        admin.create_topic(existing, 1)
    produce(session_broker.bootstrap, existing, [b"now"])
    with Consumer(session_broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.subscribe([existing, later])
        assert [r.value for r in poll_until(consumer, 1)] == [b"now"]
        with AdminClient(session_broker.bootstrap) as admin:
            admin.create_topic(later, 1)
        produce(session_broker.bootstrap, later, [b"later"])
        assert [(r.topic, r.value) for r in poll_until(consumer, 1)] == [(later, b"later")]
        assert consumer.subscription() == {existing, later}


@pytest.mark.parametrize("grouped", [True, False], ids=["group", "no-group"])
def test_a_pattern_subscription_picks_up_new_matching_topics(
    session_broker: EmbeddedBroker, unique_topic: str, grouped: bool
) -> None:
    # kafka-python's subscribe(pattern="regex"); the pattern matches nothing at first.
    prefix = unique_topic.replace(".", "-")
    options: dict[str, Any] = {"group_id": prefix, **GROUP} if grouped else {}
    with Consumer(
        session_broker.bootstrap, auto_offset_reset="earliest", metadata_max_age_ms=500, **options
    ) as consumer:
        consumer.subscribe(pattern=rf"{prefix}-metrics-\d+")
        with AdminClient(session_broker.bootstrap) as admin:
            admin.create_topic(f"{prefix}-metrics-1", 1)
            admin.create_topic(f"{prefix}-other", 1)
        produce(session_broker.bootstrap, f"{prefix}-other", [b"no"])
        produce(session_broker.bootstrap, f"{prefix}-metrics-1", [b"one"])
        assert [r.value for r in poll_until(consumer, 1)] == [b"one"]
        # Once the pattern has matched, a further topic is found by the periodic refresh.
        with AdminClient(session_broker.bootstrap) as admin:
            admin.create_topic(f"{prefix}-metrics-2", 1)
        produce(session_broker.bootstrap, f"{prefix}-metrics-2", [b"two"])
        assert [r.value for r in poll_until(consumer, 1)] == [b"two"]
        assert consumer.subscription() == {f"{prefix}-metrics-1", f"{prefix}-metrics-2"}


@pytest.mark.parametrize("grouped", [True, False], ids=["group", "no-group"])
def test_partitions_added_to_a_subscribed_topic_are_read(
    session_broker: EmbeddedBroker, unique_topic: str, grouped: bool
) -> None:
    options: dict[str, Any] = {"group_id": unique_topic, **GROUP} if grouped else {}
    with AdminClient(session_broker.bootstrap) as admin:
        admin.create_topic(unique_topic, 1)
    with Consumer(
        session_broker.bootstrap, auto_offset_reset="earliest", metadata_max_age_ms=500, **options
    ) as consumer:
        consumer.subscribe([unique_topic])
        produce(session_broker.bootstrap, unique_topic, [b"p0"], partition=0)
        assert [r.value for r in poll_until(consumer, 1)] == [b"p0"]
        with AdminClient(session_broker.bootstrap) as admin:
            admin.create_partitions(unique_topic, 3)
        produce(session_broker.bootstrap, unique_topic, [b"p2"], partition=2)
        assert [(r.partition, r.value) for r in poll_until(consumer, 1)] == [(2, b"p2")]
        assert consumer.assignment() == {TopicPartition(unique_topic, p) for p in range(3)}


def test_pause_stops_a_partition_and_resume_continues_where_it_stopped(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    with AdminClient(session_broker.bootstrap) as admin:
        admin.create_topic(unique_topic, 2)
    produce(session_broker.bootstrap, unique_topic, [b"a0", b"a1"], partition=0)
    produce(session_broker.bootstrap, unique_topic, [b"b0", b"b1"], partition=1)
    p0, p1 = TopicPartition(unique_topic, 0), TopicPartition(unique_topic, 1)
    with Consumer(session_broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([p0, p1])
        consumer.pause(p0)
        assert consumer.paused() == {p0}
        records = poll_until(consumer, 2)
        assert {r.value for r in records} == {b"b0", b"b1"}
        produce(session_broker.bootstrap, unique_topic, [b"b2"], partition=1)
        assert [r.value for r in poll_until(consumer, 1)] == [b"b2"]  # p0 still paused
        assert consumer.position(p0) == 0
        consumer.resume(p0)
        assert consumer.paused() == set()
        assert [r.value for r in poll_until(consumer, 2)] == [b"a0", b"a1"]
        with pytest.raises(Exception, match="not assigned"):
            consumer.pause(TopicPartition(unique_topic, 7))


def test_commit_with_metadata_and_committed_read_it_back(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    with AdminClient(session_broker.bootstrap) as admin:
        admin.create_topic(unique_topic, 2)
    produce(session_broker.bootstrap, unique_topic, [b"x", b"y"], partition=0)
    p0, p1 = TopicPartition(unique_topic, 0), TopicPartition(unique_topic, 1)
    with Consumer(
        session_broker.bootstrap,
        group_id=unique_topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **GROUP,
    ) as consumer:
        consumer.subscribe([unique_topic])
        poll_until(consumer, 2)
        assert consumer.committed(p0) is None
        consumer.commit({p0: OffsetAndMetadata(2, "checkpoint-7")})
        assert consumer.committed(p0) == OffsetAndMetadata(2, "checkpoint-7")
        assert consumer.committed([p0, p1]) == {p0: OffsetAndMetadata(2, "checkpoint-7"), p1: None}
        consumer.commit({p0: 1})  # a plain offset still works; its metadata is empty
        assert consumer.committed((unique_topic, 0)) == OffsetAndMetadata(1, "")
    with pytest.raises(ValueError, match="offset must be an int >= 0"):
        OffsetAndMetadata(-1)


def test_unsubscribe_gives_the_partitions_up_and_leaves_the_group(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    with AdminClient(session_broker.bootstrap) as admin:
        admin.create_topic(unique_topic, 1)
    produce(session_broker.bootstrap, unique_topic, [b"one"])
    with Consumer(
        session_broker.bootstrap, group_id=unique_topic, auto_offset_reset="earliest", **GROUP
    ) as consumer:
        consumer.subscribe([unique_topic])
        poll_until(consumer, 1)
        consumer.poll(timeout_ms=0)  # entering poll marks "one" as processed (auto-commit)
        consumer.unsubscribe()
        assert consumer.assignment() == set()
        assert consumer.subscription() == set()
        with AdminClient(session_broker.bootstrap) as admin:
            wait_until(
                lambda: admin.describe_group(unique_topic).state == "Empty", "the group to empty"
            )
        # The revocation committed what poll() had returned.
        assert consumer.committed(TopicPartition(unique_topic, 0)) == OffsetAndMetadata(1)
        # And a new subscription joins again.
        consumer.subscribe([unique_topic])
        produce(session_broker.bootstrap, unique_topic, [b"two"])
        assert [r.value for r in poll_until(consumer, 1)] == [b"two"]


def test_serializers_and_deserializers_as_in_kafka_python(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    with AdminClient(bootstrap_servers=[session_broker.bootstrap]) as admin:
        admin.create_topic(unique_topic, 1)
    with Producer(
        bootstrap_servers=[session_broker.bootstrap],
        key_serializer=str.encode,
        value_serializer=lambda v: json.dumps(v).encode(),
    ) as producer:
        producer.send(unique_topic, {"n": 1}, key="k1")
        producer.send(unique_topic, None, key="tombstone")  # None is never serialized
        producer.flush()
    with Producer(session_broker.bootstrap) as raw:
        raw.send(unique_topic, b"not json").result(10)
    tp = TopicPartition(unique_topic, 0)
    with Consumer(
        bootstrap_servers=session_broker.bootstrap,
        auto_offset_reset="earliest",
        key_deserializer=bytes.decode,
        value_deserializer=json.loads,
    ) as consumer:
        consumer.assign([tp])
        records = poll_until(consumer, 2)
        assert [(r.key, r.value) for r in records] == [("k1", {"n": 1}), ("tombstone", None)]
        # A record the deserializer refuses: poll raises, naming it, and stays before it.
        with pytest.raises(SerializationError, match=rf"{unique_topic}/0 offset 2"):
            wait_until(lambda: bool(consumer.poll(timeout_ms=200)), "the bad record")
        with pytest.raises(SerializationError):
            consumer.poll(timeout_ms=200)
        assert consumer.position(tp) == 2
        consumer.seek(tp, 3)
        assert consumer.poll(timeout_ms=200) == []


def test_bootstrap_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        Consumer("127.0.0.1:1", bootstrap_servers="127.0.0.1:2")


def test_offset_lookups(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    with AdminClient(session_broker.bootstrap) as admin:
        admin.create_topic(unique_topic, 1)
    tp = TopicPartition(unique_topic, 0)
    with Producer(session_broker.bootstrap) as producer:
        for i, ts in enumerate((1_000, 2_000, 3_000)):
            producer.send(unique_topic, b"%d" % i, timestamp_ms=ts)
        producer.flush()
    with Consumer(session_broker.bootstrap, auto_offset_reset="latest") as consumer:
        consumer.assign([tp])
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: 3}
        assert consumer.offsets_for_times({tp: 1_500}) == {tp: OffsetAndTimestamp(1, 2_000)}
        assert consumer.position(tp) == 3


async def test_the_trio_consumer_has_the_same_api(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    async with aio.AdminClient(bootstrap_servers=session_broker.bootstrap) as admin:
        await admin.create_topic(unique_topic, 1)
    tp = TopicPartition(unique_topic, 0)
    async with aio.Producer(session_broker.bootstrap, value_serializer=str.encode) as producer:
        for text in ("a", "b"):
            await producer.send(unique_topic, text)
        await producer.flush()
    async with aio.Consumer(
        bootstrap_servers=session_broker.bootstrap,
        group_id=unique_topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        value_deserializer=bytes.decode,
        **GROUP,
    ) as consumer:
        consumer.subscribe(pattern=unique_topic.replace(".", r"\."))
        records: list[Any] = []
        with trio.fail_after(20):
            while len(records) < 2:
                records += await consumer.poll(timeout_ms=200)
        assert [r.value for r in records] == ["a", "b"]
        consumer.pause(tp)
        assert consumer.paused() == {tp}
        consumer.resume(tp)
        await consumer.commit({tp: OffsetAndMetadata(2, "done")})
        assert await consumer.committed(tp) == OffsetAndMetadata(2, "done")
        assert await consumer.position(tp) == 2
        consumer.unsubscribe()
        assert consumer.assignment() == set()
