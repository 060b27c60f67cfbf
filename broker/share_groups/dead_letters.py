"""Dead-letter writes: copy records a share group gave up on to its dead-letter topic.

A `WriteDeadLetters` job names offsets [first, last] of a topic partition. The records are read
(broker/share_groups/reader.py), copied with their key, value, timestamp and headers, plus these
headers, and produced to the dead-letter topic with acks=all:

    dlq.group             the share group
    dlq.source.topic      where the record was
    dlq.source.partition  (decimal)
    dlq.source.offset     (decimal)
    dlq.delivery.count    deliveries it had (decimal)
    dlq.reason            "rejected" or "delivery-limit"

The copy goes to partition `source partition % dead-letter partitions` (a queue's order per
partition is kept in its dead letters). The produce is the Produce handler's own path: here when
this broker leads that partition, else a Produce request to its leader. Only when it is
acknowledged does the coordinator archive the records; a failure is retried, so a record is
written at least once (twice only if the coordinator fails over between the write and the
archive) and never lost. This is the one per-record path of share groups: records are decoded to
add their headers, which is the rare path (failures), never the queue's hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from broker.consumer_groups.group import TopicPartition
from broker.handlers.reply import Deferred
from broker.share_groups.reader import PartitionReader
from broker.share_groups.share_actions import WriteDeadLetters
from wire import codec
from wire.batch import build_batch, decode_records, iter_batches
from wire.error_codes import BrokerError, ErrorCode

# Records per dead-letter batch, and bytes read per job step.
RECORDS_PER_BATCH: Final = 500
READ_BYTES: Final = 4 * 1024 * 1024
PRODUCE_TIMEOUT_MS: Final = 30_000

ProduceHandler = Callable[[Any, codec.ProduceRequest], Any]


def dead_letter_headers(
    group_id: str, tp: TopicPartition, offset: int, delivery_count: int, reason: str
) -> list[tuple[str, bytes]]:
    return [
        ("dlq.group", group_id.encode()),
        ("dlq.source.topic", tp.topic.encode()),
        ("dlq.source.partition", str(tp.partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.delivery.count", str(delivery_count).encode()),
        ("dlq.reason", reason.encode()),
    ]


class DeadLetterWriter:
    """`produce_here` is the Produce handler (broker/handlers/produce.py), used when this broker
    leads the dead-letter partition; `leader_of(ctx, topic, partition)` names the leader in a
    cluster."""

    def __init__(
        self,
        ctx: Any,
        reader: PartitionReader,
        produce_here: ProduceHandler,
        leader_of: Callable[[Any, str, int], int] | None = None,
    ) -> None:
        self._ctx = ctx
        self._reader = reader
        self._produce_here = produce_here
        self._leader_of = leader_of

    async def write(self, action: WriteDeadLetters) -> None:
        """Copy the job's records to the dead-letter topic; raises BrokerError if not done."""
        job, tp = action.job, action.topic_partition
        topic = action.dead_letter_topic
        record = self._ctx.topics.get(topic)
        if record is None:
            raise BrokerError(
                ErrorCode.UNKNOWN_TOPIC,
                f"dead-letter topic {topic!r} of share group {action.group_id} does not exist: "
                "create it (the records wait until it exists)",
            )
        partition = tp.partition % record.partition_count
        rows: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        offset = job.first
        while offset <= job.last:
            data = await self._reader.read_range(tp, offset, job.last, READ_BYTES)
            if not data:
                break  # deleted by retention meanwhile: nothing left to copy
            for position, header in iter_batches(data, validate=False):
                offset = max(offset, header.last_offset + 1)
                if header.is_control:
                    continue
                for item in decode_records(data, position, header=header):
                    if job.first <= item.offset <= job.last:
                        headers = list(item.headers or [])
                        headers += dead_letter_headers(
                            action.group_id, tp, item.offset, job.delivery_count, job.reason
                        )
                        rows.append((item.timestamp, item.key, item.value, headers))
        for start in range(0, len(rows), RECORDS_PER_BATCH):
            batch = build_batch(rows[start : start + RECORDS_PER_BATCH])
            await self._produce(topic, partition, batch)

    async def _produce(self, topic: str, partition: int, batch: bytes) -> None:
        request = codec.ProduceRequest(
            partitions=(codec.ProducePartition(topic=topic, partition=partition, records=batch),),
            acks=codec.ACKS_ALL,
            timeout_ms=PRODUCE_TIMEOUT_MS,
        )
        ctx = self._ctx
        leader = ctx.node_id
        if ctx.cluster is not None and self._leader_of is not None:
            leader = self._leader_of(ctx, topic, partition)
        if leader == ctx.node_id:
            response = self._produce_here(ctx, request)
            if isinstance(response, Deferred):
                response = await response.run()
        elif leader > 0:
            response = await ctx.cluster.peer_clients.call(
                leader, request, extra_timeout_s=PRODUCE_TIMEOUT_MS / 1000
            )
        else:
            raise BrokerError(ErrorCode.LEADER_NOT_AVAILABLE, f"{topic}-{partition} has no leader")
        (result,) = response.partitions
        if result.error is not ErrorCode.NONE:
            raise BrokerError(result.error, f"{topic}-{partition}: {result.error_message}")
