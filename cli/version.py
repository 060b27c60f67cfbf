"""`--version` for `broker` and `broker-cli`: the installed package's version, as the packaging
metadata records it, so the two commands and `pip show pybroker` always agree."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import typer

DISTRIBUTION = "pybroker"


def package_version() -> str:
    """The installed version of the pybroker distribution; "unknown" when it is run from a
    source tree that was never installed (no metadata to read)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_flag(program: str) -> Any:
    """The root callback's `--version` option for `program` (use as `Annotated[bool, ...]`):
    eager, so it answers before a sub-command is required or a broker is contacted."""

    def print_version(value: bool) -> None:
        if value:
            typer.echo(f"{program} {package_version()}")
            raise typer.Exit()

    return typer.Option(
        "--version", callback=print_version, is_eager=True, help="Print the version and exit."
    )
