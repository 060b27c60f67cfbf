"""Topic config changes: `broker-cli topics alter-config` and `AdminClient.alter_topic_configs`
set, reset and validate a topic's overrides, and `topics describe` shows the result."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.broker_cli import app
from client import AdminClient
from client.embedded import EmbeddedBroker


def run(broker: EmbeddedBroker, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["--bootstrap", broker.bootstrap, *args])


def described_configs(broker: EmbeddedBroker, topic: str) -> dict[str, object]:
    result = run(broker, "topics", "describe", topic, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["configs"]


def test_alter_config_sets_resets_and_validates(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    created = run(session_broker, "topics", "create", unique_topic, "-c", "retention.ms=60000")
    assert created.exit_code == 0, created.stderr
    altered = run(session_broker, "topics", "alter-config", unique_topic,
                  "--set", "cleanup.policy=compact", "--set", "min.cleanable.dirty.ratio=0.2",
                  "--delete", "retention.ms")  # fmt: skip
    assert altered.exit_code == 0, altered.stderr
    configs = described_configs(session_broker, unique_topic)
    assert configs["cleanup.policy"] == "compact"
    assert configs["min.cleanable.dirty.ratio"] == 0.2
    assert configs["retention.ms"] == 7 * 24 * 3600 * 1000  # back to the broker default
    refused = run(session_broker, "topics", "alter-config", unique_topic,
                  "--set", "cleanup.policy=shred")  # fmt: skip
    assert refused.exit_code == 1 and "INVALID_CONFIG" in refused.stderr
    assert "cleanup" in refused.stderr
    assert described_configs(session_broker, unique_topic)["cleanup.policy"] == "compact"
    missing = run(session_broker, "topics", "alter-config", "no-such-topic", "--set", "a=1")
    assert missing.exit_code == 1 and "UNKNOWN_TOPIC" in missing.stderr
    with AdminClient(session_broker.bootstrap) as admin:
        overrides = admin.alter_topic_configs(unique_topic, reset=("cleanup.policy",))
    assert "cleanup.policy" not in overrides
    assert described_configs(session_broker, unique_topic)["cleanup.policy"] == "delete"
