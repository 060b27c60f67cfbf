"""ControllerStateMachine: the cluster metadata that the controller Raft group replicates.

Two halves, with different rules:
- `prepare_*` runs on the controller leader only, BEFORE proposing: it checks a command against the
  current state and the local limits (`ControllerConfig`, the broker's log defaults) and returns the
  records to propose, or raises `BrokerError` with a code and a message a person can act on. It
  never changes the state.
- `apply(record, index)` runs on every broker for every committed record, in log order. It depends
  on nothing but the state and the record (no config, no clock), so every replica reaches the same
  state. A record that no longer fits the state (two racing creates of one name; a report for a
  topic deleted meanwhile; a fence for a broker's previous incarnation) is skipped, identically
  everywhere, and counted in `statistics().skipped_record_count`; it is never an exception.

Snapshots (`to_bytes`/`from_bytes`) are deterministic msgpack: the same state gives the same bytes
on every broker, so replicas can be compared byte for byte. Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

import msgpack

from broker.config import LogConfig, check_range
from broker.controller import placement, reassignment
from broker.controller.records import (
    INT32_MAX,
    INT64_MAX,
    PORT_MAX,
    REPLICA_COUNT_MAX,
    TOPIC_NAME_LENGTH_MAX,
    AclCreated,
    AclDeleted,
    BrokerDecommissioning,
    BrokerRegistered,
    BrokerState,
    BrokerStateChanged,
    BrokerUnregistered,
    ClientQuotaSet,
    ConfigItems,
    ConfigSet,
    ConfigValue,
    Endpoint,
    MetadataRecord,
    MetadataRecordError,
    PartitionAssignment,
    PartitionLeaderChanged,
    PartitionReassignmentCompleted,
    PartitionReassignmentStarted,
    PartitionsCreated,
    ScramCredentialRemoved,
    ScramCredentialSet,
    TopicCreated,
    TopicDeleted,
    canonical_config_key,
    canonical_configs,
    check_config_items,
    check_endpoints,
    check_int,
    check_node_ids,
    check_str,
    check_topic_id,
    endpoints_from_wire,
    unpack_bounded,
)
from broker.controller.scram_users import ScramUsers
from broker.log.manager import check_topic_name
from broker.security.state import SecurityState
from wire.error_codes import BrokerError, ErrorCode

SNAPSHOT_FORMAT: Final = 1
# A snapshot of 100k partitions is a few MiB; anything far beyond that is corruption.
SNAPSHOT_BYTES_MAX: Final = 256 * 1024 * 1024


class ControllerSnapshotError(ValueError):
    """A controller snapshot cannot be decoded: the bytes are corrupt or from a newer format."""


@dataclasses.dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Local limits checked by `prepare_*` on the controller leader (never by `apply`).

    They bound the metadata every broker must hold in memory and in each snapshot.
    """

    # Partitions one topic may have (the broker's max_partitions_per_topic).
    partition_count_per_topic_max: int = 1000
    # Partitions in the whole cluster: each is a Raft group with timers, files and memory.
    partition_count_max: int = 100_000
    topic_count_max: int = 10_000

    def validate(self) -> None:
        check_range("partition_count_per_topic_max", self.partition_count_per_topic_max, 1)
        check_range("partition_count_max", self.partition_count_max, 1)
        check_range("topic_count_max", self.topic_count_max, 1)


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerInfo:
    """A registered broker. `broker_epoch` is the metadata-log index of its latest registration."""

    node_id: int
    host: str
    port: int
    incarnation: int
    broker_epoch: int
    state: BrokerState
    # Marked by `BrokerDecommissioning`: leaving for good; no new replicas go to it. Kept across
    # the broker's re-registrations until `BrokerUnregistered` removes it.
    decommissioning: bool = False
    # Every listener's advertised (name, host, port), as registered (`BrokerRegistered`).
    endpoints: tuple[Endpoint, ...] = ()

    def endpoint_for(self, listener: str, default_listener: str) -> tuple[str, int] | None:
        """Where a client that connected on `listener` reaches this broker; None if it has no
        such listener (Kafka leaves it out of that client's metadata).

        A broker registered without endpoints (one listener, or an older broker) has one
        address, `host`/`port`, for `default_listener`: the inter-broker listener, whose name
        every broker of a cluster shares."""
        for name, host, port in self.endpoints:
            if name == listener:
                return host, port
        if not self.endpoints and listener == default_listener:
            return self.host, self.port
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition as recorded: its replicas (preferred leader first) and what its group reported.

    `replicas` is empty between a topic's creation and its assignment record (same log entry).
    """

    partition: int
    replicas: tuple[int, ...] = ()
    leader: int | None = None
    leader_epoch: int = 0
    in_sync_replicas: tuple[int, ...] = ()
    # A reassignment under way (broker/controller/reassignment.py): where the replicas go (empty:
    # none), which of them are new to the partition, and the replication throttle (0: default).
    # Meanwhile `replicas` is the union of the old and the target replicas.
    target_replicas: tuple[int, ...] = ()
    adding_replicas: tuple[int, ...] = ()
    reassignment_throttle_bytes_per_s: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class TopicInfo:
    """One topic: identity, replication factor, config overrides (canonical) and partitions."""

    name: str
    topic_id: str
    replication_factor: int
    configs: ConfigItems
    partitions: tuple[PartitionInfo, ...]

    @property
    def partition_count(self) -> int:
        return len(self.partitions)


@dataclasses.dataclass(frozen=True, slots=True)
class ControllerStatistics:
    """Counts for metrics and `broker-cli cluster status` (cache.py adds the per-partition view)."""

    applied_index: int
    broker_count: int
    brokers_by_state: tuple[tuple[BrokerState, int], ...]
    topic_count: int
    partition_count: int
    applied_record_count: int
    skipped_record_count: int


def _collision_key(name: str) -> str:
    # Kafka refuses topics that differ only in '.' versus '_': their metric names are equal.
    return name.replace(".", "_")


class ControllerStateMachine:
    """The metadata state machine. See the module docstring for the prepare/apply contract.

    The driver's duties: apply every committed record exactly once, in log order, with its index
    (the record's offset in the metadata log), skipping records at or below `applied_index` after
    loading a snapshot; propose the records of one command as ONE batch (one Raft entry) so they
    commit together; snapshot only between entries. With `validate=True` (tests, simulation)
    the whole state is checked after every record.
    """

    def __init__(
        self,
        config: ControllerConfig | None = None,
        *,
        log_defaults: LogConfig | None = None,
        validate: bool = False,
    ) -> None:
        self.config = config if config is not None else ControllerConfig()
        self.config.validate()
        # The base that topic config overrides are validated against (the broker's log settings).
        self.log_defaults = log_defaults if log_defaults is not None else LogConfig()
        self._validate = validate
        self._applied_index = 0
        self._brokers: dict[int, BrokerInfo] = {}
        self._topics: dict[str, TopicInfo] = {}
        self._topic_names_by_id: dict[str, str] = {}
        # node id -> incarnation of the process that was decommissioned (BrokerUnregistered):
        # that process may not register again.
        self._removed_incarnations: dict[int, int] = {}
        self._applied_record_count = 0
        self._skipped_record_count = 0
        # The users' SCRAM credentials (docs/security.md).
        self.scram_users = ScramUsers()
        self._appliers: dict[type, Callable[[Any, int], bool]] = {
            BrokerRegistered: self._apply_broker_registered,
            BrokerStateChanged: self._apply_broker_state_changed,
            BrokerDecommissioning: self._apply_broker_decommissioning,
            BrokerUnregistered: self._apply_broker_unregistered,
            TopicCreated: self._apply_topic_created,
            TopicDeleted: self._apply_topic_deleted,
            PartitionAssignment: self._apply_partition_assignment,
            PartitionsCreated: self._apply_partitions_created,
            PartitionLeaderChanged: self._apply_partition_leader_changed,
            ConfigSet: self._apply_config_set,
            PartitionReassignmentStarted: self._apply_reassignment,
            PartitionReassignmentCompleted: self._apply_reassignment,
            ScramCredentialSet: self.scram_users.apply_set,
            ScramCredentialRemoved: self.scram_users.apply_removed,
            AclCreated: self._apply_security,
            AclDeleted: self._apply_security,
            ClientQuotaSet: self._apply_security,
        }
        # ACLs and client quotas (docs/security.md): applied here, read by every request's check.
        self.security = SecurityState()

    # --- queries ----------------------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """The metadata-log index of the last applied record (0: nothing applied)."""
        return self._applied_index

    def broker(self, node_id: int) -> BrokerInfo | None:
        return self._brokers.get(node_id)

    def brokers(self) -> list[BrokerInfo]:
        """Every registered broker, by node id."""
        return [self._brokers[node_id] for node_id in sorted(self._brokers)]

    def active_broker_ids(self) -> list[int]:
        """Brokers in state ACTIVE and not decommissioning, sorted: the default live set for
        placement (a decommissioning broker is being emptied, not filled)."""
        return [
            info.node_id
            for info in self.brokers()
            if info.state is BrokerState.ACTIVE and not info.decommissioning
        ]

    def removed_incarnation(self, node_id: int) -> int | None:
        """The incarnation of `node_id`'s decommissioned process (None: never removed)."""
        return self._removed_incarnations.get(node_id)

    def hosts_replicas(self, node_id: int) -> bool:
        """Whether any partition has a replica on `node_id` (reassignments under way included:
        their `replicas` are the union of the old and the target ones)."""
        return any(node_id in p.replicas for t in self._topics.values() for p in t.partitions)

    def topic(self, name: str) -> TopicInfo | None:
        return self._topics.get(name)

    def topic_by_id(self, topic_id: str) -> TopicInfo | None:
        name = self._topic_names_by_id.get(topic_id)
        return self._topics[name] if name is not None else None

    def topics(self) -> list[TopicInfo]:
        """Every topic, by name."""
        return [self._topics[name] for name in sorted(self._topics)]

    def partition_count(self) -> int:
        return sum(topic.partition_count for topic in self._topics.values())

    def statistics(self) -> ControllerStatistics:
        by_state = {state: 0 for state in BrokerState}
        for info in self._brokers.values():
            by_state[info.state] += 1
        return ControllerStatistics(
            applied_index=self._applied_index,
            broker_count=len(self._brokers),
            brokers_by_state=tuple((state, by_state[state]) for state in BrokerState),
            topic_count=len(self._topics),
            partition_count=self.partition_count(),
            applied_record_count=self._applied_record_count,
            skipped_record_count=self._skipped_record_count,
        )

    # --- apply: every broker, every committed record ----------------------------------------------

    def apply(self, record: MetadataRecord, index: int) -> None:
        """Apply one committed record at metadata-log `index` (> applied_index). Deterministic."""
        assert index > self._applied_index, f"index {index} <= applied {self._applied_index}"
        applier = self._appliers.get(type(record))
        assert applier is not None, f"not a metadata record: {record!r}"
        if applier(record, index):
            self._applied_record_count += 1
        else:
            self._skipped_record_count += 1
        self._applied_index = index
        if self._validate:
            self.validate_state()

    def _apply_security(self, record: Any, index: int) -> bool:
        return self.security.apply(record)

    def _apply_broker_registered(self, record: BrokerRegistered, index: int) -> bool:
        known = self._brokers.get(record.node_id)
        if known is not None and _registration_of(known) == record:
            return False  # the same registration proposed twice (a retry across a failover)
        if self._removed_incarnations.get(record.node_id) == record.incarnation:
            return False  # the decommissioned process itself, still running
        self._brokers[record.node_id] = BrokerInfo(
            record.node_id,
            record.host,
            record.port,
            record.incarnation,
            index,
            BrokerState.FENCED,
            decommissioning=known is not None and known.decommissioning,
            endpoints=record.endpoints,
        )
        return True

    def _apply_broker_decommissioning(self, record: BrokerDecommissioning, index: int) -> bool:
        known = self._brokers.get(record.node_id)
        if known is None or known.decommissioning:
            return False
        self._brokers[record.node_id] = dataclasses.replace(known, decommissioning=True)
        return True

    def _apply_broker_unregistered(self, record: BrokerUnregistered, index: int) -> bool:
        known = self._brokers.get(record.node_id)
        # Only an emptied, decommissioning broker goes: a replica left on it would name an
        # unregistered broker (and a record racing a new reassignment must not strand one).
        if (
            known is None
            or not known.decommissioning
            or known.incarnation != record.incarnation  # it restarted meanwhile: proposed again
            or self.hosts_replicas(record.node_id)
        ):
            return False
        del self._brokers[record.node_id]
        self._removed_incarnations[record.node_id] = record.incarnation
        return True

    def _apply_broker_state_changed(self, record: BrokerStateChanged, index: int) -> bool:
        known = self._brokers.get(record.node_id)
        if known is None or known.broker_epoch != record.broker_epoch:
            return False  # meant for an earlier incarnation of the broker
        self._brokers[record.node_id] = dataclasses.replace(known, state=record.state)
        return True

    def _apply_topic_created(self, record: TopicCreated, index: int) -> bool:
        if (
            record.name in self._topics
            or record.topic_id in self._topic_names_by_id
            or self._colliding_topic(record.name) is not None
        ):
            return False  # lost a race with another create of this name
        partitions = tuple(PartitionInfo(number) for number in range(record.partition_count))
        self._topics[record.name] = TopicInfo(
            record.name, record.topic_id, record.replication_factor, record.configs, partitions
        )
        self._topic_names_by_id[record.topic_id] = record.name
        return True

    def _apply_topic_deleted(self, record: TopicDeleted, index: int) -> bool:
        if self._current_topic(record.name, record.topic_id) is None:
            return False
        del self._topics[record.name]
        del self._topic_names_by_id[record.topic_id]
        return True

    def _apply_partitions_created(self, record: PartitionsCreated, index: int) -> bool:
        topic = self._current_topic(record.topic, record.topic_id)
        if topic is None or record.partition_count <= topic.partition_count:
            return False  # a deleted topic, or a racing CreatePartitions already grew it
        added = tuple(
            PartitionInfo(number) for number in range(topic.partition_count, record.partition_count)
        )
        self._topics[record.topic] = dataclasses.replace(topic, partitions=topic.partitions + added)
        return True

    def _apply_partition_assignment(self, record: PartitionAssignment, index: int) -> bool:
        current = self._current_partition(record.topic, record.topic_id, record.partition)
        if current is None or any(node not in self._brokers for node in record.replicas):
            return False
        replicas = record.replicas
        # A replica that leaves the group leaves the in-sync set and cannot stay leader.
        in_sync = tuple(node for node in current.in_sync_replicas if node in replicas)
        leader = current.leader if current.leader in in_sync else None
        updated = dataclasses.replace(
            current, replicas=replicas, leader=leader, in_sync_replicas=in_sync
        )
        self._replace_partition(record.topic, updated)
        return True

    def _apply_partition_leader_changed(self, record: PartitionLeaderChanged, index: int) -> bool:
        current = self._current_partition(record.topic, record.topic_id, record.partition)
        if current is None or not _report_fits(current, record):
            return False
        updated = dataclasses.replace(
            current,
            leader=record.leader,
            leader_epoch=record.leader_epoch,
            in_sync_replicas=record.in_sync_replicas,
        )
        self._replace_partition(record.topic, updated)
        return True

    def _apply_reassignment(
        self, record: PartitionReassignmentStarted | PartitionReassignmentCompleted, index: int
    ) -> bool:
        current = self._current_partition(record.topic, record.topic_id, record.partition)
        if current is None or any(node not in self._brokers for node in record.replicas):
            return False
        if isinstance(record, PartitionReassignmentStarted):
            updated = reassignment.apply_started(current, record)
        else:
            updated = reassignment.apply_completed(current, record)
        if updated is None:
            return False
        self._replace_partition(record.topic, updated)
        return True

    def _apply_config_set(self, record: ConfigSet, index: int) -> bool:
        topic = self._current_topic(record.topic, record.topic_id)
        if topic is None:
            return False
        configs = dict(topic.configs)
        if record.value is None:
            configs.pop(record.key, None)
        else:
            configs[record.key] = record.value
        items = tuple(sorted(configs.items()))
        self._topics[record.topic] = dataclasses.replace(topic, configs=items)
        return True

    def _current_topic(self, name: str, topic_id: str) -> TopicInfo | None:
        # Records name a topic AND its id, so a record for a deleted topic never touches a new
        # topic that reuses the name.
        topic = self._topics.get(name)
        return topic if topic is not None and topic.topic_id == topic_id else None

    def _current_partition(self, name: str, topic_id: str, partition: int) -> PartitionInfo | None:
        topic = self._current_topic(name, topic_id)
        if topic is None or not 0 <= partition < topic.partition_count:
            return None
        return topic.partitions[partition]

    def _replace_partition(self, name: str, updated: PartitionInfo) -> None:
        topic = self._topics[name]
        partitions = list(topic.partitions)
        partitions[updated.partition] = updated
        self._topics[name] = dataclasses.replace(topic, partitions=tuple(partitions))

    def _colliding_topic(self, name: str) -> str | None:
        key = _collision_key(name)
        for existing in sorted(self._topics):
            if existing != name and _collision_key(existing) == key:
                return existing
        return None

    # --- prepare: the controller leader, before proposing -----------------------------------------

    def prepare_register_broker(
        self,
        node_id: int,
        host: str,
        port: int,
        incarnation: int,
        endpoints: tuple[Endpoint, ...] = (),
    ) -> list[MetadataRecord]:
        """Records for a broker's (re)registration; [] if this exact registration is known.

        Raises BrokerError(INVALID_REQUEST) for a bad id, host, port or endpoint, or a peer
        address (`host`/`port`) another unfenced broker has registered (two brokers given the
        same --listen). Other listeners' advertised addresses may repeat: a listener bound to
        0.0.0.0:9094 on every machine advertises that, and only its clients would be misled.
        """
        _require_int(node_id, 1, INT32_MAX, ErrorCode.INVALID_REQUEST, "node id")
        if not isinstance(host, str) or not host or len(host) > 255:
            raise BrokerError(ErrorCode.INVALID_REQUEST, f"broker host {host!r} is not a host name")
        _require_int(port, 1, PORT_MAX, ErrorCode.INVALID_REQUEST, "broker port")
        _require_int(incarnation, 0, INT64_MAX, ErrorCode.INVALID_REQUEST, "broker incarnation")
        try:
            check_endpoints("broker registration", endpoints)
        except MetadataRecordError as exc:
            raise BrokerError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        for other in self.brokers():
            if (
                other.node_id != node_id
                and (other.host, other.port) == (host, port)
                and other.state is not BrokerState.FENCED
            ):
                raise BrokerError(
                    ErrorCode.INVALID_REQUEST,
                    f"broker {other.node_id} already serves {host}:{port}; give broker {node_id} "
                    "its own --listen address (or stop broker "
                    f"{other.node_id} first)",
                )
        if self._removed_incarnations.get(node_id) == incarnation:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"broker {node_id} was decommissioned and removed from the cluster; stop this "
                "process (to bring the machine back, start a new broker process)",
            )
        record = BrokerRegistered(node_id, host, port, incarnation, endpoints)
        known = self._brokers.get(node_id)
        if known is not None and _registration_of(known) == record:
            return []
        return [record]

    def prepare_decommission_broker(self, node_id: int) -> list[MetadataRecord]:
        """The record that starts decommissioning `node_id`; [] if it already is.

        Raises BrokerError(INVALID_REQUEST) if the broker is not registered, or if no other
        ACTIVE broker would be left to take its replicas. Whether every partition finds a new
        home is checked when the moves are planned (`reassignment.plan_decommission`).
        """
        _require_int(node_id, 1, INT32_MAX, ErrorCode.INVALID_REQUEST, "node id")
        known = self._brokers.get(node_id)
        if known is None:
            registered = ", ".join(str(node) for node in sorted(self._brokers)) or "none"
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"broker {node_id} is not registered (registered brokers: {registered})",
            )
        if known.decommissioning:
            return []
        if not [node for node in self.active_broker_ids() if node != node_id]:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"broker {node_id} is the only active broker left; add a broker before "
                "decommissioning it",
            )
        return [BrokerDecommissioning(node_id)]

    def prepare_unregister_broker(self, node_id: int) -> list[MetadataRecord]:
        """The record that removes a decommissioned broker; [] if it is already gone.

        Raises BrokerError(INVALID_REQUEST) unless it is decommissioning and hosts no replica.
        """
        known = self._brokers.get(node_id)
        if known is None:
            return []
        if not known.decommissioning:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"broker {node_id} is not being decommissioned; decommission it first",
            )
        if self.hosts_replicas(node_id):
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"broker {node_id} still hosts replicas; wait for their reassignments",
            )
        return [BrokerUnregistered(node_id, known.incarnation)]

    def prepare_set_broker_state(
        self, node_id: int, state: BrokerState, *, broker_epoch: int
    ) -> list[MetadataRecord]:
        """Records to fence, unfence or shut down a broker; [] if it is already in `state`.

        `broker_epoch` is the epoch the decision was made for (from the broker's heartbeat).
        Raises BrokerError(INVALID_REQUEST) if the broker is unknown or the epoch is not current.
        """
        assert isinstance(state, BrokerState), state
        known = self._brokers.get(node_id)
        if known is None:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"broker {node_id} is not registered; it must register before its state changes",
            )
        if broker_epoch != known.broker_epoch:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"broker {node_id} epoch {broker_epoch} is stale: its current registration has "
                f"epoch {known.broker_epoch}; the broker must use the epoch it registered with",
            )
        if known.state is state:
            return []
        return [BrokerStateChanged(node_id, broker_epoch, state)]

    def prepare_create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        configs: Mapping[str, Any] | None = None,
        live_brokers: Collection[int] | None = None,
        *,
        topic_id: str,
    ) -> list[MetadataRecord]:
        """The records that create a topic: TopicCreated, then one PartitionAssignment each.

        `live_brokers`: the brokers replicas may go on (default: the ACTIVE ones); all must be
        registered. `topic_id`: 32 lowercase hex digits, fresh (the shell passes uuid4().hex; the
        core has no randomness). Propose the result as one batch. Raises BrokerError with
        INVALID_TOPIC, TOPIC_ALREADY_EXISTS, INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR,
        INVALID_CONFIG (naming the key), POLICY_VIOLATION (cluster limits) or INVALID_REQUEST.
        """
        self._check_new_topic_name(name)
        self._check_new_topic_id(topic_id)
        self._check_partition_count(partitions)
        live = sorted(set(live_brokers)) if live_brokers is not None else self.active_broker_ids()
        assert all(node in self._brokers for node in live), f"unregistered brokers in {live}"
        _check_replication_factor(replication_factor, live)
        canonical = canonical_configs(configs or {}, self.log_defaults)
        existing = (p.replicas for topic in self.topics() for p in topic.partitions)
        assignments = placement.assign_replicas(live, existing, partitions, replication_factor)
        records: list[MetadataRecord] = [
            TopicCreated(name, topic_id, partitions, replication_factor, canonical)
        ]
        records += [
            PartitionAssignment(name, topic_id, number, replicas)
            for number, replicas in enumerate(assignments)
        ]
        return records

    def _check_new_topic_name(self, name: str) -> None:
        check_topic_name(name)
        existing = self._topics.get(name)
        if existing is not None:
            raise BrokerError(
                ErrorCode.TOPIC_ALREADY_EXISTS,
                f"topic {name!r} already exists with {existing.partition_count} partition(s); "
                "pick another name or delete it first",
            )
        colliding = self._colliding_topic(name)
        if colliding is not None:
            raise BrokerError(
                ErrorCode.INVALID_TOPIC,
                f"topic {name!r} collides with existing topic {colliding!r}: '.' and '_' are the "
                "same in metric names; pick a name that differs in more than those characters",
            )
        if len(self._topics) >= self.config.topic_count_max:
            raise BrokerError(
                ErrorCode.POLICY_VIOLATION,
                f"the cluster already has {len(self._topics)} topics, its limit "
                "(topic_count_max); delete unused topics or raise the limit",
            )

    def _check_new_topic_id(self, topic_id: str) -> None:
        try:
            check_topic_id("topic", topic_id)
        except MetadataRecordError as exc:
            raise BrokerError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        used_by = self._topic_names_by_id.get(topic_id)
        if used_by is not None:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"topic id {topic_id} is already used by topic {used_by!r}; generate a fresh one",
            )

    def _check_partition_count(self, partitions: int) -> None:
        limit = self.config.partition_count_per_topic_max
        _require_int(partitions, 1, limit, ErrorCode.INVALID_PARTITIONS, "partition count")
        total = self.partition_count() + partitions
        if total > self.config.partition_count_max:
            raise BrokerError(
                ErrorCode.POLICY_VIOLATION,
                f"{partitions} more partition(s) would bring the cluster to {total}, above its "
                f"limit of {self.config.partition_count_max} (partition_count_max); delete "
                "unused topics, use fewer partitions or raise the limit",
            )

    def prepare_create_partitions(
        self, name: str, partition_count: int, live_brokers: Collection[int] | None = None
    ) -> list[MetadataRecord]:
        """The records that raise topic `name` to `partition_count` partitions (the new total):
        PartitionsCreated, then one PartitionAssignment per new partition, placed on the
        `live_brokers` (default: the ACTIVE ones) as a new topic's are. Propose them as one
        batch. Raises BrokerError with UNKNOWN_TOPIC, INVALID_PARTITIONS (not above the current
        count, or above partition_count_per_topic_max), INVALID_REPLICATION_FACTOR (too few live
        brokers) or POLICY_VIOLATION (partition_count_max)."""
        topic = self._require_topic(name)
        current = topic.partition_count
        limit = self.config.partition_count_per_topic_max
        _require_int(partition_count, 1, limit, ErrorCode.INVALID_PARTITIONS, "partition count")
        if partition_count <= current:
            raise BrokerError(
                ErrorCode.INVALID_PARTITIONS,
                f"topic {name!r} has {current} partition(s); the new count must be larger "
                f"(got {partition_count}): partitions can be added, never removed",
            )
        self._check_partition_count(partition_count - current)
        live = sorted(set(live_brokers)) if live_brokers is not None else self.active_broker_ids()
        assert all(node in self._brokers for node in live), f"unregistered brokers in {live}"
        _check_replication_factor(topic.replication_factor, live)
        existing = (p.replicas for info in self.topics() for p in info.partitions)
        assignments = placement.assign_replicas(
            live, existing, partition_count - current, topic.replication_factor
        )
        records: list[MetadataRecord] = [PartitionsCreated(name, topic.topic_id, partition_count)]
        records += [
            PartitionAssignment(name, topic.topic_id, current + number, replicas)
            for number, replicas in enumerate(assignments)
        ]
        return records

    def prepare_delete_topic(self, name: str) -> list[MetadataRecord]:
        """The record that deletes a topic; raises BrokerError(UNKNOWN_TOPIC) if there is none."""
        topic = self._require_topic(name)
        return [TopicDeleted(name, topic.topic_id)]

    def prepare_alter_configs(
        self,
        topic: str,
        configs: Mapping[str, ConfigValue],
        reset: Sequence[str] = (),
    ) -> list[MetadataRecord]:
        """The records that set `configs` and remove the `reset` overrides of a topic: one
        `ConfigSet` per key whose value changes ([] if none does).

        The topic's overrides with every change applied are validated together, as Kafka does, so
        e.g. max.message.bytes cannot exceed segment.bytes and one bad value changes nothing.
        Raises BrokerError with UNKNOWN_TOPIC or INVALID_CONFIG (naming the key as written).
        """
        info = self._require_topic(topic)
        written = {canonical_config_key(key): key for key in (*reset, *configs)}
        overrides: dict[str, Any] = dict(info.configs)
        for key in reset:
            overrides.pop(canonical_config_key(key), None)
        for key, value in configs.items():
            overrides[canonical_config_key(key)] = value
        try:
            validated = dict(canonical_configs(overrides, self.log_defaults))
        except BrokerError as exc:
            # Name the key as the user wrote it, not its canonical spelling.
            message = exc.message
            for canonical_key, key in written.items():
                message = message.replace(repr(canonical_key), repr(key))
            raise BrokerError(exc.code, message) from None
        current = dict(info.configs)
        return [
            ConfigSet(topic, info.topic_id, key, validated.get(key))
            for key in sorted(written)
            if validated.get(key) != current.get(key)
        ]

    def prepare_leader_change(
        self,
        topic: str,
        partition: int,
        leader: int | None,
        leader_epoch: int,
        in_sync_replicas: Collection[int],
    ) -> list[MetadataRecord]:
        """The record publishing a partition group's leader report; [] if nothing changed.

        Raises BrokerError: UNKNOWN_TOPIC / UNKNOWN_PARTITION; NOT_LEADER if `leader_epoch` is
        older than the recorded one (the reporter was deposed); INVALID_REQUEST if the leader or
        an in-sync replica is not a replica, or the leader is not in sync.
        """
        info = self._require_topic(topic)
        if not isinstance(partition, int) or not 0 <= partition < info.partition_count:
            raise BrokerError(
                ErrorCode.UNKNOWN_PARTITION,
                f"topic {topic!r} has partitions 0 to {info.partition_count - 1}, not {partition}",
            )
        current = info.partitions[partition]
        where = f"{topic}-{partition}"
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in in_sync_replicas):
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"{where}: in-sync replicas must be node ids, got {list(in_sync_replicas)!r}",
            )
        in_sync = tuple(sorted(in_sync_replicas))
        try:
            record = PartitionLeaderChanged(
                topic, info.topic_id, partition, leader, leader_epoch, in_sync
            )
        except MetadataRecordError as exc:
            raise BrokerError(ErrorCode.INVALID_REQUEST, f"{where}: {exc}") from None
        if not current.replicas:
            raise BrokerError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"{where} has no replicas assigned yet; retry"
            )
        outsiders = [node for node in (leader, *in_sync) if node is not None]
        outsiders = sorted({node for node in outsiders if node not in current.replicas})
        if outsiders:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"{where}: brokers {outsiders} are not among its replicas {list(current.replicas)}",
            )
        if leader_epoch < current.leader_epoch:
            raise BrokerError(
                ErrorCode.NOT_LEADER,
                f"{where}: leader epoch {leader_epoch} is older than the recorded epoch "
                f"{current.leader_epoch} (leader {current.leader}); refresh metadata and retry",
            )
        if not _report_fits(current, record):
            raise BrokerError(
                ErrorCode.INVALID_REQUEST,
                f"{where}: broker {leader} cannot lead epoch {leader_epoch}, which broker "
                f"{current.leader} already leads",
            )
        if (current.leader, current.leader_epoch, current.in_sync_replicas) == (
            leader,
            leader_epoch,
            in_sync,
        ):
            return []
        return [record]

    def _require_topic(self, name: str) -> TopicInfo:
        info = self._topics.get(name)
        if info is None:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {name!r} does not exist")
        return info

    # --- snapshots --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The whole replicated state as deterministic msgpack (docs/controller.md, Snapshots)."""
        # A decommissioning broker's row has one more field, and "removed_brokers" is there
        # only once a broker was removed: a snapshot of a cluster that never decommissioned a
        # broker is byte for byte what brokers without decommissioning wrote.
        # Likewise for a broker's endpoints (`_broker_row`).
        brokers = [_broker_row(b) for b in self.brokers()]
        topics = [
            [
                t.name,
                t.topic_id,
                t.replication_factor,
                dict(t.configs),
                [_partition_row(p) for p in t.partitions],
            ]
            for t in self.topics()
        ]
        snapshot = {
            "format": SNAPSHOT_FORMAT,
            "applied_index": self._applied_index,
            "brokers": brokers,
            "topics": topics,
        }
        if self._removed_incarnations:
            snapshot["removed_brokers"] = [
                [node_id, self._removed_incarnations[node_id]]
                for node_id in sorted(self._removed_incarnations)
            ]
        if len(self.scram_users):
            # Only once a user exists, as "removed_brokers": older snapshots stay byte-equal.
            snapshot["scram_credentials"] = self.scram_users.to_rows()
        if not self.security.is_empty():
            # Only when there is some: snapshots without security state are unchanged.
            snapshot["security"] = self.security.to_wire()
        return msgpack.packb(snapshot, use_bin_type=True)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        config: ControllerConfig | None = None,
        *,
        log_defaults: LogConfig | None = None,
        validate: bool = False,
    ) -> ControllerStateMachine:
        """Rebuild a state machine from `to_bytes()` output; raise ControllerSnapshotError if the
        bytes are not a valid snapshot (checked in full: a snapshot is trusted by every query)."""
        machine = cls(config, log_defaults=log_defaults, validate=validate)
        try:
            snapshot = unpack_bounded(data, SNAPSHOT_BYTES_MAX, "controller snapshot")
            machine._load(snapshot)
        except (MetadataRecordError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ControllerSnapshotError):
                raise
            raise ControllerSnapshotError(f"corrupt controller snapshot: {exc}") from None
        problems = machine.state_problems()
        if problems:
            raise ControllerSnapshotError(f"inconsistent controller snapshot: {problems[0]}")
        return machine

    def _load(self, snapshot: Any) -> None:
        required = {"format", "applied_index", "brokers", "topics"}
        if not isinstance(snapshot, dict) or not required <= set(snapshot) <= {
            *required,
            "removed_brokers",
            "scram_credentials",
            "security",
        }:
            raise ControllerSnapshotError("not a controller snapshot")
        if snapshot["format"] != SNAPSHOT_FORMAT:
            raise ControllerSnapshotError(
                f"snapshot format {snapshot['format']!r} is not {SNAPSHOT_FORMAT}; a newer broker "
                "wrote it: upgrade this broker"
            )
        check_int("snapshot", "applied_index", snapshot["applied_index"], 0, INT64_MAX)
        self._applied_index = snapshot["applied_index"]
        brokers = snapshot["brokers"]
        if not isinstance(brokers, list):
            raise ControllerSnapshotError("expected a list of broker rows")
        for row in brokers:
            info = _broker_from_row(row)
            if info.node_id in self._brokers:
                raise ControllerSnapshotError(f"broker {info.node_id} appears twice")
            self._brokers[info.node_id] = info
        for node_id, incarnation in _rows(snapshot.get("removed_brokers", []), 2, "removed broker"):
            BrokerUnregistered(node_id, incarnation)  # the record's checks
            self._removed_incarnations[node_id] = incarnation
        for row in _rows(snapshot["topics"], 5, "topic"):
            topic = _topic_from_row(row)
            if topic.name in self._topics or topic.topic_id in self._topic_names_by_id:
                raise ControllerSnapshotError(f"topic {topic.name!r} appears twice")
            self._topics[topic.name] = topic
            self._topic_names_by_id[topic.topic_id] = topic.name
        self.scram_users.load_rows(snapshot.get("scram_credentials", []))
        if "security" in snapshot:
            self.security = SecurityState.from_wire(snapshot["security"])

    def __eq__(self, other: object) -> bool:
        """Equal replicated state (applied index, brokers, topics); local config and counters
        are not part of it."""
        if not isinstance(other, ControllerStateMachine):
            return NotImplemented
        return (
            self._applied_index,
            self._brokers,
            self._topics,
            self._removed_incarnations,
            self.scram_users,
            self.security,
        ) == (
            other._applied_index,
            other._brokers,
            other._topics,
            other._removed_incarnations,
            other.scram_users,
            other.security,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    # --- invariants -------------------------------------------------------------------------------

    def validate_state(self) -> None:
        """Assert every invariant (tests and simulation run this after each record)."""
        problems = self.state_problems()
        assert not problems, problems

    def state_problems(self) -> list[str]:
        """Every broken invariant, described; [] when the state is consistent."""
        problems: list[str] = []
        for node_id, info in sorted(self._brokers.items()):
            if node_id != info.node_id or info.broker_epoch > self._applied_index:
                problems.append(f"broker {node_id}: bad id or epoch {info.broker_epoch}")
        if sorted(self._topic_names_by_id.values()) != sorted(self._topics):
            problems.append("topic id index does not match the topics")
        seen_keys: dict[str, str] = {}
        for topic in self.topics():
            if self._topic_names_by_id.get(topic.topic_id) != topic.name:
                problems.append(f"topic {topic.name!r}: id {topic.topic_id} not indexed")
            key = _collision_key(topic.name)
            if key in seen_keys:
                problems.append(f"topics {seen_keys[key]!r} and {topic.name!r} collide")
            seen_keys[key] = topic.name
            problems += self._partition_problems(topic)
        return problems

    def _partition_problems(self, topic: TopicInfo) -> list[str]:
        problems: list[str] = []
        if not topic.partitions:
            problems.append(f"topic {topic.name!r} has no partitions")
        for number, info in enumerate(topic.partitions):
            where = f"{topic.name}-{number}"
            if info.partition != number:
                problems.append(f"{where}: numbered {info.partition}")
            if any(node not in self._brokers for node in info.replicas):
                problems.append(f"{where}: replicas {info.replicas} include unregistered brokers")
            if any(node not in info.replicas for node in info.in_sync_replicas):
                problems.append(f"{where}: in-sync {info.in_sync_replicas} not all replicas")
            if info.leader is not None and info.leader not in info.in_sync_replicas:
                problems.append(f"{where}: leader {info.leader} is not in sync")
            if not set(info.target_replicas) <= set(info.replicas) or not set(
                info.adding_replicas
            ) <= set(info.target_replicas):
                problems.append(f"{where}: reassignment target not among the replicas")
        return problems


# --- helpers -------------------------------------------------------------------------------------


def _report_fits(current: PartitionInfo, record: PartitionLeaderChanged) -> bool:
    """Whether a leader report may replace what is recorded (same rule in prepare and apply).

    Raft elects at most one leader per term, so a report for an older epoch is stale, and a report
    naming a different leader for the recorded epoch contradicts the recorded one.
    """
    if not current.replicas:
        return False
    if record.leader is not None and record.leader not in current.replicas:
        return False
    if any(node not in current.replicas for node in record.in_sync_replicas):
        return False
    if record.leader_epoch < current.leader_epoch:
        return False
    return not (
        record.leader_epoch == current.leader_epoch
        and current.leader is not None
        and record.leader is not None
        and record.leader != current.leader
    )


def _require_int(value: Any, low: int, high: int, code: ErrorCode, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BrokerError(code, f"{what} must be an integer from {low} to {high}, got {value!r}")


def _check_replication_factor(replication_factor: int, live: list[int]) -> None:
    _require_int(
        replication_factor,
        1,
        REPLICA_COUNT_MAX,
        ErrorCode.INVALID_REPLICATION_FACTOR,
        "replication factor",
    )
    if replication_factor > len(live):
        brokers = "broker" if len(live) == 1 else "brokers"
        listed = f" ({', '.join(map(str, live))})" if live else ""
        raise BrokerError(
            ErrorCode.INVALID_REPLICATION_FACTOR,
            f"replication factor {replication_factor} is larger than the {len(live)} live "
            f"{brokers}{listed}; start more brokers or lower --replication-factor",
        )


def _rows(value: Any, width: int, what: str) -> list[list[Any]]:
    if not isinstance(value, list) or any(
        not isinstance(row, list) or len(row) != width for row in value
    ):
        raise ControllerSnapshotError(f"expected a list of {what} rows of {width} fields")
    return value


def _broker_row(b: BrokerInfo) -> list[Any]:
    """Six fields; a seventh, True, for a decommissioning broker; a broker registered with
    endpoints has both the seventh (True or False) and an eighth, [[listener, host, port], ...]."""
    row = [b.node_id, b.host, b.port, b.incarnation, b.broker_epoch, b.state.value]
    if b.endpoints:
        return [*row, b.decommissioning, [list(endpoint) for endpoint in b.endpoints]]
    return [*row, True] if b.decommissioning else row


def _broker_from_row(row: Any) -> BrokerInfo:
    # The shapes `_broker_row` writes.
    well_formed = isinstance(row, list) and (
        (len(row) in (6, 7) and row[6:] in ([], [True]))
        or (len(row) == 8 and isinstance(row[6], bool) and isinstance(row[7], list) and row[7])
    )
    if not well_formed:
        raise ControllerSnapshotError(
            "expected broker rows of 6 fields (7 when decommissioning, 8 with endpoints), got "
            f"{row!r:.200}"
        )
    node_id, host, port, incarnation, broker_epoch, state = row[:6]
    endpoints = endpoints_from_wire(row[7]) if row[7:] else ()
    # Reuse the record checks: a snapshot row holds what a BrokerRegistered held.
    BrokerRegistered(node_id, host, port, incarnation, endpoints)
    check_int("snapshot broker", "broker_epoch", broker_epoch, 0, INT64_MAX)
    return BrokerInfo(
        node_id,
        host,
        port,
        incarnation,
        broker_epoch,
        BrokerState(state),
        decommissioning=row[6:7] == [True],
        endpoints=endpoints,
    )


def _registration_of(info: BrokerInfo) -> BrokerRegistered:
    """The registration `info` was made by (to recognise one proposed twice)."""
    return BrokerRegistered(info.node_id, info.host, info.port, info.incarnation, info.endpoints)


def _partition_row(p: PartitionInfo) -> list[Any]:
    row = [list(p.replicas), p.leader, p.leader_epoch, list(p.in_sync_replicas)]
    if p.target_replicas:
        # Only a partition being reassigned has the three more fields: a snapshot without any
        # reassignment is byte for byte what brokers without reassignment wrote.
        row += [
            list(p.target_replicas),
            list(p.adding_replicas),
            p.reassignment_throttle_bytes_per_s,
        ]
    return row


def _reassigning_partition_from_row(number: int, row: list[Any]) -> PartitionInfo:
    base = _topic_partition_from_row(number, row[:4])
    target, adding, throttle = row[4:]
    target = tuple(target) if isinstance(target, list) else target
    adding = tuple(adding) if isinstance(adding, list) else adding
    check_node_ids("snapshot partition", "target_replicas", target)
    check_node_ids("snapshot partition", "adding_replicas", adding, allow_empty=True)
    check_int("snapshot partition", "reassignment_throttle", throttle, 0, INT64_MAX)
    return dataclasses.replace(
        base,
        target_replicas=target,
        adding_replicas=adding,
        reassignment_throttle_bytes_per_s=throttle,
    )


def _topic_partition_from_row(number: int, row: list[Any]) -> PartitionInfo:
    replicas, leader, leader_epoch, in_sync = row
    replicas = tuple(replicas) if isinstance(replicas, list) else replicas
    in_sync = tuple(in_sync) if isinstance(in_sync, list) else in_sync
    check_node_ids("snapshot partition", "replicas", replicas, allow_empty=True)
    check_node_ids("snapshot partition", "in_sync_replicas", in_sync, allow_empty=True)
    if leader is not None:
        check_int("snapshot partition", "leader", leader, 1, INT32_MAX)
    check_int("snapshot partition", "leader_epoch", leader_epoch, 0, INT64_MAX)
    return PartitionInfo(number, replicas, leader, leader_epoch, in_sync)


def _topic_from_row(row: list[Any]) -> TopicInfo:
    name, topic_id, replication_factor, configs, partition_rows = row
    check_str("snapshot topic", "name", name, TOPIC_NAME_LENGTH_MAX)
    check_topic_id("snapshot topic", topic_id)
    check_int("snapshot topic", "replication_factor", replication_factor, 1, REPLICA_COUNT_MAX)
    if not isinstance(configs, dict):
        raise ControllerSnapshotError(f"topic {name!r}: configs are not a map")
    items = tuple(sorted(configs.items(), key=lambda item: str(item[0])))
    check_config_items("snapshot topic", items)
    partitions: list[PartitionInfo] = []
    if not isinstance(partition_rows, list):
        raise ControllerSnapshotError(f"topic {name!r}: partitions are not a list")
    for number, partition_row in enumerate(partition_rows):
        if isinstance(partition_row, list) and len(partition_row) == 7:
            partitions.append(_reassigning_partition_from_row(number, partition_row))
            continue
        (partition_row,) = _rows([partition_row], 4, "partition")
        partitions.append(_topic_partition_from_row(number, partition_row))
    return TopicInfo(name, topic_id, replication_factor, items, tuple(partitions))
