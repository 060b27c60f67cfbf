"""The group core's shared state: groups, the replicated store, in-flight writes and the outbox.

`CoordinatorState` is what membership.py and coordinator.py mutate while handling one event; it
is never exposed to the shell. Rules:
- Actions are appended to `out` in the order they must be carried out; `handle()` returns them.
- A write is registered in `writes` (and in each group's `pending_tokens`) when its
  `PersistRecords` (or `PersistMarker`) is emitted; its records enter `store` only when the shell
  reports them replicated, in the order they were emitted. So `store` is always exactly what a
  replay of the partition rebuilds (transaction markers included: they go through the core too).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

from broker.consumer_groups.actions import (
    Action,
    GroupResult,
    JoinedMember,
    PartitionResult,
    PersistMarker,
    PersistRecords,
    RespondJoin,
    Response,
)
from broker.consumer_groups.config import GroupConfig
from broker.consumer_groups.events import Event, Request
from broker.consumer_groups.group import Group, GroupState, Member
from broker.consumer_groups.offsets import (
    GroupMetadataRecord,
    GroupMetadataValue,
    GroupRecord,
    GroupStore,
    MemberMetadata,
    OffsetCommitRecord,
    encode_record,
)
from wire.error_codes import ErrorCode


class WriteKind(enum.Enum):
    """Why a write was ordered, which decides what its completion does."""

    ASSIGNMENT = "assignment"  # the leader's SyncGroup: completes the rebalance
    STATIC_REJOIN = "static-rejoin"  # a static member took over its old member id's place
    EMPTIED = "emptied"  # the group became Empty; nobody waits
    COMMIT = "commit"  # an OffsetCommit
    TXN_COMMIT = "txn-commit"  # a TxnOffsetCommit: its offsets are pending until the marker
    MARKER = "marker"  # a transaction marker: commits or drops a producer's pending offsets
    DELETION = "deletion"  # DeleteGroups or retention: tombstones


@dataclasses.dataclass(frozen=True, slots=True)
class PendingWrite:
    """A write the shell is replicating, and who waits for it."""

    token: int
    kind: WriteKind
    group_ids: tuple[str, ...]
    records: tuple[GroupRecord, ...]
    generation: int = -1
    request_id: int | None = None
    member_id: str | None = None
    # Commits and deletions answer per partition / per group: the ones refused up front.
    refused_partitions: tuple[PartitionResult, ...] = ()
    refused_groups: tuple[GroupResult, ...] = ()
    # TXN_COMMIT and MARKER: whose transaction (and, for a marker, its outcome).
    producer_id: int = -1
    producer_epoch: int = -1
    commit: bool = False


class CoreStatus(enum.Enum):
    """Where a coordinator core (the group's, the transaction coordinator's) is in its life."""

    LOADING = "loading"  # waiting for LoadPartition: requests get COORDINATOR_LOAD_IN_PROGRESS
    ACTIVE = "active"
    UNLOADED = "unloaded"  # leadership lost: requests get NOT_COORDINATOR


def route_event(
    status: CoreStatus,
    event: Event,
    respond: Callable[[Any], None],
    dispatch: Callable[[Event], None],
) -> None:
    """The lifecycle gate both coordinator cores open `handle` with: a request to a core that is
    not active is refused (loading: retry soon; unloaded: find the coordinator again); late write
    reports and ticks for a partition no longer led are dropped; the rest is `dispatch`ed."""
    if isinstance(event, Request) and status is not CoreStatus.ACTIVE:
        loading = status is CoreStatus.LOADING
        respond(
            event.reject(
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS if loading else ErrorCode.NOT_COORDINATOR
            )
        )
    elif status is not CoreStatus.UNLOADED:
        dispatch(event)


@dataclasses.dataclass(slots=True)
class CoordinatorState:
    config: GroupConfig
    status: CoreStatus = CoreStatus.LOADING
    coordinator_epoch: int = -1
    groups: dict[str, Group] = dataclasses.field(default_factory=dict)
    store: GroupStore = dataclasses.field(default_factory=GroupStore)
    writes: dict[int, PendingWrite] = dataclasses.field(default_factory=dict)
    out: list[Action] = dataclasses.field(default_factory=list)
    next_token: int = 1
    next_member_sequence: int = 1
    next_retention_check_ms: int = 0
    # Counters for statistics(), since this core was created.
    rebalance_count: int = 0
    expired_member_count: int = 0
    expired_offset_count: int = 0

    def respond(self, response: Response) -> None:
        self.out.append(response)

    def new_member_id(self, client_id: str) -> str:
        """`<client id>-<coordinator epoch>-<sequence>`: unique without randomness.

        The last two fields are numbers, so the pair (epoch, sequence) can be read back from any id
        and no two ids collide; a new coordinator has a larger epoch than every id it loads.
        """
        member_id = f"{client_id or 'member'}-{self.coordinator_epoch}-{self.next_member_sequence}"
        self.next_member_sequence += 1
        return member_id

    def write(
        self,
        kind: WriteKind,
        group_ids: tuple[str, ...],
        records: list[GroupRecord],
        *,
        generation: int = -1,
        request_id: int | None = None,
        member_id: str | None = None,
        refused_partitions: tuple[PartitionResult, ...] = (),
        refused_groups: tuple[GroupResult, ...] = (),
        producer_id: int = -1,
        producer_epoch: int = -1,
    ) -> int:
        """Order a write of `records` and remember who waits for it; returns its token.

        `producer_id` >= 0: the records are a transactional offset commit of that producer."""
        assert records, "an empty write has nothing to wait for"
        token = self._register(
            PendingWrite(
                self.next_token,
                kind,
                group_ids,
                tuple(records),
                generation,
                request_id,
                member_id,
                refused_partitions,
                refused_groups,
                producer_id,
                producer_epoch,
            )
        )
        encoded = tuple(encode_record(record) for record in records)
        self.out.append(
            PersistRecords(
                token=token,
                records=encoded,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
            )
        )
        return token

    def write_marker(
        self,
        producer_id: int,
        producer_epoch: int,
        commit: bool,
        coordinator_epoch: int,
        *,
        request_id: int,
    ) -> int:
        """Order a transaction marker. It is registered with every group whose offsets it will
        commit or drop (pending here, or in a transactional write ordered before it), so that
        neither retention nor a deletion acts on those groups before its outcome."""
        groups = set(self.store.pending.get(producer_id, {}))
        for write in self.writes.values():
            if write.kind is WriteKind.TXN_COMMIT and write.producer_id == producer_id:
                groups.update(write.group_ids)
        token = self._register(
            PendingWrite(
                self.next_token,
                WriteKind.MARKER,
                tuple(sorted(groups)),
                (),
                request_id=request_id,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                commit=commit,
            )
        )
        self.out.append(
            PersistMarker(
                token=token,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                commit=commit,
                coordinator_epoch=coordinator_epoch,
            )
        )
        return token

    def _register(self, write: PendingWrite) -> int:
        assert write.token == self.next_token
        self.next_token += 1
        self.writes[write.token] = write
        for group_id in write.group_ids:
            self.groups[group_id].pending_tokens.append(write.token)
        return write.token

    def open_transactions(self, group_id: str) -> list[int]:
        """Producer ids with transactional offsets of `group_id` pending, being written, or
        whose marker is being written (the marker write names the group until its outcome)."""
        producers = {
            producer_id for producer_id, groups in self.store.pending.items() if group_id in groups
        }
        producers.update(
            write.producer_id
            for write in self.writes.values()
            if write.kind in (WriteKind.TXN_COMMIT, WriteKind.MARKER)
            and group_id in write.group_ids
        )
        return sorted(producers)

    def producer_epoch_of(self, producer_id: int) -> int:
        """The newest epoch of `producer_id` in the partition or in a write ordered to it."""
        epochs = [self.store.producer_epochs.get(producer_id, -1)]
        epochs += [
            write.producer_epoch
            for write in self.writes.values()
            if write.producer_id == producer_id
        ]
        return max(epochs)

    def write_metadata(
        self,
        group: Group,
        kind: WriteKind,
        *,
        request_id: int | None = None,
        member_id: str | None = None,
    ) -> int:
        """Write the group's metadata as it stands, tagged with its generation."""
        return self.write(
            kind,
            (group.group_id,),
            [metadata_record(group)],
            generation=group.generation,
            request_id=request_id,
            member_id=member_id,
        )

    def write_deletion(
        self,
        group_ids: tuple[str, ...],
        dying: tuple[str, ...],
        records: list[GroupRecord],
        now_ms: int,
        *,
        request_id: int | None = None,
        refused_groups: tuple[GroupResult, ...] = (),
    ) -> int:
        """Order tombstones for `group_ids`; the `dying` ones turn Dead until this write's outcome.

        The others only lose some offsets (retention) and stay Empty. Each dying group remembers
        this token: the group is removed when *this* write is replicated and is Empty again if
        *it* fails, whatever becomes of the group's earlier writes still in flight (retention
        tombstones ordered before a DeleteGroups complete first and must not remove the group).
        """
        token = self.write(
            WriteKind.DELETION,
            group_ids,
            records,
            request_id=request_id,
            refused_groups=refused_groups,
        )
        for group_id in dying:
            group = self.groups[group_id]
            self.set_state(group, GroupState.DEAD, now_ms)
            group.deletion_write = token
        return token

    def join_response(self, group: Group, member: Member, request_id: int) -> RespondJoin:
        """The successful JoinGroup answer for `member` in the group's current generation."""
        is_leader = member.member_id == group.leader_id
        members = (
            tuple(
                JoinedMember(
                    other.member_id,
                    other.group_instance_id,
                    other.metadata_for(group.protocol_name),
                )
                for other in group.members.values()
            )
            if is_leader
            else ()
        )
        return RespondJoin(
            request_id=request_id,
            error=ErrorCode.NONE,
            generation=group.generation,
            protocol_type=group.protocol_type,
            protocol_name=group.protocol_name or "",
            leader_id=group.leader_id or "",
            member_id=member.member_id,
            members=members,
        )

    def deletion_records(self, group_id: str) -> list[GroupRecord]:
        """Tombstones for everything the partition holds (or will hold) about `group_id`.

        Writes still in flight count: they land before the tombstones, so they must be covered.
        """
        metadata = group_id in self.store.metadata
        partitions = set(self.store.offsets_of(group_id))
        for write in self.writes.values():
            for record in write.records:
                if record.group_id != group_id:
                    continue
                if isinstance(record, OffsetCommitRecord):
                    partitions.add(record.topic_partition)
                else:
                    metadata = True
        records: list[GroupRecord] = [
            OffsetCommitRecord(group_id, tp, None) for tp in sorted(partitions)
        ]
        if metadata:
            records.append(GroupMetadataRecord(group_id, None))
        return records

    def set_state(self, group: Group, state: GroupState, now_ms: int) -> None:
        group.state = state
        group.state_timestamp_ms = now_ms


def metadata_record(group: Group) -> GroupMetadataRecord:
    """The group's metadata as it stands: the value a replay will resume from."""
    assert group.state_timestamp_ms is not None
    members = tuple(
        MemberMetadata(
            member_id=member.member_id,
            group_instance_id=member.group_instance_id,
            client_id=member.client_id,
            client_host=member.client_host,
            session_timeout_ms=member.session_timeout_ms,
            rebalance_timeout_ms=member.rebalance_timeout_ms,
            subscription=member.metadata_for(group.protocol_name),
            assignment=member.assignment,
        )
        for member in group.members.values()
    )
    value = GroupMetadataValue(
        protocol_type=group.protocol_type,
        generation=group.generation,
        protocol_name=group.protocol_name,
        leader_id=group.leader_id,
        state_timestamp_ms=group.state_timestamp_ms,
        members=members,
    )
    return GroupMetadataRecord(group.group_id, value)
