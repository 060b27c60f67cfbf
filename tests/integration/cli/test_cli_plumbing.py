"""The plumbing around every command, as a user meets it: `--version`, `broker-cli` waiting for a
cluster that is still starting (and saying what it waited for when it gives up), `broker serve
--log-file`, and a listener that cannot bind. Installed commands in subprocesses, real brokers."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from client.embedded import EmbeddedBroker

BIN = Path(sys.executable).parent
BROKER_CLI = str(BIN / "broker-cli")
BROKER = str(BIN / "broker")
# Bound on one command; a hang fails the test instead of blocking the suite.
COMMAND_TIMEOUT_S = 60
# How long the spinner of a waiting `broker-cli` may take to show on its terminal.
SPINNER_TIMEOUT_S = 20
# An address of TEST-NET-1 (RFC 5737): never one of this machine's.
FOREIGN_ADDRESS = "192.0.2.1"
# Environment a developer's shell may carry that would change what the commands do.
SCRUBBED_ENV = ("BROKER_BOOTSTRAP", "BROKER_WAIT_TIMEOUT")


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
    )


def free_port() -> int:
    """A port nothing listens on (the kernel's pick; free again once the socket closes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program is listening on for the length of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed as the CLI rules say: exit 1, no
    traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- --version ------------------------------------------------------------------------------------


@pytest.mark.parametrize("program", [BROKER, BROKER_CLI])
def test_version_is_the_installed_package_version(program: str) -> None:
    result = run(program, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{Path(program).name} {metadata.version('pybroker')}\n"


# --- broker-cli waits for the cluster -------------------------------------------------------------


def test_cli_gives_up_naming_the_addresses_and_the_error() -> None:
    port = free_port()
    result = run(BROKER_CLI, "--bootstrap", f"127.0.0.1:{port}", "--wait-timeout", "1",
                 "topics", "list")  # fmt: skip
    line = one_line_error(result)
    assert line.startswith(f"error: gave up after 1 s waiting for the cluster at 127.0.0.1:{port}")
    assert "Connection refused" in line and "--wait-timeout" in line


def test_wait_timeout_zero_fails_at_once_without_waiting() -> None:
    port = free_port()
    result = run(BROKER_CLI, "--bootstrap", f"127.0.0.1:{port}", "--wait-timeout", "0",
                 "topics", "list")  # fmt: skip
    line = one_line_error(result)
    assert line.startswith(f"error: cannot reach broker at 127.0.0.1:{port}")


def test_help_and_usage_errors_do_not_wait_for_a_broker() -> None:
    # Nothing listens at the default address in a test run; with a 30 s wait these would hang.
    port = free_port()
    helped = run(BROKER_CLI, "--bootstrap", f"127.0.0.1:{port}", "topics", "create", "--help")
    assert helped.returncode == 0 and "Usage" in helped.stdout
    misused = run(BROKER_CLI, "--bootstrap", f"127.0.0.1:{port}", "topics", "create")
    assert misused.returncode == 2


def test_cli_waits_for_the_controller_to_have_a_leader(tmp_path: Path) -> None:
    # One broker of three: it answers, but its controller group has no majority to elect with.
    ports = [free_port() for _ in range(3)]
    peers = ",".join(f"{node}@127.0.0.1:{port}" for node, port in enumerate(ports, start=1))
    lonely = EmbeddedBroker(
        port=ports[0], data_dir=tmp_path / "1", extra_args=["--node-id", "1", "--peers", peers]
    )
    with contextlib.closing(lonely.start()):
        result = run(BROKER_CLI, "--bootstrap", lonely.bootstrap, "--wait-timeout", "2",
                     "cluster", "status")  # fmt: skip
    line = one_line_error(result)
    assert f"waiting for the cluster at {lonely.bootstrap}" in line
    assert "the controller has no leader yet" in line


class TerminalCommand:
    """A command whose stderr is a terminal (so rich draws its spinner), stdout a pipe; what it
    draws is collected in the background so it can never block on a full terminal buffer."""

    def __init__(self, *command: str) -> None:
        self._master, replica = pty.openpty()
        env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=replica, env=env
        )
        os.close(replica)
        self._screen = b""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._master], [], [], 1.0)
            if not ready:
                if self.process.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # the command exited and closed the terminal
                return
            if not chunk:
                return
            with self._changed:
                self._screen += chunk
                self._changed.notify_all()

    def wait_for_screen(self, text: str, timeout_s: float) -> None:
        with self._changed:
            shown = self._changed.wait_for(lambda: text.encode() in self._screen, timeout_s)
        assert shown, f"{text!r} never shown; the terminal got {self._screen[-500:]!r}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._reader.join()
        os.close(self._master)


def test_cli_waits_with_a_spinner_for_a_broker_that_starts_later(tmp_path: Path) -> None:
    port = free_port()
    command = TerminalCommand(BROKER_CLI, "--bootstrap", f"127.0.0.1:{port}", "topics", "list")
    try:
        # The command is waiting (its spinner says so) before the broker exists...
        command.wait_for_screen(f"waiting for the cluster at 127.0.0.1:{port}", SPINNER_TIMEOUT_S)
        assert command.process.poll() is None
        with contextlib.closing(EmbeddedBroker(port=port, data_dir=tmp_path / "data").start()):
            # ...and carries on once it answers.
            stdout, _ = command.process.communicate(timeout=COMMAND_TIMEOUT_S)
        assert command.process.returncode == 0
        assert stdout == b""  # a new broker has no topics to list
    finally:
        command.close()


# --- broker serve: --log-file and listeners that cannot bind --------------------------------------


def test_log_file_takes_the_log_off_stderr(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "broker.log"
    broker = EmbeddedBroker(data_dir=tmp_path / "data", extra_args=["--log-file", str(log_file)])
    with contextlib.closing(broker.start()):
        assert "listening on" in log_file.read_text()
        assert broker.log_path.read_text() == ""  # where the embedded broker's stderr goes


def test_client_port_in_use_is_one_line_naming_it_and_listen(
    tmp_path: Path, taken_port: int
) -> None:
    result = run(BROKER, "serve", "--listen", f"127.0.0.1:{taken_port}", "--metrics-listen", "",
                 "--data-dir", str(tmp_path / "data"))  # fmt: skip
    line = one_line_error(result)  # bound before anything else starts: no log lines before it
    assert line == (
        f"broker: cannot start: cannot listen for clients on 127.0.0.1:{taken_port}: the port is "
        "already in use (by another broker or program); stop that process or choose another "
        "port with --listen"
    )


def test_metrics_port_in_use_names_it_and_metrics_listen(tmp_path: Path, taken_port: int) -> None:
    result = run(BROKER, "serve", "--listen", "127.0.0.1:0",
                 "--metrics-listen", f"127.0.0.1:{taken_port}", "--data-dir", str(tmp_path / "d"),
                 "--log-file", str(tmp_path / "broker.log"))  # fmt: skip
    line = one_line_error(result)
    assert (
        f"cannot listen for /metrics on 127.0.0.1:{taken_port}: the port is already in use" in line
    )
    assert "--metrics-listen ('' disables it)" in line


def test_cluster_port_in_use_names_the_clients_and_raft_listener(
    tmp_path: Path, taken_port: int
) -> None:
    peers = f"1@127.0.0.1:{taken_port},2@127.0.0.1:{free_port()},3@127.0.0.1:{free_port()}"
    result = run(BROKER, "serve", "--node-id", "1", "--peers", peers,
                 "--listen", f"127.0.0.1:{taken_port}", "--metrics-listen", "",
                 "--data-dir", str(tmp_path / "data"))  # fmt: skip
    line = one_line_error(result)
    assert f"cannot listen for clients and peers on 127.0.0.1:{taken_port}" in line
    assert "already in use" in line and "--listen" in line


def test_an_address_not_of_this_machine_is_named(tmp_path: Path) -> None:
    result = run(BROKER, "serve", "--listen", f"{FOREIGN_ADDRESS}:9092", "--metrics-listen", "",
                 "--data-dir", str(tmp_path / "data"))  # fmt: skip
    line = one_line_error(result)
    assert (
        f"cannot listen for clients on {FOREIGN_ADDRESS}:9092: {FOREIGN_ADDRESS} is not an " in line
    )
    assert "--listen" in line


def test_unwritable_log_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run(BROKER, "serve", "--log-file", str(blocker / "broker.log"),
                 "--data-dir", str(tmp_path / "data"))  # fmt: skip
    assert result.returncode == 2
    assert "--log-file" in result.stderr and "Traceback" not in result.stderr
