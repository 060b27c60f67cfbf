"""Goal: every record a group writes reads back exactly, garbage is refused loudly, and replay
(with tombstones, in log order) rebuilds the store the live coordinator holds."""

from __future__ import annotations

import zlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import (
    CorruptGroupRecordError,
    EncodedRecord,
    GroupMetadataRecord,
    GroupMetadataValue,
    GroupStore,
    MemberMetadata,
    OffsetCommitRecord,
    OffsetCommitValue,
    coordinator_partition,
    decode_record,
    encode_record,
    replay,
)

from .harness import PROPERTY_SETTINGS

names = st.text(min_size=1, max_size=8)
ints = st.integers(-1, 2**40)
members = st.builds(
    MemberMetadata,
    member_id=names,
    group_instance_id=st.none() | names,
    client_id=st.text(max_size=5),
    client_host=st.text(max_size=5),
    session_timeout_ms=ints,
    rebalance_timeout_ms=ints,
    subscription=st.binary(max_size=16),
    assignment=st.binary(max_size=16),
)
group_values = st.builds(
    GroupMetadataValue,
    protocol_type=st.text(max_size=8),
    generation=ints,
    protocol_name=st.none() | names,
    leader_id=st.none() | names,
    state_timestamp_ms=ints,
    members=st.lists(members, max_size=3).map(tuple),
)
offset_values = st.builds(
    OffsetCommitValue,
    offset=ints,
    leader_epoch=ints,
    metadata=st.text(max_size=8),
    commit_timestamp_ms=ints,
)
partitions = st.builds(TopicPartition, st.sampled_from(["a", "b"]), st.integers(0, 3))
group_ids = st.sampled_from(["g1", "g2", "g3"])
records = st.one_of(
    st.builds(GroupMetadataRecord, group_ids, st.none() | group_values),
    st.builds(OffsetCommitRecord, group_ids, partitions, st.none() | offset_values),
)


@PROPERTY_SETTINGS
@given(records)
def test_every_record_round_trips(record) -> None:
    encoded = encode_record(record)
    assert decode_record(encoded) == record
    assert (encoded.value is None) == (record.value is None), "tombstones are null values"


@PROPERTY_SETTINGS
@given(st.lists(records, max_size=40))
def test_replay_applies_records_in_order_like_a_dict(sequence) -> None:
    model_metadata: dict = {}
    model_offsets: dict = {}
    for record in sequence:
        if isinstance(record, GroupMetadataRecord):
            model_metadata[record.group_id] = record.value
        else:
            model_offsets[(record.group_id, record.topic_partition)] = record.value
    store = replay(encode_record(r) for r in sequence)
    assert store.metadata == {g: v for g, v in model_metadata.items() if v is not None}
    flat = {(g, p): v for g, parts in store.offsets.items() for p, v in parts.items()}
    assert flat == {k: v for k, v in model_offsets.items() if v is not None}
    assert all(store.offsets.values()), "no empty per-group dicts linger"
    # Compaction keeps the last record per key: replaying the compacted log gives the same store.
    last: dict = {}
    for record in sequence:
        encoded = encode_record(record)
        last.pop(encoded.key, None)
        last[encoded.key] = encoded
    assert replay(last.values()) == store


@pytest.mark.parametrize(
    "encoded",
    [
        EncodedRecord(b"\xc1", None),
        EncodedRecord(msgpack.packb([9, "g"]), None),
        EncodedRecord(msgpack.packb([1, "g", "t"]), None),
        EncodedRecord(msgpack.packb([1, "g", "t", "zero"]), None),
        EncodedRecord(msgpack.packb([1, "g", "t", 0]), msgpack.packb({"v": 7})),
        EncodedRecord(msgpack.packb([1, "g", "t", 0]), msgpack.packb({"v": 0, "offset": 1})),
        EncodedRecord(msgpack.packb([2, "g"]), msgpack.packb([1, 2])),
        EncodedRecord(
            msgpack.packb([2, "g"]),
            msgpack.packb(
                {
                    "v": 0,
                    "protocol_type": "c",
                    "generation": 1,
                    "protocol": None,
                    "leader": None,
                    "state_ts": 0,
                    "members": [["m"]],
                }
            ),
        ),
    ],
)
def test_garbage_is_refused_loudly(encoded: EncodedRecord) -> None:
    with pytest.raises(CorruptGroupRecordError):
        decode_record(encoded)


def test_keys_are_shared_by_records_and_their_tombstones() -> None:
    tp = TopicPartition("t", 1)
    live = encode_record(OffsetCommitRecord("g", tp, OffsetCommitValue(1, 0, "", 5)))
    dead = encode_record(OffsetCommitRecord("g", tp, None))
    assert live.key == dead.key and dead.value is None
    assert msgpack.unpackb(live.key) == [1, "g", "t", 1]
    assert msgpack.unpackb(encode_record(GroupMetadataRecord("g", None)).key) == [2, "g"]


def test_an_empty_store_equals_a_replay_of_nothing() -> None:
    assert replay([]) == GroupStore()
    assert GroupStore().group_ids() == []


def test_coordinator_partition_is_stable_and_in_range() -> None:
    # A fixed value: every broker and client must agree, across processes and versions.
    assert coordinator_partition("orders", 50) == coordinator_partition("orders", 50)
    assert coordinator_partition("g", 1) == 0
    assert coordinator_partition("orders", 50) == zlib.crc32(b"orders") % 50
    assert all(0 <= coordinator_partition(f"g{i}", 7) < 7 for i in range(100))
