"""Three real brokers, each with a plaintext listener (INTERNAL, also between brokers) and a TLS
one (SECURE): a client is told the addresses of the listener it connected on (Kafka's advertised
listeners). A TLS client bootstrapping on one broker's SECURE port gets every broker's SECURE
port in Metadata, FindCoordinator and ClusterStatus, and produces to and consumes (in a group)
from leaders on the other brokers, which only works over those TLS ports; a plaintext client
bootstrapping on INTERNAL gets the plaintext ports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trustme

from client import AdminClient, Consumer, Producer, aio
from client.embedded_cluster import EmbeddedCluster
from client.security import SecurityOptions
from tests.integration.cluster.common import FAST_GROUP_BROKER_ARGS, wait_for

TOPIC = "ledger"
PARTITIONS = 3
WAIT_S = 60.0
LISTENERS = [("INTERNAL", "plaintext"), ("SECURE", "tls")]


@pytest.fixture(scope="module")
def tls_options(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], SecurityOptions]:
    """The brokers' TLS flags (a certificate for 127.0.0.1) and a TLS client's options."""
    directory = tmp_path_factory.mktemp("certs")
    authority = trustme.CA()
    ca, cert = directory / "ca.pem", directory / "broker.pem"
    authority.cert_pem.write_to_path(str(ca))
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    broker_args = ["--tls-cert", str(cert), "--tls-key", str(cert)]
    return broker_args, SecurityOptions(security_protocol="SSL", ssl_cafile=str(ca))


@pytest.fixture(scope="module")
def cluster(tls_options: tuple[list[str], SecurityOptions]) -> Iterator[EmbeddedCluster]:
    broker_args, options = tls_options
    with EmbeddedCluster(
        3, listeners=LISTENERS, extra_args=[*FAST_GROUP_BROKER_ARGS, *broker_args]
    ) as running:
        with AdminClient(running.bootstrap_of("SECURE"), **options) as admin:
            admin.create_topic(TOPIC, PARTITIONS, replication_factor=3)
            # Leaders spread over the brokers (their preferred leaders): a client of broker 1
            # must reach the others.
            wait_for(
                lambda: {p.leader_id for p in admin.describe_topic(TOPIC).partitions} == {1, 2, 3},
                f"a leader of {TOPIC} on every broker",
                WAIT_S,
            )
        yield running


def _ports(cluster: EmbeddedCluster, listener: str) -> dict[int, int]:
    addresses = cluster.bootstrap_of(listener).split(",")
    return {
        node_id: int(address.rpartition(":")[2])
        for node_id, address in zip(cluster.node_ids, addresses, strict=True)
    }


def _first(cluster: EmbeddedCluster, listener: str) -> str:
    return cluster.bootstrap_of(listener).split(",")[0]


def _answers(bootstrap: str, options: SecurityOptions) -> dict[str, dict[int, int]]:
    """The ports Metadata, FindCoordinator and ClusterStatus give a client of `bootstrap`."""

    async def ask() -> dict[str, dict[int, int]]:
        async with aio.AdminClient(bootstrap, **options) as admin:
            cluster: Any = admin._cluster
            metadata = await cluster.refresh_metadata([TOPIC])
            coordinator = await cluster.find_coordinator("audit")
            status = await admin.cluster_status()
            return {
                "metadata": {broker.node_id: broker.port for broker in metadata.brokers},
                "coordinator": {coordinator: cluster.brokers[coordinator][1]},
                "status": {broker.node_id: broker.port for broker in status.brokers},
            }

    return trio.run(ask)


def _produce_and_consume(bootstrap: str, options: SecurityOptions, tag: str) -> None:
    """One record to every partition (so to every broker's leader) and read back in a group."""
    values = {partition: f"{tag}-{partition}".encode() for partition in range(PARTITIONS)}
    with Producer(bootstrap, acks="all", **options) as producer:
        futures = [producer.send(TOPIC, value, partition=p) for p, value in values.items()]
        for future in futures:
            future.result(WAIT_S)
    read: set[bytes] = set()
    with Consumer(
        bootstrap, group_id=f"readers-{tag}", auto_offset_reset="earliest", **options
    ) as consumer:
        consumer.subscribe([TOPIC])
        deadline = time.monotonic() + WAIT_S
        while not set(values.values()) <= read and time.monotonic() < deadline:
            read |= {record.value for record in consumer.poll(timeout_ms=500)}
    assert set(values.values()) <= read


def test_a_tls_client_is_sent_to_the_tls_ports(
    cluster: EmbeddedCluster, tls_options: tuple[list[str], SecurityOptions]
) -> None:
    _, options = tls_options
    secure = _ports(cluster, "SECURE")
    answers = _answers(_first(cluster, "SECURE"), options)
    assert answers["metadata"] == secure
    assert answers["status"] == secure
    ((node_id, port),) = answers["coordinator"].items()
    assert port == secure[node_id]
    _produce_and_consume(_first(cluster, "SECURE"), options, "tls")


def test_a_plaintext_client_is_sent_to_the_plaintext_ports(cluster: EmbeddedCluster) -> None:
    internal = _ports(cluster, "INTERNAL")
    assert set(internal.values()).isdisjoint(_ports(cluster, "SECURE").values())
    answers = _answers(_first(cluster, "INTERNAL"), SecurityOptions())
    assert answers["metadata"] == internal
    assert answers["status"] == internal
    ((node_id, port),) = answers["coordinator"].items()
    assert port == internal[node_id]
    _produce_and_consume(_first(cluster, "INTERNAL"), SecurityOptions(), "plain")
