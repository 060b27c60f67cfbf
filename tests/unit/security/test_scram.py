"""Goal: the SCRAM core (wire/scram.py) computes RFC 5802/7677's exchanges bit for bit, refuses
wrong passwords, unknown users, replays and malformed messages with `ScramError` only, and does
not reveal whether a user exists."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.scram import (
    ITERATIONS_MIN,
    ScramClient,
    ScramCredential,
    ScramError,
    ScramMechanism,
    ScramServer,
    ScramServerState,
    decode_username,
    encode_username,
    make_credential,
)

SHA256 = ScramMechanism.SCRAM_SHA_256
SHA512 = ScramMechanism.SCRAM_SHA_512
KEY = b"k" * 32
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"


def _store(*credentials: tuple[str, ScramCredential]):
    table = dict(credentials)

    def lookup(user: str, mechanism: ScramMechanism) -> ScramCredential | None:
        found = table.get(user)
        return found if found is not None and found.mechanism is mechanism else None

    return lookup


def test_rfc7677_sha256_vector() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    credential = make_credential(SHA256, "pencil", salt, 4096)
    server = ScramServer(
        SHA256,
        _store(("user", credential)),
        server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        fake_salt_key=KEY,
    )
    client = ScramClient(SHA256, "user", "pencil", client_nonce=CLIENT_NONCE)
    first = client.client_first()
    assert first == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = server.receive_client_first(first)
    assert server_first == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = client.receive_server_first(server_first)
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    server_final = server.receive_client_final(final)
    assert server_final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    client.receive_server_final(server_final)
    assert server.state is ScramServerState.DONE and server.username == "user"


def test_rfc5802_sha1_vector_shape() -> None:
    # RFC 5802 section 5, with the mechanism's hash swapped for SHA-1 (the core is generic).
    salt = base64.b64decode("QSXCR+Q6sek8bf92")
    client = ScramClient(
        SHA256, "user", "pencil", client_nonce="fyko+d2lbbFgONRv9qkxdawL", hash_name="sha1"
    )
    client.client_first()
    final = client.receive_server_first(
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    assert final == (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    client.receive_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    assert len(salt) == 12


def _exchange(server: ScramServer, client: ScramClient) -> None:
    final = client.receive_server_first(server.receive_client_first(client.client_first()))
    client.receive_server_final(server.receive_client_final(final))


@pytest.mark.parametrize("mechanism", list(ScramMechanism))
def test_round_trip_both_mechanisms(mechanism: ScramMechanism) -> None:
    credential = make_credential(mechanism, "s3cret", b"s" * 32)
    server = ScramServer(mechanism, _store(("alice", credential)), server_nonce="N" * 24,
                         fake_salt_key=KEY)  # fmt: skip
    _exchange(server, ScramClient(mechanism, "alice", "s3cret", client_nonce="c" * 24))
    assert server.username == "alice"


def test_wrong_password_and_unknown_user_fail_alike() -> None:
    credential = make_credential(SHA256, "right", b"s" * 32)
    lookup = _store(("alice", credential))
    messages = []
    for user, password in (("alice", "wrong"), ("mallory", "right")):
        server = ScramServer(SHA256, lookup, server_nonce="N" * 24, fake_salt_key=KEY)
        client = ScramClient(SHA256, user, password, client_nonce="c" * 24)
        server_first = server.receive_client_first(client.client_first())
        with pytest.raises(ScramError) as failure:
            server.receive_client_final(client.receive_server_first(server_first))
        messages.append(str(failure.value))
        assert server.state is ScramServerState.FAILED
    assert messages[0] == messages[1]


def test_unknown_user_gets_a_stable_plausible_salt() -> None:
    lookup = _store()
    firsts = []
    for _ in range(2):
        server = ScramServer(SHA256, lookup, server_nonce="N" * 24, fake_salt_key=KEY)
        firsts.append(server.receive_client_first(b"n,,n=ghost,r=" + b"c" * 24))
    assert firsts[0] == firsts[1]
    other = ScramServer(SHA256, lookup, server_nonce="N" * 24, fake_salt_key=KEY)
    assert other.receive_client_first(b"n,,n=other,r=" + b"c" * 24) != firsts[0]
    assert firsts[0].endswith(f"i={ITERATIONS_MIN}".encode())


def test_a_replayed_client_final_fails_on_a_new_exchange() -> None:
    credential = make_credential(SHA256, "pw", b"s" * 32)
    lookup = _store(("alice", credential))
    server = ScramServer(SHA256, lookup, server_nonce="first-server-nonce", fake_salt_key=KEY)
    client = ScramClient(SHA256, "alice", "pw", client_nonce="c" * 24)
    captured = client.receive_server_first(server.receive_client_first(client.client_first()))
    server.receive_client_final(captured)
    # An eavesdropper replays both captured client messages; the new server nonce differs.
    again = ScramServer(SHA256, lookup, server_nonce="second-server-nonce", fake_salt_key=KEY)
    again.receive_client_first(b"n,,n=alice,r=" + b"c" * 24)
    with pytest.raises(ScramError, match="nonce"):
        again.receive_client_final(captured)


def test_client_refuses_an_impostor_server() -> None:
    client = ScramClient(SHA256, "alice", "pw", client_nonce="c" * 24)
    client.client_first()
    client.receive_server_first(b"r=" + b"c" * 24 + b"S,s=c2FsdHNhbHQ=,i=4096")
    with pytest.raises(ScramError, match="signature"):
        client.receive_server_final(b"v=" + base64.b64encode(b"x" * 32))


@pytest.mark.parametrize(
    "message",
    [b"p=tls-unique,,n=a,r=" + b"c" * 20, b"x,,n=a,r=" + b"c" * 20, b"n,,m=ext,n=a,r=" + b"c" * 20,
     b"n,,n=a", b"n,,n=,r=" + b"c" * 20, b"n,a=bob,n=alice,r=" + b"c" * 20, b"n,,n=a,r=short",
     b"n,,n=a=ZZ,r=" + b"c" * 20, b"\xff\xfe", b"n,,n=a,r=" + b"c" * 5000],
)  # fmt: skip
def test_malformed_client_first_is_refused(message: bytes) -> None:
    server = ScramServer(SHA256, _store(), server_nonce="N" * 24, fake_salt_key=KEY)
    with pytest.raises(ScramError):
        server.receive_client_first(message)
    with pytest.raises(ScramError):
        server.receive_client_final(b"c=biws,r=x,p=AAAA")


def test_usernames_with_commas_and_equals_round_trip() -> None:
    assert encode_username("a,b=c") == "a=2Cb=3Dc"
    assert decode_username("a=2Cb=3Dc") == "a,b=c"


@settings(max_examples=300, deadline=None)
@given(first=st.binary(max_size=300), final=st.binary(max_size=300))
def test_server_never_raises_anything_but_scram_error(first: bytes, final: bytes) -> None:
    credential = make_credential(SHA256, "pw", b"s" * 32)
    server = ScramServer(SHA256, _store(("a", credential)), server_nonce="N" * 24,
                         fake_salt_key=KEY)  # fmt: skip
    try:
        server.receive_client_first(first)
        server.receive_client_final(final)
    except ScramError:
        return
    raise AssertionError("random bytes authenticated")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200), first_ok=st.booleans())
def test_server_final_step_never_raises_anything_but_scram_error(text: str, first_ok: bool) -> None:
    credential = make_credential(SHA256, "pw", b"s" * 32)
    server = ScramServer(SHA256, _store(("a", credential)), server_nonce="N" * 24,
                         fake_salt_key=KEY)  # fmt: skip
    server.receive_client_first(b"n,,n=a,r=" + b"c" * 24)
    prefix = "c=biws,r=" + "c" * 24 + "N" * 24 + ",p=" if first_ok else ""
    with pytest.raises(ScramError):
        server.receive_client_final((prefix + text).encode())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_client_never_raises_anything_but_scram_error(data: bytes) -> None:
    client = ScramClient(SHA256, "a", "pw", client_nonce="c" * 24)
    client.client_first()
    try:
        client.receive_server_first(data)
    except ScramError:
        return
    with pytest.raises(ScramError):
        client.receive_server_final(data)


def test_credentials_are_checked() -> None:
    with pytest.raises(ValueError, match="iterations"):
        make_credential(SHA512, "pw", b"s" * 32, iterations=10)
    with pytest.raises(ValueError, match="salt"):
        make_credential(SHA512, "pw", b"", iterations=4096)
