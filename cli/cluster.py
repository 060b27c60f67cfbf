"""`broker-cli cluster status`: the brokers, the controller leader and the partitions that need
attention (offline, under-replicated, not led by their preferred leader).

The status is one dict, printed as JSON or as a table with a summary line above it.
"""

from __future__ import annotations

from typing import Any

import typer

from cli.common import JsonFlag, headed_console, open_admin, show

cluster_app = typer.Typer(
    help="Show the cluster's brokers and partition health.", no_args_is_help=True
)


@cluster_app.command("status")
def cluster_status(as_json: JsonFlag = False) -> None:
    """Show the brokers (state, epoch, replicas and leaders), the controller leader, and the
    offline and under-replicated partitions."""
    with open_admin() as admin:
        status = admin.cluster_status()
    show(_status_dict(status), as_json=as_json, printer=_print_status)


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
    from rich.table import Table

    controller = data["controller"] if data["controller"] is not None else "none"
    console = headed_console(
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
