"""Project-wide pytest options: simulation seeds and run counts (tests/sim), the chaos test's
fault schedule (tests/integration/cluster/test_chaos.py); each test's call report kept on its
item (`item.rep_call`), so fixtures can attach broker logs to a failure."""

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
    chaos = parser.getgroup("chaos")
    chaos.addoption(
        "--chaos-seed",
        action="store",
        type=int,
        default=None,
        help="the fault schedule of tests/integration/cluster/test_chaos.py (default: random, "
        "printed)",
    )
    chaos.addoption(
        "--chaos-seconds",
        action="store",
        type=float,
        default=20.0,
        help="how long the chaos test injects faults (CI: the default)",
    )
    parser.getgroup("raft").addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite tests/unit/raft/testdata/*.txt with the traces the code produces now",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    return report
