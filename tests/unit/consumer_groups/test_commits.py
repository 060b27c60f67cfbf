"""Goal: OffsetCommit, OffsetFetch, retention, reset-offsets, DeleteGroups, ListGroups and
DescribeGroups behave as documented, and nothing is acknowledged before it is in the partition."""

from __future__ import annotations

import pytest

from broker.consumer_groups.events import (
    DeleteGroupsRequested,
    DescribeGroupsRequested,
    LeavingMember,
    ListGroupsRequested,
    OffsetCommitRequested,
    OffsetFetchRequested,
    OffsetToCommit,
    UnloadPartition,
)
from broker.consumer_groups.group import GroupState
from broker.consumer_groups.offsets import OffsetCommitRecord, decode_record, replay
from wire.error_codes import ErrorCode

from .harness import DELAY_MS, Harness, fast_config, form_group, tp

HOUR_MS = 3_600_000


def fetch(h: Harness, group_id: str = "g", partitions=None) -> dict:
    answer = h.response(h.request(OffsetFetchRequested, group_id=group_id, partitions=partitions))
    assert answer.error is ErrorCode.NONE
    return {o.topic_partition: o.offset for o in answer.offsets}


def errors(h: Harness, request_id: int) -> dict:
    answer = h.response(request_id)
    assert answer.error is ErrorCode.NONE, answer
    return {r.topic_partition: r.error for r in answer.partitions}


def test_a_member_commits_and_fetches() -> None:
    h = Harness()
    generation, (first, _) = form_group(h, 2)
    h.auto_persist = False
    rid = h.commit({tp("t", 0): 10, tp("t", 1): 20}, member_id=first, generation=generation)
    assert h.response(rid) is None, "acknowledged only once replicated"
    assert fetch(h) == {}
    h.persist_all()
    assert errors(h, rid) == {tp("t", 0): ErrorCode.NONE, tp("t", 1): ErrorCode.NONE}
    assert fetch(h) == {tp("t", 0): 10, tp("t", 1): 20}
    assert fetch(h, partitions=(tp("t", 1), tp("t", 9))) == {tp("t", 1): 20, tp("t", 9): -1}
    assert fetch(h, group_id="unknown", partitions=(tp("t", 0),)) == {tp("t", 0): -1}
    assert replay(h.log).offsets == {"g": h.core._state.store.offsets["g"]}


def test_a_failed_commit_write_is_reported_and_not_applied() -> None:
    h = Harness()
    generation, (first, _) = form_group(h, 2)
    h.auto_persist = False
    rid = h.commit({tp("t", 0): 10}, member_id=first, generation=generation)
    h.fail_next()
    assert errors(h, rid) == {tp("t", 0): ErrorCode.COORDINATOR_NOT_AVAILABLE}
    assert fetch(h) == {}


def test_commit_state_rules() -> None:
    h = Harness()
    rid = h.commit({tp("t", 0): 1}, group_id="nobody", member_id="m", generation=1)
    assert h.response(rid).error is ErrorCode.UNKNOWN_MEMBER_ID
    generation, (first, second) = form_group(h, 2)
    # PreparingRebalance: members may still commit what they consumed in their generation.
    h.join(member_id=first)
    rid = h.commit({tp("t", 0): 1}, member_id=second, generation=generation)
    assert errors(h, rid) == {tp("t", 0): ErrorCode.NONE}
    h.join(member_id=second)
    # CompletingRebalance: the new assignment is not out yet.
    rid = h.commit({tp("t", 0): 2}, member_id=second, generation=generation + 1)
    assert h.response(rid).error is ErrorCode.REBALANCE_IN_PROGRESS
    assert fetch(h) == {tp("t", 0): 1}


def test_reset_offsets_only_while_the_group_is_empty() -> None:
    h = Harness()
    _generation, (first, second) = form_group(h, 2)
    refused = h.commit({tp("t", 0): 0})
    assert h.response(refused).error is ErrorCode.GROUP_NOT_EMPTY
    h.leave(LeavingMember(first), LeavingMember(second))
    assert h.core.statistics().groups_by_state[0] == (GroupState.EMPTY, 1)
    reset = h.commit({tp("t", 0): 0, tp("t", 1): 0})
    assert errors(h, reset) == {tp("t", 0): ErrorCode.NONE, tp("t", 1): ErrorCode.NONE}
    assert fetch(h) == {tp("t", 0): 0, tp("t", 1): 0}


def test_a_simple_consumer_commit_creates_an_empty_group() -> None:
    h = Harness()
    rid = h.commit({tp("t", 3): 7}, group_id="simple")
    assert errors(h, rid) == {tp("t", 3): ErrorCode.NONE}
    listed = h.response(h.request(ListGroupsRequested)).groups
    assert [(g.group_id, g.state) for g in listed] == [("simple", GroupState.EMPTY)]


def test_invalid_entries_are_refused_per_partition() -> None:
    h = Harness(fast_config(offset_metadata_bytes_max=4))
    offsets = (
        OffsetToCommit(tp("t", 0), 5, metadata="ok"),
        OffsetToCommit(tp("t", -1), 5),
        OffsetToCommit(tp("t", 2), -3),
        OffsetToCommit(tp("t", 3), 5, metadata="too long"),
    )
    rid = h.request(OffsetCommitRequested, group_id="g", offsets=offsets)
    result = errors(h, rid)
    assert result[tp("t", 0)] is ErrorCode.NONE
    assert all(result[p] is not ErrorCode.NONE for p in (tp("t", -1), tp("t", 2), tp("t", 3)))
    assert fetch(h) == {tp("t", 0): 5}
    only_bad = h.request(OffsetCommitRequested, group_id="g", offsets=offsets[1:2])
    assert errors(h, only_bad) == {tp("t", -1): ErrorCode.INVALID_REQUEST}


def test_commit_writes_in_flight_are_bounded() -> None:
    h = Harness(fast_config(pending_commit_writes_max=2))
    h.auto_persist = False
    h.commit({tp("t", 0): 1})
    h.commit({tp("t", 0): 2})
    third = h.commit({tp("t", 0): 3})
    assert h.response(third).error is ErrorCode.THROTTLED and h.response(third).error.retriable
    h.persist_all()
    assert fetch(h) == {tp("t", 0): 2}


def test_offsets_of_an_empty_group_expire_and_then_the_group_goes() -> None:
    h = Harness()
    generation, (member,) = form_group(h, 1)
    h.commit({tp("t", 0): 5}, member_id=member, generation=generation)
    h.tick(2 * HOUR_MS)
    assert h.heartbeat(member, generation) is ErrorCode.UNKNOWN_MEMBER_ID, "timed out long ago"
    empty_since = h.now_ms
    assert fetch(h) == {tp("t", 0): 5}, "retention counts from when the group became empty"
    h.tick(HOUR_MS - 60_000)
    assert fetch(h) == {tp("t", 0): 5}
    h.tick(60_000)
    assert h.now_ms == empty_since + HOUR_MS
    assert fetch(h) == {}
    assert h.response(h.request(ListGroupsRequested)).groups == ()
    tombstones = [decode_record(r) for r in h.log[-2:]]
    assert [r.value for r in tombstones] == [None, None]
    assert replay(h.log).group_ids() == []
    assert h.core.statistics().expired_offset_count == 1


def test_offsets_expire_per_partition_and_active_groups_keep_theirs() -> None:
    h = Harness()
    h.commit({tp("t", 0): 1}, group_id="simple")
    h.tick(HOUR_MS // 2)
    h.commit({tp("t", 1): 1}, group_id="simple")
    generation, (member,) = form_group(h, 1, group_id="active")
    h.commit({tp("t", 0): 9}, group_id="active", member_id=member, generation=generation)
    for _ in range(HOUR_MS // 2 // 5_000):
        h.tick(5_000)
        h.heartbeat(member, generation, group_id="active")
    assert fetch(h, "simple") == {tp("t", 1): 1}
    assert fetch(h, "active") == {tp("t", 0): 9}


def test_expiry_waits_for_writes_in_flight() -> None:
    h = Harness(fast_config(offsets_retention_ms=1_000, offsets_retention_check_interval_ms=1))
    h.commit({tp("t", 0): 1}, group_id="s")
    h.auto_persist = False
    h.now_ms += 10_000  # t-0 is long expired, but a newer commit is in flight when the scan runs
    newer = h.commit({tp("t", 0): 2}, group_id="s")
    h.tick()
    assert len(h.pending) == 1, "no tombstone ordered behind the commit"
    h.persist_all()
    assert errors(h, newer) == {tp("t", 0): ErrorCode.NONE}
    h.tick(1)
    assert fetch(h, "s") == {tp("t", 0): 2}, "the acknowledged commit survives"
    assert replay(h.log).offsets_of("s")[tp("t", 0)].offset == 2


def test_a_commit_after_partial_expiry_lands_after_the_tombstone() -> None:
    h = Harness(fast_config(offsets_retention_ms=1_000, offsets_retention_check_interval_ms=1))
    h.commit({tp("t", 0): 1}, group_id="s")
    h.tick(900)
    h.commit({tp("t", 1): 1}, group_id="s")
    h.auto_persist = False
    h.tick(100)  # t-0 expires, t-1 does not: the group stays
    newer = h.commit({tp("t", 0): 2}, group_id="s")
    h.persist_all()
    assert errors(h, newer) == {tp("t", 0): ErrorCode.NONE}
    assert fetch(h, "s") == {tp("t", 0): 2, tp("t", 1): 1}
    assert replay(h.log) == h.core._state.store


def test_delete_groups() -> None:
    h = Harness()
    form_group(h, 1, group_id="busy")
    h.commit({tp("t", 0): 4}, group_id="idle")
    h.auto_persist = False
    h.commit({tp("t", 1): 4}, group_id="idle")  # still in flight: the tombstones must cover it
    rid = h.request(DeleteGroupsRequested, group_ids=("idle", "busy", "nope", "idle"))
    assert h.response(rid) is None
    h.persist_all()
    results = {r.group_id: r.error for r in h.response(rid).groups}
    assert results == {
        "idle": ErrorCode.NONE,
        "busy": ErrorCode.GROUP_NOT_EMPTY,
        "nope": ErrorCode.GROUP_ID_NOT_FOUND,
    }
    assert "idle" not in replay(h.log).group_ids()
    assert fetch(h, "idle", partitions=(tp("t", 0), tp("t", 1))) == {tp("t", 0): -1, tp("t", 1): -1}
    h.auto_persist = True
    h.commit({tp("t", 0): 1}, group_id="fresh")  # a group never written... is written now
    h.request(DeleteGroupsRequested, group_ids=("fresh",))
    assert replay(h.log).group_ids() == ["busy"]


def test_a_failed_deletion_leaves_the_group_empty() -> None:
    h = Harness()
    h.commit({tp("t", 0): 4})
    h.auto_persist = False
    rid = h.request(DeleteGroupsRequested, group_ids=("g",))
    h.fail_next()
    assert h.response(rid).groups[0].error is ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert fetch(h) == {tp("t", 0): 4}
    assert h.response(h.request(ListGroupsRequested)).groups[0].state is GroupState.EMPTY


def test_an_empty_group_never_written_is_deleted_at_once() -> None:
    h = Harness()
    h.auto_persist = False
    h.commit({tp("t", 0): 4})
    h.fail_next()
    rid = h.request(DeleteGroupsRequested, group_ids=("g",))
    assert h.response(rid).groups[0].error is ErrorCode.NONE and not h.pending


def test_describe_shows_state_members_assignments_and_offsets() -> None:
    h = Harness()
    generation, members = form_group(h, 2, partition_counts={"t": 4})
    h.commit({tp("t", 0): 3}, member_id=members[0], generation=generation)
    answer = h.response(h.request(DescribeGroupsRequested, group_ids=("g", "nope")))
    described, missing = answer.groups
    assert missing.error is ErrorCode.GROUP_ID_NOT_FOUND
    assert described.state is GroupState.STABLE and described.protocol_name == "range"
    assert described.protocol_type == "consumer" and described.generation == generation
    assert [m.member_id for m in described.members] == members
    assert all(m.assignment and m.subscription for m in described.members)
    assert [(p, v.offset) for p, v in described.offsets] == [(tp("t", 0), 3)]


def test_list_groups_filters_by_state() -> None:
    h = Harness()
    form_group(h, 1, group_id="stable")
    h.join(group_id="joining")
    h.commit({tp("t", 0): 1}, group_id="empty")
    everything = h.response(h.request(ListGroupsRequested)).groups
    assert [g.group_id for g in everything] == ["empty", "joining", "stable"]
    states = (GroupState.STABLE, GroupState.EMPTY)
    some = h.response(h.request(ListGroupsRequested, states=states)).groups
    assert [g.group_id for g in some] == ["empty", "stable"]


def test_unload_answers_commits_in_flight() -> None:
    h = Harness()
    h.auto_persist = False
    rid = h.commit({tp("t", 0): 1})
    deletion = h.request(DeleteGroupsRequested, group_ids=("g",))
    h.handle(UnloadPartition(now_ms=h.now_ms))
    assert errors(h, rid) == {tp("t", 0): ErrorCode.NOT_COORDINATOR}
    assert h.response(deletion).groups[0].error is ErrorCode.NOT_COORDINATOR


def test_the_last_entry_for_a_partition_wins() -> None:
    h = Harness()
    offsets = (OffsetToCommit(tp("t", 0), 5), OffsetToCommit(tp("t", 0), 6))
    h.request(OffsetCommitRequested, group_id="g", offsets=offsets)
    assert fetch(h) == {tp("t", 0): 6}
    assert sum(isinstance(decode_record(r), OffsetCommitRecord) for r in h.log) == 1


def test_commit_keeps_a_member_alive() -> None:
    h = Harness()
    generation, (member,) = form_group(h, 1)
    for _ in range(5):
        h.tick(5_000)
        h.commit({tp("t", 0): 1}, member_id=member, generation=generation)
    assert h.heartbeat(member, generation) is ErrorCode.NONE
    assert DELAY_MS  # the group formed after the initial delay


def _retention_write_in_flight() -> Harness:
    """Group "s" with two offsets, t/1 expired and t/0 not: the retention scan has ordered the
    tombstone for t/1 alone (the group stays Empty), and that write is still in flight."""
    h = Harness(fast_config(offsets_retention_ms=HOUR_MS, offsets_retention_check_interval_ms=1))
    h.commit({tp("t", 1): 7}, group_id="s")
    h.tick(HOUR_MS * 2 // 3)
    h.commit({tp("t", 0): 3}, group_id="s")
    h.auto_persist = False
    h.tick(HOUR_MS * 2 // 3)
    (write,) = h.pending
    assert [decode_record(r).topic_partition for r in write.records] == [tp("t", 1)]
    return h


def _state(h: Harness, group_id: str) -> GroupState | None:
    listed = h.response(h.request(ListGroupsRequested)).groups
    return next((g.state for g in listed if g.group_id == group_id), None)


@pytest.mark.parametrize("retention_ok", [True, False], ids=["retention-ok", "retention-fails"])
@pytest.mark.parametrize("deletion_ok", [True, False], ids=["deletion-ok", "deletion-fails"])
def test_only_the_deletions_own_write_removes_or_revives_the_group(
    retention_ok: bool, deletion_ok: bool
) -> None:
    # Issue 17: retention's partial tombstones were reported first and removed the group while
    # the DeleteGroups tombstones were still in flight (AssertionError in _on_persisted), and a
    # failed retention write revived a group that the deletion was killing.
    h = _retention_write_in_flight()
    deletion = h.request(DeleteGroupsRequested, group_ids=("s",))
    assert _state(h, "s") is GroupState.DEAD and len(h.pending) == 2
    racing = h.commit({tp("t", 2): 1}, group_id="s")
    assert h.response(racing).error is ErrorCode.COORDINATOR_NOT_AVAILABLE, "retriable"
    h.persist_next() if retention_ok else h.fail_next()
    assert _state(h, "s") is GroupState.DEAD, "the deletion is still under way"
    assert h.response(deletion) is None
    h.persist_next() if deletion_ok else h.fail_next()
    (result,) = h.response(deletion).groups
    if deletion_ok:
        assert result.error is ErrorCode.NONE
        assert _state(h, "s") is None and "s" not in replay(h.log).group_ids()
        assert fetch(h, "s") == {}
    else:
        assert result.error is ErrorCode.COORDINATOR_NOT_AVAILABLE
        assert _state(h, "s") is GroupState.EMPTY
        kept = {tp("t", 0): 3} if retention_ok else {tp("t", 0): 3, tp("t", 1): 7}
        assert fetch(h, "s") == kept
    assert replay(h.log) == h.core._state.store


def test_a_commit_racing_a_delete_is_answered_either_way() -> None:
    # The documented choice (docs/consumer-groups.md, DeleteGroups): a commit ordered before the
    # deletion is acknowledged and then erased by it; one arriving while the group is Dead gets
    # COORDINATOR_NOT_AVAILABLE, and its retry after the tombstones creates a fresh group.
    h = Harness()
    h.commit({tp("t", 0): 4}, group_id="s")
    h.auto_persist = False
    before = h.commit({tp("t", 1): 5}, group_id="s")
    deletion = h.request(DeleteGroupsRequested, group_ids=("s",))
    during = h.commit({tp("t", 2): 6}, group_id="s")
    assert h.response(during).error is ErrorCode.COORDINATOR_NOT_AVAILABLE
    h.persist_all()
    assert errors(h, before) == {tp("t", 1): ErrorCode.NONE}
    assert h.response(deletion).groups[0].error is ErrorCode.NONE
    assert h.arrivals.index(h.response(before)) < h.arrivals.index(h.response(deletion))
    assert fetch(h, "s") == {}
    retried = h.commit({tp("t", 2): 6}, group_id="s")
    h.persist_all()
    assert errors(h, retried) == {tp("t", 2): ErrorCode.NONE}
    assert fetch(h, "s") == {tp("t", 2): 6}
