"""broker-cli as a user runs it: a real process against a real broker, stdin in, stdout out."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from cli.broker_cli import app
from client.embedded import EmbeddedBroker
from tests.cli_process import cli


def in_process(broker: EmbeddedBroker, *args: str) -> Any:
    # The same app through typer's runner: no interpreter start-up per command.
    return CliRunner().invoke(app, ["--bootstrap", broker.bootstrap, *args])


def test_topics_lifecycle(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    created = in_process(session_broker, "topics", "create", unique_topic, "--partitions", "3",
                  "--config", "retention.ms=60000")  # fmt: skip
    assert created.exit_code == 0, created.stderr
    listed = in_process(session_broker, "topics", "list", "--json")
    assert unique_topic in json.loads(listed.stdout)
    described = in_process(session_broker, "topics", "describe", unique_topic, "--json")
    data = json.loads(described.stdout)
    assert data["partitions"] == 3 and data["configs"]["retention.ms"] == 60000
    assert len(data["partition_details"]) == 3
    human = in_process(session_broker, "topics", "describe", unique_topic)
    assert human.exit_code == 0 and unique_topic in human.stdout
    again = in_process(session_broker, "topics", "create", unique_topic, "--partitions", "3")
    assert again.exit_code == 1
    assert again.stderr.strip().startswith("error: TOPIC_ALREADY_EXISTS")
    assert len(again.stderr.strip().splitlines()) == 1
    deleted = in_process(session_broker, "topics", "delete", unique_topic)
    assert deleted.exit_code == 0
    missing = in_process(session_broker, "topics", "describe", unique_topic)
    assert missing.exit_code == 1 and "UNKNOWN_TOPIC" in missing.stderr


def test_produce_then_consume(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    assert cli(session_broker, "topics", "create", unique_topic, "-p", "2").returncode == 0
    lines = [f"k{i % 3}:value {i}" for i in range(50)]
    produced = cli(
        session_broker, "produce", unique_topic, "--key-separator", ":",
        stdin="\n".join(lines) + "\n",
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    assert "produced 50 record(s)" in produced.stderr
    consumed = cli(session_broker, "consume", unique_topic, "--from-beginning",
                   "--max-messages", "50", "--timeout", "20", "--json")  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    records = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert sorted(r["value"] for r in records) == sorted(line.split(":", 1)[1] for line in lines)
    partition_of_key: dict[str, int] = {}
    for r in records:
        assert partition_of_key.setdefault(r["key"], r["partition"]) == r["partition"]
    plain = cli(session_broker, "consume", unique_topic, "--from-beginning", "-n", "5")
    assert plain.returncode == 0 and len(plain.stdout.splitlines()) == 5


def test_consume_timeout_ends_an_idle_read(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    assert cli(session_broker, "topics", "create", unique_topic).returncode == 0
    result = cli(session_broker, "consume", unique_topic, "--timeout", "0.5")
    assert result.returncode == 0 and result.stdout == ""
    assert "consumed 0 record(s)" in result.stderr


def test_produce_to_a_missing_topic_fails_cleanly(session_broker: EmbeddedBroker) -> None:
    result = cli(session_broker, "produce", "does-not-exist", stdin="x\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: UNKNOWN_TOPIC")
    assert "broker-cli topics create does-not-exist" in result.stderr
