"""`broker-cli`: topics, consumer groups, transactions, produce and consume from the shell, on the
blocking SDK.

Rules: every command exits 0 on success and 1 with one line `error: <reason>` on stderr on a
failure the user can act on (no traceback); typer itself exits 2 on bad arguments. Data goes to
stdout, progress and summaries to stderr, so `consume ... > file` captures records only.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import enum
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
from client.types import ConsumerRecord, RecordMetadata, TopicPartition

app = typer.Typer(
    name="broker-cli",
    help="Administer topics and produce/consume records on a pybroker broker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Create, list, describe and delete topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
groups_app = typer.Typer(
    help="List, describe (with lag), reset the offsets of and delete consumer groups.",
    no_args_is_help=True,
)
app.add_typer(groups_app, name="groups")
transactions_app = typer.Typer(
    help="List and describe transactions (transactional producers).", no_args_is_help=True
)
app.add_typer(transactions_app, name="transactions")
cluster_app = typer.Typer(
    help="Show the cluster's brokers and partition health.", no_args_is_help=True
)
app.add_typer(cluster_app, name="cluster")


class IsolationLevel(enum.StrEnum):
    """`consume --isolation-level` choices (Kafka's names)."""

    read_uncommitted = "read_uncommitted"
    read_committed = "read_committed"


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
    """Show a topic's partitions (leader, replicas, in-sync replicas, offsets and sizes, the
    figures from each partition's leader) and configs."""
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
            "isr": list(p.isr),
            "error": p.error.name if p.error.name != "NONE" else None,
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
    table = Table(
        "partition",
        "leader",
        "replicas",
        "in-sync",
        "log start",
        "log end",
        "high watermark",
        "bytes",
    )
    for p in data["partition_details"]:
        table.add_row(
            str(p["partition"]),
            str(p["leader"]) if p["leader"] >= 0 else "none",
            _ids(p["replicas"]),
            _ids(p["isr"]),
            *(str(p[k]) for k in ("log_start_offset", "log_end_offset", "high_watermark")),
            str(p["size_bytes"]),
        )
    console.print(table)
    for key, value in sorted(data["configs"].items()):
        console.print(f"  {key} = {value}")


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids)) or "-"


@topics_app.command("delete")
def topics_delete(name: str) -> None:
    """Delete a topic and all its data."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        admin.delete_topic(name)
    typer.echo(f"deleted topic {name!r}", err=True)


# --- cluster --------------------------------------------------------------------------------------


@cluster_app.command("status")
def cluster_status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Show the brokers (state, epoch, replicas and leaders), the controller leader, and the
    offline and under-replicated partitions."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        status = admin.cluster_status()
    data = _status_dict(status)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    _print_status(data)


def _status_dict(status: Any) -> dict[str, Any]:
    return {
        "controller": status.controller_id if status.controller_id >= 0 else None,
        "metadata_index": status.metadata_index,
        "topics": status.topic_count,
        "partitions": status.partition_count,
        "brokers": [
            {
                "node_id": b.node_id,
                "address": f"{b.host}:{b.port}",
                "state": b.state,
                "broker_epoch": b.broker_epoch,
                "replicas": b.replica_count,
                "leaders": b.leader_count,
                "preferred_leaders": b.preferred_leader_count,
            }
            for b in sorted(status.brokers, key=lambda b: b.node_id)
        ],
        "offline_partitions": [f"{r.topic}-{r.partition}" for r in status.offline_partitions],
        "under_replicated_partitions": [
            f"{r.topic}-{r.partition}" for r in status.under_replicated_partitions
        ],
        "preferred_leader_imbalance": status.preferred_leader_imbalance_count,
    }


def _print_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    controller = data["controller"] if data["controller"] is not None else "none"
    console.print(
        f"[bold]controller[/]={controller}  brokers={len(data['brokers'])}  "
        f"topics={data['topics']}  partitions={data['partitions']}  "
        f"metadata index={data['metadata_index']}"
    )
    table = Table("node", "address", "state", "epoch", "replicas", "leaders", "preferred")
    for b in data["brokers"]:
        node = f"{b['node_id']} *" if b["node_id"] == data["controller"] else str(b["node_id"])
        table.add_row(
            node,
            b["address"],
            b["state"],
            str(b["broker_epoch"]),
            str(b["replicas"]),
            str(b["leaders"]),
            str(b["preferred_leaders"]),
        )
    console.print(table)
    console.print("  * controller leader")
    for key, title in (
        ("offline_partitions", "offline partitions"),
        ("under_replicated_partitions", "under-replicated partitions"),
    ):
        names = data[key]
        console.print(f"{title} ({len(names)}): {', '.join(names) if names else 'none'}")
    if data["preferred_leader_imbalance"]:
        console.print(
            f"partitions not led by their preferred leader: {data['preferred_leader_imbalance']}"
        )


# --- groups ---------------------------------------------------------------------------------------

# States in which a group has no members: its offsets may be reset.
_INACTIVE_STATES = ("Empty", "Dead")


@groups_app.command("list")
def groups_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List consumer groups and their states."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
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
def groups_describe(
    group: str, as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False
) -> None:
    """Show a group's state, members, assignment, and per partition the committed offset, the
    log end offset and the lag."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        description = admin.describe_group(group)
    data = _group_dict(description)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    _print_group(data)


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
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
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
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        state = _group_state(admin, group)
        if state not in _INACTIVE_STATES and not dry_run:
            _fail(
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
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        admin.delete_group(group)
    typer.echo(f"deleted group {group!r}", err=True)


# --- transactions ---------------------------------------------------------------------------------


@transactions_app.command("list")
def transactions_list(
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help="Only this state (Ongoing, PrepareCommit...); repeatable."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List transactional ids with their producer id and state (every broker is asked)."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        listed = admin.list_transactions(state or None)
    rows = [
        {"transactional_id": t.transactional_id, "producer_id": t.producer_id, "state": t.state}
        for t in listed
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("transactional id", "producer id", "state")
    for row in rows:
        table.add_row(row["transactional_id"], str(row["producer_id"]), row["state"])
    Console().print(table)


@transactions_app.command("describe")
def transactions_describe(
    transactional_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Show a transaction's state, producer id and epoch, timeout, age and partitions."""
    with _errors(), AdminClient(_state["bootstrap"]) as admin:
        (description,) = admin.describe_transactions([transactional_id])
    data = _transaction_dict(description, now_ms=int(time.time() * 1000))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("field", "value")
    for key in ("transactional_id", "state", "producer_id", "producer_epoch", "timeout_ms"):
        table.add_row(key.replace("_", " "), str(data[key]))
    age = data["age_ms"]
    table.add_row("age", "-" if age is None else f"{age / 1000:.1f} s")
    table.add_row("partitions", ", ".join(data["partitions"]) or "-")
    Console().print(table)


def _transaction_dict(description: Any, *, now_ms: int) -> dict[str, Any]:
    start = description.transaction_start_ms
    return {
        "transactional_id": description.transactional_id,
        "state": description.state,
        "producer_id": description.producer_id,
        "producer_epoch": description.producer_epoch,
        "timeout_ms": description.transaction_timeout_ms,
        "start_ms": start if start >= 0 else None,
        "age_ms": max(now_ms - start, 0) if start >= 0 else None,
        "partitions": [f"{p.topic}-{p.partition}" for p in description.partitions],
    }


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
    isolation_level: Annotated[
        IsolationLevel,
        typer.Option(
            "--isolation-level",
            help="read_committed: only committed transactional records, up to the last "
            "stable offset.",
        ),
    ] = IsolationLevel.read_uncommitted,
) -> None:
    """Print TOPIC's records (all partitions) to stdout, one per line."""
    reset = "earliest" if from_beginning else "latest"
    seen = 0
    with (
        _errors(),
        Consumer(
            _state["bootstrap"], auto_offset_reset=reset, isolation_level=isolation_level.value
        ) as consumer,
    ):
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
