"""The controller as this broker sees it: whether it leads, how far its metadata log has come.

`controller_view(node)` reads the `ClusterNode` in the trio thread (at scrape time, through
`TrioScrape`); `ControllerCollector` exports it. The cluster-wide facts every broker agrees on
(brokers per state, offline and under-replicated partitions, leader imbalance) are exported by
`broker/metrics.py`'s cluster collector from the same metadata cache.

Reassignments are read from the metadata (partitions with `target_replicas`): how many are under
way and how many replicas they add. The copying itself shows as the leaders' follower lag
(`broker_raft_follower_lag_*`, raft_metrics.py), since a new replica is a Raft learner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .scrape import TrioScrape


@dataclasses.dataclass(frozen=True, slots=True)
class ControllerView:
    node_id: int
    is_leader: bool
    is_voter: bool
    leader_id: int
    # The metadata log here: last index written, committed, applied to the state machine.
    last_index: int
    commit_index: int
    applied_index: int
    applied_records: int
    reassignments: int
    reassignment_adding_replicas: int


def _reassignments(machine: Any) -> tuple[int, int]:
    """(partitions being reassigned, replicas being added to them) from the metadata: a
    partition under way has `target_replicas` (broker/controller/reassignment.py). Read with
    getattr, so a state without reassignments simply has none."""
    moving = adding = 0
    for topic in machine.topics():
        for info in topic.partitions:
            if getattr(info, "target_replicas", ()):
                moving += 1
                adding += len(getattr(info, "adding_replicas", ()))
    return moving, adding


def controller_view(node: Any) -> ControllerView:
    """Read a `ClusterNode`'s controller (trio thread only)."""
    controller = node.controller
    core = controller.driver.core
    stats = core.statistics()
    machine = controller.machine
    moving, adding = _reassignments(machine)
    return ControllerView(
        node_id=node.node_id,
        is_leader=bool(controller.is_leader),
        is_voter=node.node_id in getattr(node, "voters", ()),
        leader_id=stats.leader_id,
        last_index=stats.last_index,
        commit_index=stats.commit_index,
        applied_index=machine.applied_index,
        applied_records=machine.statistics().applied_record_count,
        reassignments=moving,
        reassignment_adding_replicas=adding,
    )


class ControllerCollector(Collector):
    """Exports `controller_view(node)` (cluster mode only)."""

    def __init__(self, scrape: TrioScrape, node: Any) -> None:
        self._scrape = scrape
        self._node = node

    def collect(self) -> Iterator[Any]:
        view = self._scrape.run(lambda: controller_view(self._node))
        if view is None:
            return
        for name, documentation, value in (
            ("broker_controller_active", "1 if this broker is the controller leader, else 0",
             int(view.is_leader)),
            ("broker_controller_voter", "1 if this broker votes in the metadata log's group",
             int(view.is_voter)),
            ("broker_controller_metadata_last_index", "Last index of the metadata log here",
             view.last_index),
            ("broker_controller_metadata_commit_index",
             "Commit index of the metadata log as this broker knows it", view.commit_index),
            ("broker_controller_metadata_applied_index",
             "Metadata log index applied to this broker's metadata state", view.applied_index),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, documentation, value=value)
        yield CounterMetricFamily(
            "broker_controller_records_applied",
            "Metadata records applied here since this broker loaded its metadata state",
            value=view.applied_records,
        )
        yield GaugeMetricFamily(
            "broker_cluster_reassignments_ongoing",
            "Partition reassignments the controller has not completed",
            value=view.reassignments,
        )
        yield GaugeMetricFamily(
            "broker_cluster_reassignment_adding_replicas",
            "Replicas the ongoing reassignments are adding (learners catching up, then promoted)",
            value=view.reassignment_adding_replicas,
        )
