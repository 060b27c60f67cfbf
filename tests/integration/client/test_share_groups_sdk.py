"""Share groups (queues) through the SDK against a real `broker serve`: several workers on one
partition, a consumer killed while holding records, poison records dead-lettered with their
headers, release with a delay, the CLI's view (docs/queues.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest

from client import AdminClient, Consumer, Producer, ShareConsumer, TopicPartition
from client.embedded import EmbeddedBroker
from client.pytest_plugin import run_broker
from tests.cli_process import CLI
from tests.integration.cluster.common import wait_for

DEADLINE_S = 30.0


@pytest.fixture
def share_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """A broker whose share members time out fast (a killed consumer is noticed in 3 s)."""
    yield from run_broker(request, extra_args=("--set", "share_session_timeout_ms=3000"))


def setup_queue(bootstrap: str, topic: str, values: list[bytes], **configs: object) -> None:
    """Create `topic` (1 partition), configure group `workers` (earliest, plus `configs`) and
    produce `values`."""
    with AdminClient(bootstrap) as admin:
        admin.create_topic(topic, 1)
        admin.alter_group_config("workers", {"share.auto.offset.reset": "earliest", **configs})
    with Producer(bootstrap, linger_ms=1) as producer:
        for value in values:
            producer.send(topic, value)
        producer.flush()


def drain(consumer: ShareConsumer, want: int, handle: object = None) -> list[object]:
    """Poll until `want` records were returned (or the deadline); `handle(record)` acknowledges
    each (default: accept implicitly)."""
    seen: list[object] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(seen) < want:
        assert time.monotonic() < deadline, f"got {len(seen)} of {want} records"
        for record in consumer.poll(timeout_ms=500):
            seen.append(record)
            if callable(handle):
                handle(record)
    return seen


def test_four_workers_share_one_partition_and_no_record_goes_to_two(broker: EmbeddedBroker) -> None:
    count = 4_000
    setup_queue(broker.bootstrap, "jobs", [str(i).encode() for i in range(count)])
    deliveries: dict[int, list[tuple[int, int]]] = {}
    lock = threading.Lock()
    total = Counter[int]()
    done = threading.Event()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(index: int) -> None:
        try:
            with ShareConsumer(
                broker.bootstrap,
                group_id="workers",
                acknowledgement_mode="explicit",
                max_poll_records=50,
            ) as consumer:
                consumer.subscribe(["jobs"])
                start.wait(timeout=DEADLINE_S)
                deadline = time.monotonic() + DEADLINE_S
                while not done.is_set() and time.monotonic() < deadline:
                    records = consumer.poll(timeout_ms=200)
                    with lock:
                        for record in records:
                            deliveries.setdefault(record.offset, []).append(
                                (index, record.delivery_count)
                            )
                            total[index] += 1
                        if len(deliveries) >= count:
                            done.set()
                    for record in records:
                        consumer.acknowledge(record, "accept")
                    results = consumer.commit()
                    assert all(error is None for error in results.values()), results
        except BaseException as exc:
            errors.append(exc)
            done.set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S + 10)
    assert not errors, errors
    assert sorted(deliveries) == list(range(count))
    # Locks never expired (30 s): each record went to exactly one worker, once.
    twice = {offset: who for offset, who in deliveries.items() if len(who) != 1}
    assert not twice, f"records delivered more than once: {dict(list(twice.items())[:5])}"
    assert all(who[0][1] == 1 for who in deliveries.values())
    assert sorted(total) == [0, 1, 2, 3], f"not every worker got work: {dict(total)}"
    with AdminClient(broker.bootstrap) as admin:
        (partition,) = admin.describe_share_group("workers").partitions
    assert partition.start_offset == count and partition.in_flight == 0


KILLED_CONSUMER = """
import sys
from client import ShareConsumer
consumer = ShareConsumer(sys.argv[1], group_id="workers", acknowledgement_mode="explicit")
consumer.subscribe(["jobs"])
got = []
while not got:
    got = consumer.poll(timeout_ms=1000)
print(" ".join(str(r.offset) for r in got), flush=True)
sys.stdin.read()  # hold the records until killed
"""


def test_records_of_a_killed_consumer_are_redelivered_after_the_lock(
    share_broker: EmbeddedBroker,
) -> None:
    bootstrap = share_broker.bootstrap
    setup_queue(bootstrap, "jobs", [b"a", b"b", b"c"], **{"share.record.lock.duration.ms": 2_000})
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CONSUMER, bootstrap],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert child.stdout is not None
        held = [int(offset) for offset in child.stdout.readline().split()]
        assert held == [0, 1, 2]
        killed_at = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        with ShareConsumer(bootstrap, group_id="workers") as consumer:
            consumer.subscribe(["jobs"])
            again = drain(consumer, 3)
        waited = time.monotonic() - killed_at
    finally:
        child.kill()
        child.wait(10)
    assert [(r.offset, r.value, r.delivery_count) for r in again] == [
        (0, b"a", 2),
        (1, b"b", 2),
        (2, b"c", 2),
    ]
    # Not before the lock ran out (2 s from the acquisition, which came before the kill).
    assert waited > 0.5
    with AdminClient(bootstrap) as admin:
        (partition,) = admin.describe_share_group("workers").partitions
    assert partition.lock_expired_total == 3 and partition.redelivered_total == 3


def read_all(bootstrap: str, topic: str, count: int) -> list[object]:
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        records: list[object] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(records) < count:
            assert time.monotonic() < deadline, f"{topic}: got {len(records)} of {count}"
            records += consumer.poll(timeout_ms=500)
        return records


def test_poison_records_go_to_the_dead_letter_topic_and_the_queue_moves_on(
    broker: EmbeddedBroker,
) -> None:
    bootstrap = broker.bootstrap
    with AdminClient(bootstrap) as admin:
        admin.create_topic("jobs.dlq", 1)
    values = [b"ok-0", b"poison-reject", b"ok-1", b"poison-fail", b"ok-2"]
    setup_queue(
        bootstrap,
        "jobs",
        values,
        **{
            "share.dead.letter.topic": "jobs.dlq",
            "share.delivery.count.limit": 3,
            "share.record.lock.duration.ms": 1_000,
        },
    )
    accepted: list[bytes] = []
    deliveries = Counter[bytes]()
    with ShareConsumer(bootstrap, group_id="workers", acknowledgement_mode="explicit") as consumer:
        consumer.subscribe(["jobs"])
        deadline = time.monotonic() + DEADLINE_S
        while len(accepted) < 3 or deliveries[b"poison-fail"] < 3:
            assert time.monotonic() < deadline, (accepted, deliveries)
            for record in consumer.poll(timeout_ms=300):
                deliveries[record.value] += 1
                if record.value == b"poison-reject":
                    consumer.acknowledge(record, "reject")
                elif record.value == b"poison-fail":
                    consumer.acknowledge(record, "release")  # fails every time
                else:
                    consumer.acknowledge(record, "accept")
                    accepted.append(record.value)
            consumer.commit()
    assert sorted(accepted) == [b"ok-0", b"ok-1", b"ok-2"]
    assert deliveries[b"poison-reject"] == 1 and deliveries[b"poison-fail"] == 3
    dead = read_all(bootstrap, "jobs.dlq", 2)
    by_value = {record.value: dict(record.headers) for record in dead}
    assert by_value[b"poison-reject"] == {
        "dlq.group": b"workers",
        "dlq.source.topic": b"jobs",
        "dlq.source.partition": b"0",
        "dlq.source.offset": b"1",
        "dlq.delivery.count": b"1",
        "dlq.reason": b"rejected",
    }
    assert by_value[b"poison-fail"]["dlq.source.offset"] == b"3"
    assert by_value[b"poison-fail"]["dlq.delivery.count"] == b"3"
    assert by_value[b"poison-fail"]["dlq.reason"] == b"delivery-limit"
    with AdminClient(bootstrap) as admin:
        description = admin.describe_share_group("workers")
    (partition,) = description.partitions
    assert partition.start_offset == len(values)  # the queue moved past both
    assert partition.dead_lettered_total == 2 and description.dead_letter_writes == 2


def test_release_with_a_delay_hands_the_record_out_again_only_after_it(
    broker: EmbeddedBroker,
) -> None:
    setup_queue(broker.bootstrap, "jobs", [b"retry-me"])
    with ShareConsumer(
        broker.bootstrap, group_id="workers", acknowledgement_mode="explicit"
    ) as consumer:
        consumer.subscribe(["jobs"])
        (first,) = drain(consumer, 1)
        consumer.acknowledge(first, "release", delay_ms=1_500)
        released_at = time.monotonic()
        consumer.commit()
        (second,) = drain(consumer, 1)
        waited = time.monotonic() - released_at
        consumer.acknowledge(second, "accept")
        consumer.commit()
    assert (second.offset, second.delivery_count) == (0, 2)
    assert waited >= 1.4


def test_cli_configures_describes_and_consumes_a_share_group(broker: EmbeddedBroker) -> None:
    bootstrap = broker.bootstrap
    setup_queue(bootstrap, "jobs", [b"one", b"two"])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--bootstrap", bootstrap, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    configured = cli("groups", "configure", "workers", "--delivery-limit", "4")
    assert configured.returncode == 0, configured.stderr
    assert "share.delivery.count.limit" in configured.stdout and "4" in configured.stdout
    bad = cli("groups", "configure", "workers", "--delivery-limit", "99")
    assert bad.returncode != 0 and "share.delivery.count.limit" in bad.stderr + bad.stdout
    consumed = cli("consume", "jobs", "--share-group", "workers", "--max-messages", "2")
    assert consumed.returncode == 0, consumed.stderr
    assert "one" in consumed.stdout and "two" in consumed.stdout
    described = cli("groups", "describe", "workers")
    assert described.returncode == 0, described.stderr
    assert "jobs" in described.stdout


def metric(broker: EmbeddedBroker, name: str, labels: str) -> float | None:
    with urllib.request.urlopen(f"http://{broker.metrics_address}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(f"{name}{{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_show_the_queue_its_lag_and_redeliveries(share_broker: EmbeddedBroker) -> None:
    bootstrap = share_broker.bootstrap
    setup_queue(bootstrap, "jobs", [b"a", b"b", b"c", b"d"])
    labels = 'group="workers",partition="0",topic="jobs"'
    with ShareConsumer(bootstrap, group_id="workers", acknowledgement_mode="explicit") as consumer:
        consumer.subscribe(["jobs"])
        first = drain(consumer, 4)
        for record in first:
            consumer.acknowledge(record, "release", delay_ms=5_000)  # waits in the queue
        consumer.commit()
        # The snapshot behind /metrics is rebuilt each second: wait for one with the release.
        wait_for(
            lambda: metric(share_broker, "broker_share_partition_available_records", labels) == 4,
            "4 available records on /metrics",
            timeout_s=DEADLINE_S,
        )
        assert metric(share_broker, "broker_share_partition_acquired_records", labels) == 0
        age = metric(share_broker, "broker_share_partition_oldest_available_age_seconds", labels)
        assert age is not None and age > 0  # the records were appended before the release
    with ShareConsumer(bootstrap, group_id="workers", acknowledgement_mode="explicit") as consumer:
        consumer.subscribe(["jobs"])
        again = drain(consumer, 4)
        for record in again:
            consumer.acknowledge(record, "accept")
        consumer.commit()
    assert {r.delivery_count for r in again} == {2}
    wait_for(
        lambda: (
            metric(share_broker, "broker_share_partition_redelivered_records_total", labels) == 4
        ),
        "4 redeliveries on /metrics",
        timeout_s=DEADLINE_S,
    )
