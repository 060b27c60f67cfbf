"""Topic admin on a single-node broker, driven as a user would: `broker-cli topics add-partitions`,
`topics delete-records`, `topics create --if-not-exists` and `topics alter-config` as real
processes, and the SDK's Kafka-named methods (`create_partitions`, `delete_records`,
`describe_configs`, `alter_configs`, `create_topic(exist_ok=True)`, `TopicAlreadyExistsError`).
The three-broker version is tests/integration/cluster/test_partitions_admin_cluster.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from client import AdminClient, Consumer, Producer, TopicAlreadyExistsError, TopicPartition
from client.embedded import EmbeddedBroker
from client.partitioner import partition_for_key
from wire.error_codes import BrokerError, ErrorCode

CLI = [sys.executable, "-m", "cli.broker_cli"]
# Bound on one CLI invocation, and on waiting for a consumer to see a new partition.
TIMEOUT_S = 60.0


def cli(broker: EmbeddedBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--bootstrap", broker.bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def described(broker: EmbeddedBroker, topic: str) -> dict[str, object]:
    result = cli(broker, "topics", "describe", topic, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def poll_until_records(consumer: Consumer, what: str) -> list[Any]:
    """The first non-empty poll, within TIMEOUT_S (the broker shares the machine's cores)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not (records := consumer.poll(timeout_ms=200)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
    return records


def test_add_partitions_grows_the_topic_and_a_subscribed_consumer_reads_them(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    assert cli(session_broker, "topics", "create", unique_topic, "-p", "1").returncode == 0
    with (
        Consumer(
            session_broker.bootstrap, auto_offset_reset="earliest", metadata_max_age_ms=200
        ) as consumer,
        Producer(session_broker.bootstrap) as producer,
    ):
        consumer.subscribe([unique_topic])
        assert consumer.poll(timeout_ms=200) == []
        assert producer.partitions_for(unique_topic) == 1  # cached from here on
        added = cli(session_broker, "topics", "add-partitions", unique_topic, "--partitions", "3")
        assert added.returncode == 0, added.stderr
        assert f"topic {unique_topic!r}: partitions 1 -> 3" in added.stderr
        assert described(session_broker, unique_topic)["partitions"] == 3
        # A partition beyond the producer's cached count makes it look again.
        producer.send(unique_topic, b"in the new partition", partition=2).result()
        assert producer.partitions_for(unique_topic) == 3
        # The consumer's next metadata refresh finds partition 2.
        records = poll_until_records(consumer, "the consumer to read the new partition")
        assert [(r.partition, r.value) for r in records] == [(2, b"in the new partition")]
    shrink = cli(session_broker, "topics", "add-partitions", unique_topic, "--partitions", "2")
    assert shrink.returncode == 1
    assert shrink.stderr.startswith("error: INVALID_PARTITIONS: ")
    assert "never removed" in shrink.stderr and len(shrink.stderr.splitlines()) == 1
    missing = cli(session_broker, "topics", "add-partitions", "no-such-topic", "-p", "2")
    assert missing.returncode == 1 and "UNKNOWN_TOPIC" in missing.stderr
    internal = cli(session_broker, "topics", "add-partitions", "__consumer_offsets", "-p", "99")
    assert internal.returncode == 1 and "INVALID_TOPIC" in internal.stderr
    with AdminClient(session_broker.bootstrap) as admin:
        admin.create_partitions(unique_topic, 4)
        assert admin.describe_topic(unique_topic).partition_count == 4


def test_a_producer_finds_added_partitions_at_its_metadata_max_age(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    """Kafka's producer looks its topics up again every `metadata.max.age.ms`: a keyed record
    goes to the partition its key hashes to among the partitions added since, without any send
    failing first."""
    assert cli(session_broker, "topics", "create", unique_topic, "-p", "1").returncode == 0
    key = next(k for k in (b"key-%d" % i for i in range(1000)) if partition_for_key(k, 3) == 2)
    with Producer(session_broker.bootstrap, metadata_max_age_ms=200) as producer:
        assert producer.send(unique_topic, b"before", key=key).result().partition == 0
        added = cli(session_broker, "topics", "add-partitions", unique_topic, "--partitions", "3")
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + TIMEOUT_S
        while producer.send(unique_topic, b"after", key=key).result().partition != 2:
            assert time.monotonic() < deadline, "the producer never looked the topic up again"


def test_delete_records_moves_the_log_start_and_deletes_segments(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    created = cli(session_broker, "topics", "create", unique_topic,
                  "-c", "segment.bytes=2000", "-c", "max.message.bytes=1000")  # fmt: skip
    assert created.returncode == 0, created.stderr
    with Producer(session_broker.bootstrap, batch_bytes=900) as producer:
        futures = [producer.send(unique_topic, b"x" * 50, partition=0) for _ in range(100)]
        producer.flush()
        assert futures[-1].result().offset == 99
    segments_before = described(session_broker, unique_topic)["partition_details"][0]["segments"]  # type: ignore[index]

    deleted = cli(session_broker, "topics", "delete-records", unique_topic,
                  "--partition", "0", "--before", "70", "--json")  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {
        "topic": unique_topic,
        "partition": 0,
        "log_start_offset": 70,
    }
    details = described(session_broker, unique_topic)["partition_details"][0]  # type: ignore[index]
    assert details["log_start_offset"] == 70
    assert details["segments"] < segments_before
    tp = TopicPartition(unique_topic, 0)
    with Consumer(session_broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([tp])
        assert consumer.beginning_offsets([tp]) == {tp: 70}
        consumer.seek(tp, 10)  # below the log start: reset to the earliest, which moved
        records = poll_until_records(consumer, "records from the new log start")
        assert records[0].offset == 70

    too_far = cli(session_broker, "topics", "delete-records", unique_topic,
                  "--partition", "0", "--before", "5000")  # fmt: skip
    assert too_far.returncode == 1
    assert too_far.stderr.startswith("error: OFFSET_OUT_OF_RANGE: ")
    assert len(too_far.stderr.splitlines()) == 1
    no_partition = cli(session_broker, "topics", "delete-records", unique_topic,
                       "--partition", "7", "--before", "1")  # fmt: skip
    assert no_partition.returncode == 1 and "UNKNOWN_PARTITION" in no_partition.stderr
    with AdminClient(session_broker.bootstrap) as admin:
        assert admin.delete_records({(unique_topic, 0): 20}) == {tp: 70}, "never moves back"
        high_watermark = admin.list_offsets([tp], -1)[tp]
        # -1: everything below the high watermark (the log start entry itself lands above it).
        assert admin.delete_records({(unique_topic, 0): -1}) == {tp: high_watermark}
        with pytest.raises(BrokerError) as info:
            admin.delete_records({("__consumer_offsets", 0): 1})
        assert info.value.code is ErrorCode.INVALID_TOPIC


def test_create_if_not_exists_and_the_kafka_named_config_methods(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    assert cli(session_broker, "topics", "create", unique_topic).returncode == 0
    again = cli(session_broker, "topics", "create", unique_topic, "--if-not-exists")
    assert again.returncode == 0 and "exists already" in again.stderr
    refused = cli(session_broker, "topics", "create", unique_topic)
    assert refused.returncode == 1 and refused.stderr.startswith("error: TOPIC_ALREADY_EXISTS")
    altered = cli(session_broker, "topics", "alter-config", unique_topic,
                  "--set", "retention.ms=60000", "--set", "cleanup.policy=compact")  # fmt: skip
    assert altered.returncode == 0, altered.stderr
    assert "retention.ms=60000" in altered.stderr
    bad = cli(session_broker, "topics", "alter-config", unique_topic, "--set", "retention.ms=x")
    assert bad.returncode == 1 and "INVALID_CONFIG" in bad.stderr
    with AdminClient(session_broker.bootstrap) as admin:
        with pytest.raises(TopicAlreadyExistsError) as info:
            admin.create_topic(unique_topic)
        assert isinstance(info.value, BrokerError)
        assert info.value.code is ErrorCode.TOPIC_ALREADY_EXISTS
        admin.create_topic(unique_topic, 5, exist_ok=True)  # left as it is
        assert admin.describe_topic(unique_topic).partition_count == 1
        configs = admin.describe_configs(unique_topic)
        assert configs["retention.ms"] == 60000 and configs["cleanup.policy"] == "compact"
        overrides = admin.alter_configs(unique_topic, {"retention.ms": 1000}, ["cleanup.policy"])
        assert overrides == {"retention.ms": 1000}
        assert admin.describe_configs(unique_topic)["cleanup.policy"] == "delete"
