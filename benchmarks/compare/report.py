"""The comparison's results: rows, ratios, targets (pure), then the table and the chart.

Rules:
- A run's measurement is a dict with `system`, `workload`, `run` and the driver's figures
  (`records_per_s`, `mb_per_s`, `p50_ms`..., `client_cpu_seconds`, `server_cpu_seconds`), or an
  `error` when that run failed. `build_rows` makes one row per system and workload (in the order
  systems and `WORKLOADS` are given): the median of its runs for every figure, the per-run values
  of the headline figure, and nulls where a figure does not apply (no percentiles for produce or
  consume, no MB/s for latency).
- `pybroker_ratio` on a peer's row is how many times better the pybroker system it is compared
  with did in the same sitting (`compared_with`): records/s over the peer's records/s for produce
  and consume, the peer's p99 over pybroker's p99 for latency. Above 1, pybroker leads.
- `targets` checks issue 15's targets against the rows; a target whose rows are missing is
  reported with `met: null`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.compare.measure import WORKLOADS

# The figures of a row taken as the median of its runs.
MEDIAN_FIELDS = (
    "records", "records_per_s", "mb_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms",
    "rate_records_per_s", "client_cpu_seconds", "server_cpu_seconds",
    "client_cpu_us_per_record", "server_cpu_us_per_record",
)  # fmt: skip
# Per workload, the figures that do not apply (always null in its rows).
NOT_APPLICABLE = {
    "produce": ("p50_ms", "p99_ms", "p999_ms", "max_ms", "rate_records_per_s"),
    "consume": ("p50_ms", "p99_ms", "p999_ms", "max_ms", "rate_records_per_s"),
    "latency": ("mb_per_s",),
}
# Issue 15's targets: (label, system, workload, figure, kind, goal). kind: "min" (at least goal),
# "max" (at most goal), or "ratio" (pybroker_ratio of the peer's row `system` at least goal).
TARGETS = (
    ("single node produce >= 1 M records/s", "pybroker", "produce", "records_per_s", "min", 1e6),
    ("single node produce >= 1 M records/s, bulk send_many", "pybroker-send-many", "produce",
     "records_per_s", "min", 1e6),
    ("single node consume >= 2 M records/s", "pybroker", "consume", "records_per_s", "min", 2e6),
    ("produce >= 10x NATS JetStream R1", "nats-r1", "produce", "pybroker_ratio", "ratio", 10),
    ("consume >= 10x NATS JetStream R1", "nats-r1", "consume", "pybroker_ratio", "ratio", 10),
    ("produce >= 5x Redis Streams", "redis", "produce", "pybroker_ratio", "ratio", 5),
    ("consume >= 5x Redis Streams", "redis", "consume", "pybroker_ratio", "ratio", 5),
    ("RF 3 acks=all produce >= 400 k records/s", "pybroker-rf3", "produce", "records_per_s",
     "min", 4e5),
    ("single node e2e p99 <= 2 ms", "pybroker", "latency", "p99_ms", "max", 2.0),
    ("RF 3 e2e p99 <= 5 ms", "pybroker-rf3", "latency", "p99_ms", "max", 5.0),
)  # fmt: skip


def per_record_cpu(measurement: dict[str, Any]) -> dict[str, Any]:
    """`measurement` with its client and server CPU in µs per record added (where known)."""
    out = dict(measurement)
    records = measurement.get("records") or 0
    for side in ("client", "server"):
        seconds = measurement.get(f"{side}_cpu_seconds")
        # A driver's own figure (from unrounded seconds) is kept.
        if seconds is not None and records and f"{side}_cpu_us_per_record" not in out:
            out[f"{side}_cpu_us_per_record"] = round(seconds / records * 1e6, 3)
    return out


def _median(values: Iterable[Any]) -> Any:
    present = [value for value in values if value is not None]
    if not present:
        return None
    median = statistics.median(present)
    return round(median, 3) if isinstance(median, float) else median


def _headline(workload: str) -> str:
    return "p99_ms" if workload == "latency" else "records_per_s"


def build_rows(
    measurements: list[dict[str, Any]],
    systems: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per system (`systems`: dicts of `name`, `durability`, `compared_with`, in table
    order) and workload that has at least one measurement (see the module rules)."""
    rows = []
    for system in systems:
        for workload in WORKLOADS:
            runs = [
                m
                for m in measurements
                if m["system"] == system["name"] and m["workload"] == workload
            ]
            if not runs:
                continue
            good = [per_record_cpu(m) for m in runs if "error" not in m]
            row: dict[str, Any] = {
                "system": system["name"],
                "workload": workload,
                "durability": system["durability"],
                "runs": len(good),
                "failed_runs": len(runs) - len(good),
            }
            for field in MEDIAN_FIELDS:
                row[field] = _median(m.get(field) for m in good)
            for field in NOT_APPLICABLE[workload]:
                row[field] = None
            headline = _headline(workload)
            row[f"{headline}_per_run"] = [m.get(headline) for m in good]
            row["errors"] = [m["error"] for m in runs if "error" in m]
            row["compared_with"] = system.get("compared_with")
            row["pybroker_ratio"] = None
            rows.append(row)
    add_ratios(rows)
    return rows


def ratio(workload: str, ours: dict[str, Any], theirs: dict[str, Any]) -> float | None:
    """How many times better `ours` (a pybroker row) did than `theirs` (see the module rules)."""
    if workload == "latency":
        low, high = ours.get("p99_ms"), theirs.get("p99_ms")
    else:
        low, high = theirs.get("records_per_s"), ours.get("records_per_s")
    if not low or high is None:
        return None
    return round(high / low, 2)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill each peer row's `pybroker_ratio` from its `compared_with` row of the same workload."""
    index = {(row["system"], row["workload"]): row for row in rows}
    for row in rows:
        ours = index.get((row["compared_with"], row["workload"])) if row["compared_with"] else None
        if ours is not None:
            row["pybroker_ratio"] = ratio(row["workload"], ours, row)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 15's targets against `rows`: the value, the goal, met (None: not measured)."""
    index = {(row["system"], row["workload"]): row for row in rows}
    checks = []
    for label, system, workload, field, kind, goal in TARGETS:
        row = index.get((system, workload))
        value = row.get(field) if row else None
        met = None if value is None else (value <= goal if kind == "max" else value >= goal)
        checks.append(
            {"target": label, "system": system, "workload": workload, "figure": field,
             "goal": goal, "value": value, "met": met, "shortfall": shortfall(kind, value, goal)}
        )  # fmt: skip
    return checks


def shortfall(kind: str, value: float | None, goal: float) -> str | None:
    """How far a target that is not met is from its goal, in words (None when met or unknown):
    a latency as a multiple of its goal, a rate or a ratio as a share of it."""
    if value is None or (value <= goal if kind == "max" else value >= goal):
        return None
    if kind == "max":
        return f"{value / goal:.2f}x the goal"
    return f"{value / goal:.0%} of the goal"


def document(
    rows: list[dict[str, Any]],
    *,
    params: dict[str, Any],
    notes: list[str],
    order: list[list[str]],
    machine: dict[str, Any],
) -> dict[str, Any]:
    """The JSON written by `--json` and to benchmarks/results/: `{"rows": [...], ...}`."""
    return {
        "rows": rows,
        "targets": targets(rows),
        "params": params,
        "order": order,
        "notes": notes,
        "machine": machine,
    }


# --- presentation --------------------------------------------------------------------------------


def _number(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:.3g}{suffix}"
    return f"{value:,.0f}{suffix}"


def _ratio_cell(row: dict[str, Any]) -> str:
    if row["pybroker_ratio"] is None:
        return "-" if row["compared_with"] else ""
    value = row["pybroker_ratio"]
    colour = "green" if value >= 1 else "red"
    return f"[{colour}]{value:g}x[/] ({row['compared_with']})"


def table(rows: list[dict[str, Any]], title: str) -> Table:
    """One line per row; the durability of each system is listed under the table."""
    out = Table(title=title)
    for column in (
        "system", "workload", "records/s", "MB/s", "p50 / p99 / p99.9 ms",
        "client CPU µs/rec", "server CPU µs/rec", "runs", "pybroker lead",
    ):  # fmt: skip
        out.add_column(column, justify="left" if column in ("system", "workload") else "right")
    previous = None
    for row in rows:
        latency = (
            f"{_number(row['p50_ms'])} / {_number(row['p99_ms'])} / {_number(row['p999_ms'])}"
            if row["workload"] == "latency"
            else "-"
        )
        out.add_row(
            row["system"] if row["system"] != previous else "",
            row["workload"]
            + (f" @ {row['rate_records_per_s']:,}/s" if row["rate_records_per_s"] else ""),
            _number(row["records_per_s"]),
            _number(row["mb_per_s"]),
            latency,
            _number(row["client_cpu_us_per_record"]),
            _number(row["server_cpu_us_per_record"]),
            f"{row['runs']}" + (f" ([red]{row['failed_runs']} failed[/])" if row["errors"] else ""),
            _ratio_cell(row),
        )
        previous = row["system"]
    return out


def print_report(results: dict[str, Any], console: Console, title: str) -> None:
    """The table, each system's durability, the targets and the notes."""
    rows = results["rows"]
    console.print(table(rows, title))
    console.print(
        "pybroker lead: records/s of pybroker / the peer's (produce, consume), the peer's p99 / "
        "pybroker's (latency); > 1 means pybroker leads."
    )
    console.print("[bold]durability[/]")
    seen = set()
    for row in rows:
        if row["system"] not in seen:
            seen.add(row["system"])
            console.print(f"  {row['system']}: {row['durability']}")
    checks = [check for check in results["targets"] if check["met"] is not None]
    if checks:
        console.print("[bold]issue 15 targets[/]")
    for check in checks:
        mark = "[green]met[/]" if check["met"] else f"[red]NOT met[/]: {check['shortfall']}"
        console.print(f"  {check['target']}: {_number(check['value'])} ({mark})")
    for note in results["notes"]:
        console.print(f"[yellow]note:[/] {note}")


def write_chart(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """A PNG of records/s (produce, consume) and e2e p50/p99 per system; False without
    matplotlib (the caller notes it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = list(dict.fromkeys(row["system"] for row in rows))
    index = {(row["system"], row["workload"]): row for row in rows}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for axis, workload in zip(axes[:2], ("produce", "consume"), strict=True):
        values = [(index.get((s, workload)) or {}).get("records_per_s") or 0 for s in systems]
        bars = axis.bar(systems, values, color=_colours(systems))
        axis.bar_label(bars, labels=[f"{v / 1000:,.0f}k" for v in values], fontsize=8)
        axis.set_title(f"{workload} (records/s, higher is better)")
        axis.yaxis.set_major_formatter(lambda value, _: f"{value / 1000:,.0f}k")
    axis = axes[2]
    width = 0.38
    for offset, field in ((-width / 2, "p50_ms"), (width / 2, "p99_ms")):
        values = [(index.get((s, "latency")) or {}).get(field) or 0 for s in systems]
        bars = axis.bar([i + offset for i in range(len(systems))], values, width, label=field)
        axis.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
    axis.set_xticks(range(len(systems)), systems)
    axis.set_title("end-to-end latency (ms, lower is better)")
    axis.legend()
    for axis in axes:
        axis.tick_params(axis="x", labelrotation=20)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _colours(systems: list[str]) -> list[str]:
    return ["tab:blue" if system.startswith("pybroker") else "tab:gray" for system in systems]
