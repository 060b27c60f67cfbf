"""Raft metrics of one broker: aggregates over its hosted groups, and the drivers' latencies.

A broker may host thousands of partition groups, so the groups are summed per *kind* (`metadata`:
the controller's metadata log; `partition`: every hosted partition replica), never labelled per
partition: the series count stays bounded whatever the partition count. The metadata kind is one
group, so its aggregates are that group's own values.

- `summarize_groups(drivers)` walks the drivers once, in the trio thread (scrape time, through
  `TrioScrape`), reading each core's `statistics()` and, on leaders, the followers' progress.
- `RaftCollector` turns the summaries into metric families.
- `RaftLatencyObserver` is what a driver reports its fsync and propose-to-commit latencies to
  (`RaftDriver.observer`); `observe_raft_latencies` attaches one to every driver the node runs.

Counters are sums over the groups hosted now: a group that leaves the broker takes its counts
with it, which Prometheus sees as a counter reset (rate() stays right).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.raft.driver import RaftDriver
from broker.raft.ready import Role

from .scrape import TrioScrape

KIND_METADATA = "metadata"
KIND_PARTITION = "partition"


def is_quiescent(driver: RaftDriver) -> bool:
    """Whether the group is quiet (no ticks, no heartbeats of its own). Read defensively: a
    driver or core without the notion is never quiescent."""
    quiet = getattr(driver, "quiescent", None)
    if quiet is None:
        quiet = getattr(driver.core, "quiescent", False)
    return bool(quiet)


@dataclasses.dataclass(slots=True)
class RaftGroupsSummary:
    """The groups of one kind hosted on this broker, summed (see the module docstring)."""

    groups_by_role: dict[Role, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(Role, 0)
    )
    quiescent: int = 0
    term_max: int = 0
    # Led groups: entries in the leader's log not yet committed (sum over groups).
    commit_lag_offsets: int = 0
    # Led groups: how far followers' acknowledged logs are behind the leader's (sum, and worst).
    follower_lag_offsets: int = 0
    follower_lag_max_offsets: int = 0
    # Committed here but not yet applied (sum over groups).
    apply_lag_offsets: int = 0
    elections_started: int = 0
    elections_won: int = 0
    snapshots_sent: int = 0
    snapshots_installed: int = 0
    entries_committed: int = 0
    proposals_dropped: int = 0


def summarize_groups(drivers: Iterable[RaftDriver]) -> RaftGroupsSummary:
    """One pass over `drivers` (trio thread only: cores are not thread-safe)."""
    summary = RaftGroupsSummary()
    roles = summary.groups_by_role
    for driver in drivers:
        core = driver.core
        stats = core.statistics()
        roles[stats.role] += 1
        summary.quiescent += is_quiescent(driver)
        summary.term_max = max(summary.term_max, stats.term)
        summary.apply_lag_offsets += stats.commit_index - stats.applied_index
        summary.elections_started += stats.elections_started
        summary.elections_won += stats.elections_won
        summary.snapshots_sent += stats.snapshots_sent
        summary.snapshots_installed += stats.snapshots_installed
        summary.entries_committed += stats.entries_committed
        summary.proposals_dropped += stats.proposals_dropped
        if stats.role is not Role.LEADER:
            continue
        summary.commit_lag_offsets += stats.last_index - stats.commit_index
        for node, progress in core.progress.items():
            if node == stats.node_id:
                continue
            lag = max(stats.last_index - progress.match_index, 0)
            summary.follower_lag_offsets += lag
            summary.follower_lag_max_offsets = max(summary.follower_lag_max_offsets, lag)
    return summary


# (name, help, attribute) of the gauges and counters a summary gives.
_GAUGES = (
    ("broker_raft_quiescent_groups", "Groups gone quiet (no ticks or heartbeats of their own)",
     "quiescent"),
    ("broker_raft_term_max", "Highest current term among the groups", "term_max"),
    ("broker_raft_commit_lag_offsets",
     "Entries the groups led here hold but have not committed yet (sum over groups)",
     "commit_lag_offsets"),
    ("broker_raft_follower_lag_offsets",
     "Offsets followers of the groups led here are behind the leader's log (sum over followers)",
     "follower_lag_offsets"),
    ("broker_raft_follower_lag_max_offsets",
     "Offsets the furthest-behind follower of a group led here lags the leader's log",
     "follower_lag_max_offsets"),
    ("broker_raft_apply_lag_offsets", "Entries committed here but not applied yet (sum)",
     "apply_lag_offsets"),
)  # fmt: skip
_COUNTERS = (
    ("broker_raft_elections_started", "Elections these groups' replicas started here",
     "elections_started"),
    ("broker_raft_elections_won", "Elections these groups' replicas won here", "elections_won"),
    ("broker_raft_snapshots_sent", "Snapshots sent to followers", "snapshots_sent"),
    ("broker_raft_snapshots_installed", "Snapshots installed from a leader", "snapshots_installed"),
    ("broker_raft_entries_committed", "Entries committed and applied here", "entries_committed"),
    ("broker_raft_proposals_dropped", "Proposals refused (not leader, transfer, limits)",
     "proposals_dropped"),
)  # fmt: skip


class RaftCollector(Collector):
    """Exports `summarize_groups` per kind. `sources` maps a kind to the drivers of that kind;
    they are walked in the trio thread at scrape time."""

    def __init__(
        self, scrape: TrioScrape, sources: dict[str, Callable[[], Iterable[RaftDriver]]]
    ) -> None:
        self._scrape = scrape
        self._sources = sources

    def _summaries(self) -> dict[str, RaftGroupsSummary]:
        return {kind: summarize_groups(source()) for kind, source in self._sources.items()}

    def collect(self) -> Iterator[Any]:
        summaries = self._scrape.run(self._summaries)
        if summaries is None:
            return
        groups = GaugeMetricFamily(
            "broker_raft_groups", "Raft groups hosted here, by role", labels=["kind", "role"]
        )
        for kind, summary in summaries.items():
            for role, count in summary.groups_by_role.items():
                groups.add_metric([kind, role.value], count)
        yield groups
        for name, documentation, attribute in _GAUGES:
            gauge = GaugeMetricFamily(name, documentation, labels=["kind"])
            for kind, summary in summaries.items():
                gauge.add_metric([kind], getattr(summary, attribute))
            yield gauge
        for name, documentation, attribute in _COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=["kind"])
            for kind, summary in summaries.items():
                counter.add_metric([kind], getattr(summary, attribute))
            yield counter


class RaftLatencyObserver:
    """A driver's latency reports (the `RaftObserver` protocol of broker/raft/driver.py), fed to
    this broker's histograms. Called in the trio thread; prometheus children are thread-safe."""

    def __init__(self, fsync: Histogram, append: Histogram, kind: str) -> None:
        self._fsync = fsync
        self._append = append.labels(kind)

    def fsync_done(self, seconds: float) -> None:
        self._fsync.observe(seconds)

    def proposal_committed(self, seconds: float) -> None:
        self._append.observe(seconds)


async def observe_raft_latencies(
    node: Any, partitions: RaftLatencyObserver, metadata: RaftLatencyObserver
) -> None:
    """Attach the observers to the metadata driver and to every hosted replica's driver, as
    replicas come and go (a `ClusterNode`; runs until cancelled)."""
    node.controller.driver.observer = metadata
    manager = node.replicas
    while True:
        version = manager.changes.version
        for replica in manager.replicas():
            replica.driver.observer = partitions
        await manager.changes.wait(version)


def node_raft_sources(node: Any) -> dict[str, Callable[[], Iterable[RaftDriver]]]:
    """The drivers of a `ClusterNode` per kind, for `RaftCollector`."""
    return {
        KIND_METADATA: lambda: (node.controller.driver,),
        KIND_PARTITION: lambda: (replica.driver for replica in node.replicas.replicas()),
    }
