"""Real `broker serve` processes on 127.0.0.1:0, started by a fixture and always stopped by it.

`BrokerProcess.start()` waits for the READY line on stdout (format: docs/protocol.md) with a
timeout; `stop()` sends SIGTERM and waits for the exit status. The fixture kills whatever is still
running at teardown, even when the test failed, and shows the broker's stderr on failure.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def broker_command() -> list[str]:
    script = Path(sys.executable).parent / "broker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "cli.broker_main"]


class BrokerProcess:
    def __init__(self, data_dir: Path, log_path: Path, args: list[str]) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.listen: tuple[str, int] = ("", 0)
        self.metrics: tuple[str, int] | None = None
        self.ready_line = ""

    def start(self, *, timeout_s: float = START_TIMEOUT_S) -> BrokerProcess:
        command = [*broker_command(), "serve", "--data-dir", str(self.data_dir), *self.args]
        if not any(arg.startswith("--listen") for arg in self.args):
            command += ["--listen", "127.0.0.1:0"]
        if not any(arg.startswith("--metrics-listen") for arg in self.args):
            command += ["--metrics-listen", "127.0.0.1:0"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        self.ready_line = self._read_ready_line(timeout_s)
        fields = dict(part.split("=", 1) for part in self.ready_line.split()[1:])
        host, port = fields["listen"].rsplit(":", 1)
        self.listen = (host, int(port))
        if fields["metrics"] != "-":
            metrics_host, metrics_port = fields["metrics"].rsplit(":", 1)
            self.metrics = (metrics_host, int(metrics_port))
        return self

    def _read_ready_line(self, timeout_s: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no READY line within {timeout_s} s; log:\n{self.log()}")
            readable, _, _ = select.select([self.process.stdout], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                code = self.process.wait(timeout=STOP_TIMEOUT_S)
                raise RuntimeError(f"broker exited with {code} before READY; log:\n{self.log()}")
            buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        assert line.startswith("READY "), line
        return line

    def stop(self, sig: int = signal.SIGTERM, *, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Signal the broker and wait for it; returns its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


StartProcess = Callable[..., BrokerProcess]


@pytest.fixture
def broker_process(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartProcess]:
    """`broker_process(*args, data_dir=None)` starts `broker serve`; all are stopped at the end."""
    started: list[BrokerProcess] = []

    def start(*args: str, data_dir: Path | None = None) -> BrokerProcess:
        process = BrokerProcess(
            data_dir or tmp_path / "data", tmp_path / f"broker-{len(started)}.log", list(args)
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        if process.running:
            with contextlib.suppress(subprocess.TimeoutExpired):  # then stop() killed it
                process.stop(signal.SIGTERM)
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for process in started:
            sys.stderr.write(f"--- {process.log_path.name} ---\n{process.log()}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Lets the fixture above know whether the test body failed (to print the broker logs).
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
