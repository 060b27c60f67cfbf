"""pytest fixtures that run a real broker: `broker` (one per test) and `session_broker` (shared).

Enabled by the package's `pytest11` entry point (`pybroker = "client.pytest_plugin"`), or in a
conftest with `pytest_plugins = ["client.pytest_plugin"]`.

    def test_roundtrip(broker):                  # a fresh, empty broker for this test
        with Producer(broker.bootstrap) as p: ...

`broker` is function-scoped: full isolation, ~0.5 s of start-up per test. `session_broker` is one
broker for the whole session: fast, but tests must use their own topic names (`unique_topic`).
Both are stopped by their fixture even when the test fails; the broker's log is appended to the
failure report.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from client.embedded import LOG_TAIL_LINES, EmbeddedBroker


def run_broker(
    request: pytest.FixtureRequest, *, log_lines: int = LOG_TAIL_LINES, **options: Any
) -> Iterator[EmbeddedBroker]:
    """Run an `EmbeddedBroker(**options)` for a fixture; on a failed test, attach its log tail.

    Use as `yield from run_broker(request, ...)` in your own fixtures (for brokers with options).
    """
    broker = EmbeddedBroker(**options)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            request.node.add_report_section("call", "broker log", broker.log_tail(log_lines))
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
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    # Remember each phase's report on the item, so the fixture can attach the broker log to a
    # failed test (the documented pytest recipe).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
