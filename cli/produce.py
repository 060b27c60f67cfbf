"""`broker-cli produce`: send stdin to a topic, one record per line.

Rules: the command exits 0 only once every record is acknowledged (the first delivery failure
is reported as the error); with a terminal on stderr it shows a live count while it sends.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cli.common import bootstrap, errors, progress
from client import Producer
from client.types import RecordMetadata


def produce(
    topic: str,
    key_separator: Annotated[
        str | None,
        typer.Option(
            "--key-separator", help="Split each line at the first SEP into key and value."
        ),
    ] = None,
    acks: Annotated[str, typer.Option(help="all, 1 or 0.")] = "all",
    partition: Annotated[int | None, typer.Option(help="Send every record here.")] = None,
) -> None:
    """Send stdin to TOPIC, one record per line."""
    if key_separator == "":
        raise typer.BadParameter("must not be empty", param_hint="--key-separator")
    failures: list[BaseException] = []

    def on_delivery(metadata: RecordMetadata | None, error: BaseException | None) -> None:
        if error is not None:
            failures.append(error)

    count = 0
    with errors(), Producer(bootstrap(), acks=acks) as producer:
        with progress("produced") as advance:
            for line in sys.stdin.buffer:
                value = line.rstrip(b"\r\n")
                key = None
                if key_separator is not None:
                    raw_key, sep, rest = value.partition(key_separator.encode())
                    if sep:
                        key, value = raw_key, rest
                producer.send(topic, value, key=key, partition=partition, callback=on_delivery)
                count += 1
                advance(1)
            producer.flush()
        if failures:
            raise failures[0]
    typer.echo(f"produced {count} record(s) to {topic!r}", err=True)
