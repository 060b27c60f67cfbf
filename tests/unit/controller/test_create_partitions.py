"""Goal: CreatePartitions in the controller core. A topic grows to a new total, never shrinks; the
new partitions are placed like a new topic's and survive replay and snapshots; a record for a
deleted topic or a count already reached changes nothing."""

from __future__ import annotations

import pytest

from broker.controller.records import BrokerState, PartitionAssignment, PartitionsCreated
from broker.controller.state import ControllerStateMachine
from tests.unit.controller.harness import MetadataLog, topic_id
from wire.error_codes import BrokerError, ErrorCode


@pytest.fixture
def cluster() -> MetadataLog:
    log = MetadataLog()
    log.add_brokers(1, 2, 3)
    log.create_topic("orders", 2, 2)
    return log


def test_growing_yields_the_new_count_then_one_assignment_per_new_partition(
    cluster: MetadataLog,
) -> None:
    records = cluster.machine.prepare_create_partitions("orders", 5)
    assert records[0] == PartitionsCreated("orders", topic_id(1), 5)
    assert [type(record) for record in records[1:]] == [PartitionAssignment] * 3
    assert [record.partition for record in records[1:]] == [2, 3, 4]
    assert all(len(record.replicas) == 2 for record in records[1:])
    topic = cluster.machine.topic("orders")
    assert topic is not None and topic.partition_count == 2, "prepare must not change the state"
    cluster.commit(records)
    grown = cluster.machine.topic("orders")
    assert grown is not None and grown.partition_count == 5
    assert [len(p.replicas) for p in grown.partitions] == [2] * 5
    assert cluster.replay() == cluster.machine
    restored = ControllerStateMachine.from_bytes(cluster.machine.to_bytes())
    assert restored.topic("orders") == grown


@pytest.mark.parametrize("count", [1, 2])
def test_a_count_that_does_not_grow_is_refused(cluster: MetadataLog, count: int) -> None:
    with pytest.raises(BrokerError) as info:
        cluster.machine.prepare_create_partitions("orders", count)
    assert info.value.code is ErrorCode.INVALID_PARTITIONS
    assert "partitions can be added, never removed" in info.value.message


def test_unknown_topic_and_too_few_brokers_are_refused(cluster: MetadataLog) -> None:
    with pytest.raises(BrokerError) as info:
        cluster.machine.prepare_create_partitions("missing", 3)
    assert info.value.code is ErrorCode.UNKNOWN_TOPIC
    cluster.create_topic("wide", 1, 3, number=2)
    cluster.set_state(3, BrokerState.FENCED)
    with pytest.raises(BrokerError) as info:
        cluster.machine.prepare_create_partitions("wide", 2)
    assert info.value.code is ErrorCode.INVALID_REPLICATION_FACTOR


def test_a_stale_record_changes_nothing(cluster: MetadataLog) -> None:
    records = cluster.machine.prepare_create_partitions("orders", 3)
    cluster.commit(records)
    before = cluster.machine.topic("orders")
    cluster.commit([PartitionsCreated("orders", topic_id(1), 3)])  # a racing duplicate
    cluster.commit([PartitionsCreated("orders", topic_id(9), 7)])  # another incarnation
    assert cluster.machine.topic("orders") == before
