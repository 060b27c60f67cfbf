"""Parsing the `bootstrap` argument shared by every client and `broker-cli`.

Accepted: "HOST:PORT", "HOST:PORT,HOST:PORT", or a list of "HOST:PORT" strings; an IPv6 host goes
in brackets ("[::1]:9092"). A port is required: a silent default would hide typos. Every client
takes it as its first argument or, as kafka-python does, as `bootstrap_servers=`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from wire.config_error import ConfigError

BOOTSTRAP_ENV = "BROKER_BOOTSTRAP"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

Address = tuple[str, int]


def parse_bootstrap(bootstrap: str | Sequence[str] | None) -> list[Address]:
    """The (host, port) pairs of `bootstrap`; None means $BROKER_BOOTSTRAP, else 127.0.0.1:9092.

    Raises `ConfigError` (key 'bootstrap') for an empty list, a missing or non-numeric port.
    """
    if bootstrap is None:
        bootstrap = os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    addresses = [_parse_one(item.strip()) for item in items if item.strip()]
    if not addresses:
        raise ConfigError("bootstrap", "no broker address given; expected HOST:PORT[,HOST:PORT]")
    return addresses


def choose_bootstrap(
    bootstrap: str | Sequence[str] | None, bootstrap_servers: str | Sequence[str] | None
) -> str | Sequence[str] | None:
    """The address list of a client given positionally (`bootstrap`) or, as in kafka-python,
    as `bootstrap_servers=`; both at once is a `ConfigError` rather than a silent choice."""
    if bootstrap is not None and bootstrap_servers is not None:
        raise ConfigError(
            "bootstrap_servers",
            "given twice (as bootstrap and as bootstrap_servers); pass only one",
        )
    return bootstrap if bootstrap is not None else bootstrap_servers


def _parse_one(item: str) -> Address:
    host, sep, port_text = item.rpartition(":")
    if not sep or not host:
        raise ConfigError("bootstrap", f"{item!r} is not HOST:PORT (e.g. 127.0.0.1:9092)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError("bootstrap", f"port of {item!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError("bootstrap", f"port of {item!r} is out of range 1-65535")
    return host, port


def format_addresses(addresses: Sequence[Address]) -> str:
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)
