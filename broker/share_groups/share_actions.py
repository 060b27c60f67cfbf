"""Orders the share coordinator core gives its shell (writes are the group core's
`PersistRecords`, appended and reported in order by the shared CoordinatorShell).

A `Respond*` answers one request by `request_id`. `WriteDeadLetters` asks the shell to copy
offsets [first, last] of a partition to the dead-letter topic (acks=all) and report
`DeadLettered` or `DeadLetterFailed`; `RecordsAvailable` says a group has records to hand out
again (released, expired, delay over), to wake its waiting fetches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from broker.consumer_groups.group import TopicPartition
from broker.share_groups.share_partition import Acquired, DeadLetterJob
from wire.error_codes import ErrorCode

_message = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)


@_message
class RespondAcquire:
    request_id: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    lock_duration_ms: int = -1
    acquired: tuple[tuple[TopicPartition, tuple[Acquired, ...]], ...] = ()


@_message
class RespondAcknowledge:
    """`results`: per partition acknowledged, NONE or why nothing of it applied."""

    request_id: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    results: tuple[tuple[TopicPartition, ErrorCode, str], ...] = ()


@_message
class RespondAlterConfigs:
    request_id: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    configs: dict[str, Any] = dataclasses.field(default_factory=dict)


@_message
class SharePartitionStatistics:
    topic_partition: TopicPartition
    start_offset: int
    end_offset: int
    in_flight: int
    available: int
    acquired: int
    acknowledged: int
    archived_total: int
    dead_lettered_total: int
    redelivered_total: int
    lock_expired_total: int
    oldest_available_ms: int
    # Records past end_offset not handed out yet (the shell reads it from the log; -1: unknown).
    backlog: int = -1


@_message
class ShareMemberStatistics:
    member_id: str
    client_id: str
    client_host: str
    topics: tuple[str, ...]
    acquired_records: int


@_message
class ShareGroupDescription:
    group_id: str
    error: ErrorCode = ErrorCode.NONE
    state: str = ""
    configs: dict[str, Any] = dataclasses.field(default_factory=dict)
    members: tuple[ShareMemberStatistics, ...] = ()
    partitions: tuple[SharePartitionStatistics, ...] = ()


@_message
class RespondDescribeShareGroups:
    request_id: int
    error: ErrorCode = ErrorCode.NONE
    groups: tuple[ShareGroupDescription, ...] = ()


@_message
class WriteDeadLetters:
    group_id: str
    topic_partition: TopicPartition
    dead_letter_topic: str
    job: DeadLetterJob


@_message
class RecordsAvailable:
    group_id: str
