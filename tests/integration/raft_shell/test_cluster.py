"""Three brokers' Raft shells over real TCP in one trio process: replication, crash and restart
from disk, leader failover, and truncation of a diverged follower (issue 5's replica behaviour).

Every wait is on a driver change event bounded by `trio.fail_after`; nothing sleeps to synchronise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker.raft.driver import LeadershipLostError
from broker.raft.ready import Role
from tests.integration.raft_shell.cluster import (
    ELECTION_TIMEOUT_MAX_S,
    GROUPS,
    Cluster,
    log_bytes,
    payloads_in,
    record_batch,
)


def _assert_identical(cluster: Cluster, group: str) -> None:
    drivers = cluster.drivers(group)
    assert len(drivers) == 3
    reference = log_bytes(drivers[0])
    assert reference
    for driver in drivers[1:]:
        assert log_bytes(driver) == reference, f"{group}: node {driver.node_id} differs"


async def test_two_groups_replicate_and_a_crashed_follower_catches_up(tmp_path: Path) -> None:
    # Goal: 200 batches per group commit on all three logs byte for byte; a follower killed
    # without a clean close re-opens from its files, rejoins and catches up.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        for group in GROUPS:
            await cluster.wait_leader(group)
        async with trio.open_nursery() as producers:
            for group in GROUPS:
                payloads = [b"%s-%d" % (group.encode(), n) for n in range(200)]
                producers.start_soon(cluster.propose_all, group, payloads)
        for group in GROUPS:
            await cluster.wait_converged(group)
            _assert_identical(cluster, group)
            values = payloads_in(cluster.drivers(group)[0])
            assert set(values) >= {b"%s-%d" % (group.encode(), n) for n in range(200)}
        # One fsync covers many proposals: far fewer fsyncs than batches on the leaders.
        leader = cluster.leader("g0")
        assert leader is not None
        assert leader.statistics().fsyncs < 200

        follower = next(d for d in cluster.drivers("g0") if d.role is not Role.LEADER)
        victim = follower.node_id
        await cluster.brokers[victim].crash()
        await cluster.propose_all("g0", [b"while-down-%d" % n for n in range(50)])
        await cluster.restart(victim)
        for group in GROUPS:
            await cluster.wait_converged(group)
            _assert_identical(cluster, group)
        rejoined = cluster.brokers[victim].drivers["g0"]
        assert b"while-down-49" in payloads_in(rejoined)
        nursery.cancel_scope.cancel()


async def test_leader_crash_elects_a_new_leader_and_proposals_continue(tmp_path: Path) -> None:
    # Goal: killing the leader's broker yields a new leader within a few election timeouts, the
    # clients carry on through it, and the old leader rejoins from disk as a follower.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        old = await cluster.wait_leader("g0")
        await cluster.propose_all("g0", [b"before-%d" % n for n in range(50)])
        old_id, old_term = old.node_id, old.term
        await cluster.brokers[old_id].crash()
        started = trio.current_time()
        new = await cluster.wait_leader("g0", timeout_s=4 * ELECTION_TIMEOUT_MAX_S + 1)
        elapsed = trio.current_time() - started
        assert new.node_id != old_id and new.term > old_term
        assert elapsed < 4 * ELECTION_TIMEOUT_MAX_S, elapsed
        await cluster.propose_all("g0", [b"after-%d" % n for n in range(50)])
        await cluster.restart(old_id)
        await cluster.wait_converged("g0")
        _assert_identical(cluster, "g0")
        values = payloads_in(cluster.brokers[old_id].drivers["g0"])
        assert {b"before-49", b"after-49"} <= set(values)
        nursery.cancel_scope.cancel()


async def test_diverged_follower_is_truncated_to_the_leaders_log(tmp_path: Path) -> None:
    # Goal: an isolated leader keeps appending proposals that can never commit; the majority
    # elects a new leader and commits other entries at those offsets; once healed, the old
    # leader's divergent suffix is truncated and its logs match byte for byte.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        old = await cluster.wait_leader("g0")
        await cluster.propose_all("g0", [b"common-%d" % n for n in range(20)])
        await cluster.wait_converged("g0")
        isolated = old.node_id
        others = [node for node in cluster.brokers if node != isolated]
        cluster.brokers[isolated].transport.drop_traffic_with(others)  # type: ignore[union-attr]
        for node in others:
            cluster.brokers[node].transport.drop_traffic_with([isolated])  # type: ignore[union-attr]
        doomed = [old.propose_nowait(record_batch(b"doomed-%d" % n)) for n in range(5)]
        diverged_end = old.core.log.last_index()

        def majority_moved_on() -> bool:
            leader = cluster.leader("g0")
            return leader is not None and leader.node_id != isolated and leader.term > old.term

        await cluster.wait_until(majority_moved_on, timeout_s=4 * ELECTION_TIMEOUT_MAX_S + 2)
        await cluster.propose_all("g0", [b"majority-%d" % n for n in range(20)])
        # The isolated node still holds its uncommitted suffix, written to its log.
        assert old.storage.log.log_end_offset - 1 >= diverged_end
        assert b"doomed-4" in payloads_in(old)
        for node in cluster.brokers:
            cluster.brokers[node].transport.drop_traffic_with(())  # type: ignore[union-attr]
        await cluster.wait_converged("g0", timeout_s=10)
        _assert_identical(cluster, "g0")
        values = payloads_in(old)
        assert not any(value.startswith(b"doomed") for value in values)
        assert b"majority-19" in values
        assert old.statistics().core.entries_truncated >= 1
        for proposal in doomed:
            # Settled when the cut-off leader stepped down (check quorum), before any truncation.
            assert proposal.done
            with pytest.raises(LeadershipLostError):
                await proposal.wait_committed()
        nursery.cancel_scope.cancel()


async def test_leadership_transfer_hands_the_group_to_the_target(tmp_path: Path) -> None:
    # Goal: transfer_leadership moves the leader to the chosen voter (thesis §3.10) and clients
    # carry on through it; the other group is untouched.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        leader = await cluster.wait_leader("g1")
        other_leader = await cluster.wait_leader("g0")
        target = next(node for node in cluster.brokers if node != leader.node_id)
        leader.transfer_leadership(target)

        def moved() -> bool:
            current = cluster.leader("g1")
            return current is not None and current.node_id == target

        await cluster.wait_until(moved, timeout_s=4 * ELECTION_TIMEOUT_MAX_S)
        await cluster.propose_all("g1", [b"after-transfer-%d" % n for n in range(20)])
        await cluster.wait_converged("g1")
        _assert_identical(cluster, "g1")
        assert cluster.leader("g0") is other_leader
        nursery.cancel_scope.cancel()


async def test_a_new_leader_settles_its_high_watermark_only_once_it_covers_every_commit(
    tmp_path: Path,
) -> None:
    # Goal: followers learn the commit index lazily (as partition groups do), so a new leader
    # starts with a high watermark that may lag what the old leader acknowledged; it reports it
    # settled (and offset lookups are answered) only once it covers all of it.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        leader = await cluster.wait_leader("g0")
        await cluster.wait_until(lambda: leader.high_watermark_settled, 5.0)
        followers = [driver for driver in cluster.drivers("g0") if driver is not leader]
        assert not any(driver.high_watermark_settled for driver in followers)
        await cluster.propose_all("g0", [b"before-%d" % n for n in range(100)])
        acknowledged_end = leader.high_watermark
        await cluster.brokers[leader.node_id].crash()

        def new_leader_settled() -> bool:
            new = cluster.leader("g0")
            return new is not None and new.high_watermark_settled

        await cluster.wait_until(new_leader_settled, 5.0 + ELECTION_TIMEOUT_MAX_S)
        new = cluster.leader("g0")
        assert new is not None and new.node_id != leader.node_id
        assert new.high_watermark >= acknowledged_end
        nursery.cancel_scope.cancel()
