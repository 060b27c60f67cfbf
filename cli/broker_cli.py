"""`broker-cli`: topics, produce and consume from the shell, on top of the blocking SDK.

Rules: every command exits 0 on success and 1 with one line `error: <reason>` on stderr on a
failure the user can act on (no traceback); typer itself exits 2 on bad arguments. Data goes to
stdout, progress and summaries to stderr, so `consume ... > file` captures records only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import typer

from broker.config import ConfigError
from broker.errors import BrokerError
from client import AdminClient, Consumer, Producer
from client._bootstrap import BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP
from client.errors import ClientError
from client.types import ConsumerRecord, RecordMetadata

app = typer.Typer(
    name="broker-cli",
    help="Administer topics and produce/consume records on a pybroker broker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Create, list, describe and delete topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")

# How often `consume` wakes up to check --timeout when no records arrive.
CONSUME_POLL_MS = 200
_state: dict[str, str] = {"bootstrap": DEFAULT_BOOTSTRAP}


@app.callback()
def main(
    bootstrap: Annotated[
        str,
        typer.Option(
            "--bootstrap",
            "-b",
            envvar=BOOTSTRAP_ENV,
            help="Broker address(es), HOST:PORT[,HOST:PORT...].",
        ),
    ] = DEFAULT_BOOTSTRAP,
) -> None:
    _state["bootstrap"] = bootstrap


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn expected failures into one line on stderr and exit status 1."""
    try:
        yield
    except BrokerError as exc:
        _fail(f"{exc.code.name}: {exc.message}")
    except (ClientError, ConfigError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted")


def _parse_configs(items: list[str]) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--config")
        configs[key.strip()] = _config_value(value.strip())
    return configs


def _config_value(text: str) -> Any:
    # Numbers travel as ints so the broker's validation sees the intended type.
    with contextlib.suppress(ValueError):
        return int(text.replace("_", ""))
    return text


# --- topics ---------------------------------------------------------------------------------------


@topics_app.command("create")
def topics_create(
    name: str,
    partitions: Annotated[int, typer.Option("--partitions", "-p", min=1, help="Partitions.")] = 1,
    replication_factor: Annotated[
        int, typer.Option("--replication-factor", "-r", min=1, help="Replicas per partition.")
    ] = 1,
    config: Annotated[
        list[str] | None,
        typer.Option("--config", "-c", help="Topic config KEY=VALUE (repeatable)."),
    ] = None,
) -> None:
    """Create a topic."""
    configs = _parse_configs(config or [])
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        admin.create_topic(name, partitions, replication_factor, configs)
    typer.echo(f"created topic {name!r} with {partitions} partition(s)", err=True)


@topics_app.command("list")
def topics_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List topic names."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        names = admin.list_topics()
    if as_json:
        typer.echo(json.dumps(names))
    else:
        for name in names:
            typer.echo(name)


@topics_app.command("describe")
def topics_describe(
    name: str, as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False
) -> None:
    """Show a topic's partitions, offsets, sizes and configs."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        description = admin.describe_topic(name)
    data = _description_dict(description)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    _print_description(data)


def _description_dict(description: Any) -> dict[str, Any]:
    partitions = [
        {
            "partition": p.partition,
            "leader": p.leader_id,
            "replicas": list(p.replicas),
            "log_start_offset": p.log_start_offset,
            "log_end_offset": p.log_end_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
            "segments": p.segment_count,
        }
        for p in description.partitions
    ]
    return {
        "name": description.name,
        "partitions": description.partition_count,
        "replication_factor": description.replication_factor,
        "configs": dict(description.configs),
        "partition_details": partitions,
    }


def _print_description(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{data['name']}[/]  partitions={data['partitions']}  "
        f"replication_factor={data['replication_factor']}"
    )
    table = Table("partition", "leader", "log start", "log end", "high watermark", "bytes")
    for p in data["partition_details"]:
        table.add_row(
            *(str(p[k]) for k in ("partition", "leader", "log_start_offset", "log_end_offset")),
            str(p["high_watermark"]),
            str(p["size_bytes"]),
        )
    console.print(table)
    for key, value in sorted(data["configs"].items()):
        console.print(f"  {key} = {value}")


@topics_app.command("delete")
def topics_delete(name: str) -> None:
    """Delete a topic and all its data."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        admin.delete_topic(name)
    typer.echo(f"deleted topic {name!r}", err=True)


# --- produce / consume ----------------------------------------------------------------------------


@app.command("produce")
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
    with _errors(), Producer(_state["bootstrap"], acks=acks) as producer:
        with _progress("produced") as advance:
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


@app.command("consume")
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
) -> None:
    """Print TOPIC's records (all partitions) to stdout, one per line."""
    reset = "earliest" if from_beginning else "latest"
    seen = 0
    with _errors(), Consumer(_state["bootstrap"], auto_offset_reset=reset) as consumer:
        consumer.subscribe([topic])
        last = time.monotonic()
        # Ctrl-C is the normal way to end an open-ended consume: stop, report, exit 0.
        with contextlib.suppress(KeyboardInterrupt):
            while max_messages is None or seen < max_messages:
                wanted = None if max_messages is None else max_messages - seen
                records = consumer.poll(timeout_ms=CONSUME_POLL_MS, max_records=wanted)
                if records:
                    last = time.monotonic()
                    _print_records(records, as_json=as_json, key_separator=key_separator)
                    seen += len(records)
                elif timeout is not None and time.monotonic() - last >= timeout:
                    break
    typer.echo(f"consumed {seen} record(s)", err=True)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "backslashreplace")


def _json_bytes(data: bytes | None) -> Any:
    # Text stays readable; anything that is not UTF-8 is carried losslessly as base64.
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _print_records(
    records: list[ConsumerRecord], *, as_json: bool, key_separator: str | None
) -> None:
    out = sys.stdout
    for r in records:
        if as_json:
            line = json.dumps(
                {
                    "topic": r.topic,
                    "partition": r.partition,
                    "offset": r.offset,
                    "timestamp": r.timestamp,
                    "key": _json_bytes(r.key),
                    "value": _json_bytes(r.value),
                    "headers": {k: _json_bytes(v) for k, v in r.headers or ()},
                }
            )
        elif key_separator is not None:
            line = f"{_text(r.key) or ''}{key_separator}{_text(r.value) or ''}"
        else:
            line = _text(r.value) or ""
        out.write(line + "\n")
    out.flush()


@contextlib.contextmanager
def _progress(verb: str) -> Iterator[Any]:
    """A live record counter on stderr when it is a terminal; a no-op otherwise."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn(f"{verb} {{task.completed}} records"),
                  transient=True) as progress:  # fmt: skip
        task = progress.add_task(verb, total=None)
        yield lambda n: progress.advance(task, n)


if __name__ == "__main__":
    app()
