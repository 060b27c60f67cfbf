"""Named, validated configuration: every limit and policy of the broker has a field here.

Each config is a frozen dataclass whose defaults are the sane production values; `validate()`
raises `ConfigError` naming the offending key. Kafka-style dotted keys (`segment.bytes`) are mapped
to field names once, here, by `from_mapping`; code everywhere else uses the field names.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, Final, Self

from broker.security.listeners import (
    DEFAULT_LISTENER_NAME,
    ListenerProtocol,
    ListenerSpec,
    parse_listeners,
)
from broker.security.tls import check_settings
from wire.config_error import ConfigError


class FlushPolicy(enum.Enum):
    """When appended bytes are fsynced.

    ALWAYS: before an append is acknowledged, with group commit (one fsync covers every append that
    arrived while the previous fsync ran). INTERVAL: every `flush_interval_ms`. NEVER: leave it to
    the page cache and rely on replication, as Kafka does by default.
    """

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
DAY_MS = 24 * 60 * 60 * 1000


def check_range(key: str, value: Any, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(key, f"must be {bound}, got {value}")


def check_fraction(key: str, value: Any, what_zero_means: str = "") -> None:
    """A number from 0 to 1 (a ratio, a share)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(key, f"must be a number from 0 to 1{what_zero_means}, got {value!r}")


def _coerce(field: dataclasses.Field[Any], key: str, value: Any) -> Any:
    """Turn a value from a TOML file, an env var or a CLI flag into the field's type."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if kind == "int" and isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError as exc:
            raise ConfigError(key, f"expected an integer, got {value!r}") from exc
    if kind == "bool" and isinstance(value, str):
        lowered = value.lower()
        if lowered in {"true", "1", "yes", "on"}:
            return True
        if lowered in {"false", "0", "no", "off"}:
            return False
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if kind == "float" and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as exc:
            raise ConfigError(key, f"expected a number, got {value!r}") from exc
    if kind.startswith("tuple[str") and isinstance(value, str | list):
        # `--set super_users=admin,ops`, or a TOML list.
        items = value.split(",") if isinstance(value, str) else value
        return tuple(item.strip() if isinstance(item, str) else item for item in items if item)
    if kind == "FlushPolicy" and isinstance(value, str):
        try:
            return FlushPolicy(value.lower())
        except ValueError as exc:
            choices = ", ".join(policy.value for policy in FlushPolicy)
            raise ConfigError(key, f"expected one of {choices}, got {value!r}") from exc
    return value


class ConfigBase(abc.ABC):
    """Shared loading: field names or dotted Kafka-style aliases, type coercion, validation."""

    ALIASES: Mapping[str, str] = {}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, base: Self | None = None) -> Self:
        fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        changes: dict[str, Any] = {}
        for key, value in values.items():
            name = cls.ALIASES.get(key, key.replace(".", "_").replace("-", "_"))
            if name not in fields:
                known = ", ".join(sorted(set(fields) | set(cls.ALIASES)))
                raise ConfigError(key, f"unknown key; known keys: {known}")
            changes[name] = _coerce(fields[name], key, value)
        config = dataclasses.replace(base if base is not None else cls(), **changes)  # type: ignore[type-var]
        config.validate()
        return config

    @abc.abstractmethod
    def validate(self) -> None:
        """Raise `ConfigError` naming the first key whose value is out of range."""


@dataclasses.dataclass(frozen=True, slots=True)
class LogConfig(ConfigBase):
    """How one partition log stores, indexes, flushes and retains its data."""

    # A segment rolls when its .log file would exceed this many bytes...
    segment_bytes: int = 1 * GIB
    # ...or when its first batch is older than this.
    segment_ms: int = 7 * DAY_MS
    # One .index entry per this many bytes of batches: bounds the scan after an index lookup.
    index_interval_bytes: int = 4 * KIB
    # Preallocated size of each .index/.timeindex file; a segment also rolls when one is full.
    index_bytes_max: int = 10 * MIB
    # The active segment's .log file is zero-filled up to this far ahead of its last batch (as
    # far ahead as the segment already holds, from 16 KiB up to this): an fsync of bytes written
    # into blocks the file already has skips the journal commit of a new file size. 0: off.
    preallocate_bytes: int = 1 * MIB
    # Delete whole segments whose newest record is older than this; -1 keeps them forever.
    retention_ms: int = 7 * DAY_MS
    # Delete the oldest segments while the partition is larger than this; -1 means no limit.
    retention_bytes: int = -1
    # Largest batch (header included) a producer may send or the log will store.
    max_batch_bytes: int = 1 * MIB
    flush_policy: FlushPolicy = FlushPolicy.ALWAYS
    # With flush_policy=interval: the longest an append stays unsynced.
    flush_interval_ms: int = 1000
    # An idempotent producer idle this long (no batch, no open transaction) is forgotten by the
    # partition: a retry after that is no longer recognised as a duplicate (Kafka's default).
    producer_id_expiration_ms: int = 7 * DAY_MS
    # "delete": retention removes old segments; "compact": the log cleaner keeps the latest
    # record per key in closed segments (and retention deletes nothing); "compact,delete": both.
    cleanup_policy: str = "delete"
    # A compacted log is cleaned once its dirty (never cleaned) bytes are at least this share of
    # its closed segments' bytes (Kafka's min.cleanable.dirty.ratio).
    min_cleanable_dirty_ratio: float = 0.5
    # A tombstone (null value) stays readable this long after the pass that first cleaned it,
    # so that consumers which were behind still see the delete (delete.retention.ms).
    delete_retention_ms: int = DAY_MS

    ALIASES = {  # noqa: RUF012 - class-level constant, not a field
        "segment.bytes": "segment_bytes",
        "segment.ms": "segment_ms",
        "index.interval.bytes": "index_interval_bytes",
        "segment.index.bytes": "index_bytes_max",
        "preallocate.bytes": "preallocate_bytes",
        "retention.ms": "retention_ms",
        "retention.bytes": "retention_bytes",
        "max.message.bytes": "max_batch_bytes",
        "flush.policy": "flush_policy",
        "flush.ms": "flush_interval_ms",
        "producer.id.expiration.ms": "producer_id_expiration_ms",
        "cleanup.policy": "cleanup_policy",
        "min.cleanable.dirty.ratio": "min_cleanable_dirty_ratio",
        "delete.retention.ms": "delete_retention_ms",
    }

    @property
    def compacted(self) -> bool:
        """Whether the log cleaner compacts this log."""
        return "compact" in self.cleanup_policy.split(",")

    @property
    def deletes(self) -> bool:
        """Whether time and size retention delete this log's old segments."""
        return "delete" in self.cleanup_policy.split(",")

    def validate(self) -> None:
        check_range("segment_bytes", self.segment_bytes, 1 * KIB, 2**31 - 1)
        check_range("segment_ms", self.segment_ms, 1)
        check_range("index_interval_bytes", self.index_interval_bytes, 0, 2**31 - 1)
        check_range("index_bytes_max", self.index_bytes_max, 4 * KIB, 2**31 - 1)
        check_range("preallocate_bytes", self.preallocate_bytes, 0, 64 * MIB)
        check_range("retention_ms", self.retention_ms, -1)
        check_range("retention_bytes", self.retention_bytes, -1)
        check_range("max_batch_bytes", self.max_batch_bytes, 64, self.segment_bytes)
        check_range("flush_interval_ms", self.flush_interval_ms, 1)
        check_range("producer_id_expiration_ms", self.producer_id_expiration_ms, 1)
        if not isinstance(self.flush_policy, FlushPolicy):
            raise ConfigError("flush_policy", f"expected a FlushPolicy, got {self.flush_policy!r}")
        if self.cleanup_policy not in CLEANUP_POLICIES:
            raise ConfigError(
                "cleanup_policy",
                f"expected one of {', '.join(CLEANUP_POLICIES)}, got {self.cleanup_policy!r}",
            )
        check_fraction("min_cleanable_dirty_ratio", self.min_cleanable_dirty_ratio)
        check_range("delete_retention_ms", self.delete_retention_ms, 0)


# The values of cleanup.policy, as Kafka spells them.
CLEANUP_POLICIES = ("delete", "compact", "compact,delete")


def parse_host_port(key: str, value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (or `[v6]:PORT`); raise `ConfigError` naming `key` if it is not one."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(key, f"expected HOST:PORT with a port from 0 to 65535, got {value!r}")
    return host, int(port_text)


def parse_peers(key: str, value: str) -> dict[int, tuple[str, int]]:
    """`1@HOST:PORT,2@HOST:PORT` as {node id: address}; raise `ConfigError` naming `key`."""
    peers: dict[int, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        node_text, sep, address = item.partition("@")
        if not sep or not node_text.isdigit() or not 1 <= int(node_text) <= 2**31 - 1:
            raise ConfigError(key, f"expected NODE_ID@HOST:PORT with NODE_ID >= 1, got {item!r}")
        node_id = int(node_text)
        if node_id in peers:
            raise ConfigError(key, f"node {node_id} is listed twice")
        host, port = parse_host_port(key, address)
        if port == 0:
            raise ConfigError(key, f"node {node_id} needs a real port, not 0")
        peers[node_id] = (host, port)
    return peers


def parse_advertised_listeners(key: str, value: str) -> dict[str, tuple[str, int]]:
    """`NAME=HOST:PORT[,NAME=HOST:PORT]` as {listener name: address} (real ports; Kafka's
    `advertised.listeners` without the protocol, which is the listener's); raise `ConfigError`
    naming `key`."""
    advertised: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, address = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(key, f"expected NAME=HOST:PORT, got {item!r}")
        if name in advertised:
            raise ConfigError(key, f"listener {name} is advertised twice")
        host, port = parse_host_port(key, address.strip())
        if port == 0:
            raise ConfigError(key, f"listener {name} needs a real port, not 0")
        advertised[name] = (host, port)
    return advertised


def parse_node_ids(key: str, value: str) -> list[int]:
    """`1,2,3` as sorted distinct node ids (>= 1); raise `ConfigError` naming `key`."""
    ids: list[int] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if not item.isdigit() or not 1 <= int(item) <= 2**31 - 1:
            raise ConfigError(key, f"expected node ids >= 1 separated by commas, got {item!r}")
        if int(item) in ids:
            raise ConfigError(key, f"node {item} is listed twice")
        ids.append(int(item))
    return sorted(ids)


def parse_bootstrap(key: str, value: str) -> list[tuple[str, int]]:
    """`HOST:PORT[,HOST:PORT]` as addresses (real ports); raise `ConfigError` naming `key`."""
    addresses = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, port = parse_host_port(key, item)
        if port == 0:
            raise ConfigError(key, f"{item!r} needs a real port, not 0")
        addresses.append((host, port))
    return addresses


# `auth`: no authentication, or SASL SCRAM on every connection (docs/security.md).
AUTH_NONE: Final = "none"
AUTH_SCRAM: Final = "scram"
AUTH_MODES: Final = (AUTH_NONE, AUTH_SCRAM)


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerConfig(ConfigBase):
    """One broker process: where it listens and stores, and the bounds of its server.

    Keys are the field names; `log.<key>` (or a `[log]` table in TOML, or a bare LogConfig key
    such as `retention.ms`) sets the defaults for every topic's log. docs/configuration.md lists
    them all.
    """

    # This broker's id in the cluster; partitions it leads report it as leader_id.
    node_id: int = 0
    # Where clients connect. Port 0 picks a free port (printed on the READY line).
    listen: str = "127.0.0.1:9092"
    # The address put in metadata responses for the default (inter-broker) listener; empty means
    # where it is bound. In a cluster it is also where peers reach this broker.
    advertised_listen: str = ""
    # Segment files and the LMDB metadata store live here.
    data_dir: str = "./broker-data"
    # Prometheus /metrics over HTTP; empty disables it. Port 0 picks a free port.
    metrics_listen: str = "127.0.0.1:9100"
    # Create unknown topics on produce and on metadata requests that allow it.
    auto_create_topics: bool = False
    # Partitions of a topic created without a count (and of auto-created topics).
    default_partitions: int = 1
    # Bound on partitions per topic: each partition holds open files and memory.
    max_partitions_per_topic: int = 1000
    # Largest frame (header + payload) accepted or sent; larger frames close the connection.
    max_frame_bytes: int = 64 * MIB
    # Requests read from one connection and not yet answered; past it the broker stops reading.
    max_inflight_requests_per_connection: int = 64
    # Open client connections; further connections are closed at once with a log line.
    max_connections: int = 4096
    # --- limits against hostile clients (docs/security.md, "Limits against hostile clients").
    # Open connections from one IP address (max.connections.per.ip); more are closed at once.
    max_connections_per_ip: int = 1000
    # A connection with no request in progress or in flight for this long is closed
    # (connections.max.idle.ms).
    connections_max_idle_ms: int = 600_000
    # A request whose first bytes have arrived must arrive whole within this: a client sending
    # 1 byte/s is closed (request.arrival.timeout.ms).
    request_arrival_timeout_ms: int = 30_000
    # Bytes of requests read and not yet answered, all connections together
    # (queued.max.request.bytes): reading stops while it is used up. At least max_frame_bytes.
    queued_max_request_bytes: int = 128 * MIB
    # After accepting a connection: the TLS handshake and the first frame (the protocol's
    # handshake) must be done within this (handshake.timeout.ms).
    handshake_timeout_ms: int = 10_000
    # Replies ready for a client must be written within this: a client that stops reading
    # cannot make the broker hold its replies (response.write.timeout.ms).
    response_write_timeout_ms: int = 60_000
    # --- TLS and listeners (docs/security.md, "TLS").
    # Named listeners `NAME=tls://HOST:PORT,NAME=plaintext://HOST:PORT` (Kafka's listeners);
    # empty: one listener on `listen`, TLS when tls_cert_file is set. The first one is the
    # address advertised to clients unless inter_broker_listener names another.
    listeners: str = ""
    # The listener other brokers reach this one on (its address is what --peers gives for this
    # broker); a tls:// one makes broker-to-broker traffic TLS. Empty: the first listener.
    inter_broker_listener: str = ""
    # What each listener tells its clients to connect to (Kafka's advertised.listeners):
    # `NAME=HOST:PORT,NAME=HOST:PORT`, NAME a listener. A listener not named here advertises
    # where it is bound (the inter-broker one: `advertised_listen`, if set).
    advertised_listeners: str = ""
    # PEM certificate (chain) and private key of the TLS listeners.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # PEM CA certificates that client certificates (and peers' certificates) must chain to.
    tls_ca_file: str = ""
    # Client certificates: required (mTLS), requested (verified if given) or none.
    tls_client_auth: str = "none"
    # Bytes asked of the socket per read.
    receive_buffer_bytes: int = 256 * KIB
    # Replies ready together are written in one call, up to this many bytes at a time.
    send_buffer_bytes: int = 256 * KIB
    # How often retention deletes old segments.
    retention_check_interval_ms: int = 5 * 60 * 1000
    # Upper bound on a fetch's long poll, whatever the client asks.
    fetch_max_wait_ms_max: int = 30_000
    # On SIGINT/SIGTERM: how long in-flight requests may take before they are cancelled.
    shutdown_timeout_ms: int = 30_000
    # The most of the event loop's time fsyncs run on it may take (broker/log/inline_fsync.py):
    # a small group-commit fsync runs inline, sparing the hand-off to the fsync helper process;
    # a loop that uses up this share is busy and sends them to the helper for a second (0: always).
    fsync_inline_share: float = 0.3
    # Defaults for every topic's log; a topic's own configs override them.
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    # --- log cleaner (compaction of cleanup.policy=compact topics; docs/storage.md).
    log_cleaner_enabled: bool = True
    # How often the cleaner looks for the dirtiest compacted log (log.cleaner.backoff.ms).
    log_cleaner_backoff_ms: int = 15_000
    # Bytes per second the cleaner reads plus writes, all logs together
    # (log.cleaner.io.max.bytes.per.second): it never starves produce and fetch of the disk.
    log_cleaner_io_bytes_per_second: int = 32 * MIB
    # Distinct keys one pass maps (the bound on the cleaner's memory, Kafka's dedupe buffer): a
    # pass covers whole segments until this many keys are mapped; the rest waits for the next.
    log_cleaner_keys_max: int = 1_000_000
    # --- cluster mode (docs/cluster.md); ignored while `peers` and `bootstrap` are empty.
    # The brokers that start the cluster, `1@HOST:PORT,2@HOST:PORT,...`: where this broker
    # reaches each of them (their client port, or a proxy in front of it). Non-empty = cluster
    # mode; every initial broker must be listed. `node_id` must then be >= 1. Brokers added
    # later are learned from the metadata.
    peers: str = ""
    # The controller voters among `peers`, `1,2,3` (the metadata log's Raft voters); empty: all
    # of `peers`. The other brokers follow the metadata log as Raft learners and never vote.
    controller_voters: str = ""
    # Join a running cluster instead of `peers`: `HOST:PORT[,HOST:PORT]` of any of its brokers.
    # The broker finds the controller leader there, registers, and learns every peer's address
    # from the metadata (docs/cluster.md "Membership").
    bootstrap: str = ""
    # Metadata records applied between two snapshots of the controller state; each snapshot
    # also compacts the metadata log (whole segments below it are deleted), so a restart
    # replays the snapshot plus at most about this many records.
    metadata_snapshot_interval_records: int = 1000
    # Segment size of the metadata log: compaction deletes whole segments only, so this bounds
    # what the log keeps below its latest snapshot.
    metadata_log_segment_bytes: int = 8 * MIB
    # Brokers refuse peers of another cluster.
    cluster_id: str = "pybroker"
    # Replicas of a topic created without a replication factor.
    default_replication_factor: int = 1
    # Raft timer tick of every group; elections time out after raft_election_timeout_ticks
    # (randomised up to twice that), leaders heartbeat every tick.
    raft_tick_ms: int = 100
    raft_election_timeout_ticks: int = 10
    # Quiescence (docs/raft.md): a partition group with nothing to replicate stops ticking and
    # heartbeating; the broker-to-broker link liveness wakes it when a peer is lost.
    raft_quiesce: bool = True
    # Broker liveness with the controller (Kafka's broker.heartbeat.interval.ms and
    # broker.session.timeout.ms): a broker silent for the session timeout is fenced.
    broker_heartbeat_interval_ms: int = 1_000
    broker_session_timeout_ms: int = 6_000
    # On SIGTERM, how long to spend handing this broker's leaderships to caught-up followers
    # before stopping (Kafka's controlled shutdown); 0 skips it.
    controlled_shutdown_timeout_ms: int = 5_000
    # Partition reassignment (docs/reassignment.md): replication to a new replica while it
    # catches up, in bytes per second, unless the reassignment names its own throttle (Kafka's
    # leader.replication.throttled.rate); 0 is unlimited.
    reassignment_throttle_bytes_per_s: int = 100 * MIB
    # A partition leader that is not its preferred leader hands leadership back to it once
    # that broker is ACTIVE and caught up (Kafka's auto.leader.rebalance.enable).
    auto_leader_rebalance_enable: bool = True
    # --- consumer groups (docs/consumer-groups.md); mapped onto GroupConfig by the group service.
    # Partitions of the internal __consumer_offsets topic, fixed when the broker first creates
    # it: a group's coordinator partition is crc32(group_id) % this count.
    offsets_topic_partitions: int = 8
    # Bounds on a JoinGroup's session timeout (Kafka's group.min/max.session.timeout.ms).
    group_min_session_timeout_ms: int = 6_000
    group_max_session_timeout_ms: int = 1_800_000
    # The first rebalance of an Empty group waits this long for more members to join.
    group_initial_rebalance_delay_ms: int = 3_000
    # Members per group.
    group_max_size: int = 1_000
    # Offsets of an Empty group expire after this long; -1 keeps them forever.
    offsets_retention_ms: int = 7 * DAY_MS
    # --- transactions (docs/transactions.md); mapped onto TransactionConfig.
    # Partitions of the internal __transaction_state topic, fixed when first created: a
    # transactional id's coordinator partition is crc32(transactional_id) % this count.
    transaction_state_topic_partitions: int = 8
    # The longest transaction_timeout_ms a producer may ask for (transaction.max.timeout.ms):
    # an open transaction holds back read_committed consumers of its partitions.
    transaction_max_timeout_ms: int = 15 * 60_000
    # A transactional id unused this long is forgotten (transactional.id.expiration.ms).
    transactional_id_expiration_ms: int = 7 * DAY_MS
    # How often the coordinators look for transactions past their timeout, to abort them
    # (transaction.abort.timed.out.transaction.cleanup.interval.ms).
    transaction_timeout_check_interval_ms: int = 10_000
    # --- share groups (docs/queues.md); mapped onto ShareCoordinatorConfig. The share_*
    # defaults are those of every group's configs (AlterGroupConfigs overrides them per group).
    # Partitions of the internal __share_group_state topic, fixed when first created: a share
    # group's coordinator partition is crc32(group_id) % this count.
    share_state_topic_partitions: int = 8
    # How long a member holds a record it acquired (share.record.lock.duration.ms).
    share_record_lock_duration_ms: int = 30_000
    # Deliveries before a record is archived, or dead-lettered (share.delivery.count.limit).
    share_delivery_count_limit: int = 5
    # The longest RELEASE delay a consumer may ask for (share.release.delay.max.ms).
    share_release_delay_max_ms: int = 300_000
    # In-flight records per share partition (group.share.partition.max.record.locks).
    share_partition_max_record_locks: int = 20_000
    # A share group member silent this long is removed and its records released.
    share_session_timeout_ms: int = 45_000
    # Members per share group (group.share.max.size).
    share_group_max_size: int = 1_000
    # --- security: authentication (docs/security.md, "Authentication (SASL SCRAM)").
    # "none", or "scram": every connection (clients and other brokers) logs in with SASL
    # SCRAM-SHA-256/512 before any other request; users are SCRAM credentials in the metadata.
    auth: str = "none"
    # User names (without "User:") every authorization check allows. The first one's credential
    # is created at first start (password from BROKER_ADMIN_PASSWORD) and brokers of a cluster
    # log in to each other as it.
    super_users: tuple[str, ...] = ()
    # --- authorization and quotas (docs/security.md).
    # Enforce ACLs on every request (`--authorizer`; `--auth scram` turns it on too).
    authorizer_enabled: bool = False
    # With the authorizer on, a resource no ACL names is open to everyone
    # (allow.everyone.if.no.acl.found). Off: no matching ALLOW ACL means denied.
    allow_everyone_if_no_acl_found: bool = False
    # A quota's token bucket holds this many ms of its rate: the burst a client may send at once.
    quota_burst_ms: int = 1_000
    # The longest throttle one request earns (the client waits at most this long per request).
    quota_throttle_ms_max: int = 30_000
    # Quota token buckets kept at once (one per user/client id a quota applies to); the least
    # recently used is dropped past it.
    quota_bucket_count_max: int = 100_000

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, base: Self | None = None) -> Self:
        """Build from flat or nested keys: `listen`, `log.retention.ms`, `{"log": {...}}`,
        or a bare LogConfig key (`retention.ms`). Raises `ConfigError` naming the first bad key."""
        base_config = base if base is not None else cls()
        fields = {field.name: field for field in dataclasses.fields(cls)}
        log_values: dict[str, Any] = {}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            name = BROKER_ALIASES.get(key, key.replace("-", "_"))
            if name == "log":
                if not isinstance(value, Mapping):
                    raise ConfigError(key, f"expected a table of log settings, got {value!r}")
                log_values.update(value)
            elif name.startswith("log."):
                log_values[key[len("log.") :]] = value
            elif name in fields:
                changes[name] = _coerce(fields[name], key, value)
            elif _is_log_key(key):
                log_values[key] = value
            else:
                known = ", ".join(sorted(name for name in fields if name != "log"))
                raise ConfigError(
                    key, f"unknown key; known keys: {known}, and log.<key> for topic log defaults"
                )
        if log_values:
            try:
                changes["log"] = LogConfig.from_mapping(log_values, base=base_config.log)
            except ConfigError as exc:
                # validate() names fields; name the key as the user wrote it (retention.ms).
                written = next(
                    (key for key in log_values if LogConfig.ALIASES.get(key, key) == exc.key),
                    exc.key,
                )
                raise ConfigError(f"log.{written}", str(exc).split(": ", 1)[1]) from exc
        config = dataclasses.replace(base_config, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        check_range("node_id", self.node_id, 0, 2**31 - 1)
        parse_host_port("listen", self.listen)
        if self.advertised_listen:
            parse_host_port("advertised_listen", self.advertised_listen)
        if self.metrics_listen:
            parse_host_port("metrics_listen", self.metrics_listen)
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise ConfigError("data_dir", f"expected a directory path, got {self.data_dir!r}")
        if not isinstance(self.auto_create_topics, bool):
            raise ConfigError("auto_create_topics", "expected true or false")
        check_range("max_partitions_per_topic", self.max_partitions_per_topic, 1, 100_000)
        check_range("default_partitions", self.default_partitions, 1, self.max_partitions_per_topic)
        check_range("max_frame_bytes", self.max_frame_bytes, 64 * KIB, 2**32 - 1)
        check_range(
            "max_inflight_requests_per_connection", self.max_inflight_requests_per_connection, 1
        )
        check_range("max_connections", self.max_connections, 1)
        self._validate_limits()
        self._validate_listeners()
        check_range("receive_buffer_bytes", self.receive_buffer_bytes, 1 * KIB, 64 * MIB)
        check_fraction("fsync_inline_share", self.fsync_inline_share, " (0: never)")
        check_range("send_buffer_bytes", self.send_buffer_bytes, 1 * KIB, 64 * MIB)
        check_range("retention_check_interval_ms", self.retention_check_interval_ms, 10)
        check_range("fetch_max_wait_ms_max", self.fetch_max_wait_ms_max, 0)
        check_range("shutdown_timeout_ms", self.shutdown_timeout_ms, 0)
        if not isinstance(self.log_cleaner_enabled, bool):
            raise ConfigError("log_cleaner_enabled", "expected true or false")
        check_range("log_cleaner_backoff_ms", self.log_cleaner_backoff_ms, 10)
        check_range(
            "log_cleaner_io_bytes_per_second", self.log_cleaner_io_bytes_per_second, 1 * KIB
        )
        check_range("log_cleaner_keys_max", self.log_cleaner_keys_max, 1, 100_000_000)
        if not isinstance(self.log, LogConfig):
            raise ConfigError("log", f"expected log settings, got {self.log!r}")
        self.log.validate()
        self.check_log_config("log.max_batch_bytes", self.log)
        check_range("offsets_topic_partitions", self.offsets_topic_partitions, 1, 1_000)
        check_range("group_min_session_timeout_ms", self.group_min_session_timeout_ms, 1)
        check_range(
            "group_max_session_timeout_ms",
            self.group_max_session_timeout_ms,
            self.group_min_session_timeout_ms,
        )
        check_range("group_initial_rebalance_delay_ms", self.group_initial_rebalance_delay_ms, 0)
        check_range("group_max_size", self.group_max_size, 1, 1_000_000)
        check_range("offsets_retention_ms", self.offsets_retention_ms, -1)
        check_range(
            "transaction_state_topic_partitions", self.transaction_state_topic_partitions, 1, 1_000
        )
        check_range("transaction_max_timeout_ms", self.transaction_max_timeout_ms, 1)
        check_range("transactional_id_expiration_ms", self.transactional_id_expiration_ms, 1)
        check_range(
            "transaction_timeout_check_interval_ms", self.transaction_timeout_check_interval_ms, 1
        )
        check_range("share_state_topic_partitions", self.share_state_topic_partitions, 1, 1_000)
        check_range(
            "share_record_lock_duration_ms", self.share_record_lock_duration_ms, 1_000, 3_600_000
        )
        check_range("share_delivery_count_limit", self.share_delivery_count_limit, 2, 10)
        check_range("share_release_delay_max_ms", self.share_release_delay_max_ms, 0)
        check_range(
            "share_partition_max_record_locks", self.share_partition_max_record_locks, 1, 1_000_000
        )
        check_range("share_session_timeout_ms", self.share_session_timeout_ms, 1)
        check_range("share_group_max_size", self.share_group_max_size, 1, 1_000_000)
        self._validate_security()
        if self.offsets_retention_ms == 0:
            raise ConfigError("offsets_retention_ms", "must be -1 (forever) or positive, got 0")
        self._validate_auth()
        self._validate_cluster()

    def _validate_auth(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ConfigError("auth", f"expected one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if not isinstance(self.super_users, tuple) or not all(
            isinstance(name, str) and name and "," not in name and len(name) <= 256
            for name in self.super_users
        ):
            raise ConfigError("super_users", f"expected user names, got {self.super_users!r}")
        if self.auth == AUTH_SCRAM and not self.super_users:
            raise ConfigError(
                "super_users",
                "--auth scram needs a super-user (--super-user admin): the first user, who "
                "creates the others, and whom the brokers of a cluster log in to each other as",
            )

    @property
    def auth_enabled(self) -> bool:
        return self.auth == AUTH_SCRAM

    def is_super_user(self, principal: str) -> bool:
        """Whether `principal` ("User:NAME") is one of `super_users`."""
        kind, _, name = principal.partition(":")
        return kind == "User" and name in self.super_users

    @property
    def super_user_set(self) -> frozenset[str]:
        """`super_users` as principals (`User:NAME`), as the authorizer matches them."""
        return frozenset(f"User:{name}" for name in self.super_users)

    def _validate_security(self) -> None:
        for key in ("authorizer_enabled", "allow_everyone_if_no_acl_found"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, "expected true or false")
        check_range("quota_burst_ms", self.quota_burst_ms, 1, 3_600_000)
        check_range("quota_throttle_ms_max", self.quota_throttle_ms_max, 0, 3_600_000)
        check_range("quota_bucket_count_max", self.quota_bucket_count_max, 1, 10_000_000)

    def _validate_limits(self) -> None:
        check_range("max_connections_per_ip", self.max_connections_per_ip, 1)
        check_range("connections_max_idle_ms", self.connections_max_idle_ms, 1)
        check_range("request_arrival_timeout_ms", self.request_arrival_timeout_ms, 1)
        check_range("handshake_timeout_ms", self.handshake_timeout_ms, 1)
        check_range("response_write_timeout_ms", self.response_write_timeout_ms, 1)
        check_range("queued_max_request_bytes", self.queued_max_request_bytes, self.max_frame_bytes)

    def _validate_listeners(self) -> None:
        listeners = parse_listeners("listeners", self.listeners)
        names = [listener.name for listener in listeners]
        if self.inter_broker_listener and self.inter_broker_listener not in names:
            raise ConfigError(
                "inter_broker_listener",
                f"names no listener: {self.inter_broker_listener!r} is not one of {names or '[]'}"
                " (define it with --listener NAME=tls://HOST:PORT)",
            )
        check_settings(
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            ca_file=self.tls_ca_file,
            client_auth=self.tls_client_auth,
            tls_needed=any(listener.is_tls for listener in listeners),
        )
        advertised = parse_advertised_listeners("advertised_listeners", self.advertised_listeners)
        names = [spec.name for spec in self.listener_specs]
        for name in advertised:
            if name not in names:
                raise ConfigError(
                    "advertised_listeners",
                    f"names no listener: {name!r} is not one of {names} (define it with "
                    "--listener NAME=tls://HOST:PORT, or advertise a configured one)",
                )
        default = self.inter_broker_listener_spec.name
        if self.advertised_listen and default in advertised:
            raise ConfigError(
                "advertised_listeners",
                f"advertises listener {default}, whose address advertised_listen gives too; "
                "give it once",
            )

    def _validate_cluster(self) -> None:
        peers = parse_peers("peers", self.peers)
        bootstrap = parse_bootstrap("bootstrap", self.bootstrap)
        voters = parse_node_ids("controller_voters", self.controller_voters)
        if not peers and not bootstrap:
            if voters:
                raise ConfigError("controller_voters", "needs --peers (the brokers they are among)")
            return
        if self.node_id < 1:
            raise ConfigError("node_id", "must be >= 1 in cluster mode (--node-id N)")
        if peers and bootstrap:
            raise ConfigError(
                "bootstrap",
                "give --peers (start or restart a cluster member) or --bootstrap (join a running "
                "cluster), not both",
            )
        if bootstrap and voters:
            raise ConfigError(
                "controller_voters",
                "a broker joining with --bootstrap learns the controller voters from the cluster; "
                "drop --controller-voters",
            )
        if peers and self.node_id not in peers:
            raise ConfigError(
                "peers",
                f"does not list this broker (node {self.node_id}); --peers must name every "
                "broker of the cluster, this one included",
            )
        outsiders = sorted(set(voters) - set(peers))
        if outsiders:
            raise ConfigError(
                "controller_voters",
                f"names brokers {outsiders} that are not in --peers {sorted(peers)}; the voters "
                "must be brokers of the cluster",
            )
        check_range(
            "metadata_snapshot_interval_records", self.metadata_snapshot_interval_records, 1
        )
        check_range("metadata_log_segment_bytes", self.metadata_log_segment_bytes, 64 * KIB)
        if not 1 <= len(self.cluster_id.encode()) <= 255:
            raise ConfigError("cluster_id", "must be 1 to 255 bytes")
        check_range("default_replication_factor", self.default_replication_factor, 1, 16)
        check_range("raft_tick_ms", self.raft_tick_ms, 1, 10_000)
        check_range("raft_election_timeout_ticks", self.raft_election_timeout_ticks, 3, 1_000)
        if not isinstance(self.raft_quiesce, bool):
            raise ConfigError("raft_quiesce", f"expected true or false, got {self.raft_quiesce!r}")
        check_range("broker_heartbeat_interval_ms", self.broker_heartbeat_interval_ms, 1)
        check_range("controlled_shutdown_timeout_ms", self.controlled_shutdown_timeout_ms, 0)
        check_range("reassignment_throttle_bytes_per_s", self.reassignment_throttle_bytes_per_s, 0)
        if not isinstance(self.auto_leader_rebalance_enable, bool):
            raise ConfigError(
                "auto_leader_rebalance_enable",
                f"expected true or false, got {self.auto_leader_rebalance_enable!r}",
            )
        check_range(
            "broker_session_timeout_ms",
            self.broker_session_timeout_ms,
            2 * self.broker_heartbeat_interval_ms,
        )

    @property
    def listener_specs(self) -> list[ListenerSpec]:
        """The listeners to open: `listeners`, or one on `listen` (TLS with a certificate)."""
        listeners = parse_listeners("listeners", self.listeners)
        if listeners:
            return listeners
        host, port = parse_host_port("listen", self.listen)
        protocol = ListenerProtocol.TLS if self.tls_cert_file else ListenerProtocol.PLAINTEXT
        return [ListenerSpec(DEFAULT_LISTENER_NAME, protocol, host, port)]

    @property
    def inter_broker_listener_spec(self) -> ListenerSpec:
        """The listener peers reach this broker on (`inter_broker_listener`, else the first)."""
        specs = self.listener_specs
        return next((spec for spec in specs if spec.name == self.inter_broker_listener), specs[0])

    def advertised_endpoints(
        self, bound: Mapping[str, tuple[str, int]]
    ) -> dict[str, tuple[str, int]]:
        """Each listener's advertised address, in listener order (`bound`: the address each
        listener is bound to, by name): its `advertised_listeners` entry, `advertised_listen`
        for the inter-broker listener, else where it is bound."""
        advertised = parse_advertised_listeners("advertised_listeners", self.advertised_listeners)
        default = self.inter_broker_listener_spec.name
        if self.advertised_listen:
            advertised[default] = parse_host_port("advertised_listen", self.advertised_listen)
        return {
            spec.name: advertised.get(spec.name, bound[spec.name]) for spec in self.listener_specs
        }

    @property
    def peer_addresses(self) -> dict[int, tuple[str, int]]:
        return parse_peers("peers", self.peers)

    @property
    def is_cluster(self) -> bool:
        """Cluster mode: `peers` (a member) or `bootstrap` (joining a running cluster)."""
        return bool(self.peers or self.bootstrap)

    @property
    def controller_voter_ids(self) -> list[int]:
        """The configured controller voters; all of `peers` when none are given."""
        return parse_node_ids("controller_voters", self.controller_voters) or sorted(
            self.peer_addresses
        )

    @property
    def bootstrap_addresses(self) -> list[tuple[str, int]]:
        return parse_bootstrap("bootstrap", self.bootstrap)

    def check_log_config(self, key: str, log: LogConfig) -> None:
        """A topic's batches must fit in a frame with room for the header."""
        if log.max_batch_bytes > self.max_frame_bytes - FRAME_HEADROOM_BYTES:
            raise ConfigError(
                key,
                f"max batch bytes {log.max_batch_bytes} does not fit in a frame of max_frame_bytes "
                f"{self.max_frame_bytes} minus {FRAME_HEADROOM_BYTES} bytes of header room; lower "
                "it or raise max_frame_bytes",
            )


# Kafka's names of broker keys, accepted by `from_mapping` (`--set max.connections.per.ip=10`).
BROKER_ALIASES = {
    "max.connections": "max_connections",
    "max.connections.per.ip": "max_connections_per_ip",
    "connections.max.idle.ms": "connections_max_idle_ms",
    "request.arrival.timeout.ms": "request_arrival_timeout_ms",
    "queued.max.request.bytes": "queued_max_request_bytes",
    "handshake.timeout.ms": "handshake_timeout_ms",
    "response.write.timeout.ms": "response_write_timeout_ms",
    "inter.broker.listener.name": "inter_broker_listener",
    "advertised.listeners": "advertised_listeners",
    "ssl.client.auth": "tls_client_auth",
    "super.users": "super_users",
    "allow.everyone.if.no.acl.found": "allow_everyone_if_no_acl_found",
    "authorizer.enabled": "authorizer_enabled",
}

# Room left in a frame for its msgpack header when it carries a batch of max_batch_bytes.
FRAME_HEADROOM_BYTES = 64 * KIB


def _is_log_key(key: str) -> bool:
    names = {field.name for field in dataclasses.fields(LogConfig)}
    return key in LogConfig.ALIASES or key.replace(".", "_").replace("-", "_") in names
