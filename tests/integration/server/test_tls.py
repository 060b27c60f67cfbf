"""TLS as a user runs it: real `broker serve` processes with certificates made in the test
(trustme), driven by the SDK and by `broker-cli`. Certificates are verified, a client trusting
another CA fails with an error saying so, mTLS refuses clients without a certificate and names
the others by their subject, plaintext and TLS listeners serve side by side, and bad TLS files
stop `broker serve` before it listens (exit 2)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import trio
import trustme

from client import AdminClient, Consumer, Producer, aio
from client.errors import TlsHandshakeError
from tests.cli_process import CLI, CLI_TIMEOUT_S
from tests.integration.server.conftest import BrokerProcess, StartProcess, broker_command

WAIT_S = 30.0


class Certificates:
    """A CA, a broker certificate for 127.0.0.1/localhost and client certificates, on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.authority = trustme.CA()
        self.ca = self._write("ca.pem", self.authority.cert_pem)
        broker = self.authority.issue_cert("127.0.0.1", "localhost", common_name="broker")
        self.cert = self._write("broker.pem", *broker.cert_chain_pems)
        self.key = self._write("broker.key", broker.private_key_pem)

    def _write(self, name: str, *blobs: trustme.Blob) -> str:
        path = self.directory / name
        path.write_bytes(b"".join(blob.bytes() for blob in blobs))
        return str(path)

    def client(self, name: str, authority: trustme.CA | None = None) -> tuple[str, str]:
        """(certfile, keyfile) of a client certificate with common name `name`."""
        issued = (authority or self.authority).issue_cert(f"{name}@example.com", common_name=name)
        return (
            self._write(f"{name}.pem", *issued.cert_chain_pems),
            self._write(f"{name}.key", issued.private_key_pem),
        )

    def broker_args(self, *extra: str) -> list[str]:
        return ["--tls-cert", self.cert, "--tls-key", self.key, *extra]


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path)


def _listener(process: BrokerProcess, name: str) -> str:
    fields = dict(part.split("=", 1) for part in process.ready_line.split()[1:])
    return fields[f"listener.{name}"]


def _wait_for_log(process: BrokerProcess, text: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while text not in process.log():
        assert time.monotonic() < deadline, f"{text!r} not in the broker log:\n{process.log()}"
        time.sleep(0.05)


def test_tls_and_plaintext_listeners_side_by_side(
    broker_process: StartProcess, certs: Certificates
) -> None:
    broker = broker_process(
        "--listener", "SECURE=tls://127.0.0.1:0",
        "--listener", "LOCAL=plaintext://127.0.0.1:0",
        *certs.broker_args(),
    )  # fmt: skip
    secure, local = _listener(broker, "SECURE"), _listener(broker, "LOCAL")
    tls = {"security_protocol": "SSL", "ssl_cafile": certs.ca}
    with AdminClient(secure, **tls) as admin:
        admin.create_topic("payments", 1)
    with Producer(secure, **tls) as producer:
        producer.send("payments", b"over tls").result(WAIT_S)
    with Producer(local) as producer:
        producer.send("payments", b"over plaintext").result(WAIT_S)
    with Consumer(secure, auto_offset_reset="earliest", **tls) as consumer:
        consumer.subscribe(["payments"])
        values: list[bytes] = []
        deadline = time.monotonic() + WAIT_S
        while len(values) < 2 and time.monotonic() < deadline:
            values += [record.value for record in consumer.poll(timeout_ms=500)]
    assert values == [b"over tls", b"over plaintext"]
    # Each listener advertises itself: Metadata names the port the client connected to.
    assert _advertised_port(secure, tls) == int(secure.rpartition(":")[2])
    assert _advertised_port(local, {}) == int(local.rpartition(":")[2])
    # A plaintext client on the TLS port and a TLS client on the plaintext port are told so.
    with pytest.raises(Exception, match="security_protocol='SSL'"):
        AdminClient(secure, request_timeout_ms=5_000).__enter__()
    with pytest.raises(TlsHandshakeError):
        AdminClient(local, **tls).__enter__()
    _wait_for_log(broker, "received a TLS handshake on a plaintext listener")


def _advertised_port(bootstrap: str, options: dict[str, str]) -> int:
    """The port the broker's Metadata answer gives a client of `bootstrap`."""

    async def ask() -> int:
        async with aio.AdminClient(bootstrap, **options) as admin:  # type: ignore[arg-type]
            metadata = await admin._cluster.refresh_metadata([])
        (broker,) = metadata.brokers
        return int(broker.port)

    return int(trio.run(ask))


def test_an_advertised_listener_must_name_a_listener(tmp_path: Path, certs: Certificates) -> None:
    refused = _serve(
        tmp_path,
        "--listener", "SECURE=tls://127.0.0.1:0",
        "--advertised-listener", "PUBLIC=broker.example.com:9093",
        *certs.broker_args(),
    )  # fmt: skip
    assert refused.returncode == 2
    assert "'advertised_listeners': names no listener: 'PUBLIC'" in refused.stderr, refused.stderr


def test_certificate_verification(broker_process: StartProcess, certs: Certificates) -> None:
    broker = broker_process(*certs.broker_args())  # one TLS listener on --listen
    address = f"127.0.0.1:{broker.listen[1]}"
    wrong_ca = certs.directory / "wrong-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong_ca))
    with pytest.raises(TlsHandshakeError, match="certificate verification failed"):
        AdminClient(address, security_protocol="SSL", ssl_cafile=str(wrong_ca)).__enter__()
    # Without ssl_cafile the system CAs are used: they do not know the test CA either.
    with pytest.raises(TlsHandshakeError, match="certificate verification failed"):
        AdminClient(address, security_protocol="SSL").__enter__()
    with AdminClient(address, security_protocol="SSL", ssl_cafile=certs.ca) as admin:
        assert admin.list_topics() is not None
    _wait_for_log(broker, "it may not trust this broker's certificate")


def test_mtls_requires_a_client_certificate_and_names_its_subject(
    broker_process: StartProcess, certs: Certificates
) -> None:
    broker = broker_process(
        *certs.broker_args("--tls-ca", certs.ca, "--tls-client-auth", "required"),
        "--log-level", "debug",
    )  # fmt: skip
    address = f"127.0.0.1:{broker.listen[1]}"
    tls = {"security_protocol": "SSL", "ssl_cafile": certs.ca}
    with pytest.raises(TlsHandshakeError, match="TLS handshake"):
        AdminClient(address, **tls).__enter__()
    _wait_for_log(broker, "no client certificate")
    stranger = certs.client("mallory", authority=trustme.CA())
    with pytest.raises(TlsHandshakeError):
        AdminClient(address, ssl_certfile=stranger[0], ssl_keyfile=stranger[1], **tls).__enter__()
    _wait_for_log(broker, "client certificate refused")
    alice = certs.client("alice")
    with AdminClient(address, ssl_certfile=alice[0], ssl_keyfile=alice[1], **tls) as admin:
        admin.create_topic("orders", 1)
    _wait_for_log(broker, "principal User:CN=alice,OU=")


def _cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--bootstrap", address, "--wait-timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def test_broker_cli_over_tls(broker_process: StartProcess, certs: Certificates) -> None:
    broker = broker_process(*certs.broker_args())
    address = f"127.0.0.1:{broker.listen[1]}"
    created = _cli(address, "--ssl-cafile", certs.ca, "topics", "create", "audit")
    assert created.returncode == 0, created.stderr
    listed = _cli(address, "--ssl-cafile", certs.ca, "topics", "list")
    assert listed.returncode == 0 and "audit" in listed.stdout, listed
    wrong_ca = certs.directory / "wrong-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong_ca))
    refused = _cli(address, "--ssl-cafile", str(wrong_ca), "topics", "list")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "certificate verification failed" in lines[0], refused.stderr


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*broker_command(), "serve", "--data-dir", str(tmp_path / "d"), "--listen",
         "127.0.0.1:0", "--metrics-listen", "", *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )  # fmt: skip


def test_bad_tls_files_stop_broker_serve_before_it_listens(
    tmp_path: Path, certs: Certificates
) -> None:
    missing = _serve(tmp_path, "--tls-cert", str(tmp_path / "absent.pem"), "--tls-key", certs.key)
    assert missing.returncode == 2
    assert "tls_cert_file" in missing.stderr and "absent.pem" in missing.stderr, missing.stderr
    _, stranger_key = certs.client("someone-else")
    mismatched = _serve(tmp_path, "--tls-cert", certs.cert, "--tls-key", stranger_key)
    assert mismatched.returncode == 2
    assert "does not match the certificate" in mismatched.stderr, mismatched.stderr
    no_ca = _serve(tmp_path, *certs.broker_args("--tls-client-auth", "required"))
    assert no_ca.returncode == 2 and "--tls-ca" in no_ca.stderr, no_ca.stderr
