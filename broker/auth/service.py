"""The broker's authentication, as the server wires it: the users, the per-connection sessions,
and the login this broker uses towards its peers.

`broker/server.py` builds one `Authentication` per broker (`for_single_node` / `for_cluster`),
asks it for an `AuthSession` per connection, and runs `keep_super_user` in a cluster. Failures
the sessions report are counted in `broker_authentication_failures{reason}`.
"""

from __future__ import annotations

import secrets
from typing import Any

from broker.auth.session import FAILURE_REASONS, AuthSession
from broker.auth.users import (
    BootstrapCredentials,
    ClusterUsers,
    LocalUsers,
    credential_lookup,
    ensure_super_user_locally,
    fake_salt_key,
)
from broker.config import BrokerConfig
from broker.kvstore import KvStore
from wire.sasl_client import SaslLogin

# The environment variable `broker serve` reads the first super-user's password from.
ADMIN_PASSWORD_ENV = "BROKER_ADMIN_PASSWORD"


class AuthenticationSetupError(Exception):
    """Authentication cannot start as configured: the message says what to do."""


class Authentication:
    """One broker's authentication state (see the module docstring)."""

    def __init__(
        self,
        config: BrokerConfig,
        users: LocalUsers | ClusterUsers,
        admin_password: str | None,
        metrics: Any,
    ) -> None:
        self.config = config
        self.users = users
        self.super_user = config.super_users[0] if config.super_users else ""
        self._bootstrap = BootstrapCredentials(
            self.super_user, admin_password if config.auth_enabled else None
        )
        self._lookup = credential_lookup(users, self._bootstrap)
        self._fallback_key = secrets.token_bytes(32)
        self._failures = getattr(metrics, "authentication_failures", None)
        if self._failures is not None:
            for reason in FAILURE_REASONS:  # every series exported from the start, at 0
                self._failures.labels(reason=reason)

    @classmethod
    def for_single_node(
        cls, config: BrokerConfig, store: KvStore, admin_password: str | None, metrics: Any
    ) -> Authentication:
        users = LocalUsers(store)
        if config.auth_enabled and not ensure_super_user_locally(
            users, config.super_users[0], admin_password
        ):
            raise AuthenticationSetupError(
                f"--auth scram: the super-user {config.super_users[0]!r} does not exist yet; "
                f"give its password in {ADMIN_PASSWORD_ENV} (or at the prompt) on this first start"
            )
        return cls(config, users, admin_password, metrics)

    @classmethod
    def for_cluster(
        cls, config: BrokerConfig, node: Any, admin_password: str | None, metrics: Any
    ) -> Authentication:
        if config.auth_enabled and not admin_password:
            raise AuthenticationSetupError(
                f"--auth scram in a cluster: brokers log in to each other as the super-user "
                f"{config.super_users[0]!r}; give its password in {ADMIN_PASSWORD_ENV} (or at "
                "the prompt) on every start"
            )
        return cls(config, ClusterUsers(node), admin_password, metrics)

    def session(self, peer: str) -> AuthSession:
        return AuthSession(
            enabled=self.config.auth_enabled,
            peer=peer,
            lookup=self._lookup,
            fake_salt_key=lambda: fake_salt_key(self.users, self.super_user, self._fallback_key),
            count_failure=self._count_failure,
            is_super_user=self.config.is_super_user,
        )

    def _count_failure(self, reason: str) -> None:
        assert reason in FAILURE_REASONS, reason
        if self._failures is not None:
            self._failures.labels(reason=reason).inc()


def peer_login_of(config: BrokerConfig, admin_password: str | None) -> SaslLogin | None:
    """How this broker logs in to its peers: as the first super-user when auth is on."""
    if not config.auth_enabled or not admin_password:
        return None
    return SaslLogin(config.super_users[0], admin_password)
