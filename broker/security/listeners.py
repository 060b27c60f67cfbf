"""Named listeners (`NAME=tls://HOST:PORT`, as Kafka's `listeners`) and what a connection knows
of its peer's security.

Pure: parsing and dataclasses only, no sockets and no `ssl`. `broker/server.py` opens one trio
listener per `ListenerSpec`, wraps the streams of a TLS listener in `trio.SSLStream`, and gives
every connection a `TransportIdentity`. The authentication code reads the mTLS principal there
(`_Connection.security.principal` in broker/server.py), and SASL replaces it after its exchange.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Final

from wire.config_error import ConfigError


class ListenerProtocol(enum.Enum):
    """The transport of a listener. SASL (the auth helpers') runs on top of either."""

    PLAINTEXT = "plaintext"
    TLS = "tls"

    @property
    def security_protocol(self) -> str:
        """Kafka's name of the transport (`security.protocol` without SASL)."""
        return "SSL" if self is ListenerProtocol.TLS else "PLAINTEXT"


# Listener names are Kafka's: letters, digits, '_' and '-' (they appear in metrics and logs).
_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# The name `listen` gets when no `listeners` are configured.
DEFAULT_LISTENER_NAME: Final = "CLIENT"


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One listener as configured: `name=protocol://host:port` (port 0: any free port)."""

    name: str
    protocol: ListenerProtocol
    host: str
    port: int

    @property
    def is_tls(self) -> bool:
        return self.protocol is ListenerProtocol.TLS

    def describe(self, port: int | None = None) -> str:
        """`NAME=proto://HOST:PORT`, with the bound `port` once known."""
        shown = self.port if port is None else port
        return f"{self.name}={self.protocol.value}://{self.host}:{shown}"


@dataclasses.dataclass(frozen=True, slots=True)
class TransportIdentity:
    """What the transport established about one connection's peer.

    `principal` is Kafka's `User:<name>`: for an mTLS client the certificate subject
    (`User:CN=alice,O=acme`), None when the transport proved nothing (plaintext, or TLS without
    a client certificate). The auth helpers' SASL exchange sets its own principal after this.
    """

    listener: str
    security_protocol: str
    peer_address: str
    certificate_subject: str | None = None

    @property
    def principal(self) -> str | None:
        if self.certificate_subject is None:
            return None
        return f"User:{self.certificate_subject}"


def parse_listeners(key: str, value: str) -> list[ListenerSpec]:
    """`NAME=PROTO://HOST:PORT[,NAME=PROTO://HOST:PORT...]`; raises `ConfigError` naming `key`."""
    listeners: list[ListenerSpec] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, url = item.partition("=")
        scheme, sep2, address = url.partition("://")
        if not sep or not sep2 or not _NAME.match(name):
            raise ConfigError(
                key,
                f"expected NAME=tls://HOST:PORT or NAME=plaintext://HOST:PORT, got {item!r}",
            )
        try:
            protocol = ListenerProtocol(scheme.lower())
        except ValueError:
            raise ConfigError(
                key, f"listener {name}: protocol {scheme!r} is not tls or plaintext"
            ) from None
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ConfigError(key, f"listener {name}: expected HOST:PORT, got {address!r}")
        if any(existing.name == name for existing in listeners):
            raise ConfigError(key, f"listener {name} is named twice")
        port = int(port_text)
        if port and any((other.host, other.port) == (host, port) for other in listeners):
            raise ConfigError(key, f"listener {name}: {host}:{port} is used by another listener")
        listeners.append(ListenerSpec(name, protocol, host, port))
    return listeners
