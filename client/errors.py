"""Exceptions the client raises, and the server's error vocabulary re-exported.

Rules: every failure a user can meet is a named exception whose message says what to do.
Errors the *broker* returns keep their wire identity: they are `wire.error_codes.BrokerError`
with an `ErrorCode` (`.code`, `.retriable`, `.message`), so one `except BrokerError` covers them and
`err.code is ErrorCode.UNKNOWN_TOPIC` tells them apart. Errors that happen on the client side
(no connection, a local timeout, a full buffer, use after close) derive from `ClientError`; the
transport ones (no connection, lost connection, timeout, garbage) are defined in `wire.errors`,
beside the connection that raises them, and re-exported here.
"""

from __future__ import annotations

from typing import Any

from wire.config_error import ConfigError
from wire.error_codes import BrokerError, ErrorCode
from wire.errors import (
    BrokerUnavailableError,
    ClientError,
    ConnectionLostError,
    RemoteProtocolError,
    RequestTimedOutError,
    TlsHandshakeError,
)
from wire.sasl_client import AuthenticationFailedError

__all__ = [
    "AuthenticationFailedError",
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
    "TlsHandshakeError",
    "TopicAlreadyExistsError",
    "TransactionAbortedError",
]


class BufferFullError(ClientError):
    """`Producer.send` waited `max_block_ms` for buffer memory that never freed up.

    The broker is slower than the application or unreachable: call `flush()`, slow down, or raise
    `buffer_memory_bytes` / `max_block_ms`.
    """

    # From `send_many`: the `SendManyFuture` of the records queued before the buffer stayed
    # full (they are still delivered); None from `send`, which queued nothing.
    queued: Any = None


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


# --- admin (Kafka's exception names) -------------------------------------------------------------


class TopicAlreadyExistsError(BrokerError):
    """`create_topic` of a name that is taken (TOPIC_ALREADY_EXISTS). A `BrokerError`, so code
    written before it existed still catches it; pass `exist_ok=True` to ignore it."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TOPIC_ALREADY_EXISTS, message)
