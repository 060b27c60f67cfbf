"""Where a broker finds users' SCRAM credentials, and the first super-user's creation.

- Single node: `LocalUsers`, a `ScramUsers` persisted in the LMDB key space `users` (one key per
  user and mechanism, the value the `ScramCredentialSet` record that sets it).
- Cluster: `ClusterUsers`, a view of the controller state machine's `scram_users`, which every
  broker applies from the metadata log; changes go to the controller leader
  (handlers/users.py), so a user created through any broker can log in through every broker once
  its record is applied there.

Both answer `lookup(name, mechanism)` for the logins of `broker.auth.session`. The first
super-user's credential is created at the first start when absent (`ensure_super_user_locally`
on a single node, `keep_super_user` by the controller leader of a cluster), from the password
given to `broker serve` (BROKER_ADMIN_PASSWORD or its prompt). That password also logs this
broker in to its peers, and it stands in for the super-user's credential until the metadata has
one (a cluster's brokers must reach each other before they can elect the controller that would
write it): `bootstrap_credential`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import trio

from broker.controller.records import (
    MetadataRecordError,
    ScramCredentialRemoved,
    ScramCredentialSet,
    decode_record,
    encode_record,
)
from broker.controller.scram_users import ScramUsers, prepare_alter
from broker.kvstore import KeySpace, KvStore
from wire import codec
from wire.error_codes import BrokerError
from wire.sasl_client import credential_upsertion
from wire.scram import SALT_BYTES, ScramCredential, ScramMechanism, make_credential

logger = logging.getLogger(__name__)

# How often a cluster's controller leader checks that the first super-user exists.
SUPER_USER_CHECK_INTERVAL_S = 1.0


def super_user_upsertions(name: str, password: str) -> tuple[codec.ScramCredentialUpsertion, ...]:
    """The first super-user's credentials: both mechanisms, so a client may use either."""
    return tuple(credential_upsertion(name, password, m) for m in ScramMechanism)


class LocalUsers:
    """A single node's users, in LMDB."""

    def __init__(self, store: KvStore) -> None:
        self._store = store
        self.users = ScramUsers()
        for key, value in store.items(KeySpace.USERS):
            try:
                record = decode_record(value)
                if not isinstance(record, ScramCredentialSet):
                    raise MetadataRecordError(f"a {type(record).__name__}, not a credential")
            except MetadataRecordError as exc:
                # Only that user cannot log in; refusing to start would lock everyone out.
                logger.error(
                    "the users store in %s holds a damaged credential %r (%s): that user "
                    "cannot log in until it is created again (broker-cli users create)",
                    store.path,
                    key.decode(errors="replace"),
                    exc,
                )
                continue
            self.users.apply_set(record)

    def lookup(self, name: str, mechanism: ScramMechanism) -> ScramCredential | None:
        return self.users.lookup(name, mechanism)

    def alter(
        self,
        upsertions: Sequence[codec.ScramCredentialUpsertion],
        deletions: Sequence[codec.ScramCredentialDeletion],
    ) -> list[codec.UserScramResult]:
        """Apply a request's changes (durably) and return a result per user."""
        records, results = prepare_alter(self.users, upsertions, deletions)
        for record in records:
            key = f"{record.name}\0{record.mechanism}".encode()
            if isinstance(record, ScramCredentialRemoved):
                self._store.delete(KeySpace.USERS, key)
                self.users.apply_removed(record)
            else:
                self._store.put(KeySpace.USERS, key, encode_record(record))
                self.users.apply_set(record)
        return results


class ClusterUsers:
    """A cluster member's view of the users: the metadata this broker has applied."""

    def __init__(self, node: Any) -> None:
        self._node = node

    @property
    def users(self) -> ScramUsers:
        # Read through each time: installing a snapshot replaces the state machine.
        users: ScramUsers = self._node.controller.machine.scram_users
        return users

    def lookup(self, name: str, mechanism: ScramMechanism) -> ScramCredential | None:
        return self.users.lookup(name, mechanism)


class BootstrapCredentials:
    """The first super-user's credentials made from the password `broker serve` was given,
    consulted only while the metadata has none for that user (see the module docstring)."""

    def __init__(self, name: str, password: str | None) -> None:
        self.name = name
        self._credentials = (
            {
                m: make_credential(m, password, secrets.token_bytes(SALT_BYTES))
                for m in ScramMechanism
            }
            if password
            else {}
        )

    def lookup(self, name: str, mechanism: ScramMechanism) -> ScramCredential | None:
        return self._credentials.get(mechanism) if name == self.name else None


def credential_lookup(
    users: LocalUsers | ClusterUsers, bootstrap: BootstrapCredentials
) -> Callable[[str, ScramMechanism], ScramCredential | None]:
    """The logins' lookup: the stored credential, else the bootstrap one of the super-user."""

    def lookup(name: str, mechanism: ScramMechanism) -> ScramCredential | None:
        stored = users.lookup(name, mechanism)
        if stored is not None or users.users.credentials_of(name):
            return stored
        return bootstrap.lookup(name, mechanism)

    return lookup


def fake_salt_key(users: LocalUsers | ClusterUsers, super_user: str, fallback: bytes) -> bytes:
    """The secret unknown users' salts derive from: from the super-user's ServerKey when there is
    one (the same on every broker of a cluster and across restarts, so asking several brokers
    about one name shows one salt), else this process's random `fallback`."""
    for credential in users.users.credentials_of(super_user):
        return hmac.new(credential.server_key, b"fake-salt-key", hashlib.sha256).digest()
    return fallback


def ensure_super_user_locally(users: LocalUsers, name: str, password: str | None) -> bool:
    """Single node: create the super-user's credentials if it has none; False if it has none
    and no password was given (the caller refuses to start)."""
    if users.users.credentials_of(name):
        return True
    if not password:
        return False
    users.alter(super_user_upsertions(name, password), ())
    logger.info("created the super-user %r (SCRAM-SHA-256 and SCRAM-SHA-512)", name)
    return True


async def keep_super_user(node: Any, name: str, password: str) -> None:
    """Cluster: while this broker's controller leads, create the super-user's credentials if
    the metadata has none (the first start of the cluster). Runs until cancelled."""
    while True:
        await trio.sleep(SUPER_USER_CHECK_INTERVAL_S)
        controller = node.controller
        if not controller.is_leader or controller.machine.scram_users.credentials_of(name):
            continue
        try:
            await controller.alter_scram_credentials(super_user_upsertions(name, password), ())
        except BrokerError as exc:  # NotControllerError, a timeout: try again next round
            logger.info("could not create the super-user %r yet: %s", name, exc)
            continue
        logger.info("created the super-user %r in the cluster metadata", name)
