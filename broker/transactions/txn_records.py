"""The records of `__transaction_state`, and the replay that reads them back.

One kind of record, keyed by transactional id like Kafka's (so log compaction keeps the latest):
key `[0, transactional_id]`, value = the id's whole metadata (producer id and epoch, the identity
before the last epoch bump and why it was bumped, timeout, state, partitions, timestamps) as a
versioned msgpack map; a None value is a tombstone (the id expired). Every value is absolute, so
replaying a partition in log order, compacted or not, rebuilds exactly what was acknowledged:
`TransactionStore.apply` is the ONLY way metadata enters a store, on the live coordinator (once a
write is reported replicated) and in `replay()` alike. Decoding is strict: anything unexpected
raises `CorruptTxnRecordError` and the load stops (principle 6).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import Any, Final

import msgpack

from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import EncodedRecord
from broker.consumer_groups.record_fields import check_version, checked_int, checked_str

KEY_KIND_TRANSACTION: Final = 0
VALUE_VERSION: Final = 0
NO_PRODUCER_ID: Final = -1
NO_PRODUCER_EPOCH: Final = -1
NO_TIMESTAMP: Final = -1
# Producer epochs are i16, as Kafka's. An epoch is never bumped past this: a producer that would
# need a larger one gets a fresh producer id with epoch 0 instead.
PRODUCER_EPOCH_MAX: Final = 32_767


class CorruptTxnRecordError(ValueError):
    """A `__transaction_state` record we cannot decode: replay stops loudly."""


class TransactionState(enum.Enum):
    """Kafka's transaction states, with Kafka's names (what `transactions list` shows)."""

    EMPTY = "Empty"  # an id with no transaction going on (after InitProducerId)
    ONGOING = "Ongoing"  # partitions added; EndTxn or the timeout ends it
    PREPARE_COMMIT = "PrepareCommit"  # the outcome is decided and persisted; markers being written
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"  # every marker written; a new transaction may begin
    COMPLETE_ABORT = "CompleteAbort"

    @property
    def is_prepare(self) -> bool:
        return self in (TransactionState.PREPARE_COMMIT, TransactionState.PREPARE_ABORT)

    @property
    def is_complete(self) -> bool:
        return self in (TransactionState.COMPLETE_COMMIT, TransactionState.COMPLETE_ABORT)

    @property
    def committed(self) -> bool:
        """The outcome of a Prepare*/Complete* state (meaningless for the others)."""
        return self in (TransactionState.PREPARE_COMMIT, TransactionState.COMPLETE_COMMIT)


class EpochBump(enum.Enum):
    """Why the producer epoch last changed: it decides what a call from the identity *before* that
    bump (`last_producer_id`, `last_producer_epoch`) gets, since the coordinator's answer to it
    may have been lost (a retry) or never sent (a zombie, or a transaction aborted by timeout)."""

    NONE = "none"  # no earlier identity worth remembering (a new id, or a transaction began since)
    END = "end"  # EndTxn (KIP-890): its retry gets the same outcome and the new epoch again
    TIMEOUT = (
        "timeout"  # the coordinator aborted on timeout: the old epoch gets TRANSACTION_ABORTED
    )
    FENCE = "fence"  # a new instance (InitProducerId): the old epoch is fenced
    RECOVER = "recover"  # InitProducerId with the caller's pair (KIP-360): its retry gets the same


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionMetadata:
    """Everything the coordinator knows about one transactional id, as persisted.

    In Prepare* the markers carry `(last_producer_id, last_producer_epoch + 1)`: the epoch of the
    transaction bumped by one (KIP-890), on the producer id the partitions know it by; the producer
    itself continues with `(producer_id, producer_epoch)`, which differs only when the bump
    exhausted the epoch and a fresh producer id was taken.
    """

    producer_id: int
    producer_epoch: int
    last_producer_id: int
    last_producer_epoch: int
    last_bump: EpochBump
    timeout_ms: int
    state: TransactionState
    partitions: tuple[TopicPartition, ...]  # sorted, no duplicates
    start_timestamp_ms: int  # when the current (or last) transaction began; -1 if none ever did
    last_update_timestamp_ms: int

    @property
    def marker_producer_id(self) -> int:
        return self.last_producer_id

    @property
    def marker_producer_epoch(self) -> int:
        return self.last_producer_epoch + 1


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionRecord:
    transactional_id: str
    value: TransactionMetadata | None  # None: the id expired (tombstone)


# --- codec ----------------------------------------------------------------------------------------


def encode_record(record: TransactionRecord) -> EncodedRecord:
    key = msgpack.packb([KEY_KIND_TRANSACTION, record.transactional_id])
    value = None if record.value is None else _pack(record.value)
    encoded = EncodedRecord(key, value)
    # Pair the check (TigerBeetle): what we write must read back as what we meant.
    assert decode_record(encoded) == record, record
    return encoded


def decode_record(encoded: EncodedRecord) -> TransactionRecord:
    """Decode one record; raise `CorruptTxnRecordError` if it is not one of ours."""
    try:
        key = msgpack.unpackb(encoded.key)
        if not isinstance(key, list) or len(key) != 2 or key[0] != KEY_KIND_TRANSACTION:
            raise ValueError(f"unknown key {key!r}")
        value = None if encoded.value is None else _unpack(msgpack.unpackb(encoded.value))
        return TransactionRecord(checked_str(key[1]), value)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise CorruptTxnRecordError(f"undecodable transaction record {encoded!r}: {exc}") from exc


def _pack(value: TransactionMetadata) -> bytes:
    return msgpack.packb(
        {
            "v": VALUE_VERSION,
            "producer_id": value.producer_id,
            "producer_epoch": value.producer_epoch,
            "last_producer_id": value.last_producer_id,
            "last_producer_epoch": value.last_producer_epoch,
            "last_bump": value.last_bump.value,
            "timeout_ms": value.timeout_ms,
            "state": value.state.value,
            "partitions": [[tp.topic, tp.partition] for tp in value.partitions],
            "start_ts": value.start_timestamp_ms,
            "update_ts": value.last_update_timestamp_ms,
        }
    )


_FIELDS: Final = frozenset(
    {
        "v",
        "producer_id",
        "producer_epoch",
        "last_producer_id",
        "last_producer_epoch",
        "last_bump",
        "timeout_ms",
        "state",
        "partitions",
        "start_ts",
        "update_ts",
    }
)


def _unpack(fields: Any) -> TransactionMetadata:
    fields = check_version(fields, VALUE_VERSION)
    if set(fields) != _FIELDS:
        raise ValueError(f"fields {sorted(fields)} differ from {sorted(_FIELDS)}")
    partitions = []
    for row in fields["partitions"]:
        if not isinstance(row, list) or len(row) != 2:
            raise ValueError(f"partition row {row!r}")
        partitions.append(TopicPartition(checked_str(row[0]), checked_int(row[1])))
    if partitions != sorted(set(partitions)):
        raise ValueError("partitions must be sorted and distinct")
    return TransactionMetadata(
        producer_id=checked_int(fields["producer_id"]),
        producer_epoch=checked_int(fields["producer_epoch"]),
        last_producer_id=checked_int(fields["last_producer_id"]),
        last_producer_epoch=checked_int(fields["last_producer_epoch"]),
        last_bump=EpochBump(checked_str(fields["last_bump"])),
        timeout_ms=checked_int(fields["timeout_ms"]),
        state=TransactionState(checked_str(fields["state"])),
        partitions=tuple(partitions),
        start_timestamp_ms=checked_int(fields["start_ts"]),
        last_update_timestamp_ms=checked_int(fields["update_ts"]),
    )


# --- the materialized view ------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class TransactionStore:
    """What a `__transaction_state` partition's records say: the metadata of each id.

    Mutated only by `apply`, in log order; equality compares everything, which is what the
    failover tests check (`replay(log) == live store`).
    """

    metadata: dict[str, TransactionMetadata] = dataclasses.field(default_factory=dict)

    def apply(self, record: TransactionRecord) -> None:
        if record.value is None:
            self.metadata.pop(record.transactional_id, None)
        else:
            self.metadata[record.transactional_id] = record.value

    def get(self, transactional_id: str) -> TransactionMetadata | None:
        return self.metadata.get(transactional_id)


def replay(records: Iterable[EncodedRecord]) -> TransactionStore:
    """Rebuild a partition's store from its records, oldest first (failover, start-up)."""
    store = TransactionStore()
    for encoded in records:
        store.apply(decode_record(encoded))
    return store
