"""The producer's default (adaptive) batching and its `send` fast path, against the fake broker.

Adaptive batching: a record sent to an idle producer leaves at once (no `linger_ms` wait), and
while a request is in flight the next batch grows and leaves whole when the answer comes. The
fast path (a keyless bytes value) and the general path (keys, headers, explicit partitions and
timestamps) must store the same records with the same offsets and timestamps.
"""

from __future__ import annotations

import time

import trio
import trio.testing

from client.aio import Producer
from tests.integration.client.fake_broker import FakeBroker
from wire.batch import decode_records, iter_batches

# Longer than any test may take: a record that waited for it would fail the test's deadline.
LINGER_NEVER_MS = 600_000


def batch_sizes(broker: FakeBroker, topic: str, partition: int) -> list[int]:
    """Records per stored batch, in log order."""
    return [
        header.record_count
        for data in broker.logs[(topic, partition)]
        for _, header in iter_batches(data, validate=False)
    ]


async def test_a_record_on_an_idle_producer_leaves_without_waiting_for_linger(
    fake: FakeBroker,
) -> None:
    async with Producer(fake.bootstrap, linger_ms=LINGER_NEVER_MS) as producer:
        with trio.fail_after(10):
            metadata = await producer.send_and_wait("t", b"alone", partition=0)
    assert metadata.offset == 0
    assert batch_sizes(fake, "t", 0) == [1]


async def test_batches_grow_while_a_request_is_in_flight(fake: FakeBroker) -> None:
    # The broker holds the first Produce: the 99 records sent meanwhile must wait for its answer
    # (not linger, not go one by one) and then leave as one batch.
    fake.produce_gate = trio.Event()
    async with Producer(fake.bootstrap, linger_ms=LINGER_NEVER_MS) as producer:
        futures = [await producer.send("t", b"0", partition=0)]
        # The fake runs in this trio loop: once every task is blocked, the first record's
        # Produce (after InitProducerId) waits at the gate.
        await trio.testing.wait_all_tasks_blocked()
        futures += [await producer.send("t", b"%d" % i, partition=0) for i in range(1, 100)]
        fake.produce_gate.set()
        with trio.fail_after(10):
            offsets = [(await future).offset for future in futures]
    assert offsets == list(range(100))
    assert batch_sizes(fake, "t", 0) == [1, 99]


async def test_fast_and_general_paths_store_the_same_records(fake: FakeBroker) -> None:
    # Keyless bytes values take the fast path; a key, headers, a str value or an explicit
    # timestamp take the general one. Interleaved in one batch, all keep their order, offsets
    # and timestamps (the rows store deltas from the batch's first timestamp, negative too).
    # One partition, so the keyless records' sticky choice is the explicit records' partition.
    fake.create("single", 1)
    fake.produce_gate = trio.Event()
    before_ms = time.time_ns() // 1_000_000
    async with Producer(fake.bootstrap, linger_ms=LINGER_NEVER_MS) as producer:
        await producer.send("single", b"opener", partition=0)  # in flight, held: the rest batch up
        await trio.testing.wait_all_tasks_blocked()
        sends = [
            producer.send("single", b"fast-1"),
            producer.send("single", b"keyed", key=b"k", partition=0),
            producer.send("single", b"fast-2"),
            producer.send("single", "text", headers={"h": b"v"}, partition=0),
            producer.send("single", b"old", partition=0, timestamp_ms=before_ms - 60_000),
            producer.send("single", b"fast-3"),
        ]
        futures = [await send for send in sends]
        fake.produce_gate.set()
        with trio.fail_after(10):
            metadata = [await future for future in futures]
    after_ms = time.time_ns() // 1_000_000
    assert {m.partition for m in metadata} == {0}
    records = [r for data in fake.logs[("single", 0)] for r in decode_records(data)]
    assert [(r.key, r.value, r.headers) for r in records] == [
        (None, b"opener", None),
        (None, b"fast-1", None),
        (b"k", b"keyed", None),
        (None, b"fast-2", None),
        (None, b"text", (("h", b"v"),)),
        (None, b"old", None),
        (None, b"fast-3", None),
    ]
    assert [m.offset for m in metadata] == [r.offset for r in records[1:]]
    assert [m.timestamp for m in metadata] == [r.timestamp for r in records[1:]]
    assert records[5].timestamp == before_ms - 60_000
    assert all(before_ms <= r.timestamp <= after_ms for i, r in enumerate(records) if i != 5)
