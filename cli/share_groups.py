"""Everything `broker-cli` does with share groups (queues): `groups configure`, the share group
view of `groups describe`, and the reader behind `consume --share-group`.

Rules: this module adds no typer app of its own. `groups.py` registers `groups configure` and
asks `share_group_or_none()` first in `groups describe`; `consume.py` opens `open_share_reader()`.
It imports only `common.py` and `records.py`, which import no command module: no cycles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer

from broker.share_groups.share_config import (
    AUTO_OFFSET_RESET,
    DEAD_LETTER_TOPIC,
    DELIVERY_COUNT_LIMIT,
    GROUP_CONFIG_NAMES,
    LOCK_DURATION,
    RELEASE_DELAY_MAX,
)
from cli.common import JsonFlag, bootstrap, client_options, headed_console, open_admin
from cli.records import CONSUME_POLL_MS, FormatKind, Reader, RecordFormat
from client import AdminClient, ShareConsumer
from client.types import ShareGroupDescription, ShareRecord
from wire.error_codes import BrokerError, ErrorCode


class AutoOffsetReset(enum.StrEnum):
    """`groups configure --auto-offset-reset` choices: where a new share partition starts."""

    earliest = "earliest"
    latest = "latest"


# `groups configure --reset NAME` takes a config's name or its option's name.
_SHARE_CONFIG_ALIASES = {
    "delivery-limit": DELIVERY_COUNT_LIMIT,
    "lock-duration-ms": LOCK_DURATION,
    "dead-letter-topic": DEAD_LETTER_TOPIC,
    "auto-offset-reset": AUTO_OFFSET_RESET,
    "release-delay-max-ms": RELEASE_DELAY_MAX,
}

# What a broker answers for a group that is no share group (or if it has no share groups at
# all: an unknown API, an unknown coordinator key type): describe it as a consumer group.
_NOT_A_SHARE_GROUP = (
    ErrorCode.GROUP_ID_NOT_FOUND,
    ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.INVALID_REQUEST,
)


# --- groups configure -----------------------------------------------------------------------------


def groups_configure(
    group: str,
    delivery_limit: Annotated[
        int | None,
        typer.Option(
            "--delivery-limit",
            min=1,
            help="Deliveries before a record is archived (share.delivery.count.limit).",
        ),
    ] = None,
    lock_duration_ms: Annotated[
        int | None,
        typer.Option(
            "--lock-duration-ms",
            min=1,
            help="How long a member holds a record it got (share.record.lock.duration.ms).",
        ),
    ] = None,
    dead_letter_topic: Annotated[
        str | None,
        typer.Option(
            "--dead-letter-topic",
            help="Where records archived by failure are written ('' for none).",
        ),
    ] = None,
    auto_offset_reset: Annotated[
        AutoOffsetReset | None,
        typer.Option("--auto-offset-reset", help="Where a new share partition starts."),
    ] = None,
    release_delay_max_ms: Annotated[
        int | None,
        typer.Option(
            "--release-delay-max-ms", min=0, help="The longest release delay a consumer may ask."
        ),
    ] = None,
    reset: Annotated[
        list[str] | None,
        typer.Option(
            "--reset",
            help="Return NAME (a config name, or an option name such as delivery-limit) to the "
            "broker default; repeatable.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Set a share group's configs and print its effective configs (one bad value: nothing
    changes)."""
    settings = {
        DELIVERY_COUNT_LIMIT: delivery_limit,
        LOCK_DURATION: lock_duration_ms,
        DEAD_LETTER_TOPIC: dead_letter_topic,
        AUTO_OFFSET_RESET: auto_offset_reset.value if auto_offset_reset is not None else None,
        RELEASE_DELAY_MAX: release_delay_max_ms,
    }
    configs = {name: value for name, value in settings.items() if value is not None}
    resets = [_share_config_name(name) for name in reset or []]
    if not configs and not resets:
        raise typer.BadParameter("give at least one setting, or --reset NAME")
    both = sorted(set(configs) & set(resets))
    if both:
        raise typer.BadParameter(f"{', '.join(both)}: set and reset at once", param_hint="--reset")
    with open_admin() as admin:
        effective = admin.alter_group_config(group, configs, resets)
    if as_json:
        typer.echo(json.dumps(effective, indent=2, sort_keys=True))
    else:
        for key, value in sorted(effective.items()):
            typer.echo(f"{key} = {value}")
    typer.echo(f"configured share group {group!r}", err=True)


def _share_config_name(name: str) -> str:
    if name in GROUP_CONFIG_NAMES:
        return name
    if name in _SHARE_CONFIG_ALIASES:
        return _SHARE_CONFIG_ALIASES[name]
    known = ", ".join([*GROUP_CONFIG_NAMES, *_SHARE_CONFIG_ALIASES])
    raise typer.BadParameter(
        f"unknown share group config {name!r}; known: {known}", param_hint="--reset"
    )


# --- groups describe ------------------------------------------------------------------------------


def share_group_or_none(admin: AdminClient, group: str) -> ShareGroupDescription | None:
    """GROUP's share group description, or None if GROUP is not a share group (then it is
    described as a consumer group). Any other broker error is raised."""
    try:
        return admin.describe_share_group(group)
    except BrokerError as exc:
        if exc.code in _NOT_A_SHARE_GROUP:
            return None
        raise


def share_group_dict(description: ShareGroupDescription, *, now_ms: int) -> dict[str, Any]:
    """The `groups describe --json` object of a share group; ages are measured at `now_ms`."""
    partitions = [
        {
            **dataclasses.asdict(p),
            "backlog": p.backlog if p.backlog >= 0 else None,
            "oldest_available_age_ms": (
                max(now_ms - p.oldest_available_ms, 0) if p.oldest_available_ms >= 0 else None
            ),
        }
        for p in description.partitions
    ]
    return {
        "group": description.group_id,
        "type": "share",
        "state": description.state,
        "members": [dataclasses.asdict(m) for m in description.members],
        "partitions": partitions,
        "dead_letter_writes": description.dead_letter_writes,
        "configs": dict(description.configs),
    }


def print_share_group(data: dict[str, Any]) -> None:
    """`share_group_dict()` for people: a heading line, a partition table, members, configs."""
    from rich.table import Table

    console = headed_console(
        f"[bold]{data['group']}[/]  type=share  state={data['state']}  "
        f"members={len(data['members'])}  dead-letter writes={data['dead_letter_writes']}"
    )
    # Seven columns, to fit 80 characters: dead-lettered and redelivered counts are in --json,
    # the DLQ writes in the heading line.
    table = Table(
        "partition", "in flight", "available", "acquired", "archived", "backlog", "oldest",
        caption="oldest: age of the oldest available record",
    )  # fmt: skip
    for p in data["partitions"]:
        age = p["oldest_available_age_ms"]
        table.add_row(
            f"{p['topic']}/{p['partition']}",
            *(str(p[k]) for k in ("in_flight", "available", "acquired", "archived_total")),
            "-" if p["backlog"] is None else str(p["backlog"]),
            "-" if age is None else f"{age / 1000:.1f} s",
        )
    console.print(table)
    for m in data["members"]:
        topics = ",".join(m["topics"]) or "-"
        console.print(
            f"  {m['member_id']} {m['client_id']}@{m['client_host']}: topics={topics}  "
            f"acquired={m['acquired_records']}"
        )
    for key, value in sorted(data["configs"].items()):
        console.print(f"  {key} = {value}")


# --- consume --share-group ------------------------------------------------------------------------


@contextlib.contextmanager
def open_share_reader(topic: str, share_group: str) -> Iterator[Reader]:
    """`consume --share-group`'s reader: a member of SHARE_GROUP that accepts each record once
    it is printed, and releases what it got past `--max-messages` to the other members."""
    # Explicit mode, accepting each record once printed: implicit mode would also accept, at
    # close, the records of a poll that Ctrl-C interrupted before they were printed. Records
    # left unacknowledged are released when the consumer leaves the group.
    with ShareConsumer(
        bootstrap(), group_id=share_group, acknowledgement_mode="explicit", **client_options()
    ) as consumer:
        consumer.subscribe([topic])

        def poll(wanted: int | None) -> list[ShareRecord]:
            records = consumer.poll(timeout_ms=CONSUME_POLL_MS, max_records=wanted)
            if wanted is None or len(records) <= wanted:
                return records
            for extra in records[wanted:]:  # past --max-messages: another member's to take
                consumer.acknowledge(extra, "release")
            return records[:wanted]

        def printed(records: Sequence[ShareRecord]) -> None:
            # Sent with the next poll, or at close.
            for record in records:
                consumer.acknowledge(record, "accept")

        yield Reader(poll, printed, share_record_line)


def share_record_line(record: ShareRecord, fmt: RecordFormat) -> str:
    """A share group's record also shows its delivery count: a `delivery_count` field in JSON,
    a `Delivery:N<TAB>` prefix in the value format (like Kafka's console share consumer); a
    template prints what it names."""
    if fmt.kind is FormatKind.value:
        return f"Delivery:{record.delivery_count}\t{fmt.line(record)}"
    return fmt.line(record, delivery_count=record.delivery_count)
