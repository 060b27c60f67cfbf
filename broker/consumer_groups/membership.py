"""The classic group protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, and their timers.

States and transitions (Kafka's GroupCoordinator, KIP-345 static membership):
- Empty --join--> PreparingRebalance: the join answers wait until every known member has rejoined
  (or the rebalance timeout evicts the stragglers); a group that was Empty first waits the
  initial rebalance delay, so that consumers starting together cause one rebalance.
- PreparingRebalance --all joined--> CompletingRebalance: generation + 1, a protocol every member
  supports is chosen, the leader (kept if still there, else the first member) gets the member list.
- CompletingRebalance --leader's SyncGroup replicated--> Stable: every SyncGroup is answered with
  its member's assignment only once the assignment is in the partition, so a member never acts on
  an assignment a new coordinator would not know.
- Any member joining, leaving, timing out or changing its protocols -> PreparingRebalance; the last
  member leaving -> Empty (generation + 1, persisted).
Fencing: a request with an unknown member id gets UNKNOWN_MEMBER_ID, with a stale generation
ILLEGAL_GENERATION, with a static instance id now owned by another member id FENCED_INSTANCE_ID.
"""

from __future__ import annotations

from broker.consumer_groups.actions import (
    LeaveResult,
    RespondHeartbeat,
    RespondJoin,
    RespondLeave,
    RespondSync,
)
from broker.consumer_groups.events import (
    NO_MEMBER_ID,
    HeartbeatReceived,
    JoinGroupRequested,
    LeaveGroupRequested,
    LeavingMember,
    SyncGroupRequested,
)
from broker.consumer_groups.group import Group, GroupState, Member
from broker.consumer_groups.state import (
    CoordinatorState,
    WriteKind,
)
from wire.error_codes import ErrorCode

EMPTY = GroupState.EMPTY
PREPARING = GroupState.PREPARING_REBALANCE
COMPLETING = GroupState.COMPLETING_REBALANCE
STABLE = GroupState.STABLE
DEAD = GroupState.DEAD


def check_member(
    group: Group, member_id: str, instance_id: str | None, generation: int | None
) -> ErrorCode:
    """The fencing checks every member request passes, in Kafka's order; NONE if it may proceed.

    `generation` None skips the generation check (JoinGroup carries none).
    """
    if instance_id is not None and group.instances.get(instance_id, member_id) != member_id:
        return ErrorCode.FENCED_INSTANCE_ID
    member = group.members.get(member_id)
    if member is None:
        return ErrorCode.UNKNOWN_MEMBER_ID
    if member.group_instance_id != instance_id:
        # A member id owned by a static member used without its instance id (or vice versa).
        return ErrorCode.FENCED_INSTANCE_ID
    if generation is not None and generation != group.generation:
        return ErrorCode.ILLEGAL_GENERATION
    return ErrorCode.NONE


# --- JoinGroup ------------------------------------------------------------------------------------


def on_join(state: CoordinatorState, event: JoinGroupRequested) -> None:
    config = state.config
    if not event.group_id:
        return state.respond(event.reject(ErrorCode.INVALID_GROUP_ID))
    session_timeout_ms = event.session_timeout_ms
    if not config.session_timeout_ms_min <= session_timeout_ms <= config.session_timeout_ms_max:
        return state.respond(event.reject(ErrorCode.INVALID_SESSION_TIMEOUT))
    if not event.protocol_type or not event.protocols:
        return state.respond(event.reject(ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
    group = state.groups.get(event.group_id)
    if group is not None and group.state is DEAD:
        # Being deleted: the client retries and finds a fresh group once the tombstone is in.
        return state.respond(event.reject(ErrorCode.COORDINATOR_NOT_AVAILABLE))
    if event.member_id == NO_MEMBER_ID:
        if group is None:
            group = Group(event.group_id, state_timestamp_ms=event.now_ms)
            state.groups[event.group_id] = group
        return _join_new_member(state, group, event)
    if group is None:
        return state.respond(event.reject(ErrorCode.UNKNOWN_MEMBER_ID))
    error = check_member(group, event.member_id, event.group_instance_id, None)
    if error is not ErrorCode.NONE:
        return state.respond(event.reject(error))
    return _join_known_member(state, group, group.members[event.member_id], event)


def _compatible(group: Group, event: JoinGroupRequested, *, excluding: str | None) -> bool:
    """Kafka's rule: same protocol type, and at least one protocol every member supports."""
    common = group.common_protocols(excluding=excluding)
    if common is None:  # nobody else: anything goes
        return True
    if event.protocol_type != group.protocol_type:
        return False
    return any(protocol.name in common for protocol in event.protocols)


def _new_member(state: CoordinatorState, event: JoinGroupRequested) -> Member:
    rebalance_timeout_ms = event.rebalance_timeout_ms
    if rebalance_timeout_ms <= 0:
        rebalance_timeout_ms = state.config.rebalance_timeout_ms_default
    member = Member(
        member_id=state.new_member_id(event.client_id),
        group_instance_id=event.group_instance_id,
        client_id=event.client_id,
        client_host=event.client_host,
        session_timeout_ms=event.session_timeout_ms,
        rebalance_timeout_ms=rebalance_timeout_ms,
        protocols=event.protocols,
        pending_join=event.request_id,
    )
    member.touch(event.now_ms)
    return member


def _join_new_member(state: CoordinatorState, group: Group, event: JoinGroupRequested) -> None:
    instance_id = event.group_instance_id
    if instance_id is not None and instance_id in group.instances:
        old = group.members[group.instances[instance_id]]
        return _replace_static_member(state, group, old, event)
    if len(group.members) >= state.config.group_size_max:
        return state.respond(event.reject(ErrorCode.GROUP_MAX_SIZE_REACHED))
    if not _compatible(group, event, excluding=None):
        return state.respond(event.reject(ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
    if not group.members:
        group.protocol_type = event.protocol_type
    group.add(_new_member(state, event))
    if group.state is PREPARING:
        # A newcomer during the initial delay pushes the delay back (up to the rebalance timeout),
        # so a fleet starting over a few seconds still rebalances once.
        if group.delay_deadline_ms is not None and group.join_deadline_ms is not None:
            delay_ms = state.config.initial_rebalance_delay_ms
            group.delay_deadline_ms = min(event.now_ms + delay_ms, group.join_deadline_ms)
    else:
        prepare_rebalance(state, group, event.now_ms)
    maybe_complete_join(state, group, event.now_ms)


def _join_known_member(
    state: CoordinatorState, group: Group, member: Member, event: JoinGroupRequested
) -> None:
    if not _compatible(group, event, excluding=member.member_id):
        return state.respond(event.reject(ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
    member.touch(event.now_ms)
    changed = member.protocols != event.protocols
    if group.state is COMPLETING and not changed:
        # The member lost our JoinGroup answer: give it again, nothing changed.
        return state.respond(state.join_response(group, member, event.request_id))
    if group.state is STABLE and not changed and member.member_id != group.leader_id:
        # A follower rejoining with the same subscription (Kafka: no rebalance). The leader
        # rejoining means it wants a new assignment, so it does rebalance.
        return state.respond(state.join_response(group, member, event.request_id))
    member.protocols = event.protocols
    if len(group.members) == 1:
        group.protocol_type = event.protocol_type  # alone, it may switch protocol types
    member.session_timeout_ms = event.session_timeout_ms
    if event.rebalance_timeout_ms > 0:
        member.rebalance_timeout_ms = event.rebalance_timeout_ms
    _set_pending_join(state, member, event.request_id)
    if group.state is not PREPARING:
        prepare_rebalance(state, group, event.now_ms)
    maybe_complete_join(state, group, event.now_ms)


def _set_pending_join(state: CoordinatorState, member: Member, request_id: int) -> None:
    if member.pending_join is not None and member.pending_join != request_id:
        # A retried JoinGroup supersedes the first; its connection is most likely gone.
        state.respond(
            RespondJoin(request_id=member.pending_join, error=ErrorCode.REBALANCE_IN_PROGRESS)
        )
    member.pending_join = request_id


def _replace_static_member(
    state: CoordinatorState, group: Group, old: Member, event: JoinGroupRequested
) -> None:
    """KIP-345: a static member restarted; its new member id takes the old one's place.

    The old incarnation is fenced at once (its waiting requests get FENCED_INSTANCE_ID). In a
    Stable group whose chosen protocol the member still supports, nothing is reassigned: the
    replacement is persisted, then the member is told its new id and syncs to get its previous
    assignment back. Anywhere else it simply joins the rebalance.
    """
    if not _compatible(group, event, excluding=old.member_id):
        return state.respond(event.reject(ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
    fence(state, old, ErrorCode.FENCED_INSTANCE_ID)
    was_leader = group.leader_id == old.member_id
    group.remove(old.member_id)
    new = _new_member(state, event)
    new.assignment = old.assignment
    group.add(new)
    if was_leader:
        group.leader_id = new.member_id
    if group.state is PREPARING:
        return maybe_complete_join(state, group, event.now_ms)
    if group.state is STABLE and group.select_protocol() == group.protocol_name:
        state.write_metadata(
            group,
            WriteKind.STATIC_REJOIN,
            request_id=event.request_id,
            member_id=new.member_id,
        )
        return None
    prepare_rebalance(state, group, event.now_ms)
    return maybe_complete_join(state, group, event.now_ms)


def fence(
    state: CoordinatorState, member: Member, error: ErrorCode, now_ms: int | None = None
) -> None:
    """Answer whatever `member` is waiting for with `error`.

    With `now_ms`, the member stays in the group and its session restarts now: it was blocked on
    us, not dead, and its old deadline may have passed while it waited.
    """
    if now_ms is not None and member.is_waiting:
        member.touch(now_ms)
    if member.pending_join is not None:
        state.respond(RespondJoin(request_id=member.pending_join, error=error))
        member.pending_join = None
    if member.pending_sync is not None:
        state.respond(RespondSync(request_id=member.pending_sync, error=error))
        member.pending_sync = None


# --- rebalance transitions ------------------------------------------------------------------------


def prepare_rebalance(state: CoordinatorState, group: Group, now_ms: int) -> None:
    """Start a rebalance: every member must rejoin within the group's rebalance timeout."""
    assert group.state in (EMPTY, STABLE, COMPLETING), group.state
    if group.state is COMPLETING:
        # Waiting syncs belong to the generation being abandoned. Waiting joins (a member that
        # just joined and caused this) belong to the next one: they stay.
        for member in group.members.values():
            if member.pending_sync is not None:
                member.touch(now_ms)
                state.respond(
                    RespondSync(
                        request_id=member.pending_sync, error=ErrorCode.REBALANCE_IN_PROGRESS
                    )
                )
                member.pending_sync = None
        group.sync_deadline_ms = None
    # A write of the old generation's assignment may still be in flight: it completes as a no-op.
    group.assignment_write = None
    was_empty = group.state is EMPTY
    state.set_state(group, PREPARING, now_ms)
    group.join_deadline_ms = now_ms + group.rebalance_timeout_ms()
    delay_ms = state.config.initial_rebalance_delay_ms
    group.delay_deadline_ms = None
    if was_empty and delay_ms > 0:
        group.delay_deadline_ms = min(now_ms + delay_ms, group.join_deadline_ms)


def maybe_complete_join(state: CoordinatorState, group: Group, now_ms: int) -> None:
    if group.state is not PREPARING:
        return
    if group.members:
        if not group.all_joined():
            return
        if group.delay_deadline_ms is not None and now_ms < group.delay_deadline_ms:
            return
    _complete_join(state, group, now_ms)


def _complete_join(state: CoordinatorState, group: Group, now_ms: int) -> None:
    """Everyone still here has rejoined: open the next generation."""
    group.generation += 1
    group.join_deadline_ms = group.delay_deadline_ms = None
    state.rebalance_count += 1
    if not group.members:
        state.set_state(group, EMPTY, now_ms)
        group.protocol_name = group.leader_id = None
        state.write_metadata(group, WriteKind.EMPTIED)
        return
    group.protocol_name = group.select_protocol()
    if group.leader_id not in group.members:
        group.leader_id = next(iter(group.members))
    state.set_state(group, COMPLETING, now_ms)
    group.sync_deadline_ms = now_ms + group.rebalance_timeout_ms()
    for member in group.members.values():
        assert member.pending_join is not None
        member.assignment = b""
        member.touch(now_ms)
        state.respond(state.join_response(group, member, member.pending_join))
        member.pending_join = None


def remove_members(
    state: CoordinatorState, group: Group, member_ids: list[str], now_ms: int
) -> None:
    """Remove members (left, timed out, evicted) and move the group on, once for all of them."""
    for member_id in member_ids:
        fence(state, group.remove(member_id), ErrorCode.UNKNOWN_MEMBER_ID)
    if member_ids and group.state in (STABLE, COMPLETING):
        prepare_rebalance(state, group, now_ms)
    maybe_complete_join(state, group, now_ms)


def check_timers(state: CoordinatorState, group: Group, now_ms: int) -> None:
    """Session, join and sync deadlines of one group, against `now_ms`."""
    if group.state in (EMPTY, DEAD):
        return
    expired = [
        member.member_id
        for member in group.members.values()
        if not member.is_waiting and member.session_deadline_ms <= now_ms
    ]
    state.expired_member_count += len(expired)
    remove_members(state, group, expired, now_ms)
    if group.state is PREPARING:
        assert group.join_deadline_ms is not None
        stragglers: list[str] = []
        if now_ms >= group.join_deadline_ms:
            stragglers = [m.member_id for m in group.members.values() if m.pending_join is None]
        remove_members(state, group, stragglers, now_ms)
    elif group.state is COMPLETING and group.assignment_write is None:
        assert group.sync_deadline_ms is not None
        if now_ms >= group.sync_deadline_ms:
            laggards = [m.member_id for m in group.members.values() if m.pending_sync is None]
            remove_members(state, group, laggards, now_ms)


def next_deadline_ms(group: Group) -> int | None:
    """The earliest `now_ms` at which `check_timers` could change this group.

    Only deadlines that can still fire count, so that a shell sleeping until this time never
    spins: the initial delay matters once everyone has joined, the sync deadline while the
    leader's assignment has not been sent.
    """
    deadlines = [
        member.session_deadline_ms for member in group.members.values() if not member.is_waiting
    ]
    if group.state is PREPARING:
        assert group.join_deadline_ms is not None
        deadlines.append(group.join_deadline_ms)
        if group.delay_deadline_ms is not None and group.all_joined():
            deadlines.append(group.delay_deadline_ms)
    if group.state is COMPLETING and group.assignment_write is None:
        assert group.sync_deadline_ms is not None
        deadlines.append(group.sync_deadline_ms)
    return min(deadlines, default=None)


# --- SyncGroup, Heartbeat, LeaveGroup -------------------------------------------------------------


def on_sync(state: CoordinatorState, event: SyncGroupRequested) -> None:
    group = state.groups.get(event.group_id)
    if group is None:
        return state.respond(event.reject(ErrorCode.UNKNOWN_MEMBER_ID))
    if group.state is DEAD:
        return state.respond(event.reject(ErrorCode.COORDINATOR_NOT_AVAILABLE))
    error = check_member(group, event.member_id, event.group_instance_id, event.generation)
    if error is not ErrorCode.NONE:
        return state.respond(event.reject(error))
    if (event.protocol_type and event.protocol_type != group.protocol_type) or (
        event.protocol_name and event.protocol_name != group.protocol_name
    ):
        return state.respond(event.reject(ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
    if group.state is PREPARING:
        return state.respond(event.reject(ErrorCode.REBALANCE_IN_PROGRESS))
    member = group.members[event.member_id]
    member.touch(event.now_ms)
    if group.state is STABLE:
        return state.respond(sync_response(group, member, event.request_id))
    assert group.state is COMPLETING
    if member.pending_sync is not None:
        state.respond(
            RespondSync(request_id=member.pending_sync, error=ErrorCode.REBALANCE_IN_PROGRESS)
        )
    member.pending_sync = event.request_id
    if member.member_id == group.leader_id and group.assignment_write is None:
        # Members the leader left out get an empty assignment; ids it invented are ignored.
        chosen = {item.member_id: item.assignment for item in event.assignments}
        for other in group.members.values():
            other.assignment = chosen.get(other.member_id, b"")
        group.assignment_write = state.write_metadata(group, WriteKind.ASSIGNMENT)
    return None


def sync_response(group: Group, member: Member, request_id: int) -> RespondSync:
    return RespondSync(
        request_id=request_id,
        error=ErrorCode.NONE,
        protocol_type=group.protocol_type,
        protocol_name=group.protocol_name or "",
        assignment=member.assignment,
    )


def complete_sync(state: CoordinatorState, group: Group, now_ms: int) -> None:
    """The leader's assignment is replicated: the group is Stable, every waiting sync answered."""
    assert group.state is COMPLETING
    state.set_state(group, STABLE, now_ms)
    group.sync_deadline_ms = None
    group.assignment_write = None
    for member in group.members.values():
        if member.pending_sync is not None:
            state.respond(sync_response(group, member, member.pending_sync))
            member.pending_sync = None
            member.touch(now_ms)  # it waited on us: its session starts now


def fail_sync(state: CoordinatorState, group: Group, error: ErrorCode, now_ms: int) -> None:
    """The assignment could not be written: waiting syncs get `error`, and the group rebalances."""
    for member in group.members.values():
        member.assignment = b""
        fence(state, member, error, now_ms)
    group.assignment_write = None
    prepare_rebalance(state, group, now_ms)
    maybe_complete_join(state, group, now_ms)


def on_heartbeat(state: CoordinatorState, event: HeartbeatReceived) -> None:
    group = state.groups.get(event.group_id)
    if group is None:
        return state.respond(event.reject(ErrorCode.UNKNOWN_MEMBER_ID))
    if group.state is DEAD:
        return state.respond(event.reject(ErrorCode.COORDINATOR_NOT_AVAILABLE))
    error = check_member(group, event.member_id, event.group_instance_id, event.generation)
    if error is ErrorCode.NONE:
        group.members[event.member_id].touch(event.now_ms)
        if group.state is PREPARING:
            error = ErrorCode.REBALANCE_IN_PROGRESS  # the signal to rejoin
    return state.respond(RespondHeartbeat(request_id=event.request_id, error=error))


def on_leave(state: CoordinatorState, event: LeaveGroupRequested) -> None:
    group = state.groups.get(event.group_id)
    if group is not None and group.state is DEAD:
        return state.respond(event.reject(ErrorCode.COORDINATOR_NOT_AVAILABLE))
    results: list[LeaveResult] = []
    leaving: list[str] = []
    for request in event.members:
        error, member_id = _resolve_leaving(group, request)
        if error is ErrorCode.NONE and member_id not in leaving:
            leaving.append(member_id)
        results.append(LeaveResult(request.member_id, request.group_instance_id, error))
    if group is not None:
        remove_members(state, group, leaving, event.now_ms)
    return state.respond(
        RespondLeave(request_id=event.request_id, error=ErrorCode.NONE, members=tuple(results))
    )


def _resolve_leaving(group: Group | None, request: LeavingMember) -> tuple[ErrorCode, str]:
    """Which member a LeaveGroup entry names: by instance id if given (KIP-345), else by id."""
    if group is None:
        return ErrorCode.UNKNOWN_MEMBER_ID, ""
    if request.group_instance_id is not None:
        member_id = group.instances.get(request.group_instance_id)
        if member_id is None:
            return ErrorCode.UNKNOWN_MEMBER_ID, ""
        if request.member_id not in (NO_MEMBER_ID, member_id):
            return ErrorCode.FENCED_INSTANCE_ID, ""
        return ErrorCode.NONE, member_id
    if request.member_id not in group.members:
        return ErrorCode.UNKNOWN_MEMBER_ID, ""
    return ErrorCode.NONE, request.member_id
