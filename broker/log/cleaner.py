"""Log compaction: keep the latest record per key in a partition log's closed segments.

One pass over a log (Kafka's LogCleaner, reshaped for a log that is also a Raft log):

1. `select_clean` (the log's thread) picks the cleanable segments: sealed, wholly below the
   first uncleanable offset (the active segment's base, the high watermark, the last stable
   offset); `plan_clean` (any thread) maps key -> latest offset over them, whole segments at a
   time, up to `keys_max` keys (the bound on the cleaner's memory).
2. `write_cleaned` (any thread: it reads and writes only its own files) rewrites each planned
   segment into `<dir>/.cleaning/<base>.log`, validates what it wrote by rebuilding its indexes
   there (every batch CRC-checked again), and fsyncs it.
3. `install_cleaned` (the log's thread) swaps each cleaned segment in, in offset order, through
   `<base>.{index,timeindex,log}.swap` files (the `.log.swap` rename is the commit point), and
   `recover_swaps` at open completes a committed swap or discards an uncommitted one.

What a pass keeps. Every batch keeps its base offset, last offset and leader epoch: a batch is
a Raft entry (docs/raft.md), offsets must chain from segment to segment, and a follower's log
shares the leader's batch boundaries, so a batch is never dropped or merged; one whose records
all go stays as an empty batch (61 bytes, record_count 0), as Redpanda keeps placeholders. Inside
a data batch a record goes when a later record has its key, when it belongs to an aborted
transaction, or when it is a tombstone (null value) that has been clean for
`delete_retention_ms`. Control batches (Raft no-ops and configurations, transaction markers) and
records without a key are kept as they are; batches in Kafka's varint encoding or compressed
with a codec this installation cannot write are kept whole (they still count for the map).
Any prefix of a pass's swaps is a valid log: segments are swapped in offset order, so an older
value of a key is always gone before a later tombstone for it can go.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack

from broker.log.durability import fsync_directory, write_atomically
from broker.log.segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, Segment
from wire.batch import (
    MAGIC_MSGPACK,
    BatchHeader,
    Compression,
    available_compressions,
    decode_records,
    iter_batches,
    repack_batch,
)

logger = logging.getLogger(__name__)

CLEANING_DIRECTORY = ".cleaning"
SWAP_SUFFIX = ".swap"
# `[[end_offset, cleaned_at_ms], ...]`: what each recent pass cleaned, and when (tombstones).
CLEANER_CHECKPOINT_FILE = "cleaner-checkpoint"
# Passes remembered; older ones merge into their successor (which only delays tombstone removal).
CLEANER_PASSES_KEPT = 16
# Bytes read from a segment file at a time while rewriting it.
CLEANER_READ_BYTES = 4 * 1024 * 1024
_SUFFIXES = (INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX)  # the log last: its rename commits

# A step name, raised at by tests to simulate a crash there (`install_cleaned(fault=...)`).
Fault = Callable[[str], None]


def _no_fault(step: str) -> None:
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentPlan:
    """One sealed segment to rewrite, as it was when planned (the swap checks it is unchanged)."""

    base_offset: int
    size_bytes: int
    path: Path


@dataclasses.dataclass(frozen=True, slots=True)
class CleanPlan:
    """A pass over one log: its segments in offset order and what decides each record."""

    directory: Path
    segments: tuple[SegmentPlan, ...]
    # Offsets below this end are covered by `latest` (the end of the last mapped segment).
    end_offset: int
    latest: dict[bytes, int]
    # Tombstones below this offset have been clean for delete_retention_ms: they go.
    tombstone_horizon: int
    # (producer id, first offset) of aborted transactions in the planned range.
    aborted: tuple[tuple[int, int], ...]
    dirty_ratio: float


@dataclasses.dataclass(slots=True)
class CleanStats:
    """What a pass did, for logs, metrics and the benchmark."""

    segments: int = 0
    records_read: int = 0
    records_kept: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


# --- the cleaner checkpoint -----------------------------------------------------------------------


def read_passes(directory: Path) -> list[tuple[int, int]]:
    """The recent passes `(end_offset, cleaned_at_ms)`; empty if never cleaned or unreadable
    (then tombstones merely stay longer and the whole log counts as dirty)."""
    try:
        raw = msgpack.unpackb((directory / CLEANER_CHECKPOINT_FILE).read_bytes())
        return [(int(end), int(at)) for end, at in raw]
    except (OSError, ValueError, TypeError, msgpack.UnpackException):
        return []


def _record_pass(directory: Path, end_offset: int, now_ms: int) -> None:
    passes = [*read_passes(directory), (end_offset, now_ms)]
    while len(passes) > CLEANER_PASSES_KEPT:
        # Merge the two oldest into the later one: its later time only delays removals.
        (first_end, _), (second_end, second_at) = passes[0], passes[1]
        passes[:2] = [(max(first_end, second_end), second_at)]
    write_atomically(directory / CLEANER_CHECKPOINT_FILE, msgpack.packb(passes))


def first_dirty_offset(directory: Path) -> int:
    """Where the never-cleaned part of a log starts (0 if it was never cleaned)."""
    return max((end for end, _ in read_passes(directory)), default=0)


# --- planning (the log's thread) ------------------------------------------------------------------


def first_uncleanable_offset(log: object, high_watermark: int) -> int:
    """Nothing at or above this offset is cleaned: the active segment, uncommitted data (a Raft
    follower may still truncate it), and open transactions (their outcome decides records)."""
    active_base = log.active.base_offset  # type: ignore[attr-defined]
    stable = log.producers.last_stable_offset(high_watermark)  # type: ignore[attr-defined]
    return min(active_base, high_watermark, stable)


@dataclasses.dataclass(frozen=True, slots=True)
class CleanCandidate:
    """What a pass over one log needs from it, taken on the log's thread (cheap: no file read),
    so that the key map can be built in another thread."""

    directory: Path
    segments: tuple[SegmentPlan, ...]
    # Each planned segment's exclusive end offset, in the same order.
    segment_ends: tuple[int, ...]
    # segments[first_dirty:] were never cleaned; the key map is built from them only (the clean
    # ones before them hold no key twice already).
    first_dirty: int
    tombstone_horizon: int
    aborted: tuple[tuple[int, int], ...]
    dirty_ratio: float


def select_clean(
    log: object, *, high_watermark: int, now_ms: int, force: bool = False
) -> CleanCandidate | None:
    """The cleanable part of `log`, or None when it has nothing to clean or is not dirty enough
    (`log.config.min_cleanable_dirty_ratio`; `force` ignores the ratio)."""
    config = log.config  # type: ignore[attr-defined]
    limit = first_uncleanable_offset(log, high_watermark)
    segments = [
        segment
        for segment in log.segments[:-1]  # type: ignore[attr-defined]
        if segment.next_offset <= limit and segment.size_bytes
    ]
    if not segments:
        return None
    directory: Path = log.directory  # type: ignore[attr-defined]
    passes = read_passes(directory)
    dirty_from = max((end for end, _ in passes), default=0)
    total = sum(segment.size_bytes for segment in segments)
    dirty = sum(segment.size_bytes for segment in segments if segment.next_offset > dirty_from)
    ratio = dirty / total
    if not dirty or (ratio < config.min_cleanable_dirty_ratio and not force):
        return None
    horizon_ms = now_ms - config.delete_retention_ms
    aborted = log.producers.aborted_transactions(  # type: ignore[attr-defined]
        segments[0].base_offset, segments[-1].next_offset
    )
    return CleanCandidate(
        directory=directory,
        segments=tuple(SegmentPlan(s.base_offset, s.size_bytes, s.log_path) for s in segments),
        segment_ends=tuple(segment.next_offset for segment in segments),
        first_dirty=next(n for n, s in enumerate(segments) if s.next_offset > dirty_from),
        tombstone_horizon=max((end for end, at in passes if at <= horizon_ms), default=0),
        aborted=tuple(aborted),
        dirty_ratio=ratio,
    )


def plan_clean(candidate: CleanCandidate, *, keys_max: int) -> CleanPlan:
    """Map key -> latest offset over the candidate's dirty segments, whole segments at a time,
    until `keys_max` keys are mapped (any thread: it reads only segment files, by path). The
    pass rewrites the clean segments and the mapped dirty ones (Kafka's cleaner does the same)."""
    dirty = candidate.segments[candidate.first_dirty :]
    latest, mapped = _keys_of(dirty, candidate.aborted, keys_max)
    planned = candidate.first_dirty + len(mapped)
    return CleanPlan(
        directory=candidate.directory,
        segments=candidate.segments[:planned],
        end_offset=candidate.segment_ends[planned - 1],
        latest=latest,
        tombstone_horizon=candidate.tombstone_horizon,
        aborted=candidate.aborted,
        dirty_ratio=candidate.dirty_ratio,
    )


class _AbortedRanges:
    """Which transactional batches belong to aborted transactions, walking batches in offset
    order: a producer is aborting from the batch that reaches the first offset of one of its
    aborted transactions until its next marker (the read_committed rule, docs/transactions.md)."""

    def __init__(self, aborted: tuple[tuple[int, int], ...]) -> None:
        self._starts: dict[int, list[int]] = {}
        for producer_id, first in aborted:
            self._starts.setdefault(producer_id, []).append(first)
        self._aborting: set[int] = set()

    def is_aborted(self, header: BatchHeader) -> bool:
        producer_id = header.producer_id
        if header.is_control:
            self._aborting.discard(producer_id)  # its marker ends the transaction
            return False
        if not header.is_transactional:
            return False
        starts = self._starts.get(producer_id, [])
        while starts and starts[0] <= header.last_offset:
            starts.pop(0)
            self._aborting.add(producer_id)
        return producer_id in self._aborting


def _keys_of(
    segments: tuple[SegmentPlan, ...], aborted: tuple[tuple[int, int], ...], keys_max: int
) -> tuple[dict[bytes, int], list[SegmentPlan]]:
    """key -> latest offset over whole segments, until `keys_max` keys are mapped; and the
    segments mapped. Aborted records, control batches and batches this installation cannot
    decode are left out: they never supersede anything."""
    latest: dict[bytes, int] = {}
    mapped: list[SegmentPlan] = []
    ranges = _AbortedRanges(aborted)
    readable = set(available_compressions())
    for segment in segments:
        if mapped and len(latest) >= keys_max:
            break  # bounded memory: the rest of the log waits for the next pass
        for _, data, header in _batches(segment.path, segment.size_bytes):
            if ranges.is_aborted(header) or header.is_control:
                continue
            if header.compression not in readable:
                continue
            for record in decode_records(data, header=header):
                if record.key is not None:
                    latest[bytes(record.key)] = record.offset
        mapped.append(segment)
    return latest, mapped


def _batches(path: Path, size_bytes: int) -> Iterator[tuple[int, bytes, BatchHeader]]:
    """`(position, batch bytes, header)` of every batch in the first `size_bytes` of a file,
    CRC-checked (the cleaner rewrites what it reads; damage must stop it, not be copied)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        position = 0
        while position < size_bytes:
            chunk = os.pread(fd, min(CLEANER_READ_BYTES, size_bytes - position), position)
            used = 0
            view = memoryview(chunk)
            for offset, header in _whole_batches(view):
                yield position + offset, bytes(view[offset : offset + header.size_bytes]), header
                used = offset + header.size_bytes
            if not used:  # one batch larger than a chunk
                length = int.from_bytes(chunk[8:12], "big", signed=True) + 12
                data = os.pread(fd, length, position)
                header = next(iter_batches(data, max_batch_bytes=2**31 - 1))[1]
                yield position, data, header
                used = length
            position += used
    finally:
        os.close(fd)


def _whole_batches(view: memoryview) -> Iterator[tuple[int, BatchHeader]]:
    position = 0
    while len(view) - position >= 12:
        length = int.from_bytes(view[position + 8 : position + 12], "big", signed=True) + 12
        if position + length > len(view):
            return
        header = next(iter_batches(view[position : position + length], max_batch_bytes=length))[1]
        yield position, header
        position += length


# --- rewriting (any thread) -----------------------------------------------------------------------


def write_cleaned(
    plan: CleanPlan, config: object, *, throttle: Callable[[int], None] | None = None
) -> CleanStats:
    """Rewrite every planned segment into `<dir>/.cleaning/`, validated and fsynced.

    `throttle(bytes)` is called after each chunk of I/O and may sleep (the I/O limit).
    Raises on damage or I/O errors; the partial files are discarded by the next pass or open.
    """
    workspace = plan.directory / CLEANING_DIRECTORY
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir()
    stats = CleanStats()
    writable = set(available_compressions())
    ranges = _AbortedRanges(plan.aborted)
    for segment in plan.segments:
        out = bytearray()
        for _, data, header in _batches(segment.path, segment.size_bytes):
            stats.records_read += header.record_count
            stats.bytes_read += len(data)
            kept = _clean_batch(data, header, plan, ranges.is_aborted(header), writable, stats)
            out += kept
            if len(out) >= CLEANER_READ_BYTES and throttle is not None:
                throttle(len(out))
        stats.bytes_written += len(out)
        _write_segment(workspace, segment.base_offset, bytes(out), config)
        if throttle is not None:
            throttle(len(out) + segment.size_bytes)
        stats.segments += 1
    fsync_directory(workspace)
    return stats


def _clean_batch(
    data: bytes,
    header: BatchHeader,
    plan: CleanPlan,
    aborted: bool,
    writable: set[Compression],
    stats: CleanStats,
) -> bytes:
    """The batch as the pass keeps it (the same bytes when nothing goes)."""
    untouchable = header.magic != MAGIC_MSGPACK or header.compression not in writable
    if header.is_control or untouchable:
        # Control batches are Raft entries of their own (no-ops, configurations), or markers,
        # which must outlive their transaction's data; the others cannot be re-encoded here.
        stats.records_kept += header.record_count
        return data
    if aborted:
        return repack_batch(header, [])
    records = decode_records(data, header=header)
    base_offset, base_timestamp = header.base_offset, header.base_timestamp
    rows = [
        [
            record.timestamp - base_timestamp,
            record.key,
            record.value,
            record.headers,
            record.offset - base_offset,
        ]
        for record in records
        if _keep(record.offset, record.key, record.value, plan)
    ]
    stats.records_kept += len(rows)
    if len(rows) == len(records):
        return data
    return repack_batch(header, rows)


def _keep(offset: int, key: bytes | None, value: bytes | None, plan: CleanPlan) -> bool:
    if key is None:
        return True  # nothing supersedes a record without a key
    if plan.latest.get(bytes(key), offset) > offset:
        return False  # a later record has this key
    return not (value is None and offset < plan.tombstone_horizon)


def _write_segment(workspace: Path, base_offset: int, data: bytes, config: object) -> None:
    """Write a cleaned segment, then rebuild its indexes from the file: every batch is read back
    and CRC-checked (the pair to the check on read), and nothing may be cut."""
    path = workspace / f"{base_offset:020d}{LOG_SUFFIX}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    segment, note = Segment.open(workspace, base_offset, config, writable=False, recover=True)  # type: ignore[arg-type]
    try:
        assert note is None, f"a cleaned segment failed its own validation: {note}"
        assert segment.size_bytes == len(data)
        for synced in segment.sync_paths():
            descriptor = os.open(synced, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    finally:
        segment.close()


# --- swapping (the log's thread) ------------------------------------------------------------------


def install_cleaned(log: object, plan: CleanPlan, *, now_ms: int, fault: Fault = _no_fault) -> int:
    """Swap the cleaned segments into `log`, in offset order; returns how many.

    A segment that changed since it was planned (deleted by retention or a reset) is skipped,
    and with it every later one (a later tombstone must not go while an older value stays).
    """
    directory = plan.directory
    workspace = directory / CLEANING_DIRECTORY
    installed = 0
    for planned in plan.segments:
        slot = log.segment_slot(planned.base_offset)  # type: ignore[attr-defined]
        if slot is None or log.segments[slot].size_bytes != planned.size_bytes:  # type: ignore[attr-defined]
            logger.info(
                "%s: segment %d changed while cleaning; pass cut short",
                directory,
                planned.base_offset,
            )
            break
        name = f"{planned.base_offset:020d}"
        for suffix in _SUFFIXES:
            os.replace(workspace / f"{name}{suffix}", directory / f"{name}{suffix}{SWAP_SUFFIX}")
            fault(f"renamed{suffix}")
        fsync_directory(directory)  # the .log.swap is durable: the swap is committed
        fault("committed")
        log.replace_segment(slot, _complete_swap(directory, planned.base_offset, fault))  # type: ignore[attr-defined]
        installed += 1
    shutil.rmtree(workspace, ignore_errors=True)
    if installed == len(plan.segments):
        _record_pass(directory, plan.end_offset, now_ms)
    return installed


def _complete_swap(directory: Path, base_offset: int, fault: Fault = _no_fault) -> int:
    """Move a committed segment's `.swap` files over its live ones (indexes first, the log
    last, so the log's `.swap` is there until the very end); returns the base offset."""
    name = f"{base_offset:020d}"
    for suffix in _SUFFIXES:
        swapped = directory / f"{name}{suffix}{SWAP_SUFFIX}"
        if swapped.exists():
            os.replace(swapped, directory / f"{name}{suffix}")
            fault(f"replaced{suffix}")
    fsync_directory(directory)
    return base_offset


def recover_swaps(directory: Path) -> list[int]:
    """At open, before segments are read: finish every committed swap (a `.log.swap` exists),
    discard uncommitted ones (index `.swap` files alone) and the `.cleaning` workspace.
    Returns the base offsets whose swap was completed (logged)."""
    shutil.rmtree(directory / CLEANING_DIRECTORY, ignore_errors=True)
    completed = []
    for swapped in sorted(directory.glob(f"*{LOG_SUFFIX}{SWAP_SUFFIX}")):
        base = int(swapped.name.split(".")[0])
        _complete_swap(directory, base)
        completed.append(base)
        logger.warning("%s: completed the interrupted swap of cleaned segment %d", directory, base)
    for leftover in directory.glob(f"*{SWAP_SUFFIX}"):
        leftover.unlink()
        logger.warning("%s: discarded %s of an uncommitted clean", directory, leftover.name)
    if completed:
        fsync_directory(directory)
    return completed


def clean_log(
    log: object,
    *,
    high_watermark: int,
    now_ms: int,
    keys_max: int = 1_000_000,
    force: bool = False,
    fault: Fault = _no_fault,
) -> CleanStats | None:
    """One whole pass, inline (tests, tools): plan, rewrite, install. None if nothing to do."""
    candidate = select_clean(log, high_watermark=high_watermark, now_ms=now_ms, force=force)
    if candidate is None:
        return None
    plan = plan_clean(candidate, keys_max=keys_max)
    stats = write_cleaned(plan, log.config)  # type: ignore[attr-defined]
    fault("written")
    install_cleaned(log, plan, now_ms=now_ms, fault=fault)
    return stats
