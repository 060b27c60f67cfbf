"""`broker-cli consume`: print a topic's records to stdout, as a plain consumer (no group, all
partitions) or as a member of a share group (`--share-group`, whose reader is share_groups.py).

Rules: records go to stdout and the final count to stderr, so `consume ... > file` captures
records only. Ctrl-C is the normal end of an open-ended consume: it stops and exits 0.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Iterator
from typing import Annotated

import typer

from cli.common import bootstrap, errors
from cli.records import CONSUME_POLL_MS, Reader, print_records
from cli.share_groups import open_share_reader
from client import Consumer


class IsolationLevel(enum.StrEnum):
    """`consume --isolation-level` choices (Kafka's names)."""

    read_uncommitted = "read_uncommitted"
    read_committed = "read_committed"


def consume(
    topic: str,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record, not the end.")
    ] = False,
    max_messages: Annotated[
        int | None, typer.Option("--max-messages", "-n", min=1, help="Stop after N records.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.0, help="Stop after S seconds without a new record."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per record.")] = False,
    key_separator: Annotated[
        str | None, typer.Option("--key-separator", help="Print KEY<SEP>VALUE.")
    ] = None,
    isolation_level: Annotated[
        IsolationLevel | None,
        typer.Option(
            "--isolation-level",
            help="read_committed: only committed transactional records, up to the last "
            "stable offset. [default: read_uncommitted]",
            show_default=False,
        ),
    ] = None,
    share_group: Annotated[
        str | None,
        typer.Option(
            "--share-group",
            help="Read as a member of this share group (a queue: each record goes to one "
            "member); each record is accepted once printed, and its delivery count printed.",
        ),
    ] = None,
) -> None:
    """Print TOPIC's records (all partitions) to stdout, one per line."""
    if share_group is not None:
        # A share group decides itself where it starts and what it hands out.
        if from_beginning:
            raise typer.BadParameter(
                "a share group starts where its share.auto.offset.reset says; set it with "
                "'broker-cli groups configure GROUP --auto-offset-reset earliest'",
                param_hint="--from-beginning",
            )
        if isolation_level is not None:
            raise typer.BadParameter(
                "does not apply to a share group", param_hint="--isolation-level"
            )
        reader = open_share_reader(topic, share_group)
    else:
        level = isolation_level or IsolationLevel.read_uncommitted
        reader = _open_reader(topic, from_beginning=from_beginning, isolation_level=level)
    seen = 0
    with errors(), reader as read:
        last = time.monotonic()
        # Ctrl-C is the normal way to end an open-ended consume: stop, report, exit 0.
        with contextlib.suppress(KeyboardInterrupt):
            while max_messages is None or seen < max_messages:
                records = read.poll(None if max_messages is None else max_messages - seen)
                if records:
                    last = time.monotonic()
                    print_records(records, read.line, as_json=as_json, key_separator=key_separator)
                    read.printed(records)
                    seen += len(records)
                elif timeout is not None and time.monotonic() - last >= timeout:
                    break
    typer.echo(f"consumed {seen} record(s)", err=True)


@contextlib.contextmanager
def _open_reader(
    topic: str, *, from_beginning: bool, isolation_level: IsolationLevel
) -> Iterator[Reader]:
    # A consumer without a group: it reads every partition and commits nothing, so consuming
    # from the shell never moves an application's offsets.
    reset = "earliest" if from_beginning else "latest"
    with Consumer(
        bootstrap(), auto_offset_reset=reset, isolation_level=isolation_level.value
    ) as consumer:
        consumer.subscribe([topic])
        yield Reader(
            poll=lambda wanted: consumer.poll(timeout_ms=CONSUME_POLL_MS, max_records=wanted),
            printed=lambda records: None,
        )
