"""Goal: placement puts R distinct replicas on every partition and spreads replicas and preferred
leaders evenly, per topic and as topics accumulate; preferred-leader elections pick exactly the
partitions whose preferred leader is live, in sync and not leading."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.controller.placement import (
    LeaderElection,
    assign_replicas,
    broker_loads,
    preferred_leader_elections,
)

# Cluster-wide preferred-leader spread seen in ~100k random topic sequences: at most 3.
CLUSTER_LEADER_SPREAD_BOUND = 4


def spread(counts: Counter[int], broker_ids: Sequence[int]) -> int:
    values = [counts[node] for node in broker_ids]
    return max(values) - min(values)


def replica_counts(assignments: Sequence[Sequence[int]]) -> Counter[int]:
    return Counter(node for replicas in assignments for node in replicas)


def leader_counts(assignments: Sequence[Sequence[int]]) -> Counter[int]:
    return Counter(replicas[0] for replicas in assignments)


broker_id_lists = st.lists(st.integers(1, 1000), min_size=1, max_size=12, unique=True).map(sorted)


def test_small_clusters_exhaustively() -> None:
    """Every (brokers, R, P) up to 8 brokers and 24 partitions, on an empty cluster."""
    for broker_count in range(1, 9):
        broker_ids = list(range(1, broker_count + 1))
        for replication_factor in range(1, broker_count + 1):
            for partition_count in range(1, 25):
                assignments = assign_replicas(broker_ids, [], partition_count, replication_factor)
                assert len(assignments) == partition_count
                assert all(len(set(r)) == replication_factor for r in assignments)
                assert spread(replica_counts(assignments), broker_ids) <= 1
                assert spread(leader_counts(assignments), broker_ids) <= 1


@given(broker_id_lists, st.data())
def test_a_topic_on_an_empty_cluster_is_balanced(
    broker_ids: list[int], data: st.DataObject
) -> None:
    replication_factor = data.draw(st.integers(1, len(broker_ids)))
    partition_count = data.draw(st.integers(1, 80))
    assignments = assign_replicas(broker_ids, [], partition_count, replication_factor)
    assert len(assignments) == partition_count
    for replicas in assignments:
        assert len(replicas) == replication_factor
        assert len(set(replicas)) == replication_factor
        assert set(replicas) <= set(broker_ids)
    assert spread(replica_counts(assignments), broker_ids) <= 1
    assert spread(leader_counts(assignments), broker_ids) <= 1


@settings(max_examples=60, deadline=None)
@given(broker_id_lists, st.data())
def test_accumulating_topics_stay_balanced(broker_ids: list[int], data: st.DataObject) -> None:
    """Each new topic is balanced on its own, and the cluster stays balanced as a whole."""
    existing: list[tuple[int, ...]] = []
    topic_count = data.draw(st.integers(1, 25))
    for _ in range(topic_count):
        replication_factor = data.draw(st.integers(1, len(broker_ids)))
        partition_count = data.draw(st.integers(1, 3 * len(broker_ids)))
        new = assign_replicas(broker_ids, existing, partition_count, replication_factor)
        assert all(len(set(replicas)) == replication_factor for replicas in new)
        assert spread(replica_counts(new), broker_ids) <= 1
        assert spread(leader_counts(new), broker_ids) <= 1
        existing += new
        assert spread(replica_counts(existing), broker_ids) <= 1
        assert spread(leader_counts(existing), broker_ids) <= CLUSTER_LEADER_SPREAD_BOUND


def test_an_adversary_cannot_pile_leaders_on_one_broker() -> None:
    """Each step creates whichever topic shape makes the leader spread worst: it stays small.

    (A greedy-only leader choice let this adversary push the spread to 30 on 3 brokers.)
    """
    for broker_count in range(2, 7):
        broker_ids = list(range(1, broker_count + 1))
        existing: list[tuple[int, ...]] = []
        for _ in range(30):
            candidates = [
                assign_replicas(broker_ids, existing, partitions, replication_factor)
                for replication_factor in range(1, broker_count + 1)
                for partitions in range(1, 2 * broker_count + 1)
            ]
            existing += max(
                candidates, key=lambda new: spread(leader_counts(existing + new), broker_ids)
            )
            assert spread(leader_counts(existing), broker_ids) <= 2


def test_placement_is_deterministic_and_ignores_input_order() -> None:
    existing = assign_replicas([1, 2, 3, 4], [], 7, 3)
    first = assign_replicas([1, 2, 3, 4], existing, 5, 2)
    again = assign_replicas([1, 2, 3, 4], list(reversed(existing)), 5, 2)
    assert first == again


def test_a_new_broker_takes_the_first_and_largest_share() -> None:
    """Counting existing load: an empty broker joining a loaded cluster is filled first."""
    existing = assign_replicas([1, 2, 3], [], 6, 3)
    new = assign_replicas([1, 2, 3, 4], existing, 4, 1)
    assert new == [(4,), (1,), (2,), (3,)]
    counts = replica_counts(assign_replicas([1, 2, 3, 4], existing, 4, 2))
    assert counts[4] == 2 and sum(counts.values()) == 8


def test_replicas_on_dead_brokers_are_not_counted() -> None:
    loads = broker_loads([1, 2], [(1, 9), (9, 2), (2, 1)])
    assert [(load.node_id, load.replica_count, load.preferred_leader_count) for load in loads] == [
        (1, 2, 1),
        (2, 2, 1),
    ]


def test_a_fresh_three_broker_topic() -> None:
    """A readable example of the layout: stripes of R brokers, leaders rotated."""
    assert assign_replicas([1, 2, 3], [], 6, 2) == [
        (1, 2),
        (3, 1),
        (2, 3),
        (1, 2),
        (3, 1),
        (2, 3),
    ]


@dataclasses.dataclass(frozen=True)
class Leadership:
    topic: str
    partition: int
    replicas: tuple[int, ...]
    leader: int | None
    in_sync_replicas: tuple[int, ...]


@pytest.mark.parametrize(
    ("view", "live", "expected"),
    [
        (Leadership("t", 0, (1, 2, 3), 2, (1, 2, 3)), [1, 2, 3], [LeaderElection("t", 0, 2, 1)]),
        (Leadership("t", 0, (1, 2, 3), 1, (1, 2, 3)), [1, 2, 3], []),  # already preferred
        (Leadership("t", 0, (1, 2, 3), 2, (2, 3)), [1, 2, 3], []),  # preferred is lagging
        (Leadership("t", 0, (1, 2, 3), 2, (1, 2, 3)), [2, 3], []),  # preferred is down
        (Leadership("t", 0, (1, 2, 3), None, (1, 2, 3)), [1, 2, 3], []),  # Raft elects first
        (Leadership("t", 0, (), None, ()), [1, 2, 3], []),  # not assigned yet
    ],
)
def test_preferred_leader_elections(
    view: Leadership, live: list[int], expected: list[LeaderElection]
) -> None:
    assert preferred_leader_elections([view], live) == expected


def test_preferred_leader_elections_are_sorted_and_bounded() -> None:
    views = [
        Leadership(topic, partition, (1, 2), 2, (1, 2))
        for topic in ("b", "a")
        for partition in (1, 0)
    ]
    elections = preferred_leader_elections(views, [1, 2])
    assert [(e.topic, e.partition) for e in elections] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    limited = preferred_leader_elections(views, [1, 2], election_count_max=3)
    assert limited == elections[:3]
