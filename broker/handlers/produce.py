"""Produce: validate each partition's batches (header and CRC only), append, then acknowledge.

The append happens synchronously in the connection's reader, so pipelined produce requests are
appended in the order they arrived (per-partition ordering). What follows depends on `acks`:
- 0: no response is sent;
- 1: the response is ready at once (after the append to the page cache);
- -1: the response waits until every appended partition is durable under its flush policy
  (`LogFlusher.wait_durable`: one fsync covers every append that arrived meanwhile) or, in a
  cluster, committed by the partition's Raft group (a majority has it, fsynced under `always`),
  bounded by the request's `timeout_ms` (then REQUEST_TIMED_OUT for the partitions not yet
  acknowledged).

Batches are never decoded: the broker does no per-record work. If a partition's records hold a bad
batch, none of that partition's batches are written (CORRUPT_MESSAGE, MESSAGE_TOO_LARGE, ...), and
the other partitions of the request are unaffected.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import trio

from broker.appended import Appended
from broker.handlers.context import BrokerContext, PartitionState, leader_hint
from broker.handlers.reply import Deferred
from broker.internal_topics import is_internal_topic
from wire import codec
from wire.batch import iter_batches, unpack_header
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Appended:
    index: int
    state: PartitionState
    last: Appended


def handle_produce(
    ctx: BrokerContext, request: codec.ProduceRequest
) -> codec.ProduceResponse | Deferred | None:
    if request.acks not in (codec.ACKS_NONE, codec.ACKS_LEADER, codec.ACKS_ALL):
        raise BrokerError(
            ErrorCode.INVALID_REQUEST, f"acks must be 0, 1 or -1 (all), got {request.acks}"
        )
    results: list[codec.ProducePartitionResult] = []
    appended: list[_Appended] = []
    for index, item in enumerate(request.partitions):
        try:
            if is_internal_topic(item.topic):
                raise BrokerError(
                    ErrorCode.INVALID_TOPIC,
                    f"topic {item.topic!r} is internal: only the broker writes to it "
                    "(consumers may read it)",
                )
            state = ctx.partition_for_write(item.topic, item.partition)
            base_offset, last = _append(ctx, state, item.records)
        except BrokerError as exc:
            results.append(
                _error_result(item.topic, item.partition, exc.code, exc.message, leader_hint(exc))
            )
            continue
        except OSError as exc:
            logger.error("append to %s-%d failed: %s", item.topic, item.partition, exc)
            results.append(
                _error_result(
                    item.topic,
                    item.partition,
                    ErrorCode.KAFKA_STORAGE_ERROR,
                    f"the broker could not write to its disk: {exc}",
                )
            )
            continue
        results.append(
            codec.ProducePartitionResult(
                topic=item.topic,
                partition=item.partition,
                base_offset=base_offset,
                log_start_offset=state.log.log_start_offset,
            )
        )
        if request.acks == codec.ACKS_ALL or not state.waits_for_fsync:
            appended.append(_Appended(index, state, last))
        else:
            # acks 0/1 under flush policy `always`: the HW moves once a background fsync ran.
            state.make_durable_soon()
    if request.acks == codec.ACKS_NONE:
        _settle_without_waiting(appended)
        return None
    if request.acks == codec.ACKS_LEADER:
        _settle_without_waiting(appended)
        return codec.ProduceResponse(partitions=tuple(results))
    return Deferred(lambda: _wait_durable(ctx, request.timeout_ms, results, appended))


def _append(ctx: BrokerContext, state: PartitionState, records: bytes) -> tuple[int, Appended]:
    """Append every batch of `records`; all are validated before the first is written. Returns
    the base offset and the last batch appended (acknowledging it covers the ones before)."""
    log = state.log
    if not records:
        raise BrokerError(ErrorCode.CORRUPT_MESSAGE, "the partition's records are empty")
    first = unpack_header(records)
    if first.size_bytes == len(records):
        # The common case, one batch: the log validates it (header, CRC) as it appends.
        batches: list[tuple[memoryview | bytes, Any]] = [(records, first)]
    else:
        view = memoryview(records)
        batches = [
            (view[position : position + header.size_bytes], header)
            for position, header in iter_batches(
                records, validate=True, max_batch_bytes=log.config.max_batch_bytes
            )
        ]
    for data, header in batches:
        if header.is_control:
            raise BrokerError(
                ErrorCode.INVALID_RECORD,
                "control batches (transaction markers) are written by the broker, not produced",
            )
        state.check(data)  # all of them first: a partition's batches are written all or none
    if first.producer_id >= 0:
        return _append_idempotent(ctx, state, batches)
    base_offset = -1
    last: Appended | None = None
    for data, header in batches:
        last = state.append(data)
        if base_offset < 0:
            base_offset = last.base_offset
        ctx.metrics.records_in(state.topic, header.record_count, last.size_bytes)
    assert last is not None
    return base_offset, last


def _append_idempotent(
    ctx: BrokerContext, state: PartitionState, batches: list[tuple[memoryview | bytes, Any]]
) -> tuple[int, Appended]:
    """One batch of an idempotent or transactional producer: the partition's producer state
    (broker/transactions/producer_state.py) checks its epoch and sequence first. A retry of a
    batch the partition already has is answered with the original offsets and written again
    never (acks=all then waits for the original, as it would have); a gap, an older epoch or a
    transaction misuse is refused with the named error."""
    if len(batches) != 1:
        # As Kafka: sequences are checked per batch, and a request's batches would be checked
        # against a state none of them has reached yet.
        raise BrokerError(
            ErrorCode.INVALID_RECORD,
            f"an idempotent producer sends exactly one batch per partition, got {len(batches)}",
        )
    data, header = batches[0]
    term = state.leader_epoch
    duplicate = state.log.producers.check(header, term)
    if duplicate is not None:
        ctx.metrics.duplicate_batch(state.topic)
        end_offset = duplicate.last_offset + 1
        return duplicate.base_offset, Appended(
            duplicate.base_offset,
            duplicate.last_offset,
            0,
            lambda: state.wait_acked_to(end_offset, term),
        )
    appended = state.append(data)
    state.accept(header, appended.base_offset, term)
    ctx.metrics.records_in(state.topic, header.record_count, appended.size_bytes)
    return appended.base_offset, appended


def _settle_without_waiting(appended: list[_Appended]) -> None:
    for entry in appended:
        entry.state.notify()


async def _wait_durable(
    ctx: BrokerContext,
    timeout_ms: int,
    results: list[codec.ProducePartitionResult],
    appended: list[_Appended],
) -> codec.ProduceResponse:
    durable: set[int] = set()

    failures: dict[int, BrokerError] = {}

    async def wait_one(entry: _Appended) -> None:
        try:
            await entry.last.wait_acked()
        except BrokerError as exc:  # the log went offline (fsync failure), leadership lost
            failures[entry.index] = exc
            return
        except OSError as exc:  # e.g. the topic was deleted while its fsync ran
            failures[entry.index] = BrokerError(
                ErrorCode.KAFKA_STORAGE_ERROR, f"the append could not be made durable: {exc}"
            )
            return
        durable.add(entry.index)
        entry.state.notify()

    with trio.move_on_after(max(timeout_ms, 0) / 1000):
        if len(appended) == 1:
            await wait_one(appended[0])
        else:
            async with trio.open_nursery() as nursery:
                for entry in appended:
                    nursery.start_soon(wait_one, entry)
    for entry in appended:
        item = results[entry.index]
        failure = failures.get(entry.index)
        if failure is not None:
            results[entry.index] = _error_result(
                item.topic, item.partition, failure.code, failure.message, leader_hint(failure)
            )
        elif entry.index not in durable:
            results[entry.index] = _error_result(
                item.topic,
                item.partition,
                ErrorCode.REQUEST_TIMED_OUT,
                f"the append was not durable within timeout_ms={timeout_ms}; it may still "
                "become visible, retry with idempotence to avoid duplicates",
            )
    return codec.ProduceResponse(partitions=tuple(results))


def _error_result(
    topic: str, partition: int, code: ErrorCode, message: str, hint: dict[str, int] | None = None
) -> codec.ProducePartitionResult:
    return codec.ProducePartitionResult(
        topic=topic, partition=partition, error=code, error_message=message, **(hint or {})
    )
