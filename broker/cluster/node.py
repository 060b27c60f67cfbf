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
4. Membership (docs/cluster.md "Membership"): the metadata group's voters are the configured
   controller voters; every other broker is a learner. A broker started with `bootstrap` instead
   of `peers` first asks a bootstrap broker for the brokers' addresses, the voters and the
   controller leader, then registers there; every broker learns its peers' addresses from the
   registrations it applies (and forgets decommissioned ones), so Raft links reach brokers that
   joined later. The `MembershipService` (controller leader) does the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import trio

from broker.config import (
    MIB,
    BrokerConfig,
    ConfigBase,
    ConfigError,
    LogConfig,
    check_range,
)
from broker.controller.cache import MetadataCache
from broker.controller.records import BrokerState, Endpoint
from broker.controller.state import ControllerConfig, ControllerStateMachine
from broker.kvstore import KvStore
from broker.log.manager import LogManager
from broker.raft import wire
from broker.raft.config import RaftConfig
from broker.raft.driver import RaftDriverConfig, RaftTicker
from broker.raft.transport import Connector, RaftTransport, RaftTransportConfig
from wire.connection import open_stream
from wire.error_codes import BrokerError, ErrorCode
from wire.errors import ClientError
from wire.sasl_client import SaslLogin, log_in_on_stream

from .controller_client import PeerClients, PeerRouter, discover_cluster
from .controller_service import (
    METADATA_PARTITION,
    METADATA_TOPIC,
    ChangeNotifier,
    ControllerService,
    ControllerServiceConfig,
    NotControllerError,
)
from .membership import MembershipService
from .reassignment import ReassignmentConfig, ReassignmentService
from .replicas import ReplicaManager, ReplicaManagerConfig, handover_target

logger = logging.getLogger(__name__)

# Broker incarnations are random 63-bit integers (docs/controller.md): never reused across starts.
_INCARNATION_BITS = 63
META_DIRECTORY = "meta.lmdb"


def _metadata_log_default() -> LogConfig:
    # Compaction deletes whole segments below a snapshot: small segments keep the log short.
    return LogConfig(segment_bytes=8 * MIB)


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
    reassignment: ReassignmentConfig = dataclasses.field(default_factory=ReassignmentConfig)

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
            self.reassignment,
        ):
            part.validate()
        # A heartbeat must not wait longer than one tick in the transport (docs/raft-driver.md).
        check_range(
            "transport.heartbeat_interval_ms",
            self.transport.heartbeat_interval_ms,
            1,
            self.driver.tick_interval_ms,
        )


def node_config_of(config: BrokerConfig) -> ClusterNodeConfig:
    """The cluster settings of `broker serve` (BrokerConfig's cluster keys) as a node config."""
    return ClusterNodeConfig(
        cluster_id=config.cluster_id,
        log=config.log,
        metadata_log=LogConfig(
            segment_bytes=config.metadata_log_segment_bytes,
            max_batch_bytes=min(config.metadata_log_segment_bytes, LogConfig().max_batch_bytes),
        ),
        raft=RaftConfig(
            election_timeout_ticks=config.raft_election_timeout_ticks, quiesce=config.raft_quiesce
        ),
        driver=RaftDriverConfig(tick_interval_ms=config.raft_tick_ms),
        transport=RaftTransportConfig(
            heartbeat_interval_ms=config.raft_tick_ms,
            # The link liveness stands in for quiet groups' heartbeats: one election timeout.
            peer_timeout_ms=config.raft_tick_ms * config.raft_election_timeout_ticks,
            max_frame_bytes=config.max_frame_bytes,
        ),
        controller=ControllerServiceConfig(
            heartbeat_interval_ms=config.broker_heartbeat_interval_ms,
            session_timeout_ms=config.broker_session_timeout_ms,
            snapshot_interval_records=config.metadata_snapshot_interval_records,
        ),
        limits=ControllerConfig(partition_count_per_topic_max=config.max_partitions_per_topic),
        replicas=(
            ReplicaManagerConfig()
            if config.auto_leader_rebalance_enable
            else ReplicaManagerConfig(preferred_leader_delay_ms=0)
        ),
        reassignment=ReassignmentConfig(
            throttle_bytes_per_s=config.reassignment_throttle_bytes_per_s
        ),
    )


class ControllerEndpoint(Protocol):
    """The controller commands a broker sends (a local `ControllerService` or a remote one)."""

    async def register_broker(
        self,
        node_id: int,
        host: str,
        port: int,
        incarnation: int,
        endpoints: tuple[Endpoint, ...] = (),
    ) -> int: ...

    async def heartbeat(
        self, node_id: int, broker_epoch: int, *, want_active: bool, shutting_down: bool = False
    ) -> BrokerState: ...

    async def report_leader(
        self,
        topic: str,
        partition: int,
        leader: int,
        leader_epoch: int,
        in_sync_replicas: Sequence[int],
    ) -> None: ...

    async def complete_reassignment(
        self, topic: str, partition: int, replicas: Sequence[int]
    ) -> None: ...


class ControllerRouter(Protocol):
    """Finds the controller of a node (the leader), or None if it cannot be reached."""

    def controller_of(self, node_id: int) -> ControllerEndpoint | None: ...


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
        serve_peers: bool = True,
        seed: int | None = None,
        controller_voters: Sequence[int] = (),
        bootstrap: Sequence[tuple[str, int]] = (),
        peer_login: SaslLogin | None = None,
        peer_tls: ssl.SSLContext | None = None,
        endpoints: Sequence[Endpoint] = (),
    ) -> None:
        """`peers`: the brokers that start the cluster and where their peer listeners are (this
        node may be among them). `controller_voters`: the metadata group's voters among them
        (default: all); the others are learners. `bootstrap`: join a running cluster through
        these brokers instead (`peers` empty; rule 4). `listeners`: already-open sockets for
        the first start (tests bind port 0 and learn the port before telling the peers).
        `serve_peers=False`: the broker's client listener hands peer connections to
        `transport.serve_inbound` (one port for both), so the node opens no listener.
        `router`: how commands reach the controller leader (default: `PeerRouter`, over the
        client protocol). `seed`: deterministic Raft timers. `peer_tls`: reach peers over TLS
        with this client context (a TLS inter-broker listener, docs/security.md). `endpoints`:
        every listener's advertised (name, host, port), registered with the controller so
        clients are answered per listener (empty: one listener, `listen`)."""
        self.config = config or ClusterNodeConfig()
        self.config.validate()
        # `--auth scram`: how this broker logs in to its peers (Raft links, controller calls).
        self.peer_login = peer_login
        assert node_id > 0, node_id
        self.node_id = node_id
        self.host = listen[0]
        self.port = listeners[0].socket.getsockname()[1] if listeners else listen[1]
        self.peers = {peer: address for peer, address in sorted(peers.items()) if peer != node_id}
        self.bootstrap = list(bootstrap)
        assert not (self.peers and self.bootstrap), "peers or bootstrap, not both"
        members = sorted({*self.peers, node_id})
        self.voters = sorted(controller_voters) if controller_voters else members
        assert set(self.voters) <= set(members), (self.voters, members)
        self.learners = [node for node in members if node not in self.voters]
        # The controller leader a bootstrap broker named (0: none): whom to register with while
        # this broker's own metadata log knows no leader yet (it is not a learner yet).
        self._controller_hint = 0
        self.data_dir = data_dir
        self._router = router
        self._listeners = listeners
        self._serve_peers = serve_peers
        self._seed = seed
        self._peer_tls = peer_tls
        self.endpoints = tuple(endpoints)
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
        self._reassignments: ReassignmentService | None = None
        # The controller leader's membership rounds (runs on every broker, acts on the leader).
        self.membership: MembershipService | None = None
        self.transport: RaftTransport | None = None
        self.peer_clients: PeerClients | None = None
        # The node's LMDB store while it runs (the broker's producer id allocator keeps its
        # reservations there).
        self.store: KvStore | None = None
        # Set by `resign()`: heartbeats then ask for SHUTTING_DOWN, never to be unfenced.
        self.shutting_down = False
        # One timer for every Raft group of this broker (docs/raft-driver.md, rule 5).
        self.ticker = RaftTicker(self.config.driver.tick_interval_ms)

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

    @property
    def router(self) -> ControllerRouter:
        """How commands reach the controller leader: the router given, else `PeerRouter`."""
        if self._router is not None:
            return self._router
        assert self.peer_clients is not None, "the node has not started"
        return PeerRouter(self.node_id, self.controller, self.peer_clients)

    # --- running ---------------------------------------------------------------------------------

    def _raft_connector(self) -> Connector:
        """How Raft links reach a peer: over TLS with `peer_tls` (a TLS inter-broker listener),
        then, with `peer_login`, logged in before the link's own handshake."""
        login, context = self.peer_login, self._peer_tls
        client_id = f"broker-{self.node_id}-raft"
        max_frame_bytes = self.config.transport.max_frame_bytes

        async def connect(node_id: int, host: str, port: int) -> trio.abc.Stream:
            try:
                stream = await open_stream(host, port, context)
            except ClientError as exc:
                # The link retries a failed connect with backoff, as any OSError.
                raise OSError(f"peer {node_id} at {host}:{port}: {exc}") from None
            if login is None:
                return stream
            try:
                return await log_in_on_stream(
                    stream,
                    f"{host}:{port}",
                    client_id=client_id,
                    login=login,
                    max_frame_bytes=max_frame_bytes,
                )
            except (BrokerError, trio.BrokenResourceError) as exc:
                raise OSError(f"login to peer {node_id} failed: {exc}") from exc

        return connect

    def _open(self, store: KvStore, logs: LogManager) -> None:
        config = self.config
        rng = random.Random(None if self._seed is None else self._seed * 1000 + self.starts)
        self.transport = RaftTransport(
            node_id=self.node_id,
            cluster_id=config.cluster_id,
            peers=self.peers,
            config=config.transport,
            connector=self._raft_connector(),
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
            ticker=self.ticker,
        )
        self._controller = ControllerService(
            node_id=self.node_id,
            voters=self.voters,
            learners=self.learners,
            store=store,
            logs=logs,
            transport=self.transport,
            log_defaults=config.log,
            metadata_log_config=config.metadata_log,
            limits=config.limits,
            # The metadata group stays awake: it is one group (its heartbeats cost nothing
            # measurable), and every broker's registration heartbeats need its leader anyway.
            # It broadcasts each commit: brokers act on what its followers apply.
            raft_config=dataclasses.replace(config.raft, quiesce=False, commit_broadcast=True),
            driver_config=config.driver,
            config=config.controller,
            rng=random.Random(rng.getrandbits(64)),
            ticker=self.ticker,
        )
        self._reassignments = ReassignmentService(
            node_id=self.node_id,
            controller=self._controller,
            replicas=self._replicas,
            reporter=self._complete_reassignment,
            config=config.reassignment,
            tick_interval_ms=config.driver.tick_interval_ms,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled; see the module docstring for start order and stopping."""
        assert not self.running, "run() one at a time"
        # Raises MetadataStoreError (naming the file and what to do) if it is damaged.
        store = KvStore.open(self.data_dir / META_DIRECTORY, verify=True)
        metadata_config = self.config.metadata_log
        logs = LogManager.open(
            self.data_dir,
            self.config.log,
            config_for=lambda topic: metadata_config if topic == METADATA_TOPIC else None,
        )
        # Raft counts a log as durable up to its end at open: make it so after a crash.
        logs.flush_recovered()
        self.starts += 1
        self.shutting_down = False
        self._clean = True
        self._stopped = trio.Event()
        self.active = trio.Event()
        self.broker_epoch = None
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self.bootstrap and logs.get(METADATA_TOPIC, METADATA_PARTITION) is None:
                    await self._discover()
                self._open(store, logs)
                self.store = store
                async with trio.open_nursery() as nursery:
                    await self._start_parts(nursery)
                    self.running = True
                    self.changes.notify()
                    task_status.started()
                    await self._membership()
        finally:
            self.running = False
            self._close(store, logs)
            self._stopped.set()
            self.changes.notify()

    async def _discover(self) -> None:
        """Rule 4: before a joining broker's first start, learn from a `bootstrap` broker where
        every broker is, which of them vote, and who leads the controller. Retried until one
        answers (the cluster may be starting too)."""
        retry_s = self.config.controller.registration_retry_ms / 1000
        timeout_s = self.config.controller.command_timeout_ms / 1000
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    status = await discover_cluster(
                        nursery,
                        self.node_id,
                        self.bootstrap,
                        timeout_s=timeout_s,
                        login=self.peer_login,
                        ssl_context=self._peer_tls,
                    )
                break
            except BrokerError as exc:
                logger.warning("node %d: joining: %s; retrying", self.node_id, exc)
                await trio.sleep(retry_s)
        self.peers = {
            broker.node_id: (broker.host, broker.port)
            for broker in status.brokers
            if broker.node_id != self.node_id
        }
        self.voters = sorted(status.controller_voters) or [status.controller_id]
        # Until the leader's log tells it otherwise, this broker is a learner: it never votes.
        self.learners = sorted({*self.peers, self.node_id} - set(self.voters))
        self._controller_hint = status.controller_id
        logger.info(
            "node %d: joining the cluster of brokers %s (controller voters %s, leader %d)",
            self.node_id,
            sorted(self.peers),
            self.voters,
            status.controller_id,
        )

    def _learn_peers(self, machine: ControllerStateMachine) -> None:
        """Rule 4: every registered broker is a peer, at the address it registered; a removed
        one is forgotten. A metadata listener, so it runs after every applied entry."""
        assert self.transport is not None and self.peer_clients is not None
        for info in machine.brokers():
            if info.node_id != self.node_id:
                self.transport.add_peer(info.node_id, (info.host, info.port))
                self.peer_clients.add_peer(info.node_id, (info.host, info.port))
        for peer in self.transport.peer_ids:
            if machine.broker(peer) is None and machine.removed_incarnation(peer) is not None:
                self.transport.remove_peer(peer)
                self.peer_clients.remove_peer(peer)

    async def _start_parts(self, nursery: trio.Nursery) -> None:
        assert self.transport is not None
        if self._serve_peers:
            listeners = self._listeners or await trio.open_tcp_listeners(self.port, host=self.host)
            self._listeners = None  # a restart binds the same port again
            await nursery.start(trio.serve_listeners, self.transport.serve_inbound, listeners)
        self.peer_clients = PeerClients(
            nursery,
            self.node_id,
            self.peers,
            request_timeout_ms=self.config.controller.command_timeout_ms,
            login=self.peer_login,
            ssl_context=self._peer_tls,
        )
        await nursery.start(self.transport.run)
        await nursery.start(self.ticker.run)
        await nursery.start(self.replicas.run)
        self.controller.add_listener(self._learn_peers)
        self.controller.add_listener(self.replicas.reconcile)
        await nursery.start(self.controller.run)
        self.membership = MembershipService(
            self.controller,
            voter_count_target=len(self.voters),
            interval_ms=self.config.controller.membership_check_interval_ms,
        )
        await nursery.start(self.membership.run)
        assert self._reassignments is not None
        await nursery.start(self._reassignments.run)

    def _close(self, store: KvStore, logs: LogManager) -> None:
        if self._clean and self._controller is not None:
            # Every task has stopped: the state is between entries, as a snapshot must be.
            self._controller.save_snapshot()
        logs.close(clean=self._clean)
        store.close()

    async def resign(self, timeout_s: float) -> int:
        """Before a clean stop: hand this broker's partition leaderships, then the controller's,
        to caught-up peers (bounded by `timeout_s`). Returns the partitions still led."""
        deadline = trio.current_time() + timeout_s
        # SHUTTING_DOWN first, so that no peer hands a preferred leadership back to us meanwhile.
        self.shutting_down = True
        endpoint = self.router.controller_of(self.controller.leader_id)
        if endpoint is not None and self.broker_epoch is not None:
            with trio.move_on_at(deadline), contextlib.suppress(BrokerError):
                await endpoint.heartbeat(
                    self.node_id, self.broker_epoch, want_active=False, shutting_down=True
                )
        remaining = await self.replicas.resign_leaderships(deadline - trio.current_time())
        driver = self.controller.driver
        target = handover_target(driver) if self.controller.is_leader else None
        if target is not None:
            with contextlib.suppress(BrokerError):
                driver.transfer_leadership(target)
            # A stopped driver raises its stop error: nothing is left to hand over then.
            with trio.move_on_at(deadline), contextlib.suppress(BrokerError):
                while self.controller.is_leader:
                    await driver.wait_changed()
        return remaining

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

    # --- membership ----------------------------------------------------------------------------

    async def _membership(self) -> None:
        """Register, become ACTIVE once caught up, then heartbeat for as long as the node runs
        (rule 2). Register again when the controller no longer knows this registration."""
        incarnation = random.SystemRandom().getrandbits(_INCARNATION_BITS)
        retry_s = self.config.controller.registration_retry_ms / 1000
        heartbeat_s = self.config.controller.heartbeat_interval_ms / 1000
        epoch: int | None = None
        asked_active = False
        next_heartbeat = trio.current_time()
        while True:
            driver_version = self.controller.driver.change_version
            applied_version = self.controller.changes.version
            machine = self.controller.machine
            if machine.removed_incarnation(self.node_id) == incarnation:
                logger.warning(
                    "node %d: this broker was decommissioned and removed from the cluster; stop it",
                    self.node_id,
                )
                await trio.sleep_forever()
            info = machine.broker(self.node_id)
            caught_up = epoch is not None and info is not None and info.broker_epoch == epoch
            if caught_up:
                self.replicas.metadata_caught_up()  # lets replica deletions go ahead
            if caught_up and info is not None and info.state is BrokerState.ACTIVE:
                self._became_active(info.broker_epoch)
            due = trio.current_time() >= next_heartbeat or (caught_up and not asked_active)
            # A joining broker knows no leader until it is a learner: the one it was told of.
            leader = self.controller.leader_id or self._controller_hint
            target = self.router.controller_of(leader) if due else None
            if target is not None:
                next_heartbeat = trio.current_time() + retry_s
                try:
                    if epoch is None:
                        epoch = await target.register_broker(
                            self.node_id, self.host, self.port, incarnation, self.endpoints
                        )
                        asked_active = False
                        continue
                    await target.heartbeat(
                        self.node_id,
                        epoch,
                        want_active=caught_up and not self.shutting_down,
                        shutting_down=self.shutting_down,
                    )
                    asked_active = caught_up
                    next_heartbeat = trio.current_time() + heartbeat_s
                except BrokerError as exc:
                    # No controller yet, a failover, a timeout: try again after a change.
                    logger.debug("node %d: membership: %s", self.node_id, exc)
                    if isinstance(exc, NotControllerError) and exc.leader_hint:
                        self._controller_hint = exc.leader_hint
                    if exc.code is ErrorCode.STALE_BROKER_EPOCH:
                        epoch = None
                        continue
            with trio.move_on_at(max(next_heartbeat, trio.current_time() + retry_s)):
                await self.wait_controller_change(driver_version, applied_version)

    def _became_active(self, epoch: int) -> None:
        if self.active.is_set() and self.broker_epoch == epoch:
            return
        self.broker_epoch = epoch
        self.active.set()
        self.changes.notify()
        logger.info("node %d: ACTIVE with broker epoch %d", self.node_id, epoch)

    async def _report_leader(
        self, topic: str, partition: int, leader: int, epoch: int, in_sync: tuple[int, ...]
    ) -> None:
        """A partition leader's report, sent to the controller leader (NOT_CONTROLLER if none)."""
        target = self.router.controller_of(self.controller.leader_id)
        if target is None:
            raise NotControllerError(self.node_id, self.controller.leader_id)
        await target.report_leader(topic, partition, leader, epoch, in_sync)

    async def _complete_reassignment(
        self, topic: str, partition: int, replicas: tuple[int, ...]
    ) -> None:
        """A partition leader's completion report, sent to the controller leader."""
        target = self.router.controller_of(self.controller.leader_id)
        if target is None:
            raise NotControllerError(self.node_id, self.controller.leader_id)
        await target.complete_reassignment(topic, partition, replicas)

    async def wait_controller_change(self, driver_version: int, applied_version: int) -> None:
        """Return at the next change of the metadata group (leader, role) or of the applied
        metadata since `controller.driver.change_version` and `controller.changes.version`."""
        await self.controller.wait_changed(driver_version, applied_version)
