"""The client side of a SASL SCRAM login, run right after the protocol handshake.

Both the SDK (`client.aio.cluster`) and brokers calling their peers log in through here:
`open_broker_connection(..., login=SaslLogin(...))` calls `login_over` once its handshake is
done, and a Raft peer link logs in on its raw stream with `log_in_on_stream` before its
own handshake. The exchange is SaslHandshake(mechanism), then SaslAuthenticate(client-first) and
SaslAuthenticate(client-final) with `wire.scram.ScramClient` doing the cryptography; a refusal
raises `AuthenticationFailedError` with the broker's reason (the broker closes the connection).

`security_protocol` is kafka-python's: PLAINTEXT (no login), SASL_PLAINTEXT (login), SASL_SSL
(login over TLS: the TLS options belong to the TLS layer, this module only logs in).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from wire import codec
from wire.error_codes import BrokerError, ErrorCode
from wire.framing import NEED_DATA, Frame, FrameConnection, ProtocolError, Role
from wire.scram import (
    ITERATIONS_DEFAULT,
    SALT_BYTES,
    ScramClient,
    ScramError,
    ScramMechanism,
    make_credential,
)
from wire.tls import SECURITY_PROTOCOLS

SASL_PROTOCOLS: Final = ("SASL_PLAINTEXT", "SASL_SSL")
# Bytes of randomness in a client nonce (base64url: 4/3 as many characters).
NONCE_BYTES: Final = 24
RECEIVE_CHUNK_BYTES: Final = 64 * 1024


class AuthenticationFailedError(BrokerError):
    """The login was refused (wrong user or password, a mechanism the broker does not offer),
    or the broker could not prove it holds the credential."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.SASL_AUTHENTICATION_FAILED):
        super().__init__(code, message)


@dataclasses.dataclass(frozen=True, slots=True)
class SaslLogin:
    """Who to log in as. The password is kept out of `repr` (it would end up in logs)."""

    username: str
    password: str = dataclasses.field(repr=False)
    mechanism: ScramMechanism = ScramMechanism.SCRAM_SHA_256


def sasl_login_of(
    security_protocol: str,
    sasl_mechanism: str | None,
    sasl_username: str | None,
    sasl_password: str | None,
) -> SaslLogin | None:
    """kafka-python's options as a `SaslLogin` (None: no login); ValueError naming what is
    missing or wrong, for the client constructors to report as a config error."""
    protocol = security_protocol.upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"security_protocol {security_protocol!r}: use one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    if protocol not in SASL_PROTOCOLS:
        if sasl_username or sasl_password:
            raise ValueError(
                f"sasl_username/sasl_password need security_protocol='SASL_PLAINTEXT' or "
                f"'SASL_SSL', not {security_protocol!r}"
            )
        return None
    if not sasl_username or sasl_password is None:
        raise ValueError(f"security_protocol={protocol} needs sasl_username and sasl_password")
    mechanism = ScramMechanism.parse(sasl_mechanism or ScramMechanism.SCRAM_SHA_256.value)
    return SaslLogin(sasl_username, sasl_password, mechanism)


def check_login_needed(handshake_header: dict[str, Any], login: SaslLogin | None) -> None:
    """Refuse at once, with what to do, a connection without login to a broker that requires
    one (its handshake lists `sasl_mechanisms`); every later request would be refused."""
    body = handshake_header.get("body")
    mechanisms = body.get("sasl_mechanisms") if isinstance(body, dict) else None
    if login is None and mechanisms:
        raise AuthenticationFailedError(
            "this broker requires a SASL login before any request: give security_protocol="
            f"'SASL_PLAINTEXT', sasl_mechanism (one of {', '.join(map(str, mechanisms))}), "
            "sasl_username and sasl_password (broker-cli: --user NAME, password in "
            "BROKER_PASSWORD)",
            ErrorCode.ILLEGAL_SASL_STATE,
        )


def credential_upsertion(
    name: str,
    password: str,
    mechanism: ScramMechanism = ScramMechanism.SCRAM_SHA_256,
    iterations: int = ITERATIONS_DEFAULT,
) -> codec.ScramCredentialUpsertion:
    """What AlterUserScramCredentials sends to give `name` this password: a credential derived
    here with a fresh random salt, so the password itself never leaves this process."""
    credential = make_credential(mechanism, password, secrets.token_bytes(SALT_BYTES), iterations)
    return codec.ScramCredentialUpsertion(
        name=name,
        mechanism=mechanism.value,
        iterations=iterations,
        salt=credential.salt,
        stored_key=credential.stored_key,
        server_key=credential.server_key,
    )


Call = Callable[[Any], Awaitable[Any]]


async def login_over(call: Call, login: SaslLogin, *, where: str) -> None:
    """Run the SCRAM exchange through `call(request) -> decoded response`. Raises
    `AuthenticationFailedError` if it is refused or the server's signature is wrong."""
    handshake = await call(codec.SaslHandshakeRequest(mechanism=login.mechanism.value))
    _check(handshake, login, where)
    client = ScramClient(
        login.mechanism,
        login.username,
        login.password,
        client_nonce=secrets.token_urlsafe(NONCE_BYTES),
    )
    try:
        first = await call(codec.SaslAuthenticateRequest(auth_bytes=client.client_first()))
        _check(first, login, where)
        final = client.receive_server_first(first.auth_bytes)
        answer = await call(codec.SaslAuthenticateRequest(auth_bytes=final))
        _check(answer, login, where)
        client.receive_server_final(answer.auth_bytes)
    except ScramError as exc:
        raise AuthenticationFailedError(f"login as {login.username!r} at {where}: {exc}") from None


def _check(response: Any, login: SaslLogin, where: str) -> None:
    error = getattr(response, "error", ErrorCode.UNKNOWN_SERVER_ERROR)
    if error is ErrorCode.NONE and not isinstance(response, codec.ErrorResponse):
        return
    message = getattr(response, "error_message", "")
    raise AuthenticationFailedError(
        f"login as {login.username!r} at {where} refused: {message}",
        error if error is not ErrorCode.NONE else ErrorCode.SASL_AUTHENTICATION_FAILED,
    )


async def log_in_on_stream(
    stream: trio.abc.Stream,
    where: str,
    *,
    client_id: str,
    login: SaslLogin,
    max_frame_bytes: int,
) -> trio.abc.Stream:
    """`stream` (a new connection to a broker, TCP or TLS) once it has done the protocol
    handshake and the login, holding no unread bytes: a Raft peer link then speaks its own
    handshake on it (the broker hands the logged-in connection to its Raft transport). Closes
    the stream and raises trio errors (closed) or `AuthenticationFailedError` on failure."""
    try:
        frames = FrameConnection(Role.CLIENT, max_frame_bytes=max_frame_bytes)
        correlation = iter(range(1, 1 << 30))

        async def call(request: Any) -> Any:
            header, payload = codec.encode_request(request, correlation_id=next(correlation))
            await stream.send_all(frames.send(header, payload))
            frame = await _next_frame(stream, frames)
            return codec.decode_response(frame.header, frame.payload)

        handshake = await call(codec.HandshakeRequest(client_id=client_id))
        if getattr(handshake, "error", ErrorCode.NONE) is not ErrorCode.NONE:
            raise AuthenticationFailedError(
                f"{where} refused the handshake: {handshake.error_message}",
                handshake.error,
            )
        await login_over(call, login, where=where)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def _next_frame(stream: trio.abc.Stream, frames: FrameConnection) -> Frame:
    while True:
        try:
            frame = frames.next_frame()
        except ProtocolError as exc:
            raise trio.BrokenResourceError(f"peer sent garbage during the login: {exc}") from None
        if frame is not NEED_DATA:
            assert isinstance(frame, Frame)
            return frame
        data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
        if not data:
            raise trio.BrokenResourceError("the broker closed the connection during the login")
        frames.receive_data(data)
