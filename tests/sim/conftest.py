"""Seeds for the simulation tests: `--seed N` (repeatable) replays exact runs; `--sim-runs N` runs N
seeds (the fixed CI list first, then fresh ones); by default the fixed list plus a few fresh seeds.

The seeds used are printed in the terminal summary, so a failure with a fresh seed can be replayed
with `pytest tests/sim --seed N` (the failure message names its seed too).
"""

from __future__ import annotations

import secrets

import pytest

# Seeds every CI run covers: about 10 s on one core; the whole sim suite (with the broken-core
# self-test) takes about 40 s, inside its 2 minute budget on 2 cores.
FIXED_SEEDS = list(range(1, 101))
FRESH_SEED_COUNT = 4

_SEEDS_KEY = pytest.StashKey[list[int]]()


def simulation_seeds(config: pytest.Config) -> list[int]:
    if _SEEDS_KEY in config.stash:
        return config.stash[_SEEDS_KEY]
    explicit = config.getoption("--seed")
    runs = config.getoption("--sim-runs")
    if explicit:
        seeds = list(explicit)
    elif runs is None:
        seeds = FIXED_SEEDS + [secrets.randbits(32) for _ in range(FRESH_SEED_COUNT)]
    else:
        fresh = [secrets.randbits(32) for _ in range(max(0, runs - len(FIXED_SEEDS)))]
        seeds = (FIXED_SEEDS + fresh)[:runs]
    config.stash[_SEEDS_KEY] = seeds
    return seeds


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "simulation_seed" in metafunc.fixturenames:
        metafunc.parametrize("simulation_seed", simulation_seeds(metafunc.config))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    seeds = config.stash.get(_SEEDS_KEY, None)
    if not seeds:
        return
    fixed = [seed for seed in seeds if seed in FIXED_SEEDS]
    fresh = [seed for seed in seeds if seed not in FIXED_SEEDS]
    terminalreporter.write_line(
        f"simulation: {len(fixed)} fixed seeds, fresh seeds {fresh} "
        "(replay one with: pytest tests/sim --seed N)"
    )
