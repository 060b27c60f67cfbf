"""Shared builders for the storage-engine tests: batches with chosen fields, configs, a model;
and for the fsync tests, an inline budget and a wait for a condition."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

import crc32c
import trio

from broker.config import FlushPolicy, LogConfig
from broker.log.inline_fsync import InlineBudget, use_loop_budget
from wire.batch import (
    CRC_START,
    BatchHeader,
    build_batch,
    iter_batches,
    set_base_offset,
    set_leader_epoch,
    unpack_header,
)

BASE_TS = 1_700_000_000_000


def make_batch(
    timestamps: list[int],
    *,
    value_bytes: int = 16,
    base_offset: int = 0,
    leader_epoch: int = -1,
    extra_offsets: int = 0,
) -> bytes:
    """A msgpack batch of len(timestamps) records; `extra_offsets` widens last_offset_delta past
    record_count - 1 (as compaction leaves batches) with the CRC recomputed."""
    records = [
        (ts, b"k%d" % i, bytes([i % 251]) * value_bytes, None) for i, ts in enumerate(timestamps)
    ]
    raw = bytearray(build_batch(records, base_offset=base_offset, leader_epoch=leader_epoch))
    if extra_offsets:
        struct.pack_into(">i", raw, 23, len(timestamps) - 1 + extra_offsets)
        reseal_crc(raw)
    return bytes(raw)


def reseal_crc(raw: bytearray, position: int = 0) -> None:
    """Recompute the CRC of the batch at `position` after editing a covered field."""
    header = unpack_header(raw, position)
    end = position + header.size_bytes
    crc = crc32c.crc32c(bytes(raw[position + CRC_START : end]))
    struct.pack_into(">I", raw, position + 17, crc)


def with_offset_and_epoch(batch: bytes, base_offset: int, epoch: int) -> bytes:
    raw = bytearray(batch)
    set_base_offset(raw, 0, base_offset)
    set_leader_epoch(raw, 0, epoch)
    return bytes(raw)


def split_batches(data: bytes | memoryview) -> list[tuple[BatchHeader, bytes]]:
    """Validate and split a buffer of whole batches."""
    data = bytes(data)
    batches = iter_batches(data, max_batch_bytes=2**31 - 1)
    return [(header, data[p : p + header.size_bytes]) for p, header in batches]


def small_config(**changes: object) -> LogConfig:
    """Tiny segments and indexes so that rolls and full indexes happen within a few appends.

    LogConfig is built without validate(): index_bytes_max below its production minimum is the
    point (a full index must force a roll)."""
    base = LogConfig(
        segment_bytes=2048,
        segment_ms=10**9,
        index_interval_bytes=256,
        index_bytes_max=4096,
        retention_ms=-1,
        retention_bytes=-1,
        max_batch_bytes=64 * 1024,
        flush_policy=FlushPolicy.NEVER,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass
class ModelBatch:
    base_offset: int
    last_offset: int
    epoch: int
    max_timestamp: int
    timestamps: list[int]
    data: bytes

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclasses.dataclass
class LogModel:
    """The log as a plain list of batches plus its start offset."""

    start: int = 0
    batches: list[ModelBatch] = dataclasses.field(default_factory=list)

    @property
    def end(self) -> int:
        return self.batches[-1].next_offset if self.batches else self.start

    @property
    def last_term(self) -> int:
        return self.batches[-1].epoch if self.batches else -1

    @property
    def size_bytes(self) -> int:
        return sum(batch.size_bytes for batch in self.batches)

    def add(self, data: bytes) -> ModelBatch:
        header = unpack_header(data)
        from wire.batch import decode_records

        timestamps = [record.timestamp for record in decode_records(data, header=header)]
        batch = ModelBatch(
            header.base_offset,
            header.last_offset,
            header.leader_epoch,
            header.max_timestamp,
            timestamps,
            bytes(data),
        )
        assert batch.base_offset == self.end
        self.batches.append(batch)
        return batch

    def index_of(self, offset: int) -> int | None:
        """Index of the first batch whose last offset is >= `offset`."""
        for number, batch in enumerate(self.batches):
            if batch.last_offset >= offset:
                return number
        return None

    def truncate(self, offset: int) -> None:
        if offset >= self.end:
            return
        if offset <= self.start:
            self.batches = []
            return
        self.batches = [batch for batch in self.batches if batch.last_offset < offset]

    def reset(self, start: int) -> None:
        self.start = start
        self.batches = []

    def drop_before(self, start: int) -> None:
        self.batches = [batch for batch in self.batches if batch.base_offset >= start]
        self.start = start

    def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        for batch in self.batches:
            for number, ts in enumerate(batch.timestamps):
                if ts >= timestamp_ms:
                    return batch.base_offset + number, ts
        return None

    def term_at(self, offset: int) -> int:
        number = self.index_of(offset)
        assert number is not None
        return self.batches[number].epoch


def ample_inline_budget() -> None:
    """Give this trio run's event loop an inline-fsync budget no disk spends (no busy spell, no
    stall under a minute), for tests that expect their fsyncs inline however slow the disk."""
    use_loop_budget(InlineBudget(1.0, burst_s=10.0, stall_s=60.0))


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Until `condition()` holds, checked every millisecond; fails after `timeout_s`."""
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.001)
