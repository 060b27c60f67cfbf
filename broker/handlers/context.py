"""What request handlers share: the broker's partitions, topics, flusher, metrics and config.

`PartitionState` is one partition as the serving layer sees it: its log, whether this broker leads
it, its high watermark, how an append is made and acknowledged, and the waiters to wake when the
high watermark moves. Two kinds exist: this module's local partition of a single-node broker, and
`broker.cluster.serving.ReplicaPartitionState`, a replica whose appends go through its Raft group
and whose high watermark is the commit index.

High watermark (HW) on a single node, the exclusive end of what fetches may read:
- topic flush policy `always`: HW = the log's flushed offset, so a record is visible only once it
  is durable, whatever acks its producer asked for;
- `interval` / `never`: HW = the log end offset.

Rules: everything here runs in the trio thread; there is no await between reading state and
registering a waiter, so no wake-up is lost.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from broker.appended import Appended
from broker.config import BrokerConfig, FlushPolicy
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)


class Flusher(Protocol):
    """The part of `broker.log.flusher.LogFlusher` the handlers need."""

    async def wait_durable(self, log: Any, end_offset: int) -> None: ...
    def flush_soon(self, log: Any, on_durable: Callable[[], None]) -> bool: ...


class Metrics(Protocol):
    """Counters the handlers feed (broker.metrics.BrokerMetrics; a no-op stand-in in tests)."""

    def records_in(self, topic: str, records: int, size_bytes: int) -> None: ...
    def records_out(self, topic: str, records: int, size_bytes: int) -> None: ...
    def duplicate_batch(self, topic: str) -> None: ...


class NullMetrics:
    def records_in(self, topic: str, records: int, size_bytes: int) -> None:
        pass

    def records_out(self, topic: str, records: int, size_bytes: int) -> None:
        pass

    def duplicate_batch(self, topic: str) -> None:
        pass


class NotLeaderForPartitionError(BrokerError):
    """NOT_LEADER for a partition this broker hosts a follower replica of, with the leader it
    knows (`leader_id`, -1 during an election) and that leader's epoch: the produce and fetch
    answers carry both, so a client retries at the new leader without a metadata round."""

    def __init__(self, state: PartitionState) -> None:
        super().__init__(ErrorCode.NOT_LEADER, state.not_leader_message())
        self.leader_id = state.leader_id if state.leader_id > 0 else -1
        self.leader_epoch = state.leader_epoch if self.leader_id > 0 else -1


def leader_hint(error: BrokerError) -> dict[str, int]:
    """The leader fields of a produce or fetch partition result for `error` (none: defaults).
    A Raft `NotLeaderError` (a leadership lost while a produce waited) knows the new leader's
    id (`leader_hint`, 0: none) but not its epoch."""
    if isinstance(error, NotLeaderForPartitionError):
        return {"leader_id": error.leader_id, "leader_epoch": error.leader_epoch}
    raft_hint = getattr(error, "leader_hint", 0)
    if error.code is ErrorCode.NOT_LEADER and isinstance(raft_hint, int) and raft_hint > 0:
        return {"leader_id": raft_hint}
    return {}


class PartitionState:
    """One partition of a single-node broker. See the module docstring for the high watermark."""

    def __init__(
        self, topic: str, partition: int, log: Any, *, leader_id: int, flusher: Flusher
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.log = log
        self.leader_id = leader_id
        self.leader_epoch = 0
        self._node_id = leader_id
        self._flusher = flusher
        # Per-fetch events to set when the high watermark moves (each fetch registers its own).
        self.waiters: set[trio.Event] = set()
        # Set when appended data waits for an fsync that nobody awaits (acks=1 under `always`).
        self.durability_wanted = trio.Event()
        self.removed = False

    @property
    def high_watermark(self) -> int:
        if self.log.config.flush_policy is FlushPolicy.ALWAYS:
            return int(self.log.flushed_offset)
        return int(self.log.log_end_offset)

    @property
    def high_watermark_settled(self) -> bool:
        """Whether the high watermark covers every acknowledged write: always on one node (a
        new Raft leader's may lag until an entry of its term commits: cluster/serving.py)."""
        return True

    def require_settled_high_watermark(self) -> None:
        """Refuse, retriably, an answer that depends on the high watermark or the log start
        while a new leader's may still lag behind what the group acknowledged (offset lookups,
        DeleteRecords): LEADER_NOT_AVAILABLE, which clients retry after a metadata refresh."""
        if not self.high_watermark_settled:
            raise BrokerError(
                ErrorCode.LEADER_NOT_AVAILABLE,
                f"{self.topic}-{self.partition}: this broker has just become its leader and "
                "has not yet committed an entry of its term; retry",
            )

    @property
    def waits_for_fsync(self) -> bool:
        """Whether appends become visible only after an fsync someone must ask for."""
        return bool(self.log.config.flush_policy is FlushPolicy.ALWAYS)

    @property
    def is_leader(self) -> bool:
        return self.leader_id == self._node_id

    def not_leader_message(self) -> str:
        return (
            f"node {self._node_id} is not the leader of {self.topic}-{self.partition}; "
            f"node {self.leader_id} is: refresh metadata"
        )

    def check(self, data: bytes | memoryview) -> None:
        """Refuse a produced batch this partition would not take (BrokerError), before any batch
        of the request is appended. A local log validates as it appends, and a request's
        batches were already validated together (`iter_batches`): nothing more to do here."""

    def append(self, data: bytes | memoryview) -> Appended:
        """Append one batch now (in the connection's reader); the log validates it."""
        result = self.log.append(data)
        end_offset = result.last_offset + 1
        return Appended(
            result.base_offset,
            result.last_offset,
            result.size_bytes,
            lambda: self._flusher.wait_durable(self.log, end_offset),
        )

    def accept(self, header: Any, base_offset: int, term: int, *, marker: Any = None) -> None:
        """An idempotent batch (or a transaction `marker`) was appended at `base_offset`. A local
        log wrote it already, so its producer state has it (a replica's Raft proposal is written
        later: see serving)."""

    async def wait_acked_to(self, end_offset: int, term: int) -> None:
        """Wait until everything below `end_offset` is acknowledged as acks=all would be (a
        retried batch waits for its original): durable here."""
        await self._flusher.wait_durable(self.log, end_offset)

    def make_durable_soon(self) -> None:
        """Appended data nobody awaits (acks 0/1 under `always`) becomes readable once an fsync
        ran: started here, with no task before or after it (`LogFlusher.flush_soon`), or, when
        the flusher has no fsync threads running, by the broker's durability pump."""
        if not self._flusher.flush_soon(self.log, self.notify):
            self.durability_wanted.set()

    def notify(self) -> None:
        """Wake every fetch waiting on this partition (its high watermark may have moved)."""
        waiters, self.waiters = self.waiters, set()
        for event in waiters:
            event.set()


@dataclasses.dataclass
class BrokerContext:
    """State shared by all handlers. `spawn` starts a background task in the broker's nursery."""

    config: BrokerConfig
    # TopicManager on a single node, broker.cluster.serving.ClusterTopics in a cluster.
    topics: Any
    # The group-commit flusher of a single node; None in a cluster (Raft drivers fsync).
    flusher: Flusher | None
    metrics: Metrics = dataclasses.field(default_factory=NullMetrics)
    # Where clients are sent, by the listener they connected on: each listener's advertised
    # address (BrokerConfig.advertised_endpoints); the server sets it once bound.
    advertised: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    partitions: dict[tuple[str, int], PartitionState] = dataclasses.field(default_factory=dict)
    stopping: bool = False
    spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None
    # The consumer group service (broker.consumer_groups.service.GroupService); None until started.
    groups: Any = None
    # The transaction coordinator (broker.transactions.service.TransactionService) and this
    # broker's producer id allocator (broker.transactions.producer_ids); None until started.
    transactions: Any = None
    producer_ids: Any = None
    # The share group coordinator (broker.share_groups.service.ShareGroupService); None until
    # started.
    share_groups: Any = None

    @property
    def node_id(self) -> int:
        return self.config.node_id

    @functools.cached_property
    def default_listener(self) -> str:
        """The inter-broker listener's name: the one a broker registered without endpoints
        serves (every broker of a cluster names it alike)."""
        return self.config.inter_broker_listener_spec.name

    # The users' SCRAM credentials (broker.auth.users: LocalUsers on a single node, ClusterUsers
    # in a cluster); None until the server sets it.
    users: Any = None
    # The cluster node (broker.cluster.node.ClusterNode) in cluster mode; None on a single node.
    cluster: Any = None
    # Cluster mode: topics an auto-creation is under way for (handlers/cluster.py).
    topics_being_created: set[str] = dataclasses.field(default_factory=set)
    # ACLs and quotas (docs/security.md): the per-broker `broker.security.gate.BrokerSecurity`
    # every connection's requests pass, and a single node's `SecurityStore` (None in a cluster,
    # whose ACLs and quotas are the controller's).
    security: Any = None
    security_store: Any = None

    def endpoint_of(self, node_id: int, listener: str) -> tuple[str, int] | None:
        """Where a client connected on `listener` reaches broker `node_id`: that broker's
        advertised address for the same listener; None if it is unknown or has no such
        listener (Kafka leaves it out of the answer)."""
        if self.cluster is None:
            return self.advertised.get(listener) if node_id == self.node_id else None
        return self.cluster.cache.endpoint_of(node_id, listener, self.default_listener)

    def add_partition(self, topic: str, partition: int, log: Any) -> PartitionState:
        assert self.flusher is not None, "local partitions belong to a single-node broker"
        state = PartitionState(
            topic, partition, log, leader_id=self.config.node_id, flusher=self.flusher
        )
        self.partitions[(topic, partition)] = state
        if state.waits_for_fsync and log.flushed_offset < log.log_end_offset:
            # Unflushed data from before a restart becomes visible once synced.
            state.durability_wanted.set()
        return state

    def remove_partition(self, topic: str, partition: int) -> None:
        state = self.partitions.pop((topic, partition), None)
        if state is not None:
            state.removed = True
            state.notify()

    def partition(self, topic: str, partition: int) -> PartitionState:
        """The partition, or UNKNOWN_TOPIC / UNKNOWN_PARTITION / NOT_LEADER."""
        state = self.partitions.get((topic, partition))
        if state is None:
            self.topics.require_partition(topic, partition)
            if self.cluster is not None:
                raise BrokerError(
                    ErrorCode.NOT_LEADER,
                    f"broker {self.node_id} hosts no replica of {topic}-{partition}: "
                    "refresh metadata",
                )
            raise BrokerError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"partition {topic}-{partition} is not open yet"
            )
        if not state.is_leader:
            raise NotLeaderForPartitionError(state)
        return state

    def partition_for_write(self, topic: str, partition: int) -> PartitionState:
        """Like `partition`, but creates an unknown topic if `auto_create_topics` is on (on a
        single node: a cluster creates topics through its controller, see handlers/cluster.py)."""
        if (
            self.config.auto_create_topics
            and self.cluster is None
            and self.topics.get(topic) is None
        ):
            self.topics.create(topic)
        return self.partition(topic, partition)

    def wake_all(self) -> None:
        for state in self.partitions.values():
            state.notify()
