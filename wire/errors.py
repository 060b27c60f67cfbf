"""The failures a requester meets on a connection, whoever it is (the SDK or a broker).

They live here, beside `wire.connection` that raises them, so a broker calling its peers catches
them without importing the client. `client.errors` re-exports them with the SDK's other errors:
the classes are the same objects, so `except client.errors.ClientError` covers them.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ClientError",
    "ConnectionLostError",
    "RemoteProtocolError",
    "RequestTimedOutError",
    "TlsHandshakeError",
]


class ClientError(Exception):
    """A failure detected on the requesting side (not an error code sent by the broker)."""


class BrokerUnavailableError(ClientError):
    """No broker answered at any bootstrap address (connection refused, unknown host, timeout)."""

    def __init__(self, addresses: str, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(f"cannot reach broker at {addresses}: is 'broker serve' running?{detail}")
        self.addresses = addresses
        self.reason = reason


class TlsHandshakeError(BrokerUnavailableError):
    """The broker answered but TLS failed: its certificate is not trusted (`ssl_cafile`), does
    not name the host, it requires a client certificate, or the port is not a TLS listener."""

    def __init__(self, addresses: str, reason: str) -> None:
        ClientError.__init__(self, f"cannot connect securely to broker at {addresses}: {reason}")
        self.addresses = addresses
        self.reason = reason


class ConnectionLostError(ClientError):
    """The connection dropped while a request was in flight; its outcome is unknown.

    Retriable: producers retry the batch (ordering is kept by one in-flight batch per partition),
    other requests are retried by the caller's retry policy.
    """

    retriable = True


class RemoteProtocolError(ClientError):
    """The broker sent bytes we cannot parse; the connection is closed. Report it as a bug.

    What a connection's callers see; the framing's own `wire.framing.RemoteProtocolError` (raised
    inside the sans-I/O core) is turned into this one by `wire.connection`.
    """


class RequestTimedOutError(ClientError):
    """No response within `request_timeout_ms`; raise the timeout or check the broker's load."""

    retriable = True
