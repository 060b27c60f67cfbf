"""Goal: every command the controller refuses is refused BEFORE it is proposed, with the right
error code and a message that says what to do; accepted commands yield exactly the records
needed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broker.config import LogConfig
from broker.controller.records import (
    BrokerRegistered,
    BrokerState,
    BrokerStateChanged,
    ConfigSet,
    PartitionAssignment,
    PartitionLeaderChanged,
    TopicCreated,
    TopicDeleted,
)
from broker.controller.state import ControllerConfig, ControllerStateMachine
from tests.unit.controller.harness import MetadataLog, topic_id
from wire.error_codes import BrokerError, ErrorCode


@pytest.fixture
def cluster() -> MetadataLog:
    log = MetadataLog()
    log.add_brokers(1, 2)
    return log


def refused(code: ErrorCode, call: Callable[[], object]) -> str:
    """The message of the BrokerError that `call()` raises, after checking its code."""
    with pytest.raises(BrokerError) as info:
        call()
    assert info.value.code is code, info.value
    return info.value.message


# --- create topic --------------------------------------------------------------------------------


def test_create_topic_yields_the_topic_then_one_assignment_per_partition(
    cluster: MetadataLog,
) -> None:
    records = cluster.machine.prepare_create_topic(
        "orders", 3, 2, {"retention_ms": "60000"}, topic_id=topic_id(7)
    )
    assert records[0] == TopicCreated("orders", topic_id(7), 3, 2, (("retention.ms", 60000),))
    assert [type(record) for record in records[1:]] == [PartitionAssignment] * 3
    assert [record.partition for record in records[1:]] == [0, 1, 2]
    assert cluster.machine.topic("orders") is None, "prepare must not change the state"


def test_more_replicas_than_live_brokers(cluster: MetadataLog) -> None:
    message = refused(
        ErrorCode.INVALID_REPLICATION_FACTOR,
        lambda: cluster.machine.prepare_create_topic("t", 1, 3, topic_id=topic_id(1)),
    )
    assert message == (
        "replication factor 3 is larger than the 2 live brokers (1, 2); start more brokers or "
        "lower --replication-factor"
    )


def test_fenced_brokers_are_not_live(cluster: MetadataLog) -> None:
    cluster.set_state(2, BrokerState.FENCED)
    message = refused(
        ErrorCode.INVALID_REPLICATION_FACTOR,
        lambda: cluster.machine.prepare_create_topic("t", 1, 2, topic_id=topic_id(1)),
    )
    assert "larger than the 1 live broker (1)" in message
    # The caller's own view of liveness wins when it passes one.
    records = cluster.machine.prepare_create_topic("t", 1, 2, None, [1, 2], topic_id=topic_id(1))
    assert records[1].replicas in ((1, 2), (2, 1))


def test_no_live_brokers_at_all() -> None:
    machine = ControllerStateMachine()
    message = refused(
        ErrorCode.INVALID_REPLICATION_FACTOR,
        lambda: machine.prepare_create_topic("t", 1, 1, topic_id=topic_id(1)),
    )
    assert "larger than the 0 live brokers; start more brokers" in message


@pytest.mark.parametrize("factor", [0, -1, True, "2"])
def test_replication_factor_must_be_a_positive_integer(cluster: MetadataLog, factor) -> None:
    message = refused(
        ErrorCode.INVALID_REPLICATION_FACTOR,
        lambda: cluster.machine.prepare_create_topic("t", 1, factor, topic_id=topic_id(1)),
    )
    assert "replication factor must be an integer from 1" in message


@pytest.mark.parametrize("partitions", [0, -3, 1001, 2.0, None])
def test_partition_count_must_be_in_range(cluster: MetadataLog, partitions) -> None:
    message = refused(
        ErrorCode.INVALID_PARTITIONS,
        lambda: cluster.machine.prepare_create_topic("t", partitions, 1, topic_id=topic_id(1)),
    )
    assert "partition count must be an integer from 1 to 1000" in message


def test_cluster_partition_and_topic_limits() -> None:
    log = MetadataLog(
        ControllerStateMachine(
            ControllerConfig(partition_count_max=10, topic_count_max=2), validate=True
        )
    )
    log.add_brokers(1)
    log.create_topic("a", 8, 1, number=1)
    message = refused(
        ErrorCode.POLICY_VIOLATION,
        lambda: log.machine.prepare_create_topic("b", 3, 1, topic_id=topic_id(2)),
    )
    assert "bring the cluster to 11, above its limit of 10 (partition_count_max)" in message
    log.create_topic("b", 2, 1, number=2)
    message = refused(
        ErrorCode.POLICY_VIOLATION,
        lambda: log.machine.prepare_create_topic("c", 1, 1, topic_id=topic_id(3)),
    )
    assert "already has 2 topics" in message


@pytest.mark.parametrize("name", ["", ".", "..", "a b", "a/b", "ä", "x" * 250, "abc\n", 7])
def test_invalid_topic_names(cluster: MetadataLog, name) -> None:
    message = refused(
        ErrorCode.INVALID_TOPIC,
        lambda: cluster.machine.prepare_create_topic(name, 1, 1, topic_id=topic_id(1)),
    )
    assert "letters, digits" in message


def test_existing_topic(cluster: MetadataLog) -> None:
    cluster.create_topic("orders", 2, 1)
    message = refused(
        ErrorCode.TOPIC_ALREADY_EXISTS,
        lambda: cluster.machine.prepare_create_topic("orders", 1, 1, topic_id=topic_id(2)),
    )
    assert message == (
        "topic 'orders' already exists with 2 partition(s); pick another name or delete it first"
    )


def test_names_differing_only_in_dot_and_underscore_collide(cluster: MetadataLog) -> None:
    cluster.create_topic("web.clicks", 1, 1)
    message = refused(
        ErrorCode.INVALID_TOPIC,
        lambda: cluster.machine.prepare_create_topic("web_clicks", 1, 1, topic_id=topic_id(2)),
    )
    assert "collides with existing topic 'web.clicks'" in message


def test_topic_ids_must_be_fresh_and_well_formed(cluster: MetadataLog) -> None:
    cluster.create_topic("a", 1, 1, number=5)
    message = refused(
        ErrorCode.INVALID_REQUEST,
        lambda: cluster.machine.prepare_create_topic("b", 1, 1, topic_id=topic_id(5)),
    )
    assert "already used by topic 'a'; generate a fresh one" in message
    refused(
        ErrorCode.INVALID_REQUEST,
        lambda: cluster.machine.prepare_create_topic("b", 1, 1, topic_id="not-hex"),
    )


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        ({"retention.ms": -5}, "invalid config 'retention.ms': must be at least -1, got -5"),
        ({"retention_ms": "soon"}, "invalid config 'retention_ms': expected an integer"),
        ({"bogus.key": 1}, "invalid config 'bogus.key': unknown key; known keys:"),
        ({"flush.policy": "sometimes"}, "invalid config 'flush.policy': expected one of"),
        ({"segment.bytes": 1}, "invalid config 'segment.bytes': must be between"),
        ({"max.message.bytes": 2**30 + 1}, "invalid config 'max.message.bytes': must be between"),
        ({"retention.ms": None}, "invalid config 'retention.ms': expected a string, number or"),
        ({"retention.ms": 1.5}, "invalid config 'retention.ms': expected an integer, got 1.5"),
        ({"retention.ms": 1, "retention_ms": 2}, "the same setting as"),
    ],
)
def test_invalid_configs_name_the_key(cluster: MetadataLog, configs, expected: str) -> None:
    message = refused(
        ErrorCode.INVALID_CONFIG,
        lambda: cluster.machine.prepare_create_topic("t", 1, 1, configs, topic_id=topic_id(1)),
    )
    assert expected in message


def test_configs_are_validated_against_the_brokers_log_defaults() -> None:
    machine = ControllerStateMachine(log_defaults=LogConfig(segment_bytes=4096))
    log = MetadataLog(machine)
    log.add_brokers(1)
    message = refused(
        ErrorCode.INVALID_CONFIG,
        lambda: machine.prepare_create_topic(
            "t", 1, 1, {"max.message.bytes": 8192}, topic_id=topic_id(1)
        ),
    )
    assert "'max.message.bytes': must be between 64 and 4096" in message


def test_configs_are_stored_canonically(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 1, **{"retention_ms": "1_000", "flush-policy": "NEVER"})
    topic = cluster.machine.topic("t")
    assert topic is not None
    assert topic.configs == (("flush.policy", "never"), ("retention.ms", 1000))


# --- delete topic, configs -----------------------------------------------------------------------


def test_delete_topic(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 1, number=3)
    assert cluster.machine.prepare_delete_topic("t") == [TopicDeleted("t", topic_id(3))]
    message = refused(ErrorCode.UNKNOWN_TOPIC, lambda: cluster.machine.prepare_delete_topic("nope"))
    assert message == "topic 'nope' does not exist"


def test_set_and_remove_a_config(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 1, number=3)
    machine = cluster.machine
    assert machine.prepare_alter_configs("t", {"retention_ms": "5000"}) == [
        ConfigSet("t", topic_id(3), "retention.ms", 5000)
    ]
    cluster.commit(machine.prepare_alter_configs("t", {"retention.ms": 5000}))
    assert machine.prepare_alter_configs("t", {"retention.ms": 5000}) == []  # no change
    assert machine.prepare_alter_configs("t", {}, ["retention.ms"]) == [
        ConfigSet("t", topic_id(3), "retention.ms", None)
    ]
    assert machine.prepare_alter_configs("t", {}, ["segment.ms"]) == []  # not set: nothing to do


def test_set_config_errors(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 1, **{"segment.bytes": 1 << 20})
    machine = cluster.machine
    refused(
        ErrorCode.UNKNOWN_TOPIC, lambda: machine.prepare_alter_configs("nope", {"retention.ms": 1})
    )
    message = refused(
        ErrorCode.INVALID_CONFIG, lambda: machine.prepare_alter_configs("t", {"colour": "red"})
    )
    assert message.startswith("invalid config 'colour': unknown key")
    message = refused(
        ErrorCode.INVALID_CONFIG, lambda: machine.prepare_alter_configs("t", {"retention_ms": -9})
    )
    assert message == "invalid config 'retention_ms': must be at least -1, got -9"
    # Validated together with the topic's other overrides: larger than its segment.bytes.
    message = refused(
        ErrorCode.INVALID_CONFIG,
        lambda: machine.prepare_alter_configs("t", {"max.message.bytes": 2 << 20}),
    )
    assert "'max.message.bytes': must be between 64 and 1048576" in message


def test_alter_configs_is_validated_as_a_whole(cluster: MetadataLog) -> None:
    # A float override (min.cleanable.dirty.ratio) stays valid when another key changes later;
    # several keys change in one call, and one bad value refuses them all.
    cluster.create_topic("t", 1, 1, number=3, **{"min.cleanable.dirty.ratio": "0.25"})
    machine = cluster.machine
    records = machine.prepare_alter_configs(
        "t", {"cleanup.policy": "compact", "retention_ms": 9}, ["min.cleanable.dirty.ratio"]
    )
    assert records == [
        ConfigSet("t", topic_id(3), "cleanup.policy", "compact"),
        ConfigSet("t", topic_id(3), "min.cleanable.dirty.ratio", None),
        ConfigSet("t", topic_id(3), "retention.ms", 9),
    ]
    message = refused(
        ErrorCode.INVALID_CONFIG,
        lambda: machine.prepare_alter_configs("t", {"cleanup.policy": "compact", "segment.ms": 0}),
    )
    assert message.startswith("invalid config 'segment.ms'")
    cluster.commit(machine.prepare_alter_configs("t", {"cleanup.policy": "compact"}))
    topic = machine.topic("t")
    assert topic is not None
    assert dict(topic.configs) == {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": 0.25}


# --- brokers -------------------------------------------------------------------------------------


def test_register_broker_once_and_idempotently() -> None:
    log = MetadataLog()
    machine = log.machine
    assert machine.prepare_register_broker(1, "h", 9092, 7) == [BrokerRegistered(1, "h", 9092, 7)]
    log.commit(machine.prepare_register_broker(1, "h", 9092, 7))
    assert machine.prepare_register_broker(1, "h", 9092, 7) == []  # a retried registration
    assert machine.prepare_register_broker(1, "h", 9092, 8) == [BrokerRegistered(1, "h", 9092, 8)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, "h", 1, 1), "node id must be an integer from 1 to"),
        ((1, "", 1, 1), "broker host '' is not a host name"),
        ((1, "h", 0, 1), "broker port must be an integer from 1 to 65535"),
        ((1, "h", 1, -1), "broker incarnation must be an integer from 0"),
    ],
)
def test_register_broker_errors(args, expected: str) -> None:
    message = refused(
        ErrorCode.INVALID_REQUEST, lambda: ControllerStateMachine().prepare_register_broker(*args)
    )
    assert expected in message


def test_two_brokers_cannot_share_an_address(cluster: MetadataLog) -> None:
    message = refused(
        ErrorCode.INVALID_REQUEST,
        lambda: cluster.machine.prepare_register_broker(3, "127.0.0.1", 9001, 1),
    )
    assert message == (
        "broker 1 already serves 127.0.0.1:9001; give broker 3 its own --listen address "
        "(or stop broker 1 first)"
    )
    cluster.set_state(1, BrokerState.FENCED)  # a fenced broker's address may be taken over
    assert cluster.machine.prepare_register_broker(3, "127.0.0.1", 9001, 1)


def test_broker_state_changes(cluster: MetadataLog) -> None:
    machine = cluster.machine
    info = machine.broker(1)
    assert info is not None and info.state is BrokerState.ACTIVE
    epoch = info.broker_epoch
    assert machine.prepare_set_broker_state(1, BrokerState.ACTIVE, broker_epoch=epoch) == []
    assert machine.prepare_set_broker_state(1, BrokerState.FENCED, broker_epoch=epoch) == [
        BrokerStateChanged(1, epoch, BrokerState.FENCED)
    ]
    message = refused(
        ErrorCode.INVALID_REQUEST,
        lambda: machine.prepare_set_broker_state(1, BrokerState.FENCED, broker_epoch=epoch + 100),
    )
    assert f"epoch {epoch + 100} is stale: its current registration has epoch {epoch}" in message
    message = refused(
        ErrorCode.INVALID_REQUEST,
        lambda: machine.prepare_set_broker_state(9, BrokerState.FENCED, broker_epoch=1),
    )
    assert message == "broker 9 is not registered; it must register before its state changes"


# --- leader reports ------------------------------------------------------------------------------


def test_leader_reports(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 2, number=4)
    machine = cluster.machine
    records = machine.prepare_leader_change("t", 0, 2, 5, [2, 1])
    assert records == [PartitionLeaderChanged("t", topic_id(4), 0, 2, 5, (1, 2))]
    cluster.commit(records)
    assert machine.prepare_leader_change("t", 0, 2, 5, [1, 2]) == []  # nothing new
    assert machine.prepare_leader_change("t", 0, 2, 5, [2])  # the ISR shrank
    assert machine.prepare_leader_change("t", 0, 1, 6, [1])  # a new term, a new leader
    message = refused(
        ErrorCode.NOT_LEADER, lambda: machine.prepare_leader_change("t", 0, 1, 4, [1])
    )
    assert "leader epoch 4 is older than the recorded epoch 5 (leader 2)" in message
    message = refused(
        ErrorCode.INVALID_REQUEST, lambda: machine.prepare_leader_change("t", 0, 1, 5, [1])
    )
    assert "broker 1 cannot lead epoch 5, which broker 2 already leads" in message
    message = refused(
        ErrorCode.INVALID_REQUEST, lambda: machine.prepare_leader_change("t", 0, 3, 6, [3])
    )
    assert "brokers [3] are not among its replicas" in message
    message = refused(
        ErrorCode.INVALID_REQUEST, lambda: machine.prepare_leader_change("t", 0, 1, 6, [2])
    )
    assert "leader 1 is not in the in-sync replicas" in message
    message = refused(
        ErrorCode.INVALID_REQUEST, lambda: machine.prepare_leader_change("t", 0, 1, 6, [1, "2"])
    )
    assert "in-sync replicas must be node ids" in message
    message = refused(
        ErrorCode.INVALID_REQUEST, lambda: machine.prepare_leader_change("t", 0, 1, 6, [1, 1])
    )
    assert "names a node twice" in message
    refused(ErrorCode.UNKNOWN_TOPIC, lambda: machine.prepare_leader_change("x", 0, 1, 6, [1]))
    message = refused(
        ErrorCode.UNKNOWN_PARTITION, lambda: machine.prepare_leader_change("t", 1, 1, 6, [1])
    )
    assert message == "topic 't' has partitions 0 to 0, not 1"


def test_a_report_before_the_assignment_is_retriable(cluster: MetadataLog) -> None:
    """Between TopicCreated and its assignments (only if they were split across entries)."""
    records = cluster.machine.prepare_create_topic("t", 1, 1, topic_id=topic_id(6))
    cluster.commit(records[:1])
    assert cluster.machine.topic_by_id(topic_id(6)) is cluster.machine.topic("t")
    message = refused(
        ErrorCode.LEADER_NOT_AVAILABLE,
        lambda: cluster.machine.prepare_leader_change("t", 0, 1, 1, [1]),
    )
    assert message == "t-0 has no replicas assigned yet; retry"
    assert ErrorCode.LEADER_NOT_AVAILABLE.retriable
