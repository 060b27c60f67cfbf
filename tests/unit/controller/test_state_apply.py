"""Goal: apply() is deterministic and total: records that lost a race (two creates of one name, a
report for a deleted topic, a fence for a previous incarnation) are skipped identically on every
replica, and snapshots reproduce the state exactly, byte for byte."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.controller.records import (
    BrokerRegistered,
    BrokerState,
    BrokerStateChanged,
    ConfigSet,
    MetadataRecord,
    PartitionAssignment,
    PartitionLeaderChanged,
    TopicDeleted,
    decode_record,
)
from broker.controller.state import ControllerSnapshotError, ControllerStateMachine
from tests.unit.controller.harness import MetadataLog, topic_id
from wire.error_codes import BrokerError


@pytest.fixture
def cluster() -> MetadataLog:
    log = MetadataLog()
    log.add_brokers(1, 2, 3)
    return log


def test_registration_starts_fenced_and_its_index_is_the_epoch() -> None:
    machine = ControllerStateMachine(validate=True)
    machine.apply(BrokerRegistered(4, "h", 1, 9), 17)
    info = machine.broker(4)
    assert info is not None
    assert (info.state, info.broker_epoch) == (BrokerState.FENCED, 17)
    assert machine.applied_index == 17


def test_a_late_fence_does_not_touch_the_next_incarnation() -> None:
    machine = ControllerStateMachine(validate=True)
    machine.apply(BrokerRegistered(1, "h", 1, 100), 1)
    machine.apply(BrokerRegistered(1, "h", 1, 200), 2)  # restarted: epoch 2
    machine.apply(BrokerStateChanged(1, 1, BrokerState.ACTIVE), 3)  # meant for epoch 1
    assert machine.broker(1).state is BrokerState.FENCED  # type: ignore[union-attr]
    machine.apply(BrokerStateChanged(1, 2, BrokerState.ACTIVE), 4)
    assert machine.broker(1).state is BrokerState.ACTIVE  # type: ignore[union-attr]
    assert machine.statistics().skipped_record_count == 1


def test_a_duplicated_registration_keeps_the_epoch() -> None:
    machine = ControllerStateMachine(validate=True)
    machine.apply(BrokerRegistered(1, "h", 1, 100), 1)
    machine.apply(BrokerRegistered(1, "h", 1, 100), 2)
    assert machine.broker(1).broker_epoch == 1  # type: ignore[union-attr]


def test_racing_creates_of_one_name_keep_the_first(cluster: MetadataLog) -> None:
    machine = cluster.machine
    first = machine.prepare_create_topic("t", 2, 1, topic_id=topic_id(1))
    second = machine.prepare_create_topic("t", 3, 3, topic_id=topic_id(2))
    cluster.commit(first)
    cluster.commit(second)  # its assignments name topic id 2 and must not touch topic id 1
    topic = machine.topic("t")
    assert topic is not None
    assert (topic.topic_id, topic.partition_count, topic.replication_factor) == (topic_id(1), 2, 1)
    assert [p.replicas for p in topic.partitions] == [r.replicas for r in first[1:]]
    assert machine.statistics().skipped_record_count == len(second)


def test_records_for_a_deleted_topic_do_not_touch_its_successor(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 3, number=1)
    machine = cluster.machine
    stale_report = machine.prepare_leader_change("t", 0, 1, 1, [1, 2, 3])
    stale_config = machine.prepare_alter_configs("t", {"retention.ms": 5})
    cluster.commit(machine.prepare_delete_topic("t"))
    cluster.create_topic("t", 1, 3, number=2)
    cluster.commit(stale_report + stale_config)
    topic = machine.topic("t")
    assert topic is not None and topic.topic_id == topic_id(2)
    assert topic.partitions[0].leader is None
    assert topic.configs == ()


def test_leader_reports_apply_in_epoch_order(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 3, number=1)
    machine = cluster.machine
    ident = topic_id(1)
    cluster.commit([PartitionLeaderChanged("t", ident, 0, 2, 5, (1, 2, 3))])
    cluster.commit([PartitionLeaderChanged("t", ident, 0, 1, 4, (1,))])  # older term: stale
    cluster.commit([PartitionLeaderChanged("t", ident, 0, 3, 5, (3,))])  # contradicts term 5
    partition = machine.topic("t").partitions[0]  # type: ignore[union-attr]
    assert (partition.leader, partition.leader_epoch, partition.in_sync_replicas) == (
        2,
        5,
        (1, 2, 3),
    )
    cluster.commit([PartitionLeaderChanged("t", ident, 0, None, 5, (1, 3))])  # group lost it
    cluster.commit([PartitionLeaderChanged("t", ident, 0, 3, 5, (1, 3))])  # re-found in term 5
    partition = machine.topic("t").partitions[0]  # type: ignore[union-attr]
    assert (partition.leader, partition.in_sync_replicas) == (3, (1, 3))


def test_reassignment_drops_leavers_from_isr_and_leadership(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 2, number=1)
    machine = cluster.machine
    replicas = machine.topic("t").partitions[0].replicas  # type: ignore[union-attr]
    leader = replicas[0]
    cluster.commit(machine.prepare_leader_change("t", 0, leader, 1, replicas))
    remaining = next(node for node in (1, 2, 3) if node not in replicas)
    cluster.commit([PartitionAssignment("t", topic_id(1), 0, (remaining, replicas[1]))])
    partition = machine.topic("t").partitions[0]  # type: ignore[union-attr]
    assert partition.leader is None
    assert partition.in_sync_replicas == (replicas[1],)


def test_assignment_to_an_unregistered_broker_is_skipped(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 1, number=1)
    before = cluster.machine.topic("t")
    cluster.commit([PartitionAssignment("t", topic_id(1), 0, (42,))])
    assert cluster.machine.topic("t") == before


def test_config_set_and_remove(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 1, 1, number=1, **{"segment.ms": 1000})
    cluster.commit([ConfigSet("t", topic_id(1), "retention.ms", 7)])
    cluster.commit([ConfigSet("t", topic_id(1), "segment.ms", None)])
    assert cluster.machine.topic("t").configs == (("retention.ms", 7),)  # type: ignore[union-attr]


def test_indexes_must_grow() -> None:
    machine = ControllerStateMachine()
    machine.apply(BrokerRegistered(1, "h", 1, 1), 5)
    with pytest.raises(AssertionError):
        machine.apply(BrokerRegistered(2, "h", 2, 1), 5)


def test_statistics(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 4, 2, number=1)
    cluster.set_state(3, BrokerState.SHUTTING_DOWN)
    stats = cluster.machine.statistics()
    assert stats.applied_index == cluster.machine.applied_index
    assert (stats.broker_count, stats.topic_count, stats.partition_count) == (3, 1, 4)
    assert dict(stats.brokers_by_state) == {
        BrokerState.FENCED: 0,
        BrokerState.ACTIVE: 2,
        BrokerState.SHUTTING_DOWN: 1,
    }
    assert stats.skipped_record_count == 0


# --- snapshots -----------------------------------------------------------------------------------


def test_snapshot_round_trip(cluster: MetadataLog) -> None:
    cluster.create_topic("t", 3, 2, number=1, **{"retention.ms": 9})
    cluster.commit(cluster.machine.prepare_leader_change("t", 1, 3, 2, [3, 1]))
    data = cluster.machine.to_bytes()
    restored = ControllerStateMachine.from_bytes(data, validate=True)
    assert restored == cluster.machine
    assert restored.to_bytes() == data
    assert restored.applied_index == cluster.machine.applied_index
    # A restored machine carries on applying where the snapshot ended.
    restored.apply(TopicDeleted("t", topic_id(1)), restored.applied_index + 1)
    assert restored.topic("t") is None


def _snapshot(cluster: MetadataLog) -> dict:
    cluster.create_topic("t", 2, 2, number=1)
    return msgpack.unpackb(cluster.machine.to_bytes())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s.update(format=2), "a newer broker wrote it"),
        (lambda s: s.pop("brokers"), "not a controller snapshot"),
        (lambda s: s.update(applied_index=-1), "applied_index"),
        (lambda s: s["brokers"].append(s["brokers"][0]), "appears twice"),
        (lambda s: s["brokers"][0].__setitem__(5, "dozing"), "corrupt"),
        (lambda s: s["brokers"][0].pop(), "rows of 6 fields"),
        (lambda s: s["topics"][0].__setitem__(1, "zz"), "topic_id"),
        (lambda s: s["topics"][0][4][0].__setitem__(0, [1, 1]), "names a node twice"),
        (lambda s: s["topics"][0][4][0].__setitem__(0, [1, 99]), "unregistered brokers"),
        (lambda s: s["topics"][0][4][0].__setitem__(1, 99), "inconsistent"),
        (lambda s: s["topics"][0].__setitem__(4, []), "has no partitions"),
        (lambda s: s["topics"].append(s["topics"][0]), "appears twice"),
        (lambda s: s.update(applied_index=0), "bad id or epoch"),
    ],
)
def test_damaged_snapshots_are_refused(cluster: MetadataLog, damage, message: str) -> None:
    snapshot = _snapshot(cluster)
    damage(snapshot)
    with pytest.raises(ControllerSnapshotError, match=message):
        ControllerStateMachine.from_bytes(msgpack.packb(snapshot))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x90", msgpack.packb([1, 2]), b"\x00" * 3])
def test_garbage_is_not_a_snapshot(data: bytes) -> None:
    with pytest.raises(ControllerSnapshotError):
        ControllerStateMachine.from_bytes(data)


# --- properties: random command sequences, with proposals racing each other ----------------------

# Mostly the two topics the runs start with, so that reports and configs find their topic.
TOPIC_NAMES = ["a", "a", "orders", "orders", "b", "a.b", "a_b"]
CONFIG_CHOICES = [("retention.ms", 1000), ("segment_ms", "60000"), ("flush.policy", "never")]

broker_commands = st.one_of(
    st.tuples(st.just("register"), st.integers(1, 5), st.integers(0, 2)),
    st.tuples(st.just("state"), st.integers(1, 5), st.sampled_from(BrokerState), st.booleans()),
)
topic_commands = st.one_of(
    st.tuples(
        st.just("create"),
        st.sampled_from(TOPIC_NAMES),
        st.integers(1, 6),
        st.integers(1, 3),
        st.lists(st.sampled_from(CONFIG_CHOICES), max_size=2, unique_by=lambda c: c[0]),
        st.integers(0, 40),
    ),
    st.tuples(st.just("delete"), st.sampled_from(TOPIC_NAMES)),
    st.tuples(
        st.just("config"),
        st.sampled_from(TOPIC_NAMES),
        st.sampled_from([*CONFIG_CHOICES, ("retention.ms", None)]),
    ),
)
leader_commands = st.tuples(
    st.just("leader"),
    st.sampled_from(TOPIC_NAMES),
    st.integers(0, 2),
    st.integers(0, 4),
    st.integers(0, 6),
    st.integers(0, 7),
)
commands = st.lists(
    st.one_of(broker_commands, topic_commands, leader_commands, leader_commands),
    min_size=5,
    max_size=40,
)


def _prepare(machine: ControllerStateMachine, command: tuple) -> list[MetadataRecord]:
    kind = command[0]
    if kind == "register":
        _, node, incarnation = command
        return machine.prepare_register_broker(node, "127.0.0.1", 9000 + node, incarnation)
    if kind == "state":
        _, node, state, stale = command
        info = machine.broker(node)
        epoch = 0 if info is None else info.broker_epoch - int(stale)
        return machine.prepare_set_broker_state(node, state, broker_epoch=epoch)
    if kind == "create":
        _, name, partitions, factor, configs, number = command
        return machine.prepare_create_topic(
            name, partitions, factor, dict(configs), topic_id=topic_id(number)
        )
    if kind == "delete":
        return machine.prepare_delete_topic(command[1])
    if kind == "config":
        _, name, (key, value) = command
        if value is None:
            return machine.prepare_alter_configs(name, {}, [key])
        return machine.prepare_alter_configs(name, {key: value})
    _, name, partition, leader_pick, epoch, isr_mask = command
    topic = machine.topic(name)
    if topic is None or partition >= topic.partition_count:
        return []
    replicas = topic.partitions[partition].replicas
    leader = replicas[leader_pick % len(replicas)] if leader_pick < 4 else None
    in_sync = {r for bit, r in enumerate(replicas) if isr_mask >> bit & 1}
    if leader is not None:
        in_sync.add(leader)
    return machine.prepare_leader_change(name, partition, leader, epoch, sorted(in_sync))


def run_commands(script: list[tuple], delays: list[bool]) -> MetadataLog:
    """Starting from brokers 1-3 active, 4 fenced and topics a and orders, prepare each command
    against the current state; a delayed proposal commits only after later ones were prepared,
    as when several requests reach the controller at once (so some records lose races)."""
    log = MetadataLog()
    log.add_brokers(1, 2, 3)
    log.add_brokers(4, active=False)
    log.create_topic("a", 3, 2, number=98)
    log.create_topic("orders", 2, 3, number=99)
    pending: list[list[MetadataRecord]] = []
    for command, delay in zip(script, delays + [False] * len(script), strict=False):
        with contextlib.suppress(BrokerError):  # refused commands propose nothing
            pending.append(_prepare(log.machine, command))
        if not delay:
            for records in pending:
                log.commit(records)
            pending.clear()
    for records in pending:
        log.commit(records)
    return log


@settings(max_examples=150, deadline=None)
@given(commands, st.lists(st.booleans(), min_size=40, max_size=40))
def test_replicas_applying_the_same_log_agree_byte_for_byte(script, delays) -> None:
    log = run_commands(script, delays)  # validate=True checks invariants after every record
    replica = log.replay()
    assert replica == log.machine
    assert replica.to_bytes() == log.machine.to_bytes()
    restored = ControllerStateMachine.from_bytes(log.machine.to_bytes(), validate=True)
    assert restored == log.machine
    assert restored.to_bytes() == log.machine.to_bytes()


@settings(max_examples=100, deadline=None)
@given(commands, st.lists(st.booleans(), min_size=40, max_size=40))
def test_applying_decoded_records_equals_applying_the_originals(script, delays) -> None:
    log = run_commands(script, delays)
    originals = ControllerStateMachine(validate=True)
    decoded = ControllerStateMachine(validate=True)
    for (index, payload), (same_index, original) in zip(log.log, log.originals, strict=True):
        assert index == same_index
        assert decode_record(payload) == original
        originals.apply(original, index)
        decoded.apply(decode_record(payload), index)
    assert originals == decoded
    assert originals.to_bytes() == decoded.to_bytes()


@settings(max_examples=50, deadline=None)
@given(commands, st.lists(st.booleans(), min_size=40, max_size=40), st.integers(0, 60))
def test_a_snapshot_taken_midway_then_the_rest_of_the_log_gives_the_same_state(
    script, delays, cut
) -> None:
    log = run_commands(script, delays)
    cut = min(cut, len(log.log))
    head = ControllerStateMachine()
    for index, payload in log.log[:cut]:
        head.apply(decode_record(payload), index)
    restored = ControllerStateMachine.from_bytes(head.to_bytes(), validate=True)
    for index, payload in log.log[cut:]:
        restored.apply(decode_record(payload), index)
    assert restored.to_bytes() == log.machine.to_bytes()


def test_snapshots_list_topics_sorted_not_in_creation_order() -> None:
    """Snapshot bytes must not depend on dict or set order (PYTHONHASHSEED, creation order)."""
    first = MetadataLog()
    first.add_brokers(1)
    first.create_topic("zeta", 1, 1, number=1)
    first.create_topic("alpha", 1, 1, number=2)
    names = [row[0] for row in msgpack.unpackb(first.machine.to_bytes())["topics"]]
    assert names == ["alpha", "zeta"]
    second = MetadataLog()
    second.add_brokers(1)
    second.create_topic("alpha", 1, 1, number=2)
    second.create_topic("zeta", 1, 1, number=1)
    second.next_index = first.next_index  # equal applied indexes, different creation order
    second.commit(first.machine.prepare_register_broker(1, "127.0.0.1", 9001, 1))
    first.commit(first.machine.prepare_register_broker(1, "127.0.0.1", 9001, 1))
    assert first.machine.to_bytes() == second.machine.to_bytes()


_SEED_SCRIPT = """
import hashlib
from tests.unit.controller.harness import MetadataLog
log = MetadataLog()
log.add_brokers(3, 1, 2)
for number, name in enumerate(["zeta", "a.b", "mid", "alpha", "Z", "b_c"]):
    log.create_topic(name, 5, 2, number=number, **{"retention.ms": 5, "segment.ms": 9})
print(hashlib.sha256(log.machine.to_bytes()).hexdigest())
"""


def test_snapshot_bytes_do_not_depend_on_the_hash_seed() -> None:
    """Two processes with different PYTHONHASHSEEDs build byte-identical snapshots."""
    root = pathlib.Path(__file__).resolve().parents[3]
    digests = set()
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", _SEED_SCRIPT],
            cwd=root,
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(result.stdout.strip())
    assert len(digests) == 1, digests
