"""Walking and verifying runs of stored batches before a partition log serves them.

Reads hand out whole batches that chain (each base offset follows the previous batch's last), end
below the high watermark, and, for data trusted at open without a scan, pass their CRC32C and agree
with the leader epoch cache (the epoch is outside the CRC). Batches already verified in this
process are walked by their lengths only. Pure functions over bytes, plus one that records how far
a segment has been verified.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import msgpack

from broker.log.segment import Segment, SegmentCorruptError
from wire.batch import HEADER_SIZE, LOG_OVERHEAD, InvalidBatchError, validate_batch

logger = logging.getLogger(__name__)

_PREFIX = struct.Struct(">qi")  # base_offset, batch_length
_LAST_OFFSET_DELTA = struct.Struct(">i")  # at byte 23 of a batch header
_LENGTH = struct.Struct(">i")  # batch_length, at byte 8
# Batches already on disk are checked against their CRC, not against today's size limit.
STORED_BATCH_BYTES_MAX = 2**31 - 1


def whole_verified_batches(data: bytes) -> tuple[int, int, str | None]:
    """`whole_batches` for bytes already verified, all below the limit: walk lengths only.

    The common fetch: one length read per batch instead of a header's worth of fields.
    """
    position = 0
    last = -1
    size_total = len(data)
    while size_total - position >= LOG_OVERHEAD:
        size = _LENGTH.unpack_from(data, position + 8)[0] + LOG_OVERHEAD
        if size < HEADER_SIZE:
            return (
                position,
                next_offset_at(data, last),
                f"batch at byte {position} has a bad length",
            )
        if position + size > size_total:
            break
        last = position
        position += size
    return position, next_offset_at(data, last), None


def next_offset_at(data: bytes, position: int) -> int:
    if position < 0:
        return -1
    base_offset = _PREFIX.unpack_from(data, position)[0]
    return base_offset + _LAST_OFFSET_DELTA.unpack_from(data, position + 23)[0] + 1


def whole_batches(
    data: bytes,
    limit: int,
    verify_from: int,
    epochs: list[tuple[int, int]] | None = None,
    *,
    verify_to: int = 2**63,
) -> tuple[int, int, str | None]:
    """How many leading bytes of `data` are whole, chained batches ending below offset `limit`.

    Batches starting from byte `verify_from` up to `verify_to` are fully validated (CRC) and their
    leader epoch, which the CRC does not cover, is checked against the epoch cache `epochs`
    (`(epoch, start_offset)` pairs). Returns
    (end position, next offset, what was wrong or None). Reads only the header fields it needs
    from batches already verified.
    """
    position = 0
    next_offset = -1
    size_total = len(data)
    # The epoch range last looked up: consecutive batches mostly share one, so one bisection.
    epoch_start, epoch_end, epoch = 0, 0, None
    while size_total - position >= HEADER_SIZE:
        base_offset, batch_length = _PREFIX.unpack_from(data, position)
        (last_delta,) = _LAST_OFFSET_DELTA.unpack_from(data, position + 23)
        size = batch_length + LOG_OVERHEAD
        if size < HEADER_SIZE or (next_offset >= 0 and base_offset != next_offset):
            return position, next_offset, f"batch header at byte {position} does not chain"
        if position + size > size_total or base_offset + last_delta >= limit:
            break
        if verify_from <= position < verify_to:
            try:
                header = validate_batch(data, position, max_batch_bytes=STORED_BATCH_BYTES_MAX)
            except InvalidBatchError as exc:
                return position, next_offset, exc.message
            if epochs and not epoch_start <= base_offset < epoch_end:
                slot = bisect.bisect_right(epochs, base_offset, key=_epoch_start_offset) - 1
                epoch_start = epochs[slot][1] if slot >= 0 else -1
                epoch_end = epochs[slot + 1][1] if slot + 1 < len(epochs) else 2**63
                epoch = epochs[slot][0] if slot >= 0 else None
            expected = epoch if epochs else None
            if expected is not None and expected != header.leader_epoch:
                return (
                    position,
                    next_offset,
                    (
                        f"batch at offset {base_offset} has leader epoch "
                        f"{header.leader_epoch}, the epoch cache says {expected}"
                    ),
                )
        position += size
        next_offset = base_offset + last_delta + 1
    return position, next_offset, None


def checked_batches(
    epochs: list[tuple[int, int]], segment: Segment, position: int, data: bytes, limit: int
) -> tuple[int, int]:
    """`whole_batches` of `data` (read from `segment` at `position`), CRC-checking the part
    beyond `segment.verified_bytes` and its epochs against the log's epoch cache `epochs`.

    Returns (end, next offset) of the batches that may be served. Damage is logged and ends the
    result early; if even the first batch is damaged, `SegmentCorruptError` is raised.
    """
    verify_from = max(segment.verified_bytes - position, 0)
    verify_to = segment.unverified_end - position
    if verify_to <= verify_from:
        verify_from = len(data)  # nothing here was trusted without a check
    if segment.next_offset <= limit and verify_from >= len(data):
        # Verified, and every batch of the segment is below the limit: only lengths matter.
        end, next_offset, problem = whole_verified_batches(data)
    else:
        end, next_offset, problem = whole_batches(
            data, limit, verify_from, epochs, verify_to=verify_to
        )
    if problem is not None:
        logger.error(
            "%s: refusing to serve damaged data in %s at byte %d: %s",
            segment.directory,
            segment.log_path.name,
            position + end,
            problem,
        )
        if end == 0:
            raise SegmentCorruptError(f"{segment.log_path}: {problem}")
    if verify_from < end and position <= segment.verified_bytes < position + end:
        segment.verified_bytes = position + end  # the verified prefix grew without a hole
    return end, next_offset


def _epoch_start_offset(entry: tuple[int, int]) -> int:
    return entry[1]


def read_epoch_file(path: Path) -> list[tuple[int, int]] | None:
    """The epoch cache's (epoch, start offset) pairs, or None if missing, unreadable or unsorted."""
    try:
        entries = [(int(e), int(s)) for e, s in msgpack.unpackb(path.read_bytes())]
    except (OSError, ValueError, TypeError, msgpack.UnpackException):
        return None
    for before, after in itertools.pairwise(entries):
        if not (before[0] < after[0] and before[1] < after[1]):
            return None
    return entries


def epoch_lookup(entries: list[tuple[int, int]] | None) -> Callable[[int], int | None] | None:
    """What the epoch cache says about an offset's epoch, for recovery's cross-check."""
    if not entries:
        return None
    starts = [start for _, start in entries]

    def expected_epoch(offset: int) -> int | None:
        slot = bisect.bisect_right(starts, offset) - 1
        return None if slot < 0 else entries[slot][0]

    return expected_epoch
