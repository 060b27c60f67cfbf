"""Prometheus metrics of one broker, served over HTTP on `/metrics`.

Each `BrokerMetrics` has its own `CollectorRegistry`, so several brokers in one process (tests, the
embedded broker) never share or clash. The server and handlers call plain methods here; cores never
import prometheus. Per-partition gauges (log size, end offset, high watermark) are read at scrape
time from a callback, so the hot path pays nothing for them.

Records are counted from batch headers' `record_count`: the broker never decodes records.

Threading: the HTTP endpoint is prometheus-client's own small server thread. It only reads: counter
updates are thread-safe in prometheus-client, and the partition, cluster, Raft and controller views
are computed in the trio thread at scrape time (broker/observability/scrape.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.observability.cluster_metrics import ControllerCollector
from broker.observability.raft_metrics import (
    KIND_METADATA,
    KIND_PARTITION,
    RaftCollector,
    RaftLatencyObserver,
    node_raft_sources,
)
from broker.observability.scrape import TrioScrape

logger = logging.getLogger(__name__)

# Request latency buckets in seconds: from 100 µs (a cached metadata answer) to 30 s (long polls).
LATENCY_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# fsync buckets in seconds: from 50 µs (a battery-backed cache) to 10 s (a disk in trouble).
FSYNC_BUCKETS_SECONDS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip


class PartitionSample(NamedTuple):
    topic: str
    partition: int
    size_bytes: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    # End of what read_committed consumers may read: HW minus it is the LSO lag.
    last_stable_offset: int = -1


class _PartitionCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[PartitionSample]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["topic", "partition"]
        size = GaugeMetricFamily("broker_log_size_bytes", "Bytes of a partition log", labels=labels)
        start = GaugeMetricFamily(
            "broker_log_start_offset", "First offset of a partition log", labels=labels
        )
        end = GaugeMetricFamily(
            "broker_log_end_offset", "Offset the next record of a partition gets", labels=labels
        )
        high = GaugeMetricFamily(
            "broker_high_watermark", "End of what consumers may read, per partition", labels=labels
        )
        lso_lag = GaugeMetricFamily(
            "broker_last_stable_offset_lag",
            "High watermark minus last stable offset: records read_committed consumers wait for "
            "(open transactions)",
            labels=labels,
        )
        try:
            samples = list(self._source())
        except Exception:  # a scrape racing a topic deletion must not kill the endpoint
            logger.exception("reading partition metrics failed")
            samples = []
        for sample in samples:
            key = [sample.topic, str(sample.partition)]
            size.add_metric(key, sample.size_bytes)
            start.add_metric(key, sample.log_start_offset)
            end.add_metric(key, sample.log_end_offset)
            high.add_metric(key, sample.high_watermark)
            if sample.last_stable_offset >= 0:
                lso_lag.add_metric(key, sample.high_watermark - sample.last_stable_offset)
        yield from (size, start, end, high, lso_lag)


class _ClusterCollector(Collector):
    """The facts of `broker-cli cluster status`, from a snapshot the trio thread refreshes (a
    `codec.ClusterStatusResponse`, or None before the first one)."""

    def __init__(self, source: Callable[[], Any]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._source()
        if status is None:
            return
        brokers = GaugeMetricFamily(
            "broker_cluster_brokers", "Registered brokers per state", labels=["state"]
        )
        counts: dict[str, int] = {"active": 0, "fenced": 0, "shutting_down": 0}
        for row in status.brokers:
            counts[row.state] = counts.get(row.state, 0) + 1
        for state, count in sorted(counts.items()):
            brokers.add_metric([state], count)
        yield brokers
        leaders = GaugeMetricFamily(
            "broker_cluster_partition_leaders", "Partitions each broker leads", labels=["node_id"]
        )
        for row in status.brokers:
            leaders.add_metric([str(row.node_id)], row.leader_count)
        yield leaders
        for name, documentation, value in (
            ("broker_cluster_controller_id", "The controller leader (-1: none)",
             status.controller_id),
            ("broker_cluster_metadata_index", "Metadata log index applied here",
             status.metadata_index),
            ("broker_cluster_partitions", "Partitions in the cluster", status.partition_count),
            ("broker_cluster_offline_partitions", "Partitions without a serving leader",
             len(status.offline_partitions)),
            ("broker_cluster_under_replicated_partitions",
             "Partitions with fewer in-sync replicas than replicas",
             len(status.under_replicated_partitions)),
            ("broker_cluster_preferred_leader_imbalance",
             "Partitions led by another broker than their preferred leader",
             status.preferred_leader_imbalance_count),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, documentation, value=value)


class _TransactionCollector(Collector):
    """The transaction coordinators' totals, from the service's snapshot (rebuilt in the trio
    thread about once a second; a scrape never touches the cores). Counters count since this
    broker last loaded the partitions it leads, so they restart after a failover."""

    def __init__(self, source: Callable[[], Any]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            snapshot = self._source()
        except Exception:
            logger.exception("reading transaction metrics failed")
            return
        for name, documentation, value in (
            ("broker_transactions_ongoing", "Transactions open on the coordinators here",
             snapshot.ongoing_count),
            ("broker_transactions_committed", "Transactions committed by the coordinators here",
             snapshot.commit_count),
            ("broker_transactions_aborted", "Transactions aborted by the coordinators here",
             snapshot.abort_count),
            ("broker_transactions_timed_out",
             "Transactions the coordinators here aborted past their timeout",
             snapshot.timeout_abort_count),
            ("broker_transactions_fenced_producers",
             "Producer instances fenced by a newer one with the same transactional id",
             snapshot.fenced_instance_count),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, documentation, value=value)


class _ShareGroupCollector(Collector):
    """Share groups (queues) per group and partition, from the share service's snapshot (rebuilt
    in the trio thread about once a second). `available` counts records waiting in the window
    and past it (the backlog); the age of the oldest is the queue's real lag. Totals are kept
    in the share state, so they survive failovers."""

    def __init__(self, source: Callable[[], Any]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            snapshot = self._source()
        except Exception:
            logger.exception("reading share group metrics failed")
            return
        labels = ["group", "topic", "partition"]
        families = {
            "in_flight": GaugeMetricFamily(
                "broker_share_partition_in_flight_records",
                "Records between the share-partition start and end offsets",
                labels=labels,
            ),
            "available": GaugeMetricFamily(
                "broker_share_partition_available_records",
                "Records waiting to be handed out (released, expired, or not fetched yet)",
                labels=labels,
            ),
            "acquired": GaugeMetricFamily(
                "broker_share_partition_acquired_records",
                "Records held by members (locked)",
                labels=labels,
            ),
            "oldest": GaugeMetricFamily(
                "broker_share_partition_oldest_available_age_seconds",
                "Age of the oldest record waiting to be handed out (0: none waits)",
                labels=labels,
            ),
            "redelivered": GaugeMetricFamily(
                "broker_share_partition_redelivered_records_total",
                "Deliveries after the first (retries)",
                labels=labels,
            ),
            "expired": GaugeMetricFamily(
                "broker_share_partition_lock_expired_records_total",
                "Records whose lock expired before the member acknowledged them",
                labels=labels,
            ),
            "dead": GaugeMetricFamily(
                "broker_share_partition_dead_lettered_records_total",
                "Records written to the group's dead-letter topic",
                labels=labels,
            ),
            "archived": GaugeMetricFamily(
                "broker_share_partition_archived_records_total",
                "Records given up on (rejected or out of deliveries), dead-lettered or not",
                labels=labels,
            ),
        }
        for group in snapshot.groups:
            for p in group.partitions:
                values = [group.group_id, p.topic_partition.topic, str(p.topic_partition.partition)]
                backlog = max(p.backlog, 0)
                age = (
                    max(snapshot.now_ms - p.oldest_available_ms, 0) / 1000
                    if p.oldest_available_ms >= 0 and (p.available or backlog)
                    else 0.0
                )
                for key, value in (
                    ("in_flight", p.in_flight),
                    ("available", p.available + backlog),
                    ("acquired", p.acquired),
                    ("oldest", age),
                    ("redelivered", p.redelivered_total),
                    ("expired", p.lock_expired_total),
                    ("dead", p.dead_lettered_total),
                    ("archived", p.archived_total),
                ):
                    families[key].add_metric(values, value)
        yield from families.values()


class _GroupCollector(Collector):
    """Consumer lag per group and partition, and the group cores' statistics().

    `source` returns the group service's latest snapshot (rebuilt in the trio thread about once a
    second), so a scrape never touches the cores themselves.
    """

    def __init__(self, source: Callable[[], Any]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily(
            "broker_consumer_group_lag",
            "Records between a group's committed offset and the partition's high watermark",
            labels=labels,
        )
        committed = GaugeMetricFamily(
            "broker_consumer_group_committed_offset",
            "A group's committed offset (the next record it will consume)",
            labels=labels,
        )
        per_partition = ["coordinator_partition"]
        groups = GaugeMetricFamily(
            "broker_consumer_groups", "Groups per state", labels=[*per_partition, "state"]
        )
        members = GaugeMetricFamily(
            "broker_consumer_group_members", "Group members", labels=per_partition
        )
        offsets = GaugeMetricFamily(
            "broker_consumer_group_offsets", "Committed offsets held", labels=per_partition
        )
        pending = GaugeMetricFamily(
            "broker_consumer_group_pending_writes",
            "Writes to __consumer_offsets awaiting durability",
            labels=per_partition,
        )
        rebalances = GaugeMetricFamily(
            "broker_consumer_group_rebalances",
            "Rebalances completed since the broker started",
            labels=per_partition,
        )
        try:
            snapshot = self._source()
        except Exception:
            logger.exception("reading group metrics failed")
            return
        for sample in snapshot.lag:
            key = [sample.group_id, sample.topic, str(sample.partition)]
            committed.add_metric(key, sample.committed_offset)
            if sample.lag >= 0:
                lag.add_metric(key, sample.lag)
        for partition, stats in snapshot.statistics:
            key = [str(partition)]
            for state, count in stats.groups_by_state:
                groups.add_metric([*key, state.value], count)
            members.add_metric(key, stats.member_count)
            offsets.add_metric(key, stats.offset_count)
            pending.add_metric(key, stats.pending_write_count)
            rebalances.add_metric(key, stats.rebalance_count)
        yield from (lag, committed, groups, members, offsets, pending, rebalances)


class BrokerMetrics:
    """The broker's metrics and their HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "broker_requests", "Requests handled, by API", ["api"], registry=registry
        )
        self.request_errors = Counter(
            "broker_request_errors",
            "Request-level and partition-level errors, by API and error code",
            ["api", "error"],
            registry=registry,
        )
        self.latency = Histogram(
            "broker_request_latency_seconds",
            "Time from reading a request to writing its response, by API",
            ["api"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.bytes_in = Counter(
            "broker_bytes_in", "Record batch bytes appended, by topic", ["topic"], registry=registry
        )
        self.records_in_total = Counter(
            "broker_records_in", "Records appended, by topic", ["topic"], registry=registry
        )
        self.bytes_out = Counter(
            "broker_bytes_out", "Record batch bytes fetched, by topic", ["topic"], registry=registry
        )
        self.records_out_total = Counter(
            "broker_records_out", "Records fetched, by topic", ["topic"], registry=registry
        )
        # Set to read the count at scrape time (docs/storage.md, "Metadata damage").
        self.stray_logs = Gauge(
            "broker_stray_logs",
            "Partition log directories the metadata does not know: kept on disk, not served",
            registry=registry,
        )
        self.authorization_denials = Counter(
            "broker_authorization_denied",
            "Operations the authorizer denied (each is a broker.audit log line), by operation "
            "and resource type",
            ["operation", "resource_type"],
            registry=registry,
        )
        self.duplicate_batches = Counter(
            "broker_producer_duplicate_batches",
            "Retried batches of idempotent producers answered with their original offsets",
            ["topic"],
            registry=registry,
        )
        self.connections = Gauge("broker_connections", "Open client connections", registry=registry)
        self.connections_total = Counter(
            "broker_connections_accepted", "Client connections accepted", registry=registry
        )
        self.protocol_errors = Counter(
            "broker_protocol_errors",
            "Connections closed because of a framing error",
            registry=registry,
        )
        # Security (docs/security.md): failed logins and requests refused before one, by reason
        # (bad_password, bad_message, unsupported_mechanism, unauthenticated_request).
        self.authentication_failures = Counter(
            "broker_authentication_failures",
            "SASL authentications that failed, and requests refused before a login, by reason",
            ["reason"],
            registry=registry,
        )
        # Limits against hostile clients (docs/security.md): by the limit that acted.
        self.connections_refused = Counter(
            "broker_connections_refused",
            "Connections closed at once on accept, by reason (max_connections, "
            "max_connections_per_ip, stopping)",
            ["reason"],
            registry=registry,
        )
        self.connections_closed = Counter(
            "broker_connections_closed_by_limit",
            "Connections the broker closed, by the limit or failure that closed them",
            ["reason"],
            registry=registry,
        )
        self.request_memory_bytes = Gauge(
            "broker_request_memory_bytes",
            "Bytes of requests read and not yet answered (bounded by queued_max_request_bytes)",
            registry=registry,
        )
        self.fsync_latency = Histogram(
            "broker_log_fsync_duration_seconds",
            "Time the broker waited for one fsync of a partition log (group commit: one fsync "
            "may cover many appends)",
            buckets=FSYNC_BUCKETS_SECONDS,
            registry=registry,
        )
        self.raft_append_latency = Histogram(
            "broker_raft_append_latency_seconds",
            "Time from a leader's proposal of an entry to its commit, by group kind",
            ["kind"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self._api_children: dict[str, tuple[Any, Any]] = {}
        self._in_children: dict[str, tuple[Any, Any]] = {}
        self._out_children: dict[str, tuple[Any, Any]] = {}
        self._server: Any = None
        self._thread: Any = None

    # --- updates (called from the trio thread) ----------------------------------------------------

    # `labels()` costs a few µs per call; the children are cached per label value, as the hot
    # path calls these once per request and per partition.

    def request_done(self, api: str, seconds: float, errors: Iterable[str] = ()) -> None:
        children = self._api_children.get(api)
        if children is None:
            children = (self.requests.labels(api), self.latency.labels(api))
            self._api_children[api] = children
        children[0].inc()
        children[1].observe(seconds)
        for error in errors:
            self.request_errors.labels(api, error).inc()

    def records_in(self, topic: str, records: int, size_bytes: int) -> None:
        children = self._in_children.get(topic)
        if children is None:
            children = (self.records_in_total.labels(topic), self.bytes_in.labels(topic))
            self._in_children[topic] = children
        children[0].inc(records)
        children[1].inc(size_bytes)

    def records_out(self, topic: str, records: int, size_bytes: int) -> None:
        children = self._out_children.get(topic)
        if children is None:
            children = (self.records_out_total.labels(topic), self.bytes_out.labels(topic))
            self._out_children[topic] = children
        children[0].inc(records)
        children[1].inc(size_bytes)

    def authorization_denied(self, operation: str, resource_type: str) -> None:
        self.authorization_denials.labels(operation, resource_type).inc()

    def duplicate_batch(self, topic: str) -> None:
        self.duplicate_batches.labels(topic).inc()  # rare: retries only

    def forget_topic(self, topic: str) -> None:
        """Drop a deleted topic's series (a re-created topic starts from zero)."""
        for cache, metrics in (
            (self._in_children, (self.records_in_total, self.bytes_in)),
            (self._out_children, (self.records_out_total, self.bytes_out)),
        ):
            if cache.pop(topic, None) is not None:
                for metric in metrics:
                    metric.remove(topic)

    def watch_partitions(self, source: Callable[[], Iterable[PartitionSample]]) -> None:
        self.registry.register(_PartitionCollector(source))

    def watch_cluster(self, source: Callable[[], Any]) -> None:
        """Export cluster status from snapshots refreshed in the trio thread."""
        self.registry.register(_ClusterCollector(source))

    def watch_groups(self, source: Callable[[], Any]) -> None:
        """Export consumer lag and group statistics from the group service's snapshots."""
        self.registry.register(_GroupCollector(source))

    def watch_share_groups(self, source: Callable[[], Any]) -> None:
        """Export share group queues from the share service's snapshots."""
        self.registry.register(_ShareGroupCollector(source))

    def watch_transactions(self, source: Callable[[], Any]) -> None:
        """Export the transaction coordinators' counts from the service's snapshots."""
        self.registry.register(_TransactionCollector(source))

    def fsync_done(self, seconds: float) -> None:
        """One fsync of a partition log completed (LogFlusher's `on_fsync`)."""
        self.fsync_latency.observe(seconds)

    def watch_cluster_node(self, scrape: TrioScrape, node: Any) -> None:
        """Export a `ClusterNode`'s Raft groups and controller, read in the trio thread at scrape
        time (the drivers' latencies come through `raft_observers`)."""
        self.registry.register(RaftCollector(scrape, node_raft_sources(node)))
        self.registry.register(ControllerCollector(scrape, node))

    def raft_observers(self) -> tuple[RaftLatencyObserver, RaftLatencyObserver]:
        """(partitions, metadata): what the drivers of each kind report their latencies to."""
        return (
            RaftLatencyObserver(self.fsync_latency, self.raft_append_latency, KIND_PARTITION),
            RaftLatencyObserver(self.fsync_latency, self.raft_append_latency, KIND_METADATA),
        )

    # --- HTTP -------------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the /metrics endpoint; returns the bound address (port 0 picks a free one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound_host, bound_port = self._server.server_address[:2]
        return str(bound_host), int(bound_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
