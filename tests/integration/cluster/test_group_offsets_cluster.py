"""Goal (issue 14): a consumer group's committed offsets administered on three real brokers,
whichever broker the admin client or `broker-cli` bootstraps from: the request reaches the
group's coordinator (the leader of its `__consumer_offsets` partition), is refused while the
group has members, and finds the new coordinator when the old one's broker dies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from client import AdminClient, Consumer, OffsetAndMetadata, Producer, TopicPartition
from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster import common
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

TOPIC = "ledger"
GROUP = "auditors"
PARTITIONS = 3
WAIT_S = 60.0
BROKER_CLI = str(Path(sys.executable).with_name("broker-cli"))


def address(cluster: EmbeddedCluster, node_id: int) -> str:
    """Node `node_id` alone as the bootstrap: the request starts there, wherever the
    coordinator is."""
    return cluster.node(node_id).bootstrap


def reset(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BROKER_CLI, "--bootstrap", bootstrap, "groups", "reset-offsets", GROUP, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def listed(bootstrap: str) -> dict[TopicPartition, int]:
    with AdminClient(bootstrap) as admin:
        return {tp: o.offset for tp, o in admin.list_consumer_group_offsets(GROUP).items()}


def test_group_offsets_admin_on_three_brokers(group_cluster: EmbeddedCluster) -> None:
    cluster = group_cluster
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, PARTITIONS, replication_factor=3)
        common.wait_for(
            lambda: all(
                p.leader_id >= 0 and len(p.isr) == 3 for p in admin.describe_topic(TOPIC).partitions
            ),
            "leaders and full in-sync replicas",
            WAIT_S,
        )
    with Producer(cluster.bootstrap) as producer:
        for n in range(10 * PARTITIONS):
            producer.send(TOPIC, b"%d" % n, partition=n % PARTITIONS)
        producer.flush()

    # The SDK from one broker; every broker's view agrees.
    first, second, third = cluster.node_ids
    with AdminClient(address(cluster, first)) as admin:
        admin.alter_consumer_group_offsets(
            GROUP, {tps[0]: OffsetAndMetadata(7, "audited to 7"), tps[1]: 5, tps[2]: 9}
        )
    for node_id in cluster.node_ids:
        with AdminClient(address(cluster, node_id)) as admin:
            assert admin.list_consumer_group_offsets(GROUP, [tps[0]]) == {
                tps[0]: OffsetAndMetadata(7, "audited to 7")
            }
    assert listed(address(cluster, third)) == {tps[0]: 7, tps[1]: 5, tps[2]: 9}

    # While a consumer is a member, neither the SDK nor the CLI may move the offsets.
    with Consumer(
        address(cluster, second), group_id=GROUP, session_timeout_ms=2_000,
        heartbeat_interval_ms=200, enable_auto_commit=False,
    ) as consumer:  # fmt: skip
        consumer.subscribe([TOPIC])
        common.wait_for(
            lambda: consumer.poll(timeout_ms=100) or len(consumer.assignment()) == PARTITIONS,
            "the consumer to own every partition",
            WAIT_S,
        )
        with AdminClient(address(cluster, third)) as admin, pytest.raises(BrokerError) as refused:
            admin.alter_consumer_group_offsets(GROUP, {tps[0]: 0})
        assert refused.value.code is ErrorCode.GROUP_NOT_EMPTY
        active = reset(address(cluster, first), "--topic", TOPIC, "--to-earliest", "--execute")
        assert active.returncode == 1 and "is active" in active.stderr, active.stderr
    assert listed(cluster.bootstrap) == {tps[0]: 7, tps[1]: 5, tps[2]: 9}
    # Closing sent LeaveGroup; should that one request be lost (a loaded CI machine), the member
    # goes at its 2 s session timeout instead: wait for the group to be empty either way.
    with AdminClient(cluster.bootstrap) as admin:
        common.wait_for(
            lambda: not admin.describe_group(GROUP).members, "the consumer to leave", WAIT_S
        )

    # The consumer left: the CLI resets from a broker that need not be the coordinator.
    done = reset(address(cluster, second), "--topic", TOPIC, "--to-earliest", "--execute")
    assert done.returncode == 0, done.stderr
    assert listed(cluster.bootstrap) == dict.fromkeys(tps, 0)

    # The coordinator's broker dies: the next reset finds the new coordinator.
    coordinator = common.find_coordinator(cluster, GROUP, codec.COORDINATOR_KEY_GROUP)
    assert coordinator in cluster.node_ids
    cluster.kill(coordinator)
    survivors = ",".join(address(cluster, n) for n in cluster.node_ids if n != coordinator)
    shifted = reset(survivors, "--all-topics", "--shift-by", "4", "--execute")
    assert shifted.returncode == 0, shifted.stderr
    assert listed(survivors) == dict.fromkeys(tps, 4)
