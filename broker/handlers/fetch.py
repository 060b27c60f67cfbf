"""Fetch (with long poll) and ListOffsets.

Fetch reads whole batches below each partition's high watermark, straight from the segment files,
never decoding them. It answers at once if `min_bytes` are there (or a partition has an error, or
`max_wait_ms` is 0); otherwise it registers one event with every partition it reads and sleeps until
one of them moves its high watermark or the deadline passes, then reads again. No polling.

Byte limits follow Kafka: at most `partition_max_bytes` per partition and `max_bytes` in all, except
that the first partition with data returns at least one whole batch, so a consumer always progresses
even past a batch larger than its limits. `max_bytes` is clamped so the response fits in a frame.
"""

from __future__ import annotations

import logging

import trio

from broker.config import FRAME_HEADROOM_BYTES
from broker.handlers.context import BrokerContext, PartitionState, leader_hint
from broker.handlers.reply import Deferred
from wire import codec
from wire.batch import iter_batches
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)


def handle_fetch(ctx: BrokerContext, request: codec.FetchRequest) -> codec.FetchResponse | Deferred:
    _check_fetch(request)
    # A first read right away, in arrival order: a fetch pipelined after a produce sees it.
    results, total, failed = _read_all(ctx, request)
    max_wait_ms = min(request.max_wait_ms, ctx.config.fetch_max_wait_ms_max)
    if total >= request.min_bytes or failed or max_wait_ms <= 0 or ctx.stopping:
        return codec.FetchResponse(partitions=results)
    deadline = trio.current_time() + max_wait_ms / 1000
    return Deferred(lambda: _long_poll(ctx, request, deadline))


def _check_fetch(request: codec.FetchRequest) -> None:
    for name, value in (
        ("max_wait_ms", request.max_wait_ms),
        ("min_bytes", request.min_bytes),
        ("max_bytes", request.max_bytes),
    ):
        if value < 0:
            raise BrokerError(ErrorCode.INVALID_REQUEST, f"fetch {name} must be >= 0, got {value}")
    if request.isolation_level not in (codec.READ_UNCOMMITTED, codec.READ_COMMITTED):
        raise BrokerError(
            ErrorCode.INVALID_REQUEST,
            f"isolation_level must be 0 (read_uncommitted) or 1 (read_committed), "
            f"got {request.isolation_level}",
        )


async def _long_poll(
    ctx: BrokerContext, request: codec.FetchRequest, deadline: float
) -> codec.FetchResponse:
    while True:
        # Register first, then read: a high watermark that moves between the two still wakes us
        # (the first read happened in the reader, before this task started).
        event = trio.Event()
        states = [
            state
            for item in request.partitions
            if (state := ctx.partitions.get((item.topic, item.partition))) is not None
        ]
        for state in states:
            state.waiters.add(event)
        try:
            results, total, failed = _read_all(ctx, request)
            if (
                total >= request.min_bytes
                or failed
                or ctx.stopping
                or trio.current_time() >= deadline
            ):
                return codec.FetchResponse(partitions=results)
            with trio.move_on_at(deadline):
                await event.wait()
        finally:
            for state in states:
                state.waiters.discard(event)


def _read_all(
    ctx: BrokerContext, request: codec.FetchRequest
) -> tuple[tuple[codec.FetchPartitionResult, ...], int, bool]:
    """Read every partition once: (results, total bytes, whether any partition failed)."""
    remaining = max(0, min(request.max_bytes, ctx.config.max_frame_bytes - FRAME_HEADROOM_BYTES))
    total = 0
    failed = False
    results = []
    for item in request.partitions:
        try:
            result = _read_partition(
                ctx, item, remaining, first=total == 0, isolation=request.isolation_level
            )
        except BrokerError as exc:
            failed = True
            results.append(
                codec.FetchPartitionResult(
                    topic=item.topic,
                    partition=item.partition,
                    error=exc.code,
                    error_message=exc.message,
                    **leader_hint(exc),
                )
            )
            continue
        size = len(result.records)
        total += size
        remaining -= size
        results.append(result)
    return tuple(results), total, failed


def _read_partition(
    ctx: BrokerContext,
    item: codec.FetchPartition,
    remaining: int,
    *,
    first: bool,
    isolation: int = codec.READ_UNCOMMITTED,
) -> codec.FetchPartitionResult:
    state = ctx.partition(item.topic, item.partition)
    log = state.log
    high_watermark = state.high_watermark
    # read_committed reads up to the last stable offset: nothing of a transaction still open.
    committed = isolation == codec.READ_COMMITTED
    last_stable = log.producers.last_stable_offset(high_watermark) if committed else -1
    visible_end = last_stable if committed else high_watermark
    aborted: tuple[codec.AbortedTransaction, ...] = ()
    records = b""
    limit = min(item.partition_max_bytes, remaining)
    if item.fetch_offset < log.log_start_offset or item.fetch_offset > log.log_end_offset:
        raise BrokerError(
            ErrorCode.OFFSET_OUT_OF_RANGE,
            f"fetch offset {item.fetch_offset} is outside {item.topic}-{item.partition}'s log "
            f"[{log.log_start_offset}, {log.log_end_offset}]; reset to the earliest or latest "
            "offset (list_offsets)",
        )
    if item.fetch_offset < visible_end and (limit > 0 or first):
        result = log.read(item.fetch_offset, max(limit, 1), max_offset=visible_end)
        data = result.data
        # Only the first partition with data may exceed the limits (one whole batch).
        if len(data) <= limit or first:
            records = data if isinstance(data, bytes) else bytes(data)
            _count_out(ctx, state, records)
            if committed and records:
                aborted = tuple(
                    codec.AbortedTransaction(producer_id=pid, first_offset=first_offset)
                    for pid, first_offset in log.producers.aborted_transactions(
                        item.fetch_offset, result.next_offset
                    )
                )
    return codec.FetchPartitionResult(
        topic=item.topic,
        partition=item.partition,
        high_watermark=high_watermark,
        log_start_offset=log.log_start_offset,
        records=records,
        last_stable_offset=last_stable,
        aborted_transactions=aborted,
    )


def _count_out(ctx: BrokerContext, state: PartitionState, records: bytes) -> None:
    if not records:
        return
    # Header walk only (one per batch, never per record) to count records for the metrics.
    count = sum(header.record_count for _, header in iter_batches(records, validate=False))
    ctx.metrics.records_out(state.topic, count, len(records))


def handle_list_offsets(
    ctx: BrokerContext, request: codec.ListOffsetsRequest
) -> codec.ListOffsetsResponse:
    results = []
    for item in request.partitions:
        try:
            offset, timestamp = _list_offset(ctx, item, request.isolation_level)
        except BrokerError as exc:
            results.append(
                codec.ListOffsetsPartitionResult(
                    topic=item.topic,
                    partition=item.partition,
                    error=exc.code,
                    error_message=exc.message,
                )
            )
            continue
        results.append(
            codec.ListOffsetsPartitionResult(
                topic=item.topic, partition=item.partition, offset=offset, timestamp=timestamp
            )
        )
    return codec.ListOffsetsResponse(partitions=tuple(results))


def _list_offset(
    ctx: BrokerContext, item: codec.ListOffsetsPartition, isolation: int
) -> tuple[int, int]:
    """(offset, timestamp): the timestamp is the found record's for a search by time, -1 for
    the earliest and latest offsets (as Kafka answers)."""
    state = ctx.partition(item.topic, item.partition)
    state.require_settled_high_watermark()
    if item.timestamp == codec.EARLIEST_TIMESTAMP:
        return int(state.log.log_start_offset), -1
    if item.timestamp == codec.LATEST_TIMESTAMP:
        if isolation == codec.READ_COMMITTED:
            return int(state.log.producers.last_stable_offset(state.high_watermark)), -1
        return state.high_watermark, -1
    if item.timestamp < 0:
        raise BrokerError(
            ErrorCode.INVALID_REQUEST,
            f"timestamp {item.timestamp} is neither -2 (earliest), -1 (latest) nor a time in ms",
        )
    found = state.log.offset_for_timestamp(item.timestamp)
    # Records at or past the high watermark are not visible yet.
    if found is None or found.offset >= state.high_watermark:
        return -1, -1
    return int(found.offset), found.timestamp
