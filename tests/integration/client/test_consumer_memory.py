"""A consumer's prefetch is bounded by its fetch limits, not by the backlog: against a real broker,
a consumer whose application stalls buffers about `fetch_max_bytes`, then stops fetching until
the application polls, and then reads everything in order (benchmarks/memory.py measures RSS)."""

from __future__ import annotations

import trio
import trio.testing

from client import aio
from client.aio.consumer import Consumer as AioConsumer
from client.embedded import EmbeddedBroker
from client.types import TopicPartition

PARTITIONS = 4
RECORD_BYTES = 1024
FETCH_MAX_BYTES = 64 * 1024
# The backlog is many times what the limits allow buffered, so an unbounded prefetch shows.
RECORDS = 40 * FETCH_MAX_BYTES // RECORD_BYTES
BATCH_BYTES = 4 * RECORD_BYTES
WAIT_S = 20.0


def buffered_raw_bytes(consumer: AioConsumer) -> int:
    # The fetched bytes waiting for the application (private: the consumer exposes no gauge).
    with consumer.lock:
        return sum(len(chunk.raw) for chunk in consumer._buffer)


async def wait_fetcher_idle(consumer: AioConsumer) -> bool:
    """Until no fetch is in flight and every task is blocked: the fetcher is waiting to be told
    the application made room, not between two fetches. False if it never stopped fetching."""
    with trio.move_on_after(WAIT_S):
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if consumer._fetch_scope is None:
                return True
            await trio.sleep(0.01)
    return False


async def test_prefetch_stops_at_fetch_max_bytes(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    async with aio.AdminClient(bootstrap) as admin:
        await admin.create_topic(unique_topic, PARTITIONS)
    # Batches smaller than the fetch limits: a fetch returns one batch past its limits when the
    # first one is larger (Kafka's rule, so a consumer always progresses).
    async with aio.Producer(bootstrap, batch_bytes=BATCH_BYTES) as producer:
        for i in range(RECORDS):
            await producer.send(unique_topic, b"%08d" % i + b"v" * (RECORD_BYTES - 8))
        await producer.flush()
    tps = [TopicPartition(unique_topic, p) for p in range(PARTITIONS)]
    async with aio.Consumer(
        bootstrap,
        auto_offset_reset="earliest",
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=FETCH_MAX_BYTES // 4,
    ) as consumer:
        consumer.assign(tps)
        # The application polls nothing: the fetcher fills the buffer up to its bound and stops.
        with trio.fail_after(WAIT_S):
            while buffered_raw_bytes(consumer) < FETCH_MAX_BYTES:
                await trio.sleep(0.01)
        idle = await wait_fetcher_idle(consumer)
        held = buffered_raw_bytes(consumer)
        assert idle, f"the fetcher kept fetching with {held} bytes buffered"
        # Below the bound when the last fetch left, plus that one response (at most
        # fetch_max_bytes): far from the 40x backlog.
        assert FETCH_MAX_BYTES <= held < 2 * FETCH_MAX_BYTES + BATCH_BYTES
        values: list[bytes] = []
        with trio.fail_after(WAIT_S):
            while len(values) < RECORDS:
                values += [record.value[:8] for record in await consumer.poll(timeout_ms=500)]
                assert buffered_raw_bytes(consumer) < 2 * FETCH_MAX_BYTES + BATCH_BYTES
    assert sorted(values) == [b"%08d" % i for i in range(RECORDS)]
