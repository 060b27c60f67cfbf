"""The records a group writes to its __consumer_offsets partition, and the replay that reads them.

Two kinds of record, keyed like Kafka's (so log compaction keeps the latest per key):
- group metadata: key `[2, group_id]`, value = the group's generation, protocol, leader and members
  with their assignments, written when a rebalance completes and when the group becomes Empty;
- offset commit: key `[1, group_id, topic, partition]`, value = offset, leader epoch, metadata and
  commit timestamp.
Keys and values are msgpack; a value of None is a tombstone (group deleted, offset expired). Every
value is absolute (never a delta), so replaying a partition in log order, compacted or not, rebuilds
exactly the state that was acknowledged: `GroupStore.apply` is the ONLY way state enters a store,
both on the live coordinator (after a write is replicated) and on replay.

Transactions (KIP-98/KIP-447): offset commits written in a transactional batch carry the batch's
producer id and epoch (`EncodedRecord.producer_id`) and enter the store as PENDING offsets of that
producer; the transaction's marker on the partition (`MarkerRecord`) commits them (they replace the
group's committed offsets, unless a plain commit of the same partition was written after them, as
in Kafka) or aborts them (they are dropped). Records and markers of an epoch older than the
producer's newest are ignored, as the partition's producer state ignores them.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable
from typing import Any

import msgpack

from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.record_fields import check_version, checked_int, checked_str

KEY_KIND_OFFSET = 1
KEY_KIND_GROUP = 2
VALUE_VERSION = 0


class CorruptGroupRecordError(ValueError):
    """A __consumer_offsets record we cannot decode: replay stops loudly (principle 6)."""


@dataclasses.dataclass(frozen=True, slots=True)
class EncodedRecord:
    """One record as the partition stores it: msgpack key, msgpack value or None (tombstone).

    `producer_id`/`producer_epoch` are the batch's when it was transactional (a transactional
    offset commit, pending until its marker), else -1."""

    key: bytes
    value: bytes | None
    producer_id: int = -1
    producer_epoch: int = -1


@dataclasses.dataclass(frozen=True, slots=True)
class MarkerRecord:
    """A transaction marker on the partition: the end of `producer_id`'s transaction.

    Both a log entry (the replay reads it from the marker batch) and what the store applies."""

    producer_id: int
    producer_epoch: int
    commit: bool


@dataclasses.dataclass(frozen=True, slots=True)
class MemberMetadata:
    """One member as persisted: enough to resume the generation on another coordinator."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    subscription: bytes  # the member's metadata for the group's chosen protocol
    assignment: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class GroupMetadataValue:
    """A group's persisted metadata; `members` is empty when the group is Empty."""

    protocol_type: str
    generation: int
    protocol_name: str | None
    leader_id: str | None
    state_timestamp_ms: int
    members: tuple[MemberMetadata, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class OffsetCommitValue:
    """One committed offset: the next record the group will consume, with its client metadata."""

    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class GroupMetadataRecord:
    group_id: str
    value: GroupMetadataValue | None  # None: the group is deleted


@dataclasses.dataclass(frozen=True, slots=True)
class OffsetCommitRecord:
    group_id: str
    topic_partition: TopicPartition
    value: OffsetCommitValue | None  # None: the offset is deleted (expired or group deleted)


GroupRecord = GroupMetadataRecord | OffsetCommitRecord


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionalRecord:
    """An offset commit written inside `producer_id`'s transaction: pending until its marker."""

    producer_id: int
    producer_epoch: int
    record: OffsetCommitRecord


# One entry of the partition as read back: what the store applies, in log order.
LogEntry = EncodedRecord | MarkerRecord
StoreEntry = GroupRecord | TransactionalRecord | MarkerRecord


@dataclasses.dataclass(frozen=True, slots=True)
class PendingOffset:
    """A transactional offset waiting for its marker. `overtaken`: a plain commit of the same
    partition was written after it and stands, so a COMMIT marker leaves that one in place
    (Kafka's rule: the later write in the log wins)."""

    value: OffsetCommitValue
    overtaken: bool = False


def coordinator_partition(group_id: str, partition_count: int) -> int:
    """The __consumer_offsets partition that owns `group_id`.

    A stable hash (CRC32 of the UTF-8 id), never Python's `hash()`, which changes per process.
    """
    assert partition_count > 0
    return zlib.crc32(group_id.encode()) % partition_count


# --- codec ----------------------------------------------------------------------------------------


def encode_record(record: GroupRecord) -> EncodedRecord:
    if isinstance(record, OffsetCommitRecord):
        tp = record.topic_partition
        key = msgpack.packb([KEY_KIND_OFFSET, record.group_id, tp.topic, tp.partition])
        value = None if record.value is None else _pack_offset(record.value)
    else:
        key = msgpack.packb([KEY_KIND_GROUP, record.group_id])
        value = None if record.value is None else _pack_group(record.value)
    encoded = EncodedRecord(key, value)
    # Pair the check (TigerBeetle): what we write must read back as what we meant.
    assert decode_record(encoded) == record, record
    return encoded


def decode_record(encoded: EncodedRecord) -> GroupRecord:
    """Decode one record; raise `CorruptGroupRecordError` if it is not one of ours."""
    try:
        key = msgpack.unpackb(encoded.key)
        value = None if encoded.value is None else msgpack.unpackb(encoded.value)
        if key[0] == KEY_KIND_OFFSET and len(key) == 4:
            tp = TopicPartition(checked_str(key[2]), checked_int(key[3]))
            offset = None if value is None else _unpack_offset(value)
            return OffsetCommitRecord(checked_str(key[1]), tp, offset)
        if key[0] == KEY_KIND_GROUP and len(key) == 2:
            group = None if value is None else _unpack_group(value)
            return GroupMetadataRecord(checked_str(key[1]), group)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise CorruptGroupRecordError(f"undecodable group record {encoded!r}: {exc}") from exc
    raise CorruptGroupRecordError(f"unknown group record key {encoded.key!r}")


def decode_entry(entry: LogEntry) -> StoreEntry:
    """Decode one log entry; a transactional batch may only hold offset commits with a value."""
    if isinstance(entry, MarkerRecord):
        return entry
    record = decode_record(entry)
    if entry.producer_id < 0:
        return record
    if not isinstance(record, OffsetCommitRecord) or record.value is None:
        raise CorruptGroupRecordError(
            f"a transactional batch of producer {entry.producer_id} holds {record!r}: only offset "
            "commits are written in a transaction"
        )
    return TransactionalRecord(entry.producer_id, entry.producer_epoch, record)


def _pack_offset(value: OffsetCommitValue) -> bytes:
    return msgpack.packb(
        {
            "v": VALUE_VERSION,
            "offset": value.offset,
            "leader_epoch": value.leader_epoch,
            "metadata": value.metadata,
            "commit_ts": value.commit_timestamp_ms,
        }
    )


def _unpack_offset(fields: dict[str, Any]) -> OffsetCommitValue:
    check_version(fields, VALUE_VERSION)
    return OffsetCommitValue(
        offset=checked_int(fields["offset"]),
        leader_epoch=checked_int(fields["leader_epoch"]),
        metadata=checked_str(fields["metadata"]),
        commit_timestamp_ms=checked_int(fields["commit_ts"]),
    )


_MEMBER_FIELDS = (
    "member_id",
    "group_instance_id",
    "client_id",
    "client_host",
    "session_timeout_ms",
    "rebalance_timeout_ms",
    "subscription",
    "assignment",
)


def _pack_group(value: GroupMetadataValue) -> bytes:
    members = [[getattr(member, name) for name in _MEMBER_FIELDS] for member in value.members]
    return msgpack.packb(
        {
            "v": VALUE_VERSION,
            "protocol_type": value.protocol_type,
            "generation": value.generation,
            "protocol": value.protocol_name,
            "leader": value.leader_id,
            "state_ts": value.state_timestamp_ms,
            "members": members,
        }
    )


def _unpack_group(fields: dict[str, Any]) -> GroupMetadataValue:
    check_version(fields, VALUE_VERSION)
    members = []
    for row in fields["members"]:
        if len(row) != len(_MEMBER_FIELDS):
            raise ValueError(f"member row has {len(row)} fields, expected {len(_MEMBER_FIELDS)}")
        member = MemberMetadata(*row)
        if not isinstance(member.subscription, bytes) or not isinstance(member.assignment, bytes):
            raise ValueError("member subscription and assignment must be bytes")
        members.append(member)
    return GroupMetadataValue(
        protocol_type=checked_str(fields["protocol_type"]),
        generation=checked_int(fields["generation"]),
        protocol_name=fields["protocol"],
        leader_id=fields["leader"],
        state_timestamp_ms=checked_int(fields["state_ts"]),
        members=tuple(members),
    )


# --- the materialized view ------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class GroupStore:
    """What a coordinator partition's records say: metadata and committed offsets per group, and
    the pending transactional offsets per producer id.

    Mutated only by `apply`, in log order. Equality compares everything, which is what the
    failover tests check (`replay(log) == live_store`).
    """

    metadata: dict[str, GroupMetadataValue] = dataclasses.field(default_factory=dict)
    offsets: dict[str, dict[TopicPartition, OffsetCommitValue]] = dataclasses.field(
        default_factory=dict
    )
    # producer id -> group -> partition -> offset written in its open transaction.
    pending: dict[int, dict[str, dict[TopicPartition, PendingOffset]]] = dataclasses.field(
        default_factory=dict
    )
    # The newest epoch of every producer that wrote here: older writes are ignored (fenced).
    producer_epochs: dict[int, int] = dataclasses.field(default_factory=dict)

    def apply(self, entry: StoreEntry) -> None:
        if isinstance(entry, GroupMetadataRecord):
            if entry.value is None:
                self.metadata.pop(entry.group_id, None)
            else:
                self.metadata[entry.group_id] = entry.value
        elif isinstance(entry, OffsetCommitRecord):
            self._apply_offset(entry)
        elif self._current_epoch(entry.producer_id, entry.producer_epoch):
            if isinstance(entry, TransactionalRecord):
                record = entry.record
                assert record.value is not None, "decode_entry refuses transactional tombstones"
                groups = self.pending.setdefault(entry.producer_id, {})
                groups.setdefault(record.group_id, {})[record.topic_partition] = PendingOffset(
                    record.value
                )
            else:
                self._end_transaction(entry)

    def _current_epoch(self, producer_id: int, epoch: int) -> bool:
        """Record `epoch` as the producer's newest; False if it is older (a fenced write)."""
        known = self.producer_epochs.get(producer_id, -1)
        if epoch < known:
            return False
        self.producer_epochs[producer_id] = epoch
        return True

    def _apply_offset(self, record: OffsetCommitRecord) -> None:
        group_offsets = self.offsets.setdefault(record.group_id, {})
        tp = record.topic_partition
        if record.value is None:
            group_offsets.pop(tp, None)
        else:
            group_offsets[tp] = record.value
        # An empty dict and a missing key mean the same thing; keep one form so equality holds.
        if not group_offsets:
            del self.offsets[record.group_id]
        # A plain commit written after a pending transactional one stands when the transaction
        # commits; a tombstone leaves nothing standing.
        for groups in self.pending.values():
            waiting = groups.get(record.group_id, {}).get(tp)
            if waiting is not None:
                groups[record.group_id][tp] = PendingOffset(waiting.value, record.value is not None)

    def _end_transaction(self, marker: MarkerRecord) -> None:
        groups = self.pending.pop(marker.producer_id, {})
        if not marker.commit:
            return
        for group_id, partitions in sorted(groups.items()):
            for tp, waiting in sorted(partitions.items()):
                if not waiting.overtaken:
                    self.offsets.setdefault(group_id, {})[tp] = waiting.value

    def group_ids(self) -> list[str]:
        pending = {group_id for groups in self.pending.values() for group_id in groups}
        return sorted(self.metadata.keys() | self.offsets.keys() | pending)

    def offsets_of(self, group_id: str) -> dict[TopicPartition, OffsetCommitValue]:
        return self.offsets.get(group_id, {})

    def offset_count(self) -> int:
        return sum(len(group_offsets) for group_offsets in self.offsets.values())

    def pending_of(self, group_id: str) -> dict[TopicPartition, list[int]]:
        """The partitions of `group_id` with pending transactional offsets, and whose."""
        found: dict[TopicPartition, list[int]] = {}
        for producer_id, groups in sorted(self.pending.items()):
            for tp in groups.get(group_id, {}):
                found.setdefault(tp, []).append(producer_id)
        return found

    def pending_offset_count(self) -> int:
        return sum(len(parts) for groups in self.pending.values() for parts in groups.values())


def replay(records: Iterable[LogEntry]) -> GroupStore:
    """Rebuild a partition's store from its entries, oldest first (failover, LMDB-less start)."""
    store = GroupStore()
    for entry in records:
        store.apply(decode_entry(entry))
    return store
