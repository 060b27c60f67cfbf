"""A three-broker Raft cluster in one trio process, over real TCP on 127.0.0.1, for the shell tests.

Each `Broker` has its own data directory, LMDB `KvStore`, one `PartitionLog` per group, one
`RaftDriver` per group and one `RaftTransport` with its own listener. `crash()` cancels the broker's
scope (no clean close: logs are closed without a flush or shutdown marker) and `start()` re-opens
everything from disk on the same port. Waiting is event-driven (`wait_until`), never by sleeping.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from broker.config import KIB, LogConfig
from broker.kvstore import KvStore
from broker.log.log import PartitionLog
from broker.raft.config import RaftConfig
from broker.raft.driver import RaftDriver, RaftDriverConfig
from broker.raft.log_storage import LogRaftStorage
from broker.raft.messages import Configuration
from broker.raft.ready import Role
from broker.raft.transport import RaftTransport, RaftTransportConfig
from tests.log_reading import log_bytes as log_bytes_of
from wire import batch as batch_codec
from wire.error_codes import BrokerError

GROUPS = ("g0", "g1")
NODE_IDS = (1, 2, 3)
CLUSTER_ID = "raft-shell-test"
TICK_MS = 20
# As the broker's partition groups run: followers learn the commit index lazily.
RAFT_CONFIG = RaftConfig(election_timeout_ticks=10, heartbeat_ticks=2, commit_broadcast=False)
# The longest an election can take to start: the randomized timeout is in [T, 2T) ticks.
ELECTION_TIMEOUT_MAX_S = 2 * RAFT_CONFIG.election_timeout_ticks * TICK_MS / 1000
DRIVER_CONFIG = RaftDriverConfig(tick_interval_ms=TICK_MS, proposal_timeout_ms=5_000)
TRANSPORT_CONFIG = RaftTransportConfig(
    heartbeat_interval_ms=TICK_MS, reconnect_backoff_initial_ms=10, reconnect_backoff_max_ms=200
)
# Small segments so that replication crosses segment rolls.
LOG_CONFIG = LogConfig(segment_bytes=16 * KIB, index_bytes_max=4 * KIB)


def record_batch(payload: bytes) -> bytes:
    return batch_codec.build_batch([(1_700_000_000_000, None, payload, None)])


class Broker:
    """One broker's Raft side: transport, listener, a driver per group, and their storage."""

    def __init__(self, node_id: int, data_dir: Path, listeners: list[trio.SocketListener]) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self._listeners: list[trio.SocketListener] | None = listeners
        self.port = listeners[0].socket.getsockname()[1]
        self.peers: dict[int, tuple[str, int]] = {}
        self.drivers: dict[str, RaftDriver] = {}
        self.transport: RaftTransport | None = None
        self.running = False
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self.starts = 0

    def _open(self) -> tuple[KvStore, list[PartitionLog]]:
        store = KvStore.open(self.data_dir / "meta")
        self.transport = RaftTransport(
            node_id=self.node_id, cluster_id=CLUSTER_ID, peers=self.peers, config=TRANSPORT_CONFIG
        )
        logs = []
        for group in GROUPS:
            log = PartitionLog.open(self.data_dir / "logs" / group, LOG_CONFIG)
            logs.append(log)
            storage = LogRaftStorage(log, store, group, Configuration.of(NODE_IDS))
            self.drivers[group] = RaftDriver(
                group=group,
                node_id=self.node_id,
                storage=storage,
                transport=self.transport,
                raft_config=RAFT_CONFIG,
                config=DRIVER_CONFIG,
                rng=random.Random(self.node_id * 1000 + self.starts),
            )
        return store, logs

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        store, logs = self._open()
        self.starts += 1
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    listeners = self._listeners or await trio.open_tcp_listeners(
                        self.port, host="127.0.0.1"
                    )
                    self._listeners = None
                    assert self.transport is not None
                    await nursery.start(
                        trio.serve_listeners, self.transport.serve_inbound, listeners
                    )
                    await nursery.start(self.transport.run)
                    for driver in self.drivers.values():
                        await nursery.start(driver.run)
                    self.running = True
                    task_status.started()
        finally:
            # Crash-like: no flush, no clean-shutdown marker; what reached the page cache stays.
            self.running = False
            for log in logs:
                log.close(clean=False)
            store.close()
            self._stopped.set()

    async def crash(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()


class Cluster:
    def __init__(self, nursery: trio.Nursery, brokers: dict[int, Broker]) -> None:
        self.nursery = nursery
        self.brokers = brokers

    @classmethod
    async def start(cls, nursery: trio.Nursery, tmp_path: Path) -> Cluster:
        brokers = {}
        for node_id in NODE_IDS:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            brokers[node_id] = Broker(node_id, tmp_path / f"node{node_id}", listeners)
        for broker in brokers.values():
            broker.peers = {
                other.node_id: ("127.0.0.1", other.port)
                for other in brokers.values()
                if other is not broker
            }
        cluster = cls(nursery, brokers)
        for broker in brokers.values():
            await nursery.start(broker.run)
        return cluster

    async def restart(self, node_id: int) -> None:
        await self.nursery.start(self.brokers[node_id].run)

    def drivers(self, group: str | None = None) -> list[RaftDriver]:
        return [
            driver
            for broker in self.brokers.values()
            if broker.running
            for name, driver in broker.drivers.items()
            if group is None or name == group
        ]

    def leader(self, group: str) -> RaftDriver | None:
        leaders = [driver for driver in self.drivers(group) if driver.role is Role.LEADER]
        return max(leaders, key=lambda driver: driver.term) if leaders else None

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait (by change events, no polling) until `predicate()` holds; fail after the timeout."""
        with trio.fail_after(timeout_s):
            while True:
                versions = change_versions(self.drivers())
                if predicate():
                    return
                await wait_any_change(versions)

    async def wait_leader(self, group: str, timeout_s: float = 5.0) -> RaftDriver:
        """The leader of `group` once every running member follows it."""

        def settled() -> bool:
            leader = self.leader(group)
            return leader is not None and all(
                driver.leader_id == leader.node_id for driver in self.drivers(group)
            )

        await self.wait_until(settled, timeout_s)
        leader = self.leader(group)
        assert leader is not None
        return leader

    async def wait_converged(self, group: str, timeout_s: float = 10.0) -> None:
        """Every running member holds the leader's whole log, committed and applied."""

        def converged() -> bool:
            leader = self.leader(group)
            if leader is None:
                return False
            end = leader.core.log.last_index() + 1
            return all(
                driver.high_watermark == end and driver.core.log.last_index() + 1 == end
                for driver in self.drivers(group)
            )

        await self.wait_until(converged, timeout_s)

    async def propose_all(
        self, group: str, payloads: Iterable[bytes], *, concurrency: int = 16
    ) -> None:
        """Propose every payload via whoever leads; retry until its commit is seen."""
        send_channel, receive_channel = trio.open_memory_channel[bytes](0)

        async def worker() -> None:
            async for payload in receive_channel:
                await self.propose_one(group, payload)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
            async with send_channel:
                for payload in payloads:
                    await send_channel.send(payload)

    async def propose_one(self, group: str, payload: bytes) -> None:
        while True:
            versions = change_versions(self.drivers())
            leader = self.leader(group)
            if leader is None:
                await wait_any_change(versions)
                continue
            try:
                await leader.propose(record_batch(payload))
                return
            except BrokerError:
                # NotLeader, dropped, timed out or stopped: the outcome is not a commit we saw, so
                # retry (a duplicate is possible after a timeout, as with any at-least-once client).
                await wait_any_change(versions)


def change_versions(drivers: list[RaftDriver]) -> dict[RaftDriver, int]:
    """Read before checking a condition, so that `wait_any_change` cannot miss a change."""
    return {driver: driver.change_version for driver in drivers}


async def wait_any_change(versions: dict[RaftDriver, int]) -> None:
    """Return when any driver reports a change since `versions` was read (or stops)."""
    async with trio.open_nursery() as nursery:

        async def watch(driver: RaftDriver, version: int) -> None:
            with contextlib.suppress(BrokerError):  # stopped: that is a change too
                await driver.wait_changed(version)
            nursery.cancel_scope.cancel()

        for driver, version in versions.items():
            nursery.start_soon(watch, driver, version)


def log_bytes(driver: RaftDriver) -> bytes:
    return log_bytes_of(driver.storage.log)


def payloads_in(driver: RaftDriver) -> list[bytes]:
    """Client payloads in the log, in order (control batches skipped)."""
    data = log_bytes(driver)
    values = []
    for position, header in batch_codec.iter_batches(data):
        if header.is_control:
            continue
        records = batch_codec.decode_records(data, position, header=header)
        values.extend(record.value or b"" for record in records)
    return values
