"""`broker`: the broker process command line (`broker serve`).

Configuration comes from, in increasing precedence: the defaults of `BrokerConfig`, a TOML file
(`--config`), `--set key=value` options, then the dedicated flags (`--listen`, `--data-dir`,
`--metrics-listen`, `--node-id`, `--peers`, `--controller-voters`, `--bootstrap`, `--listener`,
`--inter-broker-listener`, `--advertised-listener`, `--tls-*`). An invalid value is refused
before anything starts, with the key named and exit status 2 (TLS files are read then too: a
missing file or a key that does not match its certificate is such a value). Once listening,
the broker prints one readiness line to stdout (format in docs/protocol.md) and logs to stderr,
or to `--log-file` (so brokers started in the background of a shell do not write over the
commands run in it). A broker that cannot start (a port taken, a locked data directory) says why
in one line on stderr and exits 1. SIGINT/SIGTERM shut it down gracefully (exit 0).
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from broker.auth.service import ADMIN_PASSWORD_ENV
from broker.config import BrokerConfig, ConfigError
from broker.kvstore import MetadataStoreError
from broker.security.tls import BrokerTls
from broker.server import BrokerAddresses, StartupError, serve
from cli.version import version_flag

app = typer.Typer(
    name="broker",
    help="Run a message broker.",
    add_completion=False,
    no_args_is_help=True,
)

EXIT_CONFIG = 2
EXIT_STARTUP = 1


@app.callback()
def main(version: Annotated[bool, version_flag("broker")] = False) -> None:
    """A Kafka-class message broker. Start one with `broker serve`."""


def load_config(
    *,
    config_file: Path | None,
    settings: list[str],
    flags: dict[str, str | None],
) -> BrokerConfig:
    """Merge the sources (see the module docstring); raises `ConfigError` naming the key."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            with config_file.open("rb") as handle:
                values.update(tomllib.load(handle))
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{config_file} is not valid TOML: {exc}") from exc
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ConfigError(setting, "expected --set key=value")
        values[key.strip()] = value.strip()
    for key, value in flags.items():
        if value is not None:
            values[key] = value
    return BrokerConfig.from_mapping(values)


def _write_ready_file(path: Path, line: str) -> None:
    # Atomic: a reader polling for the file never sees it half written.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(line + "\n")
    temporary.replace(path)


@app.command("serve")
def serve_command(
    listen: Annotated[
        str | None,
        typer.Option(help="HOST:PORT for clients (default 127.0.0.1:9092; port 0 = any)"),
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Directory for logs and metadata (default ./broker-data)")
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(help="HOST:PORT for /metrics (default 127.0.0.1:9100; '' disables)"),
    ] = None,
    node_id: Annotated[
        int | None, typer.Option(help="This broker's id in a cluster (>= 1 with --peers)")
    ] = None,
    peers: Annotated[
        str | None,
        typer.Option(
            help="Cluster mode: every broker as ID@HOST:PORT, comma-separated, e.g. "
            "1@10.0.0.1:9092,2@10.0.0.2:9092,3@10.0.0.3:9092 (the brokers that start the cluster)"
        ),
    ] = None,
    controller_voters: Annotated[
        str | None,
        typer.Option(
            help="The controller voters among --peers, e.g. 1,2,3 (default: all of them); the "
            "other brokers follow the metadata log without voting"
        ),
    ] = None,
    bootstrap: Annotated[
        str | None,
        typer.Option(
            help="Join a running cluster instead of --peers: HOST:PORT[,HOST:PORT] of any of its "
            "brokers (with --node-id and --listen)"
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file of config values")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="key=value for any config value (repeatable), e.g. "
            "--set auto_create_topics=true --set log.retention.ms=60000",
        ),
    ] = None,
    listener: Annotated[
        list[str] | None,
        typer.Option(
            "--listener",
            help="NAME=tls://HOST:PORT or NAME=plaintext://HOST:PORT (repeatable; replaces "
            "--listen), e.g. --listener INTERNAL=tls://0.0.0.0:9093 --listener "
            "LOCAL=plaintext://127.0.0.1:9092",
        ),
    ] = None,
    inter_broker_listener: Annotated[
        str | None,
        typer.Option(help="The --listener NAME peers reach this broker on (default: the first)"),
    ] = None,
    advertised_listener: Annotated[
        list[str] | None,
        typer.Option(
            "--advertised-listener",
            help="NAME=HOST:PORT: the address listener NAME gives its clients in metadata "
            "(repeatable; Kafka's advertised.listeners), e.g. --advertised-listener "
            "EXTERNAL=broker1.example.com:9093 (default: where the listener is bound)",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain) of the TLS listeners")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert")] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(help="PEM CA certificates client (and peer) certificates must chain to"),
    ] = None,
    tls_client_auth: Annotated[
        str | None,
        typer.Option(help="Client certificates: required (mTLS), requested or none (default none)"),
    ] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Also write the READY line to this file once listening")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_file: Annotated[
        Path | None,
        typer.Option(help="Append the log to this file instead of stderr (created if missing)"),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            help="'scram': every connection logs in with SASL SCRAM-SHA-256/512 first "
            "(docs/security.md); 'none' (default): no authentication",
        ),
    ] = None,
    super_user: Annotated[
        list[str] | None,
        typer.Option(
            "--super-user",
            help="A user every check allows (repeatable). The first is created at the first "
            f"start (password from {ADMIN_PASSWORD_ENV} or a prompt) and is who brokers log in "
            "to each other as",
        ),
    ] = None,
    recover_topics: Annotated[
        bool,
        typer.Option(
            "--recover-topics",
            help="Single node: re-register as topics the log directories the metadata does not "
            "know (after meta.lmdb was lost or moved aside; default configs; docs/storage.md)",
        ),
    ] = False,
    authorizer: Annotated[
        bool | None,
        typer.Option(
            "--authorizer/--no-authorizer",
            help="Enforce ACLs on every request (docs/security.md; on by default with "
            "--auth scram); super users from --super-user",
        ),
    ] = None,
) -> None:
    """Run a broker until SIGINT or SIGTERM: a single node, or with --node-id and --peers a member
    of a replicated cluster (run the same command again on the same --data-dir to rejoin), or
    with --node-id and --bootstrap a broker joining a running cluster."""
    try:
        _configure_logging(log_level, log_file)
        broker_config = load_config(
            config_file=config,
            settings=settings or [],
            flags={
                "listen": listen,
                "data_dir": data_dir,
                "metrics_listen": metrics_listen,
                "node_id": None if node_id is None else str(node_id),
                "peers": peers,
                "controller_voters": controller_voters,
                "bootstrap": bootstrap,
                "auth": auth,
                "super_users": ",".join(super_user) if super_user else None,
                # `--auth scram` enforces ACLs too unless --no-authorizer says otherwise.
                "authorizer_enabled": _authorizer_flag(authorizer, auth),
                "listeners": ",".join(listener) if listener else None,
                "inter_broker_listener": inter_broker_listener,
                "advertised_listeners": ",".join(advertised_listener)
                if advertised_listener
                else None,
                "tls_cert_file": None if tls_cert is None else str(tls_cert),
                "tls_key_file": None if tls_key is None else str(tls_key),
                "tls_ca_file": None if tls_ca is None else str(tls_ca),
                "tls_client_auth": tls_client_auth,
            },
        )
        # Reads the certificate files now: a bad one is a config error (exit 2), not a crash.
        BrokerTls.from_config(
            cert_file=broker_config.tls_cert_file,
            key_file=broker_config.tls_key_file,
            ca_file=broker_config.tls_ca_file,
            client_auth=broker_config.tls_client_auth,
        )
        admin_password = read_admin_password(broker_config)
    except ConfigError as exc:
        typer.echo(f"broker: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None

    def on_ready(addresses: BrokerAddresses) -> None:
        line = addresses.ready_line(broker_config.node_id)
        # The file first: whoever saw the stdout line may look for the file at once.
        if ready_file is not None:
            _write_ready_file(ready_file, line)
        print(line, flush=True)

    failures: list[BaseException] = []
    try:
        trio.run(
            lambda: serve(
                broker_config,
                on_ready=on_ready,
                recover_topics=recover_topics,
                admin_password=admin_password,
            )
        )
    except* (OSError, StartupError, MetadataStoreError) as group:
        # Raised inside the broker's nurseries, so they arrive as an exception group.
        failures.extend(_leaves(group))
    if failures:
        reasons = "; ".join(str(failure) for failure in failures)
        # A StartupError names what failed and what to do; a bare OSError needs the context.
        if not all(isinstance(failure, StartupError) for failure in failures):
            reasons = (
                f"{reasons} (listen {broker_config.listen}, metrics "
                f"{broker_config.metrics_listen or 'disabled'}, data {broker_config.data_dir})"
            )
        typer.echo(f"broker: cannot start: {reasons}", err=True)
        raise typer.Exit(EXIT_STARTUP)


def _authorizer_flag(authorizer: bool | None, auth: str | None) -> str | None:
    """`--authorizer/--no-authorizer` as given; unset, `--auth scram` turns ACLs on (the issue's
    one flag: authentication and authorization together); otherwise the config decides."""
    if authorizer is not None:
        return str(authorizer).lower()
    return "true" if auth == "scram" else None


def read_admin_password(config: BrokerConfig) -> str | None:
    """With `--auth scram`: the first super-user's password, from BROKER_ADMIN_PASSWORD or, on a
    terminal, a hidden prompt (never a flag: argv is visible to every user of the machine).
    None when there is neither; the broker then starts only if the user exists already (a
    single node)."""
    if not config.auth_enabled:
        return None
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin.isatty():
        return None
    password = typer.prompt(
        f"password of the super-user {config.super_users[0]!r}", hide_input=True, err=True
    )
    if not password:
        raise ConfigError(ADMIN_PASSWORD_ENV, "the super-user's password must not be empty")
    return str(password)


def _configure_logging(log_level: str, log_file: Path | None) -> None:
    """Log at `log_level` to `log_file` (appended) or stderr; raises `ConfigError` for a file
    that cannot be opened, before anything starts."""
    level = getattr(logging, log_level.upper(), logging.INFO)
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError("--log-file", f"cannot open {log_file}: {exc.strerror}") from exc
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[handler]
    )


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


if __name__ == "__main__":  # pragma: no cover
    app()
