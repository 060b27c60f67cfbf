"""Goal: the metadata cache answers what Metadata requests, produce/fetch routing and
`broker-cli cluster status` need, and it discounts leaders and in-sync replicas on fenced
brokers."""

from __future__ import annotations

import pytest

from broker.controller.cache import MetadataCache
from broker.controller.placement import LeaderElection
from broker.controller.records import BrokerState
from tests.unit.controller.harness import MetadataLog
from wire.error_codes import BrokerError, ErrorCode


@pytest.fixture
def cluster() -> MetadataLog:
    log = MetadataLog()
    log.add_brokers(1, 2, 3)
    log.create_topic("orders", 3, 3, number=1)
    return log


def report(log: MetadataLog, partition: int, leader: int, epoch: int, isr: list[int]) -> None:
    log.commit(log.machine.prepare_leader_change("orders", partition, leader, epoch, isr))


def test_a_new_topic_is_offline_until_its_groups_report(cluster: MetadataLog) -> None:
    cache = MetadataCache(cluster.machine)
    assert [view.partition for view in cache.offline_partitions()] == [0, 1, 2]
    assert cache.leader_for("orders", 0) is None
    report(cluster, 0, 1, 1, [1, 2, 3])
    assert cache.leader_for("orders", 0) == 1  # a live view: no refresh step
    assert [view.partition for view in cache.offline_partitions()] == [1, 2]


def test_partitions_for(cluster: MetadataLog) -> None:
    report(cluster, 1, 2, 4, [2, 3])
    views = MetadataCache(cluster.machine).partitions_for("orders")
    assert [view.partition for view in views] == [0, 1, 2]
    view = views[1]
    assert (view.leader, view.leader_epoch, view.in_sync_replicas) == (2, 4, (2, 3))
    assert sorted(view.replicas) == [1, 2, 3]
    assert view.preferred_leader == view.replicas[0]
    assert view.offline_replicas == ()
    assert view.is_under_replicated and not view.is_offline


def test_unknown_topics_and_partitions_are_named_errors(cluster: MetadataLog) -> None:
    cache = MetadataCache(cluster.machine)
    with pytest.raises(BrokerError) as info:
        cache.partitions_for("nope")
    assert info.value.code is ErrorCode.UNKNOWN_TOPIC
    assert "create it first" in info.value.message
    with pytest.raises(BrokerError) as info:
        cache.leader_for("orders", 3)
    assert info.value.code is ErrorCode.UNKNOWN_PARTITION
    assert info.value.message == "topic 'orders' has partitions 0 to 2, not 3"


def test_a_fenced_leader_is_no_leader(cluster: MetadataLog) -> None:
    for partition in range(3):
        report(cluster, partition, 2, 1, [1, 2, 3])
    cluster.set_state(2, BrokerState.FENCED)
    cache = MetadataCache(cluster.machine)
    assert cache.leader_for("orders", 0) is None
    view = cache.partition("orders", 0)
    assert view.recorded_leader == 2
    assert view.in_sync_replicas == (1, 3)
    assert view.offline_replicas == (2,)
    assert [v.partition for v in cache.offline_partitions()] == [0, 1, 2]
    assert cache.under_replicated() == []  # offline and under-replicated are kept apart
    # The group elects a new leader in a later term and reports it.
    report(cluster, 0, 3, 2, [1, 3])
    assert cache.leader_for("orders", 0) == 3
    assert [v.partition for v in cache.under_replicated()] == [0]


def test_a_broker_shutting_down_still_serves(cluster: MetadataLog) -> None:
    report(cluster, 0, 2, 1, [1, 2, 3])
    cluster.set_state(2, BrokerState.SHUTTING_DOWN)
    cache = MetadataCache(cluster.machine)
    assert cache.leader_for("orders", 0) == 2
    assert cache.serving_broker_ids() == [1, 2, 3]
    assert cache.live_broker_ids() == [1, 3]  # but gets no new replicas


def test_brokers_and_addresses(cluster: MetadataLog) -> None:
    cache = MetadataCache(cluster.machine)
    assert [info.node_id for info in cache.brokers()] == [1, 2, 3]
    assert cache.address_of(2) == ("127.0.0.1", 9002)
    assert cache.address_of(9) is None
    assert cache.topic_names() == ["orders"]
    assert cache.metadata_index == cluster.machine.applied_index


def test_preferred_leader_elections(cluster: MetadataLog) -> None:
    cache = MetadataCache(cluster.machine)
    views = cache.partitions_for("orders")
    for view in views:
        other = next(node for node in view.replicas if node != view.preferred_leader)
        report(cluster, view.partition, other, 1, [1, 2, 3])
    elections = cache.preferred_leader_elections()
    assert [(e.partition, e.preferred_leader) for e in elections] == [
        (view.partition, view.preferred_leader) for view in views
    ]
    assert all(isinstance(e, LeaderElection) for e in elections)
    assert len(cache.preferred_leader_elections(election_count_max=1)) == 1


def test_cluster_statistics(cluster: MetadataLog) -> None:
    report(cluster, 0, 1, 1, [1, 2, 3])
    report(cluster, 1, 1, 1, [1, 3])
    cluster.add_brokers(4, active=False)
    stats = MetadataCache(cluster.machine).statistics(controller_leader=3)
    assert stats.controller_leader == 3
    assert stats.metadata_index == cluster.machine.applied_index
    assert [(b.node_id, b.state) for b in stats.brokers] == [
        (1, BrokerState.ACTIVE),
        (2, BrokerState.ACTIVE),
        (3, BrokerState.ACTIVE),
        (4, BrokerState.FENCED),
    ]
    assert [b.replica_count for b in stats.brokers] == [3, 3, 3, 0]
    assert [b.leader_count for b in stats.brokers] == [2, 0, 0, 0]
    assert [b.preferred_leader_count for b in stats.brokers] == [1, 1, 1, 0]
    assert (stats.topic_count, stats.partition_count) == (1, 3)
    assert stats.offline_partitions == (("orders", 2),)
    assert stats.under_replicated_partitions == (("orders", 1),)
    preferred = {
        v.partition: v.preferred_leader
        for v in MetadataCache(cluster.machine).partitions_for("orders")
    }
    assert stats.preferred_leader_imbalance_count == sum(
        1 for partition in (0, 1) if preferred[partition] != 1
    )


def test_a_cache_from_a_snapshot(cluster: MetadataLog) -> None:
    report(cluster, 2, 3, 7, [3])
    cache = MetadataCache.from_snapshot(cluster.machine.to_bytes())
    assert cache.leader_for("orders", 2) == 3
    assert cache.partition("orders", 2).leader_epoch == 7
