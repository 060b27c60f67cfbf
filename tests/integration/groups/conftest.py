"""Fixtures for the consumer group integration tests: a broker tuned for short timeouts, and
consumer processes that are always stopped (killed if need be) when the test ends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.embedded import EmbeddedBroker
from client.pytest_plugin import (
    pytest_runtest_makereport,  # noqa: F401 - attaches broker logs
    run_broker,
)

# Short group timers so that evictions and rebalances take seconds, not minutes.
GROUP_BROKER_ARGS = [
    "--set",
    "group_min_session_timeout_ms=500",
    "--set",
    "group_initial_rebalance_delay_ms=0",
]
CONSUMER_SCRIPT = Path(__file__).with_name("consumer_process.py")


@pytest.fixture
def group_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    yield from run_broker(request, log_lines=80, extra_args=GROUP_BROKER_ARGS)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `condition` until it returns a truthy value; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class ConsumerProcess:
    """One `consumer_process.py` child: its ledger and the partitions it reports owning."""

    def __init__(self, workdir: Path, process: subprocess.Popen[bytes]) -> None:
        self.workdir = workdir
        self.process = process

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.workdir / "owned.json").read_text()))
        except (OSError, ValueError):
            return {"owned": [], "generation": -1, "member_id": ""}

    def owned(self) -> list[int]:
        return list(self.state()["owned"])

    def ledger(self) -> set[tuple[int, int]]:
        try:
            lines = (self.workdir / "ledger").read_text().splitlines()
        except OSError:
            return set()
        return {(int(p), int(o)) for p, o in (line.split() for line in lines if line.strip())}

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def spawn_consumer(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    started: list[ConsumerProcess] = []

    def spawn(
        bootstrap: str, topic: str, group: str, name: str, *, assignor: str = "range",
        instance: str | None = None,
    ) -> ConsumerProcess:  # fmt: skip
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        args = [
            sys.executable,
            str(CONSUMER_SCRIPT),
            bootstrap,
            topic,
            group,
            str(workdir),
            assignor,
        ]
        if instance is not None:
            args.append(instance)
        log = (workdir / "stderr").open("ab")
        consumer = ConsumerProcess(
            workdir, subprocess.Popen(args, stderr=log, stdin=subprocess.DEVNULL)
        )
        log.close()
        started.append(consumer)
        return consumer

    yield spawn
    for consumer in started:
        if consumer.process.poll() is None:
            consumer.process.kill()
            consumer.process.wait()
