"""What every `broker-cli` command shares: the global `--bootstrap` option, the one-line error
handling, `KEY=VALUE` config parsing, JSON-or-table output and the progress counter.

Rules: a command talks to the broker inside `errors()` (or `open_admin()`, which includes it), so
a failure the user can act on prints one line `error: <reason>` on stderr and exits 1, never a
traceback. Data goes to stdout, progress and summaries to stderr. A command gets the broker
addresses from `bootstrap()`, which first waits for the cluster (`cli/cluster_wait.py`). This module
imports no other module of `cli/` but `cli.cluster_wait` (which imports none), so every command
module can import it without a cycle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from cli.cluster_wait import WAIT_TIMEOUT_S_DEFAULT, wait_for_cluster
from client import AdminClient
from client._bootstrap import DEFAULT_BOOTSTRAP
from client.errors import ClientError
from client.security import SecurityOptions
from wire.config_error import ConfigError
from wire.error_codes import BrokerError

# Where `--user`'s password is read from (never a flag: argv is visible to every local user).
PASSWORD_ENV = "BROKER_PASSWORD"

if TYPE_CHECKING:
    from rich.console import Console


@dataclasses.dataclass
class _GlobalOptions:
    """The root callback stores the global options here before typer runs the sub-command: typer
    gives a sub-command its parent's options only through a context parameter on every command."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    wait_timeout_s: float = WAIT_TIMEOUT_S_DEFAULT
    # Set once the cluster answered ready, so a command that connects twice waits once.
    cluster_ready: bool = False
    # `--user NAME`: log in as NAME with SASL SCRAM (`--sasl-mechanism`), password from
    # BROKER_PASSWORD or a prompt (asked once, when the command first connects).
    user: str | None = None
    sasl_mechanism: str = "SCRAM-SHA-256"
    password: str | None = None
    # `--security-protocol`, `--ssl-cafile`, ...: given to every client a command opens.
    security: SecurityOptions = dataclasses.field(default_factory=lambda: SecurityOptions())


_state = _GlobalOptions()

# The `--json` flag of every command that can print JSON instead of text or a table.
JsonFlag = Annotated[bool, typer.Option("--json", help="JSON output.")]


def set_global_options(
    *,
    bootstrap: str,
    wait_timeout_s: float,
    security: SecurityOptions | None = None,
    user: str | None = None,
    sasl_mechanism: str = "SCRAM-SHA-256",
) -> None:
    """Remember the broker address(es) the command about to run connects to, how long it
    waits for them to be ready, the transport security options of its clients, and who it logs
    in as."""
    _state.bootstrap, _state.wait_timeout_s = bootstrap, wait_timeout_s
    _state.security = security or SecurityOptions()
    _state.cluster_ready = False
    _state.user, _state.sasl_mechanism, _state.password = user, sasl_mechanism, None


def security() -> SecurityOptions:
    """The SDK's security options every command passes to the clients it opens: the transport
    ones (`--security-protocol`, `--ssl-*`) and, with `--user`, the SASL login (over TLS when the
    transport is TLS). The password comes from BROKER_PASSWORD, else a hidden prompt."""
    options = SecurityOptions(**_state.security)
    if _state.user is None:
        return options
    if _state.password is None:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            if not sys.stdin.isatty():
                fail(f"--user {_state.user}: set {PASSWORD_ENV} (no terminal to ask on)")
            password = typer.prompt(f"password of {_state.user}", hide_input=True, err=True)
        _state.password = password
    tls = options.get("security_protocol", "PLAINTEXT").upper() in ("SSL", "SASL_SSL")
    options["security_protocol"] = "SASL_SSL" if tls else "SASL_PLAINTEXT"
    options["sasl_mechanism"] = _state.sasl_mechanism
    options["sasl_username"] = _state.user
    options["sasl_password"] = _state.password
    return options


def bootstrap() -> str:
    """The broker address(es) given with `--bootstrap` (or its environment variable), once the
    cluster there is ready.

    The first call waits for the cluster, up to `--wait-timeout` seconds (0: not at all), and on
    giving up exits 1 with one line naming what it waited for. Waiting here, where every command
    gets its addresses just before it connects, makes every command that talks to a broker wait
    and no other (`--help`, a usage error)."""
    if not _state.cluster_ready and _state.wait_timeout_s > 0:
        with errors():
            wait_for_cluster(_state.bootstrap, _state.wait_timeout_s, **security())
        _state.cluster_ready = True
    return _state.bootstrap


def fail(message: str) -> NoReturn:
    """Print `error: MESSAGE` on stderr and exit 1: a failure the user can act on."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn expected failures into one line on stderr and exit status 1."""
    try:
        yield
    except BrokerError as exc:
        fail(f"{exc.code.name}: {exc.message}")
    except (ClientError, ConfigError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted")


@contextlib.contextmanager
def open_admin() -> Iterator[AdminClient]:
    """An admin client on the `--bootstrap` brokers, its failures handled by `errors()`."""
    with errors(), AdminClient(bootstrap(), **security()) as admin:
        yield admin


def show(data: dict[str, Any], *, as_json: bool, printer: Callable[[dict[str, Any]], None]) -> None:
    """Print a description: indented JSON with `--json` (for scripts), else `printer`'s view
    of the same dict (for people), so both always hold the same facts."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    printer(data)


def headed_console(heading: str) -> Console:
    """A rich console for a description's table view, its heading line (rich markup) printed.

    rich is imported here, when a table is shown, and not at module level: its import costs
    start-up time that `--json` and the commands without tables need not pay."""
    from rich.console import Console

    console = Console()
    console.print(heading)
    return console


def now_ms() -> int:
    """Wall-clock milliseconds, to turn the broker's timestamps into ages."""
    return int(time.time() * 1000)


def parse_configs(items: list[str], *, option: str = "--config") -> dict[str, Any]:
    """`--config KEY=VALUE` (or `option`) values as a dict; a malformed one is a usage error
    (exit 2)."""
    configs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        configs[key.strip()] = config_value(value.strip())
    return configs


def config_value(text: str) -> Any:
    """A config value as typed on the command line: an int if it reads as one, else the text."""
    # Numbers travel as ints so the broker's validation sees the intended type.
    with contextlib.suppress(ValueError):
        return int(text.replace("_", ""))
    return text


@contextlib.contextmanager
def progress(verb: str) -> Iterator[Callable[[int], None]]:
    """A live record counter on stderr when it is a terminal; a no-op otherwise."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    # Drawn on stderr, and stdout left alone: rich would otherwise route stdout's lines (the
    # records of `consume > file`) through its stderr console.
    with Progress(SpinnerColumn(), TextColumn(f"{verb} {{task.completed}} records"),
                  console=Console(stderr=True), redirect_stdout=False,
                  transient=True) as counter:  # fmt: skip
        task = counter.add_task(verb, total=None)
        yield lambda n: counter.advance(task, n)
