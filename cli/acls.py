"""`broker-cli acls`: add, list and remove ACLs (Kafka's kafka-acls; docs/security.md).

    broker-cli acls add --allow User:alice --operation write --topic orders
    broker-cli acls add --deny User:bob --operation read --topic pay --prefixed
    broker-cli acls list [--principal User:alice] [--topic T | --group G | --cluster | ...]
    broker-cli acls remove --principal User:alice --topic orders

A resource option (`--topic`, `--group`, `--cluster`, `--transactional-id`) names what the ACL
covers; `--prefixed` makes the name a prefix, and the literal name `*` covers every resource of
the type. `list` and `remove` take the same options as filters; what they leave out matches
anything.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import JsonFlag, fail, open_admin
from wire import codec

acls_app = typer.Typer(
    help="Add, list and remove ACLs (who may do what to which topic, group, transactional id "
    "or the cluster).",
    no_args_is_help=True,
)

CLUSTER_NAME = "kafka-cluster"
OPERATIONS = (
    "read, write, create, delete, alter, describe, describe-configs, alter-configs, "
    "cluster-action, idempotent-write, all"
)

TopicOption = Annotated[str | None, typer.Option("--topic", help="A topic (name or prefix).")]
GroupOption = Annotated[
    str | None, typer.Option("--group", help="A consumer or share group (name or prefix).")
]
ClusterOption = Annotated[bool, typer.Option("--cluster", help="The cluster resource.")]
TransactionalIdOption = Annotated[
    str | None,
    typer.Option("--transactional-id", help="A producer's transactional id (name or prefix)."),
]
HostOption = Annotated[
    str | None, typer.Option("--host", help="The client IP address the ACL applies to.")
]


def _resource(
    topic: str | None, group: str | None, cluster: bool, transactional_id: str | None
) -> tuple[str, str] | None:
    """(resource type, name) of the one resource option given, None if none was."""
    given = [
        (kind, name)
        for kind, name in (
            ("topic", topic),
            ("group", group),
            ("cluster", CLUSTER_NAME if cluster else None),
            ("transactional_id", transactional_id),
        )
        if name is not None
    ]
    if len(given) > 1:
        fail("give one of --topic, --group, --cluster, --transactional-id")
    return given[0] if given else None


@acls_app.command("add")
def acls_add(
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Principal to allow, e.g. User:alice (repeatable)."),
    ] = None,
    deny: Annotated[
        list[str] | None,
        typer.Option("--deny", help="Principal to deny (repeatable); a deny beats any allow."),
    ] = None,
    operation: Annotated[
        list[str] | None,
        typer.Option("--operation", "-o", help=f"Operation (repeatable): {OPERATIONS}."),
    ] = None,
    topic: TopicOption = None,
    group: GroupOption = None,
    cluster: ClusterOption = False,
    transactional_id: TransactionalIdOption = None,
    prefixed: Annotated[
        bool, typer.Option("--prefixed", help="The name is a prefix of the resources covered.")
    ] = False,
    host: HostOption = None,
) -> None:
    """Add ACLs: each principal x each operation on the resource."""
    resource = _resource(topic, group, cluster, transactional_id)
    if resource is None:
        fail("name the resource: --topic T, --group G, --cluster or --transactional-id X")
    if not allow and not deny:
        fail("name a principal with --allow User:NAME or --deny User:NAME")
    if not operation:
        fail(f"name an operation with --operation ({OPERATIONS})")
    resource_type, name = resource
    bindings = [
        codec.AclBindingData(
            resource_type=resource_type,
            resource_name=name,
            pattern_type="prefixed" if prefixed else "literal",
            principal=principal,
            host=host or "*",
            operation=op,
            permission=permission,
        )
        for permission, principals in (("allow", allow or []), ("deny", deny or []))
        for principal in principals
        for op in operation
    ]
    with open_admin() as admin:
        admin.create_acls(bindings)
    for binding in bindings:
        typer.echo(f"added: {_line(binding)}", err=True)


def _filter(
    principal: str | None,
    topic: str | None,
    group: str | None,
    cluster: bool,
    transactional_id: str | None,
    pattern_type: str,
    operation: str | None,
    permission: str | None,
    host: str | None,
) -> codec.AclFilterData:
    resource = _resource(topic, group, cluster, transactional_id)
    return codec.AclFilterData(
        resource_type=resource[0] if resource else "any",
        resource_name=resource[1] if resource else None,
        pattern_type=pattern_type,
        principal=principal,
        host=host,
        operation=operation or "any",
        permission=permission or "any",
    )


PrincipalFilter = Annotated[
    str | None, typer.Option("--principal", help="Only ACLs of this principal.")
]
PatternFilter = Annotated[
    str,
    typer.Option(
        "--pattern-type",
        help="any, literal, prefixed, or match (every ACL that applies to the named resource).",
    ),
]
OperationFilter = Annotated[str | None, typer.Option("--operation", help="Only this operation.")]
PermissionFilter = Annotated[
    str | None, typer.Option("--permission", help="Only allow or only deny ACLs.")
]


@acls_app.command("list")
def acls_list(
    principal: PrincipalFilter = None,
    topic: TopicOption = None,
    group: GroupOption = None,
    cluster: ClusterOption = False,
    transactional_id: TransactionalIdOption = None,
    pattern_type: PatternFilter = "any",
    operation: OperationFilter = None,
    permission: PermissionFilter = None,
    host: HostOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List ACLs (all of them, or those the options select)."""
    acl_filter = _filter(
        principal, topic, group, cluster, transactional_id, pattern_type, operation,
        permission, host,
    )  # fmt: skip
    with open_admin() as admin:
        bindings = admin.describe_acls(acl_filter)
    _print(bindings, as_json=as_json)


@acls_app.command("remove")
def acls_remove(
    principal: PrincipalFilter = None,
    topic: TopicOption = None,
    group: GroupOption = None,
    cluster: ClusterOption = False,
    transactional_id: TransactionalIdOption = None,
    pattern_type: PatternFilter = "any",
    operation: OperationFilter = None,
    permission: PermissionFilter = None,
    host: HostOption = None,
    remove_all: Annotated[
        bool, typer.Option("--all", help="Remove every ACL (needed when no filter is given).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove the ACLs the options select, and print them."""
    acl_filter = _filter(
        principal, topic, group, cluster, transactional_id, pattern_type, operation,
        permission, host,
    )  # fmt: skip
    if acl_filter == codec.AclFilterData() and not remove_all:
        fail("name what to remove (--principal, --topic, ...), or pass --all to remove every ACL")
    with open_admin() as admin:
        removed = admin.delete_acls([acl_filter])
    _print(removed, as_json=as_json)
    typer.echo(f"removed {len(removed)} ACL(s)", err=True)


def _line(binding: codec.AclBindingData) -> str:
    pattern = " (prefixed)" if binding.pattern_type == "prefixed" else ""
    return (
        f"{binding.permission.upper()} {binding.principal} host={binding.host} "
        f"{binding.operation.replace('_', '-')} "
        f"{binding.resource_type.replace('_', '-')}:{binding.resource_name}{pattern}"
    )


def _print(bindings: list[codec.AclBindingData], *, as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "principal": b.principal,
                "permission": b.permission,
                "operation": b.operation,
                "resource_type": b.resource_type,
                "resource_name": b.resource_name,
                "pattern_type": b.pattern_type,
                "host": b.host,
            }
            for b in bindings
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for binding in bindings:
        typer.echo(_line(binding))
