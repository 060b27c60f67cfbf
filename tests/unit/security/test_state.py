"""The replicated security state: records applied, prepared from requests, snapshotted in the
controller's snapshot, and kept by a single node in LMDB across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.controller.records import AclCreated, ClientQuotaSet, MetadataRecordError, acl_record
from broker.controller.state import ControllerStateMachine
from broker.kvstore import KvStore
from broker.security.acl import (
    AclBinding,
    AclFilter,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)
from broker.security.quota import DEFAULT, QuotaEntity, QuotaKind
from broker.security.state import SecurityState
from broker.security.store import SecurityStore
from tests.unit.security.strategies import security_records


def binding(name: str, operation: Operation = Operation.READ) -> AclBinding:
    return AclBinding(
        ResourceType.TOPIC,
        name,
        PatternType.LITERAL,
        "User:alice",
        "*",
        operation,
        Permission.ALLOW,
    )


def test_prepare_create_skips_existing_and_delete_takes_what_filters_select() -> None:
    state = SecurityState()
    for record in state.prepare_create_acls([binding("a"), binding("b")]):
        assert state.apply(record)
    assert [r.binding() for r in state.prepare_create_acls([binding("a")])] == []
    deleted = state.prepare_delete_acls([AclFilter(resource_name="a"), AclFilter(principal="x")])
    assert [r.binding() for r in deleted] == [binding("a")]
    for record in deleted:
        state.apply(record)
    assert list(state.acls) == [binding("b")]


def test_prepare_alter_quotas_sets_changed_values_and_removes_present_keys() -> None:
    state = SecurityState()
    entity = QuotaEntity(DEFAULT, None)
    values = {QuotaKind.REQUEST_RATE: 5, QuotaKind.PRODUCER_BYTE_RATE: 100}
    for record in state.prepare_alter_quotas(entity, values, ()):
        state.apply(record)
    assert state.quotas.get(entity) == values
    same = state.prepare_alter_quotas(entity, {QuotaKind.REQUEST_RATE: 5}, ())
    assert same == []
    removal = state.prepare_alter_quotas(
        entity, {}, [QuotaKind.REQUEST_RATE, QuotaKind.CONSUMER_BYTE_RATE]
    )
    assert removal == [ClientQuotaSet(DEFAULT, None, "request_rate", None)]


@given(st.lists(security_records, max_size=30))
def test_the_snapshot_round_trips_inside_the_controllers(records: list[object]) -> None:
    machine = ControllerStateMachine(validate=True)
    for index, record in enumerate(records, start=1):
        machine.apply(record, index)  # type: ignore[arg-type]
    restored = ControllerStateMachine.from_bytes(machine.to_bytes())
    assert restored == machine
    assert restored.security == machine.security
    assert restored.to_bytes() == machine.to_bytes()


def test_a_snapshot_without_security_state_is_unchanged() -> None:
    """Clusters that never used ACLs write the snapshot bytes they wrote before."""
    machine = ControllerStateMachine()
    assert b"security" not in machine.to_bytes()


def test_a_corrupt_security_snapshot_is_refused() -> None:
    with pytest.raises(MetadataRecordError):
        SecurityState.from_wire({"acls": [["topic", "t"]], "quotas": []})
    with pytest.raises(MetadataRecordError):
        SecurityState.from_wire({"acls": []})


def test_a_single_node_keeps_acls_and_quotas_across_a_restart(tmp_path: Path) -> None:
    store = KvStore.open(tmp_path / "meta")
    security = SecurityStore(store)
    security.commit([acl_record(AclCreated, binding("a")), acl_record(AclCreated, binding("b"))])
    security.commit(security.state.prepare_delete_acls([AclFilter(resource_name="a")]))
    security.commit([ClientQuotaSet("alice", None, "producer_byte_rate", 1000)])
    security.commit([ClientQuotaSet(None, "app", "request_rate", 10)])
    security.commit([ClientQuotaSet(None, "app", "request_rate", None)])
    store.close()
    reopened = SecurityStore(KvStore.open(tmp_path / "meta"))
    assert reopened.state == security.state
    assert list(reopened.state.acls) == [binding("b")]
    assert reopened.state.quotas.entries() == [
        (QuotaEntity("alice", None), {QuotaKind.PRODUCER_BYTE_RATE: 1000})
    ]
