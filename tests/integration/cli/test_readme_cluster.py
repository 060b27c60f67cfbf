"""The README's three-broker section, run verbatim as a user pastes it into a shell.

The shell commands are read from README.md (the first ```sh block after the section heading), so
the test breaks when the README drifts from what works. They run with `bash -e` (so any failing
command fails the test, not only the last one) in a fresh directory that holds only a `.venv`
link to this interpreter's environment, so `./cluster-data` is the test's own; the brokers they
start in the background are stopped by the fixture, passed or not.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[3] / "README.md"
SECTION_HEADING = "## A three-broker cluster"
# The section starts three brokers and runs four commands that wait for the cluster to form.
SCRIPT_TIMEOUT_S = 120
# How long the brokers get to stop on SIGTERM before they are killed.
STOP_TIMEOUT_S = 30
# Environment a developer's shell may carry that would change what the commands do.
SCRUBBED_ENV = ("BROKER_BOOTSTRAP", "BROKER_WAIT_TIMEOUT")


def cluster_section_script() -> str:
    """The shell commands of the README's three-broker section, exactly as written."""
    text = README.read_text()
    assert SECTION_HEADING in text, f"README.md has no {SECTION_HEADING!r} section"
    section = text.split(SECTION_HEADING, 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, f"no ```sh block under {SECTION_HEADING!r} in README.md"
    return block.group(1)


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class ReadmeShell:
    """A bash process running the README's commands in its own session (process group), so the
    brokers it leaves in the background can be stopped together."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stdout_path = workdir / "stdout.txt"
        self.stderr_path = workdir / "stderr.txt"
        self.process: subprocess.Popen[bytes] | None = None

    def run(self, script: str) -> int:
        env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
        # Files, not pipes: the background brokers inherit the shell's stdout and would hold a
        # pipe open long after the shell exited.
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                ["bash", "-e", "-c", script],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        return self.process.wait(timeout=SCRIPT_TIMEOUT_S)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> None:
        """SIGTERM to every process the shell started (a graceful broker shutdown), then
        SIGKILL to whatever is left after `STOP_TIMEOUT_S`."""
        if self.process is None:
            return
        group = self.process.pid
        # One SIGTERM: a second one would cut the brokers' graceful shutdown short.
        next_signal: int = signal.SIGTERM
        kill_at = time.monotonic() + STOP_TIMEOUT_S
        # Past this, what answers signal 0 can only be an exited process nobody reaped yet.
        give_up_at = kill_at + STOP_TIMEOUT_S
        while time.monotonic() < give_up_at:
            try:
                os.killpg(group, next_signal)  # signal 0: is anyone of the group left?
            except ProcessLookupError:
                break
            next_signal = signal.SIGKILL if time.monotonic() > kill_at else 0
            time.sleep(0.1)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def readme_shell(tmp_path: Path) -> Iterator[ReadmeShell]:
    """A fresh directory with `.venv` pointing at this environment, as after the README's
    install; its brokers are stopped at the end, even when the test fails."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "broker").exists():
        pytest.fail(f"{venv}/bin/broker is missing: install the package (pip install -e .)")
    (tmp_path / ".venv").symlink_to(venv)
    shell = ReadmeShell(tmp_path)
    try:
        yield shell
    finally:
        shell.stop()


def test_readme_cluster_section_works_as_written(readme_shell: ReadmeShell) -> None:
    script = cluster_section_script()
    ports = sorted({int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", script)})
    taken = [port for port in ports if _port_in_use(port)]
    assert not taken, f"ports {taken} of the README's cluster are in use: stop what holds them"

    status = readme_shell.run(script)

    stdout, stderr = readme_shell.stdout, readme_shell.stderr
    assert status == 0, f"the README's commands failed:\n{stderr}"
    assert "Traceback" not in stderr
    # Each broker announces itself once; its log goes to its --log-file, not into the shell.
    assert stdout.count("READY listen=") == 3
    assert " INFO " not in stdout + stderr
    for node in (1, 2, 3):
        log = readme_shell.workdir / "cluster-data" / f"broker-{node}.log"
        assert "listening on" in log.read_text()
    # cluster status, run as soon as the brokers start, shows the cluster formed and led.
    assert "controller=" in stdout and "brokers=3" in stdout
    assert "offline partitions (0)" in stdout
    assert "created topic 'orders' with 3 partition(s)" in stderr
    assert "produced 1000 record(s) to 'orders'" in stderr
    assert "orders  partitions=3  replication_factor=3" in stdout  # topics describe

    # What `seq 1 1000 | broker-cli produce orders` wrote is all there, read back by the CLI.
    bootstrap = ",".join(f"127.0.0.1:{port}" for port in ports)
    consumed = subprocess.run(
        [str(Path(sys.prefix, "bin", "broker-cli")), "--bootstrap", bootstrap,
         "consume", "orders", "--from-beginning", "--max-messages", "1000", "--timeout", "20"],
        capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, cwd=readme_shell.workdir,
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    assert sorted(int(line) for line in consumed.stdout.split()) == list(range(1, 1001))
