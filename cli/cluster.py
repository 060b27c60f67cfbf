"""`broker-cli cluster status`: the brokers, the controller leader and the partitions that need
attention (offline, under-replicated, not led by their preferred leader); `broker-cli cluster
decommission N`: move everything off broker N and remove it, showing progress.

The status is one dict, printed as JSON or as a table with a summary line above it.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from cli.common import JsonFlag, fail, headed_console, open_admin, show

# Between two looks at the cluster status while a decommission runs.
DECOMMISSION_POLL_S = 0.5

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


@cluster_app.command("decommission")
def cluster_decommission(
    node_id: Annotated[int, typer.Argument(help="The broker to remove from the cluster")],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the progress until it is gone")
    ] = True,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to follow it before giving up")
    ] = 3600.0,
) -> None:
    """Move every replica (and the controller vote) off broker NODE_ID, then remove it. The
    controller does the work; this follows it in the cluster status until the broker is gone."""
    with open_admin() as admin:
        admin.decommission_broker(node_id)
        typer.echo(f"broker {node_id}: decommissioning", err=True)
        if not wait:
            return
        gone = _follow_decommission(admin, node_id, time.monotonic() + timeout_s)
    if not gone:
        fail(f"broker {node_id} still hosts replicas after {timeout_s:.0f} s; it keeps moving")
    typer.echo(f"broker {node_id}: removed from the cluster; stop its process", err=True)


def _follow_decommission(admin: Any, node_id: int, deadline: float) -> bool:
    """Show the replicas left on `node_id` (a rich progress bar on a terminal) until it is no
    longer registered; False at `deadline`."""
    from rich.progress import BarColumn, Progress, TextColumn

    first = _replicas_on(admin.cluster_status(), node_id)
    with Progress(
        TextColumn(f"broker {node_id}: moving replicas"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} moved"),
        transient=True,
    ) as bar:
        task = bar.add_task("moving", total=max(first or 0, 1))
        while time.monotonic() < deadline:
            left = _replicas_on(admin.cluster_status(), node_id)
            if left is None:
                bar.update(task, completed=max(first or 0, 1))
                return True
            bar.update(task, completed=max((first or 0) - left, 0))
            time.sleep(DECOMMISSION_POLL_S)
    return False


def _replicas_on(status: Any, node_id: int) -> int | None:
    """Replicas the status counts on `node_id`; None once it is no longer registered."""
    for broker in status.brokers:
        if broker.node_id == node_id:
            return int(broker.replica_count)
    return None


def _status_dict(status: Any) -> dict[str, Any]:
    return {
        "controller": status.controller_id if status.controller_id >= 0 else None,
        "controller_voters": list(status.controller_voters),
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
        f"metadata index={data['metadata_index']}  "
        f"controller voters={','.join(map(str, data['controller_voters'])) or '-'}"
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
