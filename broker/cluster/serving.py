"""What the request handlers see of a cluster node: its replicas as partitions, its topics.

In cluster mode (`broker serve --peers ...`) the handlers work on the same `BrokerContext` as on a
single node; this module adapts the `ClusterNode` to it. Rules:

1. `ReplicaPartitionState` is one hosted replica. It leads when its Raft group says so; a produce
   appends through `RaftDriver.propose_nowait` in the connection's reader (so pipelined produces
   keep their order) and acks=all waits for that proposal to commit, never merely for the high
   watermark to pass its offset: after a failover another leader's entries may fill those offsets.
   The high watermark is the group's commit index + 1.
2. `track_replicas` keeps `context.partitions` equal to the node's hosted replicas; a replica's
   fetch waiters wake when its group's high watermark or leadership changes, from a listener
   its driver calls (`RaftDriver.add_change_listener`).
3. `ClusterTopics` answers the handlers' topic queries from the metadata cache. Changes are not
   made here: they go to the controller (broker/handlers/cluster.py).
4. Internal topics (`run_internal_service`): the controller leader creates `__consumer_offsets`
   and `__transaction_state` once enough brokers are ACTIVE to give them min(3, brokers)
   replicas; every broker starts its `GroupService` and `TransactionService` once the topic is in
   its metadata. Each service loads the partitions this broker leads and follows their leadership
   (broker/consumer_groups/service.py, broker/transactions/service.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import trio

from broker.appended import Appended
from broker.config import LogConfig
from broker.controller.state import TopicInfo
from broker.handlers.context import BrokerContext, NotLeaderForPartitionError, PartitionState
from broker.raft.driver import RaftDriver
from broker.topics import TopicRecord, require_partition
from wire.error_codes import BrokerError

from .node import ClusterNode
from .replicas import Replica

logger = logging.getLogger(__name__)

# Replicas of __consumer_offsets and __transaction_state (Kafka's offsets.topic.replication.factor
# and transaction.state.log.replication.factor), fewer if the cluster has fewer brokers.
OFFSETS_TOPIC_REPLICATION_FACTOR: Final = 3
# Bound on the wait between two looks at whether an internal topic can be created.
OFFSETS_TOPIC_RECHECK_S: Final = 1.0


class ReplicaPartitionState(PartitionState):
    """A hosted replica as the handlers see it (rule 1)."""

    def __init__(self, replica: Replica, node: ClusterNode) -> None:
        self.topic = replica.topic
        self.partition = replica.partition
        self.log = replica.log
        self.replica = replica
        self._node = node
        self.waiters: set[trio.Event] = set()
        self.removed = False
        self._seen = (self.driver.high_watermark, self.driver.leadership_version)

    def on_group_change(self) -> None:
        """The driver's change listener: wake the fetch waiters when what they wait on moved
        (the high watermark, or the leadership: a deposed leader's long polls answer
        NOT_LEADER), not at the appends and fsyncs in between."""
        seen = (self.driver.high_watermark, self.driver.leadership_version)
        if seen != self._seen:
            self._seen = seen
            self.notify()

    @property
    def driver(self) -> RaftDriver:
        return self.replica.driver

    @property
    def leader_id(self) -> int:  # type: ignore[override]
        return self.replica.leader_id

    @property
    def leader_epoch(self) -> int:  # type: ignore[override]
        return self.replica.driver.term

    @property
    def is_leader(self) -> bool:
        return self.replica.is_leader

    @property
    def high_watermark(self) -> int:
        return self.replica.high_watermark

    @property
    def high_watermark_settled(self) -> bool:
        return self.replica.high_watermark_settled

    @property
    def waits_for_fsync(self) -> bool:
        return False  # the group's commit moves the high watermark, not a flusher

    def not_leader_message(self) -> str:
        leader = self.replica.leader_id
        where = self._node.cache.address_of(leader) if leader else None
        known = f"broker {leader} at {where[0]}:{where[1]}" if where else "not elected yet"
        return (
            f"broker {self._node.node_id} is not the leader of {self.topic}-{self.partition}; "
            f"the leader is {known}: refresh metadata"
        )

    def check(self, data: bytes | memoryview) -> None:
        # The Raft core trusts its caller with the batch: this is the produce gate (CRC, size,
        # one data batch with consecutive offsets).
        self.replica.check_batch(data)

    def append(self, data: bytes | memoryview) -> Appended:
        """Propose one batch (checked by `check` when it comes from a client)."""
        proposal = self.driver.propose_nowait(bytes(data))
        return Appended(proposal.base_offset, proposal.index, len(data), proposal.wait_committed)

    def accept(self, header: Any, base_offset: int, term: int, *, marker: Any = None) -> None:
        # The proposal reaches the log later (the driver writes it): until then the producer
        # state keeps it as pending, so a retry arriving meanwhile is still a duplicate, and a
        # late write of a transaction whose marker is pending is fenced by the marker's epoch.
        self.log.producers.accept(header, base_offset, term, marker=marker)

    async def wait_acked_to(self, end_offset: int, term: int) -> None:
        """Wait for the commit index to pass `end_offset` while this replica still leads in
        `term`: a leader's log is never truncated within its term, so what it held at `term`
        below the commit index is committed. A lost leadership is NOT_LEADER (retry)."""
        driver = self.driver
        while True:
            version = driver.change_version
            if not self.is_leader or driver.term != term:
                raise NotLeaderForPartitionError(self)
            if self.high_watermark >= end_offset:
                return
            await driver.wait_changed(version)


def track_replicas(node: ClusterNode, context: BrokerContext, nursery: trio.Nursery) -> None:
    """Start keeping `context.partitions` equal to the hosted replicas (rule 2)."""
    nursery.start_soon(_track, node, context)


async def _track(node: ClusterNode, context: BrokerContext) -> None:
    manager = node.replicas
    while True:
        version = manager.changes.version
        hosted = {(r.topic, r.partition): r for r in manager.replicas() if not r.deleting}
        for key, state in list(context.partitions.items()):
            replica = hosted.get(key)
            if not isinstance(state, ReplicaPartitionState) or state.replica is not replica:
                if isinstance(state, ReplicaPartitionState):
                    state.driver.remove_change_listener(state.on_group_change)
                context.remove_partition(*key)
        for key, replica in hosted.items():
            if key not in context.partitions:
                state = ReplicaPartitionState(replica, node)
                context.partitions[key] = state
                # The fetch waiters wake at the group's changes that concern them (and when it
                # stops), called by the driver itself: no task in between.
                replica.driver.add_change_listener(state.on_group_change)
        await manager.changes.wait(version)


async def run_internal_service(
    node: ClusterNode,
    topic: str,
    partitions: int,
    configs: dict[str, Any],
    make_service: Callable[[], Any],
    on_started: Callable[[Any], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Create the internal `topic` if needed, then run the service over it (rule 4): the group
    service over `__consumer_offsets`, the transaction coordinator over `__transaction_state`."""
    task_status.started()
    controller = node.controller
    while controller.cache.topic(topic) is None:
        version = controller.changes.version
        driver_version = controller.driver.change_version
        replicas = min(OFFSETS_TOPIC_REPLICATION_FACTOR, len(node.voters))
        if controller.is_leader and len(controller.machine.active_broker_ids()) >= replicas:
            try:
                await controller.create_topic(topic, partitions, replicas, configs)
            except BrokerError as exc:  # lost the controller, or a racing create: look again
                logger.info("node %d: creating %s: %s", node.node_id, topic, exc)
            continue
        with trio.move_on_after(OFFSETS_TOPIC_RECHECK_S):
            await node.wait_controller_change(driver_version, version)
    service = make_service()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        on_started(service)


class ClusterTopics:
    """The handlers' topic queries, answered from the node's metadata cache (rule 3)."""

    def __init__(self, node: ClusterNode, log_defaults: LogConfig) -> None:
        self._node = node
        self._log_defaults = log_defaults

    def get(self, name: str) -> TopicRecord | None:
        topic = self._node.cache.topic(name)
        return None if topic is None else self._record(topic)

    def names(self) -> list[str]:
        return self._node.cache.topic_names()

    def require_partition(self, topic: str, partition: int) -> TopicRecord:
        return require_partition(self.get(topic), topic, partition, hint="create it first")

    def _record(self, topic: TopicInfo) -> TopicRecord:
        configs: dict[str, Any] = dict(topic.configs)
        return TopicRecord(
            name=topic.name,
            partition_count=topic.partition_count,
            replication_factor=len(topic.partitions[0].replicas) if topic.partitions else 0,
            configs=configs,
            log_config=LogConfig.from_mapping(configs, base=self._log_defaults),
        )
