"""Partition reassignment: moving a partition's replicas to other brokers (Kafka's KIP-455). Pure.

API for other parts (H2's `cluster decommission N` calls these, then submits the result through
`ControllerService.alter_partition_reassignments`):

    plan_decommission(partitions, broker_id, live_broker_ids) -> list[Move]
    plan_rebalance(partitions, live_broker_ids, *, move_count_max=...) -> list[Move]
    prepare_reassignment(machine, topic, partition, replicas | None, *, throttle_bytes_per_s)
    prepare_completion(machine, topic, partition, replicas) -> [record]
    next_step(MoveInputs) -> Step        (the partition leader's next membership change)

How a move runs (docs/reassignment.md):
1. The controller records `PartitionReassignmentStarted`: the partition's `replicas` become the
   union of where it is and where it goes, `target_replicas` where it goes, `adding_replicas` the
   brokers new to it. Brokers in `replicas` host a replica (a new one starts as a Raft learner).
2. The partition's Raft leader steps its group towards the target one membership change at a time
   (`next_step`): add learners, promote each once caught up, remove old voters one at a time
   (never below a majority of in-sync voters; a leader that must go first hands leadership over).
3. When the group's voters are exactly the target, the leader asks the controller to record
   `PartitionReassignmentCompleted`; brokers no longer in `replicas` then stop and delete theirs.
Every step is derived from the metadata and the group's own configuration, so a controller or
partition-leader failover resumes where the move stood. A cancellation is a new target: the
original replicas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from broker.controller.records import (
    INT64_MAX,
    REPLICA_COUNT_MAX,
    BrokerState,
    MetadataRecord,
    PartitionReassignmentCompleted,
    PartitionReassignmentStarted,
)
from wire.error_codes import BrokerError, ErrorCode

if TYPE_CHECKING:
    from broker.controller.state import ControllerStateMachine, PartitionInfo, TopicInfo

# A rebalance plan moves at most this many partitions by default: each move copies a replica.
REBALANCE_MOVE_COUNT_MAX: Final = 1000

# (topic, partition, replicas): the input of the planners, preferred leader first.
PartitionReplicas: TypeAlias = tuple[str, int, tuple[int, ...]]


@dataclasses.dataclass(frozen=True, slots=True)
class Move:
    """One planned reassignment: `topic`-`partition` goes from `replicas` to `target_replicas`."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    target_replicas: tuple[int, ...]


# --- applying the records (called by ControllerStateMachine.apply) ------------------------------


def original_replicas(info: PartitionInfo) -> tuple[int, ...]:
    """Where the partition was before the reassignment under way (its replicas if none)."""
    return tuple(node for node in info.replicas if node not in info.adding_replicas)


def removing_replicas(info: PartitionInfo) -> tuple[int, ...]:
    """Replicas that leave the partition when the reassignment under way completes."""
    if not info.target_replicas:
        return ()
    return tuple(node for node in info.replicas if node not in info.target_replicas)


def apply_started(
    info: PartitionInfo, record: PartitionReassignmentStarted
) -> PartitionInfo | None:
    """The partition with the reassignment recorded; None if the record no longer fits (skip)."""
    if not info.replicas or not set(info.replicas) <= set(record.replicas):
        return None  # a stale plan: brokers hosting the partition now would be dropped unseen
    in_sync = tuple(node for node in info.in_sync_replicas if node in record.replicas)
    return dataclasses.replace(
        info,
        replicas=record.replicas,
        in_sync_replicas=in_sync,
        target_replicas=record.target_replicas,
        adding_replicas=record.adding_replicas,
        reassignment_throttle_bytes_per_s=record.throttle_bytes_per_s,
    )


def apply_completed(
    info: PartitionInfo, record: PartitionReassignmentCompleted
) -> PartitionInfo | None:
    """The partition on its target replicas with no reassignment; None if the record does not
    finish the reassignment recorded (a late report after a new target: skip it)."""
    if record.replicas != info.target_replicas:
        return None
    in_sync = tuple(node for node in info.in_sync_replicas if node in record.replicas)
    leader = info.leader if info.leader in in_sync else None
    return dataclasses.replace(
        info,
        replicas=record.replicas,
        leader=leader,
        in_sync_replicas=in_sync,
        target_replicas=(),
        adding_replicas=(),
        reassignment_throttle_bytes_per_s=0,
    )


# --- prepare (controller leader, before proposing) ----------------------------------------------


def prepare_reassignment(
    machine: ControllerStateMachine,
    topic: str,
    partition: int,
    replicas: Sequence[int] | None,
    *,
    throttle_bytes_per_s: int = 0,
) -> list[MetadataRecord]:
    """The record that moves `topic`-`partition` to `replicas` (preferred leader first), or with
    `replicas=None` cancels the reassignment under way (back to the original replicas).

    [] when nothing would change. Raises BrokerError: UNKNOWN_TOPIC, UNKNOWN_PARTITION,
    INVALID_REPLICATION_FACTOR (an empty or oversized list) or INVALID_REQUEST (a node named
    twice, an unregistered broker, a new replica on a broker that is not ACTIVE, a cancel with
    nothing to cancel, a negative throttle).
    """
    topic_info, info = _require_partition(machine, topic, partition)
    where = f"{topic}-{partition}"
    _require_count(throttle_bytes_per_s, "throttle bytes per second")
    original = original_replicas(info)
    if replicas is None:
        if not info.target_replicas:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST, f"{where} has no reassignment in progress to cancel"
            )
        target = original
    else:
        target = _checked_target(machine, where, info, replicas)
    if target == info.replicas and not info.target_replicas:
        return []  # already there
    if target == info.target_replicas and throttle_bytes_per_s == (
        info.reassignment_throttle_bytes_per_s
    ):
        return []  # this very reassignment is under way
    union = info.replicas + tuple(node for node in target if node not in info.replicas)
    adding = tuple(node for node in target if node not in original)
    return [
        PartitionReassignmentStarted(
            topic, topic_info.topic_id, partition, union, target, adding, throttle_bytes_per_s
        )
    ]


def _checked_target(
    machine: ControllerStateMachine, where: str, info: PartitionInfo, replicas: Sequence[int]
) -> tuple[int, ...]:
    target = tuple(replicas)
    if not 1 <= len(target) <= REPLICA_COUNT_MAX:
        raise BrokerError(
            ErrorCode.INVALID_REPLICATION_FACTOR,
            f"{where}: give 1 to {REPLICA_COUNT_MAX} replicas, not {len(target)}",
        )
    for node in target:
        if not isinstance(node, int) or isinstance(node, bool) or node < 1:
            raise BrokerError(ErrorCode.INVALID_REQUEST, f"{where}: {node!r} is not a broker id")
    if len(set(target)) != len(target):
        raise BrokerError(ErrorCode.INVALID_REQUEST, f"{where}: a broker is named twice {target}")
    for node in target:
        broker = machine.broker(node)
        if broker is None:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"{where}: broker {node} is not registered; start it (or pick another broker)",
            )
        if node not in info.replicas and broker.state is not BrokerState.ACTIVE:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"{where}: broker {node} is {broker.state.value}, so it cannot take a new "
                "replica; wait until it is active or pick another broker",
            )
    return target


def prepare_completion(
    machine: ControllerStateMachine, topic: str, partition: int, replicas: Sequence[int]
) -> list[MetadataRecord]:
    """The record that completes the reassignment of `topic`-`partition`, reported by the
    partition's leader once its group's voters are exactly `replicas`.

    [] if no reassignment is under way and the partition already has these replicas (a
    repeated report). Raises BrokerError: UNKNOWN_TOPIC / UNKNOWN_PARTITION, or
    INVALID_REQUEST if `replicas` is not the target recorded (the target changed meanwhile;
    the leader carries on towards the new one).
    """
    topic_info, info = _require_partition(machine, topic, partition)
    done = tuple(replicas)
    if not info.target_replicas and info.replicas == done:
        return []
    if done != info.target_replicas:
        raise BrokerError(
            ErrorCode.INVALID_REQUEST,
            f"{topic}-{partition}: replicas {list(done)} are not the reassignment target "
            f"{list(info.target_replicas)}; the move goes on towards the recorded target",
        )
    return [PartitionReassignmentCompleted(topic, topic_info.topic_id, partition, done)]


def _require_partition(
    machine: ControllerStateMachine, topic: str, partition: int
) -> tuple[TopicInfo, PartitionInfo]:
    info = machine.topic(topic)
    if info is None:
        raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {topic!r} does not exist")
    if not isinstance(partition, int) or not 0 <= partition < info.partition_count:
        raise BrokerError(
            ErrorCode.UNKNOWN_PARTITION,
            f"topic {topic!r} has partitions 0 to {info.partition_count - 1}, not {partition}",
        )
    partition_info = info.partitions[partition]
    if not partition_info.replicas:
        raise BrokerError(
            ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no replicas yet; retry"
        )
    return info, partition_info


def _require_count(value: Any, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT64_MAX:
        raise BrokerError(ErrorCode.INVALID_REQUEST, f"{what} must be 0 or more, got {value!r}")


# --- the partition leader's steps ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class MoveInputs:
    """What the partition leader knows when it picks the next step.

    `voters`/`learners`: the group's configuration in force (the last one in its log).
    `caught_up`: members whose log has reached the commit index (the leader is always one).
    `change_pending`: a configuration change (or this leader's first entry) is not committed.
    """

    leader: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    target_replicas: tuple[int, ...]
    caught_up: frozenset[int]
    change_pending: bool


@dataclasses.dataclass(frozen=True, slots=True)
class AddLearner:
    node: int


@dataclasses.dataclass(frozen=True, slots=True)
class PromoteLearner:
    node: int


@dataclasses.dataclass(frozen=True, slots=True)
class RemoveMember:
    """Remove a voter or a learner from the group."""

    node: int


@dataclasses.dataclass(frozen=True, slots=True)
class TransferLeadership:
    """The leader must leave the group: hand leadership to `node` first."""

    node: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReportCompleted:
    """The group's voters are the target: ask the controller to record the completion."""

    replicas: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do until the group changes; `reason` says what it waits for."""

    reason: str


Step: TypeAlias = (
    AddLearner | PromoteLearner | RemoveMember | TransferLeadership | ReportCompleted | Wait
)


def next_step(inputs: MoveInputs) -> Step:
    """The next single-server membership change towards the target (thesis §4.1, §4.2).

    Order: add every new replica as a learner, promote each once caught up, drop stray
    learners, then remove the old voters one at a time, never leaving fewer caught-up voters
    than a majority of the remaining ones; the leader hands over before removing itself.
    """
    target = inputs.target_replicas
    assert target, "no reassignment"
    if inputs.change_pending:
        return Wait("a membership change is committing")
    members = set(inputs.voters) | set(inputs.learners)
    for node in target:
        if node not in members:
            return AddLearner(node)
    learners = [node for node in target if node in inputs.learners]
    for node in learners:
        if node in inputs.caught_up:
            return PromoteLearner(node)
    if learners:
        return Wait(f"learners {learners} are catching up")
    for node in inputs.learners:
        return RemoveMember(node)  # a learner of an abandoned target
    removing = [node for node in inputs.voters if node not in target]
    if not removing:
        return ReportCompleted(target)
    if inputs.leader in removing:
        successor = next((node for node in target if node in inputs.caught_up), None)
        if successor is None:
            return Wait("no caught-up target replica to hand leadership to")
        return TransferLeadership(successor)
    node = removing[0]
    remaining = [voter for voter in inputs.voters if voter != node]
    in_sync = sum(1 for voter in remaining if voter in inputs.caught_up)
    if in_sync < len(remaining) // 2 + 1:
        return Wait(f"too few caught-up voters to remove {node}")
    return RemoveMember(node)


# --- planners --------------------------------------------------------------------------------


def _replica_counts(
    partitions: Iterable[PartitionReplicas], live: Sequence[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Replicas and preferred leaderships per live broker (others are not counted)."""
    replica_counts = dict.fromkeys(live, 0)
    leader_counts = dict.fromkeys(live, 0)
    for _, _, replicas in partitions:
        for node in replicas:
            if node in replica_counts:
                replica_counts[node] += 1
        if replicas and replicas[0] in leader_counts:
            leader_counts[replicas[0]] += 1
    return replica_counts, leader_counts


def plan_decommission(
    partitions: Sequence[PartitionReplicas], broker_id: int, live_broker_ids: Sequence[int]
) -> list[Move]:
    """Moves that take every replica off `broker_id`: each goes, in the same position (so a
    preferred leadership stays a preferred leadership), to the live broker not already hosting
    the partition with the fewest replicas (then the lowest id). Deterministic.

    Raises BrokerError(INVALID_REPLICATION_FACTOR) when some partition has no live broker left
    to move to (it would lose a replica: add a broker first).
    """
    live = sorted(node for node in set(live_broker_ids) if node != broker_id)
    counts, _ = _replica_counts(partitions, live)
    moves: list[Move] = []
    for topic, partition, replicas in sorted(partitions):
        if broker_id not in replicas:
            continue
        candidates = [node for node in live if node not in replicas]
        if not candidates:
            raise BrokerError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"{topic}-{partition} has replicas {list(replicas)} and no other live broker "
                f"can take broker {broker_id}'s replica; add a broker first",
            )
        chosen = min(candidates, key=lambda node: (counts[node], node))
        counts[chosen] += 1
        target = tuple(chosen if node == broker_id else node for node in replicas)
        moves.append(Move(topic, partition, replicas, target))
    return moves


def plan_rebalance(
    partitions: Sequence[PartitionReplicas],
    live_broker_ids: Sequence[int],
    *,
    move_count_max: int = REBALANCE_MOVE_COUNT_MAX,
) -> list[Move]:
    """Moves that even replicas, then preferred leaders, across `live_broker_ids`.

    Replicas: while the most loaded live broker has two more replicas than the least loaded,
    one replica moves from the first to the second (a partition hosting the first and not the
    second, keeping its position), so each move lowers the spread: few moves, never a move
    back. Leaders: while preferred-leader counts differ by two or more, a partition led by the
    most-leading broker puts its replica on the least-leading broker first (a reorder, no data
    copied). Replicas on brokers outside the live set stay (decommission moves those).
    At most `move_count_max` partitions change. Deterministic.
    """
    live = sorted(set(live_broker_ids))
    current = {(topic, partition): replicas for topic, partition, replicas in partitions}
    plan = _Plan(current, move_count_max)
    if len(live) >= 2:
        _even(plan, live, _replica_step, by_leaders=False)
        _even(plan, live, _leader_step, by_leaders=True)
    return [
        Move(topic, partition, current[(topic, partition)], plan.replicas[(topic, partition)])
        for topic, partition in sorted(plan.changed)
    ]


class _Plan:
    """The replicas as planned so far, and which partitions changed (bounded by the caller)."""

    def __init__(self, current: dict[tuple[str, int], tuple[int, ...]], change_max: int) -> None:
        self.current = current
        self.replicas = dict(current)
        self.changed: set[tuple[str, int]] = set()
        self.change_max = change_max
        self.keys = sorted(current)

    def may_change(self, key: tuple[str, int]) -> bool:
        return key in self.changed or len(self.changed) < self.change_max

    def set(self, key: tuple[str, int], replicas: tuple[int, ...]) -> None:
        self.replicas[key] = replicas
        if replicas == self.current[key]:
            self.changed.discard(key)
        else:
            self.changed.add(key)


# A balancing step: (plan, from broker, to broker) -> whether it changed a partition.
def _replica_step(plan: _Plan, most: int, least: int) -> bool:
    for key in plan.keys:
        replicas = plan.replicas[key]
        if most in replicas and least not in replicas and plan.may_change(key):
            plan.set(key, tuple(least if node == most else node for node in replicas))
            return True
    return False


def _leader_step(plan: _Plan, most: int, least: int) -> bool:
    for key in plan.keys:
        replicas = plan.replicas[key]
        if replicas[0] == most and least in replicas and plan.may_change(key):
            plan.set(key, (least, *(node for node in replicas if node != least)))
            return True
    return False


def _even(
    plan: _Plan, live: list[int], step: Callable[[_Plan, int, int], bool], *, by_leaders: bool
) -> None:
    """Apply `step` from the most to the least loaded broker while loads differ by two or more.

    Each step moves one unit from a broker above the other by two or more, so the sum of
    squared loads falls and the loop ends; the iteration bound is a safety net.
    """
    for _ in range(sum(len(replicas) for replicas in plan.replicas.values()) + 1):
        counts, leaders = _replica_counts(
            ((topic, partition, r) for (topic, partition), r in plan.replicas.items()), live
        )
        load = leaders if by_leaders else counts
        most = max(live, key=lambda node: (load[node], node))
        candidates = sorted(live, key=lambda node: (load[node], node))
        if not any(
            load[most] - load[least] >= 2 and step(plan, most, least) for least in candidates
        ):
            return
