"""Goal: the four assignors give every partition to exactly one subscribed member, balance as
promised, stay sticky, and the cooperative one never hands a partition to a new owner in the
rebalance that revokes it, nor revokes a partition that stays."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.consumer_groups.group import TopicPartition
from wire.assignors import (
    ASSIGNORS,
    Assignment,
    CooperativeStickyAssignor,
    RangeAssignor,
    RoundRobinAssignor,
    StickyAssignor,
    Subscription,
    assign_encoded,
    valid_owners,
)

from .harness import PROPERTY_SETTINGS

TOPICS = {"a": 5, "b": 3, "c": 7}


def tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def all_partitions(topics: Mapping[str, int], subscribed: set[str]) -> list[TopicPartition]:
    return [tp(t, p) for t in sorted(subscribed) for p in range(topics.get(t, 0))]


def owners_of(result: Mapping[str, tuple[TopicPartition, ...]]) -> dict[TopicPartition, list[str]]:
    owners: dict[TopicPartition, list[str]] = {}
    for member_id, parts in result.items():
        for part in parts:
            owners.setdefault(part, []).append(member_id)
    return owners


# --- examples -------------------------------------------------------------------------------------


def test_range_example_from_kafka() -> None:
    subs = {"c0": Subscription(("t0", "t1")), "c1": Subscription(("t0", "t1"))}
    result = RangeAssignor().assign(subs, {"t0": 3, "t1": 3})
    assert result == {
        "c0": (tp("t0", 0), tp("t0", 1), tp("t1", 0), tp("t1", 1)),
        "c1": (tp("t0", 2), tp("t1", 2)),
    }


def test_roundrobin_example_from_kafka() -> None:
    subs = {"c0": Subscription(("t0", "t1")), "c1": Subscription(("t0", "t1"))}
    result = RoundRobinAssignor().assign(subs, {"t0": 3, "t1": 3})
    assert result == {
        "c0": (tp("t0", 0), tp("t0", 2), tp("t1", 1)),
        "c1": (tp("t0", 1), tp("t1", 0), tp("t1", 2)),
    }


def test_roundrobin_skips_members_not_subscribed() -> None:
    subs = {
        "c0": Subscription(("t0",)),
        "c1": Subscription(("t0", "t1")),
        "c2": Subscription(("t0", "t1", "t2")),
    }
    result = RoundRobinAssignor().assign(subs, {"t0": 1, "t1": 2, "t2": 3})
    assert result == {
        "c0": (tp("t0", 0),),
        "c1": (tp("t1", 0),),
        "c2": (tp("t1", 1), tp("t2", 0), tp("t2", 1), tp("t2", 2)),
    }


def test_static_members_order_by_instance_id() -> None:
    subs = {
        "zzz": Subscription(("t",), group_instance_id="a"),
        "aaa": Subscription(("t",), group_instance_id="b"),
    }
    result = RangeAssignor().assign(subs, {"t": 2})
    assert result == {"aaa": (tp("t", 1),), "zzz": (tp("t", 0),)}


def test_unknown_topics_and_members_without_topics() -> None:
    subs = {"c0": Subscription(("missing",)), "c1": Subscription(("t",))}
    for assignor in ASSIGNORS.values():
        assert assignor.assign(subs, {"t": 2}) == {"c0": (), "c1": (tp("t", 0), tp("t", 1))}
        assert assignor.assign({}, {"t": 2}) == {}


def test_sticky_keeps_partitions_when_a_member_leaves() -> None:
    before = StickyAssignor().assign({m: Subscription(("c",)) for m in ("m1", "m2", "m3")}, TOPICS)
    subs = {m: Subscription(("c",), before[m], 1) for m in ("m1", "m3")}
    after = StickyAssignor().assign(subs, TOPICS)
    assert set(before["m1"]) <= set(after["m1"]) and set(before["m3"]) <= set(after["m3"])
    assert sorted(after["m1"] + after["m3"]) == all_partitions(TOPICS, {"c"})


def test_cooperative_revokes_first_and_assigns_in_the_follow_up() -> None:
    assignor = CooperativeStickyAssignor()
    first = assignor.assign({"m1": Subscription(("a",))}, TOPICS)
    assert len(first["m1"]) == 5
    subs = {"m1": Subscription(("a",), first["m1"], 1), "m2": Subscription(("a",))}
    second = assignor.assign(subs, TOPICS)
    assert second["m2"] == (), "nothing moves to m2 while m1 still owns it"
    assert len(second["m1"]) == 3 and set(second["m1"]) <= set(first["m1"])
    subs = {"m1": Subscription(("a",), second["m1"], 2), "m2": Subscription(("a",), (), 2)}
    third = assignor.assign(subs, TOPICS)
    assert third["m1"] == second["m1"] and len(third["m2"]) == 2


def test_conflicting_claims_go_to_the_highest_generation() -> None:
    subs = {
        "old": Subscription(("a",), (tp("a", 0), tp("a", 1)), 3),
        "new": Subscription(("a",), (tp("a", 0),), 4),
    }
    owners = valid_owners(subs, TOPICS)
    assert owners == {tp("a", 0): "new", tp("a", 1): "old"}
    stale = {"x": Subscription(("a",), (tp("a", 9), tp("b", 0)), 1)}
    assert valid_owners(stale, TOPICS) == {}, "missing partitions and unsubscribed topics"


def test_metadata_round_trips_and_assign_encoded() -> None:
    sub = Subscription(("a", "b"), (tp("a", 1),), 7, "inst", b"u")
    assert Subscription.decode(sub.encode()) == sub
    assignment = Assignment((tp("a", 0), tp("b", 2)), b"x")
    assert Assignment.decode(assignment.encode()) == assignment
    assert Assignment.decode(b"") == Assignment(())
    with pytest.raises(ValueError):
        Subscription.decode(b"\x93\x01\x02\x03")
    encoded = assign_encoded("range", [("m1", Subscription(("b",)).encode())], TOPICS)
    assert Assignment.decode(encoded["m1"]).partitions == (tp("b", 0), tp("b", 1), tp("b", 2))


# --- properties -----------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn, *, homogeneous: bool) -> tuple[dict[str, Subscription], dict]:
    """Members with subscriptions, and a conflict-free previous ownership of some partitions."""
    topics = {t: draw(st.integers(0, 8)) for t in ("a", "b", "c")}
    count = draw(st.integers(1, 6))
    members = [f"m{i}" for i in range(count)]
    topic_lists = st.lists(st.sampled_from(sorted(topics)), min_size=1, unique=True).map(tuple)
    shared = draw(topic_lists)
    chosen = {m: shared if homogeneous else draw(topic_lists) for m in members}
    owned: dict[str, list[TopicPartition]] = {m: [] for m in members}
    for part in all_partitions(topics, set(topics)):
        claimants = [m for m in members if part.topic in chosen[m]]
        holder = draw(st.sampled_from([None, *claimants]))
        if holder is not None:
            owned[holder].append(part)
    statics = draw(st.booleans())
    subs = {
        m: Subscription(chosen[m], tuple(owned[m]), 1, f"i{m}" if statics else None)
        for m in members
    }
    return subs, topics


def check_exactly_once(subs, topics, result, *, complete: bool = True) -> None:
    assert sorted(result) == sorted(subs), "every member gets an entry"
    subscribed = {t for sub in subs.values() for t in sub.topics}
    owners = owners_of(result)
    assert all(len(holders) == 1 for holders in owners.values()), "at most one owner"
    for part, (holder,) in owners.items():
        assert part.topic in subs[holder].topics and part.partition < topics[part.topic]
    if complete:
        assert sorted(owners) == all_partitions(topics, subscribed), "every partition assigned"
    for parts in result.values():
        assert list(parts) == sorted(parts)


@PROPERTY_SETTINGS
@given(scenarios(homogeneous=False), st.sampled_from(["range", "roundrobin", "sticky"]))
def test_eager_assignors_assign_every_partition_exactly_once(scenario, name) -> None:
    subs, topics = scenario
    result = ASSIGNORS[name].assign(subs, topics)
    check_exactly_once(subs, topics, result)
    assert ASSIGNORS[name].assign(subs, topics) == result, "deterministic"


@PROPERTY_SETTINGS
@given(scenarios(homogeneous=True), st.sampled_from(["roundrobin", "sticky"]))
def test_balance_within_one_for_equal_subscriptions(scenario, name) -> None:
    subs, topics = scenario
    counts = [len(parts) for parts in ASSIGNORS[name].assign(subs, topics).values()]
    assert max(counts) - min(counts) <= 1


@PROPERTY_SETTINGS
@given(scenarios(homogeneous=True))
def test_range_balances_each_topic_within_one(scenario) -> None:
    subs, topics = scenario
    result = RangeAssignor().assign(subs, topics)
    for topic in next(iter(subs.values())).topics:
        counts = [sum(p.topic == topic for p in parts) for parts in result.values()]
        assert max(counts) - min(counts) <= 1


@PROPERTY_SETTINGS
@given(scenarios(homogeneous=True))
def test_sticky_keeps_at_least_a_fair_share_of_what_each_member_owned(scenario) -> None:
    subs, topics = scenario
    result = StickyAssignor().assign(subs, topics)
    total = sum(len(parts) for parts in result.values())
    floor = total // len(subs)
    for member_id, sub in subs.items():
        kept = set(sub.owned) & set(result[member_id])
        assert len(kept) >= min(len(sub.owned), floor)
    # A balanced, complete ownership is a fixed point: nothing moves.
    stable = {m: Subscription(subs[m].topics, result[m], 2) for m in subs}
    assert StickyAssignor().assign(stable, topics) == result


@PROPERTY_SETTINGS
@given(scenarios(homogeneous=False))
def test_sticky_heterogeneous_is_a_local_optimum(scenario) -> None:
    """No single move from a member to one with two fewer partitions is possible at the end."""
    subs, topics = scenario
    result = StickyAssignor().assign(subs, topics)
    for parts in result.values():
        for target in result:
            if len(parts) - len(result[target]) > 1:
                assert not any(p.topic in subs[target].topics for p in parts)


@PROPERTY_SETTINGS
@given(scenarios(homogeneous=False))
def test_cooperative_never_moves_a_partition_in_one_step(scenario) -> None:
    subs, topics = scenario
    previous = {part: m for m, sub in subs.items() for part in sub.owned}
    result = CooperativeStickyAssignor().assign(subs, topics)
    check_exactly_once(subs, topics, result, complete=False)
    target = StickyAssignor().assign(subs, topics)
    for member_id, parts in result.items():
        for part in parts:
            assert previous.get(part, member_id) == member_id, f"{part} moved in one step"
        # Partitions that stay with their owner are never revoked.
        staying = set(subs[member_id].owned) & set(target[member_id])
        assert staying <= set(parts)
    # Unowned partitions need no revocation: they are handed out at once.
    assigned = {part for parts in result.values() for part in parts}
    subscribed = {t for sub in subs.values() for t in sub.topics}
    unowned = set(all_partitions(topics, subscribed)) - set(previous)
    assert unowned <= assigned


@PROPERTY_SETTINGS
@given(scenarios(homogeneous=True))
def test_cooperative_converges_in_two_rebalances(scenario) -> None:
    subs, topics = scenario
    assignor = CooperativeStickyAssignor()
    first = assignor.assign(subs, topics)
    follow_up = {m: Subscription(subs[m].topics, first[m], 2) for m in subs}
    second = assignor.assign(follow_up, topics)
    check_exactly_once(subs, topics, second)
    counts = [len(parts) for parts in second.values()]
    assert max(counts) - min(counts) <= 1
    for member_id in subs:
        assert set(first[member_id]) <= set(second[member_id]), "nothing revoked twice"
