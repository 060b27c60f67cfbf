"""`broker-cli partitions reassign|reassignments` and `broker-cli cluster rebalance`: move
partition replicas between brokers and watch the moves (docs/reassignment.md).

A plan file is kafka-reassign-partitions.sh's format:
`{"partitions": [{"topic": "t", "partition": 0, "replicas": [2, 3, 4]}, ...]}` (a "version" key
is accepted and ignored). `--wait` follows the moves until every one has completed, with a
progress bar on stderr when it is a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import JsonFlag, fail, headed_console, open_admin, show
from client import AdminClient

partitions_app = typer.Typer(
    help="Move partition replicas between brokers and watch the moves.", no_args_is_help=True
)

ThrottleOption = Annotated[
    int,
    typer.Option(
        "--throttle",
        min=0,
        help="Replication to the new replicas, in bytes per second (0: the brokers' default).",
    ),
]
WaitOption = Annotated[bool, typer.Option("--wait", help="Wait until every move has completed.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="With --wait: give up after this many seconds.")
]
# How often --wait asks the brokers for progress.
WAIT_POLL_S = 0.5
# A plan names at most this many partitions (each becomes a record in the metadata log).
PLAN_PARTITIONS_MAX = 10_000

Key = tuple[str, int]


@partitions_app.command("reassign")
def reassign(
    topic: Annotated[str | None, typer.Option("--topic", "-t", help="The topic.")] = None,
    partition: Annotated[int | None, typer.Option("--partition", "-p", min=0)] = None,
    replicas: Annotated[
        str | None,
        typer.Option("--replicas", help="Target brokers, preferred leader first: 2,3,4."),
    ] = None,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="A JSON plan of many partitions (see --help).")
    ] = None,
    cancel: Annotated[
        bool, typer.Option("--cancel", help="Cancel the reassignment(s) under way instead.")
    ] = False,
    throttle: ThrottleOption = 0,
    wait: WaitOption = False,
    timeout_s: TimeoutOption = 3600.0,
) -> None:
    """Move a partition (--topic --partition --replicas) or a plan's partitions (--plan FILE) to
    new replicas, or --cancel the move under way (back to the original replicas)."""
    moves = _moves(topic, partition, replicas, plan, cancel=cancel)
    with open_admin() as admin:
        admin.alter_partition_reassignments(moves, throttle_bytes_per_s=throttle)
        verb = "cancelling" if cancel else "reassigning"
        typer.echo(f"{verb} {len(moves)} partition(s)", err=True)
        if wait:
            _wait(admin, set(moves), timeout_s)


def _moves(
    topic: str | None,
    partition: int | None,
    replicas: str | None,
    plan: Path | None,
    *,
    cancel: bool,
) -> dict[Key, tuple[int, ...] | None]:
    if plan is not None:
        if topic is not None or partition is not None or replicas is not None:
            raise typer.BadParameter("give either --plan or --topic/--partition/--replicas")
        entries = _read_plan(plan, cancel=cancel)
        return {key: (None if cancel else target) for key, target in entries.items()}
    if topic is None or partition is None:
        raise typer.BadParameter("give --topic and --partition (or --plan FILE)")
    if cancel:
        if replicas is not None:
            raise typer.BadParameter("--cancel takes no --replicas")
        return {(topic, partition): None}
    if replicas is None:
        raise typer.BadParameter("give --replicas, e.g. --replicas 2,3,4 (or --cancel)")
    return {(topic, partition): _node_ids(replicas)}


def _node_ids(text: str) -> tuple[int, ...]:
    try:
        nodes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a list of broker ids like 2,3,4", param_hint="--replicas"
        ) from None
    if not nodes:
        raise typer.BadParameter("name at least one broker", param_hint="--replicas")
    return nodes


def _read_plan(path: Path, *, cancel: bool) -> dict[Key, tuple[int, ...]]:
    """The plan's partitions; a malformed plan exits 1 naming what is wrong."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        fail(f"cannot read plan {path}: {exc.strerror}")
    except ValueError as exc:
        fail(f"plan {path} is not JSON: {exc}")
    entries = document.get("partitions") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        fail(f'plan {path} needs a non-empty "partitions" list')
    if len(entries) > PLAN_PARTITIONS_MAX:
        fail(f"plan {path} names {len(entries)} partitions; split it ({PLAN_PARTITIONS_MAX} max)")
    moves: dict[Key, tuple[int, ...]] = {}
    for number, entry in enumerate(entries):
        where = f"plan {path}, partitions[{number}]"
        if not isinstance(entry, dict):
            fail(f"{where}: expected an object with topic, partition and replicas")
        topic, partition, replicas = (
            entry.get("topic"),
            entry.get("partition"),
            entry.get("replicas"),
        )
        if not isinstance(topic, str) or not isinstance(partition, int):
            fail(f"{where}: needs a string topic and an integer partition")
        if not cancel and (
            not isinstance(replicas, list) or not all(isinstance(n, int) for n in replicas)
        ):
            fail(f"{where}: replicas must be a list of broker ids")
        if (topic, partition) in moves:
            fail(f"{where}: {topic}-{partition} appears twice")
        moves[(topic, partition)] = tuple(replicas or ())
    return moves


@partitions_app.command("reassignments")
def reassignments(
    topics: Annotated[
        list[str] | None, typer.Option("--topic", "-t", help="Only these topics.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the reassignments under way: replicas, target, adding and removing replicas, and
    each replica's progress (offset, lag, bytes caught up) as its partition's leader sees it."""
    with open_admin() as admin:
        statuses = admin.list_partition_reassignments(topics)
    show({"reassignments": [_status_dict(s) for s in statuses]}, as_json=as_json,
         printer=_print_statuses)  # fmt: skip


def _status_dict(status: Any) -> dict[str, Any]:
    return {
        "topic": status.topic,
        "partition": status.partition,
        "replicas": list(status.replicas),
        "target_replicas": list(status.target_replicas),
        "adding_replicas": list(status.adding_replicas),
        "removing_replicas": list(status.removing_replicas),
        "leader": status.leader_id if status.leader_id >= 0 else None,
        "throttle_bytes_per_s": status.throttle_bytes_per_s,
        "log_end_offset": status.log_end_offset,
        "log_size_bytes": status.log_size_bytes,
        "progress": [
            {
                "node_id": p.node_id,
                "role": p.role,
                "match_offset": p.match_offset,
                "lag_offsets": p.lag_offsets,
                "caught_up_bytes": p.caught_up_bytes,
            }
            for p in status.progress
        ],
    }


def _print_statuses(data: dict[str, Any]) -> None:
    from rich.table import Table

    rows = data["reassignments"]
    console = headed_console(f"[bold]reassignments under way[/]: {len(rows)}")
    if not rows:
        return
    table = Table("partition", "replicas", "target", "adding", "removing", "leader", "progress")
    for row in rows:
        table.add_row(
            f"{row['topic']}-{row['partition']}",
            _ids(row["replicas"]),
            _ids(row["target_replicas"]),
            _ids(row["adding_replicas"]),
            _ids(row["removing_replicas"]),
            str(row["leader"]) if row["leader"] is not None else "-",
            _progress_text(row),
        )
    console.print(table)


def _ids(nodes: list[int]) -> str:
    return ",".join(map(str, nodes)) or "-"


def _progress_text(row: dict[str, Any]) -> str:
    """Per replica: its role and how far it lags, e.g. `4 learner: 1.2 MiB, lag 310`."""
    if not row["progress"]:
        return "(leader not reachable)"
    parts = []
    for p in row["progress"]:
        if p["role"] == "leader":
            continue
        parts.append(
            f"{p['node_id']} {p['role']}: {_mib(p['caught_up_bytes'])}/"
            f"{_mib(row['log_size_bytes'])}, lag {p['lag_offsets']}"
        )
    return "; ".join(parts)


def _mib(size_bytes: int) -> str:
    return f"{max(0, size_bytes) / (1024 * 1024):.1f} MiB"


def _wait(admin: AdminClient, keys: set[Key], timeout_s: float) -> None:
    """Follow the moves of `keys` until none is under way (rule: progress on stderr only)."""
    deadline = time.monotonic() + timeout_s
    total = len(keys)
    with _ProgressLine(total) as line:
        while True:
            statuses = admin.list_partition_reassignments(sorted({topic for topic, _ in keys}))
            pending = [s for s in statuses if (s.topic, s.partition) in keys]
            line.update(total - len(pending), _lag_summary(pending))
            if not pending:
                break
            if time.monotonic() > deadline:
                fail(
                    f"{len(pending)} of {total} reassignment(s) still under way after "
                    f"{timeout_s:g} s; follow them with `broker-cli partitions reassignments`"
                )
            time.sleep(WAIT_POLL_S)
    typer.echo(f"{total} reassignment(s) completed", err=True)


def _lag_summary(pending: list[Any]) -> str:
    lag = sum(p.lag_offsets for s in pending for p in s.progress if p.role in ("learner", "absent"))
    return f"{len(pending)} moving, new replicas {lag} offsets behind"


class _ProgressLine:
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _ProgressLine:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("reassigning"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
            )  # fmt: skip
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self._total)
        return self

    def update(self, completed: int, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, description=description)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc_info)


def rebalance(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; move nothing.")
    ] = False,
    throttle: ThrottleOption = 0,
    wait: WaitOption = False,
    timeout_s: TimeoutOption = 3600.0,
    as_json: JsonFlag = False,
) -> None:
    """Even replicas and preferred leaders across the ACTIVE brokers: the controller plans the
    fewest moves and starts them as reassignments (preferred leaders then take over on their
    own)."""
    with open_admin() as admin:
        moves = admin.rebalance(dry_run=dry_run, throttle_bytes_per_s=throttle)
        data = {
            "dry_run": dry_run,
            "moves": [
                {
                    "topic": m.topic,
                    "partition": m.partition,
                    "replicas": list(m.replicas),
                    "target_replicas": list(m.target_replicas),
                    "error": m.error_message or None,
                }
                for m in moves
            ],
        }
        show(data, as_json=as_json, printer=_print_moves)
        started = {(m.topic, m.partition) for m in moves if not m.error_message}
        if wait and not dry_run and started:
            _wait(admin, started, timeout_s)


def _print_moves(data: dict[str, Any]) -> None:
    verb = "would move" if data["dry_run"] else "moving"
    typer.echo(f"{verb} {len(data['moves'])} partition(s)")
    for move in data["moves"]:
        line = (
            f"  {move['topic']}-{move['partition']}: {_ids(move['replicas'])} -> "
            f"{_ids(move['target_replicas'])}"
        )
        typer.echo(line + (f"  (refused: {move['error']})" if move["error"] else ""))
