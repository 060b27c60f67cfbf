"""Goal: a follower's NOT_LEADER names the leader (id and epoch) in Produce and Fetch answers, so
clients retry at the new leader without a metadata round (issue 15), on three real brokers."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
import trio

from client import aio
from client.aio.cluster import Cluster
from client.embedded_cluster import EmbeddedCluster
from wire import codec
from wire.batch import build_batch
from wire.error_codes import ErrorCode

WAIT_S = 60.0
POLL_S = 0.05
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3) as running:
        yield running


async def led_topic(admin: aio.AdminClient) -> tuple[str, int]:
    """A fresh RF 3 topic of one partition, once it has a leader and three in-sync replicas."""
    name = f"hint-{os.getpid()}-{next(_names)}"
    await admin.create_topic(name, 1, replication_factor=3)
    with trio.fail_after(WAIT_S):
        while True:
            partition = (await admin.describe_topic(name)).partitions[0]
            if partition.leader_id > 0 and len(partition.isr) == 3:
                return name, partition.leader_id
            await trio.sleep(POLL_S)


async def test_a_follower_names_the_leader_in_produce_and_fetch_errors(
    cluster: EmbeddedCluster,
) -> None:
    async with aio.AdminClient(cluster.bootstrap) as admin:
        name, leader = await led_topic(admin)
        follower = next(node for node in cluster.node_ids if node != leader)
        async with trio.open_nursery() as nursery:
            client = Cluster(nursery, cluster.bootstrap)
            await client.refresh_metadata([name])
            produce = await client.call(
                codec.ProduceRequest(
                    partitions=(
                        codec.ProducePartition(
                            topic=name,
                            partition=0,
                            records=build_batch([(0, None, b"v", None)]),
                        ),
                    ),
                    acks=codec.ACKS_ALL,
                    timeout_ms=5_000,
                ),
                follower,
            )
            fetch = await client.call(
                codec.FetchRequest(
                    partitions=(codec.FetchPartition(topic=name, partition=0, fetch_offset=0),),
                    max_wait_ms=0,
                ),
                follower,
            )
            await client.aclose()
            nursery.cancel_scope.cancel()
    for result in (produce.partitions[0], fetch.partitions[0]):
        assert result.error is ErrorCode.NOT_LEADER, result
        assert result.leader_id == leader, result
        assert result.leader_epoch >= 1, result


async def test_a_producer_routed_to_a_follower_delivers_through_the_hint(
    cluster: EmbeddedCluster,
) -> None:
    """The producer's cached leader is wrong (a follower): the record still lands, sent on to
    the leader the NOT_LEADER answer names."""
    async with aio.AdminClient(cluster.bootstrap) as admin:
        name, leader = await led_topic(admin)
    follower = next(node for node in cluster.node_ids if node != leader)
    async with aio.Producer(cluster.bootstrap) as producer:
        await producer.send_and_wait(name, b"first", partition=0)
        producer._cluster.leaders[name][0] = follower  # stale, as after a leader change
        metadata = await producer.send_and_wait(name, b"second", partition=0)
        assert metadata.offset >= 1
        assert producer._cluster.leader(name, 0) == leader
