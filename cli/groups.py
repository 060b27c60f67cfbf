"""`broker-cli groups`: list, describe (with lag), reset the offsets of and delete consumer
groups; `configure` and the share group view of `describe` come from share_groups.py.

Rules: `describe` asks for a share group first and falls back to the consumer group of that
name. `reset-offsets` refuses a group with members (unless `--dry-run`): their next commit would
overwrite the new offsets.
"""

from __future__ import annotations

import datetime
import json
from typing import Annotated, Any

import typer

from broker.errors import BrokerError
from cli import share_groups
from cli.common import JsonFlag, fail, headed_console, now_ms, open_admin, show
from client import AdminClient
from client.types import TopicPartition

groups_app = typer.Typer(
    help="List, describe (with lag), reset the offsets of and delete consumer groups; configure "
    "and describe share groups.",
    no_args_is_help=True,
)

# States in which a group has no members: its offsets may be reset.
_INACTIVE_STATES = ("Empty", "Dead")


@groups_app.command("list")
def groups_list(as_json: JsonFlag = False) -> None:
    """List consumer groups and their states."""
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
    from broker.consumer_groups.assignors import Assignment

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
    topic: Annotated[str, typer.Option("--topic", "-t", help="Reset every partition of TOPIC.")],
    to_earliest: Annotated[bool, typer.Option("--to-earliest", help="The oldest record.")] = False,
    to_latest: Annotated[bool, typer.Option("--to-latest", help="The log end.")] = False,
    to_offset: Annotated[
        int | None, typer.Option("--to-offset", min=0, help="This offset (clamped to the log).")
    ] = None,
    to_datetime: Annotated[
        str | None,
        typer.Option(
            "--to-datetime", help="The first record at or after an ISO time (UTC if naive)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the new offsets only.")] = False,
) -> None:
    """Set GROUP's committed offsets for TOPIC. Refused while the group has members."""
    chosen = [to_earliest, to_latest, to_offset is not None, to_datetime is not None]
    if sum(chosen) != 1:
        raise typer.BadParameter(
            "give exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime"
        )
    timestamp_ms = _parse_datetime_ms(to_datetime) if to_datetime is not None else None
    with open_admin() as admin:
        state = _group_state(admin, group)
        if state not in _INACTIVE_STATES and not dry_run:
            fail(
                f"group {group!r} is active (state {state}); stop its consumers and wait for "
                "their session timeout before resetting its offsets"
            )
        count = admin.describe_topic(topic).partition_count
        partitions = [TopicPartition(topic, p) for p in range(count)]
        earliest = admin.list_offsets(partitions, -2)
        latest = admin.list_offsets(partitions, -1)
        if to_earliest:
            target = dict(earliest)
        elif to_latest:
            target = dict(latest)
        elif to_offset is not None:
            target = {tp: min(max(to_offset, earliest[tp]), latest[tp]) for tp in partitions}
        else:
            assert timestamp_ms is not None
            found = admin.list_offsets(partitions, timestamp_ms)
            target = {tp: latest[tp] if found[tp] < 0 else found[tp] for tp in partitions}
        if not dry_run:
            admin.alter_group_offsets(group, target)
    for tp, offset in sorted(target.items()):
        typer.echo(f"{tp.topic}\t{tp.partition}\t{offset}")
    verb = "would reset" if dry_run else "reset"
    typer.echo(f"{verb} {len(target)} partition(s) of {topic!r} for group {group!r}", err=True)


def _group_state(admin: AdminClient, group: str) -> str:
    # A group the coordinator does not know has no members, like a dead one.
    try:
        return str(admin.describe_group(group).state)
    except BrokerError as exc:
        if exc.code.name == "GROUP_ID_NOT_FOUND":
            return "Dead"
        raise


def _parse_datetime_ms(text: str) -> int:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO date-time (e.g. 2026-01-31T12:00:00)",
            param_hint="--to-datetime",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


@groups_app.command("delete")
def groups_delete(group: str) -> None:
    """Delete an empty group and its committed offsets."""
    with open_admin() as admin:
        admin.delete_group(group)
    typer.echo(f"deleted group {group!r}", err=True)
