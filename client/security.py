"""The SDK's security options, named as kafka-python names them, and what they become.

`security_protocol` is PLAINTEXT (the default: no login), SASL_PLAINTEXT or SASL_SSL (log in
with `sasl_mechanism` SCRAM-SHA-256 (default) or SCRAM-SHA-512 as `sasl_username` with
`sasl_password`, right after each connection's handshake: `wire.sasl_client`). Every client
(`Producer`, `Consumer`, `ShareConsumer`, `AdminClient`, aio or blocking) takes them as keyword
options; a wrong combination is a `ConfigError` at construction.
"""

from __future__ import annotations

from typing import TypedDict

from wire.config_error import ConfigError
from wire.sasl_client import SaslLogin, sasl_login_of


class SecurityOptions(TypedDict, total=False):
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str


def sasl_login(options: SecurityOptions) -> SaslLogin | None:
    """The login the options ask for (None: none); ConfigError naming the bad option."""
    unknown = set(options) - set(SecurityOptions.__annotations__)
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown security option")
    try:
        return sasl_login_of(
            options.get("security_protocol", "PLAINTEXT"),
            options.get("sasl_mechanism"),
            options.get("sasl_username"),
            options.get("sasl_password"),
        )
    except ValueError as exc:
        raise ConfigError("security_protocol", str(exc)) from None
