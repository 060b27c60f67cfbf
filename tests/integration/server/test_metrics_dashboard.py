"""Goal: every metric the Grafana dashboard (deploy/grafana/dashboard.json) queries is exported by
real brokers, a single node and a three-broker cluster (the union of their /metrics pages), and the
cluster's Raft and controller metrics say what the cluster really is."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest

from client import AdminClient, Consumer, Producer, ShareConsumer, TopicPartition
from client.embedded import EmbeddedBroker
from client.embedded_cluster import EmbeddedCluster
from tests.dashboard_queries import dashboard_queries, exported_sample_names, load_dashboard
from tests.integration.cluster.common import FAST_GROUP_BROKER_ARGS, wait_for
from wire.error_codes import BrokerError, ErrorCode

DEADLINE_S = 30.0
TOPIC = "dash"
RECORDS = 20


def scrape(broker: EmbeddedBroker) -> str:
    with urllib.request.urlopen(f"http://{broker.metrics_address}/metrics", timeout=10) as page:
        return page.read().decode()


def value(page: str, line_start: str) -> float:
    """The value of the first sample line starting with `line_start` (name and labels)."""
    for line in page.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r} on the page")


def exercise(bootstrap: str, replication_factor: int) -> None:
    """Traffic that makes every per-label series of the dashboard appear: produce, an error, a
    fetch, a consumer group's committed offset (lag) and a share group that has fetched."""
    with AdminClient(bootstrap) as admin:
        admin.create_topic(TOPIC, 2, replication_factor)
        with pytest.raises(BrokerError) as refused:
            admin.create_topic(TOPIC, 2, replication_factor)  # TOPIC_ALREADY_EXISTS: an error
        assert refused.value.code is ErrorCode.TOPIC_ALREADY_EXISTS
        admin.alter_group_config("workers", {"share.auto.offset.reset": "earliest"})
    with Producer(bootstrap, linger_ms=1) as producer:
        for index in range(RECORDS):
            producer.send(TOPIC, b"value-%d" % index, partition=index % 2)
        producer.flush()
    with AdminClient(bootstrap) as admin:
        admin.alter_consumer_group_offsets("lagging", {TopicPartition(TOPIC, 0): 1})
    with Consumer(bootstrap, auto_offset_reset="earliest") as reader:
        reader.assign([TopicPartition(TOPIC, 0)])
        deadline = time.monotonic() + DEADLINE_S
        while not reader.poll(timeout_ms=500):
            assert time.monotonic() < deadline, "the consumer got no records"
    with ShareConsumer(bootstrap, group_id="workers") as consumer:
        consumer.subscribe([TOPIC])
        deadline = time.monotonic() + DEADLINE_S
        while not consumer.poll(timeout_ms=500):
            assert time.monotonic() < deadline, "the share group got no records"


@pytest.fixture
def single() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3, extra_args=FAST_GROUP_BROKER_ARGS) as running:
        yield running


def test_every_dashboard_query_names_an_exported_metric(
    single: EmbeddedBroker, cluster: EmbeddedCluster
) -> None:
    queries = dashboard_queries(load_dashboard())
    assert len(queries) >= 30  # every panel's targets and the instance variable were found
    wanted = set().union(*(names for _, names in queries))
    assert all(name.startswith("broker_") for name in wanted), sorted(wanted)
    exercise(single.bootstrap, 1)
    exercise(cluster.bootstrap, 3)
    brokers = [single, *(cluster.node(node) for node in cluster.node_ids)]
    # Group and share-group metrics come from snapshots the services rebuild each second.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        exported = set().union(*(exported_sample_names(scrape(b)) for b in brokers))
        missing = [(where, names - exported) for where, names in queries if names - exported]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, "queried but not exported:\n" + "\n".join(
        f"{sorted(names)} in {where}" for where, names in missing
    )


def test_cluster_metrics_describe_the_cluster(cluster: EmbeddedCluster) -> None:
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, 3, 3)
    with Producer(cluster.bootstrap, linger_ms=1) as producer:
        for index in range(RECORDS):
            producer.send(TOPIC, b"x", partition=index % 3)
        producer.flush()

    def settled() -> list[str] | None:
        # Every partition has its three replicas started and one leader (elections settle).
        pages = [scrape(cluster.node(node)) for node in cluster.node_ids]
        partitions = value(pages[0], "broker_cluster_partitions ")
        by_role = {
            role: sum(
                value(page, f'broker_raft_groups{{kind="partition",role="{role}"}}')
                for page in pages
            )
            for role in ("leader", "follower", "candidate", "pre-candidate")
        }
        settled = by_role["leader"] == partitions and sum(by_role.values()) == 3 * partitions
        return pages if settled else None

    pages = wait_for(settled, "one leader and three replicas per partition", DEADLINE_S)
    # Exactly one broker leads the controller; every broker is a voter of a 3-broker cluster.
    assert sum(value(page, "broker_controller_active ") for page in pages) == 1
    assert all(value(page, "broker_controller_voter ") == 1 for page in pages)
    assert value(pages[0], 'broker_cluster_brokers{state="active"}') == 3
    # The produced entries were proposed, fsynced and committed through the partition groups.
    assert sum(
        value(p, 'broker_raft_append_latency_seconds_count{kind="partition"}') for p in pages
    )
    assert all(value(page, "broker_log_fsync_duration_seconds_count ") > 0 for page in pages)
    assert max(value(page, 'broker_raft_term_max{kind="partition"}') for page in pages) >= 1
