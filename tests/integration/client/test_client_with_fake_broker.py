"""The trio client against an in-process fake broker: retries, ordering, acks=0, reconnects.

The fake speaks the real protocol and codec but lets a test inject produce errors and dropped
connections, which a real `broker serve` cannot do on demand.
"""

from __future__ import annotations

import collections
import threading

import pytest
import trio

from client.aio import Consumer, Producer
from client.blocking import Producer as BlockingProducer
from client.errors import BufferFullError, ClientClosedError, RequestTimedOutError
from client.types import TopicPartition
from tests.integration.client.fake_broker import FakeBroker
from wire.error_codes import BrokerError, ErrorCode


async def read_all(broker: FakeBroker, topic: str, partition: int, count: int) -> list[bytes]:
    async with Consumer(broker.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, partition)])
        values: list[bytes] = []
        with trio.fail_after(10):
            while len(values) < count:
                values += [r.value for r in await consumer.poll(timeout_ms=1000)]
        return values


async def test_send_and_wait_returns_offsets(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, linger_ms=0) as producer:
        first = await producer.send_and_wait("t", b"a", partition=1)
        second = await producer.send_and_wait("t", b"b", partition=1)
    assert (first.topic, first.partition, first.offset) == ("t", 1, 0)
    assert second.offset == 1


async def test_retriable_errors_are_retried_in_order(fake: FakeBroker) -> None:
    fake.fail_produce.extend([ErrorCode.NOT_LEADER, ErrorCode.REQUEST_TIMED_OUT])
    async with Producer(fake.bootstrap, linger_ms=0, batch_bytes=64, retry_backoff_ms=1) as p:
        futures = [await p.send("t", b"%d" % i, partition=0) for i in range(20)]
        await p.flush()
    offsets = [(await f).offset for f in futures]
    assert offsets == list(range(20))
    assert await read_all(fake, "t", 0, 20) == [b"%d" % i for i in range(20)]


async def test_non_retriable_error_fails_the_future(fake: FakeBroker) -> None:
    fake.fail_produce.append(ErrorCode.MESSAGE_TOO_LARGE)
    async with Producer(fake.bootstrap, linger_ms=0) as producer:
        future = await producer.send("t", b"x", partition=0)
        with pytest.raises(BrokerError) as info:
            await future
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE


async def test_retries_exhausted_surfaces_last_error(fake: FakeBroker) -> None:
    fake.fail_produce.extend([ErrorCode.NOT_LEADER] * 3)
    async with Producer(fake.bootstrap, linger_ms=0, retries=2, retry_backoff_ms=1) as producer:
        future = await producer.send("t", b"x", partition=0)
        with pytest.raises(BrokerError) as info:
            await future
    assert info.value.code is ErrorCode.NOT_LEADER


async def test_dropped_connection_is_retried_over_a_new_one(fake: FakeBroker) -> None:
    fake.drop_next_produce = True
    async with Producer(fake.bootstrap, linger_ms=0, retry_backoff_ms=1) as producer:
        metadata = await producer.send_and_wait("t", b"x", partition=0)
    assert metadata.offset == 0 and fake.connections >= 2


async def test_an_unanswered_produce_times_out_and_is_retried(fake: FakeBroker) -> None:
    # The answer watch (client/aio/answers.py) gives the request up after request_timeout_ms;
    # the batch is retried, on the same connection, and delivered once.
    fake.unanswered_produces = 1
    async with Producer(
        fake.bootstrap, linger_ms=0, request_timeout_ms=300, retry_backoff_ms=1
    ) as producer:
        with trio.fail_after(10):
            metadata = await producer.send_and_wait("t", b"x", partition=0)
    assert metadata.offset == 0
    assert fake.produce_requests == 2 and fake.connections == 1
    assert await read_all(fake, "t", 0, 1) == [b"x"]


async def test_a_produce_never_answered_fails_with_the_timeout_at_the_delivery_timeout(
    fake: FakeBroker,
) -> None:
    fake.hold_produce = True
    async with Producer(
        fake.bootstrap,
        linger_ms=0,
        request_timeout_ms=200,
        delivery_timeout_ms=1_000,
        retry_backoff_ms=1,
    ) as producer:
        future = await producer.send("t", b"x", partition=0)
        with (
            trio.fail_after(10),
            pytest.raises(RequestTimedOutError, match="no response to produce"),
        ):
            await future
    assert fake.produce_requests >= 2  # retried after each timeout until the delivery timeout


async def test_acks_zero_completes_without_offsets(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, acks=0, linger_ms=0) as producer:
        metadata = await producer.send_and_wait("t", b"x", partition=0)
    assert metadata.offset == -1
    assert await read_all(fake, "t", 0, 1) == [b"x"]


async def test_unknown_topic_names_the_fix(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap) as producer:
        with pytest.raises(BrokerError, match="broker-cli topics create nope"):
            await producer.send("nope", b"x")


async def test_consumer_seek_and_position(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, linger_ms=0) as producer:
        for i in range(5):
            await producer.send("t", b"%d" % i, partition=0)
        await producer.flush()
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as consumer:
        tp = TopicPartition("t", 0)
        consumer.assign([tp])
        assert await consumer.position(tp) == 0
        consumer.seek(tp, 3)
        with trio.fail_after(5):
            records = []
            while len(records) < 2:
                records += await consumer.poll(timeout_ms=500)
        assert [r.offset for r in records] == [3, 4]
        assert await consumer.position(tp) == 5
        consumer.seek_to_end()
        assert await consumer.position(tp) == 5


async def test_full_buffer_raises_after_max_block_ms(fake: FakeBroker) -> None:
    fake.hold_produce = True
    options = {"linger_ms": 0, "buffer_memory_bytes": 2000, "max_block_ms": 100,
               "request_timeout_ms": 300, "retry_backoff_ms": 1}  # fmt: skip
    producer = Producer(fake.bootstrap, **options)
    await producer.start()
    try:
        with pytest.raises(BufferFullError, match="max_block_ms=100"):
            for _ in range(100):
                await producer.send("t", b"x" * 100, partition=0)
    finally:
        fake.hold_produce = False
        await producer.aclose()

    def blocking() -> None:
        fake.hold_produce = True
        with BlockingProducer(fake.bootstrap, **options) as producer:
            try:
                with pytest.raises(BufferFullError):
                    for _ in range(100):
                        producer.send("t", b"x" * 100, partition=0)
            finally:
                fake.hold_produce = False

    await trio.to_thread.run_sync(blocking)


async def test_blocking_facade_round_trip_from_threads(fake: FakeBroker) -> None:
    def work() -> list[int]:
        with BlockingProducer(fake.bootstrap, linger_ms=1) as producer:
            futures: list = []

            def sender(k: int) -> None:
                futures.extend(producer.send("t", b"%d" % k, partition=1) for _ in range(50))

            threads = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            producer.flush()
            return sorted(f.result(5).offset for f in futures)

    assert await trio.to_thread.run_sync(work) == list(range(200))


async def test_close_fails_what_is_undelivered_and_refuses_new_sends(fake: FakeBroker) -> None:
    fake.hold_produce = True
    producer = Producer(fake.bootstrap, linger_ms=0, request_timeout_ms=60_000)
    await producer.start()
    future = await producer.send("t", b"x", partition=0)
    await producer.aclose(timeout_s=0.2)  # the flush can never finish: give up on it
    assert isinstance(future.exception(0), ClientClosedError)
    with pytest.raises(ClientClosedError):
        await producer.send("t", b"y")


async def test_pipelined_batches_keep_order_without_failures(fake: FakeBroker) -> None:
    async with Producer(
        fake.bootstrap, linger_ms=0, batch_bytes=64, max_in_flight_per_partition=4
    ) as producer:
        futures = [await producer.send("t", b"%d" % i, partition=0) for i in range(50)]
        await producer.flush()
    assert [(await f).offset for f in futures] == list(range(50))
    assert await read_all(fake, "t", 0, 50) == [b"%d" % i for i in range(50)]


class _TaskSteps(trio.abc.Instrument):
    """Counts scheduler steps per task name while `counting` is set."""

    def __init__(self) -> None:
        self.counting = False
        self.steps: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting:
            self.steps[task.name.rsplit(".", 1)[-1]] += 1


async def test_a_sequential_round_trip_takes_one_step_of_each_producer_task(
    fake: FakeBroker,
) -> None:
    # What a produce round trip costs the client in scheduler passes (each a few tens of µs,
    # the bulk of the latency at low rates, docs/performance.md): the sender drains once, the
    # broker's writer writes once, the connection's reader hands the answer over once. No task
    # per answer (client/aio/answers.py), no wake-up through the trio token for a waiter in the
    # producer's own loop, no second sender pass when the answer leaves nothing to send.
    steps = _TaskSteps()
    async with Producer(fake.bootstrap, acks=1, linger_ms=0) as producer:
        for _ in range(5):  # warm: connection, metadata, producer id
            await (await producer.send("t", b"x", partition=0))
        trio.lowlevel.add_instrument(steps)
        rounds = 20
        steps.counting = True
        for _ in range(rounds):
            await (await producer.send("t", b"x", partition=0))
        steps.counting = False
        trio.lowlevel.remove_instrument(steps)
    per_round = {name: count / rounds for name, count in steps.steps.items()}
    assert per_round["_run_sender"] == 1
    assert per_round["_write_to"] == 1
    assert per_round["run_reader"] == 1  # the producer's connection (the fake's is `_handle`)
    assert "_await_answer" not in per_round
    assert not any("run_sync_soon" in name for name in per_round), per_round


class _Wakers(trio.abc.Instrument):
    """Counts, by the waking task's name, the wake-ups of one task."""

    def __init__(self, watched: trio.lowlevel.Task) -> None:
        self.watched = watched
        self.wakers: collections.Counter[str] = collections.Counter()

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task is self.watched:
            try:
                waker = trio.lowlevel.current_task().name.rsplit(".", 1)[-1]
            except RuntimeError:
                waker = "<run loop>"  # a timeout, or I/O the loop itself saw
            self.wakers[waker] += 1


async def test_fetched_records_reach_a_waiting_poll_from_the_connections_reader(
    fake: FakeBroker,
) -> None:
    # A poll waiting for records is woken by the task that read the fetch answer, which takes
    # the records in itself: one scheduler pass from the answer to poll, not two (the reader
    # waking the fetcher, the fetcher waking poll; docs/performance.md).
    fake.create("t", 1)
    tp = TopicPartition("t", 0)
    async with (
        Producer(fake.bootstrap, acks=1, linger_ms=0) as producer,
        Consumer(fake.bootstrap, auto_offset_reset="earliest") as consumer,
    ):
        consumer.assign([tp])
        await consumer.position(tp)
        wakers = _Wakers(trio.lowlevel.current_task())
        received: list[bytes] = []
        trio.lowlevel.add_instrument(wakers)
        try:
            with trio.fail_after(10):
                for n in range(10):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(producer.send_and_wait, "t", b"%d" % n)
                        while len(received) <= n:
                            received += [r.value for r in await consumer.poll(timeout_ms=5000)]
        finally:
            trio.lowlevel.remove_instrument(wakers)
    assert received == [b"%d" % n for n in range(10)]
    assert wakers.wakers["run_reader"] >= 10, wakers.wakers
    assert "_run_fetcher" not in wakers.wakers, wakers.wakers
