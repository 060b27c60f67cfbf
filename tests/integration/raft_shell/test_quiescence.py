"""Quiescence on real drivers and transports over TCP (docs/raft.md, "Quiescence"): caught-up
groups stop ticking and heartbeating, and a crashed leader's quiet groups still fail over, woken
by the link liveness alone."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.integration.raft_shell.cluster import (
    ELECTION_TIMEOUT_MAX_S,
    GROUPS,
    TICK_MS,
    Cluster,
)

# A window of virtual quiet long enough for ten heartbeat rounds of an awake group.
QUIET_WINDOW_S = 10 * TICK_MS / 1000


def _quiet(cluster: Cluster) -> bool:
    return all(driver.core.quiescent for driver in cluster.drivers())


def _nothing_queued(cluster: Cluster) -> bool:
    transports = [broker.transport for broker in cluster.brokers.values()]
    return all(not driver.core.has_ready() for driver in cluster.drivers()) and all(
        t.statistics().heartbeats_queued == 0 for t in transports if t is not None
    )


async def _wait_settled(cluster: Cluster) -> None:
    """Every group quiet, and the last heartbeats (and answers) handed over before going quiet
    sent: a transport coalesces them for up to one interval, so they may still be on their way
    to the wire when every core is already quiet. The transports have no change event to wait
    on: look once per interval, under a timeout."""
    await cluster.wait_until(lambda: _quiet(cluster), timeout_s=5)
    with trio.fail_after(5):
        while not (_quiet(cluster) and _nothing_queued(cluster)):
            await trio.sleep(TICK_MS / 1000)


async def test_quiet_groups_send_no_heartbeats_and_a_crashed_leader_still_fails_over(
    tmp_path: Path,
) -> None:
    # Goal: once written and caught up, both groups go quiet: over a window of ten heartbeat
    # intervals no driver ticks and no per-group heartbeat crosses any link (only the node-level
    # heartbeat frames do). Then the broker leading g0 crashes: the quiet followers, told by the
    # link liveness, elect new leaders of every group it led, and proposals work again.
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.start(nursery, tmp_path)
        for group in GROUPS:
            await cluster.wait_leader(group)
            await cluster.propose_all(group, [b"%s-%d" % (group.encode(), n) for n in range(10)])
        await _wait_settled(cluster)
        transports = [broker.transport for broker in cluster.brokers.values()]
        heartbeats = [t.statistics().heartbeats_sent for t in transports if t is not None]
        frames = [t.statistics().heartbeat_frames_sent for t in transports if t is not None]
        ticks = [driver.statistics().ticks for driver in cluster.drivers()]
        await trio.sleep(QUIET_WINDOW_S)  # a measurement window: nothing may happen in it
        assert _quiet(cluster)
        assert [t.statistics().heartbeats_sent for t in transports if t is not None] == heartbeats
        assert [driver.statistics().ticks for driver in cluster.drivers()] == ticks
        # The link liveness still runs: node-level frames kept flowing.
        after = [t.statistics().heartbeat_frames_sent for t in transports if t is not None]
        assert all(b > a for a, b in zip(frames, after, strict=True))

        old = cluster.leader("g0")
        assert old is not None
        old_id = old.node_id
        led = [
            group
            for group in GROUPS
            if (leader := cluster.leader(group)) and leader.node_id == old_id
        ]
        await cluster.brokers[old_id].crash()
        started = trio.current_time()
        for group in led:
            new = await cluster.wait_leader(group, timeout_s=4 * ELECTION_TIMEOUT_MAX_S + 1)
            assert new.node_id != old_id
        assert trio.current_time() - started < 4 * ELECTION_TIMEOUT_MAX_S
        for group in GROUPS:
            await cluster.propose_all(group, [b"after-%d" % n for n in range(5)])
        nursery.cancel_scope.cancel()
