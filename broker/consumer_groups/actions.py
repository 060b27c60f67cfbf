"""Orders the group core gives its shell: write these records, send these responses.

Every action is a frozen dataclass. A `Respond*` answers exactly one request (its `request_id`,
chosen by the shell) and is sent as is. `PersistRecords` and `PersistMarker` must be appended to
the coordinator's __consumer_offsets partition, in the order they were emitted, and their outcome
reported back as `RecordsPersisted(token)` or `AppendFailed(token)`, in that same order;
responses that depend on a write are only emitted after it is reported replicated, so the shell
never has to hold a response back.
"""

from __future__ import annotations

import dataclasses

from broker.consumer_groups.group import NO_GENERATION, GroupState, TopicPartition
from broker.consumer_groups.offsets import EncodedRecord, MemberMetadata, OffsetCommitValue
from wire.error_codes import ErrorCode


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PersistRecords:
    """Append `records` (one batch) to the coordinator partition, then report the outcome.

    `producer_id` >= 0: a transactional offset commit. The batch is then built transactional with
    that producer id and epoch and base sequence -1 (a coordinator's write: the partition's
    producer state opens the transaction without sequence checks), so that the transaction's
    marker closes it on every replica."""

    token: int
    records: tuple[EncodedRecord, ...]
    producer_id: int = -1
    producer_epoch: int = -1


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PersistMarker:
    """Append a transaction marker (`build_marker_batch`) to the coordinator partition, through
    the same ordered queue as `PersistRecords`, then report the outcome. Going through the core
    keeps the store's order of application equal to the log's."""

    token: int
    producer_id: int
    producer_epoch: int
    commit: bool
    coordinator_epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class JoinedMember:
    """What the leader learns about each member in its JoinGroup response."""

    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondJoin:
    """JoinGroup's answer. Only the leader gets `members`; it runs the assignor over them.

    `skip_assignment` is set for a static member that replaced its old incarnation in a Stable
    group: it must SyncGroup to get its previous assignment back, but nobody reassigns.
    """

    request_id: int
    error: ErrorCode
    generation: int = NO_GENERATION
    protocol_type: str = ""
    protocol_name: str = ""
    leader_id: str = ""
    member_id: str = ""
    skip_assignment: bool = False
    members: tuple[JoinedMember, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondSync:
    request_id: int
    error: ErrorCode
    protocol_type: str = ""
    protocol_name: str = ""
    assignment: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondHeartbeat:
    request_id: int
    error: ErrorCode


@dataclasses.dataclass(frozen=True, slots=True)
class LeaveResult:
    member_id: str
    group_instance_id: str | None
    error: ErrorCode


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondLeave:
    request_id: int
    error: ErrorCode
    members: tuple[LeaveResult, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionResult:
    topic_partition: TopicPartition
    error: ErrorCode


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondOffsetCommit:
    """Per-partition results; `error` is NONE unless the whole request was refused."""

    request_id: int
    error: ErrorCode
    partitions: tuple[PartitionResult, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondTxnOffsetCommit(RespondOffsetCommit):
    """TxnOffsetCommit's answer: sent once the records are replicated, when they are pending
    (invisible to OffsetFetch until the transaction's COMMIT marker)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondTxnMarker:
    """A marker's answer, once it is replicated and the producer's pending offsets are
    committed or dropped."""

    request_id: int
    error: ErrorCode


@dataclasses.dataclass(frozen=True, slots=True)
class FetchedOffset:
    """A committed offset; `offset` is -1 (and metadata "") when the group has none for it.
    `error` is UNSTABLE_OFFSET_COMMIT for a partition with a transaction's offsets pending when
    the fetch required stable offsets (KIP-447)."""

    topic_partition: TopicPartition
    offset: int
    leader_epoch: int
    metadata: str
    error: ErrorCode = ErrorCode.NONE


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondOffsetFetch:
    request_id: int
    error: ErrorCode
    offsets: tuple[FetchedOffset, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ListedGroup:
    group_id: str
    protocol_type: str
    state: GroupState


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondListGroups:
    request_id: int
    error: ErrorCode
    groups: tuple[ListedGroup, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupDescription:
    """Everything `groups describe` shows, except log end offsets and lag (the shell adds them)."""

    group_id: str
    error: ErrorCode
    state: GroupState = GroupState.DEAD
    protocol_type: str = ""
    protocol_name: str = ""
    generation: int = NO_GENERATION
    leader_id: str = ""
    # Each member's subscription is its metadata for the chosen protocol (or its first protocol
    # while none is chosen); assignment is b"" until the leader's SyncGroup is replicated.
    members: tuple[MemberMetadata, ...] = ()
    offsets: tuple[tuple[TopicPartition, OffsetCommitValue], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondDescribeGroups:
    request_id: int
    error: ErrorCode
    groups: tuple[GroupDescription, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class GroupResult:
    """`message` explains a refusal the error code alone does not (an open transaction)."""

    group_id: str
    error: ErrorCode
    message: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondDeleteGroups:
    request_id: int
    error: ErrorCode
    groups: tuple[GroupResult, ...] = ()


Response = (
    RespondJoin
    | RespondSync
    | RespondHeartbeat
    | RespondLeave
    | RespondOffsetCommit
    | RespondOffsetFetch
    | RespondListGroups
    | RespondDescribeGroups
    | RespondDeleteGroups
    | RespondTxnMarker
)
Action = PersistRecords | PersistMarker | Response
