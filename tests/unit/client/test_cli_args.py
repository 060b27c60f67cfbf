"""broker-cli's argument handling: bad input exits non-zero with one clear line, no traceback."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from cli.broker_cli import app
from cli.common import config_value

runner = CliRunner()


def closed_port() -> int:
    # A port nothing listens on: bind, read the number, close.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("topics", "produce", "consume"):
        assert command in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["topics", "create", "t", "--partitions", "many"],
        ["topics", "create", "t", "--partitions", "0"],
        ["topics", "create", "t", "--config", "novalue"],
        ["consume", "t", "--max-messages", "-1"],
        ["consume", "t", "--timeout", "soon"],
        ["produce", "t", "--key-separator", ""],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = runner.invoke(app, ["--bootstrap", f"127.0.0.1:{closed_port()}", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_unreachable_broker_is_one_line_exit_1() -> None:
    # Without waiting for the cluster (tests/integration/cli/test_cli_plumbing.py covers that).
    address = f"127.0.0.1:{closed_port()}"
    result = runner.invoke(app, ["--bootstrap", address, "--wait-timeout", "0", "topics", "list"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [f"error: cannot reach broker at {address}: is 'broker serve' running?"] or (
        len(lines) == 1 and lines[0].startswith(f"error: cannot reach broker at {address}")
    )


def test_bootstrap_comes_from_the_environment() -> None:
    address = f"127.0.0.1:{closed_port()}"
    environment = {"BROKER_BOOTSTRAP": address, "BROKER_WAIT_TIMEOUT": "0"}
    result = runner.invoke(app, ["topics", "list"], env=environment)
    assert result.exit_code == 1 and address in result.output


def test_malformed_bootstrap_is_a_config_error() -> None:
    result = runner.invoke(app, ["--bootstrap", "localhost", "topics", "list"])
    assert result.exit_code == 1
    assert "bootstrap" in result.output and "HOST:PORT" in result.output


def test_config_values_keep_numbers_numeric() -> None:
    assert config_value("60000") == 60000
    assert config_value("1_000") == 1000
    assert config_value("always") == "always"
