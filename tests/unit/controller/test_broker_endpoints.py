"""Goal: a broker registers every listener's advertised address (`BrokerRegistered.endpoints`,
record version 1) and the state keeps them through the log and through snapshots, while a
registration without endpoints is still written as version 0, byte for byte what older brokers
wrote and read, and version 0 records decode with no endpoints."""

from __future__ import annotations

import msgpack
import pytest

from broker.controller.records import (
    BrokerRegistered,
    BrokerState,
    MetadataRecordError,
    decode_record,
    encode_record,
    record_from_wire,
    record_to_wire,
)
from broker.controller.state import ControllerSnapshotError, ControllerStateMachine
from tests.unit.controller.harness import MetadataLog
from wire.error_codes import BrokerError, ErrorCode

ENDPOINTS = (("INTERNAL", "10.0.0.1", 9092), ("EXTERNAL", "broker1.example.com", 9093))


def test_a_registration_without_endpoints_is_version_0_as_before() -> None:
    record = BrokerRegistered(1, "localhost", 9092, 7)
    # The bytes older brokers wrote: [1, 0, {node_id, host, port, incarnation}].
    assert encode_record(record) == msgpack.packb(
        [1, 0, {"node_id": 1, "host": "localhost", "port": 9092, "incarnation": 7}],
        use_bin_type=True,
    )
    assert decode_record(encode_record(record)) == record


def test_a_registration_with_endpoints_is_version_1() -> None:
    record = BrokerRegistered(1, "10.0.0.1", 9092, 7, ENDPOINTS)
    wire = record_to_wire(record)
    assert wire[:2] == [1, 1]
    assert wire[2]["endpoints"] == [list(endpoint) for endpoint in ENDPOINTS]
    assert decode_record(encode_record(record)) == record


def test_a_version_0_record_decodes_without_endpoints() -> None:
    wire = [1, 0, {"node_id": 1, "host": "h", "port": 1, "incarnation": 2}]
    assert record_from_wire(wire) == BrokerRegistered(1, "h", 1, 2, ())


def test_endpoints_in_a_version_0_record_are_corruption() -> None:
    wire = [1, 0, {"node_id": 1, "host": "h", "port": 1, "incarnation": 2, "endpoints": []}]
    with pytest.raises(MetadataRecordError, match=r"unknown fields \['endpoints'\]"):
        record_from_wire(wire)


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ([["A", "h", 1], ["A", "h", 2]], "names a listener twice"),
        ([["A", "h", 0]], "port: must be between 1 and 65535"),
        ([["9A", "h", 1]], "bad listener name"),
        ([["A", "", 1]], "host: expected a non-empty string"),
        ([["A", "h"]], "expected \\(listener, host, port\\)"),
        ("A=h:1", "expected at most"),
    ],
)
def test_bad_endpoints_are_refused(endpoints: object, message: str) -> None:
    wire = [1, 1, {"node_id": 1, "host": "h", "port": 1, "incarnation": 2, "endpoints": endpoints}]
    with pytest.raises(MetadataRecordError, match=message):
        record_from_wire(wire)


def test_the_state_keeps_endpoints_and_a_changed_set_is_a_new_registration() -> None:
    log = MetadataLog()
    machine = log.machine
    log.commit(machine.prepare_register_broker(1, "10.0.0.1", 9092, 7, ENDPOINTS))
    info = machine.broker(1)
    assert info is not None and info.endpoints == ENDPOINTS
    # The same registration again (a retry) is nothing new; other endpoints are.
    assert machine.prepare_register_broker(1, "10.0.0.1", 9092, 7, ENDPOINTS) == []
    fewer = ENDPOINTS[:1]
    (record,) = machine.prepare_register_broker(1, "10.0.0.1", 9092, 7, fewer)
    log.commit([record])
    assert machine.broker(1).endpoints == fewer  # type: ignore[union-attr]
    assert log.replay() == machine


def test_only_the_peer_address_must_be_a_brokers_own() -> None:
    """Two brokers may advertise one address on a listener (0.0.0.0:9094 bound on every
    machine); their peer addresses must differ, as before endpoints existed."""
    log = MetadataLog()
    log.commit(log.machine.prepare_register_broker(1, "10.0.0.1", 9092, 7, ENDPOINTS))
    log.set_state(1, BrokerState.ACTIVE)
    shared = (("INTERNAL", "10.0.0.2", 9092), ("EXTERNAL", "broker1.example.com", 9093))
    assert log.machine.prepare_register_broker(2, "10.0.0.2", 9092, 1, shared)
    with pytest.raises(BrokerError, match=r"broker 1 already serves 10\.0\.0\.1:9092") as e:
        log.machine.prepare_register_broker(2, "10.0.0.1", 9092, 1, ENDPOINTS)
    assert e.value.code is ErrorCode.INVALID_REQUEST
    with pytest.raises(BrokerError, match="names a listener twice") as e:
        log.machine.prepare_register_broker(2, "10.0.0.2", 9092, 1, (ENDPOINTS[0], ENDPOINTS[0]))
    assert e.value.code is ErrorCode.INVALID_REQUEST


def test_snapshots_keep_endpoints_and_stay_unchanged_without_them() -> None:
    log = MetadataLog()
    log.add_brokers(1)  # without endpoints: a six-field row, as older brokers wrote
    log.commit(log.machine.prepare_register_broker(2, "10.0.0.2", 9092, 7, ENDPOINTS))
    log.commit(log.machine.prepare_decommission_broker(2))
    snapshot = log.machine.to_bytes()
    rows = msgpack.unpackb(snapshot)["brokers"]
    assert len(rows[0]) == 6
    assert rows[1][6:] == [True, [list(endpoint) for endpoint in ENDPOINTS]]
    restored = ControllerStateMachine.from_bytes(snapshot, validate=True)
    assert restored == log.machine and restored.to_bytes() == snapshot
    assert restored.broker(2).endpoints == ENDPOINTS  # type: ignore[union-attr]
    assert restored.broker(2).decommissioning  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "tail",
    [[False], [False, []], ["yes", [["A", "h", 1]]], [False, [["A", "h", 0]]], [True, 1, 2]],
)
def test_malformed_broker_rows_are_refused(tail: list[object]) -> None:
    log = MetadataLog()
    log.add_brokers(1)
    snapshot = msgpack.unpackb(log.machine.to_bytes())
    snapshot["brokers"][0] += tail
    with pytest.raises(ControllerSnapshotError):
        ControllerStateMachine.from_bytes(msgpack.packb(snapshot))
