"""Partition reassignment on four in-process `ClusterNode`s: replicas move under acks=all load,
nothing acknowledged is lost, the new replica set's logs are identical, the removed replica's
storage is deleted only after the completion record, and a cancellation moves it back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from broker.cluster.node import ClusterNode
from broker.cluster.replicas import Replica
from broker.controller.state import PartitionInfo
from tests.integration.cluster_node.harness import CONFIG, Cluster, payloads_by_offset

NODE_IDS = (1, 2, 3, 4)
TOPIC = "moving"
READ_BYTES_MAX = 64 * 1024 * 1024


def _partition(cluster: Cluster) -> PartitionInfo:
    leader = cluster.controller_leader()
    assert leader is not None
    topic = leader.controller.machine.topic(TOPIC)
    assert topic is not None
    return topic.partitions[0]


def _log_bytes(replica: Replica) -> bytes:
    # A read stops at a segment's end: read on until the log's end.
    chunks, offset = [], replica.log.log_start_offset
    while offset < replica.log.log_end_offset:
        result = replica.log.read(offset, READ_BYTES_MAX)
        chunks.append(bytes(result.data))
        offset = result.next_offset
    return b"".join(chunks)


async def _start(nursery: trio.Nursery, tmp_path: Path) -> Cluster:
    config = dataclasses.replace(
        CONFIG, reassignment=dataclasses.replace(CONFIG.reassignment, check_interval_ms=20)
    )
    cluster = await Cluster.start(nursery, tmp_path, NODE_IDS, config)
    await cluster.wait_all_active()
    return cluster


async def _create_settled(cluster: Cluster) -> tuple[ClusterNode, tuple[int, ...]]:
    """Create the one-partition RF 3 topic and settle its leadership on the preferred leader
    (so the leader is the replica a test moves away); the controller's node and the replicas."""
    controller = cluster.controller_leader()
    assert controller is not None
    await controller.controller.create_topic(TOPIC, 1, 3)
    original = _partition(cluster).replicas
    await cluster.wait_until(
        lambda: all(node.cache.topic(TOPIC) for node in cluster.running()), timeout_s=10
    )
    await cluster.wait_preferred_leaders(TOPIC)
    return controller, original


async def test_move_the_leader_away_under_acks_all_load(tmp_path: Path) -> None:
    """Goal: 1 partition on three of four brokers moves so that its leader's broker leaves and
    the fourth joins, while a producer writes with acks=all."""
    async with trio.open_nursery() as nursery:
        cluster = await _start(nursery, tmp_path)
        controller, original = await _create_settled(cluster)
        leader = await cluster.wait_partition_leader(TOPIC, 0)
        outsider = next(node for node in NODE_IDS if node not in original)
        leaving = leader.driver.node_id
        target = (*(node for node in original if node != leaving), outsider)
        acked = await cluster.produce_all(TOPIC, 0, [b"before-%d" % i for i in range(200)])

        async def produce_during() -> None:
            acked.update(
                await cluster.produce_all(
                    TOPIC, 0, [b"during-%d" % i for i in range(300)], timeout_s=30
                )
            )

        nursery.start_soon(produce_during)
        outcomes = await controller.controller.alter_partition_reassignments([(TOPIC, 0, target)])
        assert outcomes == [None]
        assert _partition(cluster).adding_replicas == (outsider,)

        def completed() -> bool:
            return all(
                (info := node.controller.machine.topic(TOPIC).partitions[0]).replicas == target
                and not info.target_replicas
                for node in cluster.running()
            )

        await cluster.wait_until(completed, timeout_s=30)
        # The broker that left deletes its replica once it applied the completion.
        await cluster.wait_until(
            lambda: not any(r.driver.node_id == leaving for r in cluster.replicas_of(TOPIC, 0)),
            timeout_s=10,
        )
        await cluster.wait_until(lambda: len(acked) == 500, timeout_s=30)
        await cluster.wait_converged(TOPIC, 0, count=3, timeout_s=15)
        replicas = cluster.replicas_of(TOPIC, 0)
        assert sorted(r.driver.node_id for r in replicas) == sorted(target)
        logs = {r.driver.node_id: _log_bytes(r) for r in replicas}
        assert len(set(logs.values())) == 1, "the new replicas' logs differ"
        values = payloads_by_offset(next(iter(logs.values())))
        for payload, offset in acked.items():
            assert values.get(offset) == payload, f"acknowledged {payload!r} at {offset} lost"
        configuration = cluster.partition_leader(TOPIC, 0).driver.core.configuration  # type: ignore[union-attr]
        assert configuration.voters == tuple(sorted(target))
        assert configuration.learners == ()
        nursery.cancel_scope.cancel()


async def test_cancel_moves_the_partition_back(tmp_path: Path) -> None:
    """Goal: a cancelled reassignment ends on the original replicas, the added one removed."""
    async with trio.open_nursery() as nursery:
        cluster = await _start(nursery, tmp_path)
        controller = cluster.controller_leader()
        assert controller is not None
        # A throttle of 1 byte per second keeps the new replica a learner until cancelled.
        await controller.controller.create_topic(TOPIC, 1, 3)
        original = _partition(cluster).replicas
        await cluster.wait_partition_leader(TOPIC, 0)
        await cluster.produce_all(TOPIC, 0, [b"x" * 1000 for _ in range(50)])
        outsider = next(node for node in NODE_IDS if node not in original)
        target = (*original[:2], outsider)
        await controller.controller.alter_partition_reassignments(
            [(TOPIC, 0, target)], throttle_bytes_per_s=1
        )
        await cluster.wait_until(
            lambda: any(r.driver.node_id == outsider for r in cluster.replicas_of(TOPIC, 0)),
            timeout_s=10,
        )
        assert await controller.controller.alter_partition_reassignments([(TOPIC, 0, None)]) == [
            None
        ]

        def back() -> bool:
            info = _partition(cluster)
            return info.replicas == original and not info.target_replicas

        await cluster.wait_until(back, timeout_s=30)
        await cluster.wait_until(
            lambda: (
                sorted(r.driver.node_id for r in cluster.replicas_of(TOPIC, 0)) == sorted(original)
            ),
            timeout_s=10,
        )
        nursery.cancel_scope.cancel()


async def test_a_leader_crash_mid_move_resumes_from_the_metadata(tmp_path: Path) -> None:
    """Goal: crash safety. The partition leader (the broker leaving) crashes while the new
    replica catches up; the new leader carries the move on from the metadata and its group's
    log, and the crashed broker, restarted, deletes its copy once it applies the completion."""
    async with trio.open_nursery() as nursery:
        cluster = await _start(nursery, tmp_path)
        controller, original = await _create_settled(cluster)
        acked = await cluster.produce_all(TOPIC, 0, [b"%04d" % i + b"x" * 1000 for i in range(60)])
        leaving = original[0]
        outsider = next(node for node in NODE_IDS if node not in original)
        target = (*original[1:], outsider)
        # 20 kB/s: the new replica needs about three seconds to copy the 60 kB.
        await controller.controller.alter_partition_reassignments(
            [(TOPIC, 0, target)], throttle_bytes_per_s=20_000
        )

        def learner_added() -> bool:
            leader = cluster.partition_leader(TOPIC, 0)
            return leader is not None and outsider in leader.driver.core.configuration.learners

        await cluster.wait_until(learner_added, timeout_s=10)
        await cluster.nodes[leaving].crash()

        def completed() -> bool:
            return all(
                (info := node.controller.machine.topic(TOPIC).partitions[0]).replicas == target
                and not info.target_replicas
                for node in cluster.running()
            )

        await cluster.wait_until(completed, timeout_s=30)
        await cluster.restart(leaving)
        await cluster.wait_until(
            lambda: (
                sorted(r.driver.node_id for r in cluster.replicas_of(TOPIC, 0)) == sorted(target)
            ),
            timeout_s=15,
        )
        await cluster.wait_converged(TOPIC, 0, count=3, timeout_s=15)
        values = payloads_by_offset(_log_bytes(cluster.replicas_of(TOPIC, 0)[0]))
        for payload, offset in acked.items():
            assert values.get(offset) == payload
        nursery.cancel_scope.cancel()
