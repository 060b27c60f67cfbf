"""Goal: the pure membership rules: how the metadata group's configuration follows the registered
brokers one single-server change at a time, and how a broker is decommissioned and removed in
the state machine (records, prepare checks, snapshots)."""

from __future__ import annotations

import pytest

from broker.controller.membership import (
    GroupMembers,
    decommission_progress,
    next_metadata_change,
)
from broker.controller.reassignment import plan_decommission
from broker.controller.records import BrokerState
from broker.controller.state import ControllerStateMachine
from tests.unit.controller.harness import MetadataLog
from wire.error_codes import BrokerError


@pytest.fixture
def cluster() -> MetadataLog:
    log = MetadataLog()
    log.add_brokers(1, 2, 3)
    return log


def _step(
    log: MetadataLog, current: GroupMembers, caught_up: set[int] | None = None
) -> GroupMembers | None:
    members = set(current.members) if caught_up is None else caught_up
    return next_metadata_change(current, log.machine, caught_up=members, voter_count_target=3)


def _decommission(log: MetadataLog, node_id: int) -> None:
    log.commit(log.machine.prepare_decommission_broker(node_id))


def test_a_joined_broker_becomes_a_learner_and_nothing_else_changes(cluster: MetadataLog) -> None:
    voters = GroupMembers.of([1, 2, 3])
    assert _step(cluster, voters) is None
    cluster.add_brokers(4)
    assert _step(cluster, voters) == GroupMembers.of([1, 2, 3], [4])
    assert _step(cluster, GroupMembers.of([1, 2, 3], [4])) is None


def test_unregistered_voters_are_not_removed_before_they_ever_registered() -> None:
    # At a cluster's first start the voters have not registered yet: they stay voters.
    log = MetadataLog()
    log.add_brokers(1)
    assert _step(log, GroupMembers.of([1, 2, 3])) is None


def test_a_decommissioning_voter_is_replaced_then_demoted_then_removed(
    cluster: MetadataLog,
) -> None:
    cluster.add_brokers(4)
    group = GroupMembers.of([1, 2, 3], [4])
    _decommission(cluster, 2)
    # The replacement must be caught up before it is promoted.
    assert _step(cluster, group, caught_up={1, 2, 3}) is None
    group = _step(cluster, group)
    assert group == GroupMembers.of([1, 2, 3, 4])
    group = _step(cluster, group)
    assert group == GroupMembers.of([1, 3, 4], [2])
    assert _step(cluster, group) is None  # it stays a learner until it is removed
    assert decommission_progress(cluster.machine, 2, group.voters).done
    cluster.commit(cluster.machine.prepare_unregister_broker(2))
    assert cluster.machine.broker(2) is None
    assert _step(cluster, group) == GroupMembers.of([1, 3, 4])


def test_without_a_spare_a_decommissioning_voter_is_demoted_but_never_the_last(
    cluster: MetadataLog,
) -> None:
    _decommission(cluster, 3)
    assert _step(cluster, GroupMembers.of([1, 2, 3])) == GroupMembers.of([1, 2], [3])
    log = MetadataLog()
    log.add_brokers(1, 2)
    _decommission(log, 1)
    assert _step(log, GroupMembers.of([1], [2]), caught_up={1}) is None  # 2 is catching up
    assert _step(log, GroupMembers.of([1], [2])) == GroupMembers.of([1, 2])


def test_decommissioning_takes_the_broker_out_of_placement_and_survives_reregistration(
    cluster: MetadataLog,
) -> None:
    _decommission(cluster, 2)
    assert cluster.machine.active_broker_ids() == [1, 3]
    cluster.commit(cluster.machine.prepare_register_broker(2, "127.0.0.1", 9002, 77))
    info = cluster.machine.broker(2)
    assert info is not None and info.decommissioning and info.state is BrokerState.FENCED
    # The same request again is a no-op: nothing is proposed.
    assert cluster.machine.prepare_decommission_broker(2) == []


def test_a_broker_with_replicas_cannot_be_removed_and_a_removed_process_cannot_come_back(
    cluster: MetadataLog,
) -> None:
    cluster.create_topic("t", 2, 3)
    _decommission(cluster, 2)
    with pytest.raises(BrokerError, match="still hosts replicas"):
        cluster.machine.prepare_unregister_broker(2)
    assert decommission_progress(cluster.machine, 2, [1, 3]).replica_count == 2
    partitions = [(t.name, p.partition, p.replicas) for t in cluster.machine.topics()
                  for p in t.partitions]  # fmt: skip
    cluster.add_brokers(4)
    moves = plan_decommission(partitions, 2, cluster.machine.active_broker_ids())
    assert {move.target_replicas for move in moves} == {
        tuple(4 if node == 2 else node for node in move.replicas) for move in moves
    }
    with pytest.raises(BrokerError, match="not being decommissioned"):
        cluster.machine.prepare_unregister_broker(1)


def test_prepare_refuses_unknown_brokers_and_the_last_active_one() -> None:
    log = MetadataLog()
    log.add_brokers(1)
    with pytest.raises(BrokerError, match="not registered"):
        log.machine.prepare_decommission_broker(7)
    with pytest.raises(BrokerError, match="only active broker"):
        log.machine.prepare_decommission_broker(1)


def test_removal_is_in_the_snapshot_and_refuses_the_old_process(cluster: MetadataLog) -> None:
    cluster.add_brokers(4)
    _decommission(cluster, 4)
    snapshot = cluster.machine.to_bytes()
    restored = ControllerStateMachine.from_bytes(snapshot, validate=True)
    assert restored == cluster.machine and restored.to_bytes() == snapshot
    cluster.commit(cluster.machine.prepare_unregister_broker(4))
    restored = ControllerStateMachine.from_bytes(cluster.machine.to_bytes(), validate=True)
    assert restored.broker(4) is None and restored.removed_incarnation(4) == 1
    assert cluster.replay() == cluster.machine
    with pytest.raises(BrokerError, match="decommissioned"):
        cluster.machine.prepare_register_broker(4, "127.0.0.1", 9004, 1)
    # A new process (another incarnation) with that id may join again.
    cluster.commit(cluster.machine.prepare_register_broker(4, "127.0.0.1", 9004, 2))
    assert cluster.machine.broker(4) is not None
