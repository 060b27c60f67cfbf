"""SASL SCRAM (RFC 5802, RFC 7677): credentials and both sides of the exchange, sans-I/O.

What the broker stores for a user is a `ScramCredential`: salt, iteration count, StoredKey and
ServerKey. Neither the password nor the salted password is stored or sent: `broker-cli users
create` derives the credential on the client and sends only it; a login proves knowledge of the
password with a ClientProof bound to both nonces, and the broker proves it holds the credential
with its ServerSignature.

The exchange (client-first -> server-first -> client-final -> server-final) is driven by two
state machines that take bytes and return bytes: `ScramClient` and `ScramServer`. They hold no
sockets, clock or randomness: nonces and the server's fake-salt key are given by the caller (the
shells draw them from `secrets`). Rules:
- Every malformed message raises `ScramError` (never another exception): the server answers it
  with SASL_AUTHENTICATION_FAILED and closes the connection.
- Channel binding is not supported: the GS2 header must be `n,,` (or `y,,`: the client could bind
  but thinks we cannot); `p=` is refused. An authorization id, if given, must be the user name.
- An unknown user gets a salt derived from the server's secret key and the name, always the same
  for that name, so the server-first message does not tell whether the user exists; the proof
  then fails exactly as a wrong password does.
- The proof is compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import hmac
from collections.abc import Callable
from typing import Final

# RFC 7677 recommends at least 4096 iterations; Kafka refuses more than 16384 (each login costs
# the broker one PBKDF2 of this many rounds, so the upper bound caps a login's CPU cost).
ITERATIONS_MIN: Final = 4096
ITERATIONS_MAX: Final = 16384
ITERATIONS_DEFAULT: Final = 4096
SALT_BYTES: Final = 32
# A client nonce carries at least this many printable characters of randomness.
NONCE_LENGTH_MIN: Final = 16
# Bounds on what a peer may send, so a hostile message cannot make us build huge objects.
MESSAGE_BYTES_MAX: Final = 4096
USERNAME_LENGTH_MAX: Final = 256


class ScramError(Exception):
    """The peer's SCRAM message is malformed or its proof does not verify.

    `message` is safe to show to the peer: it never says whether the user exists.
    """


class ScramMechanism(enum.Enum):
    """A SCRAM mechanism: `value` is its SASL name, `hash_name` the hashlib digest it uses."""

    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"

    @property
    def hash_name(self) -> str:
        return _HASH_NAMES[self.value]

    @classmethod
    def parse(cls, name: str) -> ScramMechanism:
        """The mechanism named `name` (case-insensitive); ValueError naming the choices."""
        for mechanism in cls:
            if mechanism.value == name.upper():
                return mechanism
        raise ValueError(
            f"unknown SASL mechanism {name!r}: use one of {', '.join(m.value for m in cls)}"
        )


# Keyed by the SASL name; RFC 5802's SCRAM-SHA-1 is here only for its test vector (a broker
# offers the two mechanisms of `ScramMechanism`).
_HASH_NAMES: Final = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512", "SCRAM-SHA-1": "sha1"}


@dataclasses.dataclass(frozen=True, slots=True)
class ScramCredential:
    """What the server keeps for one user and mechanism (RFC 5802 section 3)."""

    mechanism: ScramMechanism
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def __post_init__(self) -> None:
        check_credential_shape(
            self.mechanism.hash_name, self.salt, self.iterations, self.stored_key, self.server_key
        )


def check_credential_shape(
    hash_name: str, salt: bytes, iterations: int, stored_key: bytes, server_key: bytes
) -> None:
    """ValueError unless the parts make a credential this broker accepts (one check, shared by
    the credential, the metadata record and the request handler)."""
    size = hashlib.new(hash_name).digest_size
    if not isinstance(salt, bytes) or not 8 <= len(salt) <= 256:
        raise ValueError("the salt must be 8 to 256 bytes")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise ValueError(f"iterations must be an integer, got {iterations!r}")
    if not ITERATIONS_MIN <= iterations <= ITERATIONS_MAX:
        raise ValueError(
            f"iterations must be between {ITERATIONS_MIN} and {ITERATIONS_MAX}, got {iterations}"
        )
    for name, key in (("stored_key", stored_key), ("server_key", server_key)):
        if not isinstance(key, bytes) or len(key) != size:
            raise ValueError(f"{name} must be {size} bytes for {hash_name}")


def _hmac(hash_name: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hash_name).digest()


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(Normalize(password), salt, i) = PBKDF2 (RFC 5802 section 2.2). SASLprep is reduced to
    UTF-8: passwords in other normal forms must be typed the same way each time."""
    return hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)


def _keys(hash_name: str, salted: bytes) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) from a salted password."""
    client_key = _hmac(hash_name, salted, b"Client Key")
    stored_key = hashlib.new(hash_name, client_key).digest()
    server_key = _hmac(hash_name, salted, b"Server Key")
    return client_key, stored_key, server_key


def make_credential(
    mechanism: ScramMechanism, password: str, salt: bytes, iterations: int = ITERATIONS_DEFAULT
) -> ScramCredential:
    """The credential the server stores for `password` (the caller draws `salt` at random)."""
    _, stored_key, server_key = _keys(
        mechanism.hash_name, salted_password(mechanism.hash_name, password, salt, iterations)
    )
    return ScramCredential(mechanism, salt, iterations, stored_key, server_key)


# --- message syntax (RFC 5802 section 7) ---------------------------------------------------------


def _decode(data: bytes) -> str:
    if len(data) > MESSAGE_BYTES_MAX:
        raise ScramError(f"SCRAM message of {len(data)} bytes is longer than {MESSAGE_BYTES_MAX}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("SCRAM message is not UTF-8") from None


def _attributes(text: str, expected: str) -> dict[str, str]:
    """Parse `a=v,b=w` whose keys must be exactly `expected`, in that order."""
    parts = text.split(",")
    if len(parts) != len(expected):
        raise ScramError(f"expected attributes {','.join(expected)}, got {len(parts)} of them")
    found: dict[str, str] = {}
    for key, part in zip(expected, parts, strict=True):
        if len(part) < 2 or part[1] != "=" or part[0] != key:
            raise ScramError(f"expected attribute {key}=..., got {part[:20]!r}")
        found[key] = part[2:]
    return found


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramError(f"{what} is not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_nonce(nonce: str, what: str) -> None:
    # printable = %x21-2B / %x2D-7E: visible ASCII without the comma.
    if not nonce or any(not 0x21 <= ord(ch) <= 0x7E or ch == "," for ch in nonce):
        raise ScramError(f"{what} must be printable ASCII without commas")


def encode_username(name: str) -> str:
    """saslname: ',' and '=' escaped as '=2C' and '=3D'."""
    return name.replace("=", "=3D").replace(",", "=2C")


def decode_username(value: str) -> str:
    """The inverse of `encode_username`; ScramError on a bad escape."""
    out: list[str] = []
    position = 0
    while position < len(value):
        ch = value[position]
        if ch == "=":
            escape = value[position : position + 3]
            if escape == "=2C":
                out.append(",")
            elif escape == "=3D":
                out.append("=")
            else:
                raise ScramError("bad '=' escape in the user name")
            position += 3
            continue
        out.append(ch)
        position += 1
    name = "".join(out)
    if not name or len(name) > USERNAME_LENGTH_MAX:
        raise ScramError(f"the user name must be 1 to {USERNAME_LENGTH_MAX} characters")
    return name


# --- server ---------------------------------------------------------------------------------------


class ScramServerState(enum.Enum):
    WAIT_CLIENT_FIRST = "wait_client_first"
    WAIT_CLIENT_FINAL = "wait_client_final"
    DONE = "done"
    FAILED = "failed"


CredentialLookup = Callable[[str, ScramMechanism], ScramCredential | None]


class ScramServer:
    """The server side of one SCRAM exchange.

    `lookup(user, mechanism)` returns the stored credential or None; `server_nonce` is fresh
    randomness for this exchange; `fake_salt_key` is a secret of this broker (stable across
    exchanges) from which unknown users' salts are derived. Call `receive_client_first`, then
    `receive_client_final`; after the latter returns, `username` is authenticated. Any
    `ScramError` leaves the exchange FAILED: the caller must close the connection.
    """

    def __init__(
        self,
        mechanism: ScramMechanism,
        lookup: CredentialLookup,
        *,
        server_nonce: str,
        fake_salt_key: bytes,
        hash_name: str | None = None,
    ) -> None:
        _check_nonce(server_nonce, "the server nonce")
        self.mechanism = mechanism
        self._hash = hash_name or mechanism.hash_name
        self._lookup = lookup
        self._server_nonce = server_nonce
        self._fake_salt_key = fake_salt_key
        self.state = ScramServerState.WAIT_CLIENT_FIRST
        self.username: str | None = None
        self._nonce = ""
        self._gs2_header = ""
        self._auth_prefix = ""
        self._credential: tuple[bytes, int, bytes, bytes] | None = None
        self._known = False

    def receive_client_first(self, data: bytes) -> bytes:
        """Parse client-first-message; return server-first-message."""
        self._expect(ScramServerState.WAIT_CLIENT_FIRST)
        try:
            return self._client_first(_decode(data))
        except ScramError:
            self.state = ScramServerState.FAILED
            raise

    def _client_first(self, text: str) -> bytes:
        gs2_flag, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if gs2_flag.startswith("p="):
            raise ScramError("channel binding is not supported: use the GS2 header 'n,,'")
        if gs2_flag not in ("n", "y"):
            raise ScramError("the client-first message must start with the GS2 header 'n,,'")
        if bare.startswith("m="):
            raise ScramError("SCRAM extensions (m=) are not supported")
        fields = _attributes(bare, "nr")
        username = decode_username(fields["n"])
        if authzid and authzid != "a=" + encode_username(username):
            raise ScramError("the authorization id must be empty or the user name")
        client_nonce = fields["r"]
        _check_nonce(client_nonce, "the client nonce")
        if len(client_nonce) < NONCE_LENGTH_MIN:
            raise ScramError(f"the client nonce must be at least {NONCE_LENGTH_MIN} characters")
        credential = self._lookup(username, self.mechanism)
        self._known = credential is not None
        if credential is not None:
            self._credential = (
                credential.salt,
                credential.iterations,
                credential.stored_key,
                credential.server_key,
            )
        else:
            self._credential = self._fake_credential(username)
        salt, iterations, _, _ = self._credential
        self.username = username
        self._gs2_header = f"{gs2_flag},{authzid},"
        self._nonce = client_nonce + self._server_nonce
        server_first = f"r={self._nonce},s={_b64(salt)},i={iterations}"
        self._auth_prefix = f"{bare},{server_first}"
        self.state = ScramServerState.WAIT_CLIENT_FINAL
        return server_first.encode()

    def _fake_credential(self, username: str) -> tuple[bytes, int, bytes, bytes]:
        # Same salt for the same name every time (a second look shows nothing new), keys no
        # password matches except by breaking the HMAC.
        seed = _hmac("sha256", self._fake_salt_key, b"salt:" + username.encode())
        size = hashlib.new(self._hash).digest_size
        stored = _hmac(self._hash, self._fake_salt_key, b"stored:" + username.encode())[:size]
        return seed[:SALT_BYTES], ITERATIONS_DEFAULT, stored, stored

    def receive_client_final(self, data: bytes) -> bytes:
        """Verify client-final-message; return server-final-message (the client then checks it).

        Raises ScramError("authentication failed ...") for a wrong password or an unknown user
        alike, and for a nonce that is not this exchange's (a replayed message)."""
        self._expect(ScramServerState.WAIT_CLIENT_FINAL)
        try:
            answer = self._client_final(_decode(data))
        except ScramError:
            self.state = ScramServerState.FAILED
            raise
        self.state = ScramServerState.DONE
        return answer

    def _client_final(self, text: str) -> bytes:
        without_proof, separator, proof_part = text.rpartition(",p=")
        if not separator:
            raise ScramError("the client-final message has no proof (p=)")
        fields = _attributes(without_proof, "cr")
        binding = _b64decode(fields["c"], "the channel binding (c=)")
        if binding != self._gs2_header.encode():
            raise ScramError("the channel binding (c=) does not match the GS2 header")
        if not hmac.compare_digest(fields["r"].encode(), self._nonce.encode()):
            raise ScramError("authentication failed: the nonce is not this exchange's")
        proof = _b64decode(proof_part, "the proof (p=)")
        assert self._credential is not None
        _, _, stored_key, server_key = self._credential
        if len(proof) != len(stored_key):
            raise ScramError("the proof (p=) has the wrong length")
        auth_message = f"{self._auth_prefix},{without_proof}".encode()
        client_signature = _hmac(self._hash, stored_key, auth_message)
        client_key = _xor(proof, client_signature)
        computed = hashlib.new(self._hash, client_key).digest()
        # Evaluate the comparison whether or not the user exists, so both take the same time.
        matches = hmac.compare_digest(computed, stored_key)
        if not (matches and self._known):
            raise ScramError("authentication failed: wrong user name or password")
        server_signature = _hmac(self._hash, server_key, auth_message)
        return f"v={_b64(server_signature)}".encode()

    def _expect(self, state: ScramServerState) -> None:
        if self.state is not state:
            raise ScramError(f"unexpected SCRAM message: the exchange is {self.state.value}")


# --- client ---------------------------------------------------------------------------------------


class ScramClientState(enum.Enum):
    START = "start"
    WAIT_SERVER_FIRST = "wait_server_first"
    WAIT_SERVER_FINAL = "wait_server_final"
    DONE = "done"
    FAILED = "failed"


class ScramClient:
    """The client side of one SCRAM exchange: `client_first()`, `receive_server_first(...)`,
    `receive_server_final(...)`. `client_nonce` is fresh randomness (printable, no commas).

    The server's iteration count is accepted only within [ITERATIONS_MIN, ITERATIONS_MAX]: a
    lower one would weaken what an eavesdropper can brute-force, a higher one is a CPU trap."""

    def __init__(
        self,
        mechanism: ScramMechanism,
        username: str,
        password: str,
        *,
        client_nonce: str,
        hash_name: str | None = None,
    ) -> None:
        _check_nonce(client_nonce, "the client nonce")
        self.mechanism = mechanism
        self._hash = hash_name or mechanism.hash_name
        self._username = username
        self._password = password
        self._client_nonce = client_nonce
        self.state = ScramClientState.START
        self._first_bare = ""
        self._server_signature = b""

    def client_first(self) -> bytes:
        self._expect(ScramClientState.START)
        self._first_bare = f"n={encode_username(self._username)},r={self._client_nonce}"
        self.state = ScramClientState.WAIT_SERVER_FIRST
        return f"n,,{self._first_bare}".encode()

    def receive_server_first(self, data: bytes) -> bytes:
        """Parse server-first-message; return client-final-message."""
        self._expect(ScramClientState.WAIT_SERVER_FIRST)
        try:
            answer = self._server_first(_decode(data))
        except ScramError:
            self.state = ScramClientState.FAILED
            raise
        self.state = ScramClientState.WAIT_SERVER_FINAL
        return answer

    def _server_first(self, text: str) -> bytes:
        if text.startswith("m="):
            raise ScramError("the server asks for a SCRAM extension (m=) this client lacks")
        fields = _attributes(text, "rsi")
        nonce = fields["r"]
        _check_nonce(nonce, "the server's nonce")
        if not nonce.startswith(self._client_nonce) or nonce == self._client_nonce:
            raise ScramError("the server's nonce does not extend this client's")
        salt = _b64decode(fields["s"], "the salt (s=)")
        if not salt:
            raise ScramError("the server sent an empty salt")
        if not fields["i"].isdigit() or len(fields["i"]) > 9:
            raise ScramError("the iteration count (i=) is not a number")
        iterations = int(fields["i"])
        if not ITERATIONS_MIN <= iterations <= ITERATIONS_MAX:
            raise ScramError(
                f"the server asks for {iterations} iterations, outside "
                f"[{ITERATIONS_MIN}, {ITERATIONS_MAX}]"
            )
        salted = salted_password(self._hash, self._password, salt, iterations)
        client_key, stored_key, server_key = _keys(self._hash, salted)
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        proof = _xor(client_key, _hmac(self._hash, stored_key, auth_message))
        self._server_signature = _hmac(self._hash, server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}".encode()

    def receive_server_final(self, data: bytes) -> None:
        """Check the server's signature: ScramError if the server does not hold our credential
        (an impostor) or reports an error (e=...)."""
        self._expect(ScramClientState.WAIT_SERVER_FINAL)
        text = _decode(data)
        self.state = ScramClientState.FAILED
        if text.startswith("e="):
            raise ScramError(f"the server refused the login: {text[2:100]}")
        signature = _b64decode(_attributes(text, "v")["v"], "the server signature (v=)")
        if not hmac.compare_digest(signature, self._server_signature):
            raise ScramError("the server's signature is wrong: it does not hold this credential")
        self.state = ScramClientState.DONE

    def _expect(self, state: ScramClientState) -> None:
        if self.state is not state:
            raise ScramError(f"unexpected SCRAM step: the exchange is {self.state.value}")
