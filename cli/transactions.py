"""`broker-cli transactions`: list the transactional ids and describe one transaction.

`list` asks every broker (each coordinates its own transactional ids); `describe` shows the age
of an open transaction, measured on this machine's clock.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.common import JsonFlag, now_ms, open_admin, show

transactions_app = typer.Typer(
    help="List and describe transactions (transactional producers).", no_args_is_help=True
)


@transactions_app.command("list")
def transactions_list(
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help="Only this state (Ongoing, PrepareCommit...); repeatable."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List transactional ids with their producer id and state (every broker is asked; with
    ACLs on: the ids you may describe)."""
    with open_admin() as admin:
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
def transactions_describe(transactional_id: str, as_json: JsonFlag = False) -> None:
    """Show a transaction's state, producer id and epoch, timeout, age and partitions."""
    with open_admin() as admin:
        (description,) = admin.describe_transactions([transactional_id])
    data = _transaction_dict(description, now_ms=now_ms())
    show(data, as_json=as_json, printer=_print_transaction)


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


def _print_transaction(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("field", "value")
    for key in ("transactional_id", "state", "producer_id", "producer_epoch", "timeout_ms"):
        table.add_row(key.replace("_", " "), str(data[key]))
    age = data["age_ms"]
    table.add_row("age", "-" if age is None else f"{age / 1000:.1f} s")
    table.add_row("partitions", ", ".join(data["partitions"]) or "-")
    Console().print(table)
