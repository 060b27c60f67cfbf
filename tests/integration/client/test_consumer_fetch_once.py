"""poll() never cancels the fetch in flight: against a real broker, a consumer that polls a few
records at a time while its fetcher pipelines fetches and pauses on a full buffer gets every
record from the broker exactly once (the broker's `broker_records_out` counter), in order.

Before the fix, a poll that took records woke the fetcher by cancelling its fetch, so a response
already on the wire was thrown away and the same records were fetched again.
"""

from __future__ import annotations

import re
import urllib.request

import trio

from client import aio
from client.embedded import EmbeddedBroker
from client.types import TopicPartition

RECORDS = 20_000
RECORD_BYTES = 100
# Many fetches (each about 640 records) and many more polls (each 7 records), and a buffer
# small enough that the fetcher pauses and is woken again many times.
MAX_PARTITION_FETCH_BYTES = 64 * 1024
MAX_POLL_RECORDS = 7
MAX_BUFFERED_RECORDS = 2_000
BATCH_BYTES = 8 * 1024
WAIT_S = 60.0


def records_out(broker: EmbeddedBroker, topic: str) -> int:
    """The broker's count of records it served to fetches of `topic`."""
    url = f"http://{broker.metrics_address}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    found = re.search(
        r'^broker_records_out_total\{topic="' + re.escape(topic) + r'"\} (\S+)$', text, re.M
    )
    return int(float(found.group(1))) if found else 0


async def test_many_short_polls_fetch_each_record_once(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    bootstrap = session_broker.bootstrap
    async with aio.AdminClient(bootstrap) as admin:
        await admin.create_topic(unique_topic, 1)
    async with aio.Producer(bootstrap, acks=1, batch_bytes=BATCH_BYTES) as producer:
        for i in range(RECORDS):
            await producer.send(unique_topic, b"%08d" % i + b"v" * (RECORD_BYTES - 8))
        await producer.flush()
    tp = TopicPartition(unique_topic, 0)
    values: list[bytes] = []
    most_buffered = 0
    async with aio.Consumer(
        bootstrap,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        max_poll_records=MAX_POLL_RECORDS,
        max_buffered_records=MAX_BUFFERED_RECORDS,
    ) as consumer:
        consumer.assign([tp])
        with trio.fail_after(WAIT_S):
            while len(values) < RECORDS:
                records = await consumer.poll(timeout_ms=500)
                assert len(records) <= MAX_POLL_RECORDS
                values += [record.value[:8] for record in records]
                most_buffered = max(most_buffered, consumer._buffered)
        assert await consumer.position(tp) == RECORDS
    assert values == [b"%08d" % i for i in range(RECORDS)]
    # Nothing fetched twice: the broker served each record once.
    served = await trio.to_thread.run_sync(records_out, session_broker, unique_topic)
    assert served == RECORDS
    # Still bounded: the buffer's limit plus the one response in flight when it filled up.
    per_fetch = MAX_PARTITION_FETCH_BYTES // RECORD_BYTES + BATCH_BYTES // RECORD_BYTES
    assert most_buffered < MAX_BUFFERED_RECORDS + per_fetch
