"""One segment of a partition log: a `.log` file of batches with its `.index` and `.timeindex`.

Files are named by the segment's base offset, zero-padded to 20 digits. The `.log` file is written
with `pwrite` at the tracked end position and read with `pread` (or handed to `os.sendfile` as a
file region); the index files are preallocated, memory-mapped and trimmed to their used size when the
segment is sealed (rolled or cleanly closed).

Rules:
- Batches are appended whole and in offset order; the first batch's base offset is the segment's.
- Only the active (last) segment is writable; a sealed segment's indexes are mapped read-only.
- A segment opened without trust (`recover=True`) re-validates every batch with its CRC, cuts the
  file at the first damaged or out-of-order batch and rebuilds both indexes from what survived.
- Bytes are durable only after `sync_targets()` have been fsynced (see `broker/log/log.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from broker.config import LogConfig
from broker.log.batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    InvalidBatchError,
    unpack_header,
    validate_batch,
)
from broker.log.index import IndexFullError, OffsetIndex, TimeIndex

logger = logging.getLogger(__name__)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
NO_TIMESTAMP = -1
# Recovery reads the file in chunks of this size; a batch larger than a chunk is read on its own.
RECOVERY_CHUNK_BYTES = 8 * 1024 * 1024
# A declared batch length is trusted during recovery only up to the bytes left in the file; the CRC
# then decides. This keeps batches written under a larger, since lowered, max_batch_bytes.
_RECOVERY_MAX_BATCH_BYTES = 2**31 - 1


def segment_file_name(base_offset: int, suffix: str) -> str:
    return f"{base_offset:020d}{suffix}"


class SegmentCorruptError(Exception):
    """A segment's files do not agree with each other (checked before trusting its indexes)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryNote:
    """What recovery cut from a segment, and why (also logged)."""

    segment_base_offset: int
    valid_bytes: int
    truncated_bytes: int
    reason: str


class _MappedIndex:
    """The file behind an index: preallocated and mapped read-write, or trimmed and read-only."""

    def __init__(self, path: Path, *, capacity_bytes: int | None) -> None:
        self.path = path
        self.capacity_bytes = capacity_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.file_size_bytes = os.fstat(fd).st_size
            self.buffer: mmap.mmap | bytes
            if capacity_bytes is not None:
                # Never cut entries of a file written under a larger, since lowered, capacity.
                capacity_bytes = max(capacity_bytes, self.file_size_bytes)
                self.capacity_bytes = capacity_bytes
                if self.file_size_bytes != capacity_bytes:
                    os.ftruncate(fd, capacity_bytes)
                self.buffer = mmap.mmap(fd, capacity_bytes)
            elif self.file_size_bytes:
                self.buffer = mmap.mmap(fd, self.file_size_bytes, prot=mmap.PROT_READ)
            else:
                self.buffer = b""
        finally:
            os.close(fd)

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
        # Exclusive end: the offset the next batch appended here would get.
        self.next_offset = base_offset
        self.max_timestamp = NO_TIMESTAMP
        # The first batch's max timestamp: segment_ms rolls are measured from it, as in Kafka.
        self.first_timestamp = NO_TIMESTAMP
        self.last_epoch = -1
        self.sealed = False
        self._bytes_since_index_entry = 0
        self._offset_file: _MappedIndex
        self._time_file: _MappedIndex
        self.index: OffsetIndex
        self.time_index: TimeIndex

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
        cls, directory: Path, base_offset: int, config: LogConfig, *, writable: bool, recover: bool
    ) -> tuple[Segment, RecoveryNote | None]:
        """Open an existing segment; with `recover`, validate every batch and rebuild the indexes."""
        segment = cls(directory, base_offset, config)
        segment.fd = os.open(segment.log_path, os.O_RDWR)
        segment.size_bytes = os.fstat(segment.fd).st_size
        note = None
        if recover:
            note = segment._recover(writable=writable)
        elif not segment._load_trusted(writable=writable):
            logger.warning(
                "segment %s: index files missing or inconsistent; rebuilding them", segment.log_path
            )
            segment._close_indexes()
            note = segment._recover(writable=writable)
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

    def _load_trusted(self, *, writable: bool) -> bool:
        """Open indexes written by a clean seal; False if they do not fit the log file."""
        if not (self.index_path.exists() and self.time_index_path.exists()):
            return False
        offset_size = self.index_path.stat().st_size
        time_size = self.time_index_path.stat().st_size
        if offset_size % OffsetIndex.ENTRY.size or time_size % TimeIndex.ENTRY.size:
            return False
        self._map_indexes(writable=writable, keep_files=True)
        self.index.entry_count = offset_size // OffsetIndex.ENTRY.size
        self.time_index.entry_count = time_size // TimeIndex.ENTRY.size
        last = self.index.last_entry()
        start = 0 if last is None else last[1]
        if start >= self.size_bytes and self.size_bytes:
            return False
        # Walk the headers after the last index entry: they give the segment's end state.
        try:
            self._walk_tail(start)
        except (InvalidBatchError, SegmentCorruptError):
            return False
        return True

    def _walk_tail(self, position: int) -> None:
        first = self._read_header(0) if self.size_bytes else None
        if first is not None:
            if first.base_offset != self.base_offset:
                raise SegmentCorruptError("first batch does not match the segment's base offset")
            self.first_timestamp = first.max_timestamp
        last: BatchHeader | None = None
        while position < self.size_bytes:
            last = self._read_header(position)
            if position + last.size_bytes > self.size_bytes:
                raise SegmentCorruptError("last batch runs past the end of the file")
            position += last.size_bytes
        if last is not None:
            self.next_offset = last.next_offset
            self.last_epoch = last.leader_epoch
        last_time = self.time_index.last_timestamp()
        self.max_timestamp = NO_TIMESTAMP if last_time is None else last_time
        if last is not None:
            self.max_timestamp = max(self.max_timestamp, last.max_timestamp)
        self._bytes_since_index_entry = 0

    def _read_header(self, position: int) -> BatchHeader:
        return unpack_header(os.pread(self.fd, HEADER_SIZE, position))

    # --- recovery -------------------------------------------------------------------------------

    def _recover(self, *, writable: bool) -> RecoveryNote | None:
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
            self._index_batch(header, position)
            valid_bytes = position + header.size_bytes
        note = None
        if valid_bytes < self.size_bytes:
            note = RecoveryNote(self.base_offset, valid_bytes, self.size_bytes - valid_bytes, reason)
            logger.warning(
                "segment %s: truncating %d bytes after byte %d (offsets from %d on): %s",
                self.log_path,
                note.truncated_bytes,
                valid_bytes,
                self.next_offset,
                reason or "incomplete batch at the end of the file",
            )
            os.ftruncate(self.fd, valid_bytes)
            self.size_bytes = valid_bytes
        if not writable:
            self.seal()
        return note

    # --- appending ------------------------------------------------------------------------------

    def room_for(self, size_bytes: int) -> bool:
        """Whether `size_bytes` more fit under segment_bytes and both indexes have a free slot."""
        if self.size_bytes and self.size_bytes + size_bytes > self.config.segment_bytes:
            return False
        return not (self.index.is_full or self.time_index.is_full)

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
        self.size_bytes = position

    def _index_batch(self, header: BatchHeader, position: int) -> None:
        # Kafka's rule: an index entry once at least index_interval_bytes were appended since the
        # last one, and always for the first batch, so every lookup scans at most that many bytes.
        relative = header.base_offset - self.base_offset
        if self.index.entry_count == 0 or self._bytes_since_index_entry >= (
            self.config.index_interval_bytes
        ):
            try:
                self.index.append(relative, position)
                self._bytes_since_index_entry = 0
            except IndexFullError:
                pass  # room_for() rolls before this happens on appends; recovery keeps going
        self._bytes_since_index_entry += header.size_bytes
        if header.max_timestamp > self.max_timestamp:
            self.max_timestamp = header.max_timestamp
            try:
                self.time_index.append(header.max_timestamp, relative)
            except IndexFullError:
                pass
        if self.first_timestamp == NO_TIMESTAMP:
            self.first_timestamp = header.max_timestamp
        self.next_offset = header.next_offset
        self.last_epoch = header.leader_epoch

    # --- reading --------------------------------------------------------------------------------

    def find_batch_start(self, offset: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the batch containing `offset`, or of the first one after it."""
        _, position = self.index.lookup(offset - self.base_offset)
        while position < self.size_bytes:
            header = self._read_header(position)
            if header.last_offset >= offset:
                return position, header
            position += header.size_bytes
        return None

    def read_window(self, position: int, length: int) -> bytes:
        data = os.pread(self.fd, length, position)
        if len(data) != length:
            raise OSError(f"short read from {self.log_path}: {len(data)} of {length} bytes")
        return data

    def walk_headers(self, position: int, end: int) -> Iterator[tuple[int, BatchHeader]]:
        """Headers of the batches from `position` up to byte `end`, one `pread` each."""
        while position < end:
            header = self._read_header(position)
            yield position, header
            position += header.size_bytes

    def timestamp_search(self, timestamp_ms: int) -> tuple[int, BatchHeader] | None:
        """The first batch whose max timestamp is >= `timestamp_ms`, by time index then scan."""
        relative = self.time_index.lookup_before(timestamp_ms)
        found = self.find_batch_start(self.base_offset + relative)
        if found is None:
            return None
        for position, header in self.walk_headers(found[0], self.size_bytes):
            if header.max_timestamp >= timestamp_ms:
                return position, header
        return None

    # --- truncation, sealing, closing -----------------------------------------------------------

    def truncate_to_position(self, position: int, header_at_position: BatchHeader | None) -> None:
        """Drop every byte from `position` (a batch boundary) on."""
        assert not self.sealed or position == self.size_bytes
        os.ftruncate(self.fd, position)
        self.size_bytes = position
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
        """Make the segment read-only: trim the index files to their entries and map them so."""
        self._offset_file.trim(self.index.size_bytes)
        self._time_file.trim(self.time_index.size_bytes)
        self.index.buffer = self._offset_file.buffer
        self.time_index.buffer = self._time_file.buffer
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
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def delete(self) -> None:
        self.close()
        for path in (self.log_path, self.index_path, self.time_index_path):
            path.unlink(missing_ok=True)


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
