"""The pure side of partition reassignment: records applied to the state, prepare's checks, the
leader's step choice, the decommission and rebalance planners, and the replication throttle."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.controller import reassignment
from broker.controller.reassignment import (
    AddLearner,
    MoveInputs,
    PromoteLearner,
    RemoveMember,
    ReportCompleted,
    TransferLeadership,
    Wait,
    next_step,
    plan_decommission,
    plan_rebalance,
)
from broker.controller.records import (
    BrokerRegistered,
    BrokerState,
    BrokerStateChanged,
    PartitionAssignment,
    PartitionReassignmentCompleted,
    PartitionReassignmentStarted,
    decode_record,
    encode_record,
)
from broker.controller.state import ControllerStateMachine
from broker.raft.throttle import SendThrottle
from wire.error_codes import BrokerError, ErrorCode

TOPIC_ID = "0123456789abcdef0123456789abcdef"


def machine_with(brokers: int = 4, replicas: tuple[int, ...] = (1, 2, 3)) -> ControllerStateMachine:
    machine = ControllerStateMachine(validate=True)
    index = itertools.count(1)
    for node in range(1, brokers + 1):
        machine.apply(BrokerRegistered(node, "127.0.0.1", 9000 + node, node), next(index))
        epoch = machine.broker(node).broker_epoch  # type: ignore[union-attr]
        machine.apply(BrokerStateChanged(node, epoch, BrokerState.ACTIVE), next(index))
    records = machine.prepare_create_topic("t", 1, len(replicas), topic_id=TOPIC_ID)
    for record in records:
        machine.apply(record, next(index))
    # Place the partition where the test wants it.
    machine.apply(PartitionAssignment("t", TOPIC_ID, 0, replicas), next(index))
    return machine


def apply_all(machine: ControllerStateMachine, records: list) -> None:
    for record in records:
        machine.apply(record, machine.applied_index + 1)


def test_a_move_records_the_union_then_completes_on_the_target() -> None:
    machine = machine_with()
    records = reassignment.prepare_reassignment(machine, "t", 0, [2, 3, 4])
    assert records == [
        PartitionReassignmentStarted("t", TOPIC_ID, 0, (1, 2, 3, 4), (2, 3, 4), (4,), 0)
    ]
    apply_all(machine, records)
    info = machine.topic("t").partitions[0]  # type: ignore[union-attr]
    assert info.replicas == (1, 2, 3, 4)
    assert reassignment.removing_replicas(info) == (1,)
    # The same move again changes nothing; a completion for another set is refused.
    assert reassignment.prepare_reassignment(machine, "t", 0, [2, 3, 4]) == []
    with pytest.raises(BrokerError) as refused:
        reassignment.prepare_completion(machine, "t", 0, [1, 2, 3])
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    apply_all(machine, reassignment.prepare_completion(machine, "t", 0, [2, 3, 4]))
    info = machine.topic("t").partitions[0]  # type: ignore[union-attr]
    assert (info.replicas, info.target_replicas, info.adding_replicas) == ((2, 3, 4), (), ())
    # A repeated completion report is a no-op.
    assert reassignment.prepare_completion(machine, "t", 0, [2, 3, 4]) == []


def test_cancel_targets_the_original_replicas_and_snapshots_round_trip() -> None:
    machine = machine_with()
    apply_all(machine, reassignment.prepare_reassignment(machine, "t", 0, [2, 3, 4]))
    data = machine.to_bytes()
    restored = ControllerStateMachine.from_bytes(data, validate=True)
    assert restored == machine and restored.to_bytes() == data
    apply_all(machine, reassignment.prepare_reassignment(machine, "t", 0, None))
    info = machine.topic("t").partitions[0]  # type: ignore[union-attr]
    assert info.target_replicas == (1, 2, 3)
    assert info.adding_replicas == ()
    assert reassignment.removing_replicas(info) == (4,)
    apply_all(machine, reassignment.prepare_completion(machine, "t", 0, [1, 2, 3]))
    assert machine.topic("t").partitions[0].replicas == (1, 2, 3)  # type: ignore[union-attr]
    # With no reassignment the snapshot is what brokers without reassignment wrote (4 fields).
    assert ControllerStateMachine.from_bytes(machine.to_bytes()) == machine


@pytest.mark.parametrize(
    ("replicas", "code"),
    [
        ([], ErrorCode.INVALID_REPLICATION_FACTOR),
        ([2, 2, 3], ErrorCode.INVALID_REQUEST),
        ([2, 3, 9], ErrorCode.INVALID_REQUEST),
    ],
)
def test_prepare_refuses_bad_targets(replicas: list[int], code: ErrorCode) -> None:
    with pytest.raises(BrokerError) as refused:
        reassignment.prepare_reassignment(machine_with(), "t", 0, replicas)
    assert refused.value.code is code


def test_prepare_refuses_a_fenced_new_broker_and_an_empty_cancel() -> None:
    machine = machine_with()
    epoch = machine.broker(4).broker_epoch  # type: ignore[union-attr]
    machine.apply(BrokerStateChanged(4, epoch, BrokerState.FENCED), machine.applied_index + 1)
    with pytest.raises(BrokerError, match="broker 4 is fenced"):
        reassignment.prepare_reassignment(machine, "t", 0, [2, 3, 4])
    with pytest.raises(BrokerError, match="no reassignment in progress"):
        reassignment.prepare_reassignment(machine, "t", 0, None)
    with pytest.raises(BrokerError) as unknown:
        reassignment.prepare_reassignment(machine, "t", 5, [1])
    assert unknown.value.code is ErrorCode.UNKNOWN_PARTITION


def test_records_encode_and_decode() -> None:
    for record in (
        PartitionReassignmentStarted("t", TOPIC_ID, 0, (1, 2, 3, 4), (2, 3, 4), (4,), 10),
        PartitionReassignmentCompleted("t", TOPIC_ID, 0, (2, 3, 4)),
    ):
        assert decode_record(encode_record(record)) == record


# --- the leader's steps ------------------------------------------------------------------------


def inputs(voters, learners=(), *, leader=1, target=(2, 3, 4), caught_up=None, pending=False):
    members = set(voters) | set(learners)
    return MoveInputs(
        leader=leader,
        voters=tuple(voters),
        learners=tuple(learners),
        target_replicas=tuple(target),
        caught_up=frozenset(members if caught_up is None else caught_up),
        change_pending=pending,
    )


def test_steps_of_moving_1_2_3_to_2_3_4_with_leader_1() -> None:
    assert next_step(inputs((1, 2, 3), pending=True)) == Wait("a membership change is committing")
    assert next_step(inputs((1, 2, 3))) == AddLearner(4)
    assert isinstance(next_step(inputs((1, 2, 3), (4,), caught_up={1, 2, 3})), Wait)
    assert next_step(inputs((1, 2, 3), (4,))) == PromoteLearner(4)
    assert next_step(inputs((1, 2, 3, 4))) == TransferLeadership(2)
    assert next_step(inputs((1, 2, 3, 4), leader=2)) == RemoveMember(1)
    assert next_step(inputs((2, 3, 4), leader=2)) == ReportCompleted((2, 3, 4))


def test_never_removes_below_a_majority_of_caught_up_voters() -> None:
    # Voters 1..4 with 3 and 4 lagging: removing 1 would leave 2 of 3 caught up... only 2 is.
    step = next_step(inputs((1, 2, 3, 4), leader=2, caught_up={2}))
    assert isinstance(step, Wait)
    assert next_step(inputs((1, 2, 3, 4), leader=2, caught_up={2, 3})) == RemoveMember(1)


def test_a_stray_learner_is_removed_before_voters() -> None:
    assert next_step(inputs((1, 2, 3), (5,), target=(1, 2, 3))) == RemoveMember(5)


@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True),
    st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True),
)
def test_following_the_steps_reaches_any_target(start: list[int], target: list[int]) -> None:
    """Stepping a model group (every member caught up, each change committed at once) reaches
    the target in a bounded number of steps, one node changing per step, never voterless."""
    voters, learners, leader = set(start), set(), start[0]
    for _ in range(4 * 6):
        step = next_step(
            MoveInputs(
                leader=leader,
                voters=tuple(sorted(voters)),
                learners=tuple(sorted(learners)),
                target_replicas=tuple(target),
                caught_up=frozenset(voters | learners),
                change_pending=False,
            )
        )
        if isinstance(step, ReportCompleted):
            assert set(step.replicas) == voters == set(target) and not learners
            return
        if isinstance(step, AddLearner):
            learners.add(step.node)
        elif isinstance(step, PromoteLearner):
            learners.discard(step.node)
            voters.add(step.node)
        elif isinstance(step, RemoveMember):
            assert step.node != leader
            voters.discard(step.node)
            learners.discard(step.node)
        else:
            assert isinstance(step, TransferLeadership)
            assert step.node in voters
            leader = step.node
        assert voters
    raise AssertionError("the steps did not reach the target")


# --- planners ----------------------------------------------------------------------------------


def test_decommission_replaces_the_broker_in_place_on_the_least_loaded() -> None:
    partitions = [("a", 0, (1, 2, 3)), ("a", 1, (2, 3, 4)), ("b", 0, (3, 1, 2))]
    moves = plan_decommission(partitions, 3, [1, 2, 3, 4, 5])
    assert [(m.topic, m.partition, m.target_replicas) for m in moves] == [
        ("a", 0, (1, 2, 5)),
        ("a", 1, (2, 5, 4)),
        ("b", 0, (4, 1, 2)),
    ]
    with pytest.raises(BrokerError, match="add a broker first"):
        plan_decommission([("a", 0, (1, 2, 3))], 3, [1, 2, 3])


@given(
    st.integers(2, 6).flatmap(
        lambda brokers: st.tuples(
            st.just(brokers),
            st.lists(
                st.integers(1, min(3, brokers)).flatmap(
                    lambda rf: st.permutations(range(1, brokers + 1)).map(lambda p: p[:rf])
                ),
                min_size=1,
                max_size=20,
            ),
        )
    ),
    st.integers(0, 1),
)
def test_rebalance_evens_replicas_and_leaders(case, extra_broker: int) -> None:
    brokers, layouts = case
    live = list(range(1, brokers + 1 + extra_broker))  # maybe a new, empty broker
    partitions = [("t", number, tuple(replicas)) for number, replicas in enumerate(layouts)]
    moves = plan_rebalance(partitions, live)
    planned = {(p[0], p[1]): p[2] for p in partitions}
    for move in moves:
        assert planned[(move.topic, move.partition)] == move.replicas
        assert len(set(move.target_replicas)) == len(move.replicas)
        planned[(move.topic, move.partition)] = move.target_replicas
    counts = dict.fromkeys(live, 0)
    leaders = dict.fromkeys(live, 0)
    for replicas in planned.values():
        leaders[replicas[0]] += 1
        for node in replicas:
            counts[node] += 1
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # Leaders are evened only by reordering within each partition's brokers: within one where
    # some partition could still swap, bounded by the layouts otherwise.
    assert plan_rebalance(list(_as_partitions(planned)), live) == []


def _as_partitions(planned: dict[tuple[str, int], tuple[int, ...]]):
    return [(topic, partition, replicas) for (topic, partition), replicas in planned.items()]


def test_rebalance_respects_the_move_bound() -> None:
    partitions = [("t", n, (1, 2)) for n in range(10)]
    assert len(plan_rebalance(partitions, [1, 2, 3, 4], move_count_max=3)) == 3


# --- the throttle -------------------------------------------------------------------------------


def test_send_throttle_averages_its_rate_and_resumes_after_refill() -> None:
    throttle = SendThrottle()
    throttle.set_rate(7, 100)
    assert throttle.may_send(7) and throttle.allowance(7, 1000) == 100
    throttle.spent(7, 250)  # one large batch overdraws the budget
    assert not throttle.may_send(7)
    assert throttle.refill() == []  # -150 + 100 = -50
    assert throttle.refill() == [7]  # 50: sending resumes
    assert throttle.may_send(8) and throttle.allowance(8, 1000) == 1000  # not throttled
    throttle.set_rate(7, 0)
    assert throttle.rate(7) == 0 and throttle.may_send(7)
