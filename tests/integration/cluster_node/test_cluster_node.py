"""Three ClusterNodes over real TCP in one trio process: controller election and broker
registration, topic creation and placement, acks=all produce on partition Raft groups, failover
and catch-up after a crash, controller state restored from LMDB + log, and topic deletion.

Every wait is on change notifications bounded by `trio.fail_after`; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest
import trio

from broker.cluster.controller_service import METADATA_GROUP, NotControllerError
from broker.cluster.node import ClusterNode
from broker.cluster.replicas import Acks
from broker.kvstore import KeySpace
from broker.raft.errors import NotLeaderError
from tests.integration.cluster_node.harness import (
    CONFIG,
    ELECTION_TIMEOUT_MAX_S,
    NODE_IDS,
    Cluster,
    payloads_by_offset,
    record_batch,
)
from tests.log_reading import log_bytes
from tests.processes import fsync_helpers
from wire import batch as batch_codec
from wire.error_codes import BrokerError, ErrorCode

TOPIC = "orders"
PARTITIONS = 3


def _assert_identical(cluster: Cluster, topic: str, partition: int) -> bytes:
    replicas = cluster.replicas_of(topic, partition)
    assert len(replicas) == 3
    reference = log_bytes(replicas[0].log)
    assert reference
    for replica in replicas[1:]:
        assert log_bytes(replica.log) == reference, f"{replica.group} on a node differs"
    return reference


def _assert_acked_present(data: bytes, acked: dict[bytes, int]) -> None:
    stored = payloads_by_offset(data)
    for payload, offset in acked.items():
        assert stored.get(offset) == payload, f"acknowledged {payload!r} lost at offset {offset}"


async def _create_topic(cluster: Cluster) -> None:
    await cluster.wait_all_active()
    leader = cluster.controller_leader()
    assert leader is not None
    topic = await leader.controller.create_topic(TOPIC, PARTITIONS, 3)
    assert [p.partition for p in topic.partitions] == list(range(PARTITIONS))

    def everywhere() -> bool:
        return all(node.cache.topic(TOPIC) == topic for node in cluster.running())

    await cluster.wait_until(everywhere, timeout_s=5)


async def test_controller_elected_and_brokers_register_active(tmp_path: Path) -> None:
    # Goal: the metadata group elects one controller, all three brokers register and turn ACTIVE
    # in every broker's cache, commands on a follower answer NOT_CONTROLLER with the leader hint,
    # and every broker's metadata state is the same, byte for byte.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        await cluster.wait_all_active()
        leader = cluster.controller_leader()
        assert leader is not None
        for node in cluster.running():
            assert [b.node_id for b in node.cache.brokers()] == list(NODE_IDS)
            assert node.cache.live_broker_ids() == list(NODE_IDS)
        follower = next(node for node in cluster.running() if node is not leader)
        with pytest.raises(NotControllerError) as raised:
            await follower.controller.create_topic("nope", 1, 1)
        assert raised.value.code is ErrorCode.NOT_CONTROLLER
        assert raised.value.leader_hint == leader.node_id
        with pytest.raises(BrokerError) as reserved:
            await leader.controller.create_topic(METADATA_GROUP.rsplit("-", 1)[0], 1, 1)
        assert reserved.value.code is ErrorCode.INVALID_TOPIC

        def same_state() -> bool:
            states = {node.controller.machine.to_bytes() for node in cluster.running()}
            return len(states) == 1

        await cluster.wait_until(same_state, timeout_s=5)
        nursery.cancel_scope.cancel()


async def test_topic_placement_produce_and_delete(tmp_path: Path) -> None:
    # Goal: a topic created through the controller appears in every cache with RF 3 on distinct
    # brokers and one preferred leader per broker; each partition's group elects a leader; 100
    # acks=all batches per partition land byte-identical on all replicas under the high
    # watermark; followers answer NOT_LEADER with the leader; deletion removes every replica.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        await _create_topic(cluster)
        views = cluster.running()[0].cache.partitions_for(TOPIC)
        assert all(len(set(view.replicas)) == 3 for view in views)
        assert Counter(view.preferred_leader for view in views) == Counter(NODE_IDS)

        for partition in range(PARTITIONS):
            await cluster.wait_partition_leader(TOPIC, partition)
        # Leadership moves to the preferred leaders, published in every cache: one per broker.
        await cluster.wait_preferred_leaders(TOPIC)
        leaders = {p: cluster.partition_leader(TOPIC, p) for p in range(PARTITIONS)}
        assert Counter(r.driver.node_id for r in leaders.values() if r) == Counter(NODE_IDS)
        # A partition has no state machine: its leader acknowledges a commit before its own
        # fsync (issue 15); the metadata group applies only what it holds durably.
        assert all(r.driver.applies_before_own_fsync for r in leaders.values() if r)
        assert not any(n.controller.driver.applies_before_own_fsync for n in cluster.running())
        acked: dict[int, dict[bytes, int]] = {}
        async with trio.open_nursery() as producers:

            async def produce(partition: int) -> None:
                payloads = [b"p%d-%d" % (partition, n) for n in range(100)]
                acked[partition] = await cluster.produce_all(TOPIC, partition, payloads)

            for partition in range(PARTITIONS):
                producers.start_soon(produce, partition)
        # The replicas fsync in the workers their brokers' ReplicaManagers share, not in
        # to_thread's: a helper process per broker (plain fsyncs), threads (a new log's first).
        assert any(thread.name.startswith("raft-fsync") for thread in threading.enumerate())
        assert len(fsync_helpers(os.getpid())) >= len(cluster.nodes)
        for partition in range(PARTITIONS):
            await cluster.wait_converged(TOPIC, partition)
            data = _assert_identical(cluster, TOPIC, partition)
            _assert_acked_present(data, acked[partition])
            assert len(set(acked[partition].values())) == 100
            leader = cluster.partition_leader(TOPIC, partition)
            assert leader is not None
            assert leader.high_watermark > max(acked[partition].values())
            # A read never passes the high watermark, and the leader serves all that is acked.
            read = leader.read(0, 1 << 20)
            assert read.data and read.next_offset <= leader.high_watermark
            for _, header in batch_codec.iter_batches(bytes(read.data)):
                assert header.base_offset + header.last_offset_delta < leader.high_watermark
            for replica in cluster.replicas_of(TOPIC, partition):
                if replica is leader:
                    continue
                with pytest.raises(NotLeaderError) as raised:
                    await replica.produce(record_batch(b"x"), acks=Acks.ALL)
                assert raised.value.code is ErrorCode.NOT_LEADER
                assert raised.value.leader_hint == leader.driver.node_id
                with pytest.raises(NotLeaderError):
                    replica.read(0, 1024)
        assert set(leaders) == set(range(PARTITIONS))
        # The produce gate: a corrupt batch or a control batch is refused, nothing is appended.
        leader = leaders[0]
        assert leader is not None
        end = leader.log.log_end_offset
        corrupt = bytearray(record_batch(b"x"))
        corrupt[-1] ^= 0xFF
        with pytest.raises(batch_codec.CrcMismatchError):
            await leader.produce(bytes(corrupt))
        control = batch_codec.build_control_batch(
            batch_codec.ControlType.LEADER_NOOP, b"", timestamp_ms=1
        )
        with pytest.raises(BrokerError):
            await leader.produce(control)
        assert leader.log.log_end_offset == end

        controller = cluster.controller_leader()
        assert controller is not None
        await controller.controller.delete_topic(TOPIC)

        def deleted() -> bool:
            return all(
                node.cache.topic(TOPIC) is None
                and not node.replicas.replicas()
                and not any((node.data_dir / "logs").glob(f"{TOPIC}-*"))
                for node in cluster.running()
            )

        await cluster.wait_until(deleted, timeout_s=5)
        for node in cluster.running():
            store = node.controller.driver.storage._store
            assert not store.items(KeySpace.RAFT, f"{TOPIC}-".encode())
        nursery.cancel_scope.cancel()


async def test_concurrent_leader_reports_share_metadata_entries(tmp_path: Path) -> None:
    # Goal: leader reports are group-committed. Forty reports made at once (as forty new
    # partitions electing at once make them) cost the metadata log a couple of entries, not
    # forty commits in a row, and each is applied.
    partitions = 40
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        await cluster.wait_all_active()
        leader = cluster.controller_leader()
        assert leader is not None
        controller = leader.controller
        topic = await controller.create_topic("many", partitions, 3)
        index_before = controller.driver.core.log.last_index()
        epoch = 1_000  # above any term the topic's own groups reach meanwhile
        async with trio.open_nursery() as reporters:
            for info in topic.partitions:
                reporters.start_soon(
                    controller.report_leader, "many", info.partition, info.replicas[0], epoch,
                    info.replicas,
                )  # fmt: skip
        log = controller.driver.storage.log
        entries = 0
        for _, header in batch_codec.iter_batches(log_bytes(log)):
            entries += header.base_offset > index_before
        assert entries < partitions // 4, f"{partitions} reports took {entries} metadata entries"
        published = controller.machine.topic("many")
        assert published is not None
        assert all(
            (p.leader, p.leader_epoch) == (p.replicas[0], epoch) for p in published.partitions
        )
        nursery.cancel_scope.cancel()


async def test_partition_leader_crash_failover_and_restart_catch_up(tmp_path: Path) -> None:
    # Goal: crashing the broker that leads a partition elects a new leader within a few election
    # timeouts, produce carries on, nothing acknowledged is lost; the crashed broker restarts from
    # its data dir, restores the controller state from LMDB plus the log, re-registers (a new
    # broker epoch, ACTIVE again) and its replicas catch up to identical logs.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        await _create_topic(cluster)
        acked: dict[int, dict[bytes, int]] = {p: {} for p in range(PARTITIONS)}
        for partition in range(PARTITIONS):
            await cluster.wait_partition_leader(TOPIC, partition)
            payloads = [b"before-%d-%d" % (partition, n) for n in range(30)]
            acked[partition].update(await cluster.produce_all(TOPIC, partition, payloads))

        old = cluster.partition_leader(TOPIC, 0)
        assert old is not None
        victim = old.driver.node_id
        old_term, old_epoch = old.driver.term, cluster.nodes[victim].broker_epoch
        await cluster.nodes[victim].crash()
        started = trio.current_time()
        new = await cluster.wait_partition_leader(
            TOPIC, 0, count=2, timeout_s=4 * ELECTION_TIMEOUT_MAX_S + 1
        )
        assert new.driver.node_id != victim and new.driver.term > old_term
        assert trio.current_time() - started < 4 * ELECTION_TIMEOUT_MAX_S

        def new_leader_published() -> bool:
            return all(
                node.cache.leader_for(TOPIC, 0) == new.driver.node_id for node in cluster.running()
            )

        await cluster.wait_until(new_leader_published, timeout_s=5)
        for partition in range(PARTITIONS):
            payloads = [b"after-%d-%d" % (partition, n) for n in range(30)]
            acked[partition].update(await cluster.produce_all(TOPIC, partition, payloads))
            await cluster.wait_converged(TOPIC, partition, count=2)

        await cluster.restart(victim)
        restarted = cluster.nodes[victim]
        assert restarted.controller.restored_index > 0  # state came from the LMDB snapshot
        await cluster.wait_all_active()
        assert restarted.broker_epoch is not None and old_epoch is not None
        assert restarted.broker_epoch > old_epoch
        for partition in range(PARTITIONS):
            await cluster.wait_converged(TOPIC, partition)
            data = _assert_identical(cluster, TOPIC, partition)
            _assert_acked_present(data, acked[partition])
        # The restarted broker gets its preferred leaderships back.
        await cluster.wait_preferred_leaders(TOPIC)

        def same_state() -> bool:
            states = {node.controller.machine.to_bytes() for node in cluster.running()}
            return len(states) == 1

        await cluster.wait_until(same_state, timeout_s=5)
        nursery.cancel_scope.cancel()


async def test_clean_restart_of_the_whole_cluster_keeps_topics_and_data(tmp_path: Path) -> None:
    # Goal: after every broker stops cleanly (snapshot in LMDB, logs marked clean) and starts
    # again, the topic, its replicas and every acknowledged batch are back, and produce works.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        await _create_topic(cluster)
        await cluster.wait_partition_leader(TOPIC, 1)
        acked = await cluster.produce_all(TOPIC, 1, [b"first-%d" % n for n in range(20)])
        await cluster.wait_converged(TOPIC, 1)
        for node in cluster.nodes.values():
            await node.aclose()
        for node_id in NODE_IDS:
            await cluster.restart(node_id)
        for node in cluster.nodes.values():
            assert node.cache.topic(TOPIC) is not None  # restored before any log replay
        await cluster.wait_all_active()
        await cluster.wait_partition_leader(TOPIC, 1)
        acked.update(await cluster.produce_all(TOPIC, 1, [b"second-%d" % n for n in range(20)]))
        await cluster.wait_converged(TOPIC, 1)
        _assert_acked_present(_assert_identical(cluster, TOPIC, 1), acked)
        nursery.cancel_scope.cancel()


async def test_single_node_cluster_registers_itself_and_serves_acks_all(tmp_path: Path) -> None:
    # Goal: with no peers (plain `broker serve`), the node is its own controller: it registers
    # without a router, turns ACTIVE, creates an RF 1 topic and acknowledges acks=all produce.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    node = ClusterNode(1, ("127.0.0.1", port), {}, tmp_path, CONFIG, listeners=listeners, seed=7)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        with trio.fail_after(5):
            await node.active.wait()
        await node.controller.create_topic("solo", 2, 1)
        replica = node.replicas.replica("solo", 1)
        with trio.fail_after(5):
            while not replica.is_leader:
                await replica.driver.wait_changed()
        results = [await replica.produce(record_batch(b"v%d" % n)) for n in range(10)]
        assert [r.base_offset for r in results] == sorted({r.base_offset for r in results})
        assert replica.high_watermark == results[-1].last_offset + 1
        stored = payloads_by_offset(bytes(replica.read(0, 1 << 20).data))
        assert [stored[r.base_offset] for r in results] == [b"v%d" % n for n in range(10)]
        nursery.cancel_scope.cancel()


async def test_retention_on_replicas_and_a_follower_behind_the_log_start_catches_up(
    tmp_path: Path,
) -> None:
    # Goal: retention deletes only committed segments, after recording the Raft snapshot point at
    # the new log start; a follower that was down while the leader's log start passed its log end
    # is caught up by a snapshot (its log reset to the leader's start), then replicated.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        await cluster.wait_all_active()
        controller = cluster.controller_leader()
        assert controller is not None
        await controller.controller.create_topic(
            "short",
            1,
            3,
            {"segment.bytes": 2048, "max.message.bytes": 1024, "retention.ms": 60_000},
        )
        await cluster.wait_partition_leader("short", 0)
        await cluster.produce_all("short", 0, [b"a-%03d" % n for n in range(40)])
        leader = cluster.partition_leader("short", 0)
        assert leader is not None
        victim = next(n for n in NODE_IDS if n != leader.driver.node_id)
        await cluster.nodes[victim].crash()
        behind = await cluster.produce_all("short", 0, [b"b-%03d" % n for n in range(60)])
        await cluster.wait_converged("short", 0, count=2)
        far_future_ms = 2**62
        for node in cluster.running():
            assert node.replicas.apply_retention(far_future_ms) > 0
        leader = cluster.partition_leader("short", 0)
        assert leader is not None
        start = leader.log.log_start_offset
        assert start > 0
        # Nothing uncommitted was deleted: the active segment and everything above stay.
        assert leader.driver.storage.first_index() == start
        assert leader.log.segment_count >= 1
        await cluster.restart(victim)
        await cluster.wait_all_active()
        await cluster.wait_converged("short", 0)
        restarted = next(r for r in cluster.replicas_of("short", 0) if r.driver.node_id == victim)
        assert restarted.log.log_start_offset >= start
        data = log_bytes(restarted.log)
        stored = payloads_by_offset(data)
        for payload, offset in behind.items():
            if offset >= restarted.log.log_start_offset:
                assert stored.get(offset) == payload
        more = await cluster.produce_all("short", 0, [b"c-%03d" % n for n in range(10)])
        await cluster.wait_converged("short", 0)
        assert all(offset > start for offset in more.values())
        nursery.cancel_scope.cancel()
