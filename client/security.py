"""The SDK's security options, named as kafka-python names them, and what they become.

Every client (`Producer`, `Consumer`, `ShareConsumer`, `AdminClient`, aio or blocking) takes them
as keyword options:

    Producer("broker:9093", security_protocol="SSL", ssl_cafile="ca.pem")
    Consumer(..., security_protocol="SASL_SSL", ssl_cafile="ca.pem",
             sasl_mechanism="SCRAM-SHA-512", sasl_username="alice", sasl_password="...")

`security_protocol` is PLAINTEXT (the default), SSL (TLS; with `ssl_certfile`/`ssl_keyfile` for
brokers that require mTLS), SASL_PLAINTEXT or SASL_SSL (log in with `sasl_mechanism`
SCRAM-SHA-256 (default) or SCRAM-SHA-512 as `sasl_username` with `sasl_password`, right after
each connection's handshake: `wire.sasl_client`; over TLS for SASL_SSL).

Rules: a wrong combination is a `ConfigError` naming the option, at construction. The TLS
context is built then too, so a missing file or a key that does not match its certificate fails
there. `ssl_*` options with a plaintext protocol are refused rather than ignored: a client meant
to use TLS must never fall back to plaintext silently.
"""

from __future__ import annotations

import ssl
from typing import TypedDict

from wire.config_error import ConfigError
from wire.sasl_client import SaslLogin, sasl_login_of
from wire.tls import PLAINTEXT, client_context, uses_tls


class SecurityOptions(TypedDict, total=False):
    """kafka-python's security keywords (all optional)."""

    # PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL.
    security_protocol: str
    # SCRAM-SHA-256 (default) or SCRAM-SHA-512, and the login, for the SASL_* protocols.
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str
    # PEM CA certificates the broker's certificate must chain to (default: the system's CAs).
    ssl_cafile: str | None
    # PEM client certificate and its key, for brokers that require mTLS.
    ssl_certfile: str | None
    ssl_keyfile: str | None
    # Check that the broker's certificate names the host connected to (default True).
    ssl_check_hostname: bool


def sasl_login(options: SecurityOptions) -> SaslLogin | None:
    """The login the options ask for (None: none); ConfigError naming the bad option."""
    unknown = set(options) - set(SecurityOptions.__annotations__)
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown security option")
    try:
        return sasl_login_of(
            options.get("security_protocol", PLAINTEXT),
            options.get("sasl_mechanism"),
            options.get("sasl_username"),
            options.get("sasl_password"),
        )
    except ValueError as exc:
        raise ConfigError("security_protocol", str(exc)) from None


def ssl_context_of(options: SecurityOptions) -> ssl.SSLContext | None:
    """The TLS context `options` ask for, or None for a plaintext transport.

    Raises `ConfigError` naming the option that is wrong.
    """
    protocol = options.get("security_protocol", PLAINTEXT)
    if not isinstance(protocol, str):
        raise ConfigError("security_protocol", f"expected a string, got {protocol!r}")
    files = {
        name: options.get(name)
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
        if options.get(name)
    }
    if not uses_tls(protocol):
        if files:
            name = next(iter(files))
            raise ConfigError(
                name,
                f"is given but security_protocol is {protocol!r}: set security_protocol='SSL' "
                "(or 'SASL_SSL') to connect over TLS",
            )
        return None
    return client_context(
        cafile=options.get("ssl_cafile"),
        certfile=options.get("ssl_certfile"),
        keyfile=options.get("ssl_keyfile"),
        check_hostname=bool(options.get("ssl_check_hostname", True)),
    )
