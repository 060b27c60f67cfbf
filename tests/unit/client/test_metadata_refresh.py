"""When a subscription looks at the cluster again (`client.aio.metadata_refresh`)."""

from __future__ import annotations

import re

import pytest

from client.aio.metadata_refresh import (
    UNKNOWN_TOPIC_REFRESH_MAX_MS,
    RefreshSchedule,
    compile_pattern,
)
from wire.config_error import ConfigError


def test_a_complete_subscription_is_refreshed_every_max_age() -> None:
    schedule = RefreshSchedule(max_age_ms=300_000, backoff_ms=100)
    assert schedule.due(0.0)  # a new schedule refreshes at once
    schedule.done(10.0, complete=True)
    assert not schedule.due(309.9)
    assert schedule.due(310.0)


def test_a_missing_topic_is_looked_up_again_with_a_bounded_backoff() -> None:
    schedule = RefreshSchedule(max_age_ms=300_000, backoff_ms=100)
    waits = []
    for _ in range(10):
        schedule.done(0.0, complete=False)
        waits.append(schedule.next_at)
    assert waits[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(waits) == UNKNOWN_TOPIC_REFRESH_MAX_MS / 1000
    # Found: back to the long period, and the backoff starts afresh next time.
    schedule.done(0.0, complete=True)
    assert schedule.next_at == 300.0
    schedule.done(0.0, complete=False)
    assert schedule.next_at == 0.1


def test_the_backoff_never_exceeds_the_max_age() -> None:
    schedule = RefreshSchedule(max_age_ms=50, backoff_ms=100)
    schedule.done(0.0, complete=False)
    assert schedule.next_at == pytest.approx(0.05)


def test_request_makes_the_refresh_due_now() -> None:
    schedule = RefreshSchedule(max_age_ms=300_000, backoff_ms=100)
    schedule.done(0.0, complete=True)
    schedule.request()
    assert schedule.due(0.0)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="metadata_max_age_ms"):
        RefreshSchedule(max_age_ms=0, backoff_ms=100)
    with pytest.raises(ConfigError, match="not a regular expression"):
        compile_pattern("metrics-(")
    assert compile_pattern("a.*").fullmatch("abc")
    compiled = re.compile("x")
    assert compile_pattern(compiled) is compiled
