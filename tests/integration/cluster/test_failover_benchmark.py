"""`python -m benchmarks.failover` as a user runs it: a real process, one trial on three real
brokers, its JSON complete. Checks that the benchmark works, not how fast the failover is (that
is the benchmark's job, docs/performance.md)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

# Three brokers started, one kill and restart, stopped: generous for a busy 2-core machine.
RUN_TIMEOUT_S = 240


@pytest.mark.slow
def test_one_failover_trial_reports_the_first_acknowledgement(tmp_path: pathlib.Path) -> None:
    output = tmp_path / "failover.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.failover", "--trials", "1", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text())
    (trial,) = report["trials"]
    assert trial["ack_s"] is not None and trial["ack_s"] > 0, report
    assert trial["elected_s"] is not None, report
    assert report["summary"]["ack_s"]["failed"] == 0
    assert "first acknowledged write" in done.stdout
