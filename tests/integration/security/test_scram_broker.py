"""Goal: with `broker serve --auth scram`, a right password works end to end (SDK and CLI), a
wrong one or none gets a clear error and no data, a replayed login fails, and failures are
audited and counted."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import trio

from client import aio
from client.embedded import EmbeddedBroker, EmbeddedBrokerError
from tests.cli_process import cli
from tests.integration.security.conftest import ADMIN, AUTH_ARGS
from tests.unit.server.wire_client import WireClient
from wire import codec
from wire.batch import build_batch
from wire.error_codes import BrokerError, ErrorCode
from wire.sasl_client import AuthenticationFailedError
from wire.scram import ScramClient, ScramMechanism

SHA256 = ScramMechanism.SCRAM_SHA_256


def _login_options(user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> dict[str, str]:
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_username": user,
        "sasl_password": password,
    }


async def _create_user(broker: EmbeddedBroker, name: str, password: str, **options: str) -> None:
    async with aio.AdminClient(broker.bootstrap, **ADMIN) as admin:
        await admin.upsert_user(name, password, **options)


async def _grant_topic(broker: EmbeddedBroker, user: str, topic: str) -> None:
    """`--auth scram` enforces ACLs too: the admin lets `user` create, write and read `topic`."""
    async with aio.AdminClient(broker.bootstrap, **ADMIN) as admin:
        await admin.create_acls(
            codec.AclBindingData(
                resource_type="topic",
                resource_name=topic,
                pattern_type="literal",
                principal=f"User:{user}",
                operation=operation,
                permission="allow",
            )
            for operation in ("create", "write", "read")
        )


async def _address(broker: EmbeddedBroker) -> tuple[str, int]:
    host, port = broker.bootstrap.rsplit(":", 1)
    return host, int(port)


async def test_right_password_produces_and_consumes(
    auth_broker: EmbeddedBroker, unique_topic: str
) -> None:
    await _create_user(auth_broker, "alice", "alice-pw", mechanism="SCRAM-SHA-512")
    alice = _login_options("alice", "alice-pw", "SCRAM-SHA-512")
    async with aio.AdminClient(auth_broker.bootstrap, **alice) as admin:
        with pytest.raises(BrokerError, match="TOPIC_AUTHORIZATION_FAILED"):
            await admin.create_topic(unique_topic, 1)  # logged in, but granted nothing yet
    await _grant_topic(auth_broker, "alice", unique_topic)
    async with aio.AdminClient(auth_broker.bootstrap, **alice) as admin:
        await admin.create_topic(unique_topic, 1)
    async with aio.Producer(auth_broker.bootstrap, **alice) as producer:
        await producer.send(unique_topic, b"secret record")
        await producer.flush()
    async with aio.Consumer(
        auth_broker.bootstrap, auto_offset_reset="earliest", **alice
    ) as consumer:
        consumer.subscribe([unique_topic])
        with trio.fail_after(20):
            records = []
            while not records:
                records = await consumer.poll(timeout_ms=500)
    assert [r.value for r in records] == [b"secret record"]


async def test_wrong_password_fails_clearly_and_gets_no_data(
    auth_broker: EmbeddedBroker, unique_topic: str
) -> None:
    await _create_user(auth_broker, "mallory", "right-pw")
    with pytest.raises(AuthenticationFailedError, match="wrong user name or password"):
        async with aio.Consumer(
            auth_broker.bootstrap, **_login_options("mallory", "wrong-pw")
        ) as consumer:
            await consumer.poll(timeout_ms=100)
    # On the wire: the failed login closes the connection, so a fetch behind it gets nothing.
    client = await WireClient.connect(*await _address(auth_broker))
    try:
        await client.request(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256"))
        scram = ScramClient(SHA256, "mallory", "wrong-pw", client_nonce="n" * 24)
        first = await client.request(codec.SaslAuthenticateRequest(auth_bytes=scram.client_first()))
        final = scram.receive_server_first(first.auth_bytes)
        answer = await client.request(codec.SaslAuthenticateRequest(auth_bytes=final))
        assert answer.error is ErrorCode.SASL_AUTHENTICATION_FAILED
        with pytest.raises((ConnectionError, trio.BrokenResourceError)):
            await client.fetch(unique_topic, 0, 0)
    finally:
        await client.aclose()


async def test_unauthenticated_requests_get_an_error_and_no_data(
    auth_broker: EmbeddedBroker, unique_topic: str
) -> None:
    async with aio.AdminClient(auth_broker.bootstrap, **ADMIN) as admin:
        await admin.create_topic(unique_topic, 1)
    async with aio.Producer(auth_broker.bootstrap, **ADMIN) as producer:
        await producer.send(unique_topic, b"private")
        await producer.flush()
    # The SDK without a login stops at the handshake, saying what to configure.
    with pytest.raises(BrokerError, match="sasl_username"):
        async with aio.AdminClient(auth_broker.bootstrap) as admin:
            await admin.list_topics()
    # A raw client that ignores that: every request is refused, then the connection is closed.
    for request in (
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic=unique_topic, partition=0, fetch_offset=0),)
        ),
        codec.ProduceRequest(
            acks=codec.ACKS_ALL,
            partitions=(
                codec.ProducePartition(
                    topic=unique_topic,
                    partition=0,
                    records=build_batch([(0, None, b"forged", None)]),
                ),
            ),
        ),
        codec.MetadataRequest(),
    ):
        client = await WireClient.connect(*await _address(auth_broker))
        try:
            assert client.handshake is not None
            assert client.handshake.sasl_mechanisms == ("SCRAM-SHA-256", "SCRAM-SHA-512")
            response = await client.request(request)
            assert isinstance(response, codec.ErrorResponse), response
            assert response.error is ErrorCode.ILLEGAL_SASL_STATE
            assert "SASL" in response.error_message
            with pytest.raises((ConnectionError, trio.BrokenResourceError)):
                await client.request(codec.MetadataRequest())
        finally:
            await client.aclose()
    # Nothing was written: the topic still holds one record.
    async with aio.AdminClient(auth_broker.bootstrap, **ADMIN) as admin:
        description = await admin.describe_topic(unique_topic)
    assert description.partitions[0].high_watermark == 1


async def test_a_replayed_login_fails_on_a_new_connection(auth_broker: EmbeddedBroker) -> None:
    await _create_user(auth_broker, "replayed", "replayed-pw")
    address = await _address(auth_broker)
    scram = ScramClient(SHA256, "replayed", "replayed-pw", client_nonce="r" * 24)
    client_first = scram.client_first()
    captured = await WireClient.connect(*address)
    try:
        await captured.request(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256"))
        first = await captured.request(codec.SaslAuthenticateRequest(auth_bytes=client_first))
        client_final = scram.receive_server_first(first.auth_bytes)
        ok = await captured.request(codec.SaslAuthenticateRequest(auth_bytes=client_final))
        assert ok.error is ErrorCode.NONE
    finally:
        await captured.aclose()
    replay = await WireClient.connect(*address)
    try:
        await replay.request(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256"))
        await replay.request(codec.SaslAuthenticateRequest(auth_bytes=client_first))
        answer = await replay.request(codec.SaslAuthenticateRequest(auth_bytes=client_final))
        assert answer.error is ErrorCode.SASL_AUTHENTICATION_FAILED
    finally:
        await replay.aclose()


def test_cli_users_and_login(
    auth_broker: EmbeddedBroker, unique_topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_PASSWORD", ADMIN["sasl_password"])
    created = cli(auth_broker, "--user", "admin", "users", "create", "dave", "--password-stdin",
                  "--mechanism", "SCRAM-SHA-512", stdin="dave-pw\n")  # fmt: skip
    assert created.returncode == 0, created.stderr
    listed = cli(auth_broker, "--user", "admin", "users", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    users = {row["name"]: row["mechanisms"] for row in json.loads(listed.stdout)}
    assert users["dave"] == [{"mechanism": "SCRAM-SHA-512", "iterations": 4096}]
    assert "dave-pw" not in listed.stdout
    monkeypatch.setenv("BROKER_PASSWORD", "dave-pw")
    dave = ["--user", "dave", "--sasl-mechanism", "SCRAM-SHA-512"]
    denied = cli(auth_broker, *dave, "topics", "create", unique_topic)
    assert denied.returncode == 1 and "TOPIC_AUTHORIZATION_FAILED" in denied.stderr
    monkeypatch.setenv("BROKER_PASSWORD", ADMIN["sasl_password"])
    granted = cli(auth_broker, "--user", "admin", "acls", "add", "--allow", "User:dave",
                  "--operation", "create", "--operation", "write", "--operation", "read",
                  "--topic", unique_topic)  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    monkeypatch.setenv("BROKER_PASSWORD", "dave-pw")
    assert cli(auth_broker, *dave, "topics", "create", unique_topic).returncode == 0
    produced = cli(auth_broker, *dave, "produce", unique_topic, stdin="hello\n")
    assert produced.returncode == 0, produced.stderr
    consumed = cli(auth_broker, *dave, "consume", unique_topic, "--from-beginning",
                   "--max-messages", "1")  # fmt: skip
    assert consumed.stdout.strip() == "hello", consumed.stderr
    # Not a super-user: may not manage users.
    refused = cli(auth_broker, *dave, "users", "list")
    assert refused.returncode == 1 and "UNAUTHORIZED" in refused.stderr
    monkeypatch.setenv("BROKER_PASSWORD", "not-daves")
    wrong = cli(auth_broker, *dave, "topics", "list")
    assert wrong.returncode == 1
    assert "SASL_AUTHENTICATION_FAILED" in wrong.stderr and "Traceback" not in wrong.stderr
    monkeypatch.delenv("BROKER_PASSWORD")
    anonymous = cli(auth_broker, "topics", "list")
    assert anonymous.returncode == 1 and "--user" in anonymous.stderr
    monkeypatch.setenv("BROKER_PASSWORD", ADMIN["sasl_password"])
    deleted = cli(auth_broker, "--user", "admin", "users", "delete", "dave")
    assert deleted.returncode == 0, deleted.stderr
    monkeypatch.setenv("BROKER_PASSWORD", "dave-pw")
    assert cli(auth_broker, *dave, "topics", "list").returncode == 1


async def test_failures_are_audited_and_counted(auth_broker: EmbeddedBroker) -> None:
    with pytest.raises(AuthenticationFailedError):
        async with aio.AdminClient(auth_broker.bootstrap, **_login_options("nobody", "x")):
            pass
    with urllib.request.urlopen(f"http://{auth_broker.metrics_address}/metrics") as answer:
        metrics = answer.read().decode()
    (line,) = [
        line
        for line in metrics.splitlines()
        if line.startswith('broker_authentication_failures_total{reason="bad_password"}')
    ]
    assert float(line.split()[-1]) >= 1
    assert "broker.audit" in auth_broker.log_tail(200)
    assert "user='nobody'" in auth_broker.log_tail(200)


def test_first_start_without_the_admin_password_says_what_to_do(tmp_path: Path) -> None:
    broker = EmbeddedBroker(
        data_dir=tmp_path / "data", extra_args=AUTH_ARGS, env={"BROKER_ADMIN_PASSWORD": ""}
    )
    with pytest.raises(EmbeddedBrokerError, match="BROKER_ADMIN_PASSWORD"):
        broker.start()
    broker.close()
