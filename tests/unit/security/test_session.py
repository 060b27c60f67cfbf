"""Goal: a connection's `AuthSession` lets nothing but the SASL exchange through before a
login, closes the connection on every failure (with an audit line and a count), establishes the
principal on success, and never raises for anything a peer sends."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.auth.session import PRINCIPAL_ANONYMOUS, AuthSession, AuthState
from wire import codec
from wire.error_codes import BrokerError, ErrorCode
from wire.framing import Frame
from wire.scram import ScramClient, ScramCredential, ScramMechanism, make_credential

SHA256 = ScramMechanism.SCRAM_SHA_256
CREDENTIAL = make_credential(SHA256, "alicepw", b"s" * 32)


def _lookup(name: str, mechanism: ScramMechanism) -> ScramCredential | None:
    return CREDENTIAL if (name, mechanism) == ("alice", SHA256) else None


def _session(enabled: bool = True, failures: list[str] | None = None) -> AuthSession:
    seen = failures if failures is not None else []
    return AuthSession(
        enabled=enabled,
        peer="10.0.0.9:5000",
        lookup=_lookup,
        fake_salt_key=lambda: b"k" * 32,
        count_failure=seen.append,
        is_super_user=lambda principal: principal == "User:admin",
    )


def _frame(request: object, correlation_id: int = 1) -> Frame:
    header, payload = codec.encode_request(request, correlation_id=correlation_id)
    return Frame(header, payload)


def _login(session: AuthSession, password: str) -> tuple[object, ScramClient]:
    client = ScramClient(SHA256, "alice", password, client_nonce="c" * 24)
    replies = [session.handle(_frame(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256")))]
    first = session.handle(_frame(codec.SaslAuthenticateRequest(auth_bytes=client.client_first())))
    final = client.receive_server_first(first.response.auth_bytes)
    replies.append(session.handle(_frame(codec.SaslAuthenticateRequest(auth_bytes=final))))
    return replies[-1], client


def test_a_right_password_establishes_the_principal() -> None:
    session = _session()
    assert session.principal == PRINCIPAL_ANONYMOUS and not session.authenticated
    reply, client = _login(session, "alicepw")
    assert not reply.close
    client.receive_server_final(reply.response.auth_bytes)
    assert session.principal == "User:alice" and session.authenticated
    assert not session.intercepts(_frame(codec.MetadataRequest()))


def test_a_wrong_password_closes_with_an_audit_line(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[str] = []
    session = _session(failures=failures)
    with caplog.at_level(logging.WARNING, logger="broker.audit"):
        reply, _ = _login(session, "nope")
    assert reply.close and reply.response.error is ErrorCode.SASL_AUTHENTICATION_FAILED
    assert not session.authenticated and session.principal == PRINCIPAL_ANONYMOUS
    assert failures == ["bad_password"]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "broker.audit"]
    assert "peer=10.0.0.9:5000" in line and "user='alice'" in line


def test_requests_before_the_login_are_refused_and_close() -> None:
    failures: list[str] = []
    session = _session(failures=failures)
    frame = _frame(codec.MetadataRequest())
    assert session.intercepts(frame)
    reply = session.handle(frame)
    assert reply.close and isinstance(reply.response, BrokerError)
    assert reply.response.code is ErrorCode.ILLEGAL_SASL_STATE
    assert "SASL_PLAINTEXT" in reply.response.message
    assert failures == ["unauthenticated_request"]


def test_an_unsupported_mechanism_lists_the_offered_ones() -> None:
    reply = _session().handle(_frame(codec.SaslHandshakeRequest(mechanism="PLAIN")))
    assert reply.close and reply.response.error is ErrorCode.UNSUPPORTED_SASL_MECHANISM
    assert reply.response.mechanisms == ("SCRAM-SHA-256", "SCRAM-SHA-512")


def test_out_of_order_sasl_requests_close() -> None:
    session = _session()
    reply = session.handle(_frame(codec.SaslAuthenticateRequest(auth_bytes=b"n,,n=a,r=x")))
    assert reply.close and reply.response.code is ErrorCode.ILLEGAL_SASL_STATE
    logged_in = _session()
    _login(logged_in, "alicepw")
    again = logged_in.handle(_frame(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256")))
    assert again.close and logged_in.state is AuthState.AUTHENTICATED


def test_a_replayed_client_final_fails_on_a_new_connection() -> None:
    client = ScramClient(SHA256, "alice", "alicepw", client_nonce="c" * 24)
    first_message = client.client_first()
    session = _session()
    session.handle(_frame(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256")))
    first = session.handle(_frame(codec.SaslAuthenticateRequest(auth_bytes=first_message)))
    captured = client.receive_server_first(first.response.auth_bytes)
    assert not session.handle(_frame(codec.SaslAuthenticateRequest(auth_bytes=captured))).close
    replay = _session()
    replay.handle(_frame(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256")))
    replay.handle(_frame(codec.SaslAuthenticateRequest(auth_bytes=first_message)))
    reply = replay.handle(_frame(codec.SaslAuthenticateRequest(auth_bytes=captured)))
    assert reply.close and reply.response.error is ErrorCode.SASL_AUTHENTICATION_FAILED
    assert not replay.authenticated


def test_only_super_users_manage_users() -> None:
    session = _session()
    _login(session, "alicepw")
    frame = _frame(codec.DescribeUserScramCredentialsRequest())
    assert session.intercepts(frame)
    reply = session.handle(frame)
    assert not reply.close and reply.response.code is ErrorCode.UNAUTHORIZED


def test_auth_off_is_anonymous_and_refuses_sasl() -> None:
    session = _session(enabled=False)
    assert session.authenticated and session.principal == PRINCIPAL_ANONYMOUS
    assert not session.intercepts(_frame(codec.MetadataRequest()))
    assert not session.intercepts(_frame(codec.DescribeUserScramCredentialsRequest()))
    reply = session.handle(_frame(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256")))
    assert not reply.close and reply.response.code is ErrorCode.ILLEGAL_SASL_STATE


@settings(max_examples=200, deadline=None)
@given(
    api=st.sampled_from(["sasl_handshake", "sasl_authenticate", "metadata", "nonsense", None]),
    body=st.one_of(st.none(), st.integers(), st.binary(max_size=50),
                   st.dictionaries(st.sampled_from(["mechanism", "auth_bytes", "x"]),
                                   st.one_of(st.text(max_size=30), st.integers(), st.lists(st.integers(0, 9), max_size=3)))),  # noqa: E501
    payload=st.binary(max_size=64),
    steps=st.integers(1, 3),
)  # fmt: skip
def test_malformed_frames_never_raise(
    api: str | None, body: object, payload: bytes, steps: int
) -> None:
    session = _session()
    header = {"api": api, "version": 1, "correlation_id": 1, "body": body}
    for _ in range(steps):
        if session.handle(Frame(header, payload)).close:
            break
    assert not session.authenticated


def test_a_verified_certificate_stands_for_the_login() -> None:
    session = _session()
    session.authenticated_by_transport("User:service-a")
    assert session.authenticated and session.principal == "User:service-a"
    assert not session.intercepts(_frame(codec.MetadataRequest()))
