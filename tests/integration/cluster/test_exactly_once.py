"""Exactly-once on three real brokers: a consume-transform-produce loop (input -> output, the
consumer's offsets sent in each transaction) survives kill -9 of the transaction coordinator's
broker and of partition leaders; afterwards every input record appears exactly once in the output
read with read_committed, and no record of an aborted transaction is visible.

The worker behaves as a Kafka Streams-style application does: on any error it aborts (or, if
that fails too, starts a new producer instance with the same transactional id, which fences the
old one and aborts its open transaction) and rewinds its consumer to the committed offsets. It
also fails on purpose every ABORT_EVERY-th transaction after writing its output, so aborted
output is always in the log for read_committed to hide.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time

import pytest

from client import AdminClient, Consumer, Producer
from client.embedded_cluster import EmbeddedCluster
from client.types import TopicPartition
from tests.integration.cluster import common
from wire import codec

INPUT, OUTPUT, GROUP, TXN_ID = "input", "output", "ctp", "ctp-worker"
PARTITIONS = 3
# The feeder writes while the kills happen; at least this much input makes the test meaningful.
MIN_RECORDS = 500
# Every this many transactions the worker fails after writing its output (and aborts).
ABORT_EVERY = 7
WAIT_S = 120.0


@pytest.fixture
def cluster(group_cluster: EmbeddedCluster) -> EmbeddedCluster:
    return group_cluster


wait_for = functools.partial(common.wait_for, timeout_s=WAIT_S)


class SimulatedFailure(Exception):
    """The worker's processing failing on purpose (every ABORT_EVERY-th transaction)."""


class Feeder:
    """Writes the input while the test runs (so the worker has work across every kill), paced to
    about 200 records/s, with an idempotent producer."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.stop = threading.Event()
        self.sent = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with Producer(self.bootstrap, linger_ms=5, delivery_timeout_ms=120_000) as producer:
                while not self.stop.is_set():
                    producer.send(INPUT, b"in-%d" % self.sent, partition=self.sent % PARTITIONS)
                    self.sent += 1
                    time.sleep(0.005)  # the input's pace: a workload shape, not a wait
                producer.flush()
        except BaseException as exc:
            self.errors.append(exc)


class Worker:
    """The consume-transform-produce loop, in a thread, restarting itself on failures."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.stop = threading.Event()
        self.committed_transactions = 0
        # Input values whose transaction committed (offsets cannot tell: Raft no-ops after each
        # election take offsets of the input partitions too).
        self.processed: set[bytes] = set()
        self.restarts = 0
        self.attempts = 0
        self.errors: list[BaseException] = []
        self.failures: collections.deque[str] = collections.deque(maxlen=5)  # the latest, to report
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._session()
            except Exception as exc:  # a failure of this instance: start a fresh one
                self.restarts += 1
                self.failures.append(repr(exc)[:300])
                if self.restarts > 200:
                    self.errors.append(exc)
                    return
                time.sleep(0.2)  # back off before the next instance, as a supervisor would

    def _session(self) -> None:
        with (
            Producer(self.bootstrap, transactional_id=TXN_ID, linger_ms=5) as producer,
            Consumer(
                self.bootstrap,
                group_id=GROUP,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_poll_records=50,  # small transactions: many of them across the kills
                session_timeout_ms=3_000,
                heartbeat_interval_ms=500,
            ) as consumer,
        ):
            producer.init_transactions()
            consumer.subscribe([INPUT])
            while not self.stop.is_set():
                records = consumer.poll(timeout_ms=200)
                if not records:
                    continue
                producer.begin_transaction()
                try:
                    next_offsets: dict[TopicPartition, int] = {}
                    for record in records:
                        value = b"out-" + (record.value or b"")
                        producer.send(OUTPUT, value, key=record.key)
                        tp = TopicPartition(record.topic, record.partition)
                        next_offsets[tp] = max(next_offsets.get(tp, 0), record.offset + 1)
                    producer.send_offsets_to_transaction(next_offsets, consumer.group_metadata())
                    self.attempts += 1
                    if self.attempts % ABORT_EVERY == 0:
                        # A processing failure after the output was written: the attempt is
                        # aborted, its output must never be seen, and its input is redone.
                        producer.flush()
                        raise SimulatedFailure(f"attempt {self.attempts} fails on purpose")
                    producer.commit_transaction()
                    self.committed_transactions += 1
                    self.processed.update(record.value or b"" for record in records)
                except Exception:
                    with contextlib.suppress(Exception):
                        producer.abort_transaction()
                    raise  # rewind: a new session re-reads from the committed offsets


def transaction_coordinator(cluster: EmbeddedCluster) -> int:
    """The broker that coordinates TXN_ID (-1: none known yet)."""
    return common.find_coordinator(cluster, TXN_ID, codec.COORDINATOR_KEY_TRANSACTION)


def read_topic(bootstrap: str, topic: str, isolation_level: str) -> list[bytes]:
    values: list[bytes] = []
    with Consumer(bootstrap, auto_offset_reset="earliest", isolation_level=isolation_level) as c:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(partitions)
        ends = c.end_offsets(partitions)
        deadline = time.monotonic() + 60
        while any(c.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, "reading the output did not reach its end"
            values += [record.value or b"" for record in c.poll(timeout_ms=200)]
    return values


@pytest.mark.slow
def test_consume_transform_produce_is_exactly_once_through_broker_kills(
    cluster: EmbeddedCluster,
) -> None:
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(INPUT, partitions=PARTITIONS, replication_factor=3)
        admin.create_topic(OUTPUT, partitions=PARTITIONS, replication_factor=3)
    feeder = Feeder(cluster.bootstrap)
    worker = Worker(cluster.bootstrap)
    feeder.thread.start()
    worker.thread.start()
    kills: list[str] = []
    try:
        wait_for(lambda: worker.committed_transactions >= 2, "the first transactions")
        # 1. kill -9 the transaction coordinator's broker mid-stream, then bring it back.
        coordinator = wait_for(
            lambda: (n := transaction_coordinator(cluster)) > 0 and n, "a coordinator"
        )
        cluster.kill(coordinator)
        kills.append(f"coordinator {coordinator}")
        progress = worker.committed_transactions
        wait_for(
            lambda: worker.committed_transactions > progress,
            "progress after the kill",
        )
        cluster.start(coordinator)
        cluster.wait_ready(WAIT_S)
        # 2. kill -9 each other broker in turn (partition leaders of input and output).
        for node in [n for n in cluster.node_ids if n != coordinator]:
            progress = worker.committed_transactions
            cluster.kill(node)
            kills.append(f"broker {node}")
            wait_for(
                lambda p=progress: worker.committed_transactions > p,
                f"progress after killing {node}",
            )
            cluster.start(node)
            cluster.wait_ready(WAIT_S)
        feeder.stop.set()
        feeder.thread.join(WAIT_S)
        assert not feeder.errors, feeder.errors
        inputs = read_topic(cluster.bootstrap, INPUT, "read_uncommitted")
        assert len(inputs) >= MIN_RECORDS, f"only {len(inputs)} input records were written"
        wait_for(lambda: worker.processed >= set(inputs), "every input to be processed")
    except AssertionError as exc:  # say what the worker went through
        raise AssertionError(
            f"{exc}; kills {kills}, worker restarts {worker.restarts}, transactions "
            f"{worker.committed_transactions}, latest failures {list(worker.failures)}"
        ) from exc
    finally:
        feeder.stop.set()
        worker.stop.set()
        worker.thread.join(60)
    assert not worker.errors, worker.errors
    assert not worker.thread.is_alive(), "the worker did not stop"
    committed = read_topic(cluster.bootstrap, OUTPUT, "read_committed")
    expected = sorted(b"out-" + value for value in inputs)
    assert len(committed) == len(set(committed)), (
        f"{len(committed) - len(set(committed))} duplicate(s) visible to read_committed",
        kills,
    )
    assert sorted(committed) == expected, ("output differs from the input", kills)
    # The aborted attempts' output is in the log (read_uncommitted sees it), never in the above.
    everything = read_topic(cluster.bootstrap, OUTPUT, "read_uncommitted")
    assert set(everything) >= set(committed)
    assert len(everything) > len(committed), "no aborted output in the log: nothing was tested"
    print(
        f"kills: {kills}; transactions committed {worker.committed_transactions}, worker "
        f"restarts {worker.restarts}, records in the output log {len(everything)} "
        f"(of which visible to read_committed {len(committed)})"
    )
