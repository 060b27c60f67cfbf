"""The client's transport security options, named as kafka-python names them.

Every client (`Producer`, `Consumer`, `ShareConsumer`, `AdminClient`, and their blocking twins)
takes them as keyword arguments:

    Producer("broker:9093", security_protocol="SSL", ssl_cafile="ca.pem")
    Consumer(..., security_protocol="SSL", ssl_cafile="ca.pem",
             ssl_certfile="alice.pem", ssl_keyfile="alice.key")   # mTLS

Rules: the TLS context is built when the client is created, so a missing file or a key that
does not match its certificate fails there (`ConfigError` naming the option). `ssl_*` options
with `security_protocol="PLAINTEXT"` are refused rather than ignored: a client meant to use TLS
must never fall back to plaintext silently. SASL (`SASL_PLAINTEXT`, `SASL_SSL`) is the
authentication layer's; here it only decides whether the transport is TLS.
"""

from __future__ import annotations

import ssl
from typing import TypedDict

from wire.config_error import ConfigError
from wire.tls import PLAINTEXT, client_context, uses_tls


class SecurityOptions(TypedDict, total=False):
    """kafka-python's transport security keywords (all optional)."""

    # PLAINTEXT (default) or SSL; SASL_PLAINTEXT/SASL_SSL add authentication on top.
    security_protocol: str
    # PEM CA certificates the broker's certificate must chain to (default: the system's CAs).
    ssl_cafile: str | None
    # PEM client certificate and its key, for brokers that require mTLS.
    ssl_certfile: str | None
    ssl_keyfile: str | None
    # Check that the broker's certificate names the host connected to (default True).
    ssl_check_hostname: bool


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
                "to connect over TLS",
            )
        return None
    return client_context(
        cafile=options.get("ssl_cafile"),
        certfile=options.get("ssl_certfile"),
        keyfile=options.get("ssl_keyfile"),
        check_hostname=bool(options.get("ssl_check_hostname", True)),
    )
