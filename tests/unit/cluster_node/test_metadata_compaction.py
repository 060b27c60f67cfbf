"""Goal: the metadata log takes snapshots and truncates, so a restart after many metadata records
replays the snapshot plus a short tail (counted in records, not timed), and the state survives.

One single-node `ClusterNode` (its own controller) over a tmp data dir, with a snapshot every
`INTERVAL` records and small metadata segments so that compaction deletes some.
"""

from __future__ import annotations

from pathlib import Path

import trio

from broker.cluster.controller_service import ControllerServiceConfig
from broker.cluster.node import ClusterNode, ClusterNodeConfig
from broker.config import KIB, LogConfig
from broker.raft.driver import RaftDriverConfig
from broker.raft.transport import RaftTransportConfig

INTERVAL = 50
TOPICS = 60  # each creation is 2 records (the topic, its one partition): 120 records and more
# Created and deleted again in the first test: 3 long records each, enough to roll segments.
CHURNED_TOPICS = 150
CONFIG = ClusterNodeConfig(
    metadata_log=LogConfig(segment_bytes=64 * KIB, max_batch_bytes=64 * KIB),
    driver=RaftDriverConfig(tick_interval_ms=20),
    transport=RaftTransportConfig(heartbeat_interval_ms=20, peer_timeout_ms=200),
    controller=ControllerServiceConfig(snapshot_interval_records=INTERVAL),
)


async def _run_until_active(node: ClusterNode, nursery: trio.Nursery) -> None:
    await nursery.start(node.run)
    with trio.fail_after(10):
        await node.active.wait()


async def test_restart_replays_only_the_tail_after_a_compacted_metadata_log(
    tmp_path: Path,
) -> None:
    # Topic configs make each record large enough for the metadata log to roll segments.
    configs = {"retention.ms": 123_456}
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    node = ClusterNode(1, ("127.0.0.1", port), {}, tmp_path, CONFIG, listeners=listeners, seed=3)
    async with trio.open_nursery() as nursery:
        await _run_until_active(node, nursery)
        for number in range(CHURNED_TOPICS):
            name = f"topic-{number:03d}-" + "x" * 200
            await node.controller.create_topic(name, 1, 1, configs)
            if number < CHURNED_TOPICS - TOPICS:
                await node.controller.delete_topic(name)
        storage = node.controller.driver.storage
        assert node.controller.compaction_count >= 2
        # Raft's snapshot point moved, with the state bytes, and whole segments went.
        assert storage.snapshot().index > 0 and storage.snapshot().data
        assert storage.log.log_start_offset > 0
        applied_before = node.controller.machine.applied_index
        nursery.cancel_scope.cancel()
    # A crash would lose the final clean-stop snapshot: only the periodic one (and the log) stay.
    node = ClusterNode(1, ("127.0.0.1", port), {}, tmp_path, CONFIG, seed=4)
    async with trio.open_nursery() as nursery:
        await _run_until_active(node, nursery)
        controller = node.controller
        assert controller.restored_index >= applied_before
        assert controller.machine.topic("topic-149-" + "x" * 200) is not None
        # Nothing of the log before the clean stop's snapshot is applied again.
        assert controller.replayed_record_count <= INTERVAL, controller.replayed_record_count
        assert controller.machine.statistics().topic_count == TOPICS
        nursery.cancel_scope.cancel()


async def test_a_crash_restart_replays_at_most_one_interval(tmp_path: Path) -> None:
    # Without the clean-stop snapshot, the periodic snapshot (the compaction point) bounds the
    # replay: the records after it, fewer than one interval, plus the new registration.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    node = ClusterNode(1, ("127.0.0.1", port), {}, tmp_path, CONFIG, listeners=listeners, seed=5)
    async with trio.open_nursery() as nursery:
        await _run_until_active(node, nursery)
        for number in range(TOPICS):
            await node.controller.create_topic(f"t{number}", 1, 1)
        applied_before = node.controller.machine.applied_index
        await node.crash()
        nursery.cancel_scope.cancel()
    node = ClusterNode(1, ("127.0.0.1", port), {}, tmp_path, CONFIG, seed=6)
    async with trio.open_nursery() as nursery:
        await _run_until_active(node, nursery)
        controller = node.controller
        assert controller.machine.applied_index > applied_before
        assert all(controller.machine.topic(f"t{n}") is not None for n in range(TOPICS))
        assert controller.replayed_record_count < INTERVAL, controller.replayed_record_count
        nursery.cancel_scope.cancel()
