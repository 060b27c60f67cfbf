"""Goal: OffsetIndex and TimeIndex answer lookups and truncations exactly as a sorted list would."""

from __future__ import annotations

import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.log.index import IndexFullError, OffsetIndex, TimeIndex

from .conftest import PROFILE

# Strictly growing (relative offset, position) pairs, as the segment writes them.
offset_entries = st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 10_000)), max_size=40).map(
    lambda steps: _accumulate(steps)
)


def _accumulate(steps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    entries, offset, position = [], 0, 0
    for number, (offset_step, position_step) in enumerate(steps):
        if number:
            offset += offset_step
            position += position_step
        entries.append((offset, position))
    return entries


@settings(PROFILE)
@given(
    entries=offset_entries,
    probes=st.lists(st.integers(-5, 50_000), max_size=20),
    cut=st.integers(-5, 50_000),
)
def test_offset_index_matches_a_sorted_list(entries, probes, cut):
    index = OffsetIndex(bytearray(8 * (len(entries) + 3)), 0)
    for offset, position in entries:
        index.append(offset, position)
    for probe in probes:
        keys = [offset for offset, _ in entries]
        slot = bisect.bisect_right(keys, probe) - 1
        assert index.lookup(probe) == ((0, 0) if slot < 0 else entries[slot])
    index.truncate_from(cut)
    kept = [entry for entry in entries if entry[0] < cut]
    assert index.entry_count == len(kept)
    assert index.last_entry() == (kept[-1] if kept else None)
    # Appending after a truncation continues from the kept prefix.
    next_offset = kept[-1][0] + 1 if kept else 0
    next_position = kept[-1][1] + 1 if kept else 0
    index.append(next_offset, next_position)
    assert index.lookup(next_offset) == (next_offset, next_position)


# Strictly growing timestamps and relative offsets.
time_entries = st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 50)), max_size=40).map(
    lambda steps: [(10**12 + ts, off) for ts, off in _accumulate(steps)]
)


@settings(PROFILE)
@given(
    entries=time_entries,
    probes=st.lists(st.integers(10**12 - 5, 10**12 + 50_000), max_size=20),
    cut=st.integers(-5, 3000),
)
def test_time_index_matches_a_sorted_list(entries, probes, cut):
    index = TimeIndex(bytearray(12 * len(entries) + 5), 0)
    for timestamp, offset in entries:
        index.append(timestamp, offset)
    for probe in probes:
        before = [offset for timestamp, offset in entries if timestamp < probe]
        assert index.lookup_before(probe) == (before[-1] if before else 0)
    index.truncate_from_offset(cut)
    kept = [entry for entry in entries if entry[1] < cut]
    assert index.entry_count == len(kept)
    assert index.last_timestamp() == (kept[-1][0] if kept else None)


def test_full_index_refuses_an_entry_and_keeps_its_contents():
    index = OffsetIndex(bytearray(8 * 3 + 7), 0)
    assert index.capacity == 3
    for n in range(3):
        index.append(n * 10, n * 100)
    assert index.is_full
    with pytest.raises(IndexFullError):
        index.append(40, 400)
    assert index.entry_count == 3 and index.lookup(1000) == (20, 200)
    time_index = TimeIndex(bytearray(12), 0)
    time_index.append(5, 0)
    with pytest.raises(IndexFullError):
        time_index.append(6, 1)


def test_keys_must_grow():
    index = OffsetIndex(bytearray(80), 0)
    index.append(5, 10)
    with pytest.raises(AssertionError):
        index.append(5, 20)
    with pytest.raises(AssertionError):
        index.append(6, 10)


def test_existing_entries_are_read_back_from_the_buffer():
    buffer = bytearray(80)
    writer = OffsetIndex(buffer, 0)
    writer.append(0, 0)
    writer.append(7, 4096)
    reader = OffsetIndex(bytes(buffer[:16]), 2)  # a trimmed, read-only file
    assert reader.lookup(100) == (7, 4096) and reader.lookup(6) == (0, 0)
