"""Fetched batches decode in bulk: offsets, timestamps, control batches skipped, CRC checked."""

from __future__ import annotations

import pytest

from client import _gc
from client.aio.consumer import decode_fetched, scan_fetched
from client.types import ConsumerRecord, TopicPartition
from wire.batch import (
    Compression,
    ControlType,
    CrcMismatchError,
    build_batch,
    build_control_batch,
)

TP = TopicPartition("t", 3)
T0 = 1_700_000_000_000


def batch(base_offset: int, count: int, compression: int = Compression.NONE) -> bytes:
    records = [
        (T0 + i, b"k%d" % i, b"v%d" % (base_offset + i), [("h", b"x")]) for i in range(count)
    ]
    return build_batch(records, base_offset=base_offset, compression=compression)


def test_records_carry_partition_offsets_and_fields() -> None:
    records = decode_fetched(TP, batch(10, 3), 10)
    assert records[0] == ConsumerRecord("t", 3, 10, T0, b"k0", b"v10", (("h", b"x"),))
    assert [r.offset for r in records] == [10, 11, 12]
    assert records[2].timestamp == T0 + 2
    assert records[1].topic == "t" and records[1].partition == 3


def test_records_before_the_fetch_offset_are_dropped() -> None:
    # The broker returns whole batches, so the first one may start before the position.
    data = batch(0, 5) + batch(5, 5)
    assert [r.offset for r in decode_fetched(TP, data, 3)] == [3, 4, 5, 6, 7, 8, 9]
    assert scan_fetched(data, 3) == (10, 10)
    assert scan_fetched(data, 5) == (10, 5)


def test_control_batches_are_skipped_but_advance_the_offset() -> None:
    control = bytearray(build_control_batch(ControlType.COMMIT, b"", timestamp_ms=T0))
    control[0:8] = (5).to_bytes(8, "big")  # its base offset, as the leader would assign it
    data = batch(0, 5) + bytes(control) + batch(6, 2)
    assert [r.offset for r in decode_fetched(TP, data, 0)] == [0, 1, 2, 3, 4, 6, 7]
    assert scan_fetched(data, 0) == (8, 7)


@pytest.mark.parametrize("codec", [Compression.GZIP, Compression.ZSTD, Compression.LZ4])
def test_compressed_batches(codec: int) -> None:
    assert [r.value for r in decode_fetched(TP, batch(0, 4, codec), 0)] == [
        b"v0", b"v1", b"v2", b"v3",
    ]  # fmt: skip


def test_corruption_is_caught_by_the_scan() -> None:
    data = bytearray(batch(0, 3))
    data[-1] ^= 0xFF
    with pytest.raises(CrcMismatchError):
        scan_fetched(bytes(data), 0)
    with pytest.raises(CrcMismatchError):
        decode_fetched(TP, bytes(data), 0)


def txn_batch(base_offset: int, count: int, producer_id: int, value: bytes) -> bytes:
    records = [(T0, None, value, None)] * count
    return build_batch(records, base_offset=base_offset, producer_id=producer_id,
                       producer_epoch=0, base_sequence=0, transactional=True)  # fmt: skip


def marker(offset: int, control_type: ControlType, producer_id: int) -> bytes:
    data = bytearray(
        build_control_batch(
            control_type, b"", timestamp_ms=T0, producer_id=producer_id, transactional=True
        )
    )
    data[0:8] = offset.to_bytes(8, "big")
    return bytes(data)


def test_read_committed_drops_aborted_batches_until_their_abort_marker() -> None:
    # Producer 7 aborts [0, 2), producer 8 commits [2, 3) meanwhile; producer 7 then writes a
    # transaction that commits: only the aborted range of producer 7 is dropped.
    data = (
        txn_batch(0, 2, 7, b"aborted")
        + txn_batch(2, 1, 8, b"other")
        + marker(3, ControlType.ABORT, 7)
        + marker(4, ControlType.COMMIT, 8)
        + txn_batch(5, 1, 7, b"later")
        + batch(6, 1)
        + marker(7, ControlType.COMMIT, 7)
    )
    aborted = [(7, 0)]
    records = decode_fetched(TP, data, 0, aborted)
    assert [(r.offset, r.value) for r in records] == [(2, b"other"), (5, b"later"), (6, b"v6")]
    assert scan_fetched(data, 0, aborted) == (8, 3)
    # Without the aborted list (read_uncommitted) everything but the markers is returned.
    assert [r.offset for r in decode_fetched(TP, data, 0)] == [0, 1, 2, 5, 6]


def test_an_abort_starting_after_the_fetch_offset_only_drops_from_its_first_offset() -> None:
    data = txn_batch(0, 1, 7, b"committed") + marker(1, ControlType.COMMIT, 7)
    data += txn_batch(2, 1, 7, b"aborted") + marker(3, ControlType.ABORT, 7)
    assert [r.value for r in decode_fetched(TP, data, 0, [(7, 2)])] == [b"committed"]
    assert scan_fetched(data, 0, [(7, 2)]) == (4, 1)


def test_a_few_records_decode_without_the_gc_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pause starts with a young collection (~40 us a poll at a steady low rate, up to
    # milliseconds when generation 1 is big): worth it only for a run of many records.
    collected: list[int] = []
    monkeypatch.setattr(_gc.gc, "collect", lambda generation=2: collected.append(generation))
    data = batch(0, 10)
    _, count = scan_fetched(data, 0)
    few = decode_fetched(TP, data, 0, count=count)
    assert collected == []
    assert few == decode_fetched(TP, data, 0)  # count unknown: paused as before
    assert collected == [1]
    big = batch(0, _gc.GC_PAUSE_ROWS)
    _, count = scan_fetched(big, 0)
    assert len(decode_fetched(TP, big, 0, count=count)) == _gc.GC_PAUSE_ROWS
    assert collected == [1, 1]
