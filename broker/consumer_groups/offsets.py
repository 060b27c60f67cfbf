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
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable
from typing import Any

import msgpack

from broker.consumer_groups.group import TopicPartition

KEY_KIND_OFFSET = 1
KEY_KIND_GROUP = 2
VALUE_VERSION = 0


class CorruptGroupRecordError(ValueError):
    """A __consumer_offsets record we cannot decode: replay stops loudly (principle 6)."""


@dataclasses.dataclass(frozen=True, slots=True)
class EncodedRecord:
    """One record as the partition stores it: msgpack key, msgpack value or None (tombstone)."""

    key: bytes
    value: bytes | None


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
            tp = TopicPartition(_str(key[2]), _int(key[3]))
            offset = None if value is None else _unpack_offset(value)
            return OffsetCommitRecord(_str(key[1]), tp, offset)
        if key[0] == KEY_KIND_GROUP and len(key) == 2:
            group = None if value is None else _unpack_group(value)
            return GroupMetadataRecord(_str(key[1]), group)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        raise CorruptGroupRecordError(f"undecodable group record {encoded!r}: {exc}") from exc
    raise CorruptGroupRecordError(f"unknown group record key {encoded.key!r}")


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
    _check_version(fields)
    return OffsetCommitValue(
        offset=_int(fields["offset"]),
        leader_epoch=_int(fields["leader_epoch"]),
        metadata=_str(fields["metadata"]),
        commit_timestamp_ms=_int(fields["commit_ts"]),
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
    _check_version(fields)
    members = []
    for row in fields["members"]:
        if len(row) != len(_MEMBER_FIELDS):
            raise ValueError(f"member row has {len(row)} fields, expected {len(_MEMBER_FIELDS)}")
        member = MemberMetadata(*row)
        if not isinstance(member.subscription, bytes) or not isinstance(member.assignment, bytes):
            raise ValueError("member subscription and assignment must be bytes")
        members.append(member)
    return GroupMetadataValue(
        protocol_type=_str(fields["protocol_type"]),
        generation=_int(fields["generation"]),
        protocol_name=fields["protocol"],
        leader_id=fields["leader"],
        state_timestamp_ms=_int(fields["state_ts"]),
        members=tuple(members),
    )


def _check_version(fields: dict[str, Any]) -> None:
    if not isinstance(fields, dict):
        raise ValueError(f"expected a map, got {fields!r}")
    if fields.get("v") != VALUE_VERSION:
        raise ValueError(f"unknown value version {fields.get('v')!r}")


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


# --- the materialized view ------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class GroupStore:
    """What a coordinator partition's records say: metadata and committed offsets per group.

    Mutated only by `apply`, in log order. Equality compares everything, which is what the
    failover tests check (`replay(log) == live_store`).
    """

    metadata: dict[str, GroupMetadataValue] = dataclasses.field(default_factory=dict)
    offsets: dict[str, dict[TopicPartition, OffsetCommitValue]] = dataclasses.field(
        default_factory=dict
    )

    def apply(self, record: GroupRecord) -> None:
        if isinstance(record, GroupMetadataRecord):
            if record.value is None:
                self.metadata.pop(record.group_id, None)
            else:
                self.metadata[record.group_id] = record.value
            return
        group_offsets = self.offsets.setdefault(record.group_id, {})
        if record.value is None:
            group_offsets.pop(record.topic_partition, None)
        else:
            group_offsets[record.topic_partition] = record.value
        # An empty dict and a missing key mean the same thing; keep one form so equality holds.
        if not group_offsets:
            del self.offsets[record.group_id]

    def group_ids(self) -> list[str]:
        return sorted(self.metadata.keys() | self.offsets.keys())

    def offsets_of(self, group_id: str) -> dict[TopicPartition, OffsetCommitValue]:
        return self.offsets.get(group_id, {})

    def offset_count(self) -> int:
        return sum(len(group_offsets) for group_offsets in self.offsets.values())


def replay(records: Iterable[EncodedRecord]) -> GroupStore:
    """Rebuild a partition's store from its records, oldest first (failover, LMDB-less start)."""
    store = GroupStore()
    for encoded in records:
        store.apply(decode_record(encoded))
    return store
