"""Deterministic simulation of Raft groups: safety under faults, then liveness once healed.

Each seed fixes the whole run (swarm options, faults, timings). A failure names its seed, the
invariant it broke and the command that replays it: `pytest tests/sim --seed N`; the report is
that of a replay with tracing on, so it ends with the run's last events.
"""

from __future__ import annotations

import dataclasses

import pytest

from broker.raft.core import RaftCore
from tests.sim.broken_cores import (
    BROKEN_CORES,
    BrokenCore,
    SlowBacktrackingCore,
    UnreachableEndsHeartbeatsCore,
)
from tests.sim.checkers import SimulationFailure, StabilityWatch
from tests.sim.conftest import FIXED_SEEDS
from tests.sim.simulator import Simulation

# A correct variant the clamp's broken core builds on: it must pass these seeds itself, or the
# self-test would credit the checker with a bug the variant (not the clamp) introduced.
CORRECT_VARIANT_SEEDS = FIXED_SEEDS[:20]


def run_seed(seed: int, core_class: type[RaftCore] = RaftCore) -> Simulation:
    """Run one seed; on a failure, replay it with tracing on and raise the replay's report."""
    simulation = Simulation(seed, core_class=core_class)
    try:
        simulation.run()
    except SimulationFailure as failure:
        replay = Simulation(seed, core_class=core_class, trace=True)
        with pytest.raises(SimulationFailure) as replayed:
            replay.run()
        # Determinism: the replay breaks the same invariant at the same point.
        assert replayed.value.invariant == failure.invariant
        assert str(replayed.value).splitlines()[0] == str(failure).splitlines()[0]
        raise replayed.value from None
    return simulation


def test_simulation_seed(simulation_seed: int) -> None:
    """Goal: every safety invariant holds after every event, and the group recovers when healed."""
    simulation = run_seed(simulation_seed)
    assert simulation.checker.steps > 0
    assert simulation.checker.committed_max >= 0, "nothing was ever committed"


def test_stability_is_judged_only_while_the_network_meets_the_timing_requirement() -> None:
    """Goal: no false alarm from the pre-vote stability check. Seed 2462318666 heals into links
    of up to 400 ms one way against an election timeout of 5 ticks; with follower 2 isolated,
    leader 1 heard nothing from follower 3 for a whole check-quorum window (and 3 nothing from
    it for an election timeout), so it stepped down as thesis §6.2 requires. The checker once
    failed this run ("leader 1 of term 21 lost leadership while isolated"); it now sees the
    premise fail and judges only what still must hold."""
    simulation = run_seed(2462318666)
    excused = simulation.checker.stability_excused
    assert excused is not None
    assert "follower 3 heard nothing from leader 1" in excused
    assert "leader 1 heard nothing from follower 3" in excused


def one_follower_watch() -> StabilityWatch:
    """Leader 1 of term 7 with voters 1-3, follower 3 isolated: follower 2 and the leader are the
    majority, so either one's excused silence excuses the phase. Both last heard at tick 3."""
    return StabilityWatch(
        leader=1,
        term=7,
        followers=(2,),
        voter_count=3,
        check_quorum=True,
        follower_heard={2: 3},
        leader_heard={2: 3},
    )


def test_followers_the_leader_stopped_heartbeating_excuse_no_election() -> None:
    """Goal: the stability check blames the network only for the network's silences. A follower
    that went an election timeout without a message from its leader once excused the election
    it then started (and the leader's own silence from it excused its step-down), whatever the
    reason, so a leader that stopped heartbeating a follower it took for unreachable
    (`UnreachableEndsHeartbeatsCore`) passed seed 3, its elections excused. Now a follower's
    silence excuses only while a message the leader sent it is in flight or the leader is
    legitimately quiet to it, and the leader's only if it had sent the follower something to
    answer."""
    # In the simulator: the core that stops heartbeating is caught by the stability check, which
    # names the silence the leader caused.
    with pytest.raises(SimulationFailure) as failure:
        Simulation(3, core_class=UnreachableEndsHeartbeatsCore, commit_broadcast=True).run()
    assert failure.value.invariant == "pre-vote stability"
    assert "with nothing of it in flight" in str(failure.value)

    timeout = 10
    # The leader's heartbeat of its tick 3 is heard and answered at once; then it sends nothing.
    stopped = one_follower_watch()
    stopped.sent(2, message_id=101, leader_ticks=3)
    stopped.delivered(2, message_id=101)
    stopped.answered(2)
    stopped.judge_follower(2, ticks=3 + timeout, since=3, timeout=timeout)
    stopped.judge_leader(2, ticks=3 + timeout, since=3, timeout=timeout)
    assert stopped.lapsed == {} and stopped.unheard == {}
    assert stopped.broken() is None  # the premise held: an election is judged, and fails
    assert stopped.unexcused == [
        "follower 2 heard nothing from leader 1 for 10 of its ticks (election timeout 10) "
        "with nothing of it in flight",
        "leader 1 heard nothing from follower 2 for 10 of its ticks (election timeout 10) "
        "without sending it anything to answer",
    ]
    # Each silence is judged once, when it reaches the timeout: a send after that excuses none.
    stopped.sent(2, message_id=102, leader_ticks=14)
    stopped.judge_follower(2, ticks=4 + timeout, since=3, timeout=timeout)
    stopped.judge_leader(2, ticks=4 + timeout, since=3, timeout=timeout)
    assert stopped.broken() is None

    # The same silences with the leader's next heartbeat (of its tick 4) still on its way are
    # the network's: the follower may time out and the leader may step down.
    slow = one_follower_watch()
    slow.sent(2, message_id=101, leader_ticks=3)
    slow.delivered(2, message_id=101)
    slow.answered(2)
    slow.sent(2, message_id=102, leader_ticks=4)
    slow.judge_follower(2, ticks=3 + timeout, since=3, timeout=timeout)
    slow.judge_leader(2, ticks=3 + timeout, since=3, timeout=timeout)
    assert slow.broken() == (
        "follower 2 heard nothing from leader 1 for 10 of its ticks (election timeout 10), "
        "a message it sent at its tick 4 still in flight; "
        "leader 1 heard nothing from follower 2 for 10 of its ticks (election timeout 10) "
        "though it sent it something to answer"
    )

    # A quiescent leader holding follower 2 caught up sends it nothing, as a correct core does.
    quiet = one_follower_watch()
    quiet.leader_observed(frozenset({2}))
    quiet.leader_observed(frozenset())  # it woke; it was quiet to 2 until this step
    quiet.judge_follower(2, ticks=3 + timeout, since=3, timeout=timeout)
    assert 2 in quiet.lapsed and "which was quiet to it" in quiet.lapsed[2]


def test_check_quorum_deadline_runs_from_a_change_of_voters() -> None:
    """Goal: no false alarm from the check-quorum deadline when the voters change. In seed
    1465654144, leader 5 of 5 voters, with 1 and 2 on its side of a partition, removes itself:
    1 and 2 are no majority of the new voters 1-4, and the core steps down at its next check.
    The checker once judged the ticks before the change by the new voters and failed the run."""
    # The seeds of these scenario tests were found with the commit broadcast on: pinned so.
    simulation = Simulation(1465654144, commit_broadcast=True)
    simulation.run()
    assert simulation.checker.steps > 0


def test_messages_gone_stale_during_an_fsync_are_not_sent() -> None:
    """Goal: a driver that steps messages while an fsync runs sends nothing stale. In seed
    331505385, follower 2 appended 759@16 (fsync pending), then took term 17 from a leader whose
    append replaced it; its term-16 acknowledgement of 759, waiting for that fsync, claimed an
    entry it no longer held ("durability order"). Such messages are dropped when the fsync is
    done (docs/raft.md, the Ready contract); the run passes and the trace names the drop."""
    simulation = Simulation(331505385, trace=True, commit_broadcast=True)
    simulation.run()
    assert any(
        "2: stale, not sent:" in line and "AppendResponse term=16 ok match=759" in line
        for line in simulation.trace_lines
    )


@pytest.mark.parametrize("seed", [442155533, 911465610])
def test_a_slow_but_progressing_catch_up_gets_the_allowance(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Goal: the liveness bound tells slow from stuck. In these seeds a follower that diverged
    long ago catches up one entry per heartbeat over a slow healed network (docs/raft.md): they
    pass with the catch-up allowance, the trace says the bound was extended, and the same runs
    with the allowance capped at the bound itself fail the liveness check."""
    simulation = Simulation(seed, trace=True, commit_broadcast=True)
    simulation.run()
    assert any("bound extended" in line for line in simulation.trace_lines)
    monkeypatch.setattr("tests.sim.simulator.CATCH_UP_CAP", 1)
    with pytest.raises(SimulationFailure) as failed:
        Simulation(seed, commit_broadcast=True).run()
    assert failed.value.invariant == "liveness"


def test_simulation_is_deterministic() -> None:
    """Goal: one seed replays the exact same run, event for event (so failures reproduce)."""
    first = Simulation(7, trace=True)
    first.run()
    second = Simulation(7, trace=True)
    second.run()
    assert first.trace_lines == second.trace_lines
    assert first.checker.committed == second.checker.committed


def first_failure(core_class: type[RaftCore]) -> tuple[int, SimulationFailure] | None:
    """The first CI seed (1-based count) on which the simulator rejects `core_class`."""
    for count, seed in enumerate(FIXED_SEEDS, start=1):
        try:
            Simulation(seed, core_class=core_class).run()
        except SimulationFailure as failure:
            return count, failure
    return None


@pytest.mark.parametrize(
    "broken", BROKEN_CORES, ids=[broken.core_class.__name__ for broken in BROKEN_CORES]
)
def test_simulator_rejects_broken_core(broken: BrokenCore) -> None:
    """Goal: the checker's self-test. Each deliberately broken core (one wrong rule, see
    broken_cores.py) is rejected within the CI seeds, by the invariant meant for its class."""
    found = first_failure(broken.core_class)
    if found is None:
        pytest.fail(f"no CI seed caught {broken.core_class.__name__}: {broken.invariants}")
    count, failure = found
    assert failure.invariant in broken.invariants, (count, str(failure))
    assert f"pytest tests/sim --seed {failure.seed}" in str(failure)


@pytest.mark.parametrize("seed", CORRECT_VARIANT_SEEDS)
def test_slow_backtracking_variant_is_correct(seed: int) -> None:
    """Goal: the correct leader variant under NoCommitClampCore passes on its own."""
    run_seed(seed, SlowBacktrackingCore)


def test_failure_report_replays_with_the_last_events() -> None:
    """Goal: a failing seed's report is a traced replay: it ends with the events before it."""
    with pytest.raises(SimulationFailure) as failure:
        run_seed(FIXED_SEEDS[0], BROKEN_CORES[0].core_class)
    assert "last 60 events:" in str(failure.value)
    assert "Request" in str(failure.value)  # message deliveries are among the events


def test_quiet_groups_elect_when_their_leader_crashes_or_is_cut_off() -> None:
    """Goal: quiescence with faults. On the CI seeds that draw quiescence, the group went quiet
    after healing (else the run fails), and its leader was both crashed and isolated across the
    seeds; each time the others, hearing of it only through their link liveness, elected."""
    ways = []
    for seed in FIXED_SEEDS[:30]:
        simulation = run_seed(seed)
        if simulation.options.quiesce:
            ways.append(simulation.quiet_failover)
    assert "crash" in ways and "isolate" in ways, ways


@pytest.mark.slow
def test_quiescence_long_runs() -> None:
    """Goal: quiescence forced on for a bounded set of extra seeds (all faults, then a quiet
    failover each)."""
    for seed in range(20_000, 20_100):
        simulation = Simulation(seed, quiesce=True)
        simulation.run()
        assert simulation.quiet_failover is not None or simulation.options.voter_count < 3


@pytest.mark.slow
def test_simulation_long_runs() -> None:
    """Goal: longer safety phases on a bounded set of extra seeds (CI runs this size)."""
    for seed in range(10_000, 10_010):
        simulation = Simulation(seed)
        simulation.options = dataclasses.replace(simulation.options, safety_ticks=3000)
        simulation.run()
