"""`python -m benchmarks.round_trip`: a tiny real run writes figures that hold together.

Checks that the benchmark works (a broker of its own, one record at a time, the JSON it writes),
not how fast anything is: timings belong in benchmarks, not in tests.
"""

from __future__ import annotations

import json
import pathlib

from tests.benchmark_runs import run_benchmark

RUN_TIMEOUT_S = 120


def test_a_short_run_measures_round_trips_and_both_sides_cpu(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "round_trip.json"
    result = run_benchmark(
        "round_trip", "--seconds", "0.5", "--json", str(out), timeout_s=RUN_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    assert "round trips (1 broker(s), acks=1" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["round_trips"] > 0
    # One at a time: the mean wall time is the measured time over the count, and no round trip
    # can take less CPU than nothing on either side.
    mean_us = 1e6 * figures["workload"]["seconds"] / figures["round_trips"]
    assert abs(figures["wall_us_mean"] - mean_us) <= 0.1 + 1e-6 * mean_us
    assert 0 < figures["wall_us_p50"] <= figures["wall_us_p99"]
    assert figures["client_cpu_us_per_round_trip"] > 0
    assert figures["broker_cpu_us_per_round_trip"] > 0


def test_acks_zero_is_refused_with_a_reason(tmp_path: pathlib.Path) -> None:
    result = run_benchmark("round_trip", "--acks", "0", timeout_s=RUN_TIMEOUT_S)
    assert result.returncode == 2
    assert "no acknowledgement to wait for" in result.stderr
