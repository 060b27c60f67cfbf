"""One segment of a partition log: a `.log` file of batches with its `.index` and `.timeindex`.

Files are named by the segment's base offset, zero-padded to 20 digits. The `.log` file is written
with `pwrite` at the tracked end position and read with `pread` (or handed to `os.sendfile` as a
file region); the index files are preallocated, memory-mapped and trimmed to their used size when
the segment is sealed (rolled or cleanly closed).

The active segment's `.log` file is longer than its batches: it is zero-filled ahead of the last
one (`LogConfig.preallocate_bytes`), so that most appends land in blocks the file already has and
their `fdatasync` skips the journal commit of a new file size (docs/storage.md, "Preallocation").
The segment's end is therefore `size_bytes`, never the file's size: sealing cuts the zeros off,
and recovery takes an all-zero tail for the end it is, not for damage.

Rules:
- Batches are appended whole and in offset order; the first batch's base offset is the segment's.
- Only the active (last) segment is writable; a sealed segment's indexes are mapped read-only.
- A segment opened without trust (`recover=True`) re-validates every batch with its CRC, cuts the
  file at the first damaged or out-of-order batch and rebuilds both indexes from what survived.
- Bytes are durable only after `sync_paths()` have been fsynced (see `broker/log/log.py`).
- Nothing read from disk is trusted blindly: every header walk checks that sizes stay inside the
  file and base offsets continue, index entries are checked against the header they point at (a
  damaged index falls back to scanning), and `verified_bytes`/`unverified_end` bound what was
  trusted at open without a CRC check, so readers verify it, once, before serving it.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from broker.config import LogConfig
from broker.log.index import IndexFullError, OffsetIndex, TimeIndex
from wire.batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    InvalidBatchError,
    unpack_header,
    validate_batch,
)
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
NO_TIMESTAMP = -1
# Recovery reads the file in chunks of this size; a batch larger than a chunk is read on its own.
RECOVERY_CHUNK_BYTES = 8 * 1024 * 1024
# The least an active segment is zero-filled ahead (unless preallocate_bytes is smaller): the fill
# grows with the segment, so an idle partition holds little of it (1,000 of them: 16 MiB of disk).
PREALLOCATE_MIN_BYTES = 16 * 1024
# Zeros are written from this buffer, a piece at a time.
_ZEROS = memoryview(bytes(256 * 1024))
# A declared batch length is trusted during recovery only up to the bytes left in the file; the CRC
# then decides. This keeps batches written under a larger, since lowered, max_batch_bytes.
_RECOVERY_MAX_BATCH_BYTES = 2**31 - 1


# Index entries hold offsets relative to the segment's base as u32; like Kafka, a segment rolls
# before a batch's last offset would lie further than this from the base.
RELATIVE_OFFSET_MAX = 2**31 - 1
# base_offset, batch_length, leader_epoch: the fields the leader rewrites, all outside the CRC.
_PREFIX16 = struct.Struct(">qii")


def segment_file_name(base_offset: int, suffix: str) -> str:
    return f"{base_offset:020d}{suffix}"


class SegmentCorruptError(BrokerError):
    """Bytes on disk do not form the batches the segment's metadata says they do.

    At open this makes the segment go through recovery; at read time it means damage in a part
    of a segment that was trusted at open (see docs/storage.md), and nothing damaged is served.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.KAFKA_STORAGE_ERROR, message)


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryNote:
    """What recovery cut from a segment, and why (also logged)."""

    segment_base_offset: int
    valid_bytes: int
    truncated_bytes: int
    reason: str


# How much of a writable index file is mapped (and allocated) at first; it doubles as entries
# arrive, up to the configured maximum (`index_bytes_max`). Mapping and first touching a large
# sparse file costs time in proportion to its size (about 2 ms for Kafka's 10 MiB here): paid
# up front, that made creating a thousand partitions' segments take a minute.
INDEX_MAP_INITIAL_BYTES = 64 * 1024


class _MappedIndex:
    """The file behind an index: mapped read-write and grown on demand up to `capacity_bytes`,
    or trimmed and mapped read-only."""

    def __init__(self, path: Path, *, capacity_bytes: int | None) -> None:
        self.path = path
        self.capacity_bytes = capacity_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.file_size_bytes = os.fstat(fd).st_size
            self.buffer: mmap.mmap | bytes
            if capacity_bytes is not None:
                # Never cut entries of a file written under a larger, since lowered, capacity.
                self.capacity_bytes = max(capacity_bytes, self.file_size_bytes)
                mapped = max(self.file_size_bytes, min(capacity_bytes, INDEX_MAP_INITIAL_BYTES))
                self.buffer = self._map(fd, mapped)
            elif self.file_size_bytes:
                self.buffer = mmap.mmap(fd, self.file_size_bytes, prot=mmap.PROT_READ)
            else:
                self.buffer = b""
        finally:
            os.close(fd)

    def _map(self, fd: int, size: int) -> mmap.mmap:
        if self.file_size_bytes != size:
            os.ftruncate(fd, size)
            self.file_size_bytes = size
        return mmap.mmap(fd, size)

    def grow(self) -> bool:
        """Map twice as much of the file (at most `capacity_bytes`); False if it is at its
        capacity already (or read-only). The caller points its index at the new `buffer`."""
        if self.capacity_bytes is None or not isinstance(self.buffer, mmap.mmap):
            return False
        size = min(self.capacity_bytes, 2 * len(self.buffer))
        if size <= len(self.buffer):
            return False
        self.buffer.close()
        fd = os.open(self.path, os.O_RDWR)
        try:
            self.buffer = self._map(fd, size)
        finally:
            os.close(fd)
        return True

    def trim(self, used_bytes: int) -> None:
        """Cut the file to its used entries and map it read-only (the segment is sealed)."""
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()
        os.truncate(self.path, used_bytes)
        self.capacity_bytes = None
        self.file_size_bytes = used_bytes
        if used_bytes:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                self.buffer = mmap.mmap(fd, used_bytes, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        else:
            self.buffer = b""

    def close(self) -> None:
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()
        self.buffer = b""


def _append_entry(index: OffsetIndex | TimeIndex, file: _MappedIndex, key: int, value: int) -> bool:
    """Append an entry, mapping more of the index file when the mapping is full; False (and no
    entry) when the file is at its capacity."""
    try:
        index.append(key, value)
    except IndexFullError:
        if not file.grow():
            return False
        index.buffer = file.buffer
        index.append(key, value)
    return True


class Segment:
    """A `.log` file plus indexes. Created by `create` or `open`; mutated only by `PartitionLog`."""

    def __init__(self, directory: Path, base_offset: int, config: LogConfig) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.config = config
        self.log_path = directory / segment_file_name(base_offset, LOG_SUFFIX)
        self.index_path = directory / segment_file_name(base_offset, INDEX_SUFFIX)
        self.time_index_path = directory / segment_file_name(base_offset, TIME_INDEX_SUFFIX)
        self.fd = -1
        self.size_bytes = 0
        # The .log file's size: size_bytes plus the zeros written ahead of it (preallocation).
        self.file_bytes = 0
        # Off after a fill failed (see _preallocate), until the next segment.
        self._preallocating = config.preallocate_bytes > 0
        # Exclusive end: the offset the next batch appended here would get.
        self.next_offset = base_offset
        self.max_timestamp = NO_TIMESTAMP
        # The first batch's max timestamp: segment_ms rolls are measured from it, as in Kafka.
        self.first_timestamp = NO_TIMESTAMP
        self.last_epoch = -1
        self.sealed = False
        self._bytes_since_index_entry = 0
        # Bytes from the start of the file whose batches passed a CRC check in this process (at
        # append or recovery, or on a read since).
        self.verified_bytes = 0
        # The end of what was trusted at open without a CRC check: batches that start between
        # verified_bytes and this are verified by reads before they are handed out. Bytes
        # appended since were validated on their way in.
        self.unverified_end = 0
        # Set when an index entry disagrees with the batch it points at: lookups then scan the
        # file from the start, and close() removes the index files so that the next open
        # rebuilds them.
        self.index_damaged = False
        self._offset_file: _MappedIndex
        self._time_file: _MappedIndex
        self.index: OffsetIndex
        self.time_index: TimeIndex
        self._index_slots = 0
        self._time_slots = 0

    # --- opening --------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, config: LogConfig) -> Segment:
        """A new, empty, writable segment. Existing files of the same name are emptied."""
        segment = cls(directory, base_offset, config)
        segment.fd = os.open(segment.log_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        for path in (segment.index_path, segment.time_index_path):
            path.unlink(missing_ok=True)
        segment._map_indexes(writable=True, keep_files=False)
        return segment

    @classmethod
    def open(
        cls,
        directory: Path,
        base_offset: int,
        config: LogConfig,
        *,
        writable: bool,
        recover: bool,
        expected_epoch: Callable[[int], int | None] | None = None,
    ) -> tuple[Segment, RecoveryNote | None]:
        """Open an existing segment; with `recover`, validate every batch and rebuild the indexes.

        `expected_epoch(offset)` is the leader epoch the epoch cache records for `offset` (or None
        when it does not know): recovery also cuts at a batch whose epoch field disagrees, since
        that field lies outside the CRC.
        """
        segment = cls(directory, base_offset, config)
        segment.fd = os.open(segment.log_path, os.O_RDWR)
        segment.size_bytes = segment.file_bytes = os.fstat(segment.fd).st_size
        note = None
        if recover:
            note = segment._recover(writable=writable, expected_epoch=expected_epoch)
        elif segment._load_trusted(writable=writable):
            segment.unverified_end = segment.size_bytes
        else:
            logger.warning(
                "segment %s: index files missing or inconsistent; rebuilding them", segment.log_path
            )
            segment._close_indexes()
            note = segment._recover(writable=writable, expected_epoch=expected_epoch)
        if not writable:
            segment.sealed = True
        return segment, note

    def _map_indexes(self, *, writable: bool, keep_files: bool) -> None:
        """Map both index files (entry counts start at 0; callers that trust the files set them)."""
        if not keep_files:
            for path in (self.index_path, self.time_index_path):
                path.unlink(missing_ok=True)
        capacity = self.config.index_bytes_max if writable else None
        self._offset_file = _MappedIndex(self.index_path, capacity_bytes=capacity)
        self._time_file = _MappedIndex(self.time_index_path, capacity_bytes=capacity)
        self.index = OffsetIndex(self._offset_file.buffer, 0)
        self.time_index = TimeIndex(self._time_file.buffer, 0)
        # Entries the files may grow to (the mappings start smaller: _MappedIndex.grow).
        self._index_slots = (self._offset_file.capacity_bytes or 0) // OffsetIndex.ENTRY.size
        self._time_slots = (self._time_file.capacity_bytes or 0) // TimeIndex.ENTRY.size

    def _load_trusted(self, *, writable: bool) -> bool:
        """Open indexes written by a clean seal; False if they do not fit the log file.

        Checks are O(1) in the index size (Kafka's sanity check and more): sizes are whole
        entries, the first and last offset-index entries and the last time-index entry point at
        batches that carry the offsets and timestamps they claim, and the headers after the last
        entry walk to the end of the file. Damage elsewhere in an index is caught at lookup.
        """
        if not (self.index_path.exists() and self.time_index_path.exists()):
            return False
        offset_size = self.index_path.stat().st_size
        time_size = self.time_index_path.stat().st_size
        if offset_size % OffsetIndex.ENTRY.size or time_size % TimeIndex.ENTRY.size:
            return False
        self._map_indexes(writable=writable, keep_files=True)
        self.index.entry_count = offset_size // OffsetIndex.ENTRY.size
        self.time_index.entry_count = time_size // TimeIndex.ENTRY.size
        if self.size_bytes == 0:
            return self.index.entry_count == 0 and self.time_index.entry_count == 0
        last = self.index.last_entry()
        if last is None or self.index.entry(0) != (0, 0) or last[1] >= self.size_bytes:
            return False
        try:
            if not self._entry_matches(last[0], last[1]):
                return False
            self._walk_tail(last[1])
            return self._time_entry_matches()
        except (InvalidBatchError, SegmentCorruptError):
            return False

    def _entry_matches(self, relative_offset: int, position: int) -> bool:
        header = self._read_header(position)
        return header.base_offset == self.base_offset + relative_offset

    def _time_entry_matches(self) -> bool:
        # The first batch always gets the first entry (if it has a timestamp at all), and the
        # last entry must name a batch whose max timestamp it recorded.
        count = self.time_index.entry_count
        if self.first_timestamp > NO_TIMESTAMP and (
            not count or self.time_index.entry(0) != (self.first_timestamp, 0)
        ):
            return False
        if not count:
            return True
        timestamp, relative = self.time_index.entry(self.time_index.entry_count - 1)
        found = self.find_batch_start(self.base_offset + relative)
        return (
            found is not None
            and found[1].base_offset == self.base_offset + relative
            and found[1].max_timestamp == timestamp
        )

    def _walk_tail(self, position: int) -> None:
        first = self._read_header(0) if self.size_bytes else None
        if first is not None:
            if first.base_offset != self.base_offset:
                raise SegmentCorruptError("first batch does not match the segment's base offset")
            self.first_timestamp = first.max_timestamp
        last: BatchHeader | None = None
        entry_position = position
        while position < self.size_bytes:
            header = self._read_header(position)
            if last is not None and header.base_offset != last.next_offset:
                raise SegmentCorruptError(
                    f"{self.log_path}: batch at byte {position} has base offset "
                    f"{header.base_offset}, expected {last.next_offset}"
                )
            last = header
            position += last.size_bytes
        if last is not None:
            self.next_offset = last.next_offset
            self.last_epoch = last.leader_epoch
        last_time = self.time_index.last_timestamp()
        self.max_timestamp = NO_TIMESTAMP if last_time is None else last_time
        if last is not None:
            self.max_timestamp = max(self.max_timestamp, last.max_timestamp)
        # As _index_batch counts: bytes from the last indexed batch's start to the end.
        self._bytes_since_index_entry = self.size_bytes - entry_position

    def _read_header(self, position: int) -> BatchHeader:
        """The header at `position`, checked to describe a batch that fits inside the file.

        A damaged length would otherwise send a header walk backwards (forever) or past the end.
        """
        header = unpack_header(os.pread(self.fd, HEADER_SIZE, position))
        size = header.size_bytes
        if size < HEADER_SIZE or position + size > self.size_bytes:
            raise SegmentCorruptError(
                f"{self.log_path}: batch at byte {position} declares {size} bytes, which does not "
                f"fit the file of {self.size_bytes} bytes"
            )
        return header

    # --- recovery -------------------------------------------------------------------------------

    def _recover(
        self, *, writable: bool, expected_epoch: Callable[[int], int | None] | None = None
    ) -> RecoveryNote | None:
        """Validate every batch, cut the file at the first bad one, rebuild both indexes."""
        self._map_indexes(writable=True, keep_files=False)
        self.next_offset = self.base_offset
        self.max_timestamp = self.first_timestamp = NO_TIMESTAMP
        self.last_epoch = -1
        self._bytes_since_index_entry = 0
        valid_bytes = 0
        reason = ""
        for position, buffer, start in _iter_raw_batches(self.fd, self.size_bytes):
            try:
                header = validate_batch(buffer, start, max_batch_bytes=_RECOVERY_MAX_BATCH_BYTES)
            except InvalidBatchError as exc:
                reason = exc.message
                break
            if header.base_offset != self.next_offset:
                reason = (
                    f"batch at byte {position} has base offset {header.base_offset}, "
                    f"expected {self.next_offset}"
                )
                break
            if header.leader_epoch < self.last_epoch:
                reason = (
                    f"batch at byte {position} has leader epoch {header.leader_epoch}, below "
                    f"the previous batch's {self.last_epoch}"
                )
                break
            expected = None if expected_epoch is None else expected_epoch(header.base_offset)
            if expected is not None and expected != header.leader_epoch:
                # The epoch field is outside the CRC; the epoch cache is written before the data,
                # so a disagreement means this header is damaged.
                reason = (
                    f"batch at byte {position} has leader epoch {header.leader_epoch}, the epoch "
                    f"cache says {expected}"
                )
                break
            self._index_batch(header, position)
            valid_bytes = position + header.size_bytes
        note = None
        if valid_bytes < self.size_bytes and _all_zero(self.fd, valid_bytes, self.size_bytes):
            # The zeros preallocation wrote ahead of the last batch: the end, not damage.
            logger.debug(
                "segment %s: %d preallocated bytes after byte %d",
                self.log_path,
                self.size_bytes - valid_bytes,
                valid_bytes,
            )
            os.ftruncate(self.fd, valid_bytes)
            self.size_bytes = self.file_bytes = valid_bytes
        elif valid_bytes < self.size_bytes:
            cut = self.size_bytes - valid_bytes
            note = RecoveryNote(self.base_offset, valid_bytes, cut, reason)
            logger.warning(
                "segment %s: truncating %d bytes after byte %d (offsets from %d on): %s",
                self.log_path,
                note.truncated_bytes,
                valid_bytes,
                self.next_offset,
                reason or "incomplete batch at the end of the file",
            )
            os.ftruncate(self.fd, valid_bytes)
            self.size_bytes = self.file_bytes = valid_bytes
        self.verified_bytes = valid_bytes
        self.unverified_end = 0
        if not writable:
            self.seal()
        return note

    # --- appending ------------------------------------------------------------------------------

    def must_roll_before(self, size_bytes: int, last_offset: int, max_timestamp: int) -> bool:
        """Whether a batch (size, last offset, max timestamp) must start a new segment.

        Full by size or by an index; the batch's offsets too far from the base for a u32
        relative offset (Kafka's rule, with its 2^31-1 margin); or, comparing record timestamps
        as Kafka does (no wall clock, so replicas roll alike), `segment_ms` past the first batch.
        An empty segment takes any batch. One call per append, hence written out flat.
        """
        used = self.size_bytes
        if not used:
            return False
        if used + size_bytes > self.config.segment_bytes:
            return True
        if (
            self.index.entry_count >= self._index_slots
            or self.time_index.entry_count >= self._time_slots
        ):
            return True
        if last_offset - self.base_offset > RELATIVE_OFFSET_MAX:
            return True
        first = self.first_timestamp
        return first != NO_TIMESTAMP and max_timestamp - first >= self.config.segment_ms

    def append(self, data: bytes | bytearray | memoryview, headers: Sequence[BatchHeader]) -> None:
        """Write `data`, the concatenation of the batches described by `headers`, at the end."""
        assert not self.sealed, "sealed segments are immutable"
        assert headers and headers[0].base_offset == self.next_offset
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(self.fd, view[written:], self.size_bytes + written)
        position = self.size_bytes
        for header in headers:
            self._index_batch(header, position)
            position += header.size_bytes
        assert position == self.size_bytes + len(view)
        # Appended batches were validated by the caller; they extend a verified prefix.
        if self.verified_bytes == self.size_bytes:
            self.verified_bytes = position
        self.size_bytes = position
        if position > self.file_bytes:
            self._preallocate(position)

    def append_assigned(
        self,
        batch: bytes | bytearray | memoryview,
        base_offset: int,
        leader_epoch: int,
        last_offset_delta: int,
        max_timestamp: int,
    ) -> None:
        """Write one validated batch under the base offset and epoch the leader assigned.

        Offset assignment without copying the batch: one `pwritev` of a fresh 16-byte prefix
        (base offset, length, epoch; all outside the CRC) and the rest of the caller's buffer.
        """
        assert not self.sealed, "sealed segments are immutable"
        assert base_offset == self.next_offset
        size = len(batch)
        prefix = _PREFIX16.pack(base_offset, size - LOG_OVERHEAD, leader_epoch)
        position = self.size_bytes
        written = os.pwritev(self.fd, (prefix, memoryview(batch)[16:]), position)
        if written < size:  # a short write: finish it from a joined copy
            view = memoryview(prefix + bytes(memoryview(batch)[16:]))[written:]
            while view:
                count = os.pwrite(self.fd, view, position + written)
                view = view[count:]
                written += count
        self._index_entry(
            base_offset,
            position,
            size,
            max_timestamp,
            base_offset + last_offset_delta + 1,
            leader_epoch,
        )
        if self.verified_bytes == position:
            self.verified_bytes = position + size  # validated by the caller
        self.size_bytes = position + size
        if position + size > self.file_bytes:
            self._preallocate(position + size)

    def _preallocate(self, end: int) -> None:
        """Zero-fill the file ahead of `end`, the new end of its batches, which just went past
        the zeros written before: as far ahead as the segment holds, from PREALLOCATE_MIN_BYTES up
        to `preallocate_bytes`, never past `segment_bytes` (the segment rolls there).

        Zeros and not `fallocate`: blocks allocated unwritten are converted when first written,
        which is itself a journal commit at the next fsync, the cost this is here to avoid. The
        fill is one `pwrite` per 256 KiB in the appending thread: 0.1-0.3 ms once per fill.
        """
        ahead = min(self.config.preallocate_bytes, max(PREALLOCATE_MIN_BYTES, end))
        target = min(end + ahead, self.config.segment_bytes)
        if not self._preallocating or target <= end:
            self.file_bytes = end
            return
        try:
            self.file_bytes = _write_zeros(self.fd, end, target)
        except OSError as exc:
            # Best effort: the batches before `end` are written and counted already, so a fill
            # that fails (a full disk, most likely: the zeros run out of room first) must not fail
            # their append. This segment stops filling; its file is cut back to its batches.
            self._preallocating = False
            logger.warning(
                "segment %s: could not zero-fill ahead of byte %d (%s); its appends go on "
                "without preallocation",
                self.log_path,
                end,
                exc,
            )
            try:
                os.ftruncate(self.fd, end)
                self.file_bytes = end
            except OSError:
                self.file_bytes = os.fstat(self.fd).st_size  # what the fill left: seal() cuts it

    def _index_batch(self, header: BatchHeader, position: int) -> None:
        self._index_entry(
            header.base_offset,
            position,
            header.batch_length + LOG_OVERHEAD,
            header.max_timestamp,
            header.base_offset + header.last_offset_delta + 1,
            header.leader_epoch,
        )

    def _index_entry(
        self,
        base_offset: int,
        position: int,
        size_bytes: int,
        max_timestamp: int,
        next_offset: int,
        leader_epoch: int,
    ) -> None:
        # Kafka's rule: an index entry once at least index_interval_bytes were appended since the
        # last one, and always for the first batch, so every lookup scans at most that many bytes.
        relative = base_offset - self.base_offset
        # A full index (must_roll_before() rolls before that on appends): recovery keeps going
        # without the entry.
        due = self.index.entry_count == 0 or (
            self._bytes_since_index_entry >= self.config.index_interval_bytes
        )
        if due and _append_entry(self.index, self._offset_file, relative, position):
            self._bytes_since_index_entry = 0
        self._bytes_since_index_entry += size_bytes
        if max_timestamp > self.max_timestamp:
            self.max_timestamp = max_timestamp
            # A full time index only costs scanning; appends roll before it fills.
            _append_entry(self.time_index, self._time_file, max_timestamp, relative)
        if self.first_timestamp == NO_TIMESTAMP:
            self.first_timestamp = max_timestamp
        self.next_offset = next_offset
        self.last_epoch = leader_epoch

    # --- reading --------------------------------------------------------------------------------

    def find_batch_start(self, offset: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the batch containing `offset`, or of the first one after it.

        The index entry used is checked against the header it points at; if they disagree the
        index is marked damaged and the file is scanned from its start. Raises
        `SegmentCorruptError` if the headers on the way do not chain.
        """
        relative, position = (0, 0)
        if not self.index_damaged:
            relative, position = self.index.lookup(offset - self.base_offset)
        expected = self.base_offset + relative
        if position:
            # Check the indexed batch as we read it: one pread serves both the check and the walk.
            header = self._indexed_header(relative, position)
            if header is None:
                self._index_is_damaged(f"entry ({relative}, {position}) names no such batch")
                position, expected = 0, self.base_offset
            elif header.last_offset >= offset:
                return position, header
            else:
                position += header.size_bytes
                expected = header.next_offset
        for found, header in self.walk_headers(position, self.size_bytes, expected=expected):
            if header.last_offset >= offset:
                return found, header
        return None

    def _indexed_header(self, relative_offset: int, position: int) -> BatchHeader | None:
        """The header an index entry points at, or None if it is not the batch the entry names."""
        if position >= self.size_bytes:
            return None
        try:
            header = self._read_header(position)
        except (InvalidBatchError, SegmentCorruptError):
            return None
        return header if header.base_offset == self.base_offset + relative_offset else None

    def _index_is_damaged(self, reason: str) -> None:
        logger.error(
            "segment %s: index damaged (%s); scanning without it, rebuilt at the next open",
            self.log_path,
            reason,
        )
        self.index_damaged = True

    def read_window(self, position: int, length: int) -> bytes:
        data = os.pread(self.fd, length, position)
        if len(data) != length:
            raise OSError(f"short read from {self.log_path}: {len(data)} of {length} bytes")
        return data

    def walk_headers(
        self, position: int, end: int, *, expected: int | None = None
    ) -> Iterator[tuple[int, BatchHeader]]:
        """Headers of the batches from `position` up to byte `end`, one `pread` each.

        Each header must continue the previous one (and the first must start at `expected` when
        given); a break in the chain raises `SegmentCorruptError`, since the base offset lies
        outside the CRC and only this check catches damage to it.
        """
        while position < end:
            header = self._read_header(position)
            if expected is not None and header.base_offset != expected:
                raise SegmentCorruptError(
                    f"{self.log_path}: batch at byte {position} has base offset "
                    f"{header.base_offset}, expected {expected}"
                )
            yield position, header
            position += header.size_bytes
            expected = header.next_offset

    def timestamp_search(self, timestamp_ms: int) -> tuple[int, BatchHeader] | None:
        """The first batch whose max timestamp is >= `timestamp_ms`, by time index then scan."""
        entry = None if self.index_damaged else self.time_index.entry_before(timestamp_ms)
        start = self.base_offset if entry is None else self.base_offset + entry[1]
        found = self.find_batch_start(start)
        if found is None:
            return None
        if entry is not None and (
            found[1].base_offset != start or found[1].max_timestamp != entry[0]
        ):
            self._index_is_damaged(f"time entry {entry} names another batch")
            return self.timestamp_search(timestamp_ms)
        for position, header in self.walk_headers(found[0], self.size_bytes):
            if header.max_timestamp >= timestamp_ms:
                return position, header
        return None

    # --- truncation, sealing, closing -----------------------------------------------------------

    def truncate_to_position(self, position: int, header_at_position: BatchHeader | None) -> None:
        """Drop every byte from `position` (a batch boundary) on."""
        assert not self.sealed or position == self.size_bytes
        os.ftruncate(self.fd, position)
        self.size_bytes = self.file_bytes = position
        self.verified_bytes = min(self.verified_bytes, position)
        self.unverified_end = min(self.unverified_end, position)
        relative = (
            header_at_position.base_offset - self.base_offset if header_at_position else 1 << 32
        )
        self.index.truncate_from(relative)
        self.time_index.truncate_from_offset(relative)
        if position == 0:
            self.next_offset = self.base_offset
            self.max_timestamp = self.first_timestamp = NO_TIMESTAMP
            self.last_epoch = -1
            return
        # Re-derive the end state from the batches that stayed.
        last = self.index.last_entry()
        self._walk_tail(0 if last is None else last[1])

    def seal(self) -> None:
        """Make the segment read-only: cut the preallocated zeros off the log file, trim the index
        files to their entries and map them so."""
        if self.file_bytes > self.size_bytes:
            os.ftruncate(self.fd, self.size_bytes)
            self.file_bytes = self.size_bytes
        self._offset_file.trim(self.index.size_bytes)
        self._time_file.trim(self.time_index.size_bytes)
        self.index.buffer = self._offset_file.buffer
        self.time_index.buffer = self._time_file.buffer
        self._index_slots = self._time_slots = 0  # sealed: no room for anything
        self.sealed = True

    def reopen_writable(self) -> None:
        """Map a sealed (last) segment's indexes read-write again so that appends can continue."""
        assert self.sealed
        counts = (self.index.entry_count, self.time_index.entry_count)
        self._close_indexes()
        self._map_indexes(writable=True, keep_files=True)
        self.index.entry_count, self.time_index.entry_count = counts
        self.sealed = False

    def sync_paths(self) -> list[Path]:
        """Files whose contents must be fsynced for this segment to survive a crash as it is."""
        return [self.log_path, self.index_path, self.time_index_path]

    def _close_indexes(self) -> None:
        for attribute in ("_offset_file", "_time_file"):
            mapped = getattr(self, attribute, None)
            if mapped is not None:
                mapped.close()

    def close(self) -> None:
        self._close_indexes()
        if self.index_damaged:
            # Missing indexes are rebuilt (with every batch re-validated) at the next open.
            for path in (self.index_path, self.time_index_path):
                path.unlink(missing_ok=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def delete(self) -> None:
        self.close()
        for path in (self.log_path, self.index_path, self.time_index_path):
            path.unlink(missing_ok=True)


def _write_zeros(fd: int, start: int, end: int) -> int:
    """Write zeros from byte `start` to `end` of the file; returns `end`."""
    position = start
    while position < end:
        position += os.pwrite(fd, _ZEROS[: end - position], position)
    return position


def _all_zero(fd: int, start: int, end: int) -> bool:
    """Whether bytes `start` to `end` of the file are all zeros (read a chunk at a time)."""
    while start < end:
        chunk = os.pread(fd, min(RECOVERY_CHUNK_BYTES, end - start), start)
        if not chunk or chunk.count(0) != len(chunk):
            return False
        start += len(chunk)
    return True


def _iter_raw_batches(fd: int, end: int) -> Iterator[tuple[int, bytes, int]]:
    """Yield `(file_position, buffer, start)` for each batch candidate of a file, chunk by chunk.

    The batch's bytes are `buffer[start:start + declared size]` unless the file ends first; the
    caller validates. A batch that straddles a chunk boundary is re-read from its start.
    """
    position = 0
    while position < end:
        chunk = os.pread(fd, min(RECOVERY_CHUNK_BYTES, end - position), position)
        cursor = 0
        while len(chunk) - cursor >= LOG_OVERHEAD:
            declared = int.from_bytes(chunk[cursor + 8 : cursor + 12], "big", signed=True)
            size = declared + LOG_OVERHEAD
            if size < HEADER_SIZE or position + cursor + size > end:
                yield position + cursor, chunk, cursor  # damaged: validation reports it
                return
            if cursor + size > len(chunk):
                if cursor == 0:  # one batch larger than a chunk: read it alone
                    yield position, os.pread(fd, size, position), 0
                    cursor = size
                break
            yield position + cursor, chunk, cursor
            cursor += size
        if cursor == 0:
            # Fewer than LOG_OVERHEAD bytes left: a torn header at the end of the file.
            yield position, chunk, 0
            return
        position += cursor
