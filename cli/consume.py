"""`broker-cli consume`: print a topic's records to stdout, as a plain consumer (no group: all
partitions or the `--partition`s given, from `--offset`/`--from-timestamp`/`--from-beginning`),
as a member of a consumer group (`--group`, committing what it printed) or of a share group
(`--share-group`, whose reader is share_groups.py).

Rules: the topic is looked up first, so a topic that does not exist is one `error:` line and exit
1, before any consumer starts. Records go to stdout and the final count to stderr, so `consume
... > file` captures records only (with stdout redirected and stderr a terminal, a live count
shows on stderr). Ctrl-C is the normal end of an open-ended consume: it stops and exits 0.
Option names and rules follow kafka-console-consumer (`--partition`, `--offset`, `--group`,
`--from-beginning`, `--isolation-level`) and kcat (`--format` templates).
"""

from __future__ import annotations

import contextlib
import enum
import sys
import time
from collections.abc import Iterator
from typing import Annotated

import typer

from cli.common import bootstrap, client_options, errors, fail, open_admin, progress
from cli.records import (
    CONSUME_POLL_MS,
    PLACEHOLDER_HELP,
    FormatKind,
    Reader,
    RecordFormat,
    print_records,
)
from cli.share_groups import open_share_reader
from client import Consumer, TopicPartition
from wire.error_codes import BrokerError, ErrorCode


class IsolationLevel(enum.StrEnum):
    """`consume --isolation-level` choices (Kafka's names)."""

    read_uncommitted = "read_uncommitted"
    read_committed = "read_committed"


# `--offset` words, as in kafka-console-consumer.
EARLIEST = "earliest"
LATEST = "latest"


def consume(
    topic: str,
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning",
            help="Start at the oldest record, not the end (with --group: where the group has "
            "no committed offset).",
        ),
    ] = False,
    partitions: Annotated[
        list[int] | None,
        typer.Option(
            "--partition",
            "-p",
            min=0,
            help="Read only this partition; repeatable (default: every partition).",
        ),
    ] = None,
    offset: Annotated[
        str | None,
        typer.Option(
            "--offset",
            help="Start each --partition at this offset: N, earliest or latest.",
        ),
    ] = None,
    from_timestamp: Annotated[
        int | None,
        typer.Option(
            "--from-timestamp",
            min=0,
            help="Start at the first record with a timestamp >= MS (epoch milliseconds).",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            "-g",
            help="Read as a member of this consumer group, committing each printed batch.",
        ),
    ] = None,
    max_messages: Annotated[
        int | None, typer.Option("--max-messages", "-n", min=1, help="Stop after N records.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.0, help="Stop after S seconds without a new record."),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="value, json (key, value, headers, partition, offset, timestamp) or a template "
            f"such as '%k=%s %p:%o' ({PLACEHOLDER_HELP}; \\n \\t escapes); default: value.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
    key_separator: Annotated[
        str | None, typer.Option("--key-separator", help="Print KEY<SEP>VALUE.")
    ] = None,
    print_headers: Annotated[
        bool,
        typer.Option(
            "--print-headers",
            help="Prefix each value with its headers, k1:v1,k2:v2 (or NO_HEADERS) and a tab.",
        ),
    ] = False,
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
    """Print TOPIC's records to stdout, one per line."""
    fmt = _record_format(output_format, as_json, key_separator, print_headers)
    start = _start_offset(offset, partitions)
    _check_start(from_beginning=from_beginning, offset=start, from_timestamp=from_timestamp)
    if share_group is not None:
        _check_share_group(
            from_beginning=from_beginning,
            isolation_level=isolation_level,
            group=group,
            partitions=partitions,
            from_timestamp=from_timestamp,
        )
    elif group is not None:
        _check_group(partitions=partitions, from_timestamp=from_timestamp)
    count = _partition_count(topic)
    for partition in partitions or ():
        if partition >= count:
            fail(f"topic {topic!r} has no partition {partition}: its partitions are 0..{count - 1}")
    level = isolation_level or IsolationLevel.read_uncommitted
    if share_group is not None:
        # A share group decides itself where it starts and what it hands out.
        reader = open_share_reader(topic, share_group)
    elif group is not None:
        reader = _open_group_reader(
            topic, group, from_beginning=from_beginning, isolation_level=level
        )
    else:
        wanted = sorted(set(partitions)) if partitions else None
        reader = _open_reader(
            topic,
            wanted,
            count,
            start=EARLIEST if from_beginning else start,
            from_timestamp=from_timestamp,
            isolation_level=level,
        )
    seen = _print_until_done(reader, fmt, max_messages=max_messages, timeout=timeout)
    typer.echo(f"consumed {seen} record(s)", err=True)


def _print_until_done(
    reader: contextlib.AbstractContextManager[Reader],
    fmt: RecordFormat,
    *,
    max_messages: int | None,
    timeout: float | None,
) -> int:
    """Poll and print until `max_messages`, `timeout` seconds without a record, or Ctrl-C;
    returns how many records were printed."""
    seen = 0
    # A live count only when records go somewhere else than the terminal it is drawn on.
    counting = (
        progress("consumed") if not sys.stdout.isatty() else contextlib.nullcontext(_no_count)
    )
    with errors(), reader as read, counting as advance:
        last = time.monotonic()
        # Ctrl-C is the normal way to end an open-ended consume: stop, report, exit 0.
        with contextlib.suppress(KeyboardInterrupt):
            while max_messages is None or seen < max_messages:
                records = read.poll(None if max_messages is None else max_messages - seen)
                if records:
                    last = time.monotonic()
                    print_records(records, read.line, fmt)
                    read.printed(records)
                    seen += len(records)
                    advance(len(records))
                elif timeout is not None and time.monotonic() - last >= timeout:
                    break
    return seen


def _no_count(records: int) -> None:
    """The record counter when there is no live count to advance."""


def _record_format(
    output_format: str | None, as_json: bool, key_separator: str | None, print_headers: bool
) -> RecordFormat:
    if as_json and output_format not in (None, FormatKind.json):
        raise typer.BadParameter(
            f"--json is --format json; it cannot go with --format {output_format!r}",
            param_hint="--json",
        )
    spec = FormatKind.json if as_json else (output_format or FormatKind.value)
    try:
        return RecordFormat.parse(spec, key_separator=key_separator, print_headers=print_headers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from None


def _start_offset(offset: str | None, partitions: list[int] | None) -> int | str | None:
    """`--offset` as an offset or EARLIEST/LATEST; like kafka-console-consumer it needs
    `--partition`: an offset means something only within one partition."""
    if offset is None:
        return None
    if not partitions:
        raise typer.BadParameter(
            "needs --partition: an offset is a position in one partition (for every "
            "partition use --from-beginning or --from-timestamp)",
            param_hint="--offset",
        )
    if offset in (EARLIEST, LATEST):
        return offset
    try:
        value = int(offset)
    except ValueError:
        value = -1
    if value < 0:
        raise typer.BadParameter(
            f"{offset!r} is not an offset: give N >= 0, earliest or latest", param_hint="--offset"
        )
    return value


def _check_start(
    *, from_beginning: bool, offset: int | str | None, from_timestamp: int | None
) -> None:
    given = [
        name
        for name, value in (
            ("--from-beginning", from_beginning),
            ("--offset", offset is not None),
            ("--from-timestamp", from_timestamp is not None),
        )
        if value
    ]
    if len(given) > 1:
        raise typer.BadParameter(
            f"{' and '.join(given)} each say where to start: give one", param_hint=given[0]
        )


def _check_group(*, partitions: list[int] | None, from_timestamp: int | None) -> None:
    # The group's coordinator assigns the partitions and each starts at the group's committed
    # offset; move those with 'broker-cli groups reset-offsets'.
    if partitions:
        raise typer.BadParameter(
            "a group's partitions are assigned by the group, not chosen; drop --partition "
            "(or --group, to read chosen partitions)",
            param_hint="--group",
        )
    if from_timestamp is not None:
        raise typer.BadParameter(
            "a group starts at its committed offsets; move them with 'broker-cli groups "
            "reset-offsets GROUP --topic T --to-datetime ...'",
            param_hint="--from-timestamp",
        )


def _check_share_group(
    *,
    from_beginning: bool,
    isolation_level: IsolationLevel | None,
    group: str | None,
    partitions: list[int] | None,
    from_timestamp: int | None,
) -> None:
    if from_beginning:
        raise typer.BadParameter(
            "a share group starts where its share.auto.offset.reset says; set it with "
            "'broker-cli groups configure GROUP --auto-offset-reset earliest'",
            param_hint="--from-beginning",
        )
    for name, given in (
        ("--isolation-level", isolation_level is not None),
        ("--group", group is not None),
        ("--partition", bool(partitions)),
        ("--from-timestamp", from_timestamp is not None),
    ):
        if given:
            raise typer.BadParameter(
                "does not apply to a share group, which hands out records itself",
                param_hint=name,
            )


def _partition_count(topic: str) -> int:
    """TOPIC's partition count; a topic that does not exist ends the command with one line."""
    with open_admin() as admin:
        try:
            return admin.describe_topic(topic).partition_count
        except BrokerError as exc:
            if exc.code is not ErrorCode.UNKNOWN_TOPIC:
                raise
    fail(
        f"topic {topic!r} does not exist; see 'broker-cli topics list', or create it with "
        f"'broker-cli topics create {topic} --partitions N'"
    )


@contextlib.contextmanager
def _open_reader(
    topic: str,
    partitions: list[int] | None,
    count: int,
    *,
    start: int | str | None,
    from_timestamp: int | None,
    isolation_level: IsolationLevel,
) -> Iterator[Reader]:
    # A consumer without a group: it reads the partitions asked for (default: every one, and
    # those added later) and commits nothing, so consuming from the shell never moves an
    # application's offsets.
    reset = EARLIEST if start == EARLIEST else LATEST
    with Consumer(
        bootstrap(),
        auto_offset_reset=reset,
        isolation_level=isolation_level.value,
        **client_options(),
    ) as consumer:
        if partitions is None and from_timestamp is None:
            consumer.subscribe([topic])
        else:
            tps = [TopicPartition(topic, p) for p in partitions or range(count)]
            consumer.assign(tps)
            _seek(consumer, tps, start=start, from_timestamp=from_timestamp)
        yield Reader(
            poll=lambda wanted: consumer.poll(timeout_ms=CONSUME_POLL_MS, max_records=wanted),
            printed=lambda records: None,
        )


def _seek(
    consumer: Consumer,
    tps: list[TopicPartition],
    *,
    start: int | str | None,
    from_timestamp: int | None,
) -> None:
    """Position assigned partitions; EARLIEST/LATEST/None are the consumer's reset already."""
    if isinstance(start, int):
        # Past the log end the broker answers OFFSET_OUT_OF_RANGE and the consumer resets to
        # the end, as Kafka's console consumer does.
        for tp in tps:
            consumer.seek(tp, start)
    elif from_timestamp is not None:
        found = consumer.offsets_for_times(dict.fromkeys(tps, from_timestamp))
        # -1: no record at or after the time; read what arrives from now on.
        consumer.seek_to_end([tp for tp, at in found.items() if at < 0])
        for tp, at in found.items():
            if at >= 0:
                consumer.seek(tp, at)


@contextlib.contextmanager
def _open_group_reader(
    topic: str, group: str, *, from_beginning: bool, isolation_level: IsolationLevel
) -> Iterator[Reader]:
    # Commits follow what is printed, not a timer: a record counts as consumed by the group
    # once it is on stdout, and `-n N` leaves the group's offset right after the Nth record.
    with Consumer(
        bootstrap(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset=EARLIEST if from_beginning else LATEST,
        isolation_level=isolation_level.value,
        **client_options(),
    ) as consumer:
        consumer.subscribe([topic])
        yield Reader(
            poll=lambda wanted: consumer.poll(timeout_ms=CONSUME_POLL_MS, max_records=wanted),
            printed=lambda records: consumer.commit(),
        )
