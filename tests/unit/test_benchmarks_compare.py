"""The comparison harness's pure parts (issue 15): rows, ratios, targets, the JSON's shape, the
schedule and the arguments. No server runs here; tests/integration/test_benchmarks_compare.py
runs the command itself."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks.compare import cli, report
from benchmarks.compare.measure import Workload, latency_summary

SYSTEMS = [
    {"name": "pybroker", "durability": "fsync per batch", "compared_with": None},
    {"name": "pybroker-rf3", "durability": "majority fsync", "compared_with": None},
    {"name": "nats-r1", "durability": "fsync per 2 min", "compared_with": "pybroker"},
    {"name": "redis", "durability": "fsync per 1 s", "compared_with": "pybroker"},
]


def _throughput(system: str, workload: str, run: int, records_per_s: int) -> dict:
    return {
        "system": system, "workload": workload, "run": run, "records": 1000,
        "seconds": 1000 / records_per_s, "records_per_s": records_per_s,
        "mb_per_s": records_per_s * 100 / 1e6, "client_cpu_seconds": 0.5,
        "client_cpu_us_per_record": 500.0, "server_cpu_seconds": 0.25,
    }  # fmt: skip


def _latency(system: str, run: int, p99_ms: float) -> dict:
    return {
        "system": system, "workload": "latency", "run": run, "records": 1000, "seconds": 1.0,
        "rate_records_per_s": 1000, "records_per_s": 1000, "p50_ms": p99_ms / 4,
        "p99_ms": p99_ms, "p999_ms": p99_ms * 2, "max_ms": p99_ms * 3,
        "client_cpu_seconds": 0.1, "server_cpu_seconds": 0.2,
    }  # fmt: skip


def _measurements() -> list[dict]:
    out = []
    for run, (ours, nats, redis) in enumerate(
        [(300_000, 30_000, 60_000), (500_000, 50_000, 40_000)]
    ):
        out += [
            _throughput("pybroker", "produce", run, ours),
            _throughput("pybroker", "consume", run, ours * 2),
            _latency("pybroker", run, 2.0 + run),
            _throughput("nats-r1", "produce", run, nats),
            _throughput("nats-r1", "consume", run, nats),
            _latency("nats-r1", run, 5.0 + run),
            _throughput("redis", "produce", run, redis),
            _throughput("redis", "consume", run, redis),
            _latency("redis", run, 1.5),
        ]
    return out


def _row(rows: list[dict], system: str, workload: str) -> dict:
    (row,) = [r for r in rows if r["system"] == system and r["workload"] == workload]
    return row


def test_one_row_per_system_and_workload_in_table_order_with_medians() -> None:
    rows = report.build_rows(_measurements(), SYSTEMS)
    # pybroker-rf3 has no measurement: no rows for it.
    assert [(r["system"], r["workload"]) for r in rows] == [
        (system, workload)
        for system in ("pybroker", "nats-r1", "redis")
        for workload in ("produce", "consume", "latency")
    ]
    produce = _row(rows, "pybroker", "produce")
    assert produce["records_per_s"] == 400_000  # the median of 300 k and 500 k
    assert produce["records_per_s_per_run"] == [300_000, 500_000]
    assert produce["durability"] == "fsync per batch"
    assert produce["server_cpu_us_per_record"] == 250.0  # 0.25 s over 1000 records
    assert produce["client_cpu_us_per_record"] == 500.0  # the driver's own figure is kept
    # Figures that do not apply are null, not absent.
    assert produce["p50_ms"] is None and produce["p99_ms"] is None
    latency = _row(rows, "pybroker", "latency")
    assert latency["mb_per_s"] is None
    assert latency["p99_ms"] == 2.5 and latency["p99_ms_per_run"] == [2.0, 3.0]
    assert latency["rate_records_per_s"] == 1000


def test_ratios_say_how_many_times_pybroker_leads_each_peer() -> None:
    rows = report.build_rows(_measurements(), SYSTEMS)
    assert _row(rows, "pybroker", "produce")["pybroker_ratio"] is None
    nats_produce = _row(rows, "nats-r1", "produce")
    assert nats_produce["compared_with"] == "pybroker"
    assert nats_produce["pybroker_ratio"] == 10.0  # 400 k / 40 k
    assert _row(rows, "redis", "consume")["pybroker_ratio"] == 16.0  # 800 k / 50 k
    # Latency: the peer's p99 over pybroker's, so > 1 still means pybroker leads.
    assert _row(rows, "nats-r1", "latency")["pybroker_ratio"] == 2.2  # 5.5 / 2.5
    assert _row(rows, "redis", "latency")["pybroker_ratio"] == 0.6  # 1.5 / 2.5


def test_a_peer_without_its_pybroker_row_has_no_ratio() -> None:
    measurements = [m for m in _measurements() if m["system"] != "pybroker"]
    rows = report.build_rows(measurements, SYSTEMS)
    assert all(row["pybroker_ratio"] is None for row in rows)


def test_failed_runs_are_counted_and_kept_out_of_the_medians() -> None:
    measurements = [
        *_measurements(),
        {"system": "pybroker", "workload": "produce", "run": 3, "error": "RuntimeError: boom"},
    ]
    produce = _row(report.build_rows(measurements, SYSTEMS), "pybroker", "produce")
    assert (produce["runs"], produce["failed_runs"]) == (2, 1)
    assert produce["errors"] == ["RuntimeError: boom"]
    assert produce["records_per_s"] == 400_000


def test_targets_report_value_goal_and_whether_met() -> None:
    checks = {c["target"]: c for c in report.targets(report.build_rows(_measurements(), SYSTEMS))}
    produce = checks["single node produce >= 1 M records/s"]
    assert (produce["value"], produce["goal"], produce["met"]) == (400_000, 1e6, False)
    assert produce["shortfall"] == "40% of the goal"
    assert checks["produce >= 10x NATS JetStream R1"]["met"] is True
    assert checks["produce >= 10x NATS JetStream R1"]["shortfall"] is None
    latency = checks["single node e2e p99 <= 2 ms"]
    assert latency["met"] is False
    assert (latency["value"], latency["shortfall"]) == (2.5, "1.25x the goal")
    # Nothing measured at RF 3: not met, not failed either.
    assert checks["RF 3 e2e p99 <= 5 ms"]["met"] is None


def test_the_document_is_json_with_the_rows_the_issue_names() -> None:
    rows = report.build_rows(_measurements(), SYSTEMS)
    document = json.loads(
        json.dumps(
            report.document(
                rows, params={"records": 1000}, notes=["redis skipped"], order=[["pybroker"]],
                machine={"cpus": 2},
            )
        )
    )  # fmt: skip
    assert set(document) >= {"rows", "targets", "params", "notes", "order", "machine"}
    for row in document["rows"]:
        assert row["system"] in cli.SYSTEM_NAMES
        assert row["workload"] in ("produce", "consume", "latency")
        for key in ("records_per_s", "p50_ms", "p99_ms", "durability", "mb_per_s",
                    "client_cpu_seconds", "server_cpu_seconds"):  # fmt: skip
            assert key in row


def test_the_schedule_rotates_so_that_every_system_takes_each_turn() -> None:
    assert cli.schedule(["a", "b", "c"], 4) == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"],
    ]  # fmt: skip
    assert cli.schedule([], 3) == []


def test_quick_and_explicit_sizes() -> None:
    quick = cli.parse_args(["--quick", "--systems", "pybroker,redis"])
    assert (quick.records, quick.runs, quick.latency_seconds) == cli.QUICK
    assert quick.systems == ["pybroker", "redis"]
    sized = cli.parse_args(["--quick", "--records", "123", "--runs", "2"])
    assert (sized.records, sized.runs) == (123, 2)
    assert cli.parse_args([]).systems == list(cli.SYSTEM_NAMES)
    assert cli.parse_args([]).workloads == ["produce", "consume", "latency"]
    assert cli.parse_args(["--workloads", "latency"]).workloads == ["latency"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--systems", "kafka"],
        ["--records", "0"],
        ["--record-bytes", "4"],
        ["--workloads", "fetch"],
        ["--workloads", "consume,latency"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_latency_summary_percentiles_and_whole_bursts() -> None:
    summary = latency_summary([i * 1_000_000 for i in range(1, 1001)], 1000, 1.0, 0.5)
    assert (summary["p50_ms"], summary["p99_ms"], summary["p999_ms"]) == (501.0, 991.0, 1000.0)
    assert summary["records"] == 1000 and summary["max_ms"] == 1000.0
    with pytest.raises(ValueError, match="no record"):
        latency_summary([], 1000, 1.0, 0.5)
    # Latency phases send whole bursts of 10 records.
    assert Workload(10, 100, rate=1005, latency_seconds=1.0).latency_records == 1000


def test_a_peer_without_its_client_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import nats` / `import redis` raise ImportError.
    monkeypatch.setitem(sys.modules, "nats", None)
    monkeypatch.setitem(sys.modules, "redis", None)
    systems = cli.all_systems(fsync_always=False)
    reasons = {system.name: system.missing() for system in systems}
    assert reasons["pybroker"] is None and reasons["pybroker-rf3"] is None
    for name in ("nats-r1", "nats-r3", "redis"):
        assert "pip install -e '.[bench]'" in reasons[name]


def test_each_row_states_what_an_acknowledgement_survived() -> None:
    default = {s.name: s.durability for s in cli.all_systems(fsync_always=False)}
    strict = {s.name: s.durability for s in cli.all_systems(fsync_always=True)}
    assert "fsync per batch" in default["pybroker"] and "acks=1" in default["pybroker"]
    assert "fsynced on a majority" in default["pybroker-rf3"]
    # The peers' own defaults fsync on a timer; --peer-fsync always fsyncs before the ack.
    assert "2 min" in default["nats-r1"] and "everysec" in default["redis"]
    for name in ("nats-r1", "nats-r3", "redis"):
        assert strict[name].startswith("acknowledged once fsynced"), strict[name]
    assert strict["pybroker"] == default["pybroker"]  # pybroker always runs its defaults
