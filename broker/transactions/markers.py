"""Transaction markers: writing them on a partition leader, and delivering them from a coordinator.

A transaction ends with one control batch (COMMIT or ABORT, with the transactional bit) on every
partition it wrote, and on the __consumer_offsets partition of every group it committed offsets
for. The marker goes through the partition like any batch (`PartitionState.append`: the local log,
or a Raft proposal), so it is replicated, ordered after the transaction's data, and seen by every
replica's producer state (broker/transactions/producer_state.py), which closes the transaction
there: the last stable offset moves past it, and an ABORT enters the aborted-transaction index.

Rules:
1. `append_markers` runs in the connection's reader (the WriteTxnMarkers handler) or in the
   coordinator's task: it appends at once, so markers keep their order with produces.
2. A marker is acknowledged as acks=all is (durable here, or committed by the partition's group).
3. A partition that no longer exists (its topic was deleted) needs no marker: it counts as written,
   or the transaction could never complete.
4. A marker on a `__consumer_offsets` partition goes through the group service
   (`GroupService.write_marker`) instead of straight to the partition: the group core orders it
   behind its own writes, so its store commits or drops the producer's pending offsets in log
   order, and its acknowledgement means the offsets are visible (or gone).
5. `MarkerDelivery.deliver` is the coordinator's side: partitions this broker leads are written
   here; the others are sent to their leaders as one WriteTxnMarkers per leader. Any failure is
   returned per partition, and the coordinator retries those until they are written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import trio

from broker.appended import Appended
from broker.consumer_groups.group import TopicPartition
from broker.coordinator_shell import wall_clock_ms
from broker.internal_topics import OFFSETS_TOPIC
from broker.transactions.producer_state import Marker, build_marker_batch
from broker.transactions.txn_actions import WriteMarkers
from wire import codec
from wire.batch import unpack_header
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

# Partitions that are gone: a marker for them is done (rule 3).
_GONE: Final = (ErrorCode.UNKNOWN_TOPIC, ErrorCode.UNKNOWN_PARTITION)


def append_markers(
    ctx: Any, marker: codec.TxnMarker
) -> list[tuple[codec.TopicPartitionRef, Appended | BrokerError]]:
    """Append `marker` to each of its partitions now (rule 1); per partition, what to await.
    `__consumer_offsets` partitions are written by the group service (rule 4)."""
    out: list[tuple[codec.TopicPartitionRef, Appended | BrokerError]] = []
    now_ms = wall_clock_ms()
    for ref in marker.partitions:
        try:
            state = ctx.partition(ref.topic, ref.partition)
            # A fenced coordinator or an older producer epoch writes nothing.
            state.log.producers.check_marker(
                marker.producer_id, marker.producer_epoch, marker.coordinator_epoch
            )
            if ref.topic == OFFSETS_TOPIC and ctx.groups is not None:
                out.append(
                    (
                        ref,
                        ctx.groups.write_marker(
                            ref.partition,
                            marker.producer_id,
                            marker.producer_epoch,
                            commit=marker.committed,
                            coordinator_epoch=marker.coordinator_epoch,
                        ),
                    )
                )
                continue
            batch = build_marker_batch(
                marker.producer_id,
                marker.producer_epoch,
                commit=marker.committed,
                coordinator_epoch=marker.coordinator_epoch,
                timestamp_ms=now_ms,
            )
            appended = state.append(batch)
            state.accept(
                unpack_header(batch),
                appended.base_offset,
                state.leader_epoch,
                marker=Marker(marker.committed, marker.coordinator_epoch),
            )
            out.append((ref, appended))
        except BrokerError as exc:
            out.append((ref, exc))
        except OSError as exc:
            out.append((ref, BrokerError(ErrorCode.KAFKA_STORAGE_ERROR, str(exc))))
    return out


async def await_markers(
    ctx: Any,
    marker: codec.TxnMarker,
    appended: list[tuple[codec.TopicPartitionRef, Appended | BrokerError]],
    timeout_s: float,
) -> codec.TxnMarkerResult:
    """Wait for each appended marker to be acknowledged (rule 2; on a __consumer_offsets
    partition that includes the group core applying it, rule 4)."""
    results: dict[codec.TopicPartitionRef, codec.TxnPartitionResult] = {}

    async def one(ref: codec.TopicPartitionRef, outcome: Appended | BrokerError) -> None:
        error, message = ErrorCode.NONE, ""
        if isinstance(outcome, BrokerError):
            error, message = outcome.code, outcome.message
        else:
            try:
                with trio.fail_after(timeout_s):
                    await outcome.wait_acked()
            except trio.TooSlowError:
                error, message = ErrorCode.REQUEST_TIMED_OUT, "the marker was not acknowledged"
            except BrokerError as exc:
                error, message = exc.code, exc.message
            except OSError as exc:
                error, message = ErrorCode.KAFKA_STORAGE_ERROR, str(exc)
        if error in _GONE:
            error, message = ErrorCode.NONE, ""
        elif error is ErrorCode.NONE:
            state = ctx.partitions.get((ref.topic, ref.partition))
            if state is not None:
                state.notify()  # read_committed fetches waiting on the last stable offset
        results[ref] = codec.TxnPartitionResult(
            topic=ref.topic, partition=ref.partition, error=error, error_message=message
        )

    async with trio.open_nursery() as nursery:
        for ref, outcome in appended:
            nursery.start_soon(one, ref, outcome)
    return codec.TxnMarkerResult(
        producer_id=marker.producer_id,
        partitions=tuple(results[ref] for ref, _ in appended),
    )


class MarkerDelivery:
    """The coordinator's marker writer (rule 4): `deliver` is the TransactionService's
    `write_markers`."""

    def __init__(
        self, ctx: Any, *, timeout_s: float, leader_of: Callable[[Any, str, int], int]
    ) -> None:
        """`leader_of(ctx, topic, partition)`: the partition's leader as Metadata would name it
        (-1: none known), i.e. broker/handlers/cluster.py's view in a cluster."""
        self._ctx = ctx
        self._timeout_s = timeout_s
        self._cluster_leader_of = leader_of

    async def deliver(self, markers: WriteMarkers) -> dict[TopicPartition, ErrorCode]:
        """Write `markers` (the coordinator's action) on every partition it names; per
        partition, NONE or why not (the coordinator retries those)."""
        producer_id, producer_epoch = markers.producer_id, markers.producer_epoch
        committed, coordinator_epoch = markers.commit, markers.coordinator_epoch
        by_leader: dict[int, list[TopicPartition]] = {}
        outcome: dict[TopicPartition, ErrorCode] = {}
        for tp in markers.partitions:
            leader = self._leader_of(tp)
            if leader is None:
                outcome[tp] = ErrorCode.LEADER_NOT_AVAILABLE
            else:
                by_leader.setdefault(leader, []).append(tp)

        async def to_leader(leader: int, tps: list[TopicPartition]) -> None:
            marker = codec.TxnMarker(
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                committed=committed,
                coordinator_epoch=coordinator_epoch,
                partitions=tuple(
                    codec.TopicPartitionRef(topic=tp.topic, partition=tp.partition) for tp in tps
                ),
            )
            try:
                result = await self._write(leader, marker)
            except BrokerError as exc:
                logger.info("markers for producer %d to broker %d: %s", producer_id, leader, exc)
                outcome.update(dict.fromkeys(tps, exc.code))
                return
            for item in result.partitions:
                outcome[TopicPartition(item.topic, item.partition)] = item.error

        async with trio.open_nursery() as nursery:
            for leader, tps in sorted(by_leader.items()):
                nursery.start_soon(to_leader, leader, tps)
        return outcome

    def _leader_of(self, tp: TopicPartition) -> int | None:
        ctx = self._ctx
        if ctx.cluster is None:
            return ctx.node_id  # one broker leads everything
        leader = self._cluster_leader_of(ctx, tp.topic, tp.partition)
        if leader < 0 and ctx.cluster.cache.topic(tp.topic) is None:
            return ctx.node_id  # the topic is gone: the local write answers UNKNOWN_TOPIC
        return leader if leader > 0 else None

    async def _write(self, leader: int, marker: codec.TxnMarker) -> codec.TxnMarkerResult:
        ctx = self._ctx
        if leader == ctx.node_id:
            return await await_markers(ctx, marker, append_markers(ctx, marker), self._timeout_s)
        request = codec.WriteTxnMarkersRequest(markers=(marker,))
        response = await ctx.cluster.peer_clients.call(
            leader, request, extra_timeout_s=self._timeout_s
        )
        if response.error is not ErrorCode.NONE:
            raise BrokerError(response.error, response.error_message)
        (result,) = response.markers
        return result  # type: ignore[no-any-return]
