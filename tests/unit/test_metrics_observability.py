"""Goal: the Raft aggregates, the scrape-time bridge to the trio thread and the fsync hook report
what the broker really holds and does."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio
from prometheus_client import generate_latest

from broker.config import FlushPolicy, LogConfig
from broker.log.flusher import LogFlusher
from broker.log.log import PartitionLog
from broker.metrics import BrokerMetrics
from broker.observability.cluster_metrics import _reassignments
from broker.observability.raft_metrics import RaftCollector, summarize_groups
from broker.observability.scrape import TrioScrape
from broker.raft.ready import RaftStatistics, Role
from wire.batch import build_batch


def driver(
    role: Role,
    *,
    term: int = 1,
    last: int = 10,
    commit: int = 10,
    applied: int = 10,
    matches: dict[int, int] | None = None,
    quiet: bool = False,
    **counters: int,
) -> Any:
    """A stand-in driver: what the summary reads (core statistics, progress, quiescence)."""
    values: dict[str, Any] = {field.name: 0 for field in dataclasses.fields(RaftStatistics)}
    values.update(
        node_id=1,
        role=role,
        term=term,
        leader_id=1,
        commit_index=commit,
        applied_index=applied,
        last_index=last,
        **counters,
    )
    stats = RaftStatistics(**values)
    progress = {node: SimpleNamespace(match_index=m) for node, m in (matches or {}).items()}
    core = SimpleNamespace(statistics=lambda: stats, progress=progress, quiescent=quiet)
    return SimpleNamespace(core=core)  # fmt: skip


def test_summary_sums_groups_and_measures_lag_on_leaders_only() -> None:
    drivers = [
        driver(Role.LEADER, term=3, last=20, commit=15, applied=14,
               matches={1: 20, 2: 12, 3: 19}, elections_started=2, elections_won=1),
        driver(Role.LEADER, last=8, commit=8, applied=8, matches={1: 8, 2: 8, 3: 8}, quiet=True),
        # A follower's progress map is stale leftovers: never counted.
        driver(Role.FOLLOWER, term=5, last=30, commit=25, matches={2: 0}, snapshots_installed=1),
        driver(Role.CANDIDATE, elections_started=4),
    ]  # fmt: skip
    summary = summarize_groups(drivers)
    assert summary.groups_by_role == {
        Role.LEADER: 2, Role.FOLLOWER: 1, Role.CANDIDATE: 1, Role.PRE_CANDIDATE: 0
    }  # fmt: skip
    assert summary.quiescent == 1
    assert summary.term_max == 5
    assert summary.commit_lag_offsets == 5  # 20 - 15 on the first leader
    assert summary.follower_lag_offsets == 8 + 1  # node 1 is the leader itself
    assert summary.follower_lag_max_offsets == 8
    assert summary.apply_lag_offsets == 1 + 15  # 15 - 14, and the follower's 25 - 10
    assert summary.elections_started == 6 and summary.elections_won == 1
    assert summary.snapshots_installed == 1


async def test_collector_reads_the_drivers_in_the_trio_thread_from_the_metrics_thread() -> None:
    metrics = BrokerMetrics()
    threads: list[threading.Thread] = []

    def partitions() -> list[Any]:
        threads.append(threading.current_thread())
        return [driver(Role.LEADER, last=7, commit=4), driver(Role.FOLLOWER)]

    scrape = TrioScrape.current()
    metrics.registry.register(RaftCollector(scrape, {"partition": partitions}))
    threads.clear()  # registering collected once, to describe the families
    # From another thread (as prometheus-client's HTTP thread scrapes), then from this one.
    page = (await trio.to_thread.run_sync(generate_latest, metrics.registry)).decode()
    assert generate_latest(metrics.registry).decode().count("broker_raft_groups{") == 4
    assert threads == [threading.current_thread()] * 2
    assert 'broker_raft_groups{kind="partition",role="leader"} 1.0' in page
    assert 'broker_raft_commit_lag_offsets{kind="partition"} 3.0' in page
    assert 'broker_raft_elections_started_total{kind="partition"} 0.0' in page


async def test_a_failing_view_yields_nothing_and_a_finished_run_too() -> None:
    scrape = TrioScrape.current()
    assert scrape.run(lambda: 1 // 0) is None
    assert await trio.to_thread.run_sync(scrape.run, lambda: 42) == 42
    finished: list[TrioScrape] = []

    async def other_run() -> None:
        finished.append(TrioScrape.current())

    await trio.to_thread.run_sync(trio.run, other_run)
    assert await trio.to_thread.run_sync(finished[0].run, lambda: 42) is None


async def test_the_flusher_reports_each_fsync_duration(tmp_path: Path) -> None:
    durations: list[float] = []
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    try:
        flusher = LogFlusher(lambda: [log], on_fsync=durations.append)
        batch = build_batch([(1_000, None, b"x", None)])
        for _ in range(3):
            await flusher.wait_durable(log, log.append(batch).last_offset + 1)
    finally:
        log.close()
    assert len(durations) == 3 == flusher.fsync_count
    assert all(seconds > 0 for seconds in durations)


def test_reassignments_are_counted_from_the_partitions_target_replicas() -> None:
    def topic(*partitions: Any) -> Any:
        return SimpleNamespace(partitions=partitions)

    machine = SimpleNamespace(
        topics=lambda: [
            topic(
                SimpleNamespace(target_replicas=(2, 3, 4), adding_replicas=(4,)),
                SimpleNamespace(target_replicas=(), adding_replicas=()),
            ),
            topic(SimpleNamespace(target_replicas=(5, 6), adding_replicas=(5, 6))),
            topic(SimpleNamespace()),  # a state without reassignments: none under way
        ]
    )
    assert _reassignments(machine) == (2, 3)
