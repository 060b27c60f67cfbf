"""Who is in the metadata log's Raft group, and how a broker leaves the cluster. Pure.

The controller voters are a configured set (`broker serve --controller-voters`); every other
registered broker follows the metadata log as a Raft **learner** (it replicates and applies, but
never votes or campaigns). The controller leader keeps the group's configuration in step with
the registered brokers, one single-server change at a time (Raft thesis §4.1), by asking
`next_metadata_change` after every applied change:

1. a member the cluster removed (`BrokerUnregistered`) leaves the group: a voter is first
   demoted to learner (never the last voter), a learner is removed;
2. a registered broker that is not a member (it joined with `--bootstrap`) is added as learner;
3. a decommissioning voter hands its vote on: while fewer voters stay than
   `voter_count_target` (the configured number of controller voters), a caught-up ACTIVE learner
   that is not leaving is promoted first (the group keeps its size, and so its fault tolerance);
   then the leaving voter is demoted. With no learner to promote it is demoted anyway (never the
   last voter).

`decommission_progress` says what is left before a decommissioning broker can be removed.
Moving its replicas is reassignment's (`reassignment.plan_decommission`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

from broker.controller.records import BrokerState
from broker.controller.state import BrokerInfo, ControllerStateMachine


@dataclasses.dataclass(frozen=True, slots=True)
class GroupMembers:
    """A Raft configuration as sorted node ids (the raft package's `Configuration`, without
    importing it: the controller package does not depend on Raft)."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()

    @classmethod
    def of(cls, voters: Collection[int], learners: Collection[int] = ()) -> GroupMembers:
        return cls(tuple(sorted(voters)), tuple(sorted(set(learners) - set(voters))))

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted((*self.voters, *self.learners)))


def next_metadata_change(
    current: GroupMembers,
    machine: ControllerStateMachine,
    *,
    caught_up: Collection[int],
    voter_count_target: int,
) -> GroupMembers | None:
    """The next single-server change of the metadata group (rules in the module docstring), or
    None when the group matches the registered brokers (or must wait). `caught_up`: members whose
    log has reached the commit index (only those may be promoted)."""
    assert voter_count_target >= 1, voter_count_target
    voters, learners = set(current.voters), set(current.learners)
    for node in current.members:
        if machine.broker(node) is None and machine.removed_incarnation(node) is not None:
            if node in learners:
                return GroupMembers.of(voters, learners - {node})
            if len(voters) > 1:
                return GroupMembers.of(voters - {node}, learners | {node})
    for info in machine.brokers():
        if info.node_id not in voters | learners and not info.decommissioning:
            return GroupMembers.of(voters, learners | {info.node_id})
    leaving = [node for node in sorted(voters) if _decommissioning(machine.broker(node))]
    if not leaving:
        return None
    spares = [
        node
        for node in sorted(learners)
        if (info := machine.broker(node)) is not None
        and info.state is BrokerState.ACTIVE
        and not info.decommissioning
    ]
    if spares and len(voters) - len(leaving) < voter_count_target:
        ready = [node for node in spares if node in caught_up]
        if not ready:
            return None  # a replacement is catching up: promote it before the vote goes
        return GroupMembers.of(voters | {ready[0]}, learners - {ready[0]})
    if len(voters) > 1:
        return GroupMembers.of(voters - {leaving[0]}, learners | {leaving[0]})
    return None


def _decommissioning(info: BrokerInfo | None) -> bool:
    return info is not None and info.decommissioning


@dataclasses.dataclass(frozen=True, slots=True)
class DecommissionProgress:
    """What still keeps a decommissioning broker in the cluster."""

    node_id: int
    # Partitions with a replica on the broker (moving or not yet planned).
    replica_count: int
    # Whether it still votes in the metadata group.
    is_voter: bool

    @property
    def done(self) -> bool:
        """Nothing left: the controller may record `BrokerUnregistered`."""
        return self.replica_count == 0 and not self.is_voter


def decommission_progress(
    machine: ControllerStateMachine, node_id: int, metadata_voters: Sequence[int]
) -> DecommissionProgress:
    """Replicas left on `node_id` and whether it still votes in the metadata group."""
    replica_count = sum(
        1 for topic in machine.topics() for info in topic.partitions if node_id in info.replicas
    )
    return DecommissionProgress(node_id, replica_count, node_id in metadata_voters)
