"""Exceptions the client raises, and the server's error vocabulary re-exported.

Rules: every failure a user can meet is a named exception whose message says what to do.
Errors the *broker* returns keep their wire identity: they are `broker.errors.BrokerError` with an
`ErrorCode` (`.code`, `.retriable`, `.message`), so one `except BrokerError` covers them all and
`err.code is ErrorCode.UNKNOWN_TOPIC` tells them apart. Errors that happen on the client side
(no connection, a local timeout, a full buffer, use after close) derive from `ClientError`.
"""

from __future__ import annotations

from broker.config import ConfigError
from broker.errors import BrokerError, ErrorCode

__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "BufferFullError",
    "ClientClosedError",
    "ClientError",
    "ConfigError",
    "ConnectionLostError",
    "ErrorCode",
    "InvalidTxnStateError",
    "ProducerFencedError",
    "RemoteProtocolError",
    "RequestTimedOutError",
    "TransactionAbortedError",
]


class ClientError(Exception):
    """A failure detected on the client side (not an error code sent by the broker)."""


class BrokerUnavailableError(ClientError):
    """No broker answered at any bootstrap address (connection refused, unknown host, timeout)."""

    def __init__(self, addresses: str, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(f"cannot reach broker at {addresses}: is 'broker serve' running?{detail}")
        self.addresses = addresses
        self.reason = reason


class ConnectionLostError(ClientError):
    """The connection dropped while a request was in flight; its outcome is unknown.

    Retriable: producers retry the batch (ordering is kept by one in-flight batch per partition),
    other requests are retried by the caller's retry policy.
    """

    retriable = True


class RemoteProtocolError(ClientError):
    """The broker sent bytes we cannot parse; the connection is closed. Report it as a bug."""


class RequestTimedOutError(ClientError):
    """No response within `request_timeout_ms`; raise the timeout or check the broker's load."""

    retriable = True


class BufferFullError(ClientError):
    """`Producer.send` waited `max_block_ms` for buffer memory that never freed up.

    The broker is slower than the application or unreachable: call `flush()`, slow down, or raise
    `buffer_memory_bytes` / `max_block_ms`.
    """


class ClientClosedError(ClientError):
    """The producer, consumer or admin client was used after `close()`."""


# --- transactions (Kafka's exception names) -----------------------------------------------------
# They are `BrokerError`s with the broker's code, so `except BrokerError` still covers them and
# `err.code` tells which wire error (if any) caused them; a check the client makes locally
# (calls out of order) uses the code the broker would have answered.


class ProducerFencedError(BrokerError):
    """Another producer with the same `transactional_id` started (or the broker moved this
    producer's epoch on): this instance is a zombie. Fatal: close the producer; every later call
    raises this again. (PRODUCER_FENCED, or INVALID_PRODUCER_EPOCH on a transactional producer.)"""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PRODUCER_FENCED) -> None:
        super().__init__(code, message)


class InvalidTxnStateError(BrokerError):
    """A transactional call out of order: `send` outside a transaction, `commit_transaction`
    without `begin_transaction`, `begin_transaction` twice, a call before `init_transactions`.
    Checked locally first, so nothing was sent; fix the calling code."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_TXN_STATE, message)


class TransactionAbortedError(BrokerError):
    """The transaction is aborted: the coordinator aborted it after `transaction_timeout_ms`
    (TRANSACTION_ABORTED), or this record was dropped by `abort_transaction()`. Call
    `abort_transaction()` (it re-initialises the producer), then begin a new transaction."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TRANSACTION_ABORTED, message)
