"""`MembershipService`: the controller leader's work on who is in the cluster (docs/cluster.md,
"Membership").

One per broker; it acts only while this broker leads the metadata group, and wakes on every
applied metadata change, every change of the metadata group, and every
`membership_check_interval_ms`. Each round, with the decisions taken by pure functions:

1. The metadata group's configuration follows the registered brokers, one single-server change
   at a time (`controller.membership.next_metadata_change`): joined brokers become learners,
   decommissioning voters hand their vote on, removed brokers leave the group.
2. Every decommissioning broker's replicas move away: partitions with a replica on it and no
   reassignment under way are planned by `reassignment.plan_decommission` over the ACTIVE
   brokers and submitted with `ControllerService.alter_partition_reassignments` (the partition
   leaders then run the moves). Partitions already moving are left to their move.
3. A decommissioning broker that hosts no replica and no longer votes is removed
   (`BrokerUnregistered`); rule 1 then takes it out of the group.

Everything it decides is derived from the metadata and the group's configuration, so a new
controller leader carries on where the previous one stopped. A refusal (a change still
committing, a lost leadership, a move the state no longer allows) is logged and retried at the
next round.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from broker.controller import reassignment
from broker.controller.membership import (
    GroupMembers,
    decommission_progress,
    next_metadata_change,
)
from broker.raft.messages import Configuration
from wire.error_codes import BrokerError

from .controller_service import ControllerService

logger = logging.getLogger(__name__)


class MembershipService:
    """The controller leader's membership rounds. See the module docstring for the rules."""

    def __init__(
        self, controller: ControllerService, *, voter_count_target: int, interval_ms: int
    ) -> None:
        assert voter_count_target >= 1 and interval_ms >= 1
        self._controller = controller
        self._voter_count_target = voter_count_target
        self._interval_s = interval_ms / 1000
        # Rounds that changed something: for tests and status.
        self.change_count = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run rounds until cancelled (a round does nothing unless this broker leads)."""
        controller = self._controller
        task_status.started()
        while True:
            driver_version = controller.driver.change_version
            applied_version = controller.changes.version
            if controller.is_leader:
                try:
                    await self.run_round()
                except BrokerError as exc:
                    logger.info("node %d: membership round: %s", controller.node_id, exc)
            with trio.move_on_after(self._interval_s):
                await controller.wait_changed(driver_version, applied_version)

    async def run_round(self) -> None:
        """One round of rules 1-3 (the controller leader only; BrokerError if refused)."""
        self._change_metadata_group()
        machine = self._controller.machine
        voters = self._controller.configuration.voters
        for info in machine.brokers():
            if not info.decommissioning:
                continue
            await self._move_replicas_off(info.node_id)
            if decommission_progress(self._controller.machine, info.node_id, voters).done:
                logger.info(
                    "node %d: broker %d hosts nothing: removing it",
                    self._controller.node_id,
                    info.node_id,
                )
                await self._controller.unregister_broker(info.node_id)
                self.change_count += 1

    def _change_metadata_group(self) -> None:
        """Rule 1: propose the next configuration of the metadata group, if one is due."""
        driver = self._controller.driver
        core = driver.core
        current = core.configuration
        caught_up = {
            node
            for node, progress in core.progress.items()
            if progress.match_index >= core.commit_index
        }
        change = next_metadata_change(
            GroupMembers(current.voters, current.learners),
            self._controller.machine,
            caught_up=caught_up,
            voter_count_target=self._voter_count_target,
        )
        if change is None:
            return
        logger.info(
            "node %d: metadata group voters %s learners %s -> voters %s learners %s",
            self._controller.node_id,
            list(current.voters),
            list(current.learners),
            list(change.voters),
            list(change.learners),
        )
        # Refused while the previous change (or this leader's first entry) is not committed: the
        # commit is a change of the group, which starts the next round.
        with contextlib.suppress(BrokerError):
            driver.propose_configuration(Configuration.of(change.voters, change.learners))
            self.change_count += 1

    async def _move_replicas_off(self, node_id: int) -> None:
        """Rule 2: submit a move for every partition on `node_id` that is not moving yet."""
        machine = self._controller.machine
        settled = [
            (topic.name, info.partition, info.replicas)
            for topic in machine.topics()
            for info in topic.partitions
            if node_id in info.replicas and not info.target_replicas
        ]
        if not settled:
            return
        moves = reassignment.plan_decommission(settled, node_id, machine.active_broker_ids())
        outcomes = await self._controller.alter_partition_reassignments(
            [(move.topic, move.partition, move.target_replicas) for move in moves]
        )
        for move, outcome in zip(moves, outcomes, strict=True):
            if outcome is not None:
                logger.warning(
                    "node %d: moving %s-%d off broker %d: %s",
                    self._controller.node_id,
                    move.topic,
                    move.partition,
                    node_id,
                    outcome,
                )
        self.change_count += 1
