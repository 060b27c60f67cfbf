"""Goal: a new coordinator that replays the partition resumes every group exactly as persisted:
same generation, members, assignments and committed offsets, with no forced rebalance."""

from __future__ import annotations

import pytest

from broker.consumer_groups.events import (
    DeleteGroupsRequested,
    DescribeGroupsRequested,
    LeavingMember,
    LoadPartition,
)
from broker.consumer_groups.group import GroupState
from broker.consumer_groups.offsets import CorruptGroupRecordError, EncodedRecord, replay
from wire.error_codes import ErrorCode

from .harness import DELAY_MS, SESSION_MS, Harness, form_group, tp


def failover(h: Harness, epoch: int = 2) -> Harness:
    """The partition's leadership moves: a new core replays everything the old one persisted."""
    successor = Harness(records=tuple(h.log), now_ms=h.now_ms, epoch=epoch)
    assert successor.core._state.store == h.core._state.store == replay(h.log)
    return successor


def describe(h: Harness, group_id: str = "g"):
    return h.response(h.request(DescribeGroupsRequested, group_ids=(group_id,))).groups[0]


def test_a_stable_group_carries_on_through_failover() -> None:
    h = Harness()
    generation, members = form_group(h, 3, partition_counts={"t": 6})
    h.commit({tp("t", 0): 42}, member_id=members[0], generation=generation)
    before = describe(h)
    after_h = failover(h)
    after = describe(after_h)
    assert after.state is GroupState.STABLE
    assert (after.generation, after.leader_id, after.protocol_name) == (
        before.generation,
        before.leader_id,
        before.protocol_name,
    )
    assert [(m.member_id, m.assignment) for m in after.members] == [
        (m.member_id, m.assignment) for m in before.members
    ]
    assert after.offsets == before.offsets
    for member_id in members:
        assert after_h.heartbeat(member_id, generation) is ErrorCode.NONE
    sync = after_h.sync(members[1], generation)
    assert after_h.response(sync).assignment == before.members[1].assignment


def test_members_that_do_not_come_back_time_out_after_failover() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    after = failover(h)
    after.tick(SESSION_MS - 1)
    after.heartbeat(first, generation)
    after.tick(1)
    assert after.heartbeat(second, generation) is ErrorCode.UNKNOWN_MEMBER_ID
    rejoin = after.join(member_id=first)
    assert after.response(rejoin).generation == generation + 1
    assert after.response(rejoin).members[0].member_id == first


def test_an_unpersisted_generation_is_forgotten_and_members_rejoin() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    h.join(member_id=first)
    h.join(member_id=second)  # generation + 1 opened, its assignment never written
    after = failover(h)
    assert describe(after).generation == generation
    assert after.heartbeat(first, generation + 1) is ErrorCode.ILLEGAL_GENERATION
    assert after.heartbeat(first, generation) is ErrorCode.NONE


def test_a_static_member_restarting_across_failover_keeps_its_assignment() -> None:
    h = Harness()
    generation, (_first, second) = form_group(h, 2, instance_ids=["i0", "i1"])
    old = next(m.assignment for m in describe(h).members if m.member_id == second)
    after = failover(h)
    answer = after.response(after.join(instance_id="i1", client_id="c1"))
    assert answer.generation == generation and answer.skip_assignment
    assert answer.member_id.startswith("c1-2-"), "ids from the new epoch"
    sync = after.sync(answer.member_id, generation, instance_id="i1")
    assert after.response(sync).assignment == old
    assert describe(after).state is GroupState.STABLE


def test_empty_and_offsets_only_groups_are_restored() -> None:
    h = Harness()
    _generation, (member,) = form_group(h, 1)
    h.leave(LeavingMember(member))
    h.commit({tp("t", 0): 3}, group_id="simple")
    after = failover(h)
    assert describe(after).state is GroupState.EMPTY
    assert describe(after).generation == 2
    simple = describe(after, "simple")
    assert simple.state is GroupState.EMPTY and simple.offsets[0][1].offset == 3
    rid = after.join()
    after.tick(DELAY_MS)
    assert after.response(rid).generation == 3, "generations keep growing across failover"


def test_replay_failover_after_deletions_and_expiry() -> None:
    h = Harness()
    h.commit({tp("t", 0): 3}, group_id="a")
    h.commit({tp("t", 0): 3}, group_id="b")
    h.request(DeleteGroupsRequested, group_ids=("a",))
    after = failover(h)
    assert describe(after, "a").error is ErrorCode.GROUP_ID_NOT_FOUND
    assert describe(after, "b").offsets[0][1].offset == 3


def test_a_corrupt_partition_stops_the_load_loudly() -> None:
    h = Harness(load=False)
    with pytest.raises(CorruptGroupRecordError):
        h.handle(
            LoadPartition(now_ms=0, coordinator_epoch=1, records=(EncodedRecord(b"\x01", None),))
        )
