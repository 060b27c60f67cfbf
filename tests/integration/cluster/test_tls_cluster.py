"""Three real brokers whose only listener is TLS with client certificates required (mTLS), so
Raft links and controller requests between brokers must run over TLS with the brokers' own
certificates: the cluster forms, acks=all writes survive the kill of the partition leader, and
every acknowledged record is read back once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from client import AdminClient, Consumer, Producer, TopicPartition
from client.embedded_cluster import EmbeddedCluster
from client.security import SecurityOptions
from tests.integration.cluster.common import wait_for
from wire import codec
from wire.error_codes import BrokerError

FAST_RAFT = (
    "--set", "raft_tick_ms=50",
    "--set", "broker_heartbeat_interval_ms=200",
    "--set", "broker_session_timeout_ms=2000",
)  # fmt: skip
TOPIC = "ledger"
WAIT_S = 60.0
BATCH = 50


@pytest.fixture
def client_tls(tmp_path: Path) -> tuple[list[str], SecurityOptions]:
    """The brokers' TLS flags (one certificate for 127.0.0.1, a CA, mTLS) and a client's
    security options (its own certificate from the same CA)."""
    authority = trustme.CA()
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "broker", "client")}
    authority.cert_pem.write_to_path(str(paths["ca"]))
    authority.issue_cert(
        "127.0.0.1", common_name="broker"
    ).private_key_and_cert_chain_pem.write_to_path(str(paths["broker"]))
    authority.issue_cert(
        "client@example.com", common_name="ops"
    ).private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    broker_args = [
        "--tls-cert", str(paths["broker"]), "--tls-key", str(paths["broker"]),
        "--tls-ca", str(paths["ca"]), "--tls-client-auth", "required",
    ]  # fmt: skip
    options = SecurityOptions(
        security_protocol="SSL",
        ssl_cafile=str(paths["ca"]),
        ssl_certfile=str(paths["client"]),
        ssl_keyfile=str(paths["client"]),
    )
    return broker_args, options


@pytest.fixture
def tls_cluster(
    client_tls: tuple[list[str], SecurityOptions], request: pytest.FixtureRequest
) -> Iterator[EmbeddedCluster]:
    broker_args, options = client_tls
    with EmbeddedCluster(3, extra_args=[*FAST_RAFT, *broker_args], security=options) as running:
        yield running
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            request.node.add_report_section("call", "cluster logs", running.log_tails(150))


def _leader(admin: AdminClient, not_in: tuple[int, ...] = ()) -> int:
    def current() -> int:
        partition = admin.describe_topic(TOPIC).partitions[0]
        leader = partition.leader_id
        return leader if leader > 0 and leader not in not_in else 0

    return int(wait_for(current, f"a leader of {TOPIC}-0 outside {not_in}", WAIT_S))


def test_a_tls_cluster_survives_the_kill_of_a_leader(
    tls_cluster: EmbeddedCluster, client_tls: tuple[list[str], SecurityOptions]
) -> None:
    _, options = client_tls
    with AdminClient(tls_cluster.bootstrap, **options) as admin:
        admin.create_topic(TOPIC, 1, replication_factor=3)
        leader = _leader(admin)
    values = [f"record-{index}".encode() for index in range(2 * BATCH)]
    with Producer(tls_cluster.bootstrap, acks="all", **options) as producer:
        for future in [producer.send(TOPIC, value) for value in values[:BATCH]]:
            future.result(WAIT_S)
    tls_cluster.kill(leader)
    survivors = ",".join(
        tls_cluster.node(node_id).bootstrap for node_id in tls_cluster.node_ids if node_id != leader
    )
    with AdminClient(survivors, **options) as admin:
        new_leader = _leader(admin, not_in=(leader,))
    assert new_leader != leader
    with Producer(survivors, acks="all", **options) as producer:
        for future in [producer.send(TOPIC, value) for value in values[BATCH:]]:
            future.result(WAIT_S)
    read: list[bytes] = []
    with Consumer(survivors, auto_offset_reset="earliest", **options) as consumer:
        consumer.subscribe([TOPIC])
        deadline = time.monotonic() + WAIT_S
        while len(read) < len(values) and time.monotonic() < deadline:
            read += [record.value for record in consumer.poll(timeout_ms=500)]
    assert read == values


def test_a_cluster_with_tls_scram_and_acls_on(tmp_path: Path) -> None:
    """The issue's "done when": three brokers with a TLS-only listener (also between brokers),
    SASL SCRAM logins over it and ACLs enforced (`--auth scram` turns them on). A user the
    admin created and granted one topic produces and consumes there over SASL_SSL, through a
    leader kill; another topic is refused to her and not even listed."""
    authority = trustme.CA()
    ca, cert = tmp_path / "ca.pem", tmp_path / "broker.pem"
    authority.cert_pem.write_to_path(str(ca))
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    tls_args = ["--tls-cert", str(cert), "--tls-key", str(cert), "--tls-ca", str(ca)]
    auth_args = ["--auth", "scram", "--super-user", "admin"]

    def login(user: str, password: str) -> SecurityOptions:
        return SecurityOptions(
            security_protocol="SASL_SSL",
            ssl_cafile=str(ca),
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=password,
        )

    admin_login, alice = login("admin", "admin-secret"), login("alice", "alice-secret")
    with EmbeddedCluster(
        3,
        extra_args=[*FAST_RAFT, *tls_args, *auth_args],
        env={"BROKER_ADMIN_PASSWORD": "admin-secret"},
        security=admin_login,
    ) as cluster:
        with AdminClient(cluster.bootstrap, **admin_login) as admin:
            admin.upsert_user("alice", "alice-secret", mechanism="SCRAM-SHA-512")
            admin.create_topic(TOPIC, 1, replication_factor=3)
            admin.create_topic("payroll", 1, replication_factor=3)
            admin.create_acls(
                codec.AclBindingData(
                    resource_type="topic",
                    resource_name=TOPIC,
                    pattern_type="literal",
                    principal="User:alice",
                    operation=operation,
                    permission="allow",
                )
                for operation in ("write", "read")
            )
            leader = _leader(admin)

        # Her credential and grant reach every broker through the controller log.
        def alice_sees_only_hers() -> bool:
            try:
                with AdminClient(cluster.bootstrap, **alice) as admin:
                    return admin.list_topics() == [TOPIC]
            except BrokerError:
                return False

        wait_for(alice_sees_only_hers, "alice's login and grant on every broker", WAIT_S)
        with Producer(cluster.bootstrap, **alice) as producer:
            producer.send(TOPIC, b"before the kill").result(WAIT_S)
            with pytest.raises(BrokerError, match="TOPIC_AUTHORIZATION_FAILED"):
                producer.send("payroll", b"not hers").result(WAIT_S)
        cluster.kill(leader)
        survivors = ",".join(
            cluster.node(node_id).bootstrap for node_id in cluster.node_ids if node_id != leader
        )
        with Producer(survivors, **alice) as producer:
            producer.send(TOPIC, b"after the kill").result(WAIT_S)
        read: list[bytes] = []
        with Consumer(survivors, auto_offset_reset="earliest", **alice) as consumer:
            consumer.subscribe([TOPIC])
            deadline = time.monotonic() + WAIT_S
            while len(read) < 2 and time.monotonic() < deadline:
                read += [record.value for record in consumer.poll(timeout_ms=500)]
        assert read == [b"before the kill", b"after the kill"]
        # The refused produce wrote nothing: the admin reads payroll to its end and finds no
        # record (its offsets hold only the leaders' Raft no-op entries, which consumers skip).
        payroll = TopicPartition("payroll", 0)
        with Consumer(survivors, auto_offset_reset="earliest", **admin_login) as consumer:
            consumer.assign([payroll])
            end = consumer.end_offsets([payroll])[payroll]
            found: list[bytes] = []
            deadline = time.monotonic() + WAIT_S
            while consumer.position(payroll) < end and time.monotonic() < deadline:
                found += [record.value for record in consumer.poll(timeout_ms=200)]
            assert consumer.position(payroll) >= end
        assert found == []
