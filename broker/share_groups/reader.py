"""Reading a topic partition for a share coordinator: from a local replica, or from its leader.

A share group's coordinator is the leader of the group's `__share_group_state` partition, which
need not lead (or even host) the topic partitions the group reads. Records are read from the
local replica when this broker has one (leader or follower: below its high watermark everything
is committed), else fetched from the partition's leader. Batches stay opaque: only their headers
are walked (one per batch, never per record) to find offsets and append times.

Share groups read uncommitted data (KIP-932's default `share.isolation.level`): records of an
open or aborted transaction are handed out like any other (docs/queues.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final

from broker.consumer_groups.group import TopicPartition
from broker.share_groups.share_partition import BatchRun
from wire import codec
from wire.batch import iter_batches
from wire.error_codes import BrokerError, ErrorCode

# The first read of a partition at a position (it then grows by what the batches read so far
# say a record takes, up to READ_BYTES_MAX): reads stay near what a fetch hands out.
READ_BYTES_FIRST: Final = 64 * 1024
READ_BYTES_MAX: Final = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """Whole batches from the one holding the offset asked for, and the log's bounds."""

    data: bytes
    log_start_offset: int
    high_watermark: int


def batch_runs(data: bytes | memoryview, max_records: int) -> tuple[BatchRun, ...]:
    """The batches of `data` as offset ranges, until they hold `max_records` records."""
    runs: list[BatchRun] = []
    count = 0
    for _, header in iter_batches(data, validate=False):
        runs.append(BatchRun(header.base_offset, header.last_offset, header.base_timestamp))
        count += header.last_offset - header.base_offset + 1
        if count >= max_records:
            break
    return tuple(runs)


def _count(data: bytes) -> tuple[int, int]:
    """(records, offset after the last batch) of the batches in `data` (0, -1 if none)."""
    records = 0
    next_offset = -1
    for _, header in iter_batches(data, validate=False):
        records += header.last_offset - header.base_offset + 1
        next_offset = header.last_offset + 1
    return records, next_offset


def batches_between(data: bytes, first: int, last: int) -> tuple[bytes, int]:
    """The batches of `data` holding any offset in [first, last], and the offset after the last
    batch of `data` (where to read on if it ends before `last`)."""
    start = end = None
    next_offset = first
    for position, header in iter_batches(data, validate=False):
        next_offset = header.last_offset + 1
        if header.base_offset > last:
            break
        if header.last_offset < first:
            continue
        if start is None:
            start = position
        end = position + header.size_bytes
    if start is None or end is None:
        return b"", next_offset
    return data[start:end], next_offset


class PartitionReader:
    """Reads partitions for the share coordinator (module docstring). `leader_of(ctx, topic,
    partition)` names a partition's leader in a cluster (-1: none known)."""

    def __init__(self, ctx: Any, leader_of: Callable[[Any, str, int], int] | None = None) -> None:
        self._ctx = ctx
        self._leader_of = leader_of

    def local(self, tp: TopicPartition) -> Any:
        """This broker's replica of `tp`, if it has one."""
        state = self._ctx.partitions.get((tp.topic, tp.partition))
        return None if state is None or state.removed else state

    def read_local(self, state: Any, offset: int, max_bytes: int) -> Chunk:
        """Batches from `offset` (moved up to the log start) below the high watermark."""
        log = state.log
        high_watermark = int(state.high_watermark)
        start = int(log.log_start_offset)
        offset = max(offset, start)
        data: bytes = b""
        if offset < high_watermark:
            result = log.read(offset, max_bytes, max_offset=high_watermark)
            data = result.data if isinstance(result.data, bytes) else bytes(result.data)
        return Chunk(data, start, high_watermark)

    async def read(self, tp: TopicPartition, offset: int, max_bytes: int) -> Chunk:
        state = self.local(tp)
        if state is not None:
            return self.read_local(state, offset, max_bytes)
        return await self._read_remote(tp, offset, max_bytes)

    async def read_records(
        self, tp: TopicPartition, offset: int, max_records: int, max_bytes: int = READ_BYTES_MAX
    ) -> Chunk:
        """Whole batches from `offset` holding about `max_records` records: a first read of
        READ_BYTES_FIRST, then more, sized by the record size seen so far, until the batches
        hold `max_records` records, the high watermark is reached, or `max_bytes` are read."""
        chunk = await self.read(tp, offset, min(READ_BYTES_FIRST, max_bytes))
        parts = [chunk.data]
        size = len(chunk.data)
        records, next_offset = _count(chunk.data)
        while (
            records < max_records
            and next_offset < chunk.high_watermark
            and size < max_bytes
            and records
        ):
            per_record = size / records
            want = int((max_records - records) * per_record * 1.25) + 1
            more = await self.read(tp, next_offset, min(max(want, 1), max_bytes - size))
            if not more.data:
                break
            parts.append(more.data)
            size += len(more.data)
            got, next_offset = _count(more.data)
            records += got
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return Chunk(data, chunk.log_start_offset, chunk.high_watermark)

    async def read_range(self, tp: TopicPartition, first: int, last: int, max_bytes: int) -> bytes:
        """Every batch holding an offset of [first, last] (at least one batch, at most about
        `max_bytes` after that)."""
        out: list[bytes] = []
        offset = first
        size = 0
        while offset <= last and (size < max_bytes or not out):
            chunk = await self.read_records(tp, offset, last - offset + 1, max_bytes - size)
            if not chunk.data:
                break
            data, next_offset = batches_between(chunk.data, offset, last)
            if data:
                out.append(data)
                size += len(data)
            if next_offset <= offset:
                break
            offset = next_offset
        return b"".join(out)

    async def _read_remote(
        self, tp: TopicPartition, offset: int, max_bytes: int, *, retried: bool = False
    ) -> Chunk:
        ctx = self._ctx
        if ctx.cluster is None or self._leader_of is None:
            ctx.topics.require_partition(tp.topic, tp.partition)
            raise BrokerError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"{tp.topic}-{tp.partition} is not open yet"
            )
        leader = self._leader_of(ctx, tp.topic, tp.partition)
        if leader <= 0:
            raise BrokerError(
                ErrorCode.LEADER_NOT_AVAILABLE, f"{tp.topic}-{tp.partition} has no leader"
            )
        request = codec.FetchRequest(
            partitions=(
                codec.FetchPartition(
                    topic=tp.topic,
                    partition=tp.partition,
                    fetch_offset=offset,
                    partition_max_bytes=max_bytes,
                ),
            ),
            max_wait_ms=0,
            min_bytes=0,
            max_bytes=max_bytes,
        )
        response = await ctx.cluster.peer_clients.call(leader, request)
        (result,) = response.partitions
        if result.error is ErrorCode.OFFSET_OUT_OF_RANGE and not retried:
            # Below the log start (retention): read on from there.
            earliest = await ctx.cluster.peer_clients.call(
                leader,
                codec.ListOffsetsRequest(
                    partitions=(
                        codec.ListOffsetsPartition(
                            topic=tp.topic,
                            partition=tp.partition,
                            timestamp=codec.EARLIEST_TIMESTAMP,
                        ),
                    )
                ),
            )
            (start,) = earliest.partitions
            if start.error is ErrorCode.NONE and start.offset > offset:
                return await self._read_remote(tp, start.offset, max_bytes, retried=True)
        if result.error is not ErrorCode.NONE:
            raise BrokerError(result.error, result.error_message)
        return Chunk(result.records, result.log_start_offset, result.high_watermark)
