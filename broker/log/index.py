"""Sparse, fixed-width segment indexes, binary-searched over a buffer.

`OffsetIndex` maps a batch's offset (relative to the segment's base offset, u32) to the batch's byte
position in the segment's .log file (u32). `TimeIndex` maps a timestamp (i64) to the relative offset
of the first batch whose max timestamp reached it; it gains an entry only when the segment's max
timestamp grows, so both indexes are sorted and lookups are bisections.

Both work over any writable buffer: an `mmap` of the preallocated index file in production, a
`bytearray` in tests. They hold no file handles: `broker/log/segment.py` owns the files. Entries are
only ever appended or cut from the end, so `entry_count` fully describes the valid prefix.
"""

from __future__ import annotations

import bisect
import struct
from typing import Protocol


class WritableBuffer(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: slice) -> bytes: ...
    def __setitem__(self, index: slice, value: bytes) -> None: ...


class IndexFullError(Exception):
    """The index buffer has no room for another entry; the segment must roll first."""


_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")


class _SortedEntries:
    """Append-only sorted entries of a fixed `struct` layout, keyed by their first field."""

    ENTRY: struct.Struct

    def __init__(self, buffer: WritableBuffer, entry_count: int) -> None:
        assert 0 <= entry_count * self.ENTRY.size <= len(buffer)
        self.buffer = buffer
        self.entry_count = entry_count

    @property
    def capacity(self) -> int:
        return len(self.buffer) // self.ENTRY.size

    @property
    def is_full(self) -> bool:
        return self.entry_count >= self.capacity

    @property
    def size_bytes(self) -> int:
        return self.entry_count * self.ENTRY.size

    def entry(self, slot: int) -> tuple[int, int]:
        assert 0 <= slot < self.entry_count
        return self.ENTRY.unpack_from(self.buffer, slot * self.ENTRY.size)  # type: ignore[return-value]

    def _key(self, slot: int) -> int:
        return self.ENTRY.unpack_from(self.buffer, slot * self.ENTRY.size)[0]  # type: ignore[no-any-return]

    def _append(self, key: int, value: int, *, value_must_grow: bool) -> None:
        # One unpack of the last entry checks both orders: this runs once per appended batch.
        count = self.entry_count
        size = self.ENTRY.size
        if (count + 1) * size > len(self.buffer):
            raise IndexFullError(f"index holds its maximum of {self.capacity} entries")
        if count:
            last_key, last_value = self.ENTRY.unpack_from(self.buffer, (count - 1) * size)
            assert key > last_key, "keys must grow"
            assert not value_must_grow or value > last_value, "values must grow"
        self.ENTRY.pack_into(self.buffer, count * size, key, value)
        self.entry_count = count + 1

    def _slot_at_or_before(self, key: int) -> int:
        """The last slot whose key is <= `key`, or -1 when every key is larger."""
        return bisect.bisect_right(range(self.entry_count), key, key=self._key) - 1

    def _slot_before(self, key: int) -> int:
        """The last slot whose key is < `key`, or -1."""
        return bisect.bisect_left(range(self.entry_count), key, key=self._key) - 1

    def _truncate_from_key(self, key: int) -> None:
        """Drop every entry whose key is >= `key`."""
        self.entry_count = self._slot_before(key) + 1


class OffsetIndex(_SortedEntries):
    """Relative offset -> file position, one entry per `index_interval_bytes` of batches."""

    ENTRY = _OFFSET_ENTRY

    def append(self, relative_offset: int, position: int) -> None:
        assert 0 <= relative_offset < 2**32 and 0 <= position < 2**32
        self._append(relative_offset, position, value_must_grow=True)

    def lookup(self, relative_offset: int) -> tuple[int, int]:
        """The indexed (relative offset, position) at or before `relative_offset`; (0, 0) if none.

        The batch containing `relative_offset` starts at or after the returned position.
        """
        slot = self._slot_at_or_before(relative_offset)
        return (0, 0) if slot < 0 else self.entry(slot)

    def truncate_from(self, relative_offset: int) -> None:
        """Forget entries for batches starting at or after `relative_offset`."""
        self._truncate_from_key(relative_offset)

    def last_entry(self) -> tuple[int, int] | None:
        return self.entry(self.entry_count - 1) if self.entry_count else None


class TimeIndex(_SortedEntries):
    """Timestamp -> relative offset of the first batch whose max timestamp reached it."""

    ENTRY = _TIME_ENTRY

    def append(self, timestamp_ms: int, relative_offset: int) -> None:
        assert 0 <= relative_offset < 2**32
        self._append(timestamp_ms, relative_offset, value_must_grow=True)

    def lookup_before(self, timestamp_ms: int) -> int:
        """A relative offset from which a scan finds the first batch with max ts >= `timestamp_ms`.

        Every batch before the returned offset has a max timestamp below `timestamp_ms`, because an
        entry is written the first time the segment's max timestamp reaches its value.
        """
        entry = self.entry_before(timestamp_ms)
        return 0 if entry is None else entry[1]

    def entry_before(self, timestamp_ms: int) -> tuple[int, int] | None:
        """The last (timestamp, relative offset) entry with a timestamp below `timestamp_ms`.

        The segment checks it against the batch it names before trusting `lookup_before`'s rule.
        """
        slot = self._slot_before(timestamp_ms)
        return None if slot < 0 else self.entry(slot)

    def truncate_from_offset(self, relative_offset: int) -> None:
        """Forget entries pointing at batches at or after `relative_offset`."""
        # Entries are sorted by offset as well as by timestamp, so the kept ones are a prefix.
        self.entry_count = bisect.bisect_left(
            range(self.entry_count), relative_offset, key=lambda slot: self.entry(slot)[1]
        )

    def last_timestamp(self) -> int | None:
        return self.entry(self.entry_count - 1)[0] if self.entry_count else None
