"""Goal: metadata records survive encode/decode exactly, the bytes are stable and deterministic, and
anything that is not a valid record is rejected with MetadataRecordError (never a bare msgpack or
Python error), so a corrupt metadata log stops a broker loudly instead of misleading it."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.controller.records import (
    RECORD_BYTES_MAX,
    RECORD_TYPES,
    BrokerRegistered,
    BrokerState,
    BrokerStateChanged,
    ConfigSet,
    MetadataRecord,
    MetadataRecordError,
    PartitionAssignment,
    PartitionLeaderChanged,
    TopicCreated,
    TopicDeleted,
    UnsupportedRecordVersionError,
    decode_record,
    encode_record,
    record_from_wire,
    record_to_wire,
)
from tests.unit.controller.strategies import records

TOPIC_ID = "0123456789abcdef0123456789abcdef"


@given(records)
def test_decode_inverts_encode(record: MetadataRecord) -> None:
    payload = encode_record(record)
    decoded = decode_record(payload)
    assert decoded == record
    assert type(decoded) is type(record)
    # Deterministic: re-encoding what was decoded gives the same bytes.
    assert encode_record(decoded) == payload


def test_type_ids_never_change() -> None:
    """Type ids are the on-disk format: renumbering one would misread every old metadata log."""
    assert {cls.__name__: cls.TYPE_ID for cls in RECORD_TYPES} == {
        "BrokerRegistered": 1,
        "BrokerStateChanged": 2,
        "TopicCreated": 3,
        "TopicDeleted": 4,
        "PartitionAssignment": 5,
        "PartitionLeaderChanged": 6,
        "ConfigSet": 7,
        "BrokerDecommissioning": 8,
        "BrokerUnregistered": 9,
        "PartitionsCreated": 10,
        "PartitionReassignmentStarted": 20,
        "PartitionReassignmentCompleted": 21,
        "ScramCredentialSet": 40,
        "ScramCredentialRemoved": 41,
        "AclCreated": 30,
        "AclDeleted": 31,
        "ClientQuotaSet": 32,
    }


def test_encoding_is_pinned() -> None:
    """The exact bytes of one record: a change here is a format change (bump VERSION instead)."""
    record = TopicCreated("orders", TOPIC_ID, 3, 2, (("retention.ms", 1000),))
    assert encode_record(record).hex() == (
        "93030085a46e616d65a66f7264657273a8746f7069635f6964d920"
        + TOPIC_ID.encode().hex()
        + "af706172746974696f6e5f636f756e7403b27265706c69636174696f6e5f666163746f7202"
        "a7636f6e6669677381ac726574656e74696f6e2e6d73cd03e8"
    )


def test_config_order_does_not_change_the_bytes() -> None:
    first = ConfigSet("t", TOPIC_ID, "retention.ms", 5)
    assert decode_record(encode_record(first)) == first
    created = TopicCreated("t", TOPIC_ID, 1, 1, (("a", 1), ("b", 2)))
    wire = record_to_wire(created)
    wire[2]["configs"] = {"b": 2, "a": 1}  # a writer that did not sort
    assert record_from_wire(wire) == created


def test_older_version_without_a_later_field_decodes_with_its_default() -> None:
    """Evolution rule: a field added later has a default, so old records still decode."""
    wire = [
        TopicCreated.TYPE_ID,
        0,
        {"name": "t", "topic_id": TOPIC_ID, "partition_count": 1, "replication_factor": 1},
    ]
    assert decode_record(msgpack.packb(wire)) == TopicCreated("t", TOPIC_ID, 1, 1, ())


def test_newer_version_is_refused_with_an_upgrade_hint() -> None:
    wire = record_to_wire(TopicDeleted("t", TOPIC_ID))
    wire[1] = TopicDeleted.VERSION + 1
    with pytest.raises(UnsupportedRecordVersionError, match="upgrade this broker"):
        decode_record(msgpack.packb(wire))


def _registered_wire(**changes: object) -> list[object]:
    wire = record_to_wire(BrokerRegistered(1, "localhost", 9092, 7))
    wire[2].update(changes)
    return wire


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"not": "a list"}, "expected \\[type_id, version, fields\\]"),
        ([1, 0], "expected \\[type_id, version, fields\\]"),
        ([99, 0, {}], "unknown metadata record type 99"),
        ([True, 0, {}], "unknown metadata record type True"),
        ([1, -1, {}], "bad version"),
        ([1, 0, [1, 2]], "expected a map of fields"),
        ([1, 0, {"node_id": 1, "host": "h", "port": 1}], "missing field 'incarnation'"),
        (_registered_wire(extra=1), "unknown fields \\['extra'\\]"),
        (_registered_wire(node_id=True), "node_id: expected an integer, got True"),
        (_registered_wire(node_id=0), "node_id: must be between 1 and"),
        (_registered_wire(port=1.5), "port: expected an integer"),
        (_registered_wire(port=70000), "port: must be between 1 and 65535"),
        (_registered_wire(host=""), "host: expected a non-empty string"),
        (_registered_wire(host=b"bytes"), "host: expected a non-empty string"),
        ([2, 0, {"node_id": 1, "broker_epoch": 1, "state": "sleeping"}], "unknown broker state"),
        ([4, 0, {"name": "t", "topic_id": "XYZ"}], "topic_id: expected 32 lowercase hex"),
        (
            [5, 0, {"topic": "t", "topic_id": TOPIC_ID, "partition": 0, "replicas": [1, 1]}],
            "names a node twice",
        ),
        (
            [5, 0, {"topic": "t", "topic_id": TOPIC_ID, "partition": 0, "replicas": []}],
            "must name at least one node",
        ),
        (
            [5, 0, {"topic": "t", "topic_id": TOPIC_ID, "partition": 0, "replicas": "12"}],
            "expected a tuple of node ids",
        ),
        (
            [
                6,
                0,
                {
                    "topic": "t",
                    "topic_id": TOPIC_ID,
                    "partition": 0,
                    "leader": 3,
                    "leader_epoch": 1,
                    "in_sync_replicas": [1, 2],
                },
            ],
            "leader 3 is not in the in-sync replicas",
        ),
        (
            [
                3,
                0,
                {
                    "name": "t",
                    "topic_id": TOPIC_ID,
                    "partition_count": 1,
                    "replication_factor": 1,
                    "configs": {"k": [1]},
                },
            ],
            "expected a short str, int or bool",
        ),
        (
            # Finite floats are config values (min.cleanable.dirty.ratio); NaN is not.
            [7, 0, {"topic": "t", "topic_id": TOPIC_ID, "key": "k", "value": float("nan")}],
            "expected a finite number",
        ),
    ],
)
def test_malformed_records_are_named(wire: object, message: str) -> None:
    with pytest.raises(MetadataRecordError, match=message):
        decode_record(msgpack.packb(wire, use_bin_type=True))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x00",
        b"\x93\x01\x00\x80\x00",
        b"\xd4\x01\x00",
        b"\x81\x01\x02",
        b"\x81\xc0\x01",
        b"\xa3\xff\xfe\xfd",
    ],
)
def test_broken_msgpack_is_named(payload: bytes) -> None:
    with pytest.raises(MetadataRecordError):
        decode_record(payload)


def test_oversized_and_non_bytes_input_is_refused() -> None:
    with pytest.raises(MetadataRecordError, match="more than"):
        decode_record(b"\x00" * (RECORD_BYTES_MAX + 1))
    with pytest.raises(MetadataRecordError, match="expected bytes"):
        decode_record("not bytes")  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_the_named_error(payload: bytes) -> None:
    try:
        record = decode_record(payload)
    except MetadataRecordError:
        return
    assert encode_record(record)  # whatever decoded is a valid, encodable record


@given(records, st.data())
def test_damaged_records_decode_or_raise_the_named_error(
    record: MetadataRecord, data: st.DataObject
) -> None:
    payload = bytearray(encode_record(record))
    position = data.draw(st.integers(0, len(payload) - 1))
    payload[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(payload)))
    try:
        decoded = decode_record(bytes(payload[:cut]))
    except MetadataRecordError:
        return
    assert decode_record(encode_record(decoded)) == decoded


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BrokerRegistered(1, "h", 0, 1), "port"),
        (lambda: BrokerRegistered(1, "h", 1, -1), "incarnation"),
        (lambda: BrokerStateChanged(1, 1, "active"), "expected a BrokerState"),  # type: ignore[arg-type]
        (lambda: TopicCreated("t", TOPIC_ID, 0, 1), "partition_count"),
        (lambda: TopicCreated("t", TOPIC_ID, 1, 1, (("b", 1), ("a", 2))), "unique and sorted"),
        (lambda: TopicCreated("t", TOPIC_ID, 1, 1, (("a", 1), ("a", 2))), "unique and sorted"),
        (lambda: PartitionAssignment("t", TOPIC_ID, -1, (1,)), "partition"),
        (lambda: PartitionAssignment("t", TOPIC_ID, 0, [1]), "expected a tuple"),  # type: ignore[arg-type]
        (lambda: PartitionLeaderChanged("t", TOPIC_ID, 0, 0, 1, (0,)), "leader"),
        (lambda: ConfigSet("t", TOPIC_ID, "", 1), "key"),
    ],
)
def test_constructing_an_invalid_record_fails_loudly(build, message: str) -> None:
    with pytest.raises(MetadataRecordError, match=message):
        build()


def test_preferred_leader_is_the_first_replica() -> None:
    assert PartitionAssignment("t", TOPIC_ID, 0, (3, 1, 2)).preferred_leader == 3


def test_broker_states_have_stable_wire_names() -> None:
    assert [state.value for state in BrokerState] == ["fenced", "active", "shutting_down"]
