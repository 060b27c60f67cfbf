"""`PartitionLog`: one partition's ordered list of segments, and the offsets that describe it.

Offsets (all "end" offsets are exclusive, as Kafka's log end offset and high watermark are):

    log_start_offset <= flushed_offset <= dirty_offset == log_end_offset

`dirty_offset` is where the next appended record goes; `flushed_offset` is the end of what has been
fsynced. The high watermark belongs to the replication layer, which passes it to `read` as
`max_offset`.

Durability protocol:
- Appends only `pwrite` into the page cache. `begin_flush()` returns a `FlushTicket` naming the
  files to fsync; its `run()` may execute in a worker thread while appends continue (group commit),
  and `complete_flush()` then advances `flushed_offset` to the end captured by the ticket.
- Rolling seals the old segment (indexes trimmed); its files join the next ticket. Once they are
  synced, the recovery checkpoint moves to the active segment's base offset: on an unclean restart
  only segments from the checkpoint on are re-validated.
- A clean `close()` syncs everything and writes a clean-shutdown marker; a restart that finds it
  trusts every index and skips the scan, and deletes the marker before accepting writes.
- Leader epochs (Raft terms) are kept as a small epoch cache `[(epoch, start_offset)]`, rewritten
  atomically when it changes (elections, truncation, retention), so `term_at` is a bisection.

Producer state (`log.producers`, broker/transactions/producer_state.py): every written batch is
fed to it in log order; it is snapshotted to `<offset>.producers` at each roll and clean close and
rebuilt from the newest usable snapshot plus the headers after it on open and truncation
(docs/transactions.md, "Producer state on a partition").

The log is synchronous and single-threaded: call it from one thread (the trio thread); only a
ticket's `run()` may happen elsewhere.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import msgpack

from broker.config import LogConfig
from broker.log.cleaner import recover_swaps
from broker.log.durability import (
    FlushTicket,
    RecoveryCheckpoint,
    fsync_directory,
    read_checkpoint,
    write_atomically,
)
from broker.log.log_start import log_start_of
from broker.log.segment import (
    LOG_SUFFIX,
    NO_TIMESTAMP,
    RELATIVE_OFFSET_MAX,
    RecoveryNote,
    Segment,
    SegmentCorruptError,
)
from broker.log.verify import checked_batches, epoch_lookup, read_epoch_file
from broker.transactions.producer_state import (
    Marker,
    ProducerSnapshotError,
    ProducerStateManager,
    is_marker,
    marker_of,
)
from wire.batch import (
    LOG_OVERHEAD,
    BadLengthError,
    BatchHeader,
    InvalidBatchError,
    RecordCountError,
    decode_records,
    iter_batches,
    set_base_offset,
    set_leader_epoch,
    validate_batch,
)
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

CLEAN_SHUTDOWN_FILE = "clean-shutdown"
RECOVERY_CHECKPOINT_FILE = "recovery-checkpoint"
EPOCH_CACHE_FILE = "leader-epochs"
# The offset DeleteRecords moved the log start to (`delete_records`), when it lies inside a
# segment kept for Raft: written atomically, read at open.
LOG_START_FILE = "log-start-offset"
# Log start entries written but not yet known committed, one `<entry offset> <new start>` line
# each: a replica raises its log start only once the entry commits (`commit_log_starts`).
LOG_START_PENDING_FILE = "log-start-pending"
# `<offset:020d>.producers`: the producer state with every batch below `offset` applied.
PRODUCER_SNAPSHOT_SUFFIX = ".producers"
# Snapshots kept: the newest is what a restart loads; older ones stand in if it is damaged.
PRODUCER_SNAPSHOTS_KEPT = 3


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class OffsetOutOfRangeError(BrokerError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.OFFSET_OUT_OF_RANGE, message)


class OffsetMismatchError(BrokerError):
    """Replicated batches do not continue the log exactly (a gap or an overlap)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_RECORD, message)


class LeaderEpochError(BrokerError):
    """A batch's leader epoch is below the log's last one: epochs never go backwards."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_RECORD, message)


class AppendResult(NamedTuple):
    """Where an append went. A NamedTuple: one is built per produced batch."""

    base_offset: int
    last_offset: int
    max_timestamp: int
    size_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReadResult:
    """Whole batches: `data` is bytes-like (bytes or a memoryview); empty at the end of the log."""

    data: bytes | memoryview
    base_offset: int
    next_offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class FileSlice:
    """A region of a segment file for `os.sendfile`. `fd` is a duplicate: the caller closes it."""

    fd: int
    position: int
    length: int
    base_offset: int
    next_offset: int


class TimestampedOffset(NamedTuple):
    """A record found by time: its offset and its own timestamp (ListOffsets by timestamp)."""

    offset: int
    timestamp: int


class PartitionLog:
    """An append-only, segmented log of record batches. See the module docstring for the rules."""

    def __init__(
        self, directory: Path, config: LogConfig, *, clock_ms: Callable[[], int] = wall_clock_ms
    ) -> None:
        self.directory = directory
        self.config = config
        self.clock_ms = clock_ms
        self.segments: list[Segment] = []
        self._base_offsets: list[int] = []
        self.flushed_offset = 0
        self.recovery_notes: list[RecoveryNote] = []
        # (epoch, start_offset) pairs, sorted by both.
        self._epochs: list[tuple[int, int]] = []
        self._unsynced_sealed: list[Segment] = []
        # Directory entries changed (segments created or deleted) vs. synced: a ticket captures the
        # count it covers, so a change made while it runs is not mistaken for synced.
        self._directory_changes = 0
        self._directory_synced = 0
        self._recovery = RecoveryCheckpoint(directory / RECOVERY_CHECKPOINT_FILE, 0)
        # The lowest log end a truncation produced since the outstanding ticket was taken: what
        # the ticket synced above it is no longer the data at those offsets.
        self._truncation_floor: int | None = None
        self._ticket_outstanding = False
        self._closed = False
        # Per-producer idempotence and transaction state, fed every batch written (in log
        # order), snapshotted beside the segments (docs/transactions.md).
        self.producers = ProducerStateManager(0)
        self._producer_snapshots: list[int] = []
        # DeleteRecords' floor (persisted in LOG_START_FILE): clients are served from here on.
        self._records_deleted_below = 0
        # (entry offset, new start) of log start entries written but not yet committed, in log
        # order (persisted in LOG_START_PENDING_FILE before each entry is written).
        self._pending_log_starts: list[tuple[int, int]] = []

    # --- opening and closing --------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        config: LogConfig,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        initial_offset: int = 0,
        full_scan: bool = False,
    ) -> PartitionLog:
        """Open or create the log in `directory`, recovering it if it was not closed cleanly.

        After an unclean shutdown, segments from the one holding the recovery checkpoint on are
        re-validated batch by batch and cut at the first damage; those below it are trusted (see
        docs/storage.md). `full_scan` re-validates every segment whatever the marker and the
        checkpoint say (an operator's check after suspected disk damage).
        """
        directory.mkdir(parents=True, exist_ok=True)
        log = cls(directory, config, clock_ms=clock_ms)
        marker = directory / CLEAN_SHUTDOWN_FILE
        clean = marker.exists() and not full_scan
        checkpoint_path = directory / RECOVERY_CHECKPOINT_FILE
        # A crash during a cleaner's swap: complete it (committed) or discard it, before any
        # segment is read (docs/storage.md, "Compaction").
        recover_swaps(directory)
        log._recovery = RecoveryCheckpoint(checkpoint_path, read_checkpoint(checkpoint_path))
        log._records_deleted_below = read_checkpoint(directory / LOG_START_FILE)
        log._pending_log_starts = _read_pending_log_starts(directory / LOG_START_PENDING_FILE)
        bases = sorted(
            int(path.name[: -len(LOG_SUFFIX)])
            for path in directory.glob(f"*{LOG_SUFFIX}")
            if path.name[: -len(LOG_SUFFIX)].isdigit()
        )
        log._open_segments(bases, clean=clean, full_scan=full_scan)
        if not log.segments:
            log.segments.append(Segment.create(directory, initial_offset, config))
            log._base_offsets.append(initial_offset)
            log._directory_changes += 1
        log._load_epochs(clean=clean)
        log._load_producer_state()
        # Pending log start entries that recovery cut from the tail will never commit.
        log._forget_pending_log_starts_from(log.log_end_offset)
        log.flushed_offset = log.log_end_offset if clean else log._checkpoint_floor()
        if marker.exists():
            # The marker must be gone, durably, before anything new is written: a later crash
            # must not be mistaken for a clean shutdown.
            marker.unlink()
            fsync_directory(directory)
        return log

    def _open_segments(self, bases: list[int], *, clean: bool, full_scan: bool) -> None:
        # Segments below the one holding the recovery checkpoint were synced when sealed; after an
        # unclean shutdown everything from that segment on is re-validated.
        first_unsynced = max(bisect.bisect_right(bases, self._checkpoint) - 1, 0)
        recover_from = bases[0 if full_scan else first_unsynced] if bases else 0
        expected_epoch = epoch_lookup(read_epoch_file(self.directory / EPOCH_CACHE_FILE))
        for number, base in enumerate(bases):
            last = number == len(bases) - 1
            recover = not clean and base >= recover_from
            segment, note = Segment.open(
                self.directory,
                base,
                self.config,
                writable=last,
                recover=recover,
                expected_epoch=expected_epoch,
            )
            if self.segments and segment.base_offset != self.segments[-1].next_offset:
                note = RecoveryNote(
                    base, 0, segment.size_bytes, "segment does not continue the previous one"
                )
                logger.warning("%s: deleting %s and later: %s", self.directory, base, note.reason)
                segment.delete()
                self._delete_from(number, bases)
                self.recovery_notes.append(note)
                break
            self.segments.append(segment)
            self._base_offsets.append(base)
            if recover and not last:
                # Validated, but maybe only in the page cache (the process died, not the machine).
                self._unsynced_sealed.append(segment)
            if note is not None:
                self.recovery_notes.append(note)
                if note.truncated_bytes and not last:
                    # Everything after damage in a middle segment is unreachable: offsets must be
                    # contiguous. Later segments go, and this one becomes the active one.
                    self._delete_from(number + 1, bases)
                    break
        if self.segments and self.segments[-1].sealed:
            self.segments[-1].reopen_writable()
            if self.segments[-1] in self._unsynced_sealed:
                self._unsynced_sealed.remove(self.segments[-1])

    def _delete_from(self, number: int, bases: list[int]) -> None:
        for base in bases[number:]:
            for suffix in (LOG_SUFFIX, ".index", ".timeindex"):
                (self.directory / f"{base:020d}{suffix}").unlink(missing_ok=True)
            logger.warning("%s: deleted segment %d during recovery", self.directory, base)
        self._directory_changes += 1

    def _checkpoint_floor(self) -> int:
        # After an unclean open, what is known durable: everything below the recovery checkpoint.
        return max(self.local_start_offset, min(self._checkpoint, self.log_end_offset))

    def close(self, *, clean: bool = True) -> None:
        """Close the log. `clean` syncs everything and writes the clean-shutdown marker."""
        if self._closed:
            return
        if clean:
            self.active.seal()
            self._unsynced_sealed.append(self.active)
            self.flush()
            self._recovery.store(self.log_end_offset)
            self._save_producer_snapshot()
            write_atomically(self.directory / CLEAN_SHUTDOWN_FILE, b"")
        for segment in self.segments:
            segment.close()
        self._closed = True

    # --- offsets --------------------------------------------------------------------------------

    @property
    def _checkpoint(self) -> int:
        return self._recovery.value

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    @property
    def local_start_offset(self) -> int:
        """The first offset still stored in a segment: where Raft's entries start."""
        return self.segments[0].base_offset

    @property
    def log_start_offset(self) -> int:
        """The first offset served to clients: the first stored one, or the later one
        `delete_records` set (Kafka's log start offset; whole segments below it are deleted,
        the rest of the segment holding it stays for Raft). Never above the log end: a follower
        behind a deletion serves from where its log ends once it catches up."""
        floor = min(self._records_deleted_below, self.log_end_offset)
        return max(self.local_start_offset, floor)

    @property
    def log_end_offset(self) -> int:
        return self.active.next_offset

    @property
    def dirty_offset(self) -> int:
        return self.active.next_offset

    @property
    def last_term(self) -> int:
        """Leader epoch of the last batch; -1 when the log holds no batch."""
        if self.log_end_offset == self.local_start_offset:
            return -1
        return self._epochs[-1][0] if self._epochs else -1

    @property
    def size_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self.segments)

    @property
    def segment_count(self) -> int:
        return len(self.segments)

    def term_at(self, offset: int) -> int:
        """Leader epoch of the batch holding `offset` (local_start_offset <= offset < end)."""
        if not self.local_start_offset <= offset < self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside the log [{self.local_start_offset}, "
                f"{self.log_end_offset})"
            )
        slot = bisect.bisect_right(self._epochs, offset, key=lambda entry: entry[1]) - 1
        assert slot >= 0, "the epoch cache covers the whole log"
        return self._epochs[slot][0]

    # --- appending ------------------------------------------------------------------------------

    def append(
        self, batch: bytes | bytearray | memoryview, *, leader_epoch: int | None = None
    ) -> AppendResult:
        """Validate one batch, give it the next offsets (and `leader_epoch`), and write it.

        Raises a named `InvalidBatchError` (nothing written) for a bad batch, or `LeaderEpochError`.
        Without `leader_epoch` the batch gets the log's current epoch (0 for a new log).
        """
        # This is the produce hot path: fields are read once into locals and no second header
        # is built; per-batch Python work here costs as much as the write itself.
        header = validate_batch(batch, max_batch_bytes=self.config.max_batch_bytes)
        size = header.batch_length + LOG_OVERHEAD
        if size != len(batch):
            raise BadLengthError(
                f"expected exactly one batch of {size} bytes, got {len(batch)} bytes"
            )
        delta = header.last_offset_delta
        if delta != header.record_count - 1:
            # Only compaction leaves gaps inside a batch; a producer's batch that claims more
            # offsets than records would burn offsets (and overflow a segment's relative offsets).
            raise RecordCountError(
                f"batch has {header.record_count} records but last_offset_delta "
                f"{delta}; a produced batch uses consecutive offsets"
            )
        segments = self.segments
        active = segments[-1]
        base_offset = active.next_offset
        # As the last_term property computes it, without its two property calls.
        empty = base_offset == segments[0].base_offset or not self._epochs
        last_term = -1 if empty else self._epochs[-1][0]
        epoch = max(last_term, 0) if leader_epoch is None else leader_epoch
        if epoch < last_term:
            raise LeaderEpochError(
                f"leader epoch {epoch} is below the log's last epoch {last_term}"
            )
        max_timestamp = header.max_timestamp
        # A transaction marker's one record is decoded (refused before anything is written if
        # it is not a valid marker); no other batch's records are.
        marker = marker_of(batch, 0, header) if is_marker(header) else None
        if active.must_roll_before(size, base_offset + delta, max_timestamp):
            self._roll()
            active = self.segments[-1]
        if isinstance(batch, bytearray):
            # Callers that pass a bytearray see the assigned offset and epoch in place.
            set_base_offset(batch, 0, base_offset)
            set_leader_epoch(batch, 0, epoch)
        if not self._epochs or self._epochs[-1][0] != epoch:
            self._note_epoch(epoch, base_offset)
        # The new base offset and epoch go out as a separate 16-byte prefix in the same
        # pwritev, so the batch itself is never copied.
        if marker is None and header.is_control:
            self._stored_log_start(batch, 0, header, base_offset)
        active.append_assigned(batch, base_offset, epoch, delta, max_timestamp)
        self.producers.on_write(header, base_offset, marker)
        return AppendResult(base_offset, base_offset + delta, max_timestamp, size)

    def append_replicated(self, batches: bytes | bytearray | memoryview) -> AppendResult:
        """Append batches that already carry their offsets and epochs (a follower's copy).

        All batches are validated first; they must continue the log exactly, with epochs that
        never go backwards. On any error nothing is written.
        """
        headers: list[BatchHeader] = []
        expected = self.log_end_offset
        epoch = self.last_term
        for _, header in iter_batches(batches, max_batch_bytes=self.config.max_batch_bytes):
            if header.base_offset != expected:
                raise OffsetMismatchError(
                    f"replicated batch starts at offset {header.base_offset}, the log continues "
                    f"at {expected}"
                )
            if header.leader_epoch < epoch:
                raise LeaderEpochError(
                    f"replicated batch at offset {header.base_offset} has epoch "
                    f"{header.leader_epoch}, below {epoch}"
                )
            headers.append(header)
            expected = header.next_offset
            epoch = header.leader_epoch
        if not headers:
            raise BadLengthError("no batches to append")
        self._write(headers, batches)
        return AppendResult(
            headers[0].base_offset,
            headers[-1].last_offset,
            max(header.max_timestamp for header in headers),
            len(batches),
        )

    def _write(self, headers: list[BatchHeader], data: bytes | bytearray | memoryview) -> None:
        # Split the run at segment boundaries: each piece goes to the active segment in one write.
        view = memoryview(data)
        start = 0
        first = 0
        while first < len(headers):
            if self._should_roll(headers[first]):
                self._roll()
            active = self.active
            # Each batch adds at most one entry to each index: never run past a full one.
            free_slots = min(
                active.index.capacity - active.index.entry_count,
                active.time_index.capacity - active.time_index.entry_count,
            )
            size = 0
            last = first
            while last < len(headers) and (
                last == first
                or (
                    active.size_bytes + size + headers[last].size_bytes <= self.config.segment_bytes
                    and last - first < free_slots
                    and headers[last].last_offset - active.base_offset <= RELATIVE_OFFSET_MAX
                    and not self._time_roll_due(headers[last])
                )
            ):
                size += headers[last].size_bytes
                last += 1
            # The epoch cache is saved before the data: after a crash it may run ahead of the log
            # (and is trimmed on open), but never behind it.
            for header in headers[first:last]:
                self._note_epoch(header.leader_epoch, header.base_offset)
            self._apply_log_starts(headers[first:last], view, start)
            self.active.append(view[start : start + size], headers[first:last])
            self._apply_producers(headers[first:last], view, start)
            start += size
            first = last

    def _apply_producers(
        self, headers: list[BatchHeader], data: bytes | bytearray | memoryview, position: int
    ) -> None:
        """Feed written batches (at `position` in `data`) to the producer state, in log order."""
        producers = self.producers
        for header in headers:
            marker = None
            if is_marker(header):
                marker = self._stored_marker(data, position, header)
            producers.on_write(header, header.base_offset, marker)
            position += header.size_bytes

    def _apply_log_starts(
        self, headers: list[BatchHeader], data: bytes | bytearray | memoryview, position: int
    ) -> None:
        for header in headers:
            if header.is_control and not is_marker(header):
                self._stored_log_start(data, position, header, header.base_offset)
            position += header.size_bytes

    def _stored_log_start(
        self,
        data: bytes | bytearray | memoryview,
        position: int,
        header: BatchHeader,
        base_offset: int,
    ) -> None:
        # DeleteRecords replicated through Raft (broker/log/log_start.py): every replica notes
        # the entry as pending, durably BEFORE the entry itself, and raises its log start when
        # the entry commits (`commit_log_starts`): an entry a failover discards (the client got
        # an error) raises nothing anywhere. A value that does not decode is ignored alike on
        # every replica, and logged.
        try:
            offset = log_start_of(data, position, header)
        except InvalidBatchError as exc:
            logger.warning(
                "%s: log start entry at offset %d is ignored: %s",
                self.directory,
                base_offset,
                exc,
            )
            return
        if offset is not None and offset > self._records_deleted_below:
            self._pending_log_starts.append((base_offset, offset))
            self._save_pending_log_starts()

    def commit_log_starts(self, committed_end: int) -> None:
        """The entries below `committed_end` are committed: apply the log starts they carry.
        Called by the partition's Raft shell as entries commit (leader and followers alike);
        cheap when nothing is pending."""
        pending = self._pending_log_starts
        if not pending or pending[0][0] >= committed_end:
            return
        done = 0
        while done < len(pending) and pending[done][0] < committed_end:
            self._raise_log_start(pending[done][1])
            done += 1
        del pending[:done]
        self._save_pending_log_starts()

    def _forget_pending_log_starts_from(self, offset: int) -> None:
        """Entries at or after `offset` were removed (truncation): they will never commit."""
        kept = [item for item in self._pending_log_starts if item[0] < offset]
        if len(kept) != len(self._pending_log_starts):
            self._pending_log_starts = kept
            self._save_pending_log_starts()

    def _save_pending_log_starts(self) -> None:
        lines = "".join(f"{entry} {start}\n" for entry, start in self._pending_log_starts)
        write_atomically(self.directory / LOG_START_PENDING_FILE, lines.encode())

    def _raise_log_start(self, offset: int) -> None:
        if offset > self._records_deleted_below:
            self._records_deleted_below = offset
            write_atomically(self.directory / LOG_START_FILE, str(offset).encode())

    def _stored_marker(
        self, data: bytes | bytearray | memoryview, position: int, header: BatchHeader
    ) -> Marker | None:
        # A replicated (or recovered) marker is in the log whatever it holds: one that does not
        # decode is ignored by the producer state on every replica alike, and logged.
        try:
            return marker_of(data, position, header)
        except InvalidBatchError as exc:
            logger.warning(
                "%s: transaction marker at offset %d is ignored: %s",
                self.directory,
                header.base_offset,
                exc,
            )
            return None

    def _should_roll(self, header: BatchHeader) -> bool:
        return self.active.must_roll_before(
            header.size_bytes, header.last_offset, header.max_timestamp
        )

    def _time_roll_due(self, header: BatchHeader) -> bool:
        active = self.active
        return (
            active.first_timestamp != NO_TIMESTAMP
            and header.max_timestamp - active.first_timestamp >= self.config.segment_ms
        )

    def _roll(self) -> None:
        old = self.active
        # Every batch of the old segment is applied: the state as of its end is snapshotted, so
        # a restart replays at most the segments after it.
        assert self.producers.applied_end == old.next_offset
        self._save_producer_snapshot()
        old.seal()
        self._unsynced_sealed.append(old)
        segment = Segment.create(self.directory, old.next_offset, self.config)
        self.segments.append(segment)
        self._base_offsets.append(segment.base_offset)
        self._directory_changes += 1
        logger.info("%s: rolled to segment %d", self.directory, segment.base_offset)

    # --- epochs ---------------------------------------------------------------------------------

    def _note_epoch(self, epoch: int, start_offset: int) -> None:
        if self._epochs and self._epochs[-1][0] == epoch:
            return
        assert not self._epochs or epoch > self._epochs[-1][0]
        self._epochs.append((epoch, start_offset))
        self._save_epochs()

    def _save_epochs(self) -> None:
        payload = msgpack.packb([list(entry) for entry in self._epochs])
        write_atomically(self.directory / EPOCH_CACHE_FILE, payload)

    def _load_epochs(self, *, clean: bool) -> None:
        self._epochs = read_epoch_file(self.directory / EPOCH_CACHE_FILE) or []
        # The cache may run ahead of the data (batches lost in a crash) or be missing: trim it to
        # the log and rebuild it from the batch headers when it does not cover the log.
        changed = self._trim_epochs()
        last_epoch = next(
            (segment.last_epoch for segment in reversed(self.segments) if segment.size_bytes), None
        )
        if last_epoch is not None and (
            not self._epochs
            or self._epochs[0][1] > self.local_start_offset
            or self._epochs[-1][0] != last_epoch
        ):
            logger.warning(
                "%s: rebuilding the leader epoch cache from batch headers", self.directory
            )
            self._epochs = []
            for segment in self.segments:
                for _, header in segment.walk_headers(0, segment.size_bytes):
                    if not self._epochs or self._epochs[-1][0] != header.leader_epoch:
                        self._epochs.append((header.leader_epoch, header.base_offset))
            changed = True
        if changed:
            self._save_epochs()

    def _trim_epochs(self) -> bool:
        before = list(self._epochs)
        end = self.log_end_offset
        start = self.local_start_offset
        # An empty log (retention or truncation took every batch) has no epoch, as `last_term`
        # says: the next batch starts the history afresh (a Raft log keeps its term in the
        # snapshot record, LogRaftStorage).
        self._epochs = [entry for entry in self._epochs if entry[1] < end] if start < end else []
        # Keep the entry that covers log_start_offset, drop the ones wholly before it.
        while len(self._epochs) > 1 and self._epochs[1][1] <= start:
            self._epochs.pop(0)
        if self._epochs and self._epochs[0][1] < start:
            self._epochs[0] = (self._epochs[0][0], start)
        return self._epochs != before

    # --- reading --------------------------------------------------------------------------------

    def _check_read(self, offset: int) -> None:
        if not self.local_start_offset <= offset <= self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside the log [{self.local_start_offset}, "
                f"{self.log_end_offset}]; seek to a valid offset (ListOffsets earliest/latest)"
            )

    def _locate(self, offset: int, limit: int) -> tuple[Segment, int, BatchHeader] | None:
        """The segment, position and header of the batch holding `offset`, if below `limit`."""
        slot = bisect.bisect_right(self._base_offsets, offset) - 1
        for segment in self.segments[max(slot, 0) :]:
            found = segment.find_batch_start(offset)
            if found is not None:
                position, header = found
                return (segment, position, header) if header.last_offset < limit else None
        return None

    def read(self, offset: int, max_bytes: int, *, max_offset: int | None = None) -> ReadResult:
        """Whole batches from the one holding `offset`: at most `max_bytes`, but at least one.

        Only batches whose last offset is below `max_offset` (exclusive; the high watermark) are
        returned, and all come from one segment, as in Kafka. The first batch may start before
        `offset`; readers skip the records they did not ask for.
        """
        self._check_read(offset)
        limit = self.log_end_offset if max_offset is None else min(max_offset, self.log_end_offset)
        located = self._locate(offset, limit) if offset < limit else None
        if located is None:
            return ReadResult(b"", offset, offset)
        segment, position, first = located
        window = max(first.size_bytes, min(max_bytes, segment.size_bytes - position))
        data = segment.read_window(position, window)
        end, next_offset = checked_batches(self._epochs, segment, position, data, limit)
        payload = data if end == len(data) else memoryview(data)[:end]
        return ReadResult(payload, first.base_offset, next_offset)

    def read_slice(
        self, offset: int, max_bytes: int, *, max_offset: int | None = None
    ) -> FileSlice | None:
        """The bytes `read()` would return, as a file region for `os.sendfile`; None if empty."""
        self._check_read(offset)
        limit = self.log_end_offset if max_offset is None else min(max_offset, self.log_end_offset)
        located = self._locate(offset, limit) if offset < limit else None
        if located is None:
            return None
        segment, position, first = located
        length = 0
        next_offset = first.base_offset
        for _, header in segment.walk_headers(position, segment.size_bytes):
            if header.last_offset >= limit or (length and length + header.size_bytes > max_bytes):
                break
            length += header.size_bytes
            next_offset = header.next_offset
        if position + length > segment.verified_bytes and position < segment.unverified_end:
            # Not CRC-checked in this process yet: read it once to check it before the kernel
            # sends it (sendfile would hand the client damage unseen).
            start = max(position, segment.verified_bytes)
            data = segment.read_window(start, position + length - start)
            end, checked_next = checked_batches(self._epochs, segment, start, data, limit)
            if start + end < position + length:
                length = start + end - position
                next_offset = checked_next
            if length == 0:
                raise SegmentCorruptError(
                    f"{segment.log_path}: batch at byte {position} is damaged"
                )
        return FileSlice(os.dup(segment.fd), position, length, first.base_offset, next_offset)

    def offset_for_timestamp(self, timestamp_ms: int) -> TimestampedOffset | None:
        """The first record whose timestamp is >= `timestamp_ms` (its offset and timestamp, as
        Kafka's ListOffsets answers both); None if there is none."""
        for segment in self.segments:
            if segment.max_timestamp < timestamp_ms:
                continue
            found = segment.timestamp_search(timestamp_ms)
            if found is None:
                continue
            position, header = found
            data = segment.read_window(position, header.size_bytes)
            # Rare admin path: decoding one batch finds the exact record, as Kafka does.
            for record in decode_records(data, header=header):
                if record.timestamp >= timestamp_ms:
                    return TimestampedOffset(
                        max(record.offset, self.log_start_offset), record.timestamp
                    )
        return None

    # --- compaction (broker/log/cleaner.py) ------------------------------------------------------

    def segment_slot(self, base_offset: int) -> int | None:
        """The position in `segments` of the sealed segment starting at `base_offset`, if any."""
        slot = bisect.bisect_left(self._base_offsets, base_offset)
        if slot >= len(self.segments) - 1 or self._base_offsets[slot] != base_offset:
            return None  # gone, or the active segment (never cleaned)
        return slot

    def replace_segment(self, slot: int, base_offset: int) -> None:
        """Open the segment whose cleaned files were just swapped in at `slot`, in place of the
        old one. Same offsets and epochs, fewer records: the epoch cache, the producer state and
        the recovery checkpoint stay as they are. The new files were fsynced before the swap and
        every batch was CRC-checked when they were written."""
        old = self.segments[slot]
        assert old.base_offset == base_offset and old.sealed
        replacement, note = Segment.open(
            self.directory, base_offset, self.config, writable=False, recover=False
        )
        assert note is None, f"{self.directory}: swapped segment {base_offset}: {note}"
        assert replacement.next_offset == old.next_offset, "cleaning keeps every offset"
        replacement.verified_bytes = replacement.size_bytes
        old.close()
        self.segments[slot] = replacement
        if old in self._unsynced_sealed:
            self._unsynced_sealed.remove(old)
        self._directory_changes += 1

    # --- truncation, reset, retention -----------------------------------------------------------

    def truncate(self, offset: int) -> None:
        """Remove `offset` and everything after it (a Raft follower whose log diverged).

        Batches are removed whole: if `offset` falls inside a batch, that batch goes too, so the
        new log end may be below `offset`.
        """
        if offset >= self.log_end_offset:
            return
        if offset <= self.local_start_offset:
            self.reset(self.local_start_offset)
            return
        slot = bisect.bisect_right(self._base_offsets, offset) - 1
        while slot > 0 and self.segments[slot].size_bytes == 0:
            slot -= 1
        for segment in self.segments[slot + 1 :]:
            segment.delete()
        del self.segments[slot + 1 :]
        del self._base_offsets[slot + 1 :]
        segment = self.segments[slot]
        if segment.sealed:
            segment.reopen_writable()
            if segment in self._unsynced_sealed:
                self._unsynced_sealed.remove(segment)
        found = segment.find_batch_start(offset)
        if found is not None:
            segment.truncate_to_position(*found)
        self._after_shrink(segment_reopened=segment.base_offset)
        # The state included the removed batches: back to the newest snapshot at or below the
        # new end (later ones describe the removed tail) and replay from there.
        self._load_producer_state()

    def reset(self, start_offset: int) -> None:
        """Drop every batch; the log restarts, empty, at `start_offset` (catch-up from behind)."""
        for segment in self.segments:
            segment.delete()
        self.segments = [Segment.create(self.directory, start_offset, self.config)]
        self._base_offsets = [start_offset]
        self._unsynced_sealed = []
        self._epochs = []
        self._after_shrink(segment_reopened=start_offset)
        # The batches that built the state are gone: it restarts empty (docs/transactions.md:
        # producers whose batches all lie below the new start are unknown on this replica).
        self._delete_producer_snapshots(lambda offset: True)
        self.producers = ProducerStateManager(start_offset)

    def _after_shrink(self, *, segment_reopened: int | None) -> None:
        end = self.log_end_offset
        self._forget_pending_log_starts_from(end)
        self.flushed_offset = max(self.local_start_offset, min(self.flushed_offset, end))
        if self._ticket_outstanding:
            self._truncation_floor = min(end, self._truncation_floor or end)
        self._directory_changes += 1
        if self._trim_epochs() or not self._epochs:
            self._save_epochs()
        if segment_reopened is not None:
            # A segment trusted as synced may be written again: a crash must re-validate it, and
            # an outstanding ticket must not move the checkpoint past it.
            self._recovery.reopened(segment_reopened)

    def apply_retention(
        self,
        now_ms: int | None = None,
        *,
        max_offset: int | None = None,
        before_delete: Callable[[int], None] | None = None,
    ) -> int:
        """Delete whole, non-active segments by age, then by total size, and those wholly below
        the `delete_records` floor. Returns how many.

        `max_offset` (exclusive): only segments wholly below it may go (a replicated log keeps
        what is not committed yet). `before_delete(last_offset)` runs once before anything is
        deleted, with the last offset that will be gone (Raft records its snapshot there)."""
        now_ms = self.clock_ms() if now_ms is None else now_ms
        # cleanup.policy=compact alone: retention never deletes (the cleaner keeps the latest).
        retention_ms = self.config.retention_ms if self.config.deletes else -1
        retention_bytes = self.config.retention_bytes if self.config.deletes else -1
        excess = self.size_bytes - retention_bytes
        count = 0
        while count + 1 < len(self.segments):
            oldest = self.segments[count]
            expired = retention_ms >= 0 and oldest.max_timestamp < now_ms - retention_ms
            oversized = retention_bytes >= 0 and excess - oldest.size_bytes >= 0
            # Wholly below DeleteRecords' floor (a replica that was behind when it was set).
            deleted_records = self._base_offsets[count + 1] <= self._records_deleted_below
            below = max_offset is None or self._base_offsets[count + 1] <= max_offset
            if not ((expired or oversized or deleted_records) and below):
                break
            excess -= oldest.size_bytes
            count += 1
        deleted = self._delete_oldest_segments(count, before_delete, reason="retention")
        self.producers.expire(now_ms, self.config.producer_id_expiration_ms)
        return deleted

    def delete_records(
        self,
        before_offset: int,
        *,
        max_offset: int | None = None,
        before_delete: Callable[[int], None] | None = None,
    ) -> int:
        """DeleteRecords: clients are no longer served offsets below `before_offset` (the log
        start moves there, durably), and every whole segment below it is deleted. Returns the
        new log start offset.

        The caller checks `before_offset` against the high watermark (Kafka refuses offsets
        above it). On a replica that is behind, the floor is kept and applies as its log grows.
        `max_offset` and `before_delete` are as for `apply_retention`: a replicated log deletes
        only committed segments, after Raft recorded its snapshot point."""
        assert before_offset >= 0, before_offset
        self._raise_log_start(before_offset)
        limit = before_offset if max_offset is None else min(before_offset, max_offset)
        count = 0
        while count + 1 < len(self.segments) and self._base_offsets[count + 1] <= limit:
            count += 1
        self._delete_oldest_segments(count, before_delete, reason="delete-records")
        return self.log_start_offset

    def _delete_oldest_segments(
        self, count: int, before_delete: Callable[[int], None] | None, *, reason: str
    ) -> int:
        # Retention and DeleteRecords alike: whole segments from the oldest, never the active one.
        assert 0 <= count < len(self.segments), (count, len(self.segments))
        if count and before_delete is not None:
            before_delete(self._base_offsets[count] - 1)
        deleted = 0
        while deleted < count:
            oldest = self.segments[0]
            oldest.delete()
            if oldest in self._unsynced_sealed:
                self._unsynced_sealed.remove(oldest)
            del self.segments[0]
            del self._base_offsets[0]
            deleted += 1
        if deleted:
            logger.info(
                "%s: %s deleted %d segment(s); the first stored offset is now %d",
                self.directory,
                reason,
                deleted,
                self.local_start_offset,
            )
            self._after_shrink(segment_reopened=None)
            start = self.local_start_offset
            self.producers.prune_below(start)
            self._delete_producer_snapshots(lambda offset: offset < start)
        return deleted

    # --- producer state -------------------------------------------------------------------------

    def _producer_snapshot_path(self, offset: int) -> Path:
        return self.directory / f"{offset:020d}{PRODUCER_SNAPSHOT_SUFFIX}"

    def _save_producer_snapshot(self) -> None:
        """Write the producer state as of `applied_end` (a batch boundary) beside the segments;
        keep the newest `PRODUCER_SNAPSHOTS_KEPT`."""
        offset = self.producers.applied_end
        write_atomically(self._producer_snapshot_path(offset), self.producers.snapshot())
        if offset not in self._producer_snapshots:
            bisect.insort(self._producer_snapshots, offset)
        kept = self._producer_snapshots[-PRODUCER_SNAPSHOTS_KEPT:]
        self._delete_producer_snapshots(lambda other: other not in kept)

    def _delete_producer_snapshots(self, condition: Callable[[int], bool]) -> None:
        # Derived state, not user data: a snapshot is deleted when it no longer describes the
        # log (above its end, below its start) or newer ones make it redundant.
        for offset in [offset for offset in self._producer_snapshots if condition(offset)]:
            self._producer_snapshot_path(offset).unlink(missing_ok=True)
            self._producer_snapshots.remove(offset)

    def _load_producer_state(self) -> None:
        """Rebuild `producers`: the newest readable snapshot within the log, then the batch
        headers after it (markers decode their one record). Snapshots above the log end describe
        data recovery or truncation removed; a damaged one is logged and skipped, never fatal."""
        start, end = self.local_start_offset, self.log_end_offset
        self._producer_snapshots = sorted(
            int(path.name[: -len(PRODUCER_SNAPSHOT_SUFFIX)])
            for path in self.directory.glob(f"*{PRODUCER_SNAPSHOT_SUFFIX}")
            if path.name[: -len(PRODUCER_SNAPSHOT_SUFFIX)].isdigit()
        )
        self._delete_producer_snapshots(lambda offset: not start <= offset <= end)
        state = None
        while self._producer_snapshots and state is None:
            offset = self._producer_snapshots[-1]
            try:
                state = ProducerStateManager.restore(
                    self._producer_snapshot_path(offset).read_bytes()
                )
                if state.applied_end != offset:
                    raise ProducerSnapshotError(f"it says it ends at {state.applied_end}")
            except (OSError, ProducerSnapshotError) as exc:
                logger.warning(
                    "%s: producer snapshot at %d is unusable (%s); using an older one or the log",
                    self.directory,
                    offset,
                    exc,
                )
                state = None
                self._delete_producer_snapshots(lambda other, bad=offset: other == bad)
        if state is None:
            state = ProducerStateManager(start)
            if end > start:
                logger.info("%s: rebuilding producer state from the whole log", self.directory)
        self._replay_producers(state)
        self.producers = state

    def _replay_producers(self, state: ProducerStateManager) -> None:
        """Apply to `state` every batch from its `applied_end` to the log end: headers only."""
        begin = state.applied_end
        for segment in self.segments:
            if segment.next_offset <= begin or not segment.size_bytes:
                continue
            first_position = 0
            if segment.base_offset < begin:
                found = segment.find_batch_start(begin)
                if found is None:
                    continue
                first_position = found[0]
            for position, header in segment.walk_headers(first_position, segment.size_bytes):
                marker = None
                if is_marker(header):
                    data = segment.read_window(position, header.size_bytes)
                    marker = self._stored_marker(data, 0, header)
                state.on_write(header, header.base_offset, marker)

    # --- durability -----------------------------------------------------------------------------

    def begin_flush(self, *, include_active: bool = True) -> FlushTicket:
        """A ticket that, once run, makes everything appended so far durable.

        One ticket may be outstanding at a time. With `include_active=False` only sealed segments
        are synced (the housekeeping a flush policy of `never` still does, so recovery stays short).
        """
        assert not self._ticket_outstanding, "one flush at a time per log"
        paths: list[Path] = []
        for segment in self._unsynced_sealed:
            paths.extend(segment.sync_paths())
        if include_active and self.flushed_offset < self.log_end_offset:
            paths.append(self.active.log_path)
        checkpoint = None
        if self._unsynced_sealed and self._checkpoint < self.active.base_offset:
            checkpoint = self.active.base_offset
        self._ticket_outstanding = True
        self._truncation_floor = None
        sync_directory = self._directory_changes != self._directory_synced
        plain = (
            paths == [self.active.log_path]
            and checkpoint is None
            and not sync_directory
            and self.active.fd >= 0  # not closed (a waiter may flush a deleted log)
        )
        return FlushTicket(
            directory=self.directory,
            paths=tuple(paths),
            sealed=tuple(segment.log_path for segment in self._unsynced_sealed),
            end_offset=self.log_end_offset if include_active else self.flushed_offset,
            directory_changes=self._directory_changes,
            sync_directory=sync_directory,
            checkpoint=checkpoint,
            recovery_checkpoint=self._recovery,
            checkpoint_generation=self._recovery.generation,
            fds=(self.active.fd,) if plain else (),
        )

    def complete_flush(self, ticket: FlushTicket) -> None:
        """Record what `ticket.run()` made durable. Not called if `run()` raised."""
        assert self._ticket_outstanding
        self._ticket_outstanding = False
        durable_end = min(ticket.end_offset, self.log_end_offset)
        if self._truncation_floor is not None:
            durable_end = min(durable_end, self._truncation_floor)
        self.flushed_offset = max(self.flushed_offset, durable_end)
        if ticket.checkpoint_generation == self._recovery.generation:
            # Otherwise a segment was reopened meanwhile and may have been sealed again under the
            # same path with bytes the ticket never saw: keep everything for the next ticket.
            # Only segments sealed when the ticket began count as synced: one that was active
            # then, and sealed since, has a tail (and indexes) the ticket never saw.
            synced = set(ticket.sealed)
            self._unsynced_sealed = [
                segment for segment in self._unsynced_sealed if segment.log_path not in synced
            ]
        if ticket.sync_directory or ticket.checkpoint is not None:
            self._directory_synced = max(self._directory_synced, ticket.directory_changes)
        assert self.local_start_offset <= self.flushed_offset <= self.log_end_offset

    def abort_flush(self) -> None:
        """Forget the outstanding ticket after its `run()` failed; nothing is marked durable."""
        self._ticket_outstanding = False

    @property
    def has_unsynced_segments(self) -> bool:
        """Sealed segments wait for their one fsync (which also moves the recovery checkpoint)."""
        return bool(self._unsynced_sealed)

    @property
    def needs_flush(self) -> bool:
        return self.flushed_offset < self.log_end_offset or bool(self._unsynced_sealed)

    def flush(self, up_to_offset: int | None = None) -> None:
        """Fsync, in this thread, until `flushed_offset >= up_to_offset` (default: everything)."""
        if up_to_offset is not None and self.flushed_offset >= up_to_offset:
            return
        ticket = self.begin_flush()
        try:
            ticket.run()
        except BaseException:
            self.abort_flush()
            raise
        self.complete_flush(ticket)


def _read_pending_log_starts(path: Path) -> list[tuple[int, int]]:
    """LOG_START_PENDING_FILE's entries; none when it is absent. A damaged file is reported and
    its entries skipped: those deletions do not take effect on this replica (no record is lost;
    the user may run DeleteRecords again)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    try:
        pending = [(int(entry), int(start)) for entry, start in map(str.split, text.splitlines())]
    except ValueError:
        logger.error("%s is damaged (%r); its pending log starts are skipped", path, text[:200])
        return []
    return sorted(pending)
