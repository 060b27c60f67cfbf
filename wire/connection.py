"""One TCP connection to one broker: handshake, pipelined requests, bounded requests in flight.

The framing is `wire.framing.FrameConnection` (sans-I/O); this module is its trio shell, in the
style of h11's trio example. The SDK's `Cluster` and a broker calling its peers
(`broker/cluster/controller_client.py`) both use it, which is why it lives in `wire`. Rules:
- `open_broker_connection` connects (TLS first when given an `ssl.SSLContext`: the broker's
  certificate is verified, a failure raises `TlsHandshakeError` saying what to check) and
  completes the version handshake before returning.
- Many tasks may call `request` at once: each gets a fresh correlation id, its frame is written
  under a lock (frames never interleave) and it waits for the response with that id. At most
  `max_in_flight` requests are outstanding; further callers wait for a slot (back-pressure).
  A caller may instead have the answer handed to a callback (`finish_with`), with no task
  waiting for it; it then keeps its own timeout and calls `abandon` when it gives up
  (`finish_with_wait` does both for a caller that waits until the callback has run).
- A response that arrives after its request timed out is dropped. A dead socket or a frame we
  cannot parse fails every waiting request with `ConnectionLostError` / `RemoteProtocolError` and
  closes the connection for good; the `Cluster` opens a new one on the next request.
"""

from __future__ import annotations

import itertools
import math
import ssl
from collections.abc import Callable
from typing import Any, NoReturn

import trio

from wire import codec
from wire.eager_io import acquire_now, write_now
from wire.errors import (
    BrokerUnavailableError,
    ConnectionLostError,
    RemoteProtocolError,
    RequestTimedOutError,
    TlsHandshakeError,
)
from wire.framing import (
    NEED_DATA,
    Frame,
    FrameConnection,
    ProtocolError,
    Role,
)
from wire.sasl_client import SaslLogin, check_login_needed, login_over
from wire.tls import handshake_failure, tls_alert

# Requests outstanding on one connection before `request` waits (Kafka: max.in.flight...=5; we
# pipeline more because fetches and produces to different partitions share a connection).
MAX_IN_FLIGHT_DEFAULT = 32
# How long a TCP connect plus handshake may take.
CONNECT_TIMEOUT_S_DEFAULT = 10.0
# How long writing one frame may take before the connection is declared lost.
WRITE_TIMEOUT_S = 30.0
# Bytes asked of the socket per receive; big enough that a large fetch needs few wakeups.
RECEIVE_CHUNK_BYTES = 1 << 20


class PendingRequest:
    """A request written and not answered yet: its response frame or the connection's error,
    once settled (by the reader, or by the connection failing)."""

    __slots__ = ("callback", "error", "event", "frame")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.frame: Frame | None = None
        self.error: BaseException | None = None
        # Set by `finish_with`: called once the answer (or the connection's failure) is in.
        self.callback: Callable[[PendingRequest], None] | None = None

    def settle(self) -> None:
        self.event.set()
        if self.callback is not None:
            callback, self.callback = self.callback, None
            callback(self)


class BrokerConnection:
    """A connected, handshaken connection; build it with `open_broker_connection`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        address: tuple[str, int],
        *,
        max_in_flight: int,
        max_frame_bytes: int | None,
    ) -> None:
        self.address = address
        self._stream = stream
        self._frames = (
            FrameConnection(Role.CLIENT)
            if max_frame_bytes is None
            else FrameConnection(Role.CLIENT, max_frame_bytes=max_frame_bytes)
        )
        self._send_lock = trio.Lock()
        self._slots = trio.Semaphore(max_in_flight)
        self._pending: dict[int, PendingRequest] = {}
        # Ids wrap within i32; with a bounded number in flight a wrapped id cannot collide.
        self._ids = itertools.cycle(range(1, 2**31 - 1))
        self.closed = False
        self.close_reason: BaseException | None = None
        self.handshake: dict[str, Any] = {}

    @property
    def address_text(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    async def request(
        self, header: dict[str, Any], payload: bytes = b"", *, timeout_s: float = math.inf
    ) -> Frame:
        """Send one request frame and return its response frame.

        `header` must carry `api` (and whatever the codec puts there); `correlation_id` is set
        here. Raises `ConnectionLostError`, `RequestTimedOutError` or `RemoteProtocolError`.
        """
        pending = await self.start_request(header, payload)
        return await self.finish_request(header, pending, timeout_s=timeout_s)

    async def start_request(self, header: dict[str, Any], payload: bytes = b"") -> PendingRequest:
        """Write one request frame now and return the handle `finish_request` waits on.

        Split from `request` for the idempotent producer: frames reach the broker in the order
        their writers called this (one writer task per broker), so a partition's pipelined
        batches arrive in sequence order, while their answers are awaited concurrently. The
        in-flight slot taken here is released by `finish_request`, which must follow.
        """
        await acquire_now(self._slots)
        try:
            pending = await self._send(header, payload, expect_response=True)
        except BaseException:
            self._slots.release()
            raise
        assert pending is not None
        return pending

    async def finish_request(
        self, header: dict[str, Any], pending: PendingRequest, *, timeout_s: float = math.inf
    ) -> Frame:
        """Wait for the response to a `start_request` (and free its in-flight slot)."""
        try:
            with trio.move_on_after(timeout_s):
                await pending.event.wait()
            if not pending.event.is_set():
                self._pending.pop(header["correlation_id"], None)
                raise self.timed_out(header, timeout_s)
            if pending.error is not None:
                raise pending.error
            assert pending.frame is not None
            return pending.frame
        finally:
            self._slots.release()

    def finish_with(
        self,
        pending: PendingRequest,
        callback: Callable[[Frame | None, BaseException | None], None],
    ) -> None:
        """Instead of awaiting `finish_request`: `callback(frame, None)` once the response to a
        `start_request` is in, `callback(None, error)` if the connection fails first; called in
        the task that settles it (the reader, or whoever closes the connection), after the
        in-flight slot is freed, so it must not block or raise.

        For the producer, whose answers would otherwise each need a task of their own (a task
        start and two scheduler passes per request). No timeout here: a caller that gives up
        calls `abandon`.
        """

        def settled(done: PendingRequest) -> None:
            self._slots.release()
            callback(done.frame, done.error)

        if pending.event.is_set():
            settled(pending)  # answered while the request was still being written
        else:
            pending.callback = settled

    async def finish_with_wait(
        self,
        header: dict[str, Any],
        pending: PendingRequest,
        callback: Callable[[Frame | None, BaseException | None], None],
        *,
        timeout_s: float = math.inf,
    ) -> None:
        """`finish_with`, then wait until `callback` has run: the answer is handled in the task
        that read it, and the caller wakes once, after (the consumer's fetch: its records reach
        `poll` one scheduler pass after they are read, not two). Raises `RequestTimedOutError`
        if no answer came within `timeout_s`; then, or when cancelled, the request is abandoned
        (a late answer is dropped, `callback` never runs)."""
        done = trio.Event()

        def settled(frame: Frame | None, error: BaseException | None) -> None:
            try:
                callback(frame, error)
            finally:
                done.set()

        self.finish_with(pending, settled)
        try:
            with trio.move_on_after(timeout_s):
                await done.wait()
        finally:
            abandoned = self.abandon(header, pending)
        if abandoned:
            raise self.timed_out(header, timeout_s)

    def abandon(self, header: dict[str, Any], pending: PendingRequest) -> bool:
        """Give up waiting for a `finish_with` request (the caller's timeout): its response, if
        it still comes, is dropped, and its callback is never called. False if it was settled
        already (the callback ran)."""
        if pending.event.is_set():
            return False
        self._pending.pop(header["correlation_id"], None)
        pending.callback = None
        self._slots.release()
        return True

    def timed_out(self, header: dict[str, Any], timeout_s: float) -> RequestTimedOutError:
        """The error of a request given up after `timeout_s` without an answer."""
        return RequestTimedOutError(
            f"no response to {header.get('api')} from {self.address_text} within "
            f"{timeout_s:.1f} s; raise request_timeout_ms or check the broker's load"
        )

    async def send_oneway(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Send a request the broker will not answer (produce with acks=0)."""
        await self._send(header, payload, expect_response=False)

    async def _send(
        self, header: dict[str, Any], payload: bytes, *, expect_response: bool
    ) -> PendingRequest | None:
        if self.closed:
            raise ConnectionLostError(
                f"connection to {self.address_text} is closed ({self.close_reason})"
            )
        correlation_id = next(self._ids)
        header["correlation_id"] = correlation_id
        data = self._frames.send(header, payload)
        pending = None
        if expect_response:
            pending = self._pending[correlation_id] = PendingRequest()
        await acquire_now(self._send_lock)
        try:
            try:
                rest = write_now(self._stream, data)  # most often all of it: no await
            except BaseException as exc:
                self._lost_while_sending(exc)
            if rest:
                await self._send_rest(rest)
        finally:
            self._send_lock.release()
        return pending

    async def _send_rest(self, rest: bytes | memoryview) -> None:
        """What `write_now` could not write at once. The frame is written whole even if the
        caller is cancelled meanwhile (a consumer re-aiming its fetch): the connection is shared,
        and a frame cut in half would kill it for every other request. Bounded, so a peer that
        stops reading still fails it."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_TIMEOUT_S) as scope:
            try:
                await self._stream.send_all(rest)
            except trio.Cancelled:
                raise  # shielded: only this scope's deadline, handled below
            except BaseException as exc:
                self._lost_while_sending(exc)
        if scope.cancelled_caught:
            timeout = TimeoutError(f"write not done within {WRITE_TIMEOUT_S} s")
            self._write_failed(timeout)
            raise ConnectionLostError(f"connection to {self.address_text}: {timeout}")

    def _lost_while_sending(self, exc: BaseException) -> NoReturn:
        """A dead socket: the peer may have half a frame, so the stream is unusable (h11's
        send_failed rule)."""
        self._write_failed(exc)
        raise ConnectionLostError(
            f"connection to {self.address_text} lost while sending: {exc!r}"
        ) from exc

    def _write_failed(self, exc: BaseException) -> None:
        self._frames.send_failed()
        self._fail(ConnectionLostError(f"write to {self.address_text} failed: {exc!r}"))

    async def run_reader(self) -> None:
        """Route response frames to their waiters until the connection closes (a nursery task)."""
        try:
            while True:
                data = await self._stream.receive_some(RECEIVE_CHUNK_BYTES)
                if not data:
                    raise ConnectionLostError(
                        f"broker at {self.address_text} closed the connection"
                    )
                self._frames.receive_data(data)
                while True:
                    frame = self._frames.next_frame()
                    if frame is NEED_DATA:
                        break
                    assert isinstance(frame, Frame)
                    pending = self._pending.pop(frame.correlation_id, None)
                    if pending is not None:
                        pending.frame = frame
                        pending.settle()
        except ProtocolError as exc:
            self._fail(RemoteProtocolError(f"broker at {self.address_text} sent garbage: {exc}"))
        except ConnectionLostError as exc:
            self._fail(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            lost = ConnectionLostError(f"connection to {self.address_text} lost: {exc!r}")
            lost.__cause__ = exc  # a TLS alert (a refused client certificate) is in its chain
            self._fail(lost)
        finally:
            self._fail(ConnectionLostError(f"connection to {self.address_text} was closed"))
            await trio.aclose_forcefully(self._stream)

    def _fail(self, error: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = error
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.error = error
            waiter.settle()

    async def aclose(self) -> None:
        self._fail(ConnectionLostError(f"connection to {self.address_text} was closed by us"))
        await trio.aclose_forcefully(self._stream)


async def open_broker_connection(
    nursery: trio.Nursery,
    address: tuple[str, int],
    handshake_header: dict[str, Any],
    *,
    max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
    max_frame_bytes: int | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
    ssl_context: ssl.SSLContext | None = None,
    login: SaslLogin | None = None,
) -> BrokerConnection:
    """Connect to `address` (over TLS with `ssl_context`), start the reader in `nursery`, and
    complete the handshake, then the SASL `login` if one is given (`wire.sasl_client`).

    Raises `BrokerUnavailableError` if nothing accepts the connection in time,
    `TlsHandshakeError` if the TLS handshake fails, `AuthenticationFailedError` if the login is
    refused or needed and missing.
    """
    host, port = address
    with trio.move_on_after(connect_timeout_s) as scope:
        stream = await open_stream(host, port, ssl_context)
    if scope.cancelled_caught:
        raise BrokerUnavailableError(f"{host}:{port}", f"no answer within {connect_timeout_s} s")
    connection = BrokerConnection(
        stream, address, max_in_flight=max_in_flight, max_frame_bytes=max_frame_bytes
    )
    nursery.start_soon(connection.run_reader)
    try:
        frame = await connection.request(dict(handshake_header), timeout_s=connect_timeout_s)
    except ConnectionLostError as exc:
        await connection.aclose()
        if ssl_context is not None:
            # TLS 1.3 reports a refused client certificate after the handshake, at the first
            # read: the alert is in the reader's error.
            # The broker may also just close (its alert lost in the reset).
            alert = tls_alert(connection.close_reason)
            reason = (
                handshake_failure(alert)
                if alert is not None
                else f"the broker closed the connection right after the TLS handshake ({exc}): "
                "it did not accept this client (a client certificate it requires, or one "
                "signed by a CA it does not trust: check ssl_certfile/ssl_keyfile)"
            )
            raise TlsHandshakeError(f"{host}:{port}", reason) from None
        # A TLS listener closes a plaintext client's connection at its first bytes.
        raise ConnectionLostError(
            f"{exc} during the handshake (if it is a TLS listener, connect with "
            "security_protocol='SSL')"
        ) from None
    except BaseException:
        await connection.aclose()
        raise
    connection.handshake = frame.header
    try:
        check_login_needed(frame.header, login)
        if login is not None:
            await login_over(
                lambda request: _call(connection, request, connect_timeout_s),
                login,
                where=connection.address_text,
            )
    except BaseException:
        await connection.aclose()
        raise
    return connection


async def _call(connection: BrokerConnection, request: Any, timeout_s: float) -> Any:
    header, payload = codec.encode_request(request, correlation_id=0)
    frame = await connection.request(header, payload, timeout_s=timeout_s)
    return codec.decode_response(frame.header, frame.payload)


async def open_stream(
    host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """A TCP stream to `host:port` with Nagle off, its TLS handshake done with `ssl_context`
    (the certificate must name `host`, unless the context skips the host name check).

    Raises `BrokerUnavailableError` (nothing accepts) or `TlsHandshakeError`. Brokers use it for
    their peer links too (broker/raft/transport.py).
    """
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise BrokerUnavailableError(f"{host}:{port}", _connect_failure(exc)) from None
    # Small request/response frames must not wait for Nagle's algorithm (latency target).
    stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
    if ssl_context is None:
        return stream
    tls_stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
    try:
        await tls_stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise TlsHandshakeError(f"{host}:{port}", handshake_failure(exc)) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return tls_stream


def _connect_failure(exc: BaseException) -> str:
    """The OS's words for a failed connect ("Connection refused"), dug out of trio's wrapping."""
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
    return str(exc)
