"""The broker process: storage, services, the TCP listener and one task per client connection.

`Broker(config).run()` opens the data directory (LMDB metadata + partition logs), starts the
services (group-commit flusher, one durability pump per `flush.policy=always` partition, retention
sweeps, /metrics), listens, and reports its bound addresses through `task_status`. It runs until
`request_stop()`, then shuts down gracefully: stop accepting, stop reading requests, let in-flight
requests finish (long polls answer at once) within `shutdown_timeout_ms`, close connections, flush
every log and write the clean-shutdown markers.

Per connection (`_Connection`): the first frame each way is the handshake. Requests are then read
and handled *in arrival order* in the reader (appends and topic changes happen there, so pipelined
requests take effect in order); a handler that must wait (acks=all, long-poll fetch) returns a
`Deferred` that runs in its own task, at most `max_inflight_requests_per_connection` at once (the
reader stops reading when the limit is reached). Responses carry the request's correlation id and
may leave out of order. Every request passes one security hook on its way to the handler
(`broker/security/gate.py`: ACLs when the authorizer is on, quotas when any is set); a client over
its quota is not read from until its throttle time has passed.

Bad input never hurts the broker: a framing error (garbage, oversized, truncated-then-closed)
closes that connection with a logged reason; a wrong body shape or unsupported API gets an
INVALID_REQUEST / UNSUPPORTED_VERSION error response; a bad batch gets CORRUPT_MESSAGE for its
partition. An unexpected exception in a handler is logged and answered with UNKNOWN_SERVER_ERROR.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import trio

from broker.auth.service import (
    Authentication,
    AuthenticationSetupError,
    peer_login_of,
)
from broker.auth.users import keep_super_user
from broker.cluster.node import ClusterNode, node_config_of
from broker.cluster.serving import ClusterTopics, run_internal_service, track_replicas
from broker.config import BrokerConfig, parse_host_port
from broker.consumer_groups.service import (
    OFFSETS_TOPIC_CONFIGS,
    GroupService,
    ensure_offsets_topic,
    group_config_of,
)
from broker.handlers import HANDLERS, BrokerContext, Deferred, PartitionState
from broker.handlers.cluster import cluster_status, partition_metadata
from broker.handlers.produce import handle_produce
from broker.handlers.transactions import MARKER_TIMEOUT_S
from broker.internal_topics import OFFSETS_TOPIC, SHARE_STATE_TOPIC, TRANSACTION_STATE_TOPIC
from broker.kvstore import KeySpace, KvStore
from broker.listen_errors import cannot_listen
from broker.log.cleaner_service import cleaner_for, replica_candidates, single_node_candidates
from broker.log.flusher import LogFlusher
from broker.log.manager import LogManager
from broker.metrics import BrokerMetrics, PartitionSample
from broker.observability.raft_metrics import observe_raft_latencies
from broker.observability.scrape import TrioScrape
from broker.raft import wire
from broker.security.acl import AuthorizerConfig
from broker.security.gate import BrokerSecurity, ConnectionSecurity
from broker.security.quota import QuotaLimits
from broker.security.state import SecurityState
from broker.security.store import SecurityStore
from broker.share_groups.service import (
    SHARE_STATE_TOPIC_CONFIGS,
    ShareGroupService,
    ensure_share_state_topic,
)
from broker.share_groups.share_config import share_config_of
from broker.topics import TopicManager
from broker.transactions.markers import MarkerDelivery
from broker.transactions.producer_ids import ProducerIdAllocator
from broker.transactions.service import (
    TRANSACTION_STATE_TOPIC_CONFIGS,
    TransactionService,
    ensure_transaction_state_topic,
)
from broker.transactions.txn_config import TransactionConfig
from wire import codec
from wire.error_codes import BrokerError, ErrorCode
from wire.framing import (
    NEED_DATA,
    PROTOCOL_VERSION,
    ConnectionState,
    Frame,
    FrameConnection,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
)

logger = logging.getLogger(__name__)

METADATA_DIRECTORY = "meta.lmdb"
# Held (flock) while a broker uses the data directory.
LOCK_FILE = ".lock"


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerAddresses:
    """Where a running broker can be reached; `metrics` is None when metrics are disabled."""

    listen: tuple[str, int]
    metrics: tuple[str, int] | None

    def ready_line(self, node_id: int) -> str:
        """The readiness line `broker serve` prints (format: docs/protocol.md)."""
        metrics = f"{self.metrics[0]}:{self.metrics[1]}" if self.metrics else "-"
        return f"READY listen={self.listen[0]}:{self.listen[1]} metrics={metrics} node_id={node_id}"


class StartupError(Exception):
    """The broker cannot start: the message says what is wrong and what to do."""


def _lock_data_dir(data_dir: Path) -> int:
    """Take an exclusive lock on the data directory for the life of the process.

    Two brokers writing one directory would corrupt each other's segments; LMDB alone does not
    prevent it (it allows several processes). The lock is released when the fd is closed or the
    process dies.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot use data directory {data_dir}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StartupError(
            f"data directory {data_dir} is in use by another broker; stop it or choose another "
            "--data-dir"
        ) from None
    return fd


class Broker:
    """A single-node broker. `await nursery.start(broker.run)` returns its `BrokerAddresses`."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        recover_topics: bool = False,
        admin_password: str | None = None,
    ) -> None:
        config.validate()
        self.config = config
        # `--auth scram`: the first super-user's password (docs/security.md); never logged.
        self._admin_password = admin_password
        self.auth: Authentication | None = None
        # `broker serve --recover-topics`: re-register stray logs as topics (docs/storage.md).
        self.recover_topics = recover_topics
        self.metrics = BrokerMetrics()
        self._stop_requested = trio.Event()
        # Set when run() has returned, whatever the reason.
        self.stopped = trio.Event()
        self._connections: set[_Connection] = set()
        self._services: trio.Nursery | None = None
        self.context: BrokerContext | None = None
        self.addresses: BrokerAddresses | None = None

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def request_stop(self) -> None:
        """Begin the graceful shutdown; `run` returns once it is complete."""
        self._stop_requested.set()

    async def run(
        self, *, task_status: trio.TaskStatus[BrokerAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        data_dir = Path(self.config.data_dir)
        try:
            lock_fd = _lock_data_dir(data_dir)
            try:
                await self._run_locked(data_dir, task_status)
            finally:
                os.close(lock_fd)
        finally:
            self.stopped.set()

    async def _run_locked(self, data_dir: Path, task_status: trio.TaskStatus[Any]) -> None:
        if self.config.is_cluster:
            if self.recover_topics:
                raise StartupError(
                    "--recover-topics is for a single-node broker: a cluster member rebuilds "
                    "its metadata from the controller on its own (docs/storage.md)"
                )
            await self._run_cluster(data_dir, task_status)
            return
        # Bind first, as the cluster path does: a taken port fails at once, in one line, before
        # the logs are opened and recovered.
        listeners = await self._open_listeners()
        try:
            # Raises MetadataStoreError (naming the file and what to do) if it is damaged.
            store = KvStore.open(data_dir / METADATA_DIRECTORY, verify=True)
        except lmdb.Error as exc:
            raise StartupError(f"cannot open the metadata store in {data_dir}: {exc}") from exc
        clean = False
        logs: LogManager | None = None
        try:
            # Before the logs are opened: a start refused for want of the admin password is
            # then a clean one.
            self.auth = self._authentication(Authentication.for_single_node, store)
            topics = TopicManager(self.config, store, KeySpace.TOPICS)
            topics.load_records()
            logs = LogManager.open(data_dir, self.config.log, config_for=topics.config_for)
            logs.flush_recovered()
            await self._serve(topics, logs, task_status, store, listeners)
            clean = True
        finally:
            if logs is not None:
                # Flushes every log; with `clean`, writes the markers that skip recovery next time.
                logs.close(clean=clean)
            store.close()
            logger.info("broker stopped (%s shutdown)", "clean" if clean else "unclean")

    async def _serve(
        self,
        topics: TopicManager,
        logs: LogManager,
        task_status: trio.TaskStatus[Any],
        store: KvStore | None = None,
        listeners: list[trio.SocketListener] | None = None,
    ) -> None:
        flusher = LogFlusher(logs.logs, on_fsync=self.metrics.fsync_done)
        context = BrokerContext(self.config, topics, flusher, self.metrics)
        self.context = context
        assert self.auth is not None
        context.users = self.auth.users
        assert store is not None, "a single node keeps its ACLs and quotas in its store"
        security_store = SecurityStore(store)
        context.security_store = security_store
        context.security = self._security(lambda: security_store.state)
        async with trio.open_nursery() as services:
            self._services = services
            await services.start(flusher.run)
            topics.on_partition_added = self._partition_added
            topics.on_partition_removed = self._partition_removed
            topics.attach_logs(logs, recover=self.recover_topics)
            self.metrics.stray_logs.set_function(lambda: len(topics.stray_logs))
            # Consumer groups: the internal offsets topic, then the coordinators over it.
            ensure_offsets_topic(topics, self.config.offsets_topic_partitions)
            context.producer_ids = ProducerIdAllocator(store, self.config.node_id)
            groups = GroupService(context, config=group_config_of(self.config), store=store)
            await services.start(groups.run)
            context.groups = groups
            self.metrics.watch_groups(lambda: groups.metrics_snapshot)
            # Transactions: the internal state topic, then the coordinators over it.
            ensure_transaction_state_topic(topics, self.config.transaction_state_topic_partitions)
            transactions = self._transaction_service(context, store)
            await services.start(transactions.run)
            self._transactions_started(context, transactions)
            # Share groups: the internal state topic, then the coordinators over it.
            ensure_share_state_topic(topics, self.config.share_state_topic_partitions)
            share_groups = self._share_group_service(context)
            await services.start(share_groups.run)
            self._share_groups_started(context, share_groups)
            services.start_soon(self._retention_loop, logs.apply_retention)
            if self.config.log_cleaner_enabled:
                services.start_soon(cleaner_for(self.config, single_node_candidates(logs)).run)
            metrics_address = self._start_metrics(context)
            try:
                await self._listen(context, metrics_address, task_status, listeners)
            finally:
                self.metrics.close()
            services.cancel_scope.cancel()

    async def _run_cluster(self, data_dir: Path, task_status: trio.TaskStatus[Any]) -> None:
        """Cluster mode: a `ClusterNode` owns storage and replication; one port serves clients
        and peers (Raft links are handed to the node's transport)."""
        config = self.config
        listeners = await self._open_listeners()
        bound = listeners[0].socket.getsockname()
        host = parse_host_port("listen", config.listen)[0]
        advertised = (
            parse_host_port("advertised_listen", config.advertised_listen)
            if config.advertised_listen
            else (host, int(bound[1]))
        )
        node = ClusterNode(
            config.node_id,
            advertised,
            config.peer_addresses,
            data_dir,
            node_config_of(config),
            serve_peers=False,
            controller_voters=config.controller_voter_ids,
            bootstrap=config.bootstrap_addresses,
            peer_login=peer_login_of(config, self._admin_password),
        )
        context = BrokerContext(config, ClusterTopics(node, config.log), None, self.metrics)
        context.cluster = node
        context.security = self._security(lambda: node.controller.machine.security)
        self.context = context
        self.auth = self._authentication(Authentication.for_cluster, node)
        context.users = self.auth.users
        async with trio.open_nursery() as services:
            self._services = services
            context.spawn = services.start_soon
            await services.start(node.run)
            if config.auth_enabled and self._admin_password:
                services.start_soon(
                    keep_super_user, node, config.super_users[0], self._admin_password
                )
            context.producer_ids = ProducerIdAllocator(node.store, config.node_id)
            track_replicas(node, context, services)
            services.start_soon(self._retention_loop, node.replicas.apply_retention)
            if config.log_cleaner_enabled:
                services.start_soon(cleaner_for(config, replica_candidates(node.replicas)).run)

            def groups_started(groups: GroupService) -> None:
                context.groups = groups
                self.metrics.watch_groups(lambda: groups.metrics_snapshot)

            await services.start(
                run_internal_service,
                node,
                OFFSETS_TOPIC,
                config.offsets_topic_partitions,
                OFFSETS_TOPIC_CONFIGS,
                lambda: GroupService(context, config=group_config_of(config)),
                groups_started,
            )
            await services.start(
                run_internal_service,
                node,
                TRANSACTION_STATE_TOPIC,
                config.transaction_state_topic_partitions,
                TRANSACTION_STATE_TOPIC_CONFIGS,
                lambda: self._transaction_service(context, node.store),
                lambda service: self._transactions_started(context, service),
            )
            await services.start(
                run_internal_service,
                node,
                SHARE_STATE_TOPIC,
                config.share_state_topic_partitions,
                SHARE_STATE_TOPIC_CONFIGS,
                lambda: self._share_group_service(context),
                lambda service: self._share_groups_started(context, service),
            )
            scrape = TrioScrape.current()
            self.metrics.watch_cluster(lambda: scrape.run(lambda: cluster_status(context)))
            self.metrics.watch_cluster_node(scrape, node)
            services.start_soon(observe_raft_latencies, node, *self.metrics.raft_observers())
            metrics_address = self._start_metrics(context)
            try:
                await self._listen(context, metrics_address, task_status, listeners)
            finally:
                self.metrics.close()
            services.cancel_scope.cancel()
        logger.info("broker stopped (clean shutdown)")

    def _authentication(self, build: Callable[..., Authentication], where: Any) -> Authentication:
        try:
            return build(self.config, where, self._admin_password, self.metrics)
        except AuthenticationSetupError as exc:
            raise StartupError(str(exc)) from None

    def _transaction_service(self, context: BrokerContext, store: Any) -> TransactionService:
        config = self.config
        return TransactionService(
            context,
            config=TransactionConfig(
                transaction_timeout_ms_max=config.transaction_max_timeout_ms,
                transactional_id_expiration_ms=config.transactional_id_expiration_ms,
                timeout_check_interval_ms=config.transaction_timeout_check_interval_ms,
            ),
            allocate_producer_id=context.producer_ids.allocate,
            write_markers=MarkerDelivery(
                context,
                timeout_s=MARKER_TIMEOUT_S,
                leader_of=lambda ctx, topic, p: partition_metadata(ctx, topic, p).leader_id,
            ).deliver,
            store=store,
        )

    def _security(self, state_of: Callable[[], SecurityState]) -> BrokerSecurity:
        """The ACL and quota hook every request passes (docs/security.md)."""
        return BrokerSecurity(
            enabled=self.config.authorizer_enabled,
            authorizer=AuthorizerConfig(
                super_users=self.config.super_user_set,
                allow_everyone_if_no_acl_found=self.config.allow_everyone_if_no_acl_found,
            ),
            quota_limits=QuotaLimits(
                burst_s=self.config.quota_burst_ms / 1000,
                throttle_ms_max=self.config.quota_throttle_ms_max,
                bucket_count_max=self.config.quota_bucket_count_max,
            ),
            state_of=state_of,
            on_denied=self.metrics.authorization_denied,
        )

    def _share_group_service(self, context: BrokerContext) -> ShareGroupService:
        return ShareGroupService(
            context,
            config=share_config_of(self.config),
            produce_here=handle_produce,
            leader_of=lambda ctx, topic, p: partition_metadata(ctx, topic, p).leader_id,
        )

    def _share_groups_started(self, context: BrokerContext, service: ShareGroupService) -> None:
        context.share_groups = service
        self.metrics.watch_share_groups(lambda: service.metrics_snapshot)

    def _transactions_started(self, context: BrokerContext, service: TransactionService) -> None:
        context.transactions = service
        self.metrics.watch_transactions(lambda: service.metrics_snapshot)

    def _start_metrics(self, context: BrokerContext) -> tuple[str, int] | None:
        # Read at scrape time in the trio thread (the producer state is not thread-safe): an idle
        # broker nobody scrapes spends nothing here.
        scrape = TrioScrape.current()

        def samples() -> list[PartitionSample]:
            return [
                PartitionSample(
                    state.topic,
                    state.partition,
                    state.log.size_bytes,
                    state.log.log_start_offset,
                    state.log.log_end_offset,
                    state.high_watermark,
                    int(state.log.producers.last_stable_offset(state.high_watermark))
                    if state.is_leader
                    else -1,
                )
                for state in context.partitions.values()
            ]

        self.metrics.watch_partitions(lambda: scrape.run(samples) or [])
        if not self.config.metrics_listen:
            return None
        host, port = parse_host_port("metrics_listen", self.config.metrics_listen)
        try:
            return self.metrics.serve(host, port)
        except OSError as exc:
            role, option = "/metrics", "--metrics-listen ('' disables it)"
            raise StartupError(
                cannot_listen(role, self.config.metrics_listen, option, exc)
            ) from None

    async def _open_listeners(self) -> list[trio.SocketListener]:
        host, port = parse_host_port("listen", self.config.listen)
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            # In a cluster the one port serves clients and the other brokers' Raft links.
            role = "clients and peers" if self.config.is_cluster else "clients"
            raise StartupError(cannot_listen(role, self.config.listen, "--listen", exc)) from None

    async def _listen(
        self,
        context: BrokerContext,
        metrics_address: tuple[str, int] | None,
        task_status: trio.TaskStatus[Any],
        listeners: list[trio.SocketListener] | None = None,
    ) -> None:
        host = parse_host_port("listen", self.config.listen)[0]
        listeners = listeners or await self._open_listeners()
        bound = listeners[0].socket.getsockname()
        self.addresses = BrokerAddresses((host, int(bound[1])), metrics_address)
        if self.config.advertised_listen:
            context.advertised = parse_host_port("advertised_listen", self.config.advertised_listen)
        else:
            context.advertised = self.addresses.listen
        async with trio.open_nursery() as connections:
            accepting = trio.CancelScope()
            connections.start_soon(self._accept, listeners, connections, accepting)
            logger.info(
                "broker %d listening on %s:%d, data in %s, metrics on %s",
                self.config.node_id,
                *self.addresses.listen,
                Path(self.config.data_dir).resolve(),
                f"http://{metrics_address[0]}:{metrics_address[1]}/metrics"
                if metrics_address
                else "(disabled)",
            )
            task_status.started(self.addresses)
            await self._stop_requested.wait()
            if context.cluster is not None:
                # Controlled shutdown: leaderships move while the peer links still work.
                still = await context.cluster.resign(
                    self.config.controlled_shutdown_timeout_ms / 1000
                )
                logger.info("stopping: leaderships handed over (%d not moved)", still)
            logger.info("stopping: no new connections; finishing in-flight requests")
            accepting.cancel()
            context.stopping = True
            context.wake_all()
            if context.groups is not None:
                context.groups.unload_all()  # waiting joins and syncs answer at once
            if context.transactions is not None:
                context.transactions.unload_all()
            if context.share_groups is not None:
                context.share_groups.unload_all()
            for connection in list(self._connections):
                connection.stop_reading()
            # Whatever is still running when the grace period ends is cancelled.
            connections.cancel_scope.deadline = (
                trio.current_time() + self.config.shutdown_timeout_ms / 1000
            )

    async def _accept(
        self, listeners: list[trio.SocketListener], nursery: trio.Nursery, scope: trio.CancelScope
    ) -> None:
        with scope:
            await trio.serve_listeners(self._handle_stream, listeners, handler_nursery=nursery)

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        assert self.context is not None
        if len(self._connections) >= self.config.max_connections or self.context.stopping:
            logger.warning(
                "refusing a connection: %d connections open (max_connections)",
                len(self._connections),
            )
            await stream.aclose()
            return
        connection = _Connection(self, self.context, stream)
        self._connections.add(connection)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        try:
            await connection.run()
        except Exception:
            # One connection's failure must not take the broker down with it.
            logger.exception("connection from %s failed", connection.peer)
        finally:
            self._connections.discard(connection)
            self.metrics.connections.dec()

    # --- services ---------------------------------------------------------------------------------

    def _partition_added(self, topic: str, partition: int, log: Any) -> None:
        assert self.context is not None and self._services is not None
        state = self.context.add_partition(topic, partition, log)
        if state.waits_for_fsync:
            self._services.start_soon(self._durability_pump, state)

    def _partition_removed(self, topic: str, partition: int, log: Any) -> None:
        assert self.context is not None
        state = self.context.partitions.get((topic, partition))
        self.context.remove_partition(topic, partition)
        if state is not None:
            state.durability_wanted.set()  # lets its pump see `removed` and end
        if log is not None and isinstance(self.context.flusher, LogFlusher):
            self.context.flusher.forget(log)
        if self.context.topics.get(topic) is None:
            self.metrics.forget_topic(topic)

    async def _durability_pump(self, state: PartitionState) -> None:
        """Fsync appends nobody awaits (acks 0/1 under `always`), so the high watermark moves."""
        assert self.context is not None
        while True:
            await state.durability_wanted.wait()
            state.durability_wanted = trio.Event()
            if state.removed:
                return
            try:
                await self.context.flusher.wait_durable(state.log, state.log.log_end_offset)
            except (BrokerError, OSError) as exc:
                logger.error(
                    "%s-%d: cannot make appends durable: %s", state.topic, state.partition, exc
                )
                return
            state.notify()

    async def _retention_loop(self, apply_retention: Callable[[], int]) -> None:
        interval_s = self.config.retention_check_interval_ms / 1000
        while True:
            await trio.sleep(interval_s)
            try:
                deleted = apply_retention()
            except (OSError, lmdb.Error) as exc:
                logger.error("retention sweep failed: %s", exc)
                continue
            if deleted:
                logger.info("retention deleted %d segment(s)", deleted)


class _Connection:
    """One client connection: handshake, then requests in order, deferred replies in tasks."""

    def __init__(self, broker: Broker, context: BrokerContext, stream: trio.SocketStream) -> None:
        config = broker.config
        self.broker = broker
        self.context = context
        self.stream = stream
        self.frames = FrameConnection(Role.SERVER, max_frame_bytes=config.max_frame_bytes)
        self.send_lock = trio.Lock()
        # Framed responses not yet written: coalesced into one write (one syscall, one wake-up of
        # the client) when several are ready together, bounded by send_buffer_bytes.
        self._outgoing: list[bytes] = []
        self._outgoing_bytes = 0
        self.inflight = trio.Semaphore(config.max_inflight_requests_per_connection)
        self.peer = _peer_name(stream)
        # Who this connection is (`auth.principal`: "User:NAME", "User:ANONYMOUS" with auth off).
        assert broker.auth is not None
        self.auth = broker.auth.session(self.peer)
        # Principal, client id and quota mute; authentication sets `security.principal`.
        self.security: ConnectionSecurity = context.security.connection(_peer_host(stream))
        self._stopping = False
        self._receive_scope: trio.CancelScope | None = None
        # Set while this connection is a Raft peer link (cluster mode): cancelled at shutdown.
        self._peer_scope: trio.CancelScope | None = None

    def stop_reading(self) -> None:
        """Graceful shutdown: read no more requests; in-flight ones still get their replies."""
        self._stopping = True
        for scope in (self._receive_scope, self._peer_scope):
            if scope is not None:
                scope.cancel()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as tasks:
                try:
                    await self._read_requests(tasks)
                except RemoteProtocolError as exc:
                    self.broker.metrics.protocol_errors.inc()
                    logger.warning("closing connection from %s: %s", self.peer, exc)
                    tasks.cancel_scope.cancel()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    logger.debug("connection from %s lost while reading: %s", self.peer, exc)
                    tasks.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            # A reply task found the client gone: nothing to answer any more.
            logger.debug("connection from %s lost while replying: %s", self.peer, group.exceptions)
        finally:
            await self.stream.aclose()

    async def _next_frame(self) -> Frame | None:
        """The next frame, or None at end of stream or when stopping."""
        while True:
            if self.frames.state is ConnectionState.ERROR:
                return None  # a reply could not be written: the connection is finished
            frame = self.frames.next_frame()
            if frame is not NEED_DATA:
                assert isinstance(frame, Frame)
                return frame
            # About to wait for the client: write the replies of everything read so far.
            await self._flush()
            with trio.CancelScope() as scope:
                self._receive_scope = scope
                if self._stopping:
                    return None
                data = await self.stream.receive_some(self.broker.config.receive_buffer_bytes)
            self._receive_scope = None
            if scope.cancelled_caught or not data:
                return None
            self.frames.receive_data(data)

    async def _read_requests(self, tasks: trio.Nursery) -> None:
        frame = await self._next_frame()
        if frame is None:
            return
        if await self._serve_raft_link(frame) or not await self._handshake(frame):
            return
        while True:
            if self.security.muted:
                # A quota throttle: write the replies (the throttled one is not held back), then
                # read nothing until it has passed, or the broker stops.
                await self._flush()
                with trio.CancelScope() as self._receive_scope:
                    if not self._stopping:
                        await self.security.wait_unmuted()
            frame = await self._next_frame()
            if frame is None:
                break
            started = time.perf_counter()
            if self.auth.intercepts(frame):
                # The login, or a request refused before it (broker/auth/session.py).
                answer = self.auth.handle(frame)
                # ACLs and quotas apply to whom the login proved this connection to be.
                self.security.principal = self.auth.principal
                await self._reply(frame, answer.response, started)
                if answer.close:
                    await self._flush()
                    return
                continue
            if await self._serve_raft_link(frame):
                return
            reply = self._dispatch(frame)
            if isinstance(reply, Deferred):
                # Bounded: at the limit, stop reading until a deferred reply is sent.
                await self.inflight.acquire()
                tasks.start_soon(self._finish_deferred, frame, reply, started)
            else:
                await self._reply(frame, reply, started)

    async def _serve_raft_link(self, frame: Frame) -> bool:
        """Hand a peer broker's Raft link to the node's transport (True: it owned the
        connection). With auth on, only after the peer logged in as a super-user (the Raft
        link's connector logs in first: wire.sasl_client.open_logged_in_stream)."""
        node = self.context.cluster
        if node is None or not wire.is_raft_handshake(frame.header):
            return False
        if self.auth.enabled and not (
            self.auth.authenticated and self.broker.config.is_super_user(self.auth.principal)
        ):
            logger.warning(
                "refusing a raft link from %s: not logged in as a super-user (%s)",
                self.peer,
                self.auth.principal,
            )
            return True
        with trio.CancelScope() as self._peer_scope:
            if not self._stopping:
                await node.transport.serve_inbound(
                    self.stream, frames=self.frames, first_frame=frame
                )
        return True

    async def _handshake(self, frame: Frame) -> bool:
        """Answer the client's handshake; False (then close) if it is unusable."""
        try:
            request = codec.decode_request(frame.header, frame.payload)
        except BrokerError as exc:
            await self._send_error(frame, exc.code, f"bad handshake: {exc.message}")
            return False
        assert isinstance(request, codec.HandshakeRequest)
        config = self.broker.config
        ok = request.protocol_version == PROTOCOL_VERSION
        response = codec.HandshakeResponse(
            node_id=config.node_id,
            protocol_version=PROTOCOL_VERSION,
            apis=codec.supported_apis(),
            max_frame_bytes=config.max_frame_bytes,
            sasl_mechanisms=self.auth.handshake_mechanisms,
            error=ErrorCode.NONE if ok else ErrorCode.UNSUPPORTED_VERSION,
            error_message=""
            if ok
            else f"protocol version {request.protocol_version} is not supported; "
            f"this broker speaks {PROTOCOL_VERSION}",
        )
        await self._send(*codec.encode_response(response, correlation_id=frame.correlation_id))
        await self._flush()
        if ok:
            self.security.client_id = request.client_id
            logger.debug("client %r connected from %s", request.client_id, self.peer)
        return ok

    def _dispatch(self, frame: Frame) -> Any:
        """Decode and run the handler; returns a response, None, a Deferred or a BrokerError."""
        try:
            request = codec.decode_request(frame.header, frame.payload)
            handler = HANDLERS.get(type(request))
            if handler is None:
                raise BrokerError(
                    ErrorCode.INVALID_REQUEST,
                    "the handshake is sent once, as the first frame of a connection",
                )
            return self.security.handle(request, handler, self.context)
        except BrokerError as exc:
            return exc
        except AssertionError:
            raise
        except Exception as exc:
            logger.exception("handler for %r failed", frame.api)
            return BrokerError(ErrorCode.UNKNOWN_SERVER_ERROR, f"the broker failed: {exc!r}")

    async def _finish_deferred(self, frame: Frame, deferred: Deferred, started: float) -> None:
        try:
            try:
                reply = await deferred.run()
            except BrokerError as exc:
                reply = exc
            except Exception as exc:
                logger.exception("deferred %r reply failed", frame.api)
                reply = BrokerError(ErrorCode.UNKNOWN_SERVER_ERROR, f"the broker failed: {exc!r}")
            await self._reply(frame, reply, started)
            # Other replies woken together (one group commit) join this write while the lock's
            # checkpoint lets them run.
            await self._flush()
        finally:
            self.inflight.release()

    async def _reply(self, frame: Frame, reply: Any, started: float) -> None:
        api = frame.api
        errors: list[str] = []
        if isinstance(reply, BrokerError):
            errors.append(reply.code.name)
            await self._send_error(frame, reply.code, reply.message)
        elif reply is not None:
            errors.extend(_partition_errors(reply))
            header, payload = codec.encode_response(
                reply,
                correlation_id=frame.correlation_id,
                version=codec.header_version(frame.header),
            )
            await self._send(header, payload)
        self.broker.metrics.request_done(api or "unknown", time.perf_counter() - started, errors)

    async def _send_error(self, frame: Frame, code: ErrorCode, message: str) -> None:
        header, payload = codec.encode_error_response(
            frame.api or "unknown",
            correlation_id=frame.correlation_id,
            error=code,
            error_message=message,
            version=codec.header_version(frame.header),
        )
        await self._send(header, payload)

    async def _send(self, header: dict[str, Any], payload: bytes) -> None:
        """Frame a reply and queue it; written by `_flush` (at once if the queue is full)."""
        if self.frames.state is ConnectionState.ERROR:
            return  # the connection is being closed after a protocol error
        try:
            data = self.frames.send(header, payload)
        except LocalProtocolError:
            logger.exception("could not frame a response to %s", self.peer)
            raise
        # No await between framing and queueing: frames stay whole and in framing order.
        self._outgoing.append(data)
        self._outgoing_bytes += len(data)
        if self._outgoing_bytes >= self.broker.config.send_buffer_bytes:
            await self._flush()

    async def _flush(self) -> None:
        """Write every queued reply in one `send_all`."""
        async with self.send_lock:
            if not self._outgoing or self.frames.state is ConnectionState.ERROR:
                return
            outgoing = self._outgoing
            data = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
            self._outgoing = []
            self._outgoing_bytes = 0
            try:
                await self.stream.send_all(data)
            except BaseException:
                self.frames.send_failed()
                raise


def _partition_errors(response: Any) -> list[str]:
    """Error names inside a response, for the error counter."""
    items: tuple[Any, ...] = getattr(response, "partitions", None) or getattr(
        response, "topics", ()
    )
    return [item.error.name for item in items if item.error is not ErrorCode.NONE]


def _peer_host(stream: trio.SocketStream) -> str:
    """The client's IP address, the `host` ACLs match."""
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, ValueError, IndexError):
        return "unknown"


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (OSError, ValueError):
        return "unknown peer"
    return f"{host}:{port}"


async def serve(
    config: BrokerConfig,
    *,
    on_ready: Callable[[BrokerAddresses], None],
    recover_topics: bool = False,
    admin_password: str | None = None,
) -> None:
    """Run a broker until SIGINT/SIGTERM, then shut it down gracefully (for `broker serve`).

    A second signal during the shutdown cancels what is left (an unclean shutdown: the logs are
    recovered on the next start).
    """
    broker = Broker(config, recover_topics=recover_topics, admin_password=admin_password)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if not broker.stop_requested:
                        logger.info("received %s: shutting down", signal.Signals(signum).name)
                        broker.request_stop()
                    else:
                        logger.warning(
                            "received %s again: stopping now", signal.Signals(signum).name
                        )
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            addresses = await nursery.start(broker.run)
            on_ready(addresses)
            await broker.stopped.wait()
            nursery.cancel_scope.cancel()
