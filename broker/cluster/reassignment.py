"""`ReassignmentService`: the partition-leader side of partition reassignment (trio shell).

The controller records where a partition goes (`PartitionReassignmentStarted`, see
broker/controller/reassignment.py, whose pure `next_step` decides every move); brokers that must
host a new replica start it as a Raft learner (`ReplicaManager`). This service, one per broker,
moves the Raft groups this broker LEADS towards their target, one membership change at a time:

1. Each pass, for every partition being reassigned whose group this broker leads, it reads the
   group's configuration and its followers' progress, asks `next_step`, and does that one step:
   `propose_configuration` (add a learner, promote it, remove a member) or a leadership transfer
   (a leader that must leave hands over first). Nothing is remembered between passes: a new
   leader (after a failover, or the transfer) resumes from its group's log and the metadata.
2. New replicas catch up throttled: the leader's core limits what it sends each learner to the
   partition's recorded throttle, or `throttle_bytes_per_s` by default (0: unlimited).
3. When the group's voters are the target, the leader reports it to the controller
   (`complete_reassignment`), which records `PartitionReassignmentCompleted`; only then do the
   brokers left out stop their replica and delete its storage (`ReplicaManager`).
4. Passes run every `check_interval_ms` while this broker hosts a partition being reassigned,
   and otherwise only when the metadata changes: an idle broker does nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable

import trio

from broker.config import MIB, ConfigBase, check_range
from broker.controller import reassignment
from broker.controller.state import ControllerStateMachine, PartitionInfo
from broker.raft.core import RaftCore
from broker.raft.messages import Configuration
from broker.raft.progress import ProgressState
from wire.error_codes import BrokerError

from .controller_service import ControllerService
from .replicas import Replica, ReplicaManager

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class ReassignmentConfig(ConfigBase):
    """How a partition leader runs reassignments (docs/reassignment.md)."""

    # Replication to a new replica while it catches up, in bytes per second, when the
    # reassignment names no throttle of its own (Kafka's leader.replication.throttled.rate);
    # 0: unlimited.
    throttle_bytes_per_s: int = 100 * MIB
    # While this broker leads a partition being reassigned: how often it looks at the group.
    check_interval_ms: int = 100

    def validate(self) -> None:
        check_range("throttle_bytes_per_s", self.throttle_bytes_per_s, 0)
        check_range("check_interval_ms", self.check_interval_ms, 1)


# (topic, partition, replicas) -> the controller records the completion (or raises BrokerError).
CompletionReporter = Callable[[str, int, tuple[int, ...]], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaProgressView:
    """One member of a group being reassigned, as its leader sees it."""

    node_id: int
    role: str  # "leader", "voter", "learner" or "absent" (not in the group's configuration)
    match_offset: int  # the last offset it holds (-1: nothing known)
    lag_offsets: int  # offsets behind the leader's log end
    caught_up_bytes: int  # an estimate: the leader's log bytes up to match_offset


def moving_partitions(machine: ControllerStateMachine) -> list[tuple[str, PartitionInfo]]:
    """Every partition with a reassignment under way, by (topic, partition)."""
    return [
        (topic.name, info)
        for topic in machine.topics()
        for info in topic.partitions
        if info.target_replicas
    ]


def caught_up_members(core: RaftCore) -> frozenset[int]:
    """Members whose log has reached the commit index and that answer: the leader, and each
    follower replicating, heard from recently, with match index >= commit index."""
    caught_up = {core.node_id}
    for node, progress in core.progress.items():
        if (
            progress.state is ProgressState.REPLICATE
            and progress.recent_active
            and progress.match_index >= core.commit_index
        ):
            caught_up.add(node)
    return frozenset(caught_up)


def replica_progress(replica: Replica, info: PartitionInfo) -> list[ReplicaProgressView]:
    """On the partition's leader: where each replica of `info` stands (empty elsewhere)."""
    core = replica.driver.core
    if not replica.is_leader:
        return []
    configuration = core.configuration
    last_index = core.log.last_index()
    start = replica.log.log_start_offset
    span = max(1, replica.log.log_end_offset - start)
    views = []
    for node in sorted(set(info.replicas) | set(info.target_replicas)):
        progress = core.progress.get(node)
        match = last_index if node == core.node_id else (progress.match_index if progress else -1)
        if node == core.node_id:
            role = "leader"
        elif node in configuration.voters:
            role = "voter"
        else:
            role = "learner" if node in configuration.learners else "absent"
        fraction = max(0, match + 1 - start) / span
        views.append(
            ReplicaProgressView(
                node_id=node,
                role=role,
                match_offset=match,
                lag_offsets=max(0, last_index - match) if match >= 0 else last_index + 1,
                caught_up_bytes=int(replica.log.size_bytes * min(1.0, fraction)),
            )
        )
    return views


class ReassignmentService:
    """Moves the Raft groups this broker leads towards their reassignment targets. See the
    module docstring for the rules."""

    def __init__(
        self,
        *,
        node_id: int,
        controller: ControllerService,
        replicas: ReplicaManager,
        reporter: CompletionReporter,
        config: ReassignmentConfig,
        tick_interval_ms: int,
    ) -> None:
        config.validate()
        self.node_id = node_id
        self.config = config
        self._controller = controller
        self._replicas = replicas
        self._reporter = reporter
        self._tick_interval_ms = tick_interval_ms
        # Completion reports under way, so a slow controller is not asked twice at once.
        self._reporting: set[tuple[str, int]] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run passes until cancelled (rule 4)."""
        interval_s = self.config.check_interval_ms / 1000
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                changes = self._controller.changes
                version = changes.version
                hosted = self.run_pass()
                with trio.move_on_after(interval_s if hosted else math.inf):
                    await changes.wait(version)

    def run_pass(self) -> int:
        """One pass (rule 1); returns how many moving partitions this broker hosts."""
        hosted = 0
        for topic, info in moving_partitions(self._controller.machine):
            try:
                replica = self._replicas.replica(topic, info.partition)
            except BrokerError:
                continue  # not hosted here (yet)
            hosted += 1
            if replica.is_leader:
                self._step(replica, topic, info)
        return hosted

    def _step(self, replica: Replica, topic: str, info: PartitionInfo) -> None:
        driver = replica.driver
        core = driver.core
        configuration = core.configuration
        self._throttle(core, info, configuration)
        step = reassignment.next_step(
            reassignment.MoveInputs(
                leader=self.node_id,
                voters=configuration.voters,
                learners=configuration.learners,
                target_replicas=info.target_replicas,
                caught_up=caught_up_members(core),
                change_pending=core.configuration_change_pending,
            )
        )
        if isinstance(step, reassignment.Wait):
            return
        logger.info("node %d: %s-%d reassignment: %s", self.node_id, topic, info.partition, step)
        try:
            if isinstance(step, reassignment.ReportCompleted):
                self._report(topic, info.partition, step.replicas)
            elif isinstance(step, reassignment.TransferLeadership):
                if core.transfer_target != step.node:
                    driver.transfer_leadership(step.node)
            else:
                driver.propose_configuration(_changed(configuration, step))
        except BrokerError as exc:  # deposed, or a change became pending: the next pass retries
            logger.info("node %d: %s: %s", self.node_id, replica.group, exc)

    def _throttle(self, core: RaftCore, info: PartitionInfo, configuration: Configuration) -> None:
        # Rule 2: only new replicas catching up are throttled, from before they are added (the
        # leader starts sending the moment it appends the change); a voter never is.
        rate_per_s = info.reassignment_throttle_bytes_per_s or self.config.throttle_bytes_per_s
        per_tick = math.ceil(rate_per_s * self._tick_interval_ms / 1000)
        for node in info.replicas:
            throttled = node in info.adding_replicas and node not in configuration.voters
            core.set_replication_throttle(node, per_tick if throttled else 0)

    def _report(self, topic: str, partition: int, replicas: tuple[int, ...]) -> None:
        key = (topic, partition)
        if key in self._reporting or self._nursery is None:
            return
        self._reporting.add(key)

        async def report() -> None:
            try:
                await self._reporter(topic, partition, replicas)
            except BrokerError as exc:  # no controller now, or a new target: the next pass
                logger.info("node %d: completing %s-%d: %s", self.node_id, *key, exc)
            finally:
                self._reporting.discard(key)

        self._nursery.start_soon(report)


def _changed(configuration: Configuration, step: reassignment.Step) -> Configuration:
    """The configuration one membership step leads to."""
    voters, learners = set(configuration.voters), set(configuration.learners)
    if isinstance(step, reassignment.AddLearner):
        learners.add(step.node)
    elif isinstance(step, reassignment.PromoteLearner):
        learners.discard(step.node)
        voters.add(step.node)
    else:
        assert isinstance(step, reassignment.RemoveMember), step
        voters.discard(step.node)
        learners.discard(step.node)
    return Configuration.of(sorted(voters), sorted(learners))
