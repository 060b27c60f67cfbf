"""`broker-cli produce`: send stdin to a topic, one record per line.

Rules: a line is the record's value (`--key-separator`: KEY<SEP>VALUE), or with `--format json`
one JSON object with key, value, headers, partition and timestamp, the shape `consume --format
json` prints (records.py reads it). `--header` and `--partition` apply to every record; a JSON
line's own partition wins over `--partition`, its headers follow `--header`'s. A bad line ends
the command with one `error:` line naming it, after the lines before it are acknowledged. The
command exits 0 only once every record is acknowledged (the first delivery failure is reported
as the error); with a terminal on stderr it shows a live count while it sends.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Iterator
from typing import Annotated

import typer

from cli.common import bootstrap, client_options, errors, fail, progress
from cli.records import InputRecord, parse_header, parse_json_record
from client import Producer
from client.types import RecordMetadata


class InputFormat(enum.StrEnum):
    """`produce --format` choices: what one line of stdin is."""

    value = "value"
    json = "json"


def produce(
    topic: str,
    key_separator: Annotated[
        str | None,
        typer.Option(
            "--key-separator", help="Split each line at the first SEP into key and value."
        ),
    ] = None,
    acks: Annotated[str, typer.Option(help="all, 1 or 0.")] = "all",
    partition: Annotated[
        int | None,
        typer.Option(
            "--partition",
            "-p",
            min=0,
            help="Send every record to this partition (default: by key, else spread).",
            show_default=False,
        ),
    ] = None,
    headers: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="Add header KEY=VALUE to every record; repeatable."),
    ] = None,
    input_format: Annotated[
        InputFormat,
        typer.Option(
            "--format",
            help="value: each line is a value; json: each line is an object with key, value "
            "(required; null for a tombstone), headers, partition, timestamp.",
        ),
    ] = InputFormat.value,
) -> None:
    """Send stdin to TOPIC, one record per line."""
    if key_separator == "":
        raise typer.BadParameter("must not be empty", param_hint="--key-separator")
    if key_separator is not None and input_format is InputFormat.json:
        raise typer.BadParameter(
            "a JSON line names its key itself; drop --key-separator", param_hint="--key-separator"
        )
    try:
        common_headers = tuple(parse_header(item) for item in headers or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--header") from None
    failures: list[BaseException] = []

    def on_delivery(metadata: RecordMetadata | None, error: BaseException | None) -> None:
        if error is not None:
            failures.append(error)

    count = 0
    bad_line: str | None = None
    lines = (line.rstrip(b"\r\n") for line in sys.stdin.buffer)
    records = (
        _json_records(lines)
        if input_format is InputFormat.json
        else _value_records(lines, key_separator)
    )
    with errors(), Producer(bootstrap(), acks=acks, **client_options()) as producer:
        with progress("produced") as advance:
            try:
                for record in records:
                    producer.send(
                        topic,
                        record.value,
                        key=record.key,
                        headers=common_headers + record.headers,
                        partition=record.partition if record.partition is not None else partition,
                        timestamp_ms=record.timestamp_ms,
                        callback=on_delivery,
                    )
                    count += 1
                    advance(1)
            except _BadLine as exc:
                bad_line = str(exc)
            # What was sent before a bad line is still delivered and reported.
            producer.flush()
        if failures:
            raise failures[0]
    if bad_line is not None:
        fail(f"{bad_line}; the {count} record(s) before it were sent to {topic!r}")
    typer.echo(f"produced {count} record(s) to {topic!r}", err=True)


class _BadLine(Exception):
    """A line of stdin that is not a record: its number and what is wrong with it."""


def _value_records(lines: Iterable[bytes], key_separator: str | None) -> Iterator[InputRecord]:
    separator = key_separator.encode() if key_separator is not None else None
    for value in lines:
        key = None
        if separator is not None:
            raw_key, sep, rest = value.partition(separator)
            if sep:
                key, value = raw_key, rest
        yield InputRecord(value=value, key=key)


def _json_records(lines: Iterable[bytes]) -> Iterator[InputRecord]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # a blank line (the end of a pasted block) is no record
        try:
            yield parse_json_record(line)
        except ValueError as exc:
            raise _BadLine(f"stdin line {number}: {exc}") from None
