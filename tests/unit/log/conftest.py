"""Hypothesis profiles for the storage-engine tests: bounded by default, larger under `slow`.

`HYPOTHESIS_PROFILE=log-thorough` raises the example counts of every property test here.
"""

from __future__ import annotations

import os

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
