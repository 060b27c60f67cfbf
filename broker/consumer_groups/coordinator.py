"""GroupCoordinatorCore: every group of one __consumer_offsets partition, as a pure state machine.

`handle(event) -> list[Action]` is the whole interface (dask's handle_stimulus, STYLE §6): events
are facts (a request arrived, time is now T, a write was replicated), actions are orders (append
these records, send this response). No clock, network, disk or randomness lives here: time is the
`now_ms` of each event, member ids come from the coordinator epoch and a counter.

The caller's duties (the trio service):
1. Create one core per coordinator partition this broker leads; feed `LoadPartition` with the
   partition's records (and a coordinator epoch that grows per leadership) before anything else.
   Until then requests get COORDINATOR_LOAD_IN_PROGRESS. On losing leadership feed
   `UnloadPartition` (every waiting request gets NOT_COORDINATOR) and drop the core.
2. Append each `PersistRecords` to the partition, in order, as one batch (transactional when it
   names a producer), and each `PersistMarker` as a transaction marker, in the same order; report
   each outcome as `RecordsPersisted(token)` (in the order ordered) or `AppendFailed(token)`.
   Responses that depend on a write are emitted only after its report, so every response can be
   sent at once.
3. Feed `Tick(now_ms)` periodically, or at `next_deadline_ms()`: sessions, rebalance timeouts and
   offset retention are only checked then.
Responses for a request may come from a later `handle` call (JoinGroup waits for the rebalance,
SyncGroup for the assignment write, OffsetCommit for its write); each carries its request id.
"""

from __future__ import annotations

import dataclasses
import functools

from broker.consumer_groups import membership
from broker.consumer_groups.actions import (
    Action,
    FetchedOffset,
    GroupDescription,
    GroupResult,
    ListedGroup,
    PartitionResult,
    RespondDeleteGroups,
    RespondDescribeGroups,
    RespondListGroups,
    RespondOffsetCommit,
    RespondOffsetFetch,
    RespondTxnMarker,
    RespondTxnOffsetCommit,
)
from broker.consumer_groups.config import GroupConfig
from broker.consumer_groups.events import (
    NO_MEMBER_ID,
    AppendFailed,
    DeleteGroupsRequested,
    DescribeGroupsRequested,
    Event,
    HeartbeatReceived,
    JoinGroupRequested,
    LeaveGroupRequested,
    ListGroupsRequested,
    LoadPartition,
    OffsetCommitRequested,
    OffsetFetchRequested,
    RecordsPersisted,
    SyncGroupRequested,
    Tick,
    TxnMarkerRequested,
    TxnOffsetCommitRequested,
    UnloadPartition,
)
from broker.consumer_groups.group import Group, GroupState, JoinProtocol, Member, TopicPartition
from broker.consumer_groups.offsets import (
    GroupMetadataValue,
    GroupRecord,
    GroupStore,
    MarkerRecord,
    MemberMetadata,
    OffsetCommitRecord,
    OffsetCommitValue,
    TransactionalRecord,
    decode_entry,
)
from broker.consumer_groups.state import (
    CoordinatorState,
    CoreStatus,
    PendingWrite,
    WriteKind,
    route_event,
)
from wire.error_codes import ErrorCode

EMPTY = GroupState.EMPTY
DEAD = GroupState.DEAD


@dataclasses.dataclass(frozen=True, slots=True)
class GroupCoordinatorStatistics:
    """A snapshot for metrics: counts now, and counters since the core was created."""

    loaded: bool
    group_count: int
    groups_by_state: tuple[tuple[GroupState, int], ...]
    member_count: int
    static_member_count: int
    offset_count: int
    pending_txn_offset_count: int  # transactional offsets waiting for their marker
    pending_write_count: int
    rebalance_count: int
    expired_member_count: int
    expired_offset_count: int


class GroupCoordinatorCore:
    """All groups of one coordinator partition. See the module docstring for the caller's duties.

    With `validate=True` (tests, simulation) the whole state is checked after every event.
    `first_member_sequence` continues the member id sequence of an earlier core loaded with the
    same coordinator epoch (the shell reloading a partition whose core failed): ids it handed out
    but never wrote must not be handed out again.
    """

    def __init__(
        self,
        config: GroupConfig | None = None,
        *,
        validate: bool = False,
        first_member_sequence: int = 1,
    ) -> None:
        config = config if config is not None else GroupConfig()
        config.validate()
        assert first_member_sequence >= 1, first_member_sequence
        self._state = CoordinatorState(config, next_member_sequence=first_member_sequence)
        self._validate = validate

    # --- the interface ----------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to carry out, in order."""
        state = self._state
        assert not state.out
        route_event(state.status, event, state.respond, self._dispatch)
        actions, state.out = state.out, []
        if self._validate:
            self.validate()
        return actions

    @functools.singledispatchmethod
    def _dispatch(self, event: Event) -> None:
        raise AssertionError(f"unknown event {event!r}")

    @property
    def next_member_sequence(self) -> int:
        """The sequence number of the next member id: a successor core starts from here."""
        return self._state.next_member_sequence

    def next_deadline_ms(self) -> int | None:
        """The earliest `now_ms` at which a `Tick` has something to do (None: nothing loaded)."""
        state = self._state
        if state.status is not CoreStatus.ACTIVE:
            return None
        deadlines = [state.next_retention_check_ms]
        for group in state.groups.values():
            deadline = membership.next_deadline_ms(group)
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines)

    def statistics(self) -> GroupCoordinatorStatistics:
        state = self._state
        groups = list(state.groups.values())
        members = [member for group in groups for member in group.members.values()]
        return GroupCoordinatorStatistics(
            loaded=state.status is CoreStatus.ACTIVE,
            group_count=len(groups),
            groups_by_state=tuple(
                (kind, sum(1 for group in groups if group.state is kind)) for kind in GroupState
            ),
            member_count=len(members),
            static_member_count=sum(1 for m in members if m.group_instance_id is not None),
            offset_count=state.store.offset_count(),
            pending_txn_offset_count=state.store.pending_offset_count(),
            pending_write_count=len(state.writes),
            rebalance_count=state.rebalance_count,
            expired_member_count=state.expired_member_count,
            expired_offset_count=state.expired_offset_count,
        )

    # --- lifecycle --------------------------------------------------------------------------------

    @_dispatch.register
    def _on_load(self, event: LoadPartition) -> None:
        state = self._state
        assert state.status is CoreStatus.LOADING, "one core per leadership: load it once"
        # Decode everything before applying anything: a corrupt partition raises
        # CorruptGroupRecordError and leaves this core untouched (still loading).
        records = [decode_entry(encoded) for encoded in event.records]
        for record in records:
            state.store.apply(record)
        state.coordinator_epoch = event.coordinator_epoch
        for group_id in state.store.group_ids():
            metadata = state.store.metadata.get(group_id)
            state.groups[group_id] = _loaded_group(group_id, metadata, event.now_ms)
        state.status = CoreStatus.ACTIVE
        interval_ms = state.config.offsets_retention_check_interval_ms
        state.next_retention_check_ms = event.now_ms + interval_ms

    @_dispatch.register
    def _on_unload(self, event: UnloadPartition) -> None:
        state = self._state
        for group in state.groups.values():
            for member in group.members.values():
                membership.fence(state, member, ErrorCode.NOT_COORDINATOR)
        for write in state.writes.values():
            self._answer_write(write, ErrorCode.NOT_COORDINATOR)
        state.groups.clear()
        state.writes.clear()
        state.store = GroupStore()  # the next leader replays the partition; we forget it
        state.status = CoreStatus.UNLOADED

    @_dispatch.register
    def _on_tick(self, event: Tick) -> None:
        state = self._state
        for group_id in sorted(state.groups):
            membership.check_timers(state, state.groups[group_id], event.now_ms)
        if event.now_ms >= state.next_retention_check_ms:
            state.next_retention_check_ms = (
                event.now_ms + state.config.offsets_retention_check_interval_ms
            )
            self._expire(event.now_ms)

    # --- write completion -------------------------------------------------------------------------

    @_dispatch.register
    def _on_persisted(self, event: RecordsPersisted) -> None:
        state = self._state
        # The partition commits in order, so reports must come in order: replaying the partition
        # must apply these records in the same order as we do now.
        assert event.token == min(state.writes), (event.token, sorted(state.writes))
        write = self._pop_write(event.token)
        if write.kind is WriteKind.MARKER:
            marker = MarkerRecord(write.producer_id, write.producer_epoch, write.commit)
            state.store.apply(marker)
            return self._answer_write(write, ErrorCode.NONE)
        if write.kind is WriteKind.TXN_COMMIT:
            # Pending offsets of the producer: invisible until its COMMIT marker.
            for record in _offset_records(write):
                state.store.apply(
                    TransactionalRecord(write.producer_id, write.producer_epoch, record)
                )
        else:
            for entry in write.records:
                state.store.apply(entry)
        group = state.groups[write.group_ids[0]]
        if write.kind is WriteKind.ASSIGNMENT and group.assignment_write == write.token:
            assert group.generation == write.generation
            membership.complete_sync(state, group, event.now_ms)
        elif write.kind is WriteKind.STATIC_REJOIN:
            member = group.members.get(write.member_id or "")
            if (
                member is not None
                and member.pending_join == write.request_id
                and group.state is GroupState.STABLE
            ):
                response = state.join_response(group, member, member.pending_join)
                state.respond(dataclasses.replace(response, skip_assignment=True))
                member.pending_join = None
                member.touch(event.now_ms)
        elif write.kind in (WriteKind.COMMIT, WriteKind.TXN_COMMIT):
            self._answer_write(write, ErrorCode.NONE)
        elif write.kind is WriteKind.DELETION:
            for group_id in write.group_ids:
                # Only the write that made the group Dead removes it: an earlier deletion write
                # of the same group (retention's tombstones for some expired offsets) may be
                # reported first, while the DeleteGroups tombstones are still in flight.
                if state.groups[group_id].deletion_write == write.token:
                    assert not state.groups[group_id].pending_tokens, group_id
                    del state.groups[group_id]
            self._answer_write(write, ErrorCode.NONE)
        return None

    @_dispatch.register
    def _on_append_failed(self, event: AppendFailed) -> None:
        state = self._state
        write = self._pop_write(event.token)
        if write.kind is WriteKind.MARKER:
            # The pending offsets stay pending: the transaction coordinator retries the marker.
            return self._answer_write(write, event.error)
        group = state.groups[write.group_ids[0]]
        if write.kind is WriteKind.ASSIGNMENT and group.assignment_write == write.token:
            membership.fail_sync(state, group, event.error, event.now_ms)
        elif write.kind is WriteKind.STATIC_REJOIN:
            member = group.members.get(write.member_id or "")
            # Only a takeover still waiting in a Stable group is failed; if a rebalance started
            # meanwhile, the member's join simply takes part in it.
            stable = group.state is GroupState.STABLE
            if stable and member is not None and member.pending_join == write.request_id:
                membership.fence(state, member, event.error, event.now_ms)
        elif write.kind is WriteKind.DELETION:
            for group_id in write.group_ids:
                # Only the failure of the write that made the group Dead revives it; a failed
                # earlier write leaves a later deletion under way.
                dead = state.groups[group_id]
                if dead.deletion_write == write.token:
                    dead.deletion_write = None
                    state.set_state(dead, EMPTY, event.now_ms)
        # EMPTIED needs nothing: the group is Empty whatever the partition says, and its next
        # transition writes the metadata again.
        self._answer_write(write, event.error)
        return None

    def _pop_write(self, token: int) -> PendingWrite:
        state = self._state
        write = state.writes.pop(token)
        for group_id in write.group_ids:
            state.groups[group_id].pending_tokens.remove(token)
        return write

    def _answer_write(self, write: PendingWrite, error: ErrorCode) -> None:
        """Answer the request a commit or deletion write carries (if any) with `error`."""
        if write.request_id is None:
            return
        if write.kind is WriteKind.MARKER:
            self._state.respond(RespondTxnMarker(request_id=write.request_id, error=error))
        elif write.kind in (WriteKind.COMMIT, WriteKind.TXN_COMMIT):
            respond = (
                RespondTxnOffsetCommit
                if write.kind is WriteKind.TXN_COMMIT
                else RespondOffsetCommit
            )
            written = [
                PartitionResult(record.topic_partition, error) for record in _offset_records(write)
            ]
            results = tuple(
                sorted(
                    written + list(write.refused_partitions),
                    key=lambda result: result.topic_partition,
                )
            )
            self._state.respond(
                respond(request_id=write.request_id, error=ErrorCode.NONE, partitions=results)
            )
        elif write.kind is WriteKind.DELETION:
            written = [GroupResult(group_id, error) for group_id in write.group_ids]
            self._state.respond(
                RespondDeleteGroups(
                    request_id=write.request_id,
                    error=ErrorCode.NONE,
                    groups=tuple(written) + write.refused_groups,
                )
            )

    # --- the membership protocol (membership.py) -------------------------------------------------

    @_dispatch.register
    def _on_join(self, event: JoinGroupRequested) -> None:
        membership.on_join(self._state, event)

    @_dispatch.register
    def _on_sync(self, event: SyncGroupRequested) -> None:
        membership.on_sync(self._state, event)

    @_dispatch.register
    def _on_heartbeat(self, event: HeartbeatReceived) -> None:
        membership.on_heartbeat(self._state, event)

    @_dispatch.register
    def _on_leave(self, event: LeaveGroupRequested) -> None:
        membership.on_leave(self._state, event)

    # --- offsets ----------------------------------------------------------------------------------

    @_dispatch.register
    def _on_commit(self, event: OffsetCommitRequested) -> None:
        self._commit(event, WriteKind.COMMIT)

    @_dispatch.register
    def _on_txn_commit(self, event: TxnOffsetCommitRequested) -> None:
        self._commit(event, WriteKind.TXN_COMMIT)

    def _commit(self, event: OffsetCommitRequested, kind: WriteKind) -> None:
        """OffsetCommit and TxnOffsetCommit: the same checks (but for the ones that differ, see
        `_commit_error`) and records; a transactional one is written as that producer's batch."""
        state = self._state
        group = state.groups.get(event.group_id)
        error = self._commit_error(group, event)
        if error is not ErrorCode.NONE:
            return state.respond(event.reject(error))
        if group is None:
            # A simple consumer (or an admin, or a producer) committing for a group nobody has
            # joined yet.
            group = state.groups[event.group_id] = Group(event.group_id)
        elif event.member_id in group.members:
            group.members[event.member_id].touch(event.now_ms)  # a commit is a sign of life
        refused, records = self._commit_records(event)
        if not records:
            return state.respond(
                dataclasses.replace(event.reject(ErrorCode.NONE), partitions=tuple(refused))
            )
        transactional = isinstance(event, TxnOffsetCommitRequested)
        state.write(
            kind,
            (group.group_id,),
            records,
            generation=group.generation,
            request_id=event.request_id,
            refused_partitions=tuple(refused),
            producer_id=event.producer_id if transactional else -1,
            producer_epoch=event.producer_epoch if transactional else -1,
        )
        return None

    def _commit_error(self, group: Group | None, event: OffsetCommitRequested) -> ErrorCode:
        """Whether this commit may be written at all (Kafka's validateOffsetCommit).

        A transactional commit differs in three ways, as in Kafka: from outside the group it is
        accepted whatever the group's state (a producer that is not a consumer of the group), it
        is not refused during CompletingRebalance, and its producer epoch must be the newest
        (older: INVALID_PRODUCER_EPOCH, fenced; newer while the older epoch's offsets still wait
        for their marker: CONCURRENT_TRANSACTIONS, retriable)."""
        state = self._state
        if not event.group_id:
            return ErrorCode.INVALID_REQUEST
        commit_kinds = (WriteKind.COMMIT, WriteKind.TXN_COMMIT)
        pending = sum(1 for write in state.writes.values() if write.kind in commit_kinds)
        if pending >= state.config.pending_commit_writes_max:
            return ErrorCode.THROTTLED
        transactional = isinstance(event, TxnOffsetCommitRequested)
        if transactional:
            error = self._producer_error(event)
            if error is not ErrorCode.NONE:
                return error
        external = event.generation < 0 and event.member_id == NO_MEMBER_ID
        if group is None:
            return ErrorCode.NONE if external else ErrorCode.UNKNOWN_MEMBER_ID
        if group.state is DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if external:
            # Simple consumers and reset-offsets write only while nobody consumes: the members'
            # own commits would otherwise race with (and silently undo) the reset.
            if transactional or group.state is EMPTY:
                return ErrorCode.NONE
            return ErrorCode.GROUP_NOT_EMPTY
        error = membership.check_member(
            group, event.member_id, event.group_instance_id, event.generation
        )
        completing = group.state is GroupState.COMPLETING_REBALANCE
        if error is ErrorCode.NONE and completing and not transactional:
            return ErrorCode.REBALANCE_IN_PROGRESS
        return error

    def _producer_error(self, event: TxnOffsetCommitRequested) -> ErrorCode:
        """The producer epoch checks the partition's producer state would make of the batch."""
        state = self._state
        if event.producer_id < 0 or event.producer_epoch < 0:
            return ErrorCode.INVALID_REQUEST
        newest = state.producer_epoch_of(event.producer_id)
        if event.producer_epoch < newest:
            return ErrorCode.INVALID_PRODUCER_EPOCH
        open_here = event.producer_id in state.store.pending or any(
            write.producer_id == event.producer_id and write.kind is WriteKind.TXN_COMMIT
            for write in state.writes.values()
        )
        if event.producer_epoch > newest and open_here:
            return ErrorCode.CONCURRENT_TRANSACTIONS
        return ErrorCode.NONE

    @_dispatch.register
    def _on_marker(self, event: TxnMarkerRequested) -> None:
        """A marker from an older producer epoch changes nothing (the partition's producer state
        ignores it too): refused before it is written. Any other is written, pending offsets or
        not, so that every replica's producer state closes the transaction."""
        state = self._state
        if event.producer_id < 0:
            return state.respond(event.reject(ErrorCode.INVALID_REQUEST))
        if event.producer_epoch < state.producer_epoch_of(event.producer_id):
            return state.respond(event.reject(ErrorCode.INVALID_PRODUCER_EPOCH))
        state.write_marker(
            event.producer_id,
            event.producer_epoch,
            event.commit,
            event.coordinator_epoch,
            request_id=event.request_id,
        )
        return None

    def _commit_records(
        self, event: OffsetCommitRequested
    ) -> tuple[list[PartitionResult], list[GroupRecord]]:
        """Split a commit into refused partitions and the records to write for the others."""
        refused: list[PartitionResult] = []
        records: dict[TopicPartition, GroupRecord] = {}
        for item in event.offsets:
            tp = item.topic_partition
            if tp.partition < 0 or not tp.topic or item.offset < 0:
                refused.append(PartitionResult(tp, ErrorCode.INVALID_REQUEST))
            elif len(item.metadata.encode()) > self._state.config.offset_metadata_bytes_max:
                refused.append(PartitionResult(tp, ErrorCode.OFFSET_METADATA_TOO_LARGE))
            else:
                value = OffsetCommitValue(
                    item.offset, item.leader_epoch, item.metadata, event.now_ms
                )
                # The last entry for a partition wins, as it would in the log.
                records[tp] = OffsetCommitRecord(event.group_id, tp, value)
        return refused, list(records.values())

    @_dispatch.register
    def _on_fetch(self, event: OffsetFetchRequested) -> None:
        """The committed offsets; with `require_stable`, a partition with a transaction's offsets
        pending (or being written) is UNSTABLE_OFFSET_COMMIT instead (KIP-447), so that a
        consumer taking over never starts from an offset its predecessor's transaction is about
        to move."""
        state = self._state
        committed = state.store.offsets_of(event.group_id)
        unstable: set[TopicPartition] = set()
        if event.require_stable:
            unstable.update(state.store.pending_of(event.group_id))
            for write in state.writes.values():
                if write.kind is WriteKind.TXN_COMMIT and event.group_id in write.group_ids:
                    unstable.update(r.topic_partition for r in _offset_records(write))
        if event.partitions is None:
            wanted = sorted(committed.keys() | unstable)
        else:
            wanted = list(event.partitions)
        offsets = []
        for tp in wanted:
            value = committed.get(tp)
            if tp in unstable:
                offsets.append(FetchedOffset(tp, -1, -1, "", ErrorCode.UNSTABLE_OFFSET_COMMIT))
            elif value is None:
                offsets.append(FetchedOffset(tp, -1, -1, ""))
            else:
                offsets.append(FetchedOffset(tp, value.offset, value.leader_epoch, value.metadata))
        state.respond(
            RespondOffsetFetch(
                request_id=event.request_id, error=ErrorCode.NONE, offsets=tuple(offsets)
            )
        )

    def _expire(self, now_ms: int) -> None:
        """Offset retention (KIP-211): an Empty group's offsets expire `offsets_retention_ms`
        after the later of the commit and the moment the group became empty; an Empty group
        left without offsets is deleted. Groups with members keep their offsets (the coordinator
        cannot read subscriptions, so it cannot tell which topics are still consumed).
        Groups with writes in flight wait for the next scan: a tombstone ordered now would land
        after those writes and could delete a commit the client was told succeeded."""
        state = self._state
        retention_ms = state.config.offsets_retention_ms
        records: list[GroupRecord] = []
        touched: list[str] = []
        dying: list[str] = []
        for group_id in sorted(state.groups):
            group = state.groups[group_id]
            if group.state is not EMPTY or group.pending_tokens:
                continue
            committed = state.store.offsets_of(group_id)
            # A partition with a transaction's offsets pending never expires, and a group with
            # any never goes: the marker will commit them (Kafka does the same).
            in_transaction = state.store.pending_of(group_id)
            since_ms = group.state_timestamp_ms or 0
            expired = [
                tp
                for tp, value in sorted(committed.items())
                if retention_ms >= 0
                and tp not in in_transaction
                and max(value.commit_timestamp_ms, since_ms) + retention_ms <= now_ms
            ]
            state.expired_offset_count += len(expired)
            if len(expired) < len(committed) or in_transaction:
                records += [OffsetCommitRecord(group_id, tp, None) for tp in expired]
            else:
                tombstones = state.deletion_records(group_id)
                if not tombstones:
                    del state.groups[group_id]  # nothing was ever written: nothing to erase
                    continue
                dying.append(group_id)
                records += tombstones
            if expired or group_id in dying:
                touched.append(group_id)
        if records:
            state.write_deletion(tuple(touched), tuple(dying), records, now_ms)

    # --- admin ------------------------------------------------------------------------------------

    @_dispatch.register
    def _on_list(self, event: ListGroupsRequested) -> None:
        groups = tuple(
            ListedGroup(group.group_id, group.protocol_type, group.state)
            for _, group in sorted(self._state.groups.items())
            if not event.states or group.state in event.states
        )
        self._state.respond(
            RespondListGroups(request_id=event.request_id, error=ErrorCode.NONE, groups=groups)
        )

    @_dispatch.register
    def _on_describe(self, event: DescribeGroupsRequested) -> None:
        descriptions = tuple(self._describe(group_id) for group_id in event.group_ids)
        self._state.respond(
            RespondDescribeGroups(
                request_id=event.request_id, error=ErrorCode.NONE, groups=descriptions
            )
        )

    def _describe(self, group_id: str) -> GroupDescription:
        group = self._state.groups.get(group_id)
        if group is None:
            return GroupDescription(group_id=group_id, error=ErrorCode.GROUP_ID_NOT_FOUND)
        members = tuple(
            MemberMetadata(
                member_id=member.member_id,
                group_instance_id=member.group_instance_id,
                client_id=member.client_id,
                client_host=member.client_host,
                session_timeout_ms=member.session_timeout_ms,
                rebalance_timeout_ms=member.rebalance_timeout_ms,
                subscription=member.metadata_for(group.protocol_name or member.protocol_names[0]),
                assignment=member.assignment,
            )
            for member in group.members.values()
        )
        return GroupDescription(
            group_id=group_id,
            error=ErrorCode.NONE,
            state=group.state,
            protocol_type=group.protocol_type,
            protocol_name=group.protocol_name or "",
            generation=group.generation,
            leader_id=group.leader_id or "",
            members=members,
            offsets=tuple(sorted(self._state.store.offsets_of(group_id).items())),
        )

    @_dispatch.register
    def _on_delete(self, event: DeleteGroupsRequested) -> None:
        state = self._state
        refused: list[GroupResult] = []
        deleting: list[str] = []
        records: list[GroupRecord] = []
        for group_id in dict.fromkeys(event.group_ids):  # de-duplicated, in request order
            group = state.groups.get(group_id)
            if group is None or group.state is DEAD:
                refused.append(GroupResult(group_id, ErrorCode.GROUP_ID_NOT_FOUND))
            elif group.state is not EMPTY:
                refused.append(GroupResult(group_id, ErrorCode.GROUP_NOT_EMPTY))
            elif producers := state.open_transactions(group_id):
                # Tombstones written now would land before the marker, which would then bring
                # the transaction's offsets back: wait for the transaction to end.
                message = (
                    f"the group has offsets in the open transaction(s) of producer id(s) "
                    f"{', '.join(map(str, producers))}: retry once they commit or abort"
                )
                refused.append(GroupResult(group_id, ErrorCode.GROUP_NOT_EMPTY, message))
            elif not (tombstones := state.deletion_records(group_id)):
                del state.groups[group_id]  # never written: gone at once
                refused.append(GroupResult(group_id, ErrorCode.NONE))
            else:
                deleting.append(group_id)
                records += tombstones
        if not records:
            return state.respond(
                RespondDeleteGroups(
                    request_id=event.request_id, error=ErrorCode.NONE, groups=tuple(refused)
                )
            )
        state.write_deletion(
            tuple(deleting),
            tuple(deleting),
            records,
            event.now_ms,
            request_id=event.request_id,
            refused_groups=tuple(refused),
        )
        return None

    # --- checking ---------------------------------------------------------------------------------

    def validate(self) -> None:
        """Assert every whole-state invariant (tests and simulations call this after each event)."""
        state = self._state
        for group_id, group in state.groups.items():
            assert group.group_id == group_id
            _validate_group(state, group)
        for token, write in state.writes.items():
            assert write.token == token < state.next_token
            for group_id in write.group_ids:
                assert token in state.groups[group_id].pending_tokens, (token, group_id)
        missing = [gid for gid in state.store.group_ids() if gid not in state.groups]
        assert not missing, f"groups in the partition but not in memory: {missing}"
        if state.status is not CoreStatus.ACTIVE:
            assert not state.groups and not state.writes and state.store == GroupStore()


def _offset_records(write: PendingWrite) -> list[OffsetCommitRecord]:
    return [record for record in write.records if isinstance(record, OffsetCommitRecord)]


def _validate_group(state: CoordinatorState, group: Group) -> None:
    members = group.members
    static = {m.group_instance_id: m.member_id for m in members.values() if m.group_instance_id}
    assert static == group.instances, (static, group.instances)
    assert group.pending_tokens == sorted(group.pending_tokens)
    assert all(token in state.writes for token in group.pending_tokens)
    kind = group.state
    # Dead exactly while the tombstones that killed it are in flight, and nothing is written for
    # a Dead group after them: their outcome is the last word on it (removed or Empty again).
    assert (kind is DEAD) == (group.deletion_write is not None), group
    if group.deletion_write is not None:
        assert state.writes[group.deletion_write].kind is WriteKind.DELETION, group
        assert group.pending_tokens[-1] == group.deletion_write, group
    if kind in (EMPTY, DEAD):
        assert not members and group.leader_id is None, group
        assert group.assignment_write is None
        return
    assert members, f"group {group.group_id} is {kind.value} without members"
    assert (group.join_deadline_ms is not None) == (kind is GroupState.PREPARING_REBALANCE)
    assert (group.sync_deadline_ms is not None) == (kind is GroupState.COMPLETING_REBALANCE)
    if kind is not GroupState.PREPARING_REBALANCE:
        assert group.leader_id in members and group.protocol_name is not None, group
        assert all(group.protocol_name in m.protocol_names for m in members.values())
    if group.assignment_write is not None:
        write = state.writes[group.assignment_write]
        assert write.kind is WriteKind.ASSIGNMENT and write.generation == group.generation
        assert kind is GroupState.COMPLETING_REBALANCE
    static_joins = {
        write.request_id for write in state.writes.values() if write.kind is WriteKind.STATIC_REJOIN
    }
    for member in members.values():
        if member.pending_sync is not None:
            assert kind is GroupState.COMPLETING_REBALANCE, (group.group_id, kind)
        if member.pending_join is not None and kind is not GroupState.PREPARING_REBALANCE:
            # Outside a rebalance, only a static member's takeover waits for its write.
            assert kind is GroupState.STABLE and member.pending_join in static_joins, group


def _loaded_group(group_id: str, metadata: GroupMetadataValue | None, now_ms: int) -> Group:
    """A group as the partition describes it, right after failover.

    Choice (documented in docs/consumer-groups.md): like Kafka, a group with members resumes its
    persisted generation as Stable, with the persisted assignments; members keep heartbeating to
    the new coordinator without rejoining, and sessions restart from the load time. Members the
    old coordinator had added or removed since the last write simply rejoin or time out.
    """
    group = Group(group_id)
    if metadata is None:  # offsets only: a simple consumer's group
        return group
    group.generation = metadata.generation
    group.protocol_type = metadata.protocol_type
    group.state_timestamp_ms = metadata.state_timestamp_ms
    if not metadata.members:
        return group
    assert metadata.protocol_name is not None and metadata.leader_id is not None
    group.protocol_name = metadata.protocol_name
    group.leader_id = metadata.leader_id
    for stored in metadata.members:
        member = Member(
            member_id=stored.member_id,
            group_instance_id=stored.group_instance_id,
            client_id=stored.client_id,
            client_host=stored.client_host,
            session_timeout_ms=stored.session_timeout_ms,
            rebalance_timeout_ms=stored.rebalance_timeout_ms,
            protocols=(JoinProtocol(metadata.protocol_name, stored.subscription),),
            assignment=stored.assignment,
        )
        member.touch(now_ms)
        group.add(member)
    group.state = GroupState.STABLE
    return group
