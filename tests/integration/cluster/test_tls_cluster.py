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

from client import AdminClient, Consumer, Producer
from client.embedded_cluster import EmbeddedCluster
from client.security import SecurityOptions
from tests.integration.cluster.common import wait_for

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
    with EmbeddedCluster(
        3, extra_args=[*FAST_RAFT, *broker_args], client_options=options
    ) as running:
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
