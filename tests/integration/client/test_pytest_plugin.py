"""The pytest plugin as its users meet it: run in a separate pytest session by `pytester`.

Goal: a failing test that used the `broker` (or `session_broker`) fixture shows the broker's log
under its failure, and a passing test shows none; the fixtures stop their broker either way.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

FAILING_TEST = """
from client import AdminClient

def test_needs_a_topic(broker):
    with AdminClient(broker.bootstrap) as admin:
        admin.create_topic("plugin-topic", 1)
    assert False, "deliberate failure"

def test_passes(session_broker):
    assert session_broker.running
"""


def test_a_failing_tests_report_shows_the_broker_log(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=FAILING_TEST)
    # A subprocess: the inner session starts real broker processes, kept out of this one's.
    # The plugin is active there through its pytest11 entry point, as for any user.
    result = pytester.runpytest_subprocess("-rA")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    # The section sits in the failing test's report, with lines the broker logged.
    failure = out[out.index("test_needs_a_topic") : out.index("short test summary")]
    assert "broker log (127.0.0.1:" in failure
    assert "created topic plugin-topic" in failure
    # Exactly one section per broker, and none for the passing test.
    assert out.count("broker log (127.0.0.1:") == 1


def test_a_setup_failure_of_a_custom_broker_fixture_is_reported(
    pytester: pytest.Pytester,
) -> None:
    # `run_broker` is the documented way to build fixtures with options; a bad option fails the
    # broker's start-up, which must be an error naming the cause, not a hang.
    pytester.makepyfile(
        test_custom="""
import pytest
from client.pytest_plugin import run_broker

@pytest.fixture
def odd_broker(request):
    yield from run_broker(request, extra_args=["--no-such-option"], startup_timeout_s=20)

def test_uses_it(odd_broker):
    pass
"""
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*EmbeddedBrokerError*"])
