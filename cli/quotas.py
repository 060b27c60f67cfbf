"""`broker-cli quotas`: set, list and remove client quotas (Kafka's kafka-configs for users and
client ids; docs/security.md, "Quotas").

    broker-cli quotas set --user alice --producer-byte-rate 1048576
    broker-cli quotas set --user-default --request-rate 100
    broker-cli quotas set --client-id batch-loader --consumer-byte-rate 10485760
    broker-cli quotas list [--user alice] [--client-id C]
    broker-cli quotas remove --user alice [--key producer_byte_rate]

An entity is a user, a client id, or both; `--user-default` / `--client-id-default` name the
default entity (`<default>`), whose quota every user / client id without its own gets, each with
its own budget.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import JsonFlag, fail, open_admin

quotas_app = typer.Typer(
    help="Set, list and remove produce/fetch byte-rate and request-rate quotas per user or "
    "client id.",
    no_args_is_help=True,
)

DEFAULT = "<default>"
KEYS = ("producer_byte_rate", "consumer_byte_rate", "request_rate")

UserOption = Annotated[str | None, typer.Option("--user", help="A user (principal User:NAME).")]
UserDefaultOption = Annotated[bool, typer.Option("--user-default", help="The default user entity.")]
ClientOption = Annotated[str | None, typer.Option("--client-id", help="A client id.")]
ClientDefaultOption = Annotated[
    bool, typer.Option("--client-id-default", help="The default client id entity.")
]


def _entity(
    user: str | None, user_default: bool, client_id: str | None, client_id_default: bool
) -> tuple[str | None, str | None]:
    if user is not None and user_default:
        fail("give --user NAME or --user-default, not both")
    if client_id is not None and client_id_default:
        fail("give --client-id ID or --client-id-default, not both")
    return (DEFAULT if user_default else user, DEFAULT if client_id_default else client_id)


def _required_entity(*options: object) -> tuple[str | None, str | None]:
    entity = _entity(*options)  # type: ignore[arg-type]
    if entity == (None, None):
        fail("name the entity: --user NAME, --user-default, --client-id ID or --client-id-default")
    return entity


@quotas_app.command("set")
def quotas_set(
    user: UserOption = None,
    user_default: UserDefaultOption = False,
    client_id: ClientOption = None,
    client_id_default: ClientDefaultOption = False,
    producer_byte_rate: Annotated[
        int | None, typer.Option("--producer-byte-rate", min=1, help="Produce bytes per second.")
    ] = None,
    consumer_byte_rate: Annotated[
        int | None, typer.Option("--consumer-byte-rate", min=1, help="Fetch bytes per second.")
    ] = None,
    request_rate: Annotated[
        int | None, typer.Option("--request-rate", min=1, help="Requests per second.")
    ] = None,
) -> None:
    """Set quotas of a user, a client id, or a user's client id."""
    entity_user, entity_client = _required_entity(user, user_default, client_id, client_id_default)
    values = {
        key: value
        for key, value in zip(
            KEYS, (producer_byte_rate, consumer_byte_rate, request_rate), strict=True
        )
        if value is not None
    }
    if not values:
        fail("give a quota: --producer-byte-rate, --consumer-byte-rate or --request-rate")
    with open_admin() as admin:
        admin.alter_client_quotas(user=entity_user, client_id=entity_client, values=values)
    typer.echo(f"set {values} for {_describe(entity_user, entity_client)}", err=True)


@quotas_app.command("list")
def quotas_list(
    user: UserOption = None,
    user_default: UserDefaultOption = False,
    client_id: ClientOption = None,
    client_id_default: ClientDefaultOption = False,
    as_json: JsonFlag = False,
) -> None:
    """List quotas (all of them, or those of the named user / client id)."""
    entity_user, entity_client = _entity(user, user_default, client_id, client_id_default)
    with open_admin() as admin:
        entries = admin.describe_client_quotas(user=entity_user, client_id=entity_client)
    if as_json:
        rows = [
            {"user": e.entity.user, "client_id": e.entity.client_id, **e.values} for e in entries
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for entry in entries:
        values = " ".join(f"{key}={value}" for key, value in sorted(entry.values.items()))
        typer.echo(f"{_describe(entry.entity.user, entry.entity.client_id)}: {values}")


@quotas_app.command("remove")
def quotas_remove(
    user: UserOption = None,
    user_default: UserDefaultOption = False,
    client_id: ClientOption = None,
    client_id_default: ClientDefaultOption = False,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help=f"A quota to remove (repeatable; default all): {KEYS}."),
    ] = None,
) -> None:
    """Remove quotas of an entity (all of them, or the --key ones)."""
    entity_user, entity_client = _required_entity(user, user_default, client_id, client_id_default)
    with open_admin() as admin:
        admin.alter_client_quotas(user=entity_user, client_id=entity_client, remove=key or KEYS)
    typer.echo(f"removed {list(key or KEYS)} of {_describe(entity_user, entity_client)}", err=True)


def _describe(user: str | None, client_id: str | None) -> str:
    parts = [f"user={user}"] if user is not None else []
    parts += [f"client-id={client_id}"] if client_id is not None else []
    return " ".join(parts)
