"""`broker-cli groups`: list, describe (with lag), reset the offsets of and delete consumer
groups; `configure` and the share group view of `describe` come from share_groups.py.

Rules: `describe` asks for a share group first and falls back to the consumer group of that
name. `reset-offsets` follows kafka-consumer-groups.sh: it prints the plan and changes nothing
unless given `--execute` (the plan itself is cli/offset_reset.py); `--execute` refuses a group
with members, whose next commit would overwrite the new offsets.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from cli import offset_reset, share_groups
from cli.common import JsonFlag, fail, headed_console, now_ms, open_admin, show
from client import AdminClient
from client.types import TopicPartition
from wire.error_codes import BrokerError

groups_app = typer.Typer(
    help="List, describe (with lag), reset the offsets of and delete consumer groups; configure "
    "and describe share groups.",
    no_args_is_help=True,
)

# States in which a group has no members: its offsets may be reset.
_INACTIVE_STATES = ("Empty", "Dead")


@groups_app.command("list")
def groups_list(as_json: JsonFlag = False) -> None:
    """List consumer groups and their states (with ACLs on: those you may describe)."""
    with open_admin() as admin:
        groups = admin.list_groups()
    rows = [
        {"group": g.group_id, "state": g.state, "protocol_type": g.protocol_type} for g in groups
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        typer.echo(f"{row['group']}\t{row['state']}")


@groups_app.command("describe")
def groups_describe(group: str, as_json: JsonFlag = False) -> None:
    """Show a group's state, members, assignment, and per partition the committed offset, the
    log end offset and the lag. For a share group: its members, and per partition the records
    in flight, available, acquired and archived, the backlog and the oldest available record's
    age, and its dead-letter writes."""
    with open_admin() as admin:
        share = share_groups.share_group_or_none(admin, group)
        description = admin.describe_group(group) if share is None else None
    if share is not None:
        data = share_groups.share_group_dict(share, now_ms=now_ms())
        show(data, as_json=as_json, printer=share_groups.print_share_group)
    else:
        show(_group_dict(description), as_json=as_json, printer=_print_group)


# Registered here, between describe and reset-offsets, so that `groups --help` lists the
# commands in this order.
groups_app.command("configure")(share_groups.groups_configure)


def _group_dict(description: Any) -> dict[str, Any]:
    from wire.assignors import Assignment

    members = []
    for m in description.members:
        try:
            assigned = [
                [tp.topic, tp.partition] for tp in Assignment.decode(m.assignment).partitions
            ]
        except (ValueError, TypeError, KeyError):
            assigned = []
        members.append(
            {
                "member_id": m.member_id,
                "group_instance_id": m.group_instance_id,
                "client_id": m.client_id,
                "session_timeout_ms": m.session_timeout_ms,
                "assignment": assigned,
            }
        )
    offsets = [
        {
            "topic": o.topic,
            "partition": o.partition,
            "member_id": o.member_id or None,
            "committed_offset": o.committed_offset if o.committed_offset >= 0 else None,
            "log_end_offset": o.log_end_offset if o.log_end_offset >= 0 else None,
            "lag": o.lag if o.lag >= 0 else None,
        }
        for o in description.offsets
    ]
    return {
        "group": description.group_id,
        "state": description.state,
        "protocol_type": description.protocol_type,
        "protocol": description.protocol_name,
        "generation": description.generation,
        "leader": description.leader_id or None,
        "members": members,
        "offsets": offsets,
        "total_lag": sum(o["lag"] or 0 for o in offsets),
    }


def _print_group(data: dict[str, Any]) -> None:
    from rich.table import Table

    console = headed_console(
        f"[bold]{data['group']}[/]  state={data['state']}  protocol={data['protocol'] or '-'}  "
        f"generation={data['generation']}  members={len(data['members'])}  "
        f"total lag={data['total_lag']}"
    )
    table = Table("topic", "partition", "member", "committed", "log end", "lag")
    for o in data["offsets"]:
        table.add_row(
            o["topic"],
            str(o["partition"]),
            o["member_id"] or "-",
            *(
                "-" if o[key] is None else str(o[key])
                for key in ("committed_offset", "log_end_offset", "lag")
            ),
        )
    console.print(table)
    for m in data["members"]:
        parts = ", ".join(f"{t}/{p}" for t, p in m["assignment"]) or "(none)"
        instance = f" instance={m['group_instance_id']}" if m["group_instance_id"] else ""
        console.print(f"  {m['member_id']}{instance}: {parts}")


@groups_app.command("reset-offsets")
def groups_reset_offsets(
    group: str,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            "-t",
            metavar="TOPIC[:P,...]",
            help="TOPIC (every partition) or TOPIC:P,P,... (those partitions); repeatable.",
        ),
    ] = None,
    all_topics: Annotated[
        bool, typer.Option("--all-topics", help="Every topic the group has committed offsets for.")
    ] = False,
    to_earliest: Annotated[bool, typer.Option("--to-earliest", help="The oldest record.")] = False,
    to_latest: Annotated[bool, typer.Option("--to-latest", help="The log end.")] = False,
    to_offset: Annotated[
        int | None,
        typer.Option("--to-offset", min=0, metavar="N", help="This offset (clamped to the log)."),
    ] = None,
    shift_by: Annotated[
        int | None,
        typer.Option(
            "--shift-by",
            metavar="N",
            help="The committed offset plus N (N < 0: back; clamped to the log).",
        ),
    ] = None,
    to_datetime: Annotated[
        str | None,
        typer.Option(
            "--to-datetime",
            metavar="ISO8601",
            help="The first record at or after an ISO 8601 time (UTC unless it names a zone).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan only (the default).")
    ] = False,
    execute: Annotated[bool, typer.Option("--execute", help="Commit the new offsets.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Plan, and with --execute commit, new offsets for GROUP, as kafka-consumer-groups.sh
    --reset-offsets: per partition the committed offset and the new one. Without --execute
    nothing changes. --execute is refused while the group has members."""
    try:
        spec = offset_reset.choose_spec(
            to_earliest=to_earliest,
            to_latest=to_latest,
            to_offset=to_offset,
            shift_by=shift_by,
            to_datetime=to_datetime,
        )
        topics = offset_reset.parse_topic_specs(topic or ())
    except offset_reset.ResetError as exc:
        raise typer.BadParameter(str(exc)) from None
    if bool(topics) == all_topics:
        raise typer.BadParameter("give --topic (one or more) or --all-topics")
    if dry_run and execute:
        raise typer.BadParameter("give --dry-run or --execute, not both")
    with open_admin() as admin, _stages() as stage:
        stage(f"reading the state and offsets of group {group!r}")
        state = _group_state(admin, group)
        if state not in _INACTIVE_STATES and execute:
            fail(
                f"group {group!r} is active (state {state}); stop its consumers and wait for "
                "their session timeout before resetting its offsets"
            )
        committed = admin.list_consumer_group_offsets(group)
        current = {tp: o.offset for tp, o in committed.items()}
        partitions = _partitions_to_reset(admin, group, topics, current, stage)
        stage(f"reading the log start and end of {len(partitions)} partition(s)")
        earliest = admin.list_offsets(partitions, -2)
        latest = admin.list_offsets(partitions, -1)
        at_time = None
        if spec.kind == "to-datetime":
            stage(f"finding the offsets at {to_datetime}")
            at_time = admin.list_offsets(partitions, spec.value)
        try:
            plan = offset_reset.plan_reset(
                spec, partitions, current=current, earliest=earliest, latest=latest,
                at_time=at_time,
            )  # fmt: skip
        except offset_reset.ResetError as exc:
            fail(str(exc))
        if execute:
            stage(f"committing {len(plan)} offset(s) for group {group!r}")
            admin.alter_consumer_group_offsets(group, {row.partition: row.new for row in plan})
    rows = [
        {"topic": row.partition.topic, "partition": row.partition.partition,
         "current_offset": row.current, "new_offset": row.new}
        for row in plan
    ]  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"group": group, "executed": execute, "partitions": rows}))
    else:
        _print_plan(group, rows)
    if execute:
        typer.echo(f"reset {len(plan)} partition(s) of group {group!r}", err=True)
        return
    note = "" if state in _INACTIVE_STATES else f"; the group is {state}: stop its consumers first"
    typer.echo(
        f"nothing changed: add --execute to commit these {len(plan)} offset(s){note}", err=True
    )


def _partitions_to_reset(
    admin: AdminClient,
    group: str,
    topics: dict[str, tuple[int, ...] | None],
    current: dict[TopicPartition, int],
    stage: Callable[[str], None],
) -> list[TopicPartition]:
    """The partitions the `--topic` values name (checked against the topics), or with
    `--all-topics` (no `topics`) every partition the group has committed."""
    if not topics:
        if not current:
            fail(f"group {group!r} has no committed offsets; name the topics with --topic")
        return sorted(current)
    stage(f"describing {len(topics)} topic(s)")
    counts = {d.name: d.partition_count for d in admin.describe_topics(sorted(topics))}
    try:
        return offset_reset.select_partitions(topics, counts)
    except offset_reset.ResetError as exc:
        fail(str(exc))


def _print_plan(group: str, rows: list[dict[str, Any]]) -> None:
    # Plain aligned columns, as kafka-consumer-groups.sh prints them: easy to read and to cut.
    group_width = max(len("GROUP"), len(group))
    topic_width = max([len("TOPIC"), *(len(row["topic"]) for row in rows)])
    typer.echo(
        f"{'GROUP':<{group_width}}  {'TOPIC':<{topic_width}}  PARTITION  CURRENT-OFFSET  NEW-OFFSET"
    )
    for row in rows:
        current = "-" if row["current_offset"] is None else str(row["current_offset"])
        typer.echo(
            f"{group:<{group_width}}  {row['topic']:<{topic_width}}  "
            f"{row['partition']:<9}  {current:<14}  {row['new_offset']}"
        )


@contextlib.contextmanager
def _stages() -> Iterator[Callable[[str], None]]:
    """A spinner on stderr naming the step under way, when stderr is a terminal (a cluster
    that is electing coordinators can take seconds per step); a no-op otherwise, so scripts
    and pipes see only the plan and the summary."""
    if not sys.stderr.isatty():
        yield lambda text: None
        return
    from rich.console import Console

    with Console(stderr=True).status("starting") as status:
        yield lambda text: status.update(f"{text}...")


def _group_state(admin: AdminClient, group: str) -> str:
    # A group the coordinator does not know has no members, like a dead one.
    try:
        return str(admin.describe_group(group).state)
    except BrokerError as exc:
        if exc.code.name == "GROUP_ID_NOT_FOUND":
            return "Dead"
        raise


@groups_app.command("delete")
def groups_delete(group: str) -> None:
    """Delete an empty group and its committed offsets."""
    with open_admin() as admin:
        admin.delete_group(group)
    typer.echo(f"deleted group {group!r}", err=True)
