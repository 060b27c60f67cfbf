"""Builders for the producer-state tests on a real log: producer batches, markers, a rebuild."""

from __future__ import annotations

import contextlib

from broker.log.log import PartitionLog
from broker.transactions.producer_state import (
    ProducerStateManager,
    build_marker_batch,
    is_marker,
    marker_of,
)
from wire.batch import (
    BatchHeader,
    InvalidBatchError,
    build_batch,
    iter_batches,
    unpack_header,
)

TS = 1_700_000_000_000


def producer_batch(
    pid: int = -1,
    epoch: int = -1,
    seq: int = -1,
    count: int = 1,
    *,
    txn: bool = False,
    ts: int = TS,
) -> bytes:
    return build_batch(
        [(ts, None, b"v%d" % n, None) for n in range(count)],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        transactional=txn,
    )


def producer_header(
    pid: int, epoch: int, seq: int, count: int = 1, *, txn: bool = False
) -> BatchHeader:
    return unpack_header(producer_batch(pid, epoch, seq, count, txn=txn))


def marker_batch(pid: int, epoch: int, *, commit: bool, coordinator_epoch: int = 0) -> bytes:
    return build_marker_batch(
        pid, epoch, commit=commit, coordinator_epoch=coordinator_epoch, timestamp_ms=TS
    )


def rebuilt(log: PartitionLog) -> ProducerStateManager:
    """The producer state computed from scratch from every batch in the log."""
    state = ProducerStateManager(log.log_start_offset)
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        result = log.read(offset, 1 << 20)
        data = bytes(result.data)
        for position, header in iter_batches(data):
            marker = None
            if is_marker(header):
                with contextlib.suppress(InvalidBatchError):  # ignored, as the log does
                    marker = marker_of(data, position, header)
            state.on_write(header, header.base_offset, marker)
        offset = result.next_offset
    return state


def same_state(log: PartitionLog) -> bool:
    """Whether the log's producer state equals one rebuilt from scratch (the high watermark at
    the log end, so that no completed transaction waits for it on either side)."""
    fresh = rebuilt(log)
    fresh.advance(log.log_end_offset)
    ours = ProducerStateManager.restore(log.producers.snapshot())  # a copy: the log's own
    ours.advance(log.log_end_offset)  # state keeps waiting for the real high watermark
    return fresh.snapshot() == ours.snapshot()


def snapshot_offsets(log: PartitionLog) -> list[int]:
    return sorted(int(path.name.split(".")[0]) for path in log.directory.glob("*.producers"))
