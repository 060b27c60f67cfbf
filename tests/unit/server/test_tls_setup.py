"""TLS settings are checked before anything listens (files, key/certificate match, listener
syntax), and the mTLS principal is the certificate subject written as Kafka writes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from broker.config import BrokerConfig
from broker.security.listeners import ListenerProtocol, parse_listeners
from broker.security.tls import BrokerTls, certificate_subject
from client.security import ssl_context_of
from wire.config_error import ConfigError


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _write(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {"cert": tmp_path / "server.pem", "key": tmp_path / "server.key", "ca": tmp_path / "ca"}
    for blob, path in zip(server.cert_chain_pems, [files["cert"]], strict=False):
        blob.write_to_path(str(path))
    server.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return {name: str(path) for name, path in files.items()}


def test_missing_and_mismatched_files_name_the_option(tmp_path: Path, ca: trustme.CA) -> None:
    files = _write(tmp_path, ca)
    with pytest.raises(ConfigError, match=r"tls_cert_file.*cannot read"):
        BrokerTls.from_config(
            cert_file=str(tmp_path / "nope.pem"), key_file=files["key"], ca_file="",
            client_auth="none",
        )  # fmt: skip
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(ConfigError, match=r"tls_key_file.*does not match the certificate"):
        BrokerTls.from_config(
            cert_file=files["cert"], key_file=str(other_key), ca_file="", client_auth="none"
        )
    with pytest.raises(ConfigError, match=r"tls_ca_file.*does not exist"):
        BrokerTls.from_config(
            cert_file=files["cert"], key_file=files["key"], ca_file=str(tmp_path / "no-ca"),
            client_auth="required",
        )  # fmt: skip


def test_listener_settings_are_validated() -> None:
    specs = parse_listeners("listeners", "IN=tls://0.0.0.0:9093, OUT=plaintext://[::1]:9092")
    assert [(s.name, s.protocol, s.host, s.port) for s in specs] == [
        ("IN", ListenerProtocol.TLS, "0.0.0.0", 9093),
        ("OUT", ListenerProtocol.PLAINTEXT, "::1", 9092),
    ]
    for bad, words in (
        ("IN=ssl://h:1", "not tls or plaintext"),
        ("IN=tls://h:1,IN=tls://h:2", "named twice"),
        ("tls://h:1", "expected NAME="),
        ("A=tls://h:1,B=plaintext://h:1", "used by another listener"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_listeners("listeners", bad)
    with pytest.raises(ConfigError, match="tls_cert_file"):
        BrokerConfig.from_mapping({"listeners": "A=tls://127.0.0.1:0"})
    with pytest.raises(ConfigError, match="inter_broker_listener"):
        BrokerConfig.from_mapping(
            {"listeners": "A=plaintext://127.0.0.1:0", "inter_broker_listener": "B"}
        )
    with pytest.raises(ConfigError, match="tls_ca_file"):
        BrokerConfig.from_mapping(
            {"tls_cert_file": "c", "tls_key_file": "k", "tls_client_auth": "required"}
        )
    with pytest.raises(ConfigError, match="queued_max_request_bytes"):
        BrokerConfig.from_mapping({"queued.max.request.bytes": 1024})


def test_client_security_options_refuse_silent_plaintext(tmp_path: Path, ca: trustme.CA) -> None:
    files = _write(tmp_path, ca)
    assert ssl_context_of({}) is None
    with pytest.raises(ConfigError, match=r"ssl_cafile.*security_protocol='SSL'"):
        ssl_context_of({"ssl_cafile": files["ca"]})
    with pytest.raises(ConfigError, match="security_protocol"):
        ssl_context_of({"security_protocol": "TLS1"})
    with pytest.raises(ConfigError, match=r"ssl_cafile.*does not exist"):
        ssl_context_of({"security_protocol": "SSL", "ssl_cafile": str(tmp_path / "none")})
    assert ssl_context_of({"security_protocol": "SSL", "ssl_cafile": files["ca"]}) is not None


async def test_the_principal_of_an_mtls_client_is_its_certificate_subject(
    tmp_path: Path, ca: trustme.CA
) -> None:
    files = _write(tmp_path, ca)
    tls = BrokerTls.from_config(
        cert_file=files["cert"], key_file=files["key"], ca_file=files["ca"], client_auth="required"
    )
    assert tls is not None
    alice = ca.issue_cert("alice@example.com", common_name="alice, the admin")
    client_context = ssl_context_of(
        {"security_protocol": "SSL", "ssl_cafile": files["ca"], "ssl_check_hostname": False}
    )
    assert client_context is not None
    alice.configure_cert(client_context)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    server = trio.SSLStream(server_raw, tls.server, server_side=True)
    client = trio.SSLStream(client_raw, client_context, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        await server.do_handshake()
    subject = certificate_subject(server)
    assert subject is not None
    # Most specific first, special characters escaped (RFC 4514), as Kafka's principals.
    assert subject.startswith("CN=alice\\, the admin,OU=")
    assert subject.endswith(",O=trustme v" + trustme.__version__)
