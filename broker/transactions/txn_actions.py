"""Orders the transaction coordinator core gives its shell: write records, deliver markers, answer.

Every action is a frozen dataclass. `PersistRecords` (the group coordinator's, shared: one batch of
`[key, value]` records for the coordinator partition) must be appended in emission order and its
outcome reported as `RecordsPersisted(token)` / `AppendFailed(token)`, in that order. A
`WriteMarkers` asks the shell to write a COMMIT or ABORT marker to every partition listed and to
report `MarkersWritten` once all of them are, else `MarkersFailed`; the core emits it again (after
a backoff, or after a failover) until the markers are written: markers are never dropped. A
`Respond*` answers exactly one request (its `request_id`) and is sent at once: answers that depend
on a write come only after the write is reported persisted.
"""

from __future__ import annotations

import dataclasses

from broker.consumer_groups.actions import PersistRecords
from broker.consumer_groups.group import TopicPartition
from broker.transactions.txn_records import (
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    NO_TIMESTAMP,
    TransactionState,
)
from wire.error_codes import ErrorCode

__all__ = [
    "Action",
    "PersistRecords",
    "RespondAddOffsets",
    "RespondAddPartitions",
    "RespondDescribeTransactions",
    "RespondEndTxn",
    "RespondInitProducerId",
    "RespondListTransactions",
    "Response",
    "TransactionDescription",
    "WriteMarkers",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WriteMarkers:
    """Write a transaction marker (COMMIT if `commit`, else ABORT) to each of `partitions`.

    `producer_id`/`producer_epoch` are those the markers carry: the transaction's producer id and
    its epoch bumped by one (KIP-890), which fences any late write of the transaction on the
    partitions. `coordinator_epoch` lets a partition refuse markers of a deposed coordinator
    (TRANSACTION_COORDINATOR_FENCED).
    """

    transactional_id: str
    producer_id: int
    producer_epoch: int
    commit: bool
    partitions: tuple[TopicPartition, ...]
    coordinator_epoch: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondInitProducerId:
    request_id: int
    error: ErrorCode
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondAddPartitions:
    """One error for every partition of the request (Kafka answers per partition, all alike)."""

    request_id: int
    error: ErrorCode


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondAddOffsets:
    request_id: int
    error: ErrorCode


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondEndTxn:
    """On success: the pair the producer continues with (epoch bumped, KIP-890; a fresh producer
    id with epoch 0 when the epoch was exhausted)."""

    request_id: int
    error: ErrorCode
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TransactionDescription:
    """One transactional id as `transactions list/describe` show it (persisted state only).

    `start_timestamp_ms` is when the current (or last) transaction began; the age of an Ongoing
    one is now minus it. `error` is TRANSACTIONAL_ID_NOT_FOUND for an id this core does not have.
    """

    transactional_id: str
    error: ErrorCode = ErrorCode.NONE
    state: TransactionState = TransactionState.EMPTY
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    timeout_ms: int = -1
    partitions: tuple[TopicPartition, ...] = ()
    start_timestamp_ms: int = NO_TIMESTAMP
    last_update_timestamp_ms: int = NO_TIMESTAMP


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondListTransactions:
    request_id: int
    error: ErrorCode
    transactions: tuple[TransactionDescription, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RespondDescribeTransactions:
    request_id: int
    error: ErrorCode
    transactions: tuple[TransactionDescription, ...] = ()


Response = (
    RespondInitProducerId
    | RespondAddPartitions
    | RespondAddOffsets
    | RespondEndTxn
    | RespondListTransactions
    | RespondDescribeTransactions
)
Action = PersistRecords | WriteMarkers | Response
