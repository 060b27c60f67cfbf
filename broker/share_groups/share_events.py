"""Facts the shell tells the share coordinator core (lifecycle events are the group core's:
LoadPartition, UnloadPartition, Tick, RecordsPersisted, AppendFailed).

Every request carries `request_id` and gets exactly one response (`reject` builds the refusal).
The core never reads a log: `AcquireRequested` carries what the shell read from each partition
at the position the core gave it (`ShareCoordinatorCore.read_position`), as batch ranges.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from broker.consumer_groups.events import Event, Request
from broker.consumer_groups.group import TopicPartition
from broker.share_groups.share_actions import (
    RespondAcknowledge,
    RespondAcquire,
    RespondAlterConfigs,
    RespondDescribeShareGroups,
)
from broker.share_groups.share_partition import AckRange, BatchRun
from wire.error_codes import ErrorCode

_message = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)


@_message
class PartitionRead:
    """What the shell read of one partition: batches from `from_offset` (the reset point for a
    share partition not started yet), and the log's bounds at that moment."""

    topic_partition: TopicPartition
    from_offset: int
    log_start_offset: int
    high_watermark: int
    batches: tuple[BatchRun, ...] = ()


@_message
class PartitionAcks:
    topic_partition: TopicPartition
    ranges: tuple[AckRange, ...]


@_message
class MemberRequest(Request):
    """A request from a member of a share group (it joins on its first)."""

    group_id: str
    member_id: str
    client_id: str = ""
    client_host: str = ""


@_message
class AcquireRequested(MemberRequest):
    topics: tuple[str, ...]
    max_records: int
    reads: tuple[PartitionRead, ...]

    def reject(self, error: ErrorCode) -> RespondAcquire:
        return RespondAcquire(request_id=self.request_id, error=error)


@_message
class AcknowledgeRequested(MemberRequest):
    """Acknowledgements (answered once persisted); `leave`: then release all the member holds."""

    acknowledgements: tuple[PartitionAcks, ...]
    leave: bool = False

    def reject(self, error: ErrorCode) -> RespondAcknowledge:
        return RespondAcknowledge(request_id=self.request_id, error=error)


@_message
class AlterConfigsRequested(Request):
    """Set (and `reset`) a group's config overrides; the core validates them as a whole."""

    group_id: str
    configs: dict[str, Any]
    reset: tuple[str, ...] = ()

    def reject(self, error: ErrorCode) -> RespondAlterConfigs:
        return RespondAlterConfigs(request_id=self.request_id, error=error)


@_message
class DescribeShareGroupsRequested(Request):
    group_ids: tuple[str, ...]

    def reject(self, error: ErrorCode) -> RespondDescribeShareGroups:
        return RespondDescribeShareGroups(request_id=self.request_id, error=error)


@_message
class DeadLettered(Event):
    """The dead-letter write of [first, last] is acknowledged (acks=all)."""

    group_id: str
    topic_partition: TopicPartition
    first_offset: int
    last_offset: int


@_message
class DeadLetterFailed(Event):
    """The dead-letter write of [first, last] failed: the core retries after its backoff."""

    group_id: str
    topic_partition: TopicPartition
    first_offset: int
    last_offset: int
