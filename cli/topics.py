"""`broker-cli topics`: create, list, describe, alter and delete topics, add partitions, delete
records.

`describe` builds one dict of the topic's partitions and configs, printed as JSON or as a table
(rich is imported only then, to keep the other commands' start-up fast).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.common import JsonFlag, headed_console, open_admin, parse_configs, show
from client import TopicAlreadyExistsError, TopicPartition

topics_app = typer.Typer(
    help="Create, list, describe, alter and delete topics; add partitions; delete records.",
    no_args_is_help=True,
)


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
    if_not_exists: Annotated[
        bool,
        typer.Option(
            "--if-not-exists", help="Succeed without changes if the topic exists already."
        ),
    ] = False,
) -> None:
    """Create a topic."""
    configs = parse_configs(config or [])
    with open_admin() as admin:
        try:
            admin.create_topic(name, partitions, replication_factor, configs)
        except TopicAlreadyExistsError:
            if not if_not_exists:
                raise
            typer.echo(f"topic {name!r} exists already", err=True)
            return
    typer.echo(f"created topic {name!r} with {partitions} partition(s)", err=True)


@topics_app.command("list")
def topics_list(as_json: JsonFlag = False) -> None:
    """List topic names."""
    with open_admin() as admin:
        names = admin.list_topics()
    if as_json:
        typer.echo(json.dumps(names))
    else:
        for name in names:
            typer.echo(name)


@topics_app.command("describe")
def topics_describe(name: str, as_json: JsonFlag = False) -> None:
    """Show a topic's partitions (leader, replicas, in-sync replicas, offsets and sizes, the
    figures from each partition's leader) and configs."""
    with open_admin() as admin:
        description = admin.describe_topic(name)
    show(_description_dict(description), as_json=as_json, printer=_print_description)


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
    from rich.table import Table

    console = headed_console(
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
    # A partition without replicas (or none in sync) shows "-", not an empty cell.
    return ",".join(map(str, ids)) or "-"


@topics_app.command("alter-config")
def topics_alter_config(
    name: str,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config KEY=VALUE to set (repeatable)."),
    ] = None,
    delete: Annotated[
        list[str] | None,
        typer.Option("--delete", help="Config KEY to return to the broker default (repeatable)."),
    ] = None,
) -> None:
    """Change a topic's configs, e.g. `--set cleanup.policy=compact --delete retention.ms`."""
    configs = parse_configs(set_ or [], option="--set")
    if not configs and not delete:
        raise typer.BadParameter("give at least one --set KEY=VALUE or --delete KEY")
    with open_admin() as admin:
        overrides = admin.alter_topic_configs(name, configs, reset=tuple(delete or ()))
    shown = ", ".join(f"{key}={value}" for key, value in sorted(overrides.items()))
    typer.echo(f"topic {name!r} configs: {shown or 'all defaults'}", err=True)


@topics_app.command("add-partitions")
def topics_add_partitions(
    name: str,
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions",
            "-p",
            min=1,
            help="The new partition count (total, as kafka-topics --alter --partitions).",
        ),
    ],
) -> None:
    """Raise a topic's partition count to --partitions (never lowers it). Producers and
    consumers see the new partitions at their next metadata refresh."""
    with open_admin() as admin:
        before = admin.describe_topic(name).partition_count
        admin.create_partitions(name, partitions)
    typer.echo(f"topic {name!r}: partitions {before} -> {partitions}", err=True)


@topics_app.command("delete-records")
def topics_delete_records(
    name: str,
    partition: Annotated[int, typer.Option("--partition", "-p", min=0, help="Partition.")],
    before: Annotated[
        int,
        typer.Option(
            "--before",
            min=-1,
            help="Delete the records below this offset (-1: below the high watermark).",
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Delete a partition's records below an offset (Kafka's DeleteRecords): its log start
    offset moves there and consumers can no longer read below it."""
    with open_admin() as admin:
        start = admin.delete_records({(name, partition): before})[TopicPartition(name, partition)]
    if as_json:
        typer.echo(json.dumps({"topic": name, "partition": partition, "log_start_offset": start}))
    typer.echo(
        f"{name}-{partition}: records below {start} deleted; log start offset {start}", err=True
    )


@topics_app.command("delete")
def topics_delete(name: str) -> None:
    """Delete a topic and all its data."""
    with open_admin() as admin:
        admin.delete_topic(name)
    typer.echo(f"deleted topic {name!r}", err=True)
