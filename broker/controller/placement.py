"""Replica placement and preferred-leader elections: pure functions of broker ids and replica lists.

Placement (`assign_replicas`) spreads a new topic's replicas AND its preferred leaders (first
replicas) evenly over the live brokers, counting the load that existing topics already put on them.
It is rack-unaware, like Kafka's default, but deterministic (no random start) and balanced where
Kafka's is not for partition counts that are not a multiple of the broker count:

1. Order the live brokers by existing load: replica count, then preferred-leader count, then id.
   The least loaded broker comes first, which is the "rotating start" of Kafka's algorithm, chosen
   by load instead of at random.
2. Lay the topic's `partition_count * replication_factor` replica slots along that order, round
   and round: partition p takes the R consecutive slots starting at slot p * R. R <= broker count
   makes a partition's R brokers distinct, and striping makes every broker's share of the topic
   equal within one; the remainder lands on the least loaded brokers, so the cluster-wide counts
   stay within one of each other too while the set of brokers does not change.
3. Within each partition's R brokers, pick the preferred leader greedily (the member leading the
   fewest partitions of this topic, then of the cluster), then move leaderships along augmenting
   paths (as in bipartite matching) until every broker leads its target share of the topic:
   P // n each, plus one for the P % n brokers that lead the fewest partitions cluster-wide.
   Per topic, leader counts end within one of each other; cluster-wide, the spread stays small
   as topics accumulate. Both are checked, not proven: exhaustively for small clusters, by
   property tests, and against an adversary that picks the worst topic shape at every step.

Rules: pure and deterministic; never iterate a set of str (only ints are hashed here); callers
pass sorted broker ids and have already checked 1 <= replication_factor <= len(broker_ids).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerLoad:
    """How many partition replicas, and how many preferred leaderships, a broker holds."""

    node_id: int
    replica_count: int
    preferred_leader_count: int


def broker_loads(
    broker_ids: Sequence[int], assignments: Iterable[Sequence[int]]
) -> list[BrokerLoad]:
    """The load on each of `broker_ids` (in that order) from the replica lists `assignments`.

    Replicas on brokers outside `broker_ids` (dead or fenced ones) are not counted: placement only
    balances the brokers it may place on.
    """
    replica_counts = dict.fromkeys(broker_ids, 0)
    leader_counts = dict.fromkeys(broker_ids, 0)
    for replicas in assignments:
        for position, node_id in enumerate(replicas):
            if node_id in replica_counts:
                replica_counts[node_id] += 1
                if position == 0:
                    leader_counts[node_id] += 1
    return [BrokerLoad(node, replica_counts[node], leader_counts[node]) for node in broker_ids]


def assign_replicas(
    broker_ids: Sequence[int],
    existing_assignments: Iterable[Sequence[int]],
    partition_count: int,
    replication_factor: int,
) -> list[tuple[int, ...]]:
    """Replica lists (preferred leader first) for partitions 0..partition_count-1 of a new topic.

    `broker_ids`: the live brokers, sorted, distinct. `existing_assignments`: the replica lists of
    every partition of every existing topic (any order). The result is a function of its inputs
    only, so every controller that computes it gets the same answer.
    """
    assert list(broker_ids) == sorted(set(broker_ids)), f"unsorted broker ids {broker_ids}"
    assert 1 <= replication_factor <= len(broker_ids), (replication_factor, broker_ids)
    assert partition_count >= 0, partition_count
    loads = broker_loads(broker_ids, existing_assignments)
    cluster_leader_counts = {load.node_id: load.preferred_leader_count for load in loads}
    # Step 1: least loaded first; the id breaks ties so the order is total.
    order = [
        load.node_id
        for load in sorted(
            loads, key=lambda load: (load.replica_count, load.preferred_leader_count, load.node_id)
        )
    ]
    # Step 2: partition p's stripe is the R consecutive slots from slot p * R.
    stripes = [
        [
            order[(partition * replication_factor + step) % len(order)]
            for step in range(replication_factor)
        ]
        for partition in range(partition_count)
    ]
    # Step 3: leaders, first greedily, then moved to the brokers that lead least overall.
    leaders = _choose_leaders(stripes, cluster_leader_counts)
    targets = _leader_targets(order, cluster_leader_counts, partition_count)
    _move_leaders_to_targets(stripes, leaders, targets)
    result: list[tuple[int, ...]] = []
    for stripe, leader in zip(stripes, leaders, strict=True):
        replicas = (leader, *(node for node in stripe if node != leader))
        assert len(set(replicas)) == replication_factor, replicas
        result.append(replicas)
    return result


def _choose_leaders(stripes: list[list[int]], cluster_leader_counts: dict[int, int]) -> list[int]:
    # Each stripe's leader is the member that leads the fewest partitions of this topic so far,
    # then of the cluster, then the earliest in the stripe. On an empty cluster this alone keeps
    # every topic's leader counts within one (the tests check it exhaustively for small clusters).
    cluster_counts = dict(cluster_leader_counts)
    topic_counts = dict.fromkeys(cluster_counts, 0)
    leaders: list[int] = []
    for stripe in stripes:
        position = min(
            range(len(stripe)),
            key=lambda index: (
                topic_counts[stripe[index]],
                cluster_counts[stripe[index]],
                index,
            ),
        )
        leader = stripe[position]
        topic_counts[leader] += 1
        cluster_counts[leader] += 1
        leaders.append(leader)
    return leaders


def _leader_targets(
    order: list[int], cluster_leader_counts: dict[int, int], partition_count: int
) -> dict[int, int]:
    # The ideal: every broker leads `partition_count // n` of the topic's partitions, and the
    # remainder goes to the brokers that lead the fewest partitions cluster-wide. Then the
    # cluster-wide spread never grows past max(its previous value, 1), however many topics come.
    quotient, remainder = divmod(partition_count, len(order))
    position = {node: index for index, node in enumerate(order)}
    by_need = sorted(order, key=lambda node: (cluster_leader_counts[node], position[node]))
    return {node: quotient + (1 if rank < remainder else 0) for rank, node in enumerate(by_need)}


def _move_leaders_to_targets(
    stripes: list[list[int]], leaders: list[int], targets: dict[int, int]
) -> None:
    # Augmenting paths, as in bipartite matching: a broker above its target hands a partition's
    # leadership to another member of that partition's stripe, which may hand one of its own on,
    # until a broker below its target takes one. Only the path's two ends change their counts,
    # each toward its target, so no broker's count moves away from its target: the spread never
    # grows. When no path is left, the targets cannot be met with these stripes, and we stop.
    counts = dict.fromkeys(targets, 0)
    for leader in leaders:
        counts[leader] += 1
    for _ in range(len(stripes)):  # each path lowers the total excess by one
        path = _find_leader_path(stripes, leaders, counts, targets)
        if path is None:
            return
        for partition, new_leader in path:
            counts[leaders[partition]] -= 1
            counts[new_leader] += 1
            leaders[partition] = new_leader


def _find_leader_path(
    stripes: list[list[int]],
    leaders: list[int],
    counts: dict[int, int],
    targets: dict[int, int],
) -> list[tuple[int, int]] | None:
    # Breadth-first from every broker above target (sorted, for determinism). An edge A -> B is a
    # partition led by A whose stripe contains B. Returns [(partition, new leader), ...].
    led_by: dict[int, list[int]] = {node: [] for node in targets}
    for partition, leader in enumerate(leaders):
        led_by[leader].append(partition)
    sources = [node for node in sorted(targets) if counts[node] > targets[node]]
    reached_by: dict[int, tuple[int, int] | None] = dict.fromkeys(sources)
    frontier = list(sources)
    while frontier:
        next_frontier: list[int] = []
        for node in frontier:
            for partition in led_by[node]:
                for member in stripes[partition]:
                    if member in reached_by:
                        continue
                    reached_by[member] = (partition, node)
                    if counts[member] < targets[member]:
                        return _unwind(reached_by, member)
                    next_frontier.append(member)
        frontier = next_frontier
    return None


def _unwind(reached_by: dict[int, tuple[int, int] | None], end: int) -> list[tuple[int, int]]:
    path: list[tuple[int, int]] = []
    node = end
    step = reached_by[node]
    while step is not None:
        partition, previous = step
        path.append((partition, node))
        node = previous
        step = reached_by[node]
    return path


class PartitionLeadership(Protocol):
    """What `preferred_leader_elections` reads about a partition (cache.PartitionView has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def replicas(self) -> tuple[int, ...]: ...
    @property
    def leader(self) -> int | None: ...
    @property
    def in_sync_replicas(self) -> tuple[int, ...]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class LeaderElection:
    """Move the leadership of one partition from `current_leader` to its preferred leader."""

    topic: str
    partition: int
    current_leader: int | None
    preferred_leader: int


def preferred_leader_elections(
    partitions: Iterable[PartitionLeadership],
    live_broker_ids: Collection[int],
    *,
    election_count_max: int | None = None,
) -> list[LeaderElection]:
    """The partitions whose leadership should move back to their preferred leader (first replica).

    Why: Raft elects whichever replica times out first, so after restarts leadership piles up on
    the brokers that stayed up; moving it back to the placement's preferred leaders restores the
    balance that `assign_replicas` built. A partition qualifies when its preferred leader is live,
    in sync (a transfer to a lagging replica would stall the partition while it catches up) and
    not already the leader. A partition without a leader is left to its own Raft election.

    The caller (the controller driver) asks each current leader to transfer leadership (Raft
    TransferLeader); `election_count_max` bounds how many it starts at once. Sorted by
    (topic, partition) so the result does not depend on the input order.
    """
    assert election_count_max is None or election_count_max >= 0
    elections: list[LeaderElection] = []
    for view in partitions:
        if not view.replicas or view.leader is None:
            continue
        preferred = view.replicas[0]
        if (
            preferred != view.leader
            and preferred in live_broker_ids
            and preferred in view.in_sync_replicas
        ):
            elections.append(LeaderElection(view.topic, view.partition, view.leader, preferred))
    elections.sort(key=lambda election: (election.topic, election.partition))
    if election_count_max is not None:
        del elections[election_count_max:]
    return elections
