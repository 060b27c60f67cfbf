"""Compaction in a three-broker cluster: the replicas compact their own copies below their
commit index, and a replica that was down catches up from a compacted leader (emptied and partly
cleaned batches replicate like any other). Consumers see the latest value of every key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.log.cleaner import CLEANER_CHECKPOINT_FILE
from cli.broker_cli import app
from client import AdminClient, Consumer, Producer
from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster.common import wait_for
from tests.log_reading import batches_in_file
from wire.batch import decode_records

WAIT_S = 60.0
KEYS = 10
RECORDS = 200
TOPIC = "kv"


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[EmbeddedCluster]:
    started = EmbeddedCluster(3, extra_args=["--set", "log_cleaner_backoff_ms=100"])
    try:
        yield started.start()
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            request.node.add_report_section("call", "cluster logs", started.log_tails())
        started.close()


def checkpoint(cluster: EmbeddedCluster, node_id: int) -> Path:
    return Path(cluster.node(node_id).data_dir) / "logs" / f"{TOPIC}-0" / CLEANER_CHECKPOINT_FILE


def latest_in_files(directory: Path) -> dict[bytes, bytes | None]:
    """Latest value per key in a replica's segment files (read beside the running broker)."""
    latest: dict[bytes, bytes | None] = {}
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        # Up to a batch being written right now (the next poll sees it whole) or the zeros
        # preallocated after the last batch.
        for position, header in batches_in_file(data, beside_a_writer=True):
            for record in decode_records(data, position, header=header):
                if record.key is not None and not header.is_control:
                    latest[bytes(record.key)] = record.value
    return latest


def latest_values(bootstrap: str) -> dict[bytes, bytes]:
    latest: dict[bytes, bytes] = {}
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(TOPIC, 0)])
        deadline = time.monotonic() + WAIT_S
        while len(latest) < KEYS or any(not v.endswith(b"-last") for v in latest.values()):
            assert time.monotonic() < deadline, f"read only {latest}"
            for record in consumer.poll(timeout_ms=200):
                latest[record.key] = record.value
    return latest


def test_replicas_compact_and_a_lagging_replica_catches_up_from_a_compacted_leader(
    cluster: EmbeddedCluster,
) -> None:
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, 1, replication_factor=3, config={
            "segment.bytes": 1024, "max.message.bytes": 1024,
            "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"})  # fmt: skip
    cluster.stop(3)
    with Producer(cluster.bootstrap, acks="all", batch_bytes=512) as producer:
        futures = [
            producer.send(
                TOPIC,
                b"v%d" % i + (b"-last" if i >= RECORDS - KEYS else b"x" * 100),
                key=b"key-%d" % (i % KEYS),
            )
            for i in range(RECORDS)
        ]
        producer.flush()
    assert all(future.result(timeout=WAIT_S).offset >= 0 for future in futures)
    wait_for(lambda: checkpoint(cluster, 1).exists() and checkpoint(cluster, 2).exists(),
             "nodes 1 and 2 to compact", WAIT_S)  # fmt: skip
    cluster.start(3)
    cluster.wait_ready()
    expected = {b"key-%d" % (i % KEYS): b"v%d-last" % i for i in range(RECORDS - KEYS, RECORDS)}
    assert latest_values(cluster.bootstrap) == expected
    # Node 3 was down while the others compacted: it caught up from a compacted leader
    # (emptied and partly cleaned batches replicate as they are) and holds every latest value.
    wait_for(lambda: latest_in_files(checkpoint(cluster, 3).parent) == expected, "node 3", WAIT_S)


def test_alter_config_through_a_follower_switches_every_replica_to_compaction(
    cluster: EmbeddedCluster,
) -> None:
    # Goal: `broker-cli topics alter-config` sent to a broker that is not the controller leader
    # is forwarded to it, every broker's metadata shows the new override, and every replica's
    # log takes it: a topic created with cleanup.policy=delete gets compacted once switched.
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, 1, replication_factor=3, config={
            "segment.bytes": 1024, "max.message.bytes": 1024,
            "min.cleanable.dirty.ratio": "0.01"})  # fmt: skip
        controller = admin.cluster_status().controller_id
    with Producer(cluster.bootstrap, acks="all", batch_bytes=512) as producer:
        for i in range(RECORDS):
            value = b"v%d" % i + (b"-last" if i >= RECORDS - KEYS else b"x" * 100)
            producer.send(TOPIC, value, key=b"key-%d" % (i % KEYS))
        producer.flush()
    assert not any(checkpoint(cluster, node).exists() for node in cluster.node_ids)
    follower = next(node for node in cluster.node_ids if node != controller)
    via_follower = [
        "--bootstrap",
        cluster.node(follower).bootstrap,
        "topics",
        "alter-config",
        TOPIC,
    ]
    result = CliRunner().invoke(app, [*via_follower, "--set", "cleanup.policy=compact"])
    assert result.exit_code == 0, result.output
    refused = CliRunner().invoke(app, [*via_follower, "--set", "retention.ms=-7"])
    assert refused.exit_code != 0 and "retention.ms" in refused.output

    def every_broker_shows_compact() -> bool:
        for node in cluster.node_ids:
            with AdminClient(cluster.node(node).bootstrap) as admin:
                configs = admin.describe_topic(TOPIC).configs
            if configs.get("cleanup.policy") != "compact" or configs.get("retention.ms") == -7:
                return False
        return True

    wait_for(every_broker_shows_compact, "every broker to show cleanup.policy=compact", WAIT_S)
    wait_for(lambda: all(checkpoint(cluster, node).exists() for node in cluster.node_ids),
             "every replica to compact", WAIT_S)  # fmt: skip
    expected = {b"key-%d" % (i % KEYS): b"v%d-last" % i for i in range(RECORDS - KEYS, RECORDS)}
    assert latest_values(cluster.bootstrap) == expected
