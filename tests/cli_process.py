"""Test helper: `broker-cli` as a user runs it, a real process (stdin piped, exit status and
stdout/stderr apart), bounded in time so that a hang fails the test instead of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from client.embedded import EmbeddedBroker

# The installed console script next to this interpreter; the module when it is not installed.
_SCRIPT = Path(sys.executable).with_name("broker-cli")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cli.broker_cli"]
# Bound on one CLI invocation.
CLI_TIMEOUT_S = 60


def cli(broker: EmbeddedBroker, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`broker-cli --bootstrap BROKER ARGS...` with `stdin` piped in."""
    return subprocess.run(
        [*CLI, "--bootstrap", broker.bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
