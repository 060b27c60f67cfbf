"""Topic admin in a three-broker cluster, driven as a user would (`broker-cli` as a subprocess):
`create_topic(exist_ok=True)` and the Kafka-named config methods go through the controller;
`topics add-partitions` places the new partitions' replicas through the controller and they
serve records; `topics delete-records` moves the log start on every replica (a log start entry
through the partition's Raft group), deletes whole segments below it, and holds after the leader
is killed and after every broker restarts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.log.log import LOG_START_FILE
from client import AdminClient, Consumer, Producer, TopicAlreadyExistsError, TopicPartition
from client.embedded_cluster import EmbeddedCluster

CLI = [sys.executable, "-m", "cli.broker_cli"]
# Bound on one CLI invocation and on each wait for the cluster to settle.
TIMEOUT_S = 60.0
TOPIC = "admin-events"
RECORDS = 200
# How long `first_offset` polls for a record (the brokers share two cores with the tests).
FIRST_RECORD_WAIT_S = 10.0
# The index of the first record kept by delete-records.
DELETE_BEFORE = 150


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[EmbeddedCluster]:
    started = EmbeddedCluster(3)
    try:
        yield started.start()
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            request.node.add_report_section("call", "cluster logs", started.log_tails())
        started.close()


def cli(cluster: EmbeddedCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--bootstrap", cluster.bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    # Replication and elections run in the brokers: polled with a deadline.
    deadline = time.monotonic() + TIMEOUT_S
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def partition_dir(cluster: EmbeddedCluster, node_id: int, partition: int) -> Path:
    return Path(cluster.node(node_id).data_dir) / "logs" / f"{TOPIC}-{partition}"


def log_start_on(cluster: EmbeddedCluster, node_id: int) -> int:
    """The log start a replica persisted (0 when it never received a deletion)."""
    path = partition_dir(cluster, node_id, 0) / LOG_START_FILE
    return int(path.read_text()) if path.exists() else 0


def first_offset(cluster: EmbeddedCluster, partition: int) -> int | None:
    """The first offset a consumer reading from the earliest gets (None: nothing within
    FIRST_RECORD_WAIT_S, e.g. while the partition has no leader)."""
    with Consumer(cluster.bootstrap) as consumer:
        tp = TopicPartition(TOPIC, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning([tp])
        deadline = time.monotonic() + FIRST_RECORD_WAIT_S
        while time.monotonic() < deadline:
            records = consumer.poll(timeout_ms=500)
            if records:
                return records[0].offset
    return None


def earliest(cluster: EmbeddedCluster) -> int:
    with AdminClient(cluster.bootstrap) as admin:
        return admin.list_offsets([TopicPartition(TOPIC, 0)], -2)[TopicPartition(TOPIC, 0)]


def test_add_partitions_and_delete_records_hold_on_every_replica(
    cluster: EmbeddedCluster,
) -> None:
    created = cli(cluster, "topics", "create", TOPIC, "-p", "1", "-r", "3",
                  "-c", "segment.bytes=2000", "-c", "max.message.bytes=1000")  # fmt: skip
    assert created.returncode == 0, created.stderr
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, 1, 3, exist_ok=True)
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topic(TOPIC, 1, 3)
        assert admin.describe_configs(TOPIC)["segment.bytes"] == 2000
        overrides = admin.alter_configs(TOPIC, {"retention.ms": 3_600_000})
        assert overrides["retention.ms"] == 3_600_000
    with Producer(cluster.bootstrap, batch_bytes=900) as producer:
        futures = [producer.send(TOPIC, b"x" * 50, partition=0) for _ in range(RECORDS)]
        producer.flush()
        offsets = [future.result().offset for future in futures]
    # Raft's own entries (the leader's no-op) come first; the records follow one another.
    assert offsets == list(range(offsets[0], offsets[0] + RECORDS))
    delete_before = offsets[DELETE_BEFORE]

    # add-partitions: the controller places the new replicas; they elect leaders and serve.
    refused = cli(cluster, "topics", "add-partitions", TOPIC, "--partitions", "1")
    assert refused.returncode == 1 and "INVALID_PARTITIONS" in refused.stderr
    added = cli(cluster, "topics", "add-partitions", TOPIC, "--partitions", "3")
    assert added.returncode == 0, added.stderr
    assert "1 -> 3" in added.stderr
    with AdminClient(cluster.bootstrap) as admin:
        description = wait_for(
            lambda: (
                (d := admin.describe_topic(TOPIC)).partition_count == 3
                and all(p.leader_id > 0 and len(p.replicas) == 3 for p in d.partitions)
                and d
            ),
            "leaders of the new partitions",
        )
    assert [p.partition for p in description.partitions] == [0, 1, 2]
    with Producer(cluster.bootstrap) as producer:
        written = producer.send(TOPIC, b"new", partition=2).result().offset
    assert first_offset(cluster, 2) == written

    # delete-records: every replica raises its log start and drops whole segments below it.
    leader = description.partitions[0].leader_id
    segments_before = len(list(partition_dir(cluster, leader, 0).glob("*.log")))
    deleted = cli(cluster, "topics", "delete-records", TOPIC, "--partition", "0",
                  "--before", str(delete_before), "--json")  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    assert f'"log_start_offset": {delete_before}' in deleted.stdout
    too_far = cli(cluster, "topics", "delete-records", TOPIC, "--partition", "0",
                  "--before", "100000")  # fmt: skip
    assert too_far.returncode == 1 and "OFFSET_OUT_OF_RANGE" in too_far.stderr
    assert len(too_far.stderr.strip().splitlines()) == 1
    for node_id in (1, 2, 3):
        wait_for(
            lambda n=node_id: log_start_on(cluster, n) == delete_before,
            f"the log start on node {node_id}",
        )
    assert len(list(partition_dir(cluster, leader, 0).glob("*.log"))) < segments_before
    assert earliest(cluster) == delete_before
    assert first_offset(cluster, 0) == delete_before

    # Failover: the new leader serves from the same log start.
    cluster.kill(leader)
    wait_for(lambda: first_offset(cluster, 0) == delete_before, "a new leader from the log start")
    # Restarts: every broker keeps it.
    cluster.restart(leader)
    for node_id in (1, 2, 3):
        cluster.stop(node_id)
    for node_id in (1, 2, 3):
        cluster.start(node_id)
    cluster.wait_ready(TIMEOUT_S)
    assert wait_for(lambda: earliest(cluster) == delete_before, "the log start after restarts")
    assert first_offset(cluster, 0) == delete_before
