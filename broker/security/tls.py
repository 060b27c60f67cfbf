"""The broker's side of TLS: the server context of its TLS listeners, the client context of its
calls to peers over a TLS inter-broker listener, and the mTLS principal of a connection.

Rules:
- Contexts are built once, at start-up (`BrokerTls.from_config`), so a missing file or a key that
  does not match its certificate stops the broker before it listens, with `ConfigError` naming
  the option (`tls_cert_file`, ...).
- `tls_client_auth`: `required` refuses clients without a certificate signed by `tls_ca_file`
  (mTLS), `requested` asks for one and verifies it if given, `none` does not ask.
- A broker calling its peers presents its own certificate (peers may require mTLS) and verifies
  theirs against `tls_ca_file` (the system CAs without it), host names included.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any, Final

from wire.config_error import ConfigError
from wire.tls import client_context, load_cert_chain, load_verify_locations

CLIENT_AUTH_MODES: Final = {
    "none": ssl.CERT_NONE,
    "requested": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}

# Short names of the subject attributes, as RFC 4514 (and Kafka's principal names) write them.
_ATTRIBUTE_NAMES: Final = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerTls:
    """The TLS contexts of one broker (None: no TLS configured)."""

    server: ssl.SSLContext
    # For the broker's own connections to peers over a TLS inter-broker listener.
    peer_client: ssl.SSLContext

    @classmethod
    def from_config(
        cls, *, cert_file: str, key_file: str, ca_file: str, client_auth: str
    ) -> BrokerTls | None:
        """The contexts for these settings, or None without a certificate; ConfigError if a
        file is missing or unusable."""
        if not cert_file:
            return None
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        load_cert_chain(server, ("tls_cert_file", cert_file), ("tls_key_file", key_file))
        if ca_file:
            load_verify_locations(server, "tls_ca_file", ca_file)
        server.verify_mode = CLIENT_AUTH_MODES[client_auth]
        peer_client = client_context(cafile=ca_file or None, check_hostname=True)
        load_cert_chain(peer_client, ("tls_cert_file", cert_file), ("tls_key_file", key_file))
        return cls(server, peer_client)


def check_settings(
    *, cert_file: str, key_file: str, ca_file: str, client_auth: str, tls_needed: bool
) -> None:
    """The consistency rules of the TLS options (no file is read here); ConfigError if broken."""
    if client_auth not in CLIENT_AUTH_MODES:
        raise ConfigError(
            "tls_client_auth", f"expected one of required, requested, none; got {client_auth!r}"
        )
    if bool(cert_file) != bool(key_file):
        missing = "tls_key_file" if cert_file else "tls_cert_file"
        raise ConfigError(missing, "--tls-cert and --tls-key go together: give both")
    if tls_needed and not cert_file:
        raise ConfigError(
            "tls_cert_file", "a tls:// listener needs a certificate: give --tls-cert and --tls-key"
        )
    if client_auth != "none" and not ca_file:
        raise ConfigError(
            "tls_ca_file",
            f"--tls-client-auth {client_auth} verifies client certificates against a CA: give "
            "--tls-ca",
        )
    if ca_file and not cert_file:
        raise ConfigError("tls_ca_file", "given without --tls-cert/--tls-key (TLS is off)")


def certificate_subject(tls: Any) -> str | None:
    """The verified peer certificate's subject as an RFC 4514 name (`CN=alice,O=acme`), most
    specific attribute first as Kafka writes principals; None without a certificate."""
    try:
        certificate = tls.getpeercert()
    except (ValueError, AttributeError):
        return None
    if not certificate:
        return None
    parts = [
        "+".join(f"{_ATTRIBUTE_NAMES.get(name, name)}={_escape(value)}" for name, value in rdn)
        for rdn in reversed(certificate.get("subject", ()))
    ]
    return ",".join(parts) or None


def _escape(value: str) -> str:
    # RFC 4514 section 2.4: these characters are escaped anywhere, leading '#'/space and a
    # trailing space too, so a principal names exactly one subject.
    escaped = "".join(f"\\{char}" if char in ',+"\\<>;=' else char for char in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped
