"""One connection's authentication: who it is (`principal`) and the SASL exchange that says so.

The server (broker/server.py) gives every connection an `AuthSession` and asks it about each
request frame before dispatching it (`intercepts`, then `handle`):

- auth off (`auth = "none"`): the principal is `User:ANONYMOUS` and nothing is intercepted but
  the SASL APIs, which are refused (ILLEGAL_SASL_STATE): there is nothing to log in to.
- auth on (`auth = "scram"`): until the login succeeds every frame is intercepted. SaslHandshake
  picks SCRAM-SHA-256 or -512, two SaslAuthenticate requests carry the SCRAM messages
  (`wire.scram.ScramServer`), and on success the principal becomes `User:NAME`. Any other request
  before that, a mechanism not offered, a malformed message or a wrong password is answered with
  an error and the connection is closed (Kafka's behaviour), one `broker.audit` log line and one
  `broker_authentication_failures` count each. A second login on the same connection is refused.

Principals are what the authorizer (ACLs) and quotas key on: `AuthSession.principal`. With auth
on, managing users (the two user APIs) is for super-users. A listener that verified a client
certificate sets the principal itself (`authenticated_by_transport`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

from wire import codec
from wire.error_codes import BrokerError, ErrorCode
from wire.framing import Frame
from wire.scram import CredentialLookup, ScramError, ScramMechanism, ScramServer

# One line per failed login or refused request: peer address, user name, reason.
audit_logger = logging.getLogger("broker.audit")

PRINCIPAL_ANONYMOUS: Final = "User:ANONYMOUS"
SASL_APIS: Final = frozenset(
    {codec.ApiKey.SASL_HANDSHAKE.value, codec.ApiKey.SASL_AUTHENTICATE.value}
)
# The `reason` label of broker_authentication_failures_total.
FAILURE_REASONS: Final = (
    "bad_password",
    "bad_message",
    "unsupported_mechanism",
    "unauthenticated_request",
)
# Bytes of randomness in the server's part of the nonce.
SERVER_NONCE_BYTES: Final = 24
MECHANISMS: Final = tuple(mechanism.value for mechanism in ScramMechanism)
# Managing users is for super-users (with auth on) until the authorizer's ACLs take it over
# (Kafka: ALTER / DESCRIBE on the cluster resource).
USER_ADMIN_APIS: Final = frozenset(
    {
        codec.ApiKey.ALTER_USER_SCRAM_CREDENTIALS.value,
        codec.ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS.value,
    }
)


def user_principal(name: str) -> str:
    return f"User:{name}"


class AuthState(enum.Enum):
    START = "start"  # waiting for SaslHandshake
    MECHANISM_CHOSEN = "mechanism_chosen"  # waiting for client-first
    CHALLENGED = "challenged"  # waiting for client-final
    AUTHENTICATED = "authenticated"


@dataclasses.dataclass(frozen=True, slots=True)
class AuthReply:
    """What to answer an intercepted frame (a response, or a BrokerError sent as an error
    response) and whether to close the connection once it is written."""

    response: Any
    close: bool


class AuthSession:
    """Per connection; see the module docstring. `lookup` finds credentials, `fake_salt_key`
    gives the secret that unknown users' salts derive from, `count_failure(reason)` feeds the
    metric."""

    def __init__(
        self,
        *,
        enabled: bool,
        peer: str,
        lookup: CredentialLookup,
        fake_salt_key: Callable[[], bytes],
        count_failure: Callable[[str], None],
        is_super_user: Callable[[str], bool],
    ) -> None:
        self.enabled = enabled
        self.peer = peer
        self._lookup = lookup
        self._fake_salt_key = fake_salt_key
        self._count_failure = count_failure
        self._is_super_user = is_super_user
        self.state = AuthState.START if enabled else AuthState.AUTHENTICATED
        self.principal = PRINCIPAL_ANONYMOUS
        self._scram: ScramServer | None = None

    @property
    def authenticated(self) -> bool:
        return self.state is AuthState.AUTHENTICATED

    def authenticated_by_transport(self, principal: str) -> None:
        """The transport already proved who the peer is (a verified TLS client certificate on
        an mTLS listener): no SASL login is needed, and `principal` ("User:CN") is who it is."""
        assert principal.startswith("User:") and len(principal) > len("User:"), principal
        self.principal = principal
        self.state = AuthState.AUTHENTICATED

    @property
    def handshake_mechanisms(self) -> tuple[str, ...]:
        """What the handshake response advertises (empty: no login needed)."""
        return MECHANISMS if self.enabled else ()

    def intercepts(self, frame: Frame) -> bool:
        """Whether `frame` is the session's to answer (not a handler's)."""
        if frame.api in SASL_APIS or not self.authenticated:
            return True
        return (
            self.enabled
            and frame.api in USER_ADMIN_APIS
            and not self._is_super_user(self.principal)
        )

    def handle(self, frame: Frame) -> AuthReply:
        """The answer to an intercepted frame. Never raises for anything the peer sent."""
        if not self.enabled:
            return self._refuse(
                frame, ErrorCode.ILLEGAL_SASL_STATE, "authentication is off on this broker "
                "(broker serve without --auth): connect with security_protocol='PLAINTEXT'",
                close=False, reason=None,
            )  # fmt: skip
        if self.authenticated and frame.api in USER_ADMIN_APIS:
            return self._refuse(
                frame, ErrorCode.UNAUTHORIZED,
                f"{self.principal} may not manage users: only super-users may (broker serve "
                "--super-user)",
                close=False, reason=None,
            )  # fmt: skip
        if frame.api not in SASL_APIS:
            return self._refuse(
                frame,
                ErrorCode.ILLEGAL_SASL_STATE,
                f"this broker requires a SASL login ({', '.join(MECHANISMS)}) before any other "
                f"request (got {frame.api!r}): connect with security_protocol='SASL_PLAINTEXT', "
                "sasl_mechanism, sasl_username and sasl_password (broker-cli: --user NAME)",
                close=True,
                reason="unauthenticated_request",
            )
        try:
            request = codec.decode_request(frame.header, frame.payload)
        except BrokerError as exc:
            return self._refuse(frame, exc.code, exc.message, close=True, reason="bad_message")
        if isinstance(request, codec.SaslHandshakeRequest):
            return self._handshake(frame, request)
        assert isinstance(request, codec.SaslAuthenticateRequest)
        return self._authenticate(frame, request)

    def _handshake(self, frame: Frame, request: codec.SaslHandshakeRequest) -> AuthReply:
        if self.state is not AuthState.START:
            return self._refuse(
                frame, ErrorCode.ILLEGAL_SASL_STATE,
                "SaslHandshake is sent once, before the login "
                f"(this connection is {self.state.value})",
                close=True, reason="bad_message",
            )  # fmt: skip
        try:
            mechanism = ScramMechanism.parse(request.mechanism)
        except ValueError as exc:
            self._audit("unsupported_mechanism", "", str(exc))
            response = codec.SaslHandshakeResponse(
                mechanisms=MECHANISMS,
                error=ErrorCode.UNSUPPORTED_SASL_MECHANISM,
                error_message=str(exc),
            )
            return AuthReply(response, close=True)
        self._scram = ScramServer(
            mechanism,
            self._lookup,
            server_nonce=secrets.token_urlsafe(SERVER_NONCE_BYTES),
            fake_salt_key=self._fake_salt_key(),
        )
        self.state = AuthState.MECHANISM_CHOSEN
        return AuthReply(codec.SaslHandshakeResponse(mechanisms=MECHANISMS), close=False)

    def _authenticate(self, frame: Frame, request: codec.SaslAuthenticateRequest) -> AuthReply:
        scram = self._scram
        if scram is None or self.state not in (AuthState.MECHANISM_CHOSEN, AuthState.CHALLENGED):
            return self._refuse(
                frame, ErrorCode.ILLEGAL_SASL_STATE,
                "SaslAuthenticate must follow SaslHandshake, once per connection "
                f"(this connection is {self.state.value})",
                close=True, reason="bad_message",
            )  # fmt: skip
        try:
            if self.state is AuthState.MECHANISM_CHOSEN:
                challenge = scram.receive_client_first(request.auth_bytes)
                self.state = AuthState.CHALLENGED
                return AuthReply(codec.SaslAuthenticateResponse(auth_bytes=challenge), close=False)
            proof = scram.receive_client_final(request.auth_bytes)
        except ScramError as exc:
            reason = "bad_password" if "authentication failed" in str(exc) else "bad_message"
            self._audit(reason, scram.username or "", str(exc))
            text = str(exc)
            response = codec.SaslAuthenticateResponse(
                error=ErrorCode.SASL_AUTHENTICATION_FAILED,
                error_message=text
                if text.startswith("authentication failed")
                else f"authentication failed: {text}",
            )
            return AuthReply(response, close=True)
        assert scram.username is not None
        self.state = AuthState.AUTHENTICATED
        self.principal = user_principal(scram.username)
        return AuthReply(codec.SaslAuthenticateResponse(auth_bytes=proof), close=False)

    def _refuse(
        self, frame: Frame, code: ErrorCode, message: str, *, close: bool, reason: str | None
    ) -> AuthReply:
        if reason is not None:
            self._audit(reason, "", message)
        return AuthReply(BrokerError(code, message), close=close)

    def _audit(self, reason: str, user: str, detail: str) -> None:
        self._count_failure(reason)
        audit_logger.warning(
            "authentication failure: peer=%s user=%r reason=%s: %s",
            self.peer,
            user,
            reason,
            detail[:200],
        )
