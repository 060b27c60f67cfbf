"""Topics created on first use (`auto_create_topics`), on one broker and on three: the SDK
producer asks for auto-creation in its metadata requests, as Kafka's does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client import AdminClient, Consumer, Producer, TopicPartition
from client.embedded import EmbeddedBroker
from client.embedded_cluster import EmbeddedCluster
from client.pytest_plugin import run_broker

AUTO_CREATE = ("--set", "auto_create_topics=true", "--set", "default_partitions=2")


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    args = (*AUTO_CREATE, "--set", "default_replication_factor=3")
    with EmbeddedCluster(3, extra_args=args) as running:
        yield running


@pytest.fixture
def auto_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    yield from run_broker(request, extra_args=list(AUTO_CREATE))


def _produce_and_read(bootstrap: str, topic: str) -> list[bytes]:
    with Producer(bootstrap, acks="all") as producer:
        metadata = producer.send(topic, b"first", partition=1).result()
    assert metadata.partition == 1
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, 1)])
        values: list[bytes] = []
        for _ in range(50):
            values += [record.value or b"" for record in consumer.poll(timeout_ms=100)]
            if values:
                break
    return values


def test_a_producer_creates_its_topic_on_a_single_broker(auto_broker: EmbeddedBroker) -> None:
    assert _produce_and_read(auto_broker.bootstrap, "fresh") == [b"first"]
    with AdminClient(auto_broker.bootstrap) as admin:
        assert admin.describe_topic("fresh").partition_count == 2


def test_a_producer_creates_its_topic_in_a_cluster(cluster: EmbeddedCluster) -> None:
    # The broker answers LEADER_NOT_AVAILABLE while the controller creates the topic; the
    # producer waits for it, then sends to the new partition's leader.
    assert _produce_and_read(cluster.bootstrap, "fresh") == [b"first"]
    with AdminClient(cluster.bootstrap) as admin:
        description = admin.describe_topic("fresh")
    assert description.partition_count == 2
    assert all(len(p.replicas) == 3 for p in description.partitions)
