"""`ClusterNode`: everything one broker runs to be a member of a replicated cluster, in one nursery.

It owns one `KvStore` (LMDB), one `LogManager`, one `RaftTransport` (with its own TCP listener for
peer traffic in this slice), the `ControllerService` (metadata log) and the `ReplicaManager`
(partition groups), and registers the broker with the controller. Rules:

1. Start order: storage, peer listener and transport, replica manager, then the controller (whose
   restored state is the replica manager's first input), then registration.
2. Registration (KRaft): at every start the broker registers with a fresh random incarnation (it
   is FENCED), and asks to be ACTIVE once its own metadata log has applied that registration (it
   has caught up to it). Commands go to the controller leader through a `ControllerRouter`: in
   this slice an in-process lookup (tests) or only this node; an RPC comes with `broker serve`.
3. Stopping: cancelling `run()` (or `aclose()`) is a clean stop: controller state snapshotted to
   LMDB, logs flushed and marked clean. `crash()` stops with no flush and no marker, as a kill -9
   would leave the files (what reached the page cache stays).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import trio

from broker.config import MIB, ConfigBase, ConfigError, LogConfig, check_range
from broker.controller.cache import MetadataCache
from broker.controller.records import BrokerState
from broker.controller.state import ControllerConfig
from broker.errors import BrokerError
from broker.kvstore import KvStore
from broker.log.manager import LogManager
from broker.raft import wire
from broker.raft.config import RaftConfig
from broker.raft.driver import RaftDriverConfig
from broker.raft.transport import RaftTransport, RaftTransportConfig

from .controller_service import (
    METADATA_TOPIC,
    ChangeNotifier,
    ControllerService,
    ControllerServiceConfig,
    NotControllerError,
)
from .replicas import ReplicaManager, ReplicaManagerConfig

logger = logging.getLogger(__name__)

# Broker incarnations are random 63-bit integers (docs/controller.md): never reused across starts.
_INCARNATION_BITS = 63
META_DIRECTORY = "meta.lmdb"


def _metadata_log_default() -> LogConfig:
    # The metadata log is small; smaller segments keep a future compaction cheap.
    return LogConfig(segment_bytes=64 * MIB)


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterNodeConfig(ConfigBase):
    """Everything a cluster member needs beyond its id, addresses and data dir."""

    # Peers refuse links from another cluster (checked in the transport handshake).
    cluster_id: str = "pybroker"
    # Defaults of every data partition's log (topic configs override them).
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    metadata_log: LogConfig = dataclasses.field(default_factory=_metadata_log_default)
    raft: RaftConfig = dataclasses.field(default_factory=RaftConfig)
    driver: RaftDriverConfig = dataclasses.field(default_factory=RaftDriverConfig)
    transport: RaftTransportConfig = dataclasses.field(default_factory=RaftTransportConfig)
    controller: ControllerServiceConfig = dataclasses.field(default_factory=ControllerServiceConfig)
    limits: ControllerConfig = dataclasses.field(default_factory=ControllerConfig)
    replicas: ReplicaManagerConfig = dataclasses.field(default_factory=ReplicaManagerConfig)

    def validate(self) -> None:
        if not 1 <= len(self.cluster_id.encode()) <= wire.CLUSTER_ID_BYTES_MAX:
            raise ConfigError("cluster_id", "must be 1 to 255 bytes")
        for part in (
            self.log,
            self.metadata_log,
            self.raft,
            self.driver,
            self.transport,
            self.controller,
            self.limits,
            self.replicas,
        ):
            part.validate()
        # A heartbeat must not wait longer than one tick in the transport (docs/raft-driver.md).
        check_range(
            "transport.heartbeat_interval_ms",
            self.transport.heartbeat_interval_ms,
            1,
            self.driver.tick_interval_ms,
        )


class ControllerRouter(Protocol):
    """Finds the controller service of a node (the leader), or None if it cannot be reached."""

    def controller_of(self, node_id: int) -> ControllerService | None: ...


class ClusterNode:
    """One broker's cluster membership. See the module docstring for the rules."""

    def __init__(
        self,
        node_id: int,
        listen: tuple[str, int],
        peers: Mapping[int, tuple[str, int]],
        data_dir: Path,
        config: ClusterNodeConfig | None = None,
        *,
        router: ControllerRouter | None = None,
        listeners: list[trio.SocketListener] | None = None,
        seed: int | None = None,
    ) -> None:
        """`peers`: the initial controller voters and where their peer listeners are (this node
        may be among them). `listeners`: already-open sockets for the first start (tests bind
        port 0 and learn the port before telling the peers). `seed`: deterministic Raft timers."""
        self.config = config or ClusterNodeConfig()
        self.config.validate()
        assert node_id > 0, node_id
        self.node_id = node_id
        self.host = listen[0]
        self.port = listeners[0].socket.getsockname()[1] if listeners else listen[1]
        self.peers = {peer: address for peer, address in sorted(peers.items()) if peer != node_id}
        self.voters = sorted({*self.peers, node_id})
        self.data_dir = data_dir
        self._router = router
        self._listeners = listeners
        self._seed = seed
        self.starts = 0
        self.running = False
        self.broker_epoch: int | None = None
        self.active = trio.Event()
        self.changes = ChangeNotifier()
        self._clean = True
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._controller: ControllerService | None = None
        self._replicas: ReplicaManager | None = None
        self.transport: RaftTransport | None = None

    # --- parts -----------------------------------------------------------------------------------

    @property
    def controller(self) -> ControllerService:
        assert self._controller is not None, "the node has not started"
        return self._controller

    @property
    def replicas(self) -> ReplicaManager:
        assert self._replicas is not None, "the node has not started"
        return self._replicas

    @property
    def cache(self) -> MetadataCache:
        return self.controller.cache

    def controller_of(self, node_id: int) -> ControllerService | None:
        """The default router: only this node's own controller."""
        if node_id == self.node_id and self.running:
            return self._controller
        return None

    # --- running ---------------------------------------------------------------------------------

    def _open(self, store: KvStore, logs: LogManager) -> None:
        config = self.config
        rng = random.Random(None if self._seed is None else self._seed * 1000 + self.starts)
        self.transport = RaftTransport(
            node_id=self.node_id,
            cluster_id=config.cluster_id,
            peers=self.peers,
            config=config.transport,
        )
        self._replicas = ReplicaManager(
            node_id=self.node_id,
            store=store,
            logs=logs,
            transport=self.transport,
            log_defaults=config.log,
            raft_config=config.raft,
            driver_config=config.driver,
            config=config.replicas,
            rng=rng,
            reporter=self._report_leader,
        )
        self._controller = ControllerService(
            node_id=self.node_id,
            voters=self.voters,
            store=store,
            logs=logs,
            transport=self.transport,
            log_defaults=config.log,
            metadata_log_config=config.metadata_log,
            limits=config.limits,
            raft_config=config.raft,
            driver_config=config.driver,
            config=config.controller,
            rng=random.Random(rng.getrandbits(64)),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled; see the module docstring for start order and stopping."""
        assert not self.running, "run() one at a time"
        store = KvStore.open(self.data_dir / META_DIRECTORY)
        metadata_config = self.config.metadata_log
        logs = LogManager.open(
            self.data_dir,
            self.config.log,
            config_for=lambda topic: metadata_config if topic == METADATA_TOPIC else None,
        )
        self.starts += 1
        self._clean = True
        self._stopped = trio.Event()
        self.active = trio.Event()
        self.broker_epoch = None
        try:
            self._open(store, logs)
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    await self._start_parts(nursery)
                    self.running = True
                    self.changes.notify()
                    task_status.started()
                    await self._register()
        finally:
            self.running = False
            self._close(store, logs)
            self._stopped.set()
            self.changes.notify()

    async def _start_parts(self, nursery: trio.Nursery) -> None:
        assert self.transport is not None
        listeners = self._listeners or await trio.open_tcp_listeners(self.port, host=self.host)
        self._listeners = None  # a restart binds the same port again
        await nursery.start(trio.serve_listeners, self.transport.serve_inbound, listeners)
        await nursery.start(self.transport.run)
        await nursery.start(self.replicas.run)
        self.controller.add_listener(self.replicas.reconcile)
        await nursery.start(self.controller.run)

    def _close(self, store: KvStore, logs: LogManager) -> None:
        if self._clean and self._controller is not None:
            # Every task has stopped: the state is between entries, as a snapshot must be.
            self._controller.save_snapshot()
        logs.close(clean=self._clean)
        store.close()

    async def aclose(self) -> None:
        """Stop cleanly (flushed logs, controller snapshot) and wait until stopped."""
        await self._cancel(clean=True)

    async def crash(self) -> None:
        """Stop as a crash would: no flush, no clean-shutdown marker, no final snapshot."""
        await self._cancel(clean=False)

    async def _cancel(self, *, clean: bool) -> None:
        assert self._scope is not None and self.running
        self._clean = clean
        self._scope.cancel()
        await self._stopped.wait()

    # --- registration ----------------------------------------------------------------------------

    async def _register(self) -> None:
        """Register, then become ACTIVE once caught up (rule 2); retry until done."""
        incarnation = random.SystemRandom().getrandbits(_INCARNATION_BITS)
        retry_s = self.config.controller.registration_retry_ms / 1000
        router = self._router or self
        epoch: int | None = None
        while True:
            driver_version = self.controller.driver.change_version
            applied_version = self.controller.changes.version
            target = router.controller_of(self.controller.leader_id)
            if target is not None:
                try:
                    if epoch is None:
                        epoch = await target.register_broker(
                            self.node_id, self.host, self.port, incarnation
                        )
                        continue
                    if await self._activate(target, epoch):
                        return
                except BrokerError as exc:
                    # No controller yet, a failover or a timeout: ask again after a change.
                    logger.debug("node %d: registration: %s", self.node_id, exc)
            with trio.move_on_after(retry_s):
                await self._wait_controller_change(driver_version, applied_version)

    async def _activate(self, target: ControllerService, epoch: int) -> bool:
        """True once this node's own metadata shows it ACTIVE at `epoch`; otherwise ask for it
        (when caught up to the registration) and let the caller wait for the next change."""
        info = self.controller.machine.broker(self.node_id)
        if info is None or info.broker_epoch != epoch:
            return False  # our metadata log has not applied the registration yet
        if info.state is BrokerState.ACTIVE:
            self.broker_epoch = epoch
            self.active.set()
            self.changes.notify()
            logger.info("node %d: ACTIVE with broker epoch %d", self.node_id, epoch)
            return True
        # Applied on the controller on return; ours follows with the next entries it applies.
        await target.set_broker_state(self.node_id, BrokerState.ACTIVE, epoch)
        return False

    async def _report_leader(
        self, topic: str, partition: int, leader: int, epoch: int, in_sync: tuple[int, ...]
    ) -> None:
        """A partition leader's report, sent to the controller leader (NOT_CONTROLLER if none)."""
        target = (self._router or self).controller_of(self.controller.leader_id)
        if target is None:
            raise NotControllerError(self.node_id, self.controller.leader_id)
        await target.report_leader(topic, partition, leader, epoch, in_sync)

    async def _wait_controller_change(self, driver_version: int, applied_version: int) -> None:
        async with trio.open_nursery() as nursery:

            async def driver_changed() -> None:
                # A stopped driver raises its stop error: a change too (the node is stopping, or
                # the controller's own task reports the failure).
                with contextlib.suppress(BrokerError):
                    await self.controller.driver.wait_changed(driver_version)
                nursery.cancel_scope.cancel()

            async def applied() -> None:
                await self.controller.changes.wait(applied_version)
                nursery.cancel_scope.cancel()

            nursery.start_soon(driver_changed)
            nursery.start_soon(applied)
