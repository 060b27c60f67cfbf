"""An embedded broker for tests: `broker serve` as a managed child process on a free port.

    with EmbeddedBroker() as broker:              # or: async with open_embedded_broker() as broker:
        producer = Producer(broker.bootstrap)

Rules:
- The child listens on `127.0.0.1:0` (metrics too), so parallel brokers never collide; its real
  address comes from the readiness line `READY listen=HOST:PORT ...` it prints on stdout
  (docs/protocol.md). Nothing here sleeps to wait: we block on that line, up to
  `startup_timeout_s`, and fail with the child's log if it exits or stays silent.
- Data lives in a temporary directory removed on stop, unless the caller passes `data_dir`.
- Stop is SIGTERM (the broker flushes and writes its clean-shutdown marker), a bounded wait, then
  SIGKILL. `restart()` keeps the data directory and the port, so clients reconnect by themselves.
  A caller that must know the port before the start (a cluster's `--peers`) passes `port`.
- The child's stderr goes to `log_path` (inside the data dir's parent temp dir), shown in errors.
- `open_inprocess_broker()` runs `broker.server.Broker` inside the caller's trio loop instead:
  no process, faster to start, but it shares the caller's CPU and event loop (and cannot be
  killed), so it suits unit-style tests of trio code rather than benchmarks or crash tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from client._started import StartedByWith

STARTUP_TIMEOUT_S_DEFAULT = 30.0
STOP_TIMEOUT_S_DEFAULT = 15.0
# Lines of the child's log quoted in a start-up failure.
LOG_TAIL_LINES = 30
READY_PREFIX = "READY "
# The command that runs `broker serve`; `-c` works whether or not the console script is on PATH.
BROKER_COMMAND = (sys.executable, "-c", "from cli.broker_main import app; app()", "serve")


class EmbeddedBrokerError(RuntimeError):
    """The broker process did not start (its log tail is in the message)."""


class EmbeddedBroker(StartedByWith):
    """A `broker serve` child process with a temporary data directory. See the module rules.

    Args:
        data_dir: keep data here (not removed on stop); default a fresh temporary directory.
        port: listen on this port; default 0, a free port the broker picks (and keeps on restart).
        extra_args: more `broker serve` options, e.g. `["--config", "broker.toml"]`.
        env: extra environment variables for the child.
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S_DEFAULT,
        stop_timeout_s: float = STOP_TIMEOUT_S_DEFAULT,
    ) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="pybroker-"))
        self.data_dir = Path(data_dir) if data_dir is not None else self._tmp / "data"
        self.log_path = self._tmp / "broker.log"
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = port
        self.metrics_address = "-"
        self.node_id = -1
        self.ready_fields: dict[str, str] = {}

    @property
    def bootstrap(self) -> str:
        """`HOST:PORT` of the running broker, for every client's `bootstrap`."""
        if self.port == 0:
            raise EmbeddedBrokerError("the embedded broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the child process is alive (False once stopped, killed or crashed)."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Start the child and wait for its readiness line; raises `EmbeddedBrokerError`."""
        assert self.process is None, "already started"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            *BROKER_COMMAND,
            "--listen",
            f"{self.host}:{self.port}",
            "--data-dir",
            str(self.data_dir),
            "--metrics-listen",
            f"{self.host}:0",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        try:
            line = self._read_ready_line()
        except BaseException:
            self._kill()
            raise
        self._parse_ready(line)
        # Keep draining stdout so a chatty child can never block on a full pipe.
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        return self

    def _read_ready_line(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        deadline = time.monotonic() + self.startup_timeout_s
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._startup_error(
                        f"no readiness line within {self.startup_timeout_s} s"
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    code = self.process.wait()
                    raise self._startup_error(f"'broker serve' exited with status {code}")
                buffer += chunk
                for raw in buffer.split(b"\n")[:-1]:
                    text = raw.decode("utf-8", "replace").strip()
                    if text.startswith(READY_PREFIX):
                        return text
                buffer = buffer.rsplit(b"\n", 1)[-1] if b"\n" in buffer else buffer

    def _parse_ready(self, line: str) -> None:
        fields = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
        self.ready_fields = fields
        host, _, port = fields["listen"].rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.metrics_address = fields.get("metrics", "-")
        self.node_id = int(fields.get("node_id", "-1"))

    def _drain_stdout(self) -> None:
        process = self.process
        if process is None or process.stdout is None:
            return
        with contextlib.suppress(OSError, ValueError):
            while process.stdout.read(4096):
                pass

    def _startup_error(self, reason: str) -> EmbeddedBrokerError:
        return EmbeddedBrokerError(f"embedded broker failed to start: {reason}\n{self.log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, wait up to `stop_timeout_s`, then SIGKILL. Returns the exit status."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL without a clean shutdown (crash tests)."""
        self._kill()

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()

    def restart(self) -> Self:
        """Stop, then start again on the same port with the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker and remove the temporary directory (and data, if we made it)."""
        try:
            self.stop()
        finally:
            # The temporary directory holds the log and, unless the caller chose `data_dir`
            # (which lives elsewhere and is kept), the data.
            shutil.rmtree(self._tmp, ignore_errors=True)


class Startable(Protocol):
    """What `open_in_thread` manages: a blocking `start()` and a `close()` that cleans up."""

    def start(self) -> object: ...
    def close(self) -> None: ...


StartableT = TypeVar("StartableT", bound=Startable)


@contextlib.asynccontextmanager
async def open_in_thread(resource: StartableT) -> AsyncIterator[StartableT]:
    """Start `resource` for trio code and close it on exit (also when the start fails).

    `start()` and `close()` block (they wait for processes and threads), so both run in a worker
    thread; the close is shielded, so a cancelled test still stops what it started.
    """
    import trio

    try:
        await trio.to_thread.run_sync(resource.start)
        yield resource
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(resource.close)


@contextlib.asynccontextmanager
async def open_embedded_broker(**options: Any) -> AsyncIterator[EmbeddedBroker]:
    """The trio version of `EmbeddedBroker(**options)`: start and stop run in a worker thread."""
    async with open_in_thread(EmbeddedBroker(**options)) as broker:
        yield broker


@dataclasses.dataclass(frozen=True, slots=True)
class InProcessBroker:
    """A broker running in this trio loop: `bootstrap` for clients, `broker` for inspection."""

    bootstrap: str
    data_dir: Path
    broker: Any


@contextlib.asynccontextmanager
async def open_inprocess_broker(
    *, data_dir: str | os.PathLike[str] | None = None, **settings: Any
) -> AsyncIterator[InProcessBroker]:
    """Run a broker in the current trio loop on a free port; stop it gracefully on exit.

    `settings` are broker config values by field name (e.g. `auto_create_topics=True`).
    """
    import trio

    from broker.config import BrokerConfig
    from broker.server import Broker

    tmp = Path(tempfile.mkdtemp(prefix="pybroker-inproc-"))
    directory = Path(data_dir) if data_dir is not None else tmp / "data"
    values = {"listen": "127.0.0.1:0", "metrics_listen": "", "data_dir": str(directory)}
    config = BrokerConfig.from_mapping({**values, **settings})
    broker = Broker(config)
    try:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(broker.run)
            host, port = addresses.listen
            try:
                yield InProcessBroker(f"{host}:{port}", directory, broker)
            finally:
                broker.request_stop()
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S_DEFAULT):
                    await broker.stopped.wait()
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
