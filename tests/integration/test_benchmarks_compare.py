"""`python -m benchmarks.compare` as a user runs it: a real process that starts real servers.

Goal (issue 15): the comparison harness runs end to end, writes `{"rows": [...]}` with one row
per system and workload, and skips a peer that is not installed with a note saying how to get
it. The runs are tiny (a few thousand records): this checks that the harness works, not how fast
anything is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

# A whole tiny run: start the servers, three workloads each, stop them. Generous for a busy
# 2-core machine.
RUN_TIMEOUT_S = 120
TINY = ["--quick", "--records", "2000", "--rate", "2000", "--latency-seconds", "0.5"]


def _compare(
    args: list[str], tmp_path: pathlib.Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict]:
    output = tmp_path / "out.json"
    command = [
        sys.executable, "-m", "benchmarks.compare", *args, "--json", str(output),
        "--results-dir", str(tmp_path / "results"),
    ]  # fmt: skip
    # Its own process group: whatever happens, no server it started outlives the test.
    with subprocess.Popen(
        command, cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    document = json.loads(output.read_text())
    # The same document also went to the results directory, beside the chart.
    assert json.loads((tmp_path / "results" / "compare.json").read_text()) == document
    return result, document


def _check_rows(document: dict, systems: list[str]) -> None:
    rows = document["rows"]
    assert [(r["system"], r["workload"]) for r in rows] == [
        (system, workload) for system in systems for workload in ("produce", "consume", "latency")
    ]
    for row in rows:
        assert row["runs"] == 1 and not row["errors"], row
        assert row["records_per_s"] > 0
        assert row["durability"]
        assert row["server_cpu_seconds"] is not None and row["client_cpu_seconds"] > 0
        if row["workload"] == "latency":
            assert row["records"] == 1000  # 2000 records/s for 0.5 s
            assert 0 < row["p50_ms"] <= row["p99_ms"]
        else:
            assert row["records"] == 2000
            assert row["mb_per_s"] > 0
            assert row["p50_ms"] is None and row["p99_ms"] is None


@pytest.mark.slow
def test_a_tiny_pybroker_run_writes_its_rows(tmp_path: pathlib.Path) -> None:
    result, document = _compare([*TINY, "--systems", "pybroker"], tmp_path)
    _check_rows(document, ["pybroker"])
    assert document["rows"][0]["durability"].startswith("acks=1")
    chart = tmp_path / "results" / "compare.png"
    if importlib.util.find_spec("matplotlib") is None:  # the bench extra is not installed
        assert not chart.exists()
        assert document["notes"] == [
            "no chart: matplotlib is not installed (pip install -e '.[bench]')"
        ]
    else:
        assert chart.stat().st_size > 0
    assert "pybroker" in result.stdout and "records/s" in result.stdout


@pytest.mark.slow
def test_the_bulk_api_has_its_own_produce_row(tmp_path: pathlib.Path) -> None:
    _, document = _compare([*TINY, "--systems", "pybroker-send-many"], tmp_path)
    (row,) = document["rows"]  # produce only: consume and latency are pybroker's rows
    assert (row["system"], row["workload"], row["runs"]) == ("pybroker-send-many", "produce", 1)
    assert row["records"] == 2000 and row["records_per_s"] > 0 and not row["errors"]
    assert "send_many" in row["durability"]
    bulk_target = [t for t in document["targets"] if t["system"] == "pybroker-send-many"]
    assert [t["value"] for t in bulk_target] == [row["records_per_s"]]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("nats") is None, reason="nats-py not installed (the bench extra)"
)
def test_a_tiny_run_beside_nats_has_the_ratio(tmp_path: pathlib.Path) -> None:
    _, document = _compare([*TINY, "--systems", "pybroker,nats-r1"], tmp_path)
    _check_rows(document, ["pybroker", "nats-r1"])
    for row in document["rows"]:
        if row["system"] == "nats-r1":
            assert row["compared_with"] == "pybroker"
            assert row["pybroker_ratio"] > 0
    assert document["order"] == [["pybroker", "nats-r1"]]


def test_a_missing_peer_is_skipped_with_a_note(tmp_path: pathlib.Path) -> None:
    # No redis-server on this PATH (the interpreter and the broker are run by absolute path);
    # without the bench extra, redis-py is what is missing first.
    result, document = _compare(
        ["--quick", "--systems", "redis"], tmp_path, PATH=str(tmp_path / "empty")
    )
    assert document["rows"] == []
    (note,) = document["notes"]
    if importlib.util.find_spec("redis") is None:
        assert note == "redis skipped: redis-py is not installed (pip install -e '.[bench]')"
    else:
        assert note.startswith("redis skipped: redis-server is not on PATH")
    assert "redis skipped" in result.stdout
