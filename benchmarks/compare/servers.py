"""A peer's server (nats-server, redis-server) as a child process on a loopback port.

Rules:
- The server writes its log to a file in its own temporary directory (data too), shown when it
  fails to start; the directory is removed on close.
- Ready means its port accepts a TCP connection (polled, up to `STARTUP_TIMEOUT_S`); a server
  that exits first fails at once with its log tail. Protocol-level readiness (JetStream's meta
  leader, a stream's replicas) is the driver's to wait for.
- Stop is SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from client.embedded_cluster import HOST, free_ports

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# How often start() tries the port while the server starts.
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 30

__all__ = ["HOST", "ServerProcess", "ServerStartError", "free_ports"]


class ServerStartError(RuntimeError):
    """A peer server did not start (its log tail is in the message)."""


class ServerProcess:
    """One server child process. `command` may use `{dir}` (its temporary directory)."""

    def __init__(self, name: str, command: Sequence[str], port: int) -> None:
        self.name = name
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.command = [part.replace("{dir}", str(self.dir)) for part in command]
        self.log_path = self.dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    def start(self) -> None:
        """Start the server and wait until its port accepts connections."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._accepts():
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with status {self.process.returncode} on start-up "
                    f"({' '.join(self.command)}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.name} did not accept connections on port {self.port} within "
                    f"{STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`); remove its files."""
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
