"""Hypothesis profiles for the storage-engine tests (bounded by default, larger under `slow`),
and `data_fd`, an open file with data to fsync.

`HYPOTHESIS_PROFILE=log-thorough` raises the example counts of every property test here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "log-default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile(
    "log-thorough",
    max_examples=400,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "log-default"))


@pytest.fixture
def data_fd(tmp_path: Path) -> Iterator[int]:
    """A descriptor of a file holding 4 KiB to fsync, closed after the test."""
    fd = os.open(tmp_path / "segment.log", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 4096)
    yield fd
    os.close(fd)
