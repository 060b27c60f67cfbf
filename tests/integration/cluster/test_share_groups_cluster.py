"""Share groups on three real brokers: workers drain a queue while the broker leading the group's
share state (its `__share_group_state` partition: the share coordinator) is killed with -9 and
brought back, then the topic partition's leader too. Afterwards every record was accepted exactly
once or is in the dead-letter topic, no acknowledgement the broker confirmed was lost (an accepted
record is never handed out again, even after the failover), and rejected records are dead-lettered
with their headers (docs/queues.md, "Guarantees")."""

from __future__ import annotations

import collections
import functools
import threading
import time

import pytest

from client import AdminClient, Consumer, Producer, ShareConsumer, TopicPartition
from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster import common
from wire import codec

TOPIC, DLQ, GROUP = "jobs", "jobs.dlq", "workers"
RECORDS = 3_000
POISON_EVERY = 50  # values job-0, job-50, ... are rejected: they must end in the DLQ
WORKERS = 3
WAIT_S = 120.0

wait_for = functools.partial(common.wait_for, timeout_s=WAIT_S)


def is_poison(value: bytes) -> bool:
    return int(value.split(b"-")[1]) % POISON_EVERY == 0


class Workers:
    """WORKERS threads, each a share consumer in explicit mode: accept (or reject a poison
    record), then `commit()`; what the broker confirmed is recorded per value. A worker whose
    consumer fails starts a new one (a new member), as a supervisor would."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.accepted = collections.Counter[bytes]()  # confirmed ACCEPTs per value
        self.rejected: set[bytes] = set()  # confirmed REJECTs
        self.delivered: set[bytes] = set()
        # Acknowledgements not confirmed (the coordinator failed over while writing them): each
        # was applied or not, and its record is done or comes back.
        self.unconfirmed = 0
        self.restarts = 0
        self.failures: collections.deque[str] = collections.deque(maxlen=5)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(WORKERS)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._session()
            except Exception as exc:
                with self.lock:
                    self.restarts += 1
                    self.failures.append(repr(exc)[:300])
                time.sleep(0.2)  # back off before a new consumer, as a supervisor would

    def _session(self) -> None:
        with ShareConsumer(
            self.bootstrap,
            group_id=GROUP,
            acknowledgement_mode="explicit",
            max_poll_records=20,
        ) as consumer:
            consumer.subscribe([TOPIC])
            while not self.stop.is_set():
                records = consumer.poll(timeout_ms=200)
                decided: dict[TopicPartition, list[tuple[bytes, str]]] = {}
                for record in records:
                    value = record.value or b""
                    outcome = "reject" if is_poison(value) else "accept"
                    consumer.acknowledge(record, outcome)
                    tp = TopicPartition(record.topic, record.partition)
                    decided.setdefault(tp, []).append((value, outcome))
                if not decided:
                    continue
                results = consumer.commit()
                with self.lock:
                    self.delivered.update(record.value or b"" for record in records)
                    for tp, outcomes in decided.items():
                        if results.get(tp) is not None:
                            self.unconfirmed += len(outcomes)
                            continue
                        for value, outcome in outcomes:
                            if outcome == "accept":
                                self.accepted[value] += 1
                            else:
                                self.rejected.add(value)

    def done(self) -> set[bytes]:
        with self.lock:
            return set(self.accepted) | self.rejected

    def seen(self) -> set[bytes]:
        with self.lock:
            return set(self.delivered)


def share_coordinator(cluster: EmbeddedCluster) -> int:
    """The broker leading GROUP's share state (-1: none known yet)."""
    return common.find_coordinator(cluster, GROUP, codec.COORDINATOR_KEY_SHARE)


def describe(bootstrap: str) -> object:
    try:
        with AdminClient(bootstrap) as admin:
            return admin.describe_share_group(GROUP)
    except Exception as exc:  # a diagnostic only
        return exc


def drained(bootstrap: str) -> bool:
    with AdminClient(bootstrap) as admin:
        (partition,) = admin.describe_share_group(GROUP).partitions
    return partition.in_flight == 0 and partition.backlog == 0


def dead_letters(bootstrap: str) -> list[tuple[bytes, dict[str, bytes]]]:
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        tp = TopicPartition(DLQ, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        out: list[tuple[bytes, dict[str, bytes]]] = []
        deadline = time.monotonic() + 60
        while consumer.position(tp) < end:
            assert time.monotonic() < deadline, "reading the dead-letter topic did not end"
            out += [(r.value or b"", dict(r.headers or ())) for r in consumer.poll(timeout_ms=200)]
    return out


@pytest.mark.slow
def test_share_group_loses_no_acknowledgement_through_coordinator_and_leader_kills(
    group_cluster: EmbeddedCluster,
) -> None:
    cluster = group_cluster
    values = [b"job-%d" % i for i in range(RECORDS)]
    poison = {value for value in values if is_poison(value)}
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=1, replication_factor=3)
        admin.create_topic(DLQ, partitions=1, replication_factor=3)
        admin.alter_group_config(
            GROUP,
            {
                "share.auto.offset.reset": "earliest",
                "share.dead.letter.topic": DLQ,
                "share.record.lock.duration.ms": 3_000,
            },
        )
    with Producer(cluster.bootstrap, linger_ms=2) as producer:
        for value in values:
            producer.send(TOPIC, value)
        producer.flush()
    workers = Workers(cluster.bootstrap)
    for thread in workers.threads:
        thread.start()
    kills: list[str] = []
    try:
        wait_for(lambda: len(workers.done()) >= RECORDS // 5, "the first records")
        coordinator = wait_for(lambda: (n := share_coordinator(cluster)) > 0 and n, "coordinator")
        cluster.kill(coordinator)
        kills.append(f"share coordinator {coordinator}")
        progress = len(workers.done())
        wait_for(lambda: len(workers.done()) > progress + 50, "progress after the kill")
        cluster.start(coordinator)
        cluster.wait_ready(WAIT_S)
        # Then the topic partition's leader (maybe the same broker again: both roles at once).
        # Its leader, once it has one again (the restart may have moved it: an election).
        with AdminClient(cluster.bootstrap) as admin:
            leader = wait_for(
                lambda: (node := admin.describe_topic(TOPIC).partitions[0].leader_id) > 0 and node,
                "a leader of the topic's partition",
            )
        cluster.kill(leader)
        kills.append(f"topic leader {leader}")
        progress = len(workers.done())
        wait_for(
            lambda: len(workers.done()) > progress + 20 or workers.seen() >= set(values),
            "progress after the second kill",
        )
        cluster.start(leader)
        cluster.wait_ready(WAIT_S)
        # The end: every record delivered, and the queue drained (everything acknowledged,
        # archived, or gap-acknowledged: the Raft no-ops) with nothing left past it.
        wait_for(lambda: workers.seen() >= set(values), "every record to be delivered")
        wait_for(lambda: drained(cluster.bootstrap), "the share partition to be drained")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; kills {kills}, done {len(workers.done())} (seen {len(workers.seen())}) of "
            f"{RECORDS}, restarts "
            f"{workers.restarts}, latest failures {list(workers.failures)}; the group: "
            f"{describe(cluster.bootstrap)}"
        ) from exc
    finally:
        workers.stop.set()
        for thread in workers.threads:
            thread.join(60)
    twice = {value: n for value, n in workers.accepted.items() if n > 1}
    assert not twice, f"accepted more than once after a confirmed accept: {twice}; {kills}"
    assert not (set(workers.accepted) & poison)
    assert workers.rejected <= poison
    # A record whose REJECT was not confirmed may have been rejected all the same: either way it
    # is in the DLQ (or was accepted, had it come back: it never does, the worker rejects it).
    # Every rejected record reaches the DLQ (at least once: twice only across a failover).
    wait_for(lambda: {v for v, _ in dead_letters(cluster.bootstrap)} == poison, "dead letters")
    letters = dead_letters(cluster.bootstrap)
    assert not ({value for value, _ in letters} & set(workers.accepted)), "accepted, yet in DLQ"
    for _, headers in letters:
        assert headers["dlq.group"] == GROUP.encode() and headers["dlq.source.topic"] == b"jobs"
        assert headers["dlq.reason"] == b"rejected"

    print(
        f"kills {kills}; confirmed accepts {len(workers.accepted)}, unconfirmed "
        f"acknowledgements {workers.unconfirmed}, worker restarts {workers.restarts}, dead "
        f"letters {len(letters)} ({len(poison)} poison records)"
    )
