"""Idempotence and transactions through the SDK against a real `broker serve`: atomic commits and
aborts seen through read_committed, offsets committed inside a transaction, zombie fencing, a
transaction aborted by the coordinator's timeout, and the CLI's view of transactions."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from client import AdminClient, Consumer, Producer, TopicPartition
from client.embedded import EmbeddedBroker
from client.errors import ProducerFencedError, TransactionAbortedError
from client.pytest_plugin import run_broker
from tests.integration.client.reading import READ_DEADLINE_S, read_records


@pytest.fixture
def fast_timeouts_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """A broker whose coordinators look for timed-out transactions every 100 ms."""
    yield from run_broker(
        request,
        extra_args=("--set", "transaction_timeout_check_interval_ms=100"),
    )


def create(bootstrap: str, *topics: str, partitions: int = 1) -> None:
    with AdminClient(bootstrap) as admin:
        for topic in topics:
            admin.create_topic(topic, partitions)


@contextlib.contextmanager
def in_transaction(
    bootstrap: str, topic: str, first: bytes, **options: object
) -> Iterator[Producer]:
    """A transactional producer (id `<topic>-tx`) with a transaction begun, `first` sent to
    `topic` and flushed (so the partition has an open transaction)."""
    with Producer(bootstrap, transactional_id=f"{topic}-tx", **options) as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, first)
        producer.flush()
        yield producer


def read_all(bootstrap: str, topic: str, partitions: int, isolation_level: str) -> list[bytes]:
    """Every value of `topic` up to its end offsets, as `isolation_level` sees it."""
    return [r.value or b"" for r in read_records(bootstrap, topic, partitions, isolation_level)]


def test_committed_and_aborted_transactions_as_read_committed_sees_them(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic, partitions=2)
    with Producer(bootstrap, transactional_id=f"{unique_topic}-tx") as producer:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(10):
            producer.send(unique_topic, b"kept-%d" % i, partition=i % 2)
        producer.commit_transaction()
        producer.begin_transaction()
        for i in range(10):
            producer.send(unique_topic, b"dropped-%d" % i, partition=i % 2)
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(unique_topic, b"kept-last", partition=0)
        producer.commit_transaction()
    committed = read_all(bootstrap, unique_topic, 2, "read_committed")
    assert sorted(committed) == sorted([b"kept-%d" % i for i in range(10)] + [b"kept-last"])
    everything = read_all(bootstrap, unique_topic, 2, "read_uncommitted")
    assert {b"dropped-%d" % i for i in range(10)} <= set(everything)


def test_offsets_sent_in_a_transaction_commit_with_it(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    # Goal: consume-transform-produce on one broker. The consumer's offsets go into the
    # transaction: an aborted transaction leaves them where they were, a committed one moves
    # them, and the output of the aborted attempt is invisible to read_committed.
    bootstrap = session_broker.bootstrap
    source, sink, group = f"{unique_topic}-in", f"{unique_topic}-out", f"{unique_topic}-g"
    create(bootstrap, source, sink)
    with Producer(bootstrap) as plain:
        for i in range(20):
            plain.send(source, b"%d" % i)
    with (
        Producer(bootstrap, transactional_id=f"{unique_topic}-ctp") as producer,
        Consumer(
            bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        ) as consumer,
    ):
        producer.init_transactions()
        consumer.subscribe([source])
        records: list = []
        deadline = time.monotonic() + READ_DEADLINE_S
        while len(records) < 20:
            assert time.monotonic() < deadline, f"only {len(records)} input records arrived"
            records += consumer.poll(timeout_ms=200)
        offsets = {TopicPartition(source, 0): records[-1].offset + 1}
        for attempt, outcome in (("first", "abort"), ("second", "commit")):
            producer.begin_transaction()
            for record in records:
                producer.send(sink, attempt.encode() + b"-" + (record.value or b""))
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            if outcome == "abort":
                producer.abort_transaction()
                with AdminClient(bootstrap) as admin:
                    committed = {
                        o.partition: o.committed_offset for o in admin.describe_group(group).offsets
                    }
                assert committed.get(0, -1) in (-1, None), committed
            else:
                producer.commit_transaction()
    with AdminClient(bootstrap) as admin:
        committed = {o.partition: o.committed_offset for o in admin.describe_group(group).offsets}
    assert committed == {0: 20}
    output = read_all(bootstrap, sink, 1, "read_committed")
    assert output == [b"second-%d" % i for i in range(20)]


def test_a_second_instance_fences_the_first(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    # Goal: the zombie's open transaction is aborted when a new instance with the same
    # transactional id initialises, and the zombie's next call is refused for good.
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic)
    with in_transaction(bootstrap, unique_topic, b"zombie") as zombie:
        with Producer(bootstrap, transactional_id=f"{unique_topic}-tx") as fresh:
            fresh.init_transactions()
            fresh.begin_transaction()
            fresh.send(unique_topic, b"fresh")
            fresh.commit_transaction()
        with pytest.raises(ProducerFencedError):
            zombie.commit_transaction()
    assert read_all(bootstrap, unique_topic, 1, "read_committed") == [b"fresh"]


def test_the_coordinator_aborts_a_transaction_past_its_timeout(
    fast_timeouts_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = fast_timeouts_broker.bootstrap
    create(bootstrap, unique_topic)
    with in_transaction(
        bootstrap, unique_topic, b"too-slow", transaction_timeout_ms=500
    ) as producer:
        deadline = time.monotonic() + READ_DEADLINE_S
        with AdminClient(bootstrap) as admin:
            while True:  # the coordinator aborts it: the transaction shows CompleteAbort
                (description,) = admin.describe_transactions([f"{unique_topic}-tx"])
                if description.state == "CompleteAbort":
                    break
                assert time.monotonic() < deadline, description
                time.sleep(0.05)
        with pytest.raises(TransactionAbortedError):
            producer.commit_transaction()
        producer.abort_transaction()  # recovers (KIP-360): a new transaction may begin
        producer.begin_transaction()
        producer.send(unique_topic, b"on-time")
        producer.commit_transaction()
    assert read_all(bootstrap, unique_topic, 1, "read_committed") == [b"on-time"]


def test_cli_lists_and_describes_transactions_and_consumes_read_committed(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    create(bootstrap, unique_topic)
    txn_id = f"{unique_topic}-tx"
    with in_transaction(bootstrap, unique_topic, b"committed") as producer:
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send(unique_topic, b"open")
        producer.flush()

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "cli.broker_cli", "--bootstrap", bootstrap, *args],
                capture_output=True,
                text=True,
                timeout=60,
            )

        listed = cli("transactions", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["transactional_id"]: row for row in json.loads(listed.stdout)}
        assert rows[txn_id]["state"] == "Ongoing"
        described = cli("transactions", "describe", txn_id, "--json")
        assert described.returncode == 0, described.stderr
        detail = json.loads(described.stdout)
        assert detail["state"] == "Ongoing"
        assert detail["partitions"] == [f"{unique_topic}-0"]
        consumed = cli(
            "consume", unique_topic, "--from-beginning", "--isolation-level", "read_committed",
            "--timeout", "3",
        )  # fmt: skip
        assert consumed.returncode == 0, consumed.stderr
        assert consumed.stdout.split() == ["committed"]  # the open transaction is not visible
        producer.abort_transaction()


def scrape(broker: EmbeddedBroker) -> str:
    url = f"http://{broker.metrics_address}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def test_metrics_show_transactions_and_the_stable_offset_lag(
    broker: EmbeddedBroker, unique_topic: str
) -> None:
    # Goal: /metrics counts what the coordinators did and shows how far an open transaction
    # holds read_committed consumers back (HW - LSO).
    create(broker.bootstrap, unique_topic)
    with in_transaction(broker.bootstrap, unique_topic, b"a") as producer:
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send(unique_topic, b"b")
        producer.send(unique_topic, b"c")
        producer.flush()
        deadline = time.monotonic() + READ_DEADLINE_S
        lag_line = f'broker_last_stable_offset_lag{{partition="0",topic="{unique_topic}"}} 2.0'
        wanted = (lag_line, "broker_transactions_committed 1.0", "broker_transactions_ongoing 1.0")
        while not all(line in (text := scrape(broker)) for line in wanted):
            # The metrics snapshots are refreshed about once a second.
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.1)
        producer.abort_transaction()
    deadline = time.monotonic() + READ_DEADLINE_S
    while "broker_transactions_aborted 1.0" not in (text := scrape(broker)):
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.1)
