"""The replicated security state: ACL bindings and client quota configs, pure.

One `SecurityState` lives in the controller's state machine on every cluster member (fed by the
metadata log's `AclCreated`, `AclDeleted` and `ClientQuotaSet` records, and carried by its
snapshots), and one in a single-node broker (fed by the same records, kept in LMDB by
`broker/security/store.py`). `prepare_*` turn an admin request into the records that carry it out,
validated against the current state, as the controller's `prepare_*` do for topics.

Rules: pure; apply is deterministic; snapshots are sorted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from broker.controller.records import (
    AclCreated,
    AclDeleted,
    ClientQuotaSet,
    MetadataRecordError,
    acl_record,
)
from broker.security.acl import AclBinding, AclFilter, AclIndex
from broker.security.quota import QuotaConfigs, QuotaEntity, QuotaKind, parse_kind

SecurityRecord = AclCreated | AclDeleted | ClientQuotaSet
SECURITY_RECORD_TYPES: Final = (AclCreated, AclDeleted, ClientQuotaSet)
# Bounds: ACL bindings and quota entities a cluster keeps (each is checked on every request it
# matches, and all of them are in every snapshot).
ACL_COUNT_MAX: Final = 100_000
QUOTA_ENTITY_COUNT_MAX: Final = 100_000


class SecurityState:
    """ACLs (`acls`, an `AclIndex`) and quota configs (`quotas`)."""

    def __init__(self) -> None:
        self.acls = AclIndex()
        self.quotas = QuotaConfigs()
        # Bumped by every applied change: caches keyed on it (none yet) know when to refresh.
        self.version = 0

    def is_empty(self) -> bool:
        return not len(self.acls) and not len(self.quotas)

    # --- apply ------------------------------------------------------------------------------------

    def apply(self, record: SecurityRecord) -> bool:
        """Apply one record; False if it changed nothing (a duplicate add, an absent removal)."""
        if isinstance(record, AclCreated):
            changed = self.acls.add(record.binding())
        elif isinstance(record, AclDeleted):
            changed = self.acls.remove(record.binding())
        else:
            assert isinstance(record, ClientQuotaSet), record
            changed = self.quotas.set(record.entity(), parse_kind(record.key), record.value)
        if changed:
            self.version += 1
        return changed

    # --- prepare (validated against the current state) -------------------------------------------

    def prepare_create_acls(self, bindings: Iterable[AclBinding]) -> list[SecurityRecord]:
        """AclCreated for each binding not already there; ValueError past ACL_COUNT_MAX."""
        new = sorted({b for b in bindings if b not in self.acls}, key=AclBinding.sort_key)
        if len(self.acls) + len(new) > ACL_COUNT_MAX:
            raise ValueError(
                f"{len(self.acls)} ACLs exist and {len(new)} more would pass the limit of "
                f"{ACL_COUNT_MAX}; remove unused ACLs or use prefixed patterns"
            )
        return [acl_record(AclCreated, binding) for binding in new]

    def prepare_delete_acls(self, filters: Sequence[AclFilter]) -> list[SecurityRecord]:
        """AclDeleted for every binding some filter selects."""
        doomed = {b for acl_filter in filters for b in self.acls.matching(acl_filter)}
        return [acl_record(AclDeleted, b) for b in sorted(doomed, key=AclBinding.sort_key)]

    def prepare_alter_quotas(
        self, entity: QuotaEntity, values: Mapping[QuotaKind, int], remove: Iterable[QuotaKind]
    ) -> list[SecurityRecord]:
        """ClientQuotaSet records setting `values` and removing `remove`; ValueError (with the
        reason) for a bad rate or past QUOTA_ENTITY_COUNT_MAX."""
        current = self.quotas.get(entity)
        if not current and values and len(self.quotas) >= QUOTA_ENTITY_COUNT_MAX:
            raise ValueError(f"{QUOTA_ENTITY_COUNT_MAX} quota entities exist; remove unused ones")
        records: list[SecurityRecord] = []
        for kind in sorted(values, key=lambda k: k.value):
            if current.get(kind) != values[kind]:
                records.append(
                    ClientQuotaSet(entity.user, entity.client_id, kind.value, values[kind])
                )
        for kind in sorted(set(remove), key=lambda k: k.value):
            if kind in current and kind not in values:
                records.append(ClientQuotaSet(entity.user, entity.client_id, kind.value, None))
        return records

    # --- snapshots --------------------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """Deterministic msgpack-ready form (the controller snapshot's "security" entry)."""
        return {
            "acls": [list(binding.sort_key()) for binding in self.acls],
            "quotas": [
                [entity.user, entity.client_id, {k.value: v for k, v in sorted_values(values)}]
                for entity, values in self.quotas.entries()
            ],
        }

    @classmethod
    def from_wire(cls, wire: Any) -> SecurityState:
        """Rebuild from `to_wire()`; MetadataRecordError if it is not valid."""
        state = cls()
        if not isinstance(wire, dict) or set(wire) != {"acls", "quotas"}:
            raise MetadataRecordError("security snapshot: expected a map of acls and quotas")
        for row in _list(wire["acls"]):
            if not isinstance(row, list) or len(row) != 7:
                raise MetadataRecordError(f"security snapshot: bad ACL row {row!r:.200}")
            state.apply(AclCreated(*row))
        for row in _list(wire["quotas"]):
            if not isinstance(row, list) or len(row) != 3 or not isinstance(row[2], dict):
                raise MetadataRecordError(f"security snapshot: bad quota row {row!r:.200}")
            for key, value in row[2].items():
                state.apply(ClientQuotaSet(row[0], row[1], key, value))
        state.version = 0
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecurityState):
            return NotImplemented
        return list(self.acls) == list(other.acls) and self.quotas == other.quotas

    __hash__ = None  # type: ignore[assignment]  # mutable


def sorted_values(values: Mapping[QuotaKind, int]) -> list[tuple[QuotaKind, int]]:
    return sorted(values.items(), key=lambda item: item[0].value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise MetadataRecordError(f"security snapshot: expected a list, got {value!r:.200}")
    return value
