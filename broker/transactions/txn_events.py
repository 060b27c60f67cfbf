"""Facts the shell tells the transaction coordinator core: a request arrived, time passed, a write
was replicated, markers were (or were not) written.

Every event is a frozen dataclass carrying `now_ms`, the shell's clock reading: the core has no
clock, so a test or a simulation controls time exactly. Requests carry a `request_id` chosen by
the shell; the core echoes it in the one response it eventually emits, and `reject(error)` builds
that response for a request refused as a whole.

The lifecycle facts (LoadPartition, UnloadPartition, Tick, RecordsPersisted, AppendFailed) and the
`Request` base are the group coordinator's own classes, re-exported: both cores have the same
caller contract, so one shell (broker/coordinator_shell.py) builds them for either.
"""

from __future__ import annotations

import dataclasses

from broker.consumer_groups.events import (
    AppendFailed,
    Event,
    LoadPartition,
    RecordsPersisted,
    Request,
    Tick,
    UnloadPartition,
)
from broker.consumer_groups.group import TopicPartition
from broker.transactions.txn_actions import (
    RespondAddOffsets,
    RespondAddPartitions,
    RespondDescribeTransactions,
    RespondEndTxn,
    RespondInitProducerId,
    RespondListTransactions,
    Response,
)
from broker.transactions.txn_records import (
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    PRODUCER_EPOCH_MAX,
    TransactionState,
)
from wire.error_codes import ErrorCode

__all__ = [
    "AddOffsetsRequested",
    "AddPartitionsRequested",
    "AppendFailed",
    "DescribeTransactionsRequested",
    "EndTxnRequested",
    "Event",
    "InitProducerIdRequested",
    "ListTransactionsRequested",
    "LoadPartition",
    "MarkersFailed",
    "MarkersWritten",
    "RecordsPersisted",
    "Request",
    "Tick",
    "UnloadPartition",
    "needs_new_producer_id",
]


# --- markers --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MarkersWritten(Event):
    """Every partition of the `WriteMarkers` with these fields has its marker (acks=all)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MarkersFailed(Event):
    """Some partition of that `WriteMarkers` did not take its marker: the core asks again later."""

    transactional_id: str
    producer_id: int
    producer_epoch: int


# --- requests -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InitProducerIdRequested(Request):
    """A transactional producer starts (`producer_id`/`producer_epoch` -1: a new instance, which
    fences every older one) or recovers with its current pair (KIP-360).

    `new_producer_id` is allocated by the shell for every request; the core uses it only for an id
    it has never seen, or when the epoch is exhausted.
    """

    transactional_id: str
    transaction_timeout_ms: int
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    new_producer_id: int

    def reject(self, error: ErrorCode) -> Response:
        return RespondInitProducerId(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AddPartitionsRequested(Request):
    transactional_id: str
    producer_id: int
    producer_epoch: int
    partitions: tuple[TopicPartition, ...]

    def reject(self, error: ErrorCode) -> Response:
        return RespondAddPartitions(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AddOffsetsRequested(Request):
    """`offsets_partition` is the `__consumer_offsets` partition of `group_id` (the shell knows
    the partition count); the transaction's markers go there too, which makes its offsets
    visible (commit) or drops them (abort)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    group_id: str
    offsets_partition: int

    def reject(self, error: ErrorCode) -> Response:
        return RespondAddOffsets(request_id=self.request_id, error=error)


def needs_new_producer_id(producer_epoch: int) -> bool:
    """Whether ending a transaction at `producer_epoch` exhausts the epoch, so the shell must
    pass a freshly allocated `new_producer_id` with the EndTxn (ids are not wasted otherwise)."""
    return producer_epoch + 1 >= PRODUCER_EPOCH_MAX


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndTxnRequested(Request):
    """Commit (or abort) the ongoing transaction. `new_producer_id`: see `needs_new_producer_id`."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    commit: bool
    new_producer_id: int = NO_PRODUCER_ID

    def reject(self, error: ErrorCode) -> Response:
        return RespondEndTxn(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ListTransactionsRequested(Request):
    states: tuple[TransactionState, ...] = ()  # empty: every state
    producer_ids: tuple[int, ...] = ()  # empty: every producer id

    def reject(self, error: ErrorCode) -> Response:
        return RespondListTransactions(request_id=self.request_id, error=error)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DescribeTransactionsRequested(Request):
    transactional_ids: tuple[str, ...]

    def reject(self, error: ErrorCode) -> Response:
        return RespondDescribeTransactions(request_id=self.request_id, error=error)
