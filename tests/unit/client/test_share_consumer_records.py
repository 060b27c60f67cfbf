"""A ShareFetch answer's batches filtered by the acquired ranges: only acquired records, each with
its range's delivery count; control batches and missing records inside batches become gaps."""

from __future__ import annotations

import pytest

from client.aio.share_consumer import acquired_records
from client.types import ShareRecord, TopicPartition
from wire import codec
from wire.batch import ControlType, CrcMismatchError, build_batch, build_control_batch

TP = TopicPartition("jobs", 2)
T0 = 1_700_000_000_000


def batch(base_offset: int, count: int) -> bytes:
    records = [(T0 + i, b"k%d" % i, b"v%d" % (base_offset + i), None) for i in range(count)]
    return build_batch(records, base_offset=base_offset)


def acquired(*spans: tuple[int, int, int]) -> tuple[codec.AcquiredRange, ...]:
    return tuple(
        codec.AcquiredRange(first_offset=first, last_offset=last, delivery_count=count)
        for first, last, count in spans
    )


def offsets(records: list[ShareRecord]) -> list[tuple[int, int]]:
    return [(r.offset, r.delivery_count) for r in records]


def test_only_acquired_records_are_kept_with_their_delivery_counts() -> None:
    # Two batches 0-9 and 10-19; another member holds 0-2 and 8-11.
    data = batch(0, 10) + batch(10, 10)
    records, gaps = acquired_records(TP, data, acquired((12, 19, 1), (3, 7, 3)))
    assert offsets(records) == [(o, 3) for o in range(3, 8)] + [(o, 1) for o in range(12, 20)]
    assert gaps == []
    first = records[0]
    assert first == ShareRecord("jobs", 2, 3, T0 + 3, b"k3", b"v3", None, 3)
    assert (first.topic, first.partition, first.value) == ("jobs", 2, b"v3")


def test_nothing_acquired_means_no_records_even_with_batches() -> None:
    assert acquired_records(TP, batch(0, 5), ()) == ([], [])


def test_a_control_batch_inside_a_range_is_a_gap() -> None:
    control = bytearray(build_control_batch(ControlType.COMMIT, b"", timestamp_ms=T0))
    control[0:8] = (5).to_bytes(8, "big")  # its base offset, as the leader would assign it
    data = batch(0, 5) + bytes(control) + batch(6, 4)
    records, gaps = acquired_records(TP, data, acquired((2, 8, 1)))
    assert [r.offset for r in records] == [2, 3, 4, 6, 7, 8]
    assert gaps == [5]


def test_acquired_offsets_no_batch_covers_are_not_gaps() -> None:
    # The answer stopped at offset 4 (a size limit): 5-9 may hold records; never GAP them.
    records, gaps = acquired_records(TP, batch(0, 5), acquired((0, 9, 2)))
    assert offsets(records) == [(o, 2) for o in range(5)]
    assert gaps == []


def test_records_are_in_offset_order_whatever_the_order_of_the_ranges() -> None:
    records, _ = acquired_records(TP, batch(0, 6), acquired((4, 5, 1), (0, 1, 2)))
    assert offsets(records) == [(0, 2), (1, 2), (4, 1), (5, 1)]


def test_corrupt_batches_are_refused() -> None:
    data = bytearray(batch(0, 3))
    data[-1] ^= 0xFF
    with pytest.raises(CrcMismatchError):
        acquired_records(TP, bytes(data), acquired((0, 2, 1)))
