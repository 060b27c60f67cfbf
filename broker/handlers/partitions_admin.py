"""CreatePartitions and DeleteRecords: Kafka's two partition admin requests.

CreatePartitions (`broker-cli topics add-partitions`) raises a topic's partition count to a new
total, never lowers it (INVALID_PARTITIONS). On a single node `TopicManager.add_partitions`
persists the count and creates the new logs. In a cluster the controller leader (any other
broker forwards the request there) commits `PartitionsCreated` and one `PartitionAssignment` per
new partition; the brokers placed on them start their replicas from that metadata, as for a new
topic. Producers and consumers see the new partitions at their next metadata refresh.

DeleteRecords (`broker-cli topics delete-records`) runs on the partition's leader and moves its
log start offset forward: offsets below it are no longer served and whole segments below it are
deleted. The offset may not pass the high watermark (OFFSET_OUT_OF_RANGE; -1 means the high
watermark, as in Kafka). The new log start is appended to the partition as a log start control
batch (broker/log/log_start.py), acknowledged like a produced batch (an fsync on a single node,
a Raft commit in a cluster), so every replica that writes it raises its own log start, and keeps
it across restarts and failovers (docs/storage.md, "Deleting records").
"""

from __future__ import annotations

from typing import Any

from broker.handlers.context import BrokerContext
from broker.handlers.controller_forward import on_controller
from broker.handlers.reply import Deferred
from broker.internal_topics import is_internal_topic
from broker.log.log import wall_clock_ms
from broker.log.log_start import build_log_start_batch
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

# DeleteRecords' offset meaning "everything below the high watermark" (Kafka's -1).
DELETE_TO_HIGH_WATERMARK = -1


def handle_create_partitions(
    ctx: BrokerContext, request: codec.CreatePartitionsRequest
) -> codec.CreatePartitionsResponse | Deferred:
    if is_internal_topic(request.topic):
        # Coordinators find a group's or transaction's partition by hashing over the count.
        return codec.CreatePartitionsResponse(
            error=ErrorCode.INVALID_TOPIC,
            error_message=f"topic {request.topic!r} is internal: its partition count is fixed",
        )
    if ctx.cluster is not None:

        async def run_here(controller: Any) -> codec.CreatePartitionsResponse:
            if request.validate_only:
                controller.machine.prepare_create_partitions(request.topic, request.partition_count)
            else:
                await controller.create_partitions(request.topic, request.partition_count)
            return codec.CreatePartitionsResponse()

        return on_controller(ctx, request, codec.CreatePartitionsResponse, run_here)
    try:
        ctx.topics.add_partitions(
            request.topic, request.partition_count, validate_only=request.validate_only
        )
    except BrokerError as exc:
        return codec.CreatePartitionsResponse(error=exc.code, error_message=exc.message)
    return codec.CreatePartitionsResponse()


def handle_delete_records(ctx: BrokerContext, request: codec.DeleteRecordsRequest) -> Deferred:
    async def run() -> codec.DeleteRecordsResponse:
        results = []
        for item in request.partitions:
            try:
                low_watermark = await _delete_records(ctx, item)
            except BrokerError as exc:
                results.append(
                    codec.DeleteRecordsPartitionResult(
                        topic=item.topic,
                        partition=item.partition,
                        error=exc.code,
                        error_message=exc.message,
                    )
                )
                continue
            results.append(
                codec.DeleteRecordsPartitionResult(
                    topic=item.topic, partition=item.partition, low_watermark=low_watermark
                )
            )
        return codec.DeleteRecordsResponse(partitions=tuple(results))

    return Deferred(run)


async def _delete_records(ctx: BrokerContext, item: codec.DeleteRecordsPartition) -> int:
    if is_internal_topic(item.topic):
        raise BrokerError(
            ErrorCode.INVALID_TOPIC,
            f"topic {item.topic!r} is internal: the broker alone deletes its records",
        )
    state = ctx.partition(item.topic, item.partition)
    state.require_settled_high_watermark()
    high_watermark = state.high_watermark
    offset = high_watermark if item.offset == DELETE_TO_HIGH_WATERMARK else item.offset
    if not 0 <= offset <= high_watermark:
        raise BrokerError(
            ErrorCode.OFFSET_OUT_OF_RANGE,
            f"cannot delete the records of {item.topic}-{item.partition} below offset "
            f"{item.offset}: give an offset from 0 to its high watermark {high_watermark} "
            "(-1: everything below the high watermark)",
        )
    log = state.log
    if offset > log.log_start_offset:
        # The log start entry raises the log start of every replica that writes it (the
        # leader's own log included) and is acknowledged as a produced batch is.
        batch = build_log_start_batch(offset, timestamp_ms=wall_clock_ms())
        await state.append(batch).wait_acked()
    if ctx.cluster is None:
        return int(log.delete_records(offset, max_offset=state.high_watermark))
    replica = state.replica
    return int(
        log.delete_records(
            offset,
            max_offset=replica.deletable_end(),
            before_delete=replica.snapshot_before_delete,
        )
    )
