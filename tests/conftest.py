"""Project-wide pytest options: simulation seeds and run counts (see tests/sim)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("simulation")
    group.addoption(
        "--seed",
        action="append",
        type=int,
        default=None,
        help="run the deterministic simulations with exactly this seed (repeatable)",
    )
    group.addoption(
        "--sim-runs",
        action="store",
        type=int,
        default=None,
        help="how many simulation seeds to run (default: the fixed CI set plus a few fresh ones)",
    )
    parser.getgroup("raft").addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite tests/unit/raft/testdata/*.txt with the traces the code produces now",
    )
