"""A single-node broker's ACLs and quotas, kept in its LMDB store (key space `security`).

A cluster keeps them in the controller's metadata log; a single node has no controller, so it
stores the same records' effect here, one key per ACL binding and per (entity, quota key), and
rebuilds its `SecurityState` from them at start-up. Each change is written durably before it is
applied, so an acknowledged `broker-cli acls add` survives a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from broker.controller.records import AclCreated, AclDeleted, ClientQuotaSet, MetadataRecordError
from broker.kvstore import KeySpace, KvStore, MetadataStoreError
from broker.security.state import SecurityRecord, SecurityState

_ACL_PREFIX = b"acl\x00"
_QUOTA_PREFIX = b"quota\x00"


def _acl_key(record: AclCreated | AclDeleted) -> bytes:
    return _ACL_PREFIX + msgpack.packb(list(record.binding().sort_key()), use_bin_type=True)


def _quota_key(record: ClientQuotaSet) -> bytes:
    fields = [record.user, record.client_id, record.key]
    return _QUOTA_PREFIX + msgpack.packb(fields, use_bin_type=True)


class SecurityStore:
    """`state` plus its persistence; `commit(records)` is the only way to change it."""

    def __init__(self, store: KvStore) -> None:
        self._store = store
        self.state = SecurityState()
        try:
            for key, _ in store.items(KeySpace.SECURITY, _ACL_PREFIX):
                self.state.apply(AclCreated(*_unpack(key[len(_ACL_PREFIX) :])))
            for key, value in store.items_obj(KeySpace.SECURITY, _QUOTA_PREFIX):
                user, client_id, quota_key = _unpack(key[len(_QUOTA_PREFIX) :])
                self.state.apply(ClientQuotaSet(user, client_id, quota_key, value))
        except (MetadataRecordError, TypeError, ValueError) as exc:
            raise MetadataStoreError(
                store.path, f"its ACLs or quotas are not readable ({exc})"
            ) from exc

    def commit(self, records: Sequence[SecurityRecord]) -> None:
        """Persist (durably) and apply `records`, in order."""
        for record in records:
            if isinstance(record, AclCreated):
                self._store.put(KeySpace.SECURITY, _acl_key(record), b"")
            elif isinstance(record, AclDeleted):
                self._store.delete(KeySpace.SECURITY, _acl_key(record))
            elif record.value is None:
                self._store.delete(KeySpace.SECURITY, _quota_key(record))
            else:
                self._store.put_obj(KeySpace.SECURITY, _quota_key(record), record.value)
            self.state.apply(record)


def _unpack(data: bytes) -> Any:
    fields = msgpack.unpackb(data, raw=False)
    if not isinstance(fields, list):
        raise ValueError(f"expected a list of fields, got {fields!r:.100}")
    return fields
