"""When `broker-cli` considers a cluster ready (cli/cluster_wait.py), from one status answer."""

from __future__ import annotations

import dataclasses

from cli.cluster_wait import electing_reason, not_ready_reason
from wire import codec


def broker(node_id: int, state: str = "active") -> codec.ClusterBroker:
    return codec.ClusterBroker(
        node_id=node_id, host="127.0.0.1", port=9090 + node_id, state=state, broker_epoch=1,
        replica_count=0, leader_count=0, preferred_leader_count=0,
    )  # fmt: skip


def status(
    controller_id: int,
    brokers: tuple[codec.ClusterBroker, ...],
    voters: tuple[int, ...] = (),
    offline: int = 0,
) -> codec.ClusterStatusResponse:
    return codec.ClusterStatusResponse(
        controller_id=controller_id, metadata_index=0, brokers=brokers, topic_count=1,
        partition_count=8, controller_voters=voters,
        offline_partitions=tuple(
            codec.TopicPartitionRef(topic="__consumer_offsets", partition=p) for p in range(offline)
        ),
    )  # fmt: skip


def test_a_single_node_broker_is_ready() -> None:
    assert not_ready_reason(status(0, (broker(0),))) is None


def test_no_controller_leader_is_not_ready() -> None:
    assert not_ready_reason(status(-1, (), (1, 2, 3))) == "the controller has no leader yet"


def test_voters_that_have_not_registered_are_named() -> None:
    reason = not_ready_reason(status(1, (broker(1),), (1, 2, 3)))
    assert reason == "broker(s) 2,3 have not registered with the controller yet"


def test_partitions_electing_leaders_in_a_healthy_cluster_are_named() -> None:
    everyone = (broker(1), broker(2), broker(3))
    assert electing_reason(status(1, everyone, (1, 2, 3))) is None
    reason = electing_reason(status(1, everyone, (1, 2, 3), offline=8))
    assert reason == "8 partition(s) have no leader yet (e.g. __consumer_offsets-0)"


def test_a_registered_broker_that_died_does_not_hold_the_cluster_back() -> None:
    # A killed broker stays registered (fenced): the cluster is degraded, not forming, and the
    # partitions it took down may stay leaderless.
    degraded = status(1, (broker(1), broker(2), broker(3, "fenced")), (1, 2, 3), offline=8)
    assert not_ready_reason(degraded) is None and electing_reason(degraded) is None


def test_a_cluster_whose_internal_topics_are_not_all_created_is_still_forming() -> None:
    # Between the brokers' registration and their creation of the internal topics, a probe
    # once said ready, and the command then met those topics' partitions still electing.
    forming = dataclasses.replace(
        status(1, (broker(1), broker(2)), (1, 2)),
        internal_topics_missing=("__share_group_state", "__transaction_state"),
    )
    reason = not_ready_reason(forming)
    assert reason == (
        "the internal topics are not all created yet (__share_group_state, __transaction_state)"
    )
    assert not_ready_reason(dataclasses.replace(forming, internal_topics_missing=())) is None
