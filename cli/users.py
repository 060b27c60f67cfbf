"""`broker-cli users`: create, list and delete the users of a broker with `--auth scram`.

A user is a SCRAM credential (salt, iterations, StoredKey, ServerKey) derived here from the
password, which is read from a hidden prompt (asked twice) or, with `--password-stdin`, from the
first line of stdin; never from argv, which every local user can read. Only the credential is
sent to the broker. Managing users needs a super-user login (`--user admin`).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cli.common import JsonFlag, fail, open_admin
from wire.scram import ITERATIONS_DEFAULT, ITERATIONS_MAX, ITERATIONS_MIN, ScramMechanism

users_app = typer.Typer(help="Create, list and delete users (SASL SCRAM).", no_args_is_help=True)

MECHANISM_CHOICES = ", ".join(m.value for m in ScramMechanism)


@users_app.command("create")
def users_create(
    name: str,
    mechanism: Annotated[
        str, typer.Option(help=f"SCRAM mechanism: {MECHANISM_CHOICES}")
    ] = ScramMechanism.SCRAM_SHA_256.value,
    iterations: Annotated[
        int,
        typer.Option(
            min=ITERATIONS_MIN,
            max=ITERATIONS_MAX,
            help="PBKDF2 iterations (more: slower to brute-force, slower to log in)",
        ),
    ] = ITERATIONS_DEFAULT,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin's first line.")
    ] = False,
) -> None:
    """Create user NAME (or set a new password for it) for one SCRAM mechanism."""
    try:
        ScramMechanism.parse(mechanism)
    except ValueError as exc:
        fail(str(exc))
    password = _read_password(name, from_stdin=password_stdin)
    with open_admin() as admin:
        admin.upsert_user(name, password, mechanism=mechanism, iterations=iterations)
    typer.echo(f"user {name!r}: {mechanism.upper()} credential set", err=True)


@users_app.command("list")
def users_list(as_json: JsonFlag = False) -> None:
    """List the users and their SCRAM mechanisms (never keys or salts)."""
    with open_admin() as admin:
        users = admin.describe_users()
    rows = [
        {"name": name, "mechanisms": [{"mechanism": m, "iterations": i} for m, i in creds]}
        for name, creds in sorted(users.items())
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        mechanisms = ", ".join(f"{m['mechanism']} ({m['iterations']})" for m in row["mechanisms"])
        typer.echo(f"{row['name']}\t{mechanisms}")


@users_app.command("delete")
def users_delete(
    name: str,
    mechanism: Annotated[
        str | None,
        typer.Option(help=f"Only this mechanism's credential ({MECHANISM_CHOICES}); default: all"),
    ] = None,
) -> None:
    """Delete user NAME (its connections already open stay open until they close)."""
    with open_admin() as admin:
        admin.delete_user(name, mechanism=mechanism.upper() if mechanism else None)
    typer.echo(f"user {name!r} deleted", err=True)


def _read_password(name: str, *, from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt(
            f"password for {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        fail("no terminal to ask the password on: pipe it in with --password-stdin")
    if not password:
        fail("the password must not be empty")
    return str(password)
