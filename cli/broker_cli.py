"""`broker-cli`: topics, consumer and share groups, transactions, users, produce and consume
from the shell, on the blocking SDK. This module is the entry point (`cli.broker_cli:app`): the
root app, its global options (`--bootstrap`; `--wait-timeout`, how long a command waits for a
cluster that is still starting, cli/cluster_wait.py; `--user`, the SASL login, password from
BROKER_PASSWORD or a prompt; `--version`), and the wiring of the commands, each group in its own
module.

Rules: every command exits 0 on success and 1 with one line `error: <reason>` on stderr on a
failure the user can act on (no traceback); typer itself exits 2 on bad arguments. Data goes to
stdout, progress and summaries to stderr, so `consume ... > file` captures records only.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.acls import acls_app
from cli.cluster import cluster_app
from cli.cluster_wait import WAIT_TIMEOUT_S_DEFAULT
from cli.common import PASSWORD_ENV, set_global_options
from cli.consume import consume
from cli.groups import groups_app
from cli.partitions import partitions_app, rebalance
from cli.produce import produce
from cli.quotas import quotas_app
from cli.topics import topics_app
from cli.transactions import transactions_app
from cli.users import users_app
from cli.version import version_flag
from client._bootstrap import BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP
from client.security import SecurityOptions

# `--wait-timeout` from the environment: scripts set it once for every command they run.
WAIT_TIMEOUT_ENV = "BROKER_WAIT_TIMEOUT"

app = typer.Typer(
    name="broker-cli",
    help="Administer topics and produce/consume records on a pybroker broker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# `--help` lists the commands in this order: produce and consume first, then the groups.
app.command("produce")(produce)
app.command("consume")(consume)
app.add_typer(topics_app, name="topics")
app.add_typer(groups_app, name="groups")
app.add_typer(transactions_app, name="transactions")
app.add_typer(cluster_app, name="cluster")
app.add_typer(partitions_app, name="partitions")
app.add_typer(users_app, name="users")
cluster_app.command("rebalance")(rebalance)
app.add_typer(acls_app, name="acls")
app.add_typer(quotas_app, name="quotas")


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
    wait_timeout: Annotated[
        float,
        typer.Option(
            "--wait-timeout",
            envvar=WAIT_TIMEOUT_ENV,
            min=0,
            help="Seconds a command waits for the cluster to be ready (a broker answers, the "
            "controller has a leader, the brokers have registered) before it gives up; 0: do "
            "not wait.",
        ),
    ] = WAIT_TIMEOUT_S_DEFAULT,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            help="Log in as this user (SASL SCRAM; a broker with --auth scram); the password is "
            f"read from {PASSWORD_ENV} or a prompt.",
        ),
    ] = None,
    sasl_mechanism: Annotated[
        str, typer.Option("--sasl-mechanism", help="SCRAM-SHA-256 or SCRAM-SHA-512 (with --user).")
    ] = "SCRAM-SHA-256",
    security_protocol: Annotated[
        str | None,
        typer.Option(
            envvar="BROKER_SECURITY_PROTOCOL",
            help="PLAINTEXT or SSL (default SSL when an --ssl-* file is given, else PLAINTEXT).",
        ),
    ] = None,
    ssl_cafile: Annotated[
        str | None, typer.Option(envvar="BROKER_SSL_CAFILE", help="PEM CA of the brokers' certs.")
    ] = None,
    ssl_certfile: Annotated[
        str | None, typer.Option(help="PEM client certificate (brokers requiring mTLS).")
    ] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="PEM key of --ssl-certfile.")] = None,
    ssl_check_hostname: Annotated[
        bool, typer.Option(help="Check the broker's certificate names the host connected to.")
    ] = True,
    version: Annotated[bool, version_flag("broker-cli")] = False,
) -> None:
    # Only what was asked for: a plain command builds its clients exactly as before.
    security = SecurityOptions()
    for name, path in (
        ("ssl_cafile", ssl_cafile),
        ("ssl_certfile", ssl_certfile),
        ("ssl_keyfile", ssl_keyfile),
    ):
        if path:
            security[name] = path  # type: ignore[literal-required]
    if security_protocol or security:
        security["security_protocol"] = security_protocol or "SSL"
    if not ssl_check_hostname:
        security["ssl_check_hostname"] = False
    set_global_options(
        bootstrap=bootstrap,
        wait_timeout_s=wait_timeout,
        security=security,
        user=user,
        sasl_mechanism=sasl_mechanism,
    )


if __name__ == "__main__":
    app()
