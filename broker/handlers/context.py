"""What request handlers share: the broker's partitions, topics, flusher, metrics and config.

`PartitionState` is one partition as the serving layer sees it: its log, its leader, its high
watermark, and the waiters to wake when the high watermark moves. It is the seam for replication:
a follower would have `leader_id != node_id` and answer NOT_LEADER, and its high watermark would be
the Raft commit index.

High watermark (HW) on a single node, the exclusive end of what fetches may read:
- topic flush policy `always`: HW = the log's flushed offset, so a record is visible only once it
  is durable, whatever acks its producer asked for;
- `interval` / `never`: HW = the log end offset.

Rules: everything here runs in the trio thread; there is no await between reading state and
registering a waiter, so no wake-up is lost.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from broker.config import BrokerConfig, FlushPolicy
from broker.errors import BrokerError, ErrorCode
from broker.topics import TopicManager

logger = logging.getLogger(__name__)


class Flusher(Protocol):
    """The part of `broker.log.flusher.LogFlusher` the handlers need."""

    async def wait_durable(self, log: Any, end_offset: int) -> None: ...


class Metrics(Protocol):
    """Counters the handlers feed (broker.metrics.BrokerMetrics; a no-op stand-in in tests)."""

    def records_in(self, topic: str, records: int, size_bytes: int) -> None: ...
    def records_out(self, topic: str, records: int, size_bytes: int) -> None: ...


class NullMetrics:
    def records_in(self, topic: str, records: int, size_bytes: int) -> None:
        pass

    def records_out(self, topic: str, records: int, size_bytes: int) -> None:
        pass


class PartitionState:
    """One partition this broker serves. See the module docstring for the high watermark."""

    def __init__(self, topic: str, partition: int, log: Any, *, leader_id: int) -> None:
        self.topic = topic
        self.partition = partition
        self.log = log
        self.leader_id = leader_id
        self.leader_epoch = 0
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
    def waits_for_fsync(self) -> bool:
        return bool(self.log.config.flush_policy is FlushPolicy.ALWAYS)

    def notify(self) -> None:
        """Wake every fetch waiting on this partition (its high watermark may have moved)."""
        waiters, self.waiters = self.waiters, set()
        for event in waiters:
            event.set()


@dataclasses.dataclass
class BrokerContext:
    """State shared by all handlers. `spawn` starts a background task in the broker's nursery."""

    config: BrokerConfig
    topics: TopicManager
    flusher: Flusher
    metrics: Metrics = dataclasses.field(default_factory=NullMetrics)
    advertised: tuple[str, int] = ("127.0.0.1", 9092)
    partitions: dict[tuple[str, int], PartitionState] = dataclasses.field(default_factory=dict)
    stopping: bool = False
    spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None
    # The consumer group service (broker.consumer_groups.service.GroupService); None until started.
    groups: Any = None

    @property
    def node_id(self) -> int:
        return self.config.node_id

    def add_partition(self, topic: str, partition: int, log: Any) -> PartitionState:
        state = PartitionState(topic, partition, log, leader_id=self.config.node_id)
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
            raise BrokerError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"partition {topic}-{partition} is not open yet"
            )
        if state.leader_id != self.config.node_id:
            raise BrokerError(
                ErrorCode.NOT_LEADER,
                f"node {self.config.node_id} is not the leader of {topic}-{partition}; "
                f"node {state.leader_id} is: refresh metadata",
            )
        return state

    def partition_for_write(self, topic: str, partition: int) -> PartitionState:
        """Like `partition`, but creates an unknown topic if `auto_create_topics` is on."""
        if self.config.auto_create_topics and self.topics.get(topic) is None:
            self.topics.create(topic)
        return self.partition(topic, partition)

    def wake_all(self) -> None:
        for state in self.partitions.values():
            state.notify()
