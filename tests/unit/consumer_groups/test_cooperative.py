"""Goal: cooperative-sticky through the real coordinator: when a consumer joins, the first
rebalance only revokes (the others keep consuming what they keep), and the follow-up rebalance
hands the revoked partitions to the newcomer; no partition ever has two owners."""

from __future__ import annotations

from broker.consumer_groups.group import JoinProtocol, TopicPartition
from wire.assignors import Assignment, Subscription, assign_encoded
from wire.error_codes import ErrorCode

from .harness import DELAY_MS, Harness

PARTITIONS = {"t": 6}
NAME = "cooperative-sticky"


def join(h: Harness, member_id: str, owned: tuple[TopicPartition, ...], generation: int) -> int:
    metadata = Subscription(("t",), owned, generation).encode()
    return h.join(member_id=member_id, protocols=(JoinProtocol(NAME, metadata),))


def rebalance(h: Harness, owned: dict[str, tuple], generation: int, newcomers: int = 0) -> dict:
    """Every member rejoins with what it owns; the leader assigns; everyone syncs."""
    # Newcomers first: their join starts the rebalance, as it would in a real deployment.
    joins = {f"new{i}": join(h, "", (), -1) for i in range(newcomers)}
    joins.update(
        {member_id: join(h, member_id, parts, generation) for member_id, parts in owned.items()}
    )
    h.tick(DELAY_MS)
    answers = {key: h.response(rid) for key, rid in joins.items()}
    assert all(a.error is ErrorCode.NONE for a in answers.values()), answers
    leader = next(a for a in answers.values() if a.members)
    plan = assign_encoded(NAME, [(m.member_id, m.metadata) for m in leader.members], PARTITIONS)
    syncs = {
        answer.member_id: h.sync(
            answer.member_id,
            answer.generation,
            assignments=plan if answer.member_id == leader.member_id else None,
        )
        for answer in answers.values()
    }
    return {m: Assignment.decode(h.response(rid).assignment).partitions for m, rid in syncs.items()}


def test_a_newcomer_gets_partitions_only_after_they_are_revoked() -> None:
    h = Harness()
    first = rebalance(h, {}, -1, newcomers=2)
    assert sorted(p for parts in first.values() for p in parts) == [
        TopicPartition("t", n) for n in range(6)
    ]
    generation = 1
    second = rebalance(h, first, generation, newcomers=1)
    newcomer = next(m for m in second if m not in first)
    assert second[newcomer] == (), "nothing is handed over while its owner still has it"
    for member_id, parts in first.items():
        assert set(second[member_id]) <= set(parts), "old members only lose partitions"
        assert len(second[member_id]) == 2
    # The members that lost partitions revoke them and rejoin: the follow-up rebalance.
    third = rebalance(h, second, generation + 1)
    assert len(third[newcomer]) == 2
    for member_id in first:
        assert third[member_id] == second[member_id], "nothing they kept is revoked"
    owners = [p for parts in third.values() for p in parts]
    assert sorted(owners) == [TopicPartition("t", n) for n in range(6)]
