"""Deterministic simulation of a share group: the queue's promises under crashes, lock expiries,
releases, rejections, lost writes, coordinator failovers and failing dead-letter writes
(tests/sim/share_model.py states the model and every invariant it checks after every event).

Seeds come from tests/sim/conftest.py (`--seed N` replays one, `--sim-runs N` runs more); a
failure names its seed, its invariant and its last events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import broker.share_groups.coordinator as coordinator_module
from broker.share_groups.share_partition import Change, Outcome, RecordState, SharePartition
from tests.sim.share_model import ShareSimFailure, ShareSimulation

DEFAULT_STEPS = 400
LONG_STEPS = 3_000
SELF_TEST_SEEDS = range(1, 41)


def run_seed(seed: int, steps: int = DEFAULT_STEPS) -> ShareSimulation:
    """Run one seed; on a failure, replay it (the same failure, or the run is not deterministic)
    and fail the test with the report."""
    simulation = ShareSimulation(seed, steps=steps)
    try:
        simulation.run()
    except ShareSimFailure as failure:
        replay = ShareSimulation(seed, steps=steps)
        with pytest.raises(ShareSimFailure) as replayed:
            replay.run()
        assert str(replayed.value) == str(failure), "the replay failed differently"
        pytest.fail(str(failure), pytrace=False)
    return simulation


def test_share_simulation_seed(simulation_seed: int) -> None:
    """Goal: every invariant holds after every event, and the queue drains with nothing lost."""
    simulation = run_seed(simulation_seed)
    assert simulation.acks_applied > 0, "no acknowledgement was ever answered"


def test_share_simulation_is_deterministic() -> None:
    first = ShareSimulation(11, trace=True)
    first.run()
    second = ShareSimulation(11, trace=True)
    second.run()
    assert first.trace_lines == second.trace_lines
    assert len(first.trace_lines) > 300


def test_share_simulation_covers_the_faults() -> None:
    """Goal: the CI seeds do exercise what the invariants are about (failovers, dead letters,
    acknowledgements), or a passing run would prove little."""
    failovers = dead_letter_jobs = acks = 0
    for seed in range(1, 21):
        simulation = run_seed(seed)
        failovers += simulation.failovers
        dead_letter_jobs += simulation.dead_letter_jobs
        acks += simulation.acks_applied
    assert failovers >= 10 and dead_letter_jobs >= 50 and acks >= 500, (
        failovers,
        dead_letter_jobs,
        acks,
    )


@pytest.mark.slow
def test_share_simulation_long_runs() -> None:
    """Goal: longer runs (more failovers, deeper redelivery histories) on a bounded seed set."""
    for seed in range(20_000, 20_006):
        run_seed(seed, LONG_STEPS)


# --- the checker's self-test: each broken rule is caught --------------------------------------


def _forgets_acknowledged(partition: SharePartition) -> Iterator[Change]:
    """Persists ACKNOWLEDGED runs as AVAILABLE: an answered ACCEPT is lost at a failover."""
    for change in ORIGINAL_PERSISTED_RUNS(partition):
        if change.state is RecordState.ACKNOWLEDGED:
            yield Change(change.first, change.last, RecordState.AVAILABLE, change.delivery_count)
        else:
            yield change


def _keeps_leavers_records(self: SharePartition, member_id: str, now_ms: int,
                           limits: Any) -> Any:  # fmt: skip
    """A member that leaves (or times out) keeps its records until their locks expire."""
    return Outcome()


def _ignores_release_delay(self: SharePartition, *args: Any, **kwargs: Any) -> Any:
    """Acquires records released with a delay before the delay is over."""
    for run in self.runs:
        if run.state is RecordState.AVAILABLE:
            run.deadline_ms = 0
    return ORIGINAL_ACQUIRE(self, *args, **kwargs)


def _no_delivery_limit(self: SharePartition, run: Any, not_before_ms: int, limits: Any,
                       outcome: Any) -> None:  # fmt: skip
    """Gives records back whatever their delivery count."""
    big = type(limits)(**{**{f: getattr(limits, f) for f in limits.__slots__},
                          "delivery_count_limit": 1_000})  # fmt: skip
    ORIGINAL_GIVE_BACK(self, run, not_before_ms, big, outcome)


def _archives_without_dead_letter(self: SharePartition, run: Any, reason: str, limits: Any,
                                  outcome: Any) -> None:  # fmt: skip
    """Archives rejected records at once, dead-letter topic or not."""
    plain = type(limits)(**{**{f: getattr(limits, f) for f in limits.__slots__},
                            "dead_letter": False})  # fmt: skip
    ORIGINAL_ARCHIVE(self, run, reason, plain, outcome)


ORIGINAL_PERSISTED_RUNS = coordinator_module._persisted_runs
ORIGINAL_ACQUIRE = SharePartition.acquire
ORIGINAL_GIVE_BACK = SharePartition._give_back
ORIGINAL_ARCHIVE = SharePartition._archive

BROKEN: list[tuple[str, Callable[[pytest.MonkeyPatch], None], set[str]]] = [
    (
        "forgets-acknowledged",
        lambda mp: mp.setattr(coordinator_module, "_persisted_runs", _forgets_acknowledged),
        {"accepted stays accepted", "accepted never redelivered"},
    ),
    (
        "keeps-leavers-records",
        lambda mp: mp.setattr(SharePartition, "release_member", _keeps_leavers_records),
        {"locks"},
    ),
    (
        "ignores-release-delay",
        lambda mp: mp.setattr(SharePartition, "acquire", _ignores_release_delay),
        {"release delay"},
    ),
    (
        "no-delivery-limit",
        lambda mp: mp.setattr(SharePartition, "_give_back", _no_delivery_limit),
        {"delivery limit"},
    ),
    (
        "archives-without-dead-letter",
        lambda mp: mp.setattr(SharePartition, "_archive", _archives_without_dead_letter),
        {"archived only once dead-lettered", "below SPSO is done"},
    ),
]


@pytest.mark.parametrize(("name", "breaks", "invariants"), BROKEN, ids=[b[0] for b in BROKEN])
def test_the_simulation_catches_a_broken_rule(
    name: str,
    breaks: Callable[[pytest.MonkeyPatch], None],
    invariants: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    breaks(monkeypatch)
    for seed in SELF_TEST_SEEDS:
        try:
            ShareSimulation(seed).run()
        except ShareSimFailure as failure:
            assert failure.invariant in invariants, str(failure)
            assert f"--seed {seed}" in str(failure)
            return
    pytest.fail(f"no seed in {SELF_TEST_SEEDS} caught {name}")
