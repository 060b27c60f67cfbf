"""Chaos: an idempotent acks=all producer and a consumer run while brokers are killed, restarted
and cut off; afterwards nothing acknowledged is lost and nothing is written twice.

The fault schedule comes from a seeded RNG, printed at the start (replay it with
`pytest tests/integration/cluster/test_chaos.py --chaos-seed N`; `--chaos-seconds` sets how long
faults are injected, CI uses the default). At most one broker is faulty at a time, so a majority
can always make progress; each fault lasts long enough for elections to happen.

Afterwards the whole committed log of every partition is read from the healed cluster (the
truth) and the checker proves:
1. every acknowledged record is in the log exactly where its acknowledgement said
   (partition, offset), with its value;
2. every (partition, offset) holds one value across all reads (the live consumer's and the
   final one);
3. the live consumer saw no gaps and no reorderings within a partition: between two records it
   returned, the log holds no other data record, and offsets only grew.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator

import pytest

from client import Consumer, Producer
from client.embedded_cluster import EmbeddedCluster
from client.types import TopicPartition

TOPIC = "chaos"
PARTITIONS = 3
FAST_RAFT = (
    "--set", "raft_tick_ms=50",
    "--set", "broker_heartbeat_interval_ms=200",
    "--set", "broker_session_timeout_ms=2000",
)  # fmt: skip
# A fault lasts this long (seconds), then the cluster gets a quiet spell of the same range.
FAULT_S = (1.0, 3.0)
# Bound on waiting for the cluster to settle after the faults stop.
SETTLE_S = 60.0


@dataclasses.dataclass
class Ledger:
    """What the clients saw, filled by their threads."""

    acked: list[tuple[int, int, bytes]] = dataclasses.field(default_factory=list)
    unknown: int = 0
    consumed: dict[int, list[tuple[int, bytes]]] = dataclasses.field(
        default_factory=lambda: {p: [] for p in range(PARTITIONS)}
    )
    errors: list[BaseException] = dataclasses.field(default_factory=list)


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--chaos-seed")
    seed = random.SystemRandom().randrange(1, 2**31) if seed is None else int(seed)
    print(f"\nchaos fault schedule seed: {seed} (replay: --chaos-seed {seed})")
    return seed


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3, proxies=True, extra_args=FAST_RAFT) as running:
        yield running


def _produce(bootstrap: str, ledger: Ledger, stop: threading.Event) -> None:
    try:
        with Producer(
            bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            delivery_timeout_ms=60_000,
        ) as producer:
            sequence = 0
            pending = []
            while not stop.is_set():
                value = b"v%d" % sequence
                future = producer.send(TOPIC, value, partition=sequence % PARTITIONS)
                pending.append((value, future))
                sequence += 1
                if len(pending) >= 50:
                    _settle(pending, ledger)
                    pending = []
            _settle(pending, ledger)
    except BaseException as exc:  # reported by the test, not lost in the thread
        ledger.errors.append(exc)


def _settle(pending: list[tuple[bytes, object]], ledger: Ledger) -> None:
    for value, future in pending:
        try:
            metadata = future.result()  # type: ignore[attr-defined]
        except Exception:
            ledger.unknown += 1  # not acknowledged: it may or may not be in the log
            continue
        ledger.acked.append((metadata.partition, metadata.offset, value))


def _consume(bootstrap: str, ledger: Ledger, stop: threading.Event) -> None:
    try:
        with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
            consumer.assign([(TOPIC, p) for p in range(PARTITIONS)])
            while not stop.is_set():
                for record in consumer.poll(timeout_ms=200):
                    ledger.consumed[record.partition].append((record.offset, record.value or b""))
    except BaseException as exc:
        ledger.errors.append(exc)


def _read_everything(bootstrap: str) -> dict[int, dict[int, bytes]]:
    """Every data record of every partition, read from the beginning up to the end offsets."""
    truth: dict[int, dict[int, bytes]] = {p: {} for p in range(PARTITIONS)}
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + SETTLE_S
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, "the final read did not reach the end offsets"
            for record in consumer.poll(timeout_ms=200):
                truth[record.partition][record.offset] = record.value or b""
    return truth


def _inject_faults(cluster: EmbeddedCluster, rng: random.Random, seconds: float) -> list[str]:
    """Kill/restart and isolate/heal brokers at random, one at a time; the schedule it ran."""
    schedule = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        node = rng.choice(cluster.node_ids)
        fault_s = rng.uniform(*FAULT_S)
        if rng.random() < 0.5:
            schedule.append(f"kill {node} for {fault_s:.1f}s")
            cluster.kill(node)
            time.sleep(fault_s)  # the fault's duration: the schedule itself, not a wait
            cluster.start(node)
        else:
            schedule.append(f"isolate {node} for {fault_s:.1f}s")
            cluster.isolate(node)
            time.sleep(fault_s)
            cluster.heal()
        time.sleep(rng.uniform(*FAULT_S))
    return schedule


@pytest.mark.slow
def test_nothing_acknowledged_is_lost_under_kills_and_partitions(
    cluster: EmbeddedCluster, chaos_seed: int, request: pytest.FixtureRequest
) -> None:
    from client import AdminClient

    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    ledger = Ledger()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_produce, args=(cluster.bootstrap, ledger, stop), daemon=True),
        threading.Thread(target=_consume, args=(cluster.bootstrap, ledger, stop), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        schedule = _inject_faults(
            cluster, random.Random(chaos_seed), request.config.getoption("--chaos-seconds")
        )
        print("faults:", "; ".join(schedule))
        cluster.wait_ready(SETTLE_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(SETTLE_S)
    assert not ledger.errors, ledger.errors
    assert not any(thread.is_alive() for thread in threads), "a client thread did not stop"
    truth = _read_everything(cluster.bootstrap)
    print(
        f"acknowledged {len(ledger.acked)}, unknown outcome {ledger.unknown}, consumed "
        f"{sum(len(c) for c in ledger.consumed.values())}, in the log "
        f"{sum(len(t) for t in truth.values())} (seed {chaos_seed})"
    )
    assert ledger.acked, "nothing was acknowledged: the cluster made no progress"
    # 0. Idempotence: every value was sent once, so it is in the log at most once, however often
    # its batch was retried across leader kills and lost acknowledgements.
    written = [value for records in truth.values() for value in records.values()]
    duplicates = len(written) - len(set(written))
    assert duplicates == 0, (f"{duplicates} duplicate record(s) in the log", chaos_seed)
    # 1. Every acknowledged record is where its acknowledgement said.
    for partition, offset, value in ledger.acked:
        assert truth[partition].get(offset) == value, (partition, offset, value, chaos_seed)
    for partition, consumed in ledger.consumed.items():
        # 2. One value per (partition, offset) across all reads.
        for offset, value in consumed:
            assert truth[partition].get(offset) == value, (partition, offset, chaos_seed)
        # 3. No gaps, no reordering.
        offsets = [offset for offset, _ in consumed]
        assert offsets == sorted(set(offsets)), (partition, "reordered or repeated", chaos_seed)
        if offsets:
            expected = [o for o in sorted(truth[partition]) if offsets[0] <= o <= offsets[-1]]
            assert offsets == expected, (partition, "gap in what the consumer saw", chaos_seed)
