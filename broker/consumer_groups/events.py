"""Facts the shell tells the group core: a request arrived, time passed, a write was replicated.

Every event is a frozen dataclass carrying `now_ms`, the shell's clock reading: the core has no
clock of its own, so a test (or a simulation) controls time exactly. Requests carry a
`request_id` chosen by the shell; the core echoes it in the one response it eventually emits.
`reject(error)` builds that response for a request refused as a whole.
"""

from __future__ import annotations

import abc
import dataclasses

from broker.consumer_groups.actions import (
    RespondDeleteGroups,
    RespondDescribeGroups,
    RespondHeartbeat,
    RespondJoin,
    RespondLeave,
    RespondListGroups,
    RespondOffsetCommit,
    RespondOffsetFetch,
    RespondSync,
    RespondTxnMarker,
    RespondTxnOffsetCommit,
    Response,
)
from broker.consumer_groups.group import (
    NO_GENERATION,
    NO_MEMBER_ID,
    GroupState,
    JoinProtocol,
    TopicPartition,
)
from broker.consumer_groups.offsets import LogEntry
from wire.error_codes import ErrorCode


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    now_ms: int


# --- lifecycle, time and writes -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoadPartition(Event):
    """This broker now leads the coordinator partition: here are all its records (and the
    transaction markers among them), oldest first.

    `coordinator_epoch` (the partition's leader epoch) must grow with every new leadership: it
    goes into the member ids this core hands out, which keeps them unique across failovers.
    """

    coordinator_epoch: int
    records: tuple[LogEntry, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UnloadPartition(Event):
    """This broker lost the partition: every waiting request is answered NOT_COORDINATOR."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Event):
    """Time passed: session, join, sync and retention timers are checked against `now_ms`."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecordsPersisted(Event):
    """The records of `PersistRecords(token)` (or the `PersistMarker`) are committed (replicated)
    in the partition."""

    token: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AppendFailed(Event):
    """The records of `PersistRecords(token)` may not be committed; `error` is sent to clients."""

    token: int
    error: ErrorCode = ErrorCode.COORDINATOR_NOT_AVAILABLE


# --- requests -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Request(Event, abc.ABC):
    request_id: int

    @abc.abstractmethod
    def reject(self, error: ErrorCode) -> Response:
        """The response that answers this request with `error` (the core's refusals)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JoinGroupRequested(Request):
    group_id: str
    member_id: str = NO_MEMBER_ID  # empty on a member's first join: the core assigns one
    group_instance_id: str | None = None  # set for static members
    client_id: str = ""
    client_host: str = ""
    session_timeout_ms: int
    rebalance_timeout_ms: int = -1  # <= 0: the config's default
    protocol_type: str
    protocols: tuple[JoinProtocol, ...]

    def reject(self, error: ErrorCode) -> Response:
        return RespondJoin(request_id=self.request_id, error=error, member_id=self.member_id)


@dataclasses.dataclass(frozen=True, slots=True)
class SyncAssignment:
    member_id: str
    assignment: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SyncGroupRequested(Request):
    group_id: str
    generation: int
    member_id: str
    group_instance_id: str | None = None
    protocol_type: str = ""  # "" skips the check
    protocol_name: str = ""  # "" skips the check
    assignments: tuple[SyncAssignment, ...] = ()  # only the leader's carries any

    def reject(self, error: ErrorCode) -> Response:
        return RespondSync(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatReceived(Request):
    group_id: str
    generation: int
    member_id: str
    group_instance_id: str | None = None

    def reject(self, error: ErrorCode) -> Response:
        return RespondHeartbeat(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True)
class LeavingMember:
    """A member to remove: by `member_id`, or by `group_instance_id` with member_id ""."""

    member_id: str
    group_instance_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LeaveGroupRequested(Request):
    group_id: str
    members: tuple[LeavingMember, ...]

    def reject(self, error: ErrorCode) -> Response:
        return RespondLeave(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True)
class OffsetToCommit:
    topic_partition: TopicPartition
    offset: int
    leader_epoch: int = -1
    metadata: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OffsetCommitRequested(Request):
    """A commit. generation -1 with member id "" is a commit from outside the group: a simple
    (manually assigned) consumer or the admin's reset-offsets, accepted only while it is Empty."""

    group_id: str
    generation: int = NO_GENERATION
    member_id: str = NO_MEMBER_ID
    group_instance_id: str | None = None
    offsets: tuple[OffsetToCommit, ...]

    def reject(self, error: ErrorCode) -> Response:
        return RespondOffsetCommit(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TxnOffsetCommitRequested(OffsetCommitRequested):
    """A commit inside `producer_id`'s transaction (KIP-98/KIP-447): written as a transactional
    batch, pending until the transaction's marker. generation -1 with member id "" is a producer
    outside any consumer group (allowed whatever the group's state); otherwise the member and
    generation are checked as for OffsetCommit."""

    transactional_id: str
    producer_id: int
    producer_epoch: int

    def reject(self, error: ErrorCode) -> Response:
        return RespondTxnOffsetCommit(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TxnMarkerRequested(Request):
    """The transaction coordinator's marker for this partition (WriteTxnMarkers): the end of
    `producer_id`'s transaction. Written through the core so that the store applies it in log
    order; a producer with nothing pending here is fine (the marker is still written)."""

    producer_id: int
    producer_epoch: int
    commit: bool
    coordinator_epoch: int

    def reject(self, error: ErrorCode) -> Response:
        return RespondTxnMarker(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OffsetFetchRequested(Request):
    """`require_stable` (KIP-447): partitions with transactional offsets still pending are
    answered UNSTABLE_OFFSET_COMMIT (retriable) instead of their last committed offset."""

    group_id: str
    partitions: tuple[TopicPartition, ...] | None = None  # None: every committed partition
    require_stable: bool = False

    def reject(self, error: ErrorCode) -> Response:
        return RespondOffsetFetch(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ListGroupsRequested(Request):
    states: tuple[GroupState, ...] = ()  # empty: every state

    def reject(self, error: ErrorCode) -> Response:
        return RespondListGroups(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DescribeGroupsRequested(Request):
    group_ids: tuple[str, ...]

    def reject(self, error: ErrorCode) -> Response:
        return RespondDescribeGroups(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeleteGroupsRequested(Request):
    group_ids: tuple[str, ...]

    def reject(self, error: ErrorCode) -> Response:
        return RespondDeleteGroups(request_id=self.request_id, error=error)
