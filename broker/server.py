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
A response too large for a frame is answered with MESSAGE_TOO_LARGE instead.

Listeners and limits (docs/security.md): one trio listener per configured listener (plaintext or
TLS, `broker/security/`); a TLS connection's handshake must finish, and every connection's first
frame arrive, within `handshake_timeout_ms`. Connections beyond `max_connections` or
`max_connections_per_ip` are closed at once; a connection idle for `connections_max_idle_ms` or
whose started request does not arrive whole within `request_arrival_timeout_ms` is closed; a
request's bytes are reserved from the broker-wide `queued_max_request_bytes` budget before they
are read (`broker/connection_limits.py`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from functools import partial
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
from broker.connection_limits import (
    ConnectionClosure,
    ConnectionLimits,
    ConnectionRefusal,
    RequestMemoryBudget,
)
from broker.consumer_groups.service import (
    OFFSETS_TOPIC_CONFIGS,
    GroupService,
    ensure_offsets_topic,
    group_config_of,
)
from broker.handlers import BrokerContext, Deferred, Handler, PartitionState, handlers_for
from broker.handlers.cluster import cluster_status, partition_metadata
from broker.handlers.produce import handle_produce
from broker.handlers.transactions import MARKER_TIMEOUT_S
from broker.internal_topics import OFFSETS_TOPIC, SHARE_STATE_TOPIC, TRANSACTION_STATE_TOPIC
from broker.kvstore import KeySpace, KvStore
from broker.listen_errors import cannot_listen
from broker.log.cleaner_service import cleaner_for, replica_candidates, single_node_candidates
from broker.log.flusher import LogFlusher
from broker.log.inline_fsync import InlineBudget, use_loop_budget
from broker.log.manager import LogManager
from broker.metrics import BrokerMetrics, PartitionSample
from broker.observability.raft_metrics import observe_raft_latencies
from broker.observability.scrape import TrioScrape
from broker.raft import wire
from broker.security.acl import AuthorizerConfig
from broker.security.gate import BrokerSecurity, ConnectionSecurity
from broker.security.listeners import ListenerSpec, TransportIdentity
from broker.security.quota import QuotaLimits
from broker.security.state import SecurityState
from broker.security.store import SecurityStore
from broker.security.tls import BrokerTls, certificate_subject
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
from wire.eager_io import acquire_now, write_now
from wire.error_codes import BrokerError, ErrorCode
from wire.framing import (
    NEED_DATA,
    PROTOCOL_VERSION,
    ConnectionState,
    Frame,
    FrameConnection,
    LocalProtocolError,
    OversizedFrameError,
    RemoteProtocolError,
    Role,
)
from wire.tls import handshake_failure

logger = logging.getLogger(__name__)

METADATA_DIRECTORY = "meta.lmdb"
# Held (flock) while a broker uses the data directory.
LOCK_FILE = ".lock"
# Bytes a connection reads before it knows the size of the next request, without reserving them
# from the request memory budget: enough for many small pipelined requests per read, and bounded
# per connection (a frame larger than this is reserved whole before the rest of it is read).
UNRESERVED_READ_BYTES = 16 * 1024
# How long closing a TLS connection may wait to send its close_notify to a peer that does not read.
CLOSE_TIMEOUT_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class OpenListener:
    """A configured listener and its bound sockets."""

    spec: ListenerSpec
    sockets: list[trio.SocketListener]

    @property
    def bound(self) -> tuple[str, int]:
        return self.spec.host, int(self.sockets[0].socket.getsockname()[1])


def advertised_of(
    config: BrokerConfig, listeners: list[OpenListener]
) -> dict[str, tuple[str, int]]:
    """Each open listener's advertised address, by name (`BrokerConfig.advertised_endpoints`)."""
    return config.advertised_endpoints({item.spec.name: item.bound for item in listeners})


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerAddresses:
    """Where a running broker can be reached; `metrics` is None when metrics are disabled."""

    listen: tuple[str, int]
    metrics: tuple[str, int] | None
    # Every listener by name, when `listeners` names them (empty: only `listen`).
    listeners: tuple[tuple[str, tuple[str, int]], ...] = ()

    def ready_line(self, node_id: int) -> str:
        """The readiness line `broker serve` prints (format: docs/protocol.md)."""
        metrics = f"{self.metrics[0]}:{self.metrics[1]}" if self.metrics else "-"
        named = "".join(f" listener.{name}={host}:{port}" for name, (host, port) in self.listeners)
        return (
            f"READY listen={self.listen[0]}:{self.listen[1]} metrics={metrics} "
            f"node_id={node_id}{named}"
        )


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
        # Reads the certificate files: ConfigError now, before anything starts, if they are bad.
        self.tls = BrokerTls.from_config(
            cert_file=config.tls_cert_file,
            key_file=config.tls_key_file,
            ca_file=config.tls_ca_file,
            client_auth=config.tls_client_auth,
        )
        self.connection_limits = ConnectionLimits(
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
        )
        self.request_memory = RequestMemoryBudget(config.queued_max_request_bytes)
        # `broker serve --recover-topics`: re-register stray logs as topics (docs/storage.md).
        self.recover_topics = recover_topics
        self.metrics = BrokerMetrics()
        self.metrics.request_memory_bytes.set_function(lambda: self.request_memory.used_bytes)
        self._stop_requested = trio.Event()
        # Set when run() has returned, whatever the reason.
        self.stopped = trio.Event()
        self._connections: set[_Connection] = set()
        # The handler table of each listener's connections (broker/handlers/__init__.py).
        self.handlers = {spec.name: handlers_for(spec.name) for spec in config.listener_specs}
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
        # The fsyncs this broker's event loop may run itself (broker/log/inline_fsync.py).
        use_loop_budget(InlineBudget(self.config.fsync_inline_share))
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
        listeners: list[OpenListener] | None = None,
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
        # Peers reach this broker on its inter-broker listener (docs/security.md); every
        # listener's advertised address is registered, so that clients are sent to theirs. One
        # listener registers none: its address is the registered one (as older brokers did).
        inter_broker = config.inter_broker_listener_spec
        advertised = advertised_of(config, listeners)
        node = ClusterNode(
            config.node_id,
            advertised[inter_broker.name],
            config.peer_addresses,
            data_dir,
            node_config_of(config),
            serve_peers=False,
            controller_voters=config.controller_voter_ids,
            bootstrap=config.bootstrap_addresses,
            peer_login=peer_login_of(config, self._admin_password),
            peer_tls=self.tls.peer_client if self.tls and inter_broker.is_tls else None,
            endpoints=[(name, *address) for name, address in advertised.items()]
            if len(advertised) > 1
            else (),
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
            self.metrics.watch_cluster(
                lambda: scrape.run(lambda: cluster_status(context, context.default_listener))
            )
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

    async def _open_listeners(self) -> list[OpenListener]:
        opened: list[OpenListener] = []
        inter_broker = self.config.inter_broker_listener_spec
        try:
            for spec in self.config.listener_specs:
                try:
                    sockets = await trio.open_tcp_listeners(spec.port, host=spec.host)
                except OSError as exc:
                    # In a cluster the inter-broker port serves the other brokers' Raft links too.
                    serves_peers = self.config.is_cluster and spec == inter_broker
                    role = "clients and peers" if serves_peers else "clients"
                    address, option = f"{spec.host}:{spec.port}", "--listen"
                    if self.config.listeners:
                        address, option = spec.describe(), "--listener"
                    raise StartupError(cannot_listen(role, address, option, exc)) from None
                opened.append(OpenListener(spec, sockets))
        except BaseException:
            for item in opened:
                for listener in item.sockets:
                    await trio.aclose_forcefully(listener)
            raise
        return opened

    async def _listen(
        self,
        context: BrokerContext,
        metrics_address: tuple[str, int] | None,
        task_status: trio.TaskStatus[Any],
        listeners: list[OpenListener] | None = None,
    ) -> None:
        listeners = listeners or await self._open_listeners()
        inter_broker = self.config.inter_broker_listener_spec
        primary = next(item for item in listeners if item.spec == inter_broker)
        self.addresses = BrokerAddresses(
            primary.bound,
            metrics_address,
            tuple((item.spec.name, item.bound) for item in listeners)
            if self.config.listeners
            else (),
        )
        context.advertised = advertised_of(self.config, listeners)
        async with trio.open_nursery() as connections:
            accepting = trio.CancelScope()
            connections.start_soon(self._accept, listeners, connections, accepting)
            logger.info(
                "broker %d listening on %s, data in %s, metrics on %s",
                self.config.node_id,
                _describe_listeners(listeners, named=bool(self.config.listeners)),
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
        self, listeners: list[OpenListener], nursery: trio.Nursery, scope: trio.CancelScope
    ) -> None:
        with scope:
            async with trio.open_nursery() as accepting:
                for item in listeners:
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners,
                            partial(self._handle_stream, item.spec),
                            item.sockets,
                            handler_nursery=nursery,
                        )
                    )

    async def _handle_stream(self, spec: ListenerSpec, stream: trio.SocketStream) -> None:
        assert self.context is not None
        peer = _peer_name(stream)
        ip = peer.rpartition(":")[0]
        refusal = (
            ConnectionRefusal.STOPPING
            if self.context.stopping
            else self.connection_limits.try_open(ip)
        )
        if refusal is not None:
            self.metrics.connections_refused.labels(refusal.value).inc()
            logger.warning(
                "refusing a connection from %s: %s (%d open, %d from that address)",
                peer,
                refusal.value,
                self.connection_limits.open_count,
                self.connection_limits.open_from(ip),
            )
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._serve_connection(spec, stream, peer)
        finally:
            self.connection_limits.closed(ip)

    async def _serve_connection(
        self, spec: ListenerSpec, stream: trio.SocketStream, peer: str
    ) -> None:
        assert self.context is not None
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        deadline = trio.current_time() + self.config.handshake_timeout_ms / 1000
        try:
            secured = await self._secure(spec, stream, peer, deadline)
            if secured is None:
                return
            connection = _Connection(self, self.context, *secured, setup_deadline=deadline)
            self._connections.add(connection)
            try:
                await connection.run()
            except Exception:
                # One connection's failure must not take the broker down with it.
                logger.exception("connection from %s failed", connection.peer)
            finally:
                self._connections.discard(connection)
        finally:
            self.metrics.connections.dec()

    async def _secure(
        self, spec: ListenerSpec, stream: trio.SocketStream, peer: str, deadline: float
    ) -> tuple[trio.abc.Stream, TransportIdentity] | None:
        """The stream to speak the protocol on, TLS done on a TLS listener, and what it proved
        of the peer; None (the stream closed) if the TLS handshake failed or took too long."""
        if not spec.is_tls:
            return stream, TransportIdentity(spec.name, "PLAINTEXT", peer)
        assert self.tls is not None  # config validation: a tls:// listener needs a certificate
        tls_stream = trio.SSLStream(stream, self.tls.server, server_side=True)
        failure: BaseException | None = None
        with trio.move_on_at(deadline) as scope:
            try:
                await tls_stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                failure = exc
        if failure is None and not scope.cancelled_caught:
            subject = certificate_subject(tls_stream)
            return tls_stream, TransportIdentity(spec.name, "SSL", peer, subject)
        closure = (
            ConnectionClosure.HANDSHAKE_TIMEOUT
            if failure is None
            else ConnectionClosure.TLS_HANDSHAKE_FAILED
        )
        self.metrics.connections_closed.labels(closure.value).inc()
        reason = (
            f"no TLS handshake within {self.config.handshake_timeout_ms} ms (handshake_timeout_ms)"
            if failure is None
            else handshake_failure(failure, server_side=True)
        )
        logger.info("closing connection from %s on listener %s: %s", peer, spec.name, reason)
        await trio.aclose_forcefully(stream)
        return None

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
    """One client connection: handshake, then requests in order, deferred replies in tasks.

    `transport` is what the transport proved of the peer (listener, PLAINTEXT/SSL, the mTLS
    certificate subject and its `principal`, which authenticates the connection on its own);
    `auth` the SASL session (broker/auth/); `security` the ACL and quota view of the principal.
    """

    def __init__(
        self,
        broker: Broker,
        context: BrokerContext,
        stream: trio.abc.Stream,
        transport: TransportIdentity,
        *,
        setup_deadline: float,
    ) -> None:
        config = broker.config
        self.broker = broker
        self.context = context
        self.stream = stream
        self.transport = transport
        # Metadata, FindCoordinator and ClusterStatus answer with this listener's addresses.
        self.handlers: dict[type[Any], Handler] = broker.handlers[transport.listener]
        self.frames = FrameConnection(Role.SERVER, max_frame_bytes=config.max_frame_bytes)
        self.send_lock = trio.Lock()
        # Framed responses not yet written: coalesced into one write (one syscall, one wake-up of
        # the client) when several are ready together, bounded by send_buffer_bytes.
        self._outgoing: list[bytes] = []
        self._outgoing_bytes = 0
        self.inflight = trio.Semaphore(config.max_inflight_requests_per_connection)
        self.peer = transport.peer_address
        # Who this connection is (`auth.principal`: "User:NAME", "User:ANONYMOUS" with auth off;
        # a verified mTLS client certificate proves it without a login).
        assert broker.auth is not None
        self.auth = broker.auth.session(self.peer)
        if transport.principal is not None:
            self.auth.authenticated_by_transport(transport.principal)
        # Principal, client id and quota mute for ACLs and quotas (broker/security/gate.py).
        self.security: ConnectionSecurity = context.security.connection(
            self.peer.rpartition(":")[0] or self.peer
        )
        self.security.principal = self.auth.principal
        self._stopping = False
        self._receive_scope: trio.CancelScope | None = None
        # Deadlines (docs/security.md): the first frame by `setup_deadline`; a started frame
        # within request_arrival_timeout_ms of its first bytes (`_frame_started`, waiting for
        # the memory budget included); otherwise connections_max_idle_ms.
        self._setup_deadline = setup_deadline
        self._handshaken = False
        self._frame_started: float | None = None
        self._idle_wait = False
        self.closed_by: ConnectionClosure | None = None
        # Bytes reserved from the broker's request memory budget for the frame being read.
        self._reserved_bytes = 0
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
                    if self.closed_by is not None:
                        # A deadline closes the connection: replies still running are dropped.
                        tasks.cancel_scope.cancel()
                except RemoteProtocolError as exc:
                    self.broker.metrics.protocol_errors.inc()
                    self.broker.metrics.connections_closed.labels(
                        ConnectionClosure.PROTOCOL_ERROR.value
                    ).inc()
                    logger.warning("closing connection from %s: %s", self.peer, exc)
                    tasks.cancel_scope.cancel()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    logger.debug("connection from %s lost while reading: %s", self.peer, exc)
                    tasks.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            # A reply task found the client gone: nothing to answer any more.
            logger.debug("connection from %s lost while replying: %s", self.peer, group.exceptions)
        finally:
            self._release(self._reserved_bytes)
            self._reserved_bytes = 0
            # Bounded: a TLS close_notify to a client that does not read must not hang here
            # (aclose closes the socket even when cancelled).
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self.stream.aclose()

    async def _next_frame(self) -> Frame | None:
        """The next frame, or None at end of stream, when stopping or when a deadline passed
        (`closed_by` says which). Its reservation is taken with `_take_reservation()`."""
        while True:
            if self.frames.state is ConnectionState.ERROR:
                return None  # a reply could not be written: the connection is finished
            frame = self.frames.next_frame()
            if frame is not NEED_DATA:
                assert isinstance(frame, Frame)
                self._frame_started = trio.current_time() if self.frames.buffered_bytes else None
                return frame
            # About to wait for the client: write the replies of everything read so far.
            await self._flush()
            if not await self._receive_more():
                return None

    async def _receive_more(self) -> bool:
        """Read more of the next frame, its memory reserved first if it is large; False at end
        of stream, when stopping, or when a deadline passed (logged, counted, `closed_by`)."""
        config = self.broker.config
        read_bytes = UNRESERVED_READ_BYTES
        pending = self.frames.pending_frame_bytes
        deadline, closure = self._receive_deadline()
        with trio.CancelScope(deadline=deadline) as scope:
            self._receive_scope = scope
            if self._stopping:
                return False
            if pending is not None and pending > UNRESERVED_READ_BYTES:
                if not self._reserved_bytes:
                    # Reading stops while the budget is used up (queued_max_request_bytes).
                    # The deadline runs meanwhile: a connection queued behind clients that
                    # stall is closed in time too, so the queue always drains.
                    await self.broker.request_memory.acquire(pending)
                    self._reserved_bytes = pending
                read_bytes = pending - self.frames.buffered_bytes
            data = await self.stream.receive_some(min(read_bytes, config.receive_buffer_bytes))
        self._receive_scope = None
        self._idle_wait = False
        if scope.cancelled_caught:
            if not self._stopping:
                self._deadline_passed(closure)
            return False
        if not data:
            return False
        if self.frames.state is ConnectionState.ERROR:
            # A reply task's write failed while this read waited (the client reset the
            # connection): the connection is finished, whatever else it sent.
            return False
        if self._frame_started is None:
            self._frame_started = trio.current_time()
        self.frames.receive_data(data)
        return True

    def _receive_deadline(self) -> tuple[float, ConnectionClosure]:
        """When the read about to start must end, and why the connection closes if it does."""
        config = self.broker.config
        if not self._handshaken:
            return self._setup_deadline, ConnectionClosure.HANDSHAKE_TIMEOUT
        if self._frame_started is not None:
            started = self._frame_started
            return started + config.request_arrival_timeout_ms / 1000, (
                ConnectionClosure.REQUEST_ARRIVAL
            )
        # Idle only with nothing in flight: a long poll or an acks=all wait is not idleness
        # (`_finish_deferred` starts the idle clock when the last one is answered).
        in_flight = self.inflight.value < config.max_inflight_requests_per_connection
        self._idle_wait = not in_flight
        if in_flight:
            return math.inf, ConnectionClosure.IDLE
        return trio.current_time() + config.connections_max_idle_ms / 1000, ConnectionClosure.IDLE

    def _deadline_passed(self, closure: ConnectionClosure) -> None:
        config = self.broker.config
        limit_ms = {
            ConnectionClosure.HANDSHAKE_TIMEOUT: config.handshake_timeout_ms,
            ConnectionClosure.REQUEST_ARRIVAL: config.request_arrival_timeout_ms,
            ConnectionClosure.IDLE: config.connections_max_idle_ms,
            ConnectionClosure.RESPONSE_WRITE: config.response_write_timeout_ms,
        }[closure]
        what = {
            ConnectionClosure.HANDSHAKE_TIMEOUT: "no handshake frame",
            ConnectionClosure.REQUEST_ARRIVAL: "a started request did not arrive whole",
            ConnectionClosure.IDLE: "idle",
            ConnectionClosure.RESPONSE_WRITE: "replies not read by the client",
        }[closure]
        self.closed_by = closure
        self.broker.metrics.connections_closed.labels(closure.value).inc()
        logger.info(
            "closing connection from %s: %s within %d ms (%s)",
            self.peer,
            what,
            limit_ms,
            closure.value,
        )

    def _take_reservation(self) -> int:
        """The budget bytes held for the frame just returned; the caller releases them once
        the request is answered."""
        reserved, self._reserved_bytes = self._reserved_bytes, 0
        return reserved

    def _release(self, reserved_bytes: int) -> None:
        self.broker.request_memory.release(reserved_bytes)

    async def _read_requests(self, tasks: trio.Nursery) -> None:
        frame = await self._next_frame()
        if frame is None:
            return
        # The handshake frame is small: its reservation (if any) is given back at once.
        self._release(self._take_reservation())
        self._handshaken = True
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
            reserved = self._take_reservation()
            started = time.perf_counter()
            try:
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
                    await acquire_now(self.inflight)
                    tasks.start_soon(self._finish_deferred, frame, reply, started, reserved)
                    reserved = 0  # released by _finish_deferred
                else:
                    await self._reply(frame, reply, started)
            finally:
                self._release(reserved)

    async def _serve_raft_link(self, frame: Frame) -> bool:
        """Hand a peer broker's Raft link to the node's transport (True: it owned the
        connection). With auth on, only after the peer logged in as a super-user (the Raft
        link's connector logs in first: wire.sasl_client.log_in_on_stream)."""
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
            logger.debug(
                "client %r connected from %s on listener %s (principal %s)",
                request.client_id,
                self.peer,
                self.transport.listener,
                self.auth.principal,
            )
        return ok

    def _dispatch(self, frame: Frame) -> Any:
        """Decode and run the handler; returns a response, None, a Deferred or a BrokerError."""
        try:
            request = codec.decode_request(frame.header, frame.payload)
            handler = self.handlers.get(type(request))
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

    async def _finish_deferred(
        self, frame: Frame, deferred: Deferred, started: float, reserved: int
    ) -> None:
        try:
            try:
                reply = await deferred.run()
            except BrokerError as exc:
                reply = exc
            except Exception as exc:
                logger.exception("deferred %r reply failed", frame.api)
                reply = BrokerError(ErrorCode.UNKNOWN_SERVER_ERROR, f"the broker failed: {exc!r}")
            await self._reply(frame, reply, started)
            # Written at once (`_flush` takes a free lock without a checkpoint), not joined with
            # the other replies one group commit woke: a pass for them to queue theirs first
            # measured slower (acks=all, 4 partitions: 716-736 k against 603-847 k records/s).
            await self._flush()
        finally:
            self._release(reserved)
            self.inflight.release()
            self._restart_idle_clock()

    def _restart_idle_clock(self) -> None:
        """The last reply in flight left while the reader waits for a new request: from now
        on that wait is idleness, bounded by connections_max_idle_ms."""
        config = self.broker.config
        scope = self._receive_scope
        if (
            scope is not None
            and self._handshaken
            and self._frame_started is None
            and self.inflight.value == config.max_inflight_requests_per_connection
            and scope.deadline == math.inf
        ):
            self._idle_wait = True
            scope.deadline = trio.current_time() + config.connections_max_idle_ms / 1000

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
        except OversizedFrameError as exc:
            # Nothing was framed and the stream is intact: answer with an error the client can
            # act on instead (the "wrong limit, with a traceback").
            api = header.get("api", "unknown")
            logger.warning("response to %s from %s is too large: %s", api, self.peer, exc)
            header, payload = codec.encode_error_response(
                str(api),
                correlation_id=int(header["correlation_id"]),
                error=ErrorCode.MESSAGE_TOO_LARGE,
                version=int(header.get("version", 1)),
                error_message=f"the response is too large to send: {exc}; ask for less (fewer "
                "topics or partitions, a smaller max_bytes)",
            )
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
        """Write every queued reply in one write (the rest, if the socket takes only part of
        it, with `send_all` under response_write_timeout_ms); a failed write ends the framing."""
        await acquire_now(self.send_lock)
        try:
            if not self._outgoing or self.frames.state is ConnectionState.ERROR:
                return
            outgoing = self._outgoing
            data = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
            self._outgoing = []
            self._outgoing_bytes = 0
            try:
                rest = write_now(self.stream, data)  # most often all of it: no await
                if rest:
                    await self._send_rest(rest)
            except BaseException:
                self.frames.send_failed()
                raise
        finally:
            self.send_lock.release()

    async def _send_rest(self, rest: bytes | memoryview) -> None:
        # A client that stops reading its replies must not hold them (and the requests in
        # flight behind them) in memory forever: response_write_timeout_ms.
        with trio.move_on_after(self.broker.config.response_write_timeout_ms / 1000) as scope:
            await self.stream.send_all(rest)
        if scope.cancelled_caught:
            self._deadline_passed(ConnectionClosure.RESPONSE_WRITE)
            raise trio.BrokenResourceError("the client does not read its replies")


def _describe_listeners(listeners: list[OpenListener], *, named: bool) -> str:
    """`HOST:PORT` (` (TLS)`) for the one default listener, `NAME=proto://HOST:PORT, ...` for
    named ones: the log line says what the command line said."""
    if not named:
        (item,) = listeners
        return f"{item.bound[0]}:{item.bound[1]}" + (" (TLS)" if item.spec.is_tls else "")
    return ", ".join(item.spec.describe(item.bound[1]) for item in listeners)


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
    """`HOST:PORT` of the peer (`unknown peer` if the socket cannot say)."""
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
