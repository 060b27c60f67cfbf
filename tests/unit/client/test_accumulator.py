"""The accumulator batches by size, count and linger, keeps per-partition order, bounds memory."""

from __future__ import annotations

import threading

from client.accumulator import ProducerBatch, RecordAccumulator, RecordFuture
from client.partitioner import StickyPartitioner
from tests.unit.client.batch_rows import rows_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock | None = None, **overrides: int) -> RecordAccumulator:
    # Plain linger batching (Kafka's) unless a test asks for adaptive batching: most tests here
    # are about the linger timer, sealing and order.
    options = {
        "batch_bytes": 100,
        "linger_ms": 10,
        "buffer_memory_bytes": 1000,
        "max_records_per_batch": 1000,
        "adaptive": False,
    }
    options.update(overrides)
    return RecordAccumulator(clock=clock or FakeClock(), **options)  # type: ignore[arg-type]


def rec(i: int) -> tuple[int, bytes | None, bytes, None]:
    return (1_700_000_000_000 + i, None, b"v%d" % i, None)


def first(batch: ProducerBatch) -> tuple[object, ...]:
    """The batch's first record as `rec` gave it: rows hold the delta from the base timestamp."""
    delta, *rest = rows_of(batch)[0]
    return (batch.base_timestamp + delta, *rest)


def test_batch_seals_at_batch_bytes_and_notifies_once() -> None:
    acc = make()
    notified = []
    acc.notify = lambda: notified.append(1)
    for i in range(4):
        acc.append("t", 0, *rec(i), 25, 1)
    assert notified == [1]  # once: the batch opened (and sealed) before the next drain
    batches, _ = acc.drain(100.0, {})
    assert [b.record_count for b in batches] == [4]
    acc.append("t", 0, *rec(9), 30, 1)
    batches, next_at = acc.drain(100.0, {})
    assert batches == [] and next_at == 100.0 + 0.010


def test_linger_releases_an_open_batch() -> None:
    clock = FakeClock()
    acc = make(clock)
    acc.append("t", 0, *rec(0), 10, 1)
    assert acc.drain(clock.now + 0.005, {})[0] == []
    batches, _ = acc.drain(clock.now + 0.010, {})
    assert len(batches) == 1 and first(batches[0]) == rec(0)


def test_max_records_per_batch_seals() -> None:
    acc = make(max_records_per_batch=2)
    acc.append("t", 0, *rec(0), 1, 1)
    acc.append("t", 0, *rec(1), 1, 1)
    assert len(acc.drain(0.0, {})[0]) == 1


def test_one_batch_per_partition_in_order_while_busy() -> None:
    acc = make(batch_bytes=10)
    for i in range(3):
        acc.append("t", 0, *rec(i), 10, 1)  # three sealed batches of one record
    batches, _ = acc.drain(100.0, {})
    assert [first(b) for b in batches] == [rec(0)]
    assert acc.drain(100.0, {("t", 0): 1})[0] == []  # busy partition: nothing leaves
    second, _ = acc.drain(100.0, {})
    assert [first(b) for b in second] == [rec(1)]


def test_retry_goes_first_and_waits_for_backoff() -> None:
    acc = make(batch_bytes=10)
    acc.append("t", 0, *rec(0), 10, 1)
    acc.append("t", 0, *rec(1), 10, 1)
    (failed,), _ = acc.drain(100.0, {})
    acc.reenqueue(failed, retry_at=100.5)
    batches, next_at = acc.drain(100.1, {})
    assert batches == [] and next_at == 100.5  # the later batch must not overtake the retry
    (again,), _ = acc.drain(100.5, {})
    assert again is failed and failed.attempts == 1


def test_partitions_drain_independently() -> None:
    acc = make(batch_bytes=10)
    acc.append("t", 0, *rec(0), 10, 2)
    acc.append("t", 1, *rec(1), 10, 2)
    batches, _ = acc.drain(100.0, {("t", 0): 1})
    assert [(b.topic, b.partition) for b in batches] == [("t", 1)]


def test_memory_bound_refuses_then_frees() -> None:
    acc = make(buffer_memory_bytes=50, batch_bytes=1000)
    assert acc.append("t", 0, *rec(0), 40, 1) is not None
    assert acc.append("t", 0, *rec(1), 40, 1) is None
    acc.begin_flush()
    (batch,), _ = acc.drain(100.0, {})
    acc.end_flush()
    batch.complete(0, None)
    acc.release(batch)
    assert acc.memory_used == 0
    assert acc.append("t", 0, *rec(1), 40, 1) is not None


def test_a_record_larger_than_the_buffer_still_goes_alone() -> None:
    acc = make(buffer_memory_bytes=10)
    assert acc.append("t", 0, *rec(0), 500, 1) is not None


def test_sticky_partition_moves_when_its_batch_seals() -> None:
    import random

    acc = RecordAccumulator(
        batch_bytes=20,
        linger_ms=10,
        buffer_memory_bytes=1000,
        max_records_per_batch=1000,
        sticky=StickyPartitioner(random.Random(3)),
    )
    placed = [acc.append("t", -1, *rec(i), 10, 3) for i in range(4)]
    partitions = [batch.partition for batch, _ in placed if batch is not None]  # type: ignore[misc]
    assert partitions[0] == partitions[1] != partitions[2] == partitions[3]


def test_future_views_and_callbacks() -> None:
    acc = make()
    batch, index = acc.append("t", 0, *rec(0), 10, 1)  # type: ignore[misc]
    _, index2 = acc.append("t", 0, *rec(1), 10, 1)  # type: ignore[misc]
    seen: list[object] = []
    future = RecordFuture((batch, index2))
    future.add_done_callback(lambda md, err: seen.append((md, err)))
    assert not future.done()
    batch.complete(41, None)
    assert future.result(0).offset == 42
    assert RecordFuture((batch, index)).result(0).timestamp == rec(0)[0]
    assert seen[0][0].offset == 42  # type: ignore[index]
    late: list[object] = []
    future.add_done_callback(lambda md, err: late.append(md))  # already done: runs at once
    assert len(late) == 1


def test_failed_batch_raises_from_every_view() -> None:
    batch = ProducerBatch("t", 0, 0.0, base_timestamp=rec(0)[0])
    batch.append(rec(0)[0], *rec(0)[1:])
    batch.complete(-1, ValueError("boom"))
    future = RecordFuture((batch, 0))
    assert isinstance(future.exception(0), ValueError)
    try:
        future.result(0)
    except ValueError:
        pass
    else:
        raise AssertionError("result() must raise the delivery error")


def test_append_is_thread_safe() -> None:
    acc = make(batch_bytes=10**9, buffer_memory_bytes=10**9, max_records_per_batch=10**6)

    def worker(k: int) -> None:
        for _ in range(2000):
            acc.append("t", 0, k, None, b"x", None, 1, 1)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acc.begin_flush()
    (batch,), _ = acc.drain(0.0, {})
    assert batch.record_count == 8000 and acc.memory_used == 8000


def test_more_batches_in_flight_when_allowed_but_one_while_retrying() -> None:
    acc = make(batch_bytes=10)
    for i in range(4):
        acc.append("t", 0, *rec(i), 10, 1)
    (one,), _ = acc.drain(100.0, {}, max_in_flight=2)
    (two,), _ = acc.drain(100.0, {("t", 0): 1}, max_in_flight=2)  # one per call
    assert acc.drain(100.0, {("t", 0): 2}, max_in_flight=2)[0] == []  # the limit
    assert acc.drain(100.0, {("t", 0): 1}, max_in_flight=2, retrying={("t", 0)})[0] == []
    assert [first(one), first(two)] == [rec(0), rec(1)]


def test_retried_batches_go_back_in_creation_order() -> None:
    acc = make(batch_bytes=10)
    for i in range(4):
        acc.append("t", 0, *rec(i), 10, 1)
    (b0,), _ = acc.drain(100.0, {}, max_in_flight=3)
    (b1,), _ = acc.drain(100.0, {("t", 0): 1}, max_in_flight=3)
    # Both fail; the later one is put back first, yet must leave after the earlier one.
    acc.reenqueue(b1, retry_at=100.0)
    acc.reenqueue(b0, retry_at=100.0)
    order = []
    for _ in range(4):
        (batch,), _ = acc.drain(100.0, {})
        order.append(first(batch))
    assert order == [rec(0), rec(1), rec(2), rec(3)]


def test_adaptive_batch_leaves_at_once_when_its_partition_is_idle() -> None:
    # Low rates: a record on an idle partition must not wait out linger_ms.
    acc = make(adaptive=True, linger_ms=1000)
    notified = []
    acc.notify = lambda: notified.append(1)
    acc.append("t", 0, *rec(0), 10, 1)
    assert notified == [1]  # the sender is told at once, not at the linger deadline
    (batch,), next_at = acc.drain(100.0, {})
    assert first(batch) == rec(0) and next_at is None


def test_adaptive_batch_grows_while_a_request_is_in_flight() -> None:
    # High rates: while the partition has a batch in flight the next one keeps growing, and
    # leaves as soon as the partition is idle again (or its linger ends), whole.
    acc = make(adaptive=True, linger_ms=10)
    for i in range(5):
        acc.append("t", 0, *rec(i), 10, 1)
    busy = {("t", 0): 1}
    batches, next_at = acc.drain(100.0, busy, max_in_flight=5)
    assert batches == [] and next_at == 100.0 + 0.010
    for i in range(5, 8):
        acc.append("t", 0, *rec(i), 10, 1)
    (batch,), _ = acc.drain(100.001, {}, max_in_flight=5)  # the answer came: idle again
    assert [batch.base_timestamp + row[0] for row in rows_of(batch)] == [
        rec(i)[0] for i in range(8)
    ]
    acc.append("t", 0, *rec(8), 10, 1)
    (late,), _ = acc.drain(100.0 + 0.011, busy, max_in_flight=5)  # linger ends: pipelined
    assert first(late) == rec(8)


def test_adaptive_batching_keeps_one_batch_per_partition_per_drain() -> None:
    # A sealed batch and the open one behind it never leave in the same drain: order and the
    # per-partition in-flight count hold under adaptive batching too.
    acc = make(adaptive=True, batch_bytes=20)
    for i in range(3):
        acc.append("t", 0, *rec(i), 10, 1)  # one sealed batch (2 records), one open (1)
    (batch,), _ = acc.drain(100.0, {}, max_in_flight=5)
    assert batch.record_count == 2
    (rest,), _ = acc.drain(100.0, {}, max_in_flight=5)
    assert first(rest) == rec(2)


def test_rows_keep_their_timestamps_relative_to_the_first_record() -> None:
    # The rows are the wire's rows: delta from the batch's first timestamp, negative when an
    # explicit timestamp is older; metadata() gives the absolute timestamp back.
    acc = make()
    acc.append("t", 0, 5_000, None, b"a", None, 10, 1)
    future = acc.append("t", 0, 4_990, b"k", b"b", [("h", b"1")], 10, 1)
    assert future is not None
    batch = future.batch
    assert batch.base_timestamp == 5_000
    assert rows_of(batch) == [(0, None, b"a", None), (-10, b"k", b"b", [("h", b"1")])]
    batch.complete(7, None)
    assert future.result(0).timestamp == 4_990 and future.get(0).offset == 8
