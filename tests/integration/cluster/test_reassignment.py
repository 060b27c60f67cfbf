"""Partition reassignment on four real brokers (`EmbeddedCluster`), driven by the real
`broker-cli` in a subprocess: a partition on brokers 1,2,3 moves to 2,3,4 while an acks=all
producer writes; nothing acknowledged is lost, and the new replicas' logs are identical byte for
byte. Then `cluster rebalance` evens a skewed layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from client import AdminClient, Consumer, Producer, TopicPartition
from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster.common import FAST_GROUP_BROKER_ARGS, wait_for
from tests.log_reading import batches_in_file
from tests.unit.server.wire_client import WireClient
from wire import codec

TOPIC = "moving"
WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(4, extra_args=FAST_GROUP_BROKER_ARGS) as running:
        yield running


def broker_cli(cluster: EmbeddedCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `broker-cli` (a subprocess, as a user would), bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "cli.broker_cli", "--bootstrap", cluster.bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S + 30,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def partitions_of(cluster: EmbeddedCluster, topic: str) -> list[codec.PartitionMetadata]:
    """The topic's partitions as the first broker's Metadata answer gives them."""
    node = cluster.node(cluster.node_ids[0])

    async def ask() -> list[codec.PartitionMetadata]:
        client = await WireClient.connect(node.host, node.port)
        try:
            response = await client.request(codec.MetadataRequest(topics=(topic,)))
        finally:
            await client.aclose()
        return sorted(response.topics[0].partitions, key=lambda p: p.partition)

    return trio.run(ask)


def replicas_of(
    cluster: EmbeddedCluster, topic: str, partition: int
) -> tuple[list[int], list[int]]:
    metadata = partitions_of(cluster, topic)[partition]
    return list(metadata.replicas), list(metadata.isr)


def log_bytes(data_dir: Path, topic: str, partition: int) -> bytes:
    """A replica's whole log as stored: the batches of its segment files in offset order,
    concatenated (not the zeros preallocated after the active segment's last batch)."""
    directory = data_dir / "logs" / f"{topic}-{partition}"
    chunks = []
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        end = sum(header.size_bytes for _, header in batches_in_file(data, beside_a_writer=True))
        chunks.append(data[:end])
    return b"".join(chunks)


def test_move_1_2_3_to_2_3_4_under_acks_all_with_the_cli(cluster: EmbeddedCluster) -> None:
    """Goal: the issue's case, end to end on real processes and the real CLI."""
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, 1, replication_factor=3)
        wait_for(lambda: len(replicas_of(cluster, TOPIC, 0)[1]) == 3, "a full ISR", WAIT_S)
        original, _ = replicas_of(cluster, TOPIC, 0)
    outsider = next(node for node in cluster.node_ids if node not in original)
    leaving = original[0]
    target = [node for node in original if node != leaving] + [outsider]

    acked: dict[bytes, int] = {}
    stop = threading.Event()
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            with Producer(cluster.bootstrap, acks="all") as producer:
                number = 0
                while not stop.is_set():
                    futures = []
                    for _ in range(20):
                        value = b"v-%d" % number
                        futures.append((value, producer.send(TOPIC, value, partition=0)))
                        number += 1
                    for value, future in futures:
                        acked[value] = future.result(timeout=WAIT_S).offset
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    producer_thread = threading.Thread(target=produce, name="acks-all producer")
    producer_thread.start()
    try:
        wait_for(lambda: len(acked) >= 200 or failures, "records before the move", WAIT_S)
        moved = broker_cli(
            cluster,
            "partitions", "reassign", "--topic", TOPIC, "--partition", "0",
            "--replicas", ",".join(map(str, target)), "--throttle", "10000000",
            "--wait", "--timeout", str(WAIT_S),
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        assert "1 reassignment(s) completed" in moved.stderr
        count_after_move = len(acked)
        wait_for(lambda: len(acked) >= count_after_move + 200 or failures, "later records", WAIT_S)
    finally:
        stop.set()
        producer_thread.join(WAIT_S)
    assert not failures, failures

    with AdminClient(cluster.bootstrap) as admin:
        wait_for(
            lambda: sorted(replicas_of(cluster, TOPIC, 0)[1]) == sorted(target),
            "the new replicas in sync",
            WAIT_S,
        )
        assert replicas_of(cluster, TOPIC, 0)[0] == target
        assert admin.list_partition_reassignments() == []
    listed = broker_cli(cluster, "partitions", "reassignments", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"reassignments": []}

    # Nothing acknowledged is lost: every acked value is at the offset its ack named.
    with Consumer(cluster.bootstrap) as consumer:
        consumer.assign([TopicPartition(TOPIC, 0)])
        consumer.seek_to_beginning()
        found: dict[int, bytes] = {}
        end = max(acked.values()) + 1

        def read_all() -> bool:
            for record in consumer.poll(timeout_ms=200):
                found[record.offset] = record.value
            return max(found, default=-1) + 1 >= end

        wait_for(read_all, "every acknowledged record", WAIT_S)
    for value, offset in acked.items():
        assert found.get(offset) == value, f"acknowledged {value!r} at offset {offset} is lost"

    # The new replica set's logs are identical; the broker that left deleted its copy.
    def identical() -> bool:
        logs = {node: log_bytes(cluster.node(node).data_dir, TOPIC, 0) for node in target}
        return len(set(logs.values())) == 1 and len(logs[target[0]]) > 0

    wait_for(identical, "identical logs on the new replicas", WAIT_S)
    gone = cluster.node(leaving).data_dir / "logs" / f"{TOPIC}-0"
    wait_for(lambda: not gone.exists(), f"broker {leaving} to delete its replica", WAIT_S)


def test_rebalance_evens_replicas_over_the_brokers(cluster: EmbeddedCluster) -> None:
    """Goal: after partitions are piled onto three brokers, `cluster rebalance --wait` moves
    replicas to the fourth until every broker holds an even share."""
    name = "skewed"
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(name, 4, replication_factor=2)
        wait_for(
            lambda: all(len(p.isr) == 2 for p in partitions_of(cluster, name)),
            "a full ISR",
            WAIT_S,
        )
        # Pile every partition onto brokers 1 and 2.
        admin.alter_partition_reassignments({(name, p): (1 + p % 2, 2 - p % 2) for p in range(4)})
        wait_for(lambda: not admin.list_partition_reassignments(), "the pile-up", WAIT_S)
    planned = broker_cli(cluster, "cluster", "rebalance", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["moves"], "a skewed cluster needs moves"
    done = broker_cli(cluster, "cluster", "rebalance", "--wait", "--timeout", str(WAIT_S))
    assert done.returncode == 0, done.stderr
    # Every topic counts, the internal ones too: the cluster's per-broker replica counts.
    with AdminClient(cluster.bootstrap) as admin:
        counts = {b.node_id: b.replica_count for b in admin.cluster_status().brokers}
    assert max(counts.values()) - min(counts.values()) <= 1, (counts, done.stdout)
