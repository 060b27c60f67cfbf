"""pytest fixtures that run a real broker: `broker` (one per test) and `session_broker` (shared).

Enabled by the package's `pytest11` entry point (`pybroker = "client.pytest_plugin"`), or in a
conftest with `pytest_plugins = ["client.pytest_plugin"]`.

    def test_roundtrip(broker):                  # a fresh, empty broker for this test
        with Producer(broker.bootstrap) as p: ...

`broker` is function-scoped: full isolation, at a price of about 0.6 s to start the broker
process and 0.6 s to stop it, so ~1.3 s per test (measured on a 2-core machine; the child is a
fresh Python interpreter importing the broker). `session_broker` is one broker for the whole
session: start-up paid once, but tests must use their own topic names (`unique_topic`). Both are
stopped by their fixture even when the test fails.

A failing test's report carries the last lines of the log of every broker it used (a "broker log"
section, printed under the failure): the `pytest_runtest_makereport` hook below adds it while the
call's report is built. (A fixture's teardown runs after that report was built and printed, too
late to add to it.)
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from client.embedded import LOG_TAIL_LINES, EmbeddedBroker

# Log lines quoted per broker in a failing test's report, per broker started by `run_broker`.
_log_lines: weakref.WeakKeyDictionary[EmbeddedBroker, int] = weakref.WeakKeyDictionary()


def run_broker(
    request: pytest.FixtureRequest, *, log_lines: int = LOG_TAIL_LINES, **options: Any
) -> Iterator[EmbeddedBroker]:
    """Run an `EmbeddedBroker(**options)` for a fixture; a failed test that used it gets the
    last `log_lines` lines of its log in its report.

    Use as `yield from run_broker(request, ...)` in your own fixtures (for brokers with options).
    `request` is kept for compatibility: the report hook finds the broker among the test's
    fixture values, so any fixture that returns an `EmbeddedBroker` gets its log attached.
    """
    del request
    broker = EmbeddedBroker(**options)
    _log_lines[broker] = log_lines
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """A running `broker serve` with an empty temporary data dir, stopped after the test."""
    yield from run_broker(request)


@pytest.fixture(scope="session")
def session_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """One running broker shared by every test of the session (use unique topic names)."""
    yield from run_broker(request)


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses: the test's name plus a random suffix."""
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in request.node.name)
    return f"{name[:80]}-{uuid.uuid4().hex[:8]}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Attach the log tail of each broker a failed test used to that test's report (set-up and
    call failures), and keep each phase's report as `item.rep_<phase>` for fixtures that want
    to know the outcome (pytest's documented recipe)."""
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    if report.failed and report.when in ("setup", "call"):
        for broker in _brokers_of(item):
            title = f"broker log ({broker.host}:{broker.port})"
            # Idempotent: a conftest that imports this hook registers it a second time.
            if all(name != title for name, _ in report.sections):
                lines = _log_lines.get(broker, LOG_TAIL_LINES)
                report.sections.append((title, broker.log_tail(lines)))
    return report


def _brokers_of(item: pytest.Item) -> list[EmbeddedBroker]:
    """The embedded brokers among the test's fixture values (each once, in fixture order)."""
    values = getattr(item, "funcargs", {}).values()
    return list({id(v): v for v in values if isinstance(v, EmbeddedBroker)}.values())
