"""Goal: JoinGroup, SyncGroup, Heartbeat and LeaveGroup follow Kafka's classic group protocol,
including every fencing error, the rebalance and session timers, and the initial delay."""

from __future__ import annotations

from broker.consumer_groups.actions import PersistRecords, RespondJoin
from broker.consumer_groups.events import (
    DeleteGroupsRequested,
    DescribeGroupsRequested,
    HeartbeatReceived,
    JoinGroupRequested,
    LeavingMember,
    LoadPartition,
    UnloadPartition,
)
from broker.consumer_groups.group import GroupState
from broker.consumer_groups.offsets import GroupMetadataRecord, decode_record
from wire.error_codes import ErrorCode

from .harness import (
    DELAY_MS,
    REBALANCE_MS,
    SESSION_MS,
    Harness,
    fast_config,
    form_group,
    protocols_for,
    tp,
)


def describe(h: Harness, group_id: str = "g"):
    return h.response(h.request(DescribeGroupsRequested, group_ids=(group_id,))).groups[0]


def test_first_join_assigns_a_member_id_and_waits_for_the_initial_delay() -> None:
    h = Harness()
    rid = h.join(client_id="alice")
    assert h.response(rid) is None, "the join waits for the initial rebalance delay"
    assert describe(h).state is GroupState.PREPARING_REBALANCE
    h.tick(DELAY_MS - 1)
    assert h.response(rid) is None
    h.tick(1)
    answer = h.response(rid)
    assert answer.error is ErrorCode.NONE
    assert answer.member_id.startswith("alice-1-")
    assert answer.generation == 1
    assert answer.leader_id == answer.member_id
    assert answer.protocol_name == "range"
    assert [m.member_id for m in answer.members] == [answer.member_id]
    assert describe(h).state is GroupState.COMPLETING_REBALANCE


def test_a_newcomer_during_the_delay_extends_it() -> None:
    h = Harness()
    first = h.join()
    h.tick(DELAY_MS - 10)
    second = h.join()
    h.tick(10)
    assert h.response(first) is None and h.response(second) is None
    h.tick(DELAY_MS)
    assert h.response(first).generation == h.response(second).generation == 1


def test_three_consumers_form_a_stable_group_with_a_range_assignment() -> None:
    h = Harness()
    generation, members = form_group(h, 3, partition_counts={"t": 6})
    description = describe(h)
    assert description.state is GroupState.STABLE
    assert description.generation == generation == 1
    assert [m.member_id for m in description.members] == members
    for member_id in members:
        assert h.heartbeat(member_id, generation) is ErrorCode.NONE
    # The assignment reached the partition before anyone was told about it.
    records = [decode_record(r) for r in h.log]
    assert isinstance(records[-1], GroupMetadataRecord)
    assert [m.member_id for m in records[-1].value.members] == members


def test_join_errors() -> None:
    h = Harness()
    too_short = h.join(session_ms=999)
    assert h.response(too_short).error is ErrorCode.INVALID_SESSION_TIMEOUT
    too_long = h.join(session_ms=60_001)
    assert h.response(too_long).error is ErrorCode.INVALID_SESSION_TIMEOUT
    assert h.response(h.join(member_id="ghost")).error is ErrorCode.UNKNOWN_MEMBER_ID
    assert h.response(h.join(group_id="")).error is not ErrorCode.NONE
    empty_protocols = h.join(protocols=())
    assert h.response(empty_protocols).error is not ErrorCode.NONE
    form_group(h, 1)
    assert h.response(h.join(member_id="ghost")).error is ErrorCode.UNKNOWN_MEMBER_ID
    # No protocol in common with the group: refused, and the group is untouched.
    other = h.join(names=("roundrobin",))
    assert h.response(other).error is not ErrorCode.NONE
    assert describe(h).state is GroupState.STABLE


def test_group_size_is_bounded() -> None:
    h = Harness(fast_config(group_size_max=2))
    form_group(h, 2)
    third = h.join()
    assert h.response(third).error is not ErrorCode.NONE
    assert describe(h).state is GroupState.STABLE


def test_the_protocol_every_member_supports_and_most_prefer_wins() -> None:
    h = Harness()
    a = h.join(names=("sticky", "range"))
    b = h.join(names=("range", "sticky"))
    c = h.join(names=("range", "sticky", "roundrobin"))
    h.tick(DELAY_MS)
    assert {h.response(r).protocol_name for r in (a, b, c)} == {"range"}


def test_a_new_member_triggers_a_rebalance_that_waits_for_everyone() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    newcomer = h.join(client_id="new")
    assert h.heartbeat(first, generation) is ErrorCode.REBALANCE_IN_PROGRESS
    assert h.response(newcomer) is None
    rejoin_first = h.join(member_id=first)
    assert h.response(rejoin_first) is None, "waits for the second member"
    rejoin_second = h.join(member_id=second)
    answers = [h.response(r) for r in (newcomer, rejoin_first, rejoin_second)]
    assert {a.generation for a in answers} == {generation + 1}
    assert answers[1].leader_id == first, "the leader stays the leader"
    assert len(answers[1].members) == 3 and not answers[0].members


def test_stragglers_are_evicted_when_the_rebalance_times_out() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    rejoin = h.join(member_id=first)
    # `second` keeps heartbeating (so its session lives) but never rejoins.
    for _ in range(REBALANCE_MS // 5_000 - 1):
        h.tick(5_000)
        assert h.heartbeat(second, generation) is ErrorCode.REBALANCE_IN_PROGRESS
    h.tick(4_999)
    assert h.response(rejoin) is None
    h.tick(1)
    answer = h.response(rejoin)
    assert answer.error is ErrorCode.NONE and answer.generation == generation + 1
    assert [m.member_id for m in answer.members] == [first]
    assert h.heartbeat(second, generation) is ErrorCode.UNKNOWN_MEMBER_ID


def test_a_silent_member_times_out_and_the_group_rebalances() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    h.tick(SESSION_MS - 1)
    assert h.heartbeat(first, generation) is ErrorCode.NONE
    h.tick(1)
    assert describe(h).state is GroupState.PREPARING_REBALANCE
    assert h.heartbeat(second, generation) is ErrorCode.UNKNOWN_MEMBER_ID
    assert h.core.statistics().expired_member_count == 1
    rejoin = h.join(member_id=first)
    assert h.response(rejoin).generation == generation + 1


def test_stale_generations_and_unknown_members_are_fenced() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    assert h.heartbeat(first, generation - 1) is ErrorCode.ILLEGAL_GENERATION
    assert h.heartbeat("ghost", generation) is ErrorCode.UNKNOWN_MEMBER_ID
    assert h.heartbeat(first, generation, group_id="nope") is ErrorCode.UNKNOWN_MEMBER_ID
    assert h.response(h.sync(first, generation + 1)).error is ErrorCode.ILLEGAL_GENERATION
    assert h.response(h.sync("ghost", generation)).error is ErrorCode.UNKNOWN_MEMBER_ID
    assert h.response(h.sync(first, 1, group_id="nope")).error is ErrorCode.UNKNOWN_MEMBER_ID
    stale_commit = h.commit({tp("t", 0): 5}, member_id=first, generation=generation - 1)
    assert h.response(stale_commit).error is ErrorCode.ILLEGAL_GENERATION
    # After a rebalance the old generation is refused everywhere.
    h.join(member_id=first)
    h.join(member_id=second)
    assert h.heartbeat(first, generation) is ErrorCode.ILLEGAL_GENERATION
    assert h.response(h.sync(second, generation)).error is ErrorCode.ILLEGAL_GENERATION


def test_sync_waits_for_the_assignment_write() -> None:
    h = Harness()
    h.auto_persist = False
    a, b = h.join(), h.join()
    h.tick(DELAY_MS)
    leader = h.response(a) if h.response(a).members else h.response(b)
    follower = h.response(b) if leader is h.response(a) else h.response(a)
    early = h.sync(follower.member_id, 1)
    assert h.response(early) is None, "the follower waits for the leader's assignment"
    leader_sync = h.sync(leader.member_id, 1, assignments={follower.member_id: b"x"})
    assert h.response(leader_sync) is None and len(h.pending) == 1
    assert h.heartbeat(follower.member_id, 1) is ErrorCode.NONE
    h.persist_next()
    assert h.response(early).assignment == b"x"
    assert h.response(leader_sync).assignment == b"", "left out by the leader: nothing"
    assert describe(h).state is GroupState.STABLE
    assert h.response(h.sync(follower.member_id, 1)).assignment == b"x"


def test_sync_during_preparing_rebalance_is_refused() -> None:
    h = Harness()
    generation, (first, _second) = form_group(h, 2)
    h.join(member_id=first)
    assert h.response(h.sync(first, generation)).error is ErrorCode.REBALANCE_IN_PROGRESS


def test_a_failed_assignment_write_fails_the_syncs_and_rebalances() -> None:
    h = Harness()
    h.auto_persist = False
    a, b = h.join(), h.join()
    h.tick(DELAY_MS)
    ids = [h.response(a).member_id, h.response(b).member_id]
    syncs = [h.sync(member_id, 1, assignments={ids[0]: b"p0", ids[1]: b"p1"}) for member_id in ids]
    h.fail_next(ErrorCode.NOT_COORDINATOR)
    assert [h.response(r).error for r in syncs] == [ErrorCode.NOT_COORDINATOR] * 2
    assert describe(h).state is GroupState.PREPARING_REBALANCE
    assert all(m.assignment == b"" for m in describe(h).members)


def test_members_that_never_sync_are_evicted() -> None:
    h = Harness()
    a, b = h.join(), h.join()
    h.tick(DELAY_MS)
    ids = [h.response(a).member_id, h.response(b).member_id]
    follower = next(i for i in ids if i != h.response(a).leader_id)
    h.sync(follower, 1)
    # The leader never syncs: the follower's sync is answered when the sync deadline evicts it.
    h.heartbeat(follower, 1)
    h.tick(REBALANCE_MS)
    description = describe(h)
    assert [m.member_id for m in description.members] == [follower]
    assert description.state is GroupState.PREPARING_REBALANCE


def test_leave_rebalances_and_the_last_leave_empties_the_group() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    answer = h.leave(LeavingMember(first), LeavingMember("ghost"))
    assert [r.error for r in answer.members] == [ErrorCode.NONE, ErrorCode.UNKNOWN_MEMBER_ID]
    assert describe(h).state is GroupState.PREPARING_REBALANCE
    h.leave(LeavingMember(second))
    description = describe(h)
    assert description.state is GroupState.EMPTY
    assert description.generation == generation + 1
    last = decode_record(h.log[-1])
    assert last.value.generation == generation + 1 and last.value.members == ()
    unknown_group = h.leave(LeavingMember("x"), group_id="nope")
    assert unknown_group.members[0].error is ErrorCode.UNKNOWN_MEMBER_ID


def test_rejoining_follower_with_the_same_subscription_does_not_rebalance() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    leader = describe(h).leader_id
    follower = second if leader == first else first
    answer = h.response(h.join(member_id=follower))
    assert answer.generation == generation and describe(h).state is GroupState.STABLE
    h.join(member_id=leader)
    assert describe(h).state is GroupState.PREPARING_REBALANCE, "the leader asks for a rebalance"


def test_a_changed_subscription_rebalances() -> None:
    h = Harness()
    _generation, (first, _second) = form_group(h, 2)
    h.join(member_id=first, topics=("t", "u"))
    assert describe(h).state is GroupState.PREPARING_REBALANCE


def test_a_lost_join_response_is_given_again_while_completing() -> None:
    h = Harness()
    a = h.join()
    h.tick(DELAY_MS)
    member_id = h.response(a).member_id
    again = h.response(h.join(member_id=member_id))
    assert again.generation == 1 and again.members, "the leader gets the member list again"


def test_a_retried_join_supersedes_the_first() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2)
    one = h.join(member_id=first)
    two = h.join(member_id=first)
    assert h.response(one).error is ErrorCode.REBALANCE_IN_PROGRESS
    h.join(member_id=second)
    assert h.response(two).generation == generation + 1


def test_static_member_restart_gets_its_assignment_back_without_a_rebalance() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2, instance_ids=["i0", "i1"])
    before = describe(h).members
    h.auto_persist = False
    restarted = h.join(instance_id="i1", client_id="c1")
    assert h.response(restarted) is None, "answered once the new member id is persisted"
    assert h.heartbeat(second, generation, instance_id="i1") is ErrorCode.FENCED_INSTANCE_ID
    h.persist_all()
    answer = h.response(restarted)
    assert answer.error is ErrorCode.NONE and answer.skip_assignment
    assert answer.generation == generation and answer.member_id != second
    assert describe(h).state is GroupState.STABLE
    sync = h.sync(answer.member_id, generation, instance_id="i1")
    old_assignment = next(m.assignment for m in before if m.member_id == second)
    assert h.response(sync).assignment == old_assignment
    assert h.heartbeat(first, generation, instance_id="i0") is ErrorCode.NONE
    stale = h.commit({tp("t", 0): 1}, member_id=second, generation=generation, instance_id="i1")
    assert h.response(stale).error is ErrorCode.FENCED_INSTANCE_ID


def test_static_member_fencing_and_leaving_by_instance_id() -> None:
    h = Harness()
    generation, (first, _second) = form_group(h, 2, instance_ids=["i0", "i1"])
    assert h.heartbeat(first, generation, instance_id="i1") is ErrorCode.FENCED_INSTANCE_ID
    assert h.heartbeat(first, generation) is ErrorCode.FENCED_INSTANCE_ID, "id without instance"
    wrong = h.leave(LeavingMember(first, "i1"))
    assert wrong.members[0].error is ErrorCode.FENCED_INSTANCE_ID
    missing = h.leave(LeavingMember("", "i9"))
    assert missing.members[0].error is ErrorCode.UNKNOWN_MEMBER_ID
    assert h.leave(LeavingMember("", "i1")).members[0].error is ErrorCode.NONE
    assert [m.member_id for m in describe(h).members] == [first]


def test_static_member_that_stays_away_times_out() -> None:
    h = Harness()
    generation, (first, _second) = form_group(h, 2, instance_ids=["i0", "i1"])
    h.tick(SESSION_MS // 2)
    h.heartbeat(first, generation, instance_id="i0")
    h.tick(SESSION_MS // 2)
    assert describe(h).state is GroupState.PREPARING_REBALANCE
    late = h.join(instance_id="i1")
    h.join(member_id=first, instance_id="i0")
    assert h.response(late).generation == generation + 1


def test_static_rejoin_during_a_rebalance_fences_the_old_join() -> None:
    h = Harness()
    generation, (first, second) = form_group(h, 2, instance_ids=["i0", "i1"])
    h.join(client_id="newcomer")
    old_join = h.join(member_id=second, instance_id="i1")
    assert h.response(old_join) is None
    new_join = h.join(instance_id="i1")
    assert h.response(old_join).error is ErrorCode.FENCED_INSTANCE_ID
    h.join(member_id=first, instance_id="i0")
    answer = h.response(new_join)
    assert answer.error is ErrorCode.NONE and answer.generation == generation + 1


def test_static_leader_restart_keeps_the_leadership() -> None:
    h = Harness()
    generation, members = form_group(h, 2, instance_ids=["i0", "i1"])
    leader = describe(h).leader_id
    instance = "i0" if leader == members[0] else "i1"
    answer = h.response(h.join(instance_id=instance))
    assert describe(h).leader_id == answer.member_id == answer.leader_id
    assert answer.generation == generation and answer.skip_assignment and answer.members


def test_static_rejoin_whose_write_fails_gets_the_error() -> None:
    h = Harness()
    form_group(h, 1, instance_ids=["i0"])
    h.auto_persist = False
    rid = h.join(instance_id="i0")
    h.fail_next()
    assert h.response(rid).error is ErrorCode.COORDINATOR_NOT_AVAILABLE


def test_requests_before_load_and_after_unload() -> None:
    h = Harness(load=False)
    assert h.heartbeat("m", 1) is ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
    h.handle(LoadPartition(now_ms=h.now_ms, coordinator_epoch=3))
    waiting = h.join(client_id="x")
    assert h.response(waiting) is None
    h.handle(UnloadPartition(now_ms=h.now_ms))
    assert h.response(waiting).error is ErrorCode.NOT_COORDINATOR
    assert h.heartbeat("m", 1) is ErrorCode.NOT_COORDINATOR
    assert h.tick(SESSION_MS) == []
    assert not h.core.statistics().loaded


def test_next_deadline_and_statistics() -> None:
    h = Harness()
    assert h.core.next_deadline_ms() == h.now_ms + fast_config().offsets_retention_check_interval_ms
    h.join()
    assert h.core.next_deadline_ms() == h.now_ms + DELAY_MS
    _generation, _ = form_group(h, 2, group_id="other", instance_ids=["s", None])
    stats = h.core.statistics()
    assert stats.loaded and stats.group_count == 2 and stats.member_count == 3
    assert stats.static_member_count == 1
    by_state = dict(stats.groups_by_state)
    # form_group's tick also ended the first group's initial delay.
    assert by_state[GroupState.COMPLETING_REBALANCE] == 1 and by_state[GroupState.STABLE] == 1


def test_member_ids_are_unique_across_coordinator_epochs() -> None:
    h = Harness(epoch=7)
    rid = h.join(client_id="")
    h.tick(DELAY_MS)
    assert h.response(rid).member_id == "member-7-1"


def test_heartbeat_during_completing_rebalance_is_fine() -> None:
    h = Harness()
    a = h.join()
    h.tick(DELAY_MS)
    member_id = h.response(a).member_id
    rid = h.request(HeartbeatReceived, group_id="g", generation=1, member_id=member_id)
    assert h.response(rid).error is ErrorCode.NONE


def test_join_for_a_group_being_deleted_is_retriable() -> None:
    h = Harness()
    h.commit({tp("t", 0): 3})
    h.auto_persist = False
    h.request(DeleteGroupsRequested, group_ids=("g",))
    rid = h.join()
    assert h.response(rid).error is ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert h.response(rid).error.retriable


def test_every_response_names_its_request() -> None:
    h = Harness()
    actions = h.handle(
        JoinGroupRequested(
            now_ms=h.now_ms,
            request_id=99,
            group_id="g",
            session_timeout_ms=5,
            protocol_type="consumer",
            protocols=protocols_for(),
        )
    )
    assert actions == [RespondJoin(request_id=99, error=ErrorCode.INVALID_SESSION_TIMEOUT)]
    assert not any(isinstance(a, PersistRecords) for a in actions)


def test_a_join_while_completing_waits_for_the_next_generation() -> None:
    h = Harness()
    a, b = h.join(), h.join()
    h.tick(DELAY_MS)
    first, second = h.response(a).member_id, h.response(b).member_id
    early_sync = h.sync(second, 1)
    newcomer = h.join(client_id="late")
    assert h.response(early_sync).error is ErrorCode.REBALANCE_IN_PROGRESS
    assert h.response(newcomer) is None, "the newcomer's join waits for the new generation"
    h.join(member_id=first)
    h.join(member_id=second)
    assert h.response(newcomer).generation == 2


def test_a_member_blocked_on_us_is_not_evicted_for_the_wait() -> None:
    h = Harness()
    h.auto_persist = False
    a, b = h.join(), h.join()
    h.tick(DELAY_MS)
    leader = h.response(a).leader_id
    follower = (
        h.response(b).member_id if h.response(a).member_id == leader else h.response(a).member_id
    )
    leader_sync = h.sync(leader, 1, assignments={})
    h.tick(SESSION_MS)  # the follower never synced nor heartbeated: it goes
    assert h.response(leader_sync).error is ErrorCode.REBALANCE_IN_PROGRESS
    assert [m.member_id for m in describe(h).members] == [leader]
    assert h.core.next_deadline_ms() > h.now_ms
    h.tick(SESSION_MS - 1)
    assert [m.member_id for m in describe(h).members] == [leader], "its session restarted"
    assert follower not in [m.member_id for m in describe(h).members]
