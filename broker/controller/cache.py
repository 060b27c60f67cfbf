"""MetadataCache: the read view of cluster metadata that every broker keeps and serves Metadata.

It is a live view over the broker's `ControllerStateMachine` (which the metadata-log driver feeds),
never a copy: a lookup always reflects every record applied so far, and there is nothing to keep in
sync. The state records facts as reported (replicas, the leader a partition's Raft group elected,
its in-sync replicas); the cache adds what follows from the brokers' states: a leader, or an
in-sync replica, on a FENCED broker does not count, because clients cannot be served by it.
So `leader_for` answers None (clients get LEADER_NOT_AVAILABLE and retry) until the partition's
group elects a leader on a serving broker and reports it.

Rules: pure, read-only (it never changes the state machine); every list is in a stable order
(brokers by id, topics by name, partitions by number).
"""

from __future__ import annotations

import dataclasses

from broker.controller import placement
from broker.controller.records import BrokerState
from broker.controller.state import (
    BrokerInfo,
    ControllerStateMachine,
    PartitionInfo,
    TopicInfo,
)
from wire.error_codes import BrokerError, ErrorCode

# Brokers that serve clients: a broker shutting down keeps serving until its leaderships move.
_SERVING_STATES = (BrokerState.ACTIVE, BrokerState.SHUTTING_DOWN)


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionView:
    """One partition as a Metadata response describes it.

    `leader` is None unless the reported leader's broker is serving; `in_sync_replicas` keeps only
    serving brokers; `offline_replicas` are replicas on brokers that are not serving.
    `recorded_leader` is the leader as last reported, for diagnostics.
    """

    topic: str
    topic_id: str
    partition: int
    replicas: tuple[int, ...]
    leader: int | None
    leader_epoch: int
    in_sync_replicas: tuple[int, ...]
    offline_replicas: tuple[int, ...]
    recorded_leader: int | None

    @property
    def preferred_leader(self) -> int | None:
        return self.replicas[0] if self.replicas else None

    @property
    def is_offline(self) -> bool:
        """No serving leader: produce and fetch cannot proceed."""
        return self.leader is None

    @property
    def is_under_replicated(self) -> bool:
        """Led, but fewer replicas are in sync than exist: another failure may stop it."""
        return self.leader is not None and len(self.in_sync_replicas) < len(self.replicas)


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerStatus:
    """One broker row of `broker-cli cluster status`."""

    node_id: int
    host: str
    port: int
    state: BrokerState
    broker_epoch: int
    replica_count: int
    leader_count: int
    preferred_leader_count: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """Everything `broker-cli cluster status` and the cluster metrics show.

    `controller_leader` is supplied by the caller (the metadata-log Raft group knows it; the cache
    does not). Partition lists hold (topic, partition) pairs, sorted.
    """

    controller_leader: int | None
    metadata_index: int
    brokers: tuple[BrokerStatus, ...]
    topic_count: int
    partition_count: int
    offline_partitions: tuple[tuple[str, int], ...]
    under_replicated_partitions: tuple[tuple[str, int], ...]
    # Partitions led by a broker other than their preferred leader (balance to restore).
    preferred_leader_imbalance_count: int


class MetadataCache:
    """Lookups for Metadata requests, produce/fetch routing and cluster status.

    Build it once per broker over the state machine the metadata-log driver applies records to.
    Unknown topics and partitions raise BrokerError (UNKNOWN_TOPIC, UNKNOWN_PARTITION) so a
    handler can turn them into per-topic wire errors.
    """

    def __init__(self, state: ControllerStateMachine) -> None:
        self._state = state

    @classmethod
    def from_snapshot(cls, data: bytes) -> MetadataCache:
        """A cache over the state in a controller snapshot (raises ControllerSnapshotError)."""
        return cls(ControllerStateMachine.from_bytes(data))

    @property
    def metadata_index(self) -> int:
        """The metadata-log index this view reflects; it only grows."""
        return self._state.applied_index

    # --- brokers ----------------------------------------------------------------------------------

    def brokers(self) -> list[BrokerInfo]:
        """Every registered broker, by node id, whatever its state."""
        return self._state.brokers()

    def broker(self, node_id: int) -> BrokerInfo | None:
        return self._state.broker(node_id)

    def serving_broker_ids(self) -> list[int]:
        """Brokers clients may be sent to (ACTIVE or SHUTTING_DOWN), sorted."""
        return [info.node_id for info in self.brokers() if info.state in _SERVING_STATES]

    def live_broker_ids(self) -> list[int]:
        """ACTIVE brokers, sorted: where new replicas and preferred leaders may go."""
        return self._state.active_broker_ids()

    def address_of(self, node_id: int) -> tuple[str, int] | None:
        """Where peers reach broker `node_id` (its registered inter-broker address); None if it
        is not registered."""
        info = self._state.broker(node_id)
        return (info.host, info.port) if info is not None else None

    def endpoint_of(
        self, node_id: int, listener: str, default_listener: str
    ) -> tuple[str, int] | None:
        """Where a client connected on `listener` reaches broker `node_id`; None if it is not
        registered or has no such listener (`BrokerInfo.endpoint_for`)."""
        info = self._state.broker(node_id)
        return info.endpoint_for(listener, default_listener) if info is not None else None

    # --- topics and partitions --------------------------------------------------------------------

    def topic_names(self) -> list[str]:
        return [topic.name for topic in self._state.topics()]

    def topic(self, name: str) -> TopicInfo | None:
        return self._state.topic(name)

    def require_topic(self, name: str) -> TopicInfo:
        topic = self._state.topic(name)
        if topic is None:
            raise BrokerError(
                ErrorCode.UNKNOWN_TOPIC,
                f"topic {name!r} does not exist; create it first (broker-cli topics create)",
            )
        return topic

    def partitions_for(self, topic: str) -> list[PartitionView]:
        """Every partition of `topic`, by number. Raises BrokerError(UNKNOWN_TOPIC)."""
        info = self.require_topic(topic)
        serving = set(self.serving_broker_ids())
        return [_view(info, partition, serving) for partition in info.partitions]

    def partition(self, topic: str, partition: int) -> PartitionView:
        """One partition. Raises BrokerError(UNKNOWN_TOPIC / UNKNOWN_PARTITION)."""
        info = self.require_topic(topic)
        if not isinstance(partition, int) or not 0 <= partition < info.partition_count:
            raise BrokerError(
                ErrorCode.UNKNOWN_PARTITION,
                f"topic {topic!r} has partitions 0 to {info.partition_count - 1}, not {partition}",
            )
        return _view(info, info.partitions[partition], set(self.serving_broker_ids()))

    def leader_for(self, topic: str, partition: int) -> int | None:
        """The serving leader of a partition, or None while it has none (LEADER_NOT_AVAILABLE).

        Raises BrokerError(UNKNOWN_TOPIC / UNKNOWN_PARTITION).
        """
        return self.partition(topic, partition).leader

    def all_partitions(self) -> list[PartitionView]:
        """Every partition of every topic, by (topic, partition)."""
        serving = set(self.serving_broker_ids())
        return [
            _view(topic, partition, serving)
            for topic in self._state.topics()
            for partition in topic.partitions
        ]

    def under_replicated(self) -> list[PartitionView]:
        """Partitions with a leader but fewer in-sync replicas than replicas."""
        return [view for view in self.all_partitions() if view.is_under_replicated]

    def offline_partitions(self) -> list[PartitionView]:
        """Partitions without a serving leader (including ones whose group has not reported)."""
        return [view for view in self.all_partitions() if view.is_offline]

    def preferred_leader_elections(
        self, *, election_count_max: int | None = None
    ) -> list[placement.LeaderElection]:
        """Partitions to move back to their preferred leader (see placement.py for the rule)."""
        return placement.preferred_leader_elections(
            self.all_partitions(),
            self.live_broker_ids(),
            election_count_max=election_count_max,
        )

    # --- status -----------------------------------------------------------------------------------

    def statistics(self, *, controller_leader: int | None) -> ClusterStatistics:
        """The cluster summary; the caller supplies who leads the controller group."""
        views = self.all_partitions()
        # One pass over the partitions (there may be 100k), counting per broker.
        replica_counts: dict[int, int] = {}
        leader_counts: dict[int, int] = {}
        preferred_counts: dict[int, int] = {}
        for view in views:
            for node in view.replicas:
                replica_counts[node] = replica_counts.get(node, 0) + 1
            if view.leader is not None:
                leader_counts[view.leader] = leader_counts.get(view.leader, 0) + 1
            if view.preferred_leader is not None:
                preferred = view.preferred_leader
                preferred_counts[preferred] = preferred_counts.get(preferred, 0) + 1
        rows = [
            BrokerStatus(
                node_id=info.node_id,
                host=info.host,
                port=info.port,
                state=info.state,
                broker_epoch=info.broker_epoch,
                replica_count=replica_counts.get(info.node_id, 0),
                leader_count=leader_counts.get(info.node_id, 0),
                preferred_leader_count=preferred_counts.get(info.node_id, 0),
            )
            for info in self.brokers()
        ]
        return ClusterStatistics(
            controller_leader=controller_leader,
            metadata_index=self.metadata_index,
            brokers=tuple(rows),
            topic_count=len(self._state.topics()),
            partition_count=len(views),
            offline_partitions=tuple((v.topic, v.partition) for v in views if v.is_offline),
            under_replicated_partitions=tuple(
                (v.topic, v.partition) for v in views if v.is_under_replicated
            ),
            preferred_leader_imbalance_count=sum(
                v.leader is not None and v.leader != v.preferred_leader for v in views
            ),
        )


def _view(topic: TopicInfo, info: PartitionInfo, serving: set[int]) -> PartitionView:
    # `serving` is a set of ints, used only for membership: its order never leaks out.
    leader = info.leader if info.leader in serving else None
    return PartitionView(
        topic=topic.name,
        topic_id=topic.topic_id,
        partition=info.partition,
        replicas=info.replicas,
        leader=leader,
        leader_epoch=info.leader_epoch,
        in_sync_replicas=tuple(node for node in info.in_sync_replicas if node in serving),
        offline_replicas=tuple(node for node in info.replicas if node not in serving),
        recorded_leader=info.leader,
    )
