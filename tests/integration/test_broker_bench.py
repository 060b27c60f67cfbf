"""`broker-bench` as a user runs it after the README's install: from any directory, a real process.

Goal (issue 14): the benchmarks are an installed command, not a script that only works from the
repository root; their producer defaults are the SDK's (acks=all); every phase shows a progress
bar; the JSON they write is complete. The run is tiny (a few thousand records): this checks that
the benchmark works, not how fast anything is.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

BENCH = pathlib.Path(sys.executable).parent / "broker-bench"
# A whole tiny run: start a broker, three phases, stop it. Generous for a busy 2-core machine.
RUN_TIMEOUT_S = 240
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run(args: list[str], cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [[str(BENCH)], [sys.executable, "-m", "benchmarks.throughput"]],
    ids=["broker-bench", "python-m"],
)
def test_help_works_outside_the_repository(tmp_path: pathlib.Path, command: list[str]) -> None:
    result = _run([*command, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--records" in result.stdout
    assert "default all, as the SDK's producer" in result.stdout


def test_a_tiny_run_from_elsewhere_writes_its_json(tmp_path: pathlib.Path) -> None:
    output = tmp_path / "out" / "bench.json"
    # FORCE_COLOR makes rich draw its bars although stderr is a pipe, so they can be checked.
    result = _run(
        [str(BENCH), "--records", "2000", "--rate", "500", "--latency-seconds", "1",
         "--output", str(output)],
        tmp_path,
        FORCE_COLOR="1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    stderr = _ANSI.sub("", result.stderr)
    assert f"results written to {output}" in stderr.replace("\n", "")

    results = json.loads(output.read_text())
    assert results["params"]["acks"] == "all"
    assert results["params"]["max_in_flight"] is None  # the producer's own default
    assert results["produce"]["records"] == 2000
    assert results["produce"]["records_per_s"] > 0
    assert results["consume"]["records"] == 2000
    assert "stalled" not in results["consume"]
    assert results["latency"]["records"] == 500
    assert 0 < results["latency"]["p50_ms"] <= results["latency"]["max_ms"]

    for phase in ("starting a broker", "creating topic", "producer process", "produce",
                  "consume", "latency"):  # fmt: skip
        # The phase's name, then its bar (rich draws bars with box-drawing lines).
        bar = rf"\b{phase}\b[^\r\n━╸╺]* [━╸╺]"
        assert re.search(bar, stderr), f"no progress bar for {phase!r}"
