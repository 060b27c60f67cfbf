"""Three `ClusterNode`s in one trio process, over real TCP on 127.0.0.1, for the cluster tests.

Each node has its own data directory (LMDB, metadata log, partition logs) and its own peer
listener, bound to port 0 first and re-bound to the same port on restart. Controller commands
reach the leader through `InProcessRouter`, which stands in for the controller RPC that comes with
`broker serve`. Waiting is event-driven (`wait_until` on change notifications of every node, its
controller and every Raft driver), bounded by `trio.fail_after`; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from broker.cluster.controller_service import ControllerService, ControllerServiceConfig
from broker.cluster.node import ClusterNode, ClusterNodeConfig
from broker.cluster.replicas import Acks, Replica, ReplicaManagerConfig
from broker.config import KIB, LogConfig
from broker.controller.records import BrokerState
from broker.raft.config import RaftConfig
from broker.raft.driver import RaftDriverConfig
from broker.raft.transport import RaftTransportConfig
from wire import batch as batch_codec
from wire.error_codes import BrokerError

NODE_IDS = (1, 2, 3)
TICK_MS = 20
RAFT_CONFIG = RaftConfig(election_timeout_ticks=10, heartbeat_ticks=2)
# The longest an election can take to start: the randomized timeout is in [T, 2T) ticks.
ELECTION_TIMEOUT_MAX_S = 2 * RAFT_CONFIG.election_timeout_ticks * TICK_MS / 1000
CONFIG = ClusterNodeConfig(
    cluster_id="cluster-node-test",
    # Small segments so that replication crosses segment rolls.
    log=LogConfig(segment_bytes=16 * KIB, index_bytes_max=4 * KIB, max_batch_bytes=4 * KIB),
    raft=RAFT_CONFIG,
    driver=RaftDriverConfig(tick_interval_ms=TICK_MS, proposal_timeout_ms=5_000),
    transport=RaftTransportConfig(
        heartbeat_interval_ms=TICK_MS, reconnect_backoff_initial_ms=10, reconnect_backoff_max_ms=200
    ),
    # Snapshot often, so a restart restores from LMDB AND replays the log after it.
    controller=ControllerServiceConfig(
        snapshot_interval_records=4, command_timeout_ms=5_000, registration_retry_ms=100
    ),
    # Hand leadership back to preferred leaders quickly, so the tests can wait for it.
    replicas=ReplicaManagerConfig(leader_check_interval_ms=50, preferred_leader_delay_ms=200),
)

# A producer's retry backoff when a refusal comes with no change to wait for.
RETRY_BACKOFF_S = 0.05

Watch = tuple[Callable[[int], Awaitable[None]], int]


def record_batch(payload: bytes) -> bytes:
    return batch_codec.build_batch([(1_700_000_000_000, None, payload, None)])


class InProcessRouter:
    """Controller commands to another node: a direct call (the RPC of a later slice)."""

    def __init__(self) -> None:
        self.nodes: dict[int, ClusterNode] = {}

    def controller_of(self, node_id: int) -> ControllerService | None:
        node = self.nodes.get(node_id)
        return node.controller if node is not None and node.running else None


class Cluster:
    def __init__(self, nursery: trio.Nursery, nodes: dict[int, ClusterNode]) -> None:
        self.nursery = nursery
        self.nodes = nodes

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        tmp_path: Path,
        node_ids: tuple[int, ...] = NODE_IDS,
        config: ClusterNodeConfig = CONFIG,
    ) -> Cluster:
        listeners = {
            node_id: await trio.open_tcp_listeners(0, host="127.0.0.1") for node_id in node_ids
        }
        peers = {
            node_id: ("127.0.0.1", sockets[0].socket.getsockname()[1])
            for node_id, sockets in listeners.items()
        }
        router = InProcessRouter()
        for node_id in node_ids:
            router.nodes[node_id] = ClusterNode(
                node_id,
                peers[node_id],
                peers,
                tmp_path / f"node{node_id}",
                config,
                router=router,
                listeners=listeners[node_id],
                seed=node_id,
            )
        cluster = cls(nursery, router.nodes)
        for node in cluster.nodes.values():
            await nursery.start(node.run)
        return cluster

    async def restart(self, node_id: int) -> None:
        await self.nursery.start(self.nodes[node_id].run)

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes.values() if node.running]

    # --- waiting ---------------------------------------------------------------------------------

    def watches(self) -> list[Watch]:
        """Every change source, with its version: read BEFORE checking a condition."""
        found: list[Watch] = []
        for node in self.nodes.values():
            found.append((node.changes.wait, node.changes.version))
            if not node.running:
                continue
            drivers = [node.controller.driver] + [r.driver for r in node.replicas.replicas()]
            found += [(driver.wait_changed, driver.change_version) for driver in drivers]
            for notifier in (node.controller.changes, node.replicas.changes):
                found.append((notifier.wait, notifier.version))
        return found

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        with trio.fail_after(timeout_s):
            while True:
                watches = self.watches()
                if predicate():
                    return
                await wait_any_change(watches)

    def controller_leader(self) -> ClusterNode | None:
        leaders = [node for node in self.running() if node.controller.is_leader]
        return max(leaders, key=lambda node: node.controller.driver.term) if leaders else None

    async def wait_all_active(self, timeout_s: float = 10.0) -> None:
        """Every running node is ACTIVE, and every running node's cache says so."""

        def active() -> bool:
            epochs = {node.node_id: node.broker_epoch for node in self.running()}
            if None in epochs.values():
                return False
            for node in self.running():
                for node_id, epoch in epochs.items():
                    info = node.cache.broker(node_id)
                    if info is None or info.broker_epoch != epoch:
                        return False
                    if info.state is not BrokerState.ACTIVE:
                        return False
            return True

        await self.wait_until(active, timeout_s)

    def replicas_of(self, topic: str, partition: int) -> list[Replica]:
        found = []
        for node in self.running():
            with contextlib.suppress(BrokerError):
                found.append(node.replicas.replica(topic, partition))
        return found

    def partition_leader(self, topic: str, partition: int) -> Replica | None:
        leaders = [r for r in self.replicas_of(topic, partition) if r.is_leader]
        return max(leaders, key=lambda r: r.driver.term) if leaders else None

    async def wait_partition_leader(
        self, topic: str, partition: int, *, count: int = 3, timeout_s: float = 5.0
    ) -> Replica:
        """The partition's leader once `count` running replicas all follow it."""

        def settled() -> bool:
            leader = self.partition_leader(topic, partition)
            replicas = self.replicas_of(topic, partition)
            return (
                leader is not None
                and len(replicas) == count
                and all(r.leader_id == leader.driver.node_id for r in replicas)
            )

        await self.wait_until(settled, timeout_s)
        leader = self.partition_leader(topic, partition)
        assert leader is not None
        return leader

    async def wait_converged(
        self, topic: str, partition: int, *, count: int = 3, timeout_s: float = 10.0
    ) -> None:
        """`count` running replicas hold the leader's whole log, committed and applied."""

        def converged() -> bool:
            leader = self.partition_leader(topic, partition)
            replicas = self.replicas_of(topic, partition)
            if leader is None or len(replicas) != count:
                return False
            end = leader.log.log_end_offset
            return all(r.high_watermark == end and r.log.log_end_offset == end for r in replicas)

        await self.wait_until(converged, timeout_s)

    async def wait_preferred_leaders(self, topic: str, *, timeout_s: float = 10.0) -> None:
        """Every partition is led by its preferred leader, and every running cache says so."""

        def preferred() -> bool:
            for node in self.running():
                for view in node.cache.partitions_for(topic):
                    leader = self.partition_leader(topic, view.partition)
                    if leader is None or leader.driver.node_id != view.preferred_leader:
                        return False
                    if view.leader != view.preferred_leader:
                        return False
            return True

        await self.wait_until(preferred, timeout_s)

    # --- producing -------------------------------------------------------------------------------

    async def produce_all(
        self,
        topic: str,
        partition: int,
        payloads: list[bytes],
        *,
        concurrency: int = 8,
        timeout_s: float = 15.0,
    ) -> dict[bytes, int]:
        """Produce each payload with acks=all via whoever leads; {payload: acknowledged offset}."""
        acked: dict[bytes, int] = {}
        send_channel, receive_channel = trio.open_memory_channel[bytes](0)

        async def worker() -> None:
            async for payload in receive_channel:
                acked[payload] = await self.produce_one(topic, partition, payload)

        with trio.fail_after(timeout_s):
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(worker)
                async with send_channel:
                    for payload in payloads:
                        await send_channel.send(payload)
        return acked

    async def produce_one(self, topic: str, partition: int, payload: bytes) -> int:
        while True:
            watches = self.watches()
            leader = self.partition_leader(topic, partition)
            if leader is not None:
                try:
                    result = await leader.produce(record_batch(payload), acks=Acks.ALL)
                    return result.base_offset
                except BrokerError:
                    # NotLeader, dropped, timed out or stopped: not a commit we saw; retry (a
                    # duplicate is possible after a timeout, as with any at-least-once client).
                    pass
            # Some refusals come with no change to wait for (a leadership transfer under way):
            # back off as a client would, but wake at once on a change.
            with trio.move_on_after(RETRY_BACKOFF_S):
                await wait_any_change(watches)


async def wait_any_change(watches: list[Watch]) -> None:
    """Return when any watched source reports a change since its version was read (or stops)."""
    async with trio.open_nursery() as nursery:

        async def watch(wait: Callable[[int], Awaitable[None]], version: int) -> None:
            with contextlib.suppress(BrokerError):  # a stopped driver: that is a change too
                await wait(version)
            nursery.cancel_scope.cancel()

        for wait, version in watches:
            nursery.start_soon(watch, wait, version)


def payloads_by_offset(data: bytes) -> dict[int, bytes]:
    """Client payloads in concatenated batches, by offset (control batches skipped)."""
    values = {}
    for position, header in batch_codec.iter_batches(data):
        if header.is_control:
            continue
        for record in batch_codec.decode_records(data, position, header=header):
            values[record.offset] = record.value or b""
    return values
