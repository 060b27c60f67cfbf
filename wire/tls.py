"""The client side of TLS, shared by the SDK and by brokers calling their peers: an
`ssl.SSLContext` from kafka-python's options (`ssl_cafile`, `ssl_certfile`, `ssl_keyfile`,
`ssl_check_hostname`), and the words for a failed handshake.

Rules: files are read when the context is built, so a missing file or a key that does not match
its certificate fails there with `ConfigError` naming the option, never at the first connection.
Certificates are always verified (against `ssl_cafile`, or the system's CAs without one); only the
host name check can be turned off (a certificate that names a DNS name the client does not use).
"""

from __future__ import annotations

import ssl
from typing import Final

from wire.config_error import ConfigError

# kafka-python's `security_protocol` values this module serves; SASL_* belong to authentication.
PLAINTEXT: Final = "PLAINTEXT"
SSL: Final = "SSL"
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def uses_tls(security_protocol: str) -> bool:
    """Whether `security_protocol` runs over TLS (SSL, SASL_SSL); ConfigError if unknown."""
    protocol = security_protocol.upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            "security_protocol",
            f"expected one of {', '.join(SECURITY_PROTOCOLS)}, got {security_protocol!r}",
        )
    return protocol.endswith("SSL")


def client_context(
    *,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A TLS client context that verifies the broker (and presents `certfile` for mTLS).

    Raises `ConfigError` naming the option whose file is missing or unusable.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cafile:
        load_verify_locations(context, "ssl_cafile", cafile)
    if keyfile and not certfile:
        raise ConfigError("ssl_keyfile", "given without ssl_certfile (the certificate it signs)")
    if certfile:
        load_cert_chain(context, ("ssl_certfile", certfile), ("ssl_keyfile", keyfile or certfile))
    context.check_hostname = check_hostname
    return context


def load_verify_locations(context: ssl.SSLContext, option: str, cafile: str) -> None:
    """Trust the CA certificates in `cafile`; ConfigError naming `option` if it cannot."""
    try:
        context.load_verify_locations(cafile=cafile)
    except FileNotFoundError:
        raise ConfigError(option, f"CA file {cafile} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            option, f"cannot load CA certificates from {cafile}: {_reason(exc)} (expected PEM)"
        ) from None


def load_cert_chain(context: ssl.SSLContext, cert: tuple[str, str], key: tuple[str, str]) -> None:
    """Load a certificate (chain) and its private key; ConfigError naming the faulty option."""
    (cert_option, cert_file), (key_option, key_file) = cert, key
    for option, path in (cert, key):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(option, f"cannot read {path}: {exc.strerror}") from None
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                key_option,
                f"the private key in {key_file} does not match the certificate in {cert_file}",
            ) from None
        raise ConfigError(
            cert_option,
            f"cannot load the certificate {cert_file} with the key {key_file}: {_reason(exc)} "
            "(expected PEM files)",
        ) from None


def handshake_failure(exc: BaseException, *, server_side: bool = False) -> str:
    """Words for a failed TLS handshake, with what to check: for the error a client user sees,
    or with `server_side` for the broker's log line about a client."""
    cause = tls_alert(exc)
    if server_side:
        return _server_side_failure(cause, exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verification failed: {cause.verify_message or _reason(cause)} "
            "(check ssl_cafile names the CA that signed the broker's certificate, and that the "
            "certificate names the host you connect to)"
        )
    if isinstance(cause, ssl.SSLError):
        reason = _reason(cause)
        hint = ""
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
            hint = " (the broker requires a client certificate: give ssl_certfile/ssl_keyfile)"
        elif "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
            hint = " (the broker does not trust the CA that signed ssl_certfile)"
        elif "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
            hint = " (is this a plaintext listener? use security_protocol PLAINTEXT)"
        elif "EOF" in reason:
            hint = (
                " (the broker closed the connection during the handshake: is this a plaintext "
                "listener, or does the broker require a client certificate (ssl_certfile)?)"
            )
        return f"TLS handshake failed: {reason}{hint}"
    return (
        f"TLS handshake failed: {exc!r} (the broker closed the connection: it may require a "
        "client certificate, or the port is not a TLS listener)"
    )


def tls_alert(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error in `exc`'s chain of causes, if any (a connection lost to a TLS alert)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _server_side_failure(cause: BaseException | None, exc: BaseException) -> str:
    if cause is None:
        return f"TLS handshake failed: the client closed the connection ({exc!r})"
    reason = _reason(cause)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"client certificate refused: {cause.verify_message or reason}"
    if "WRONG_VERSION_NUMBER" in reason or "HTTP_REQUEST" in reason:
        return f"TLS handshake failed: {reason} (the client does not speak TLS: plaintext client?)"
    if "CERTIFICATE_REQUIRED" in reason or "PEER_DID_NOT_RETURN" in reason:
        return f"TLS handshake failed: {reason} (no client certificate; tls_client_auth=required)"
    if "EOF" in reason or "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
        return (
            f"TLS handshake failed: {reason} (the client gave up: it may not trust this "
            "broker's certificate)"
        )
    return f"TLS handshake failed: {reason}"


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)
