"""The log start control batch: how DeleteRecords reaches every replica of a partition in a cluster.

The partition log is the Raft log, so a new log start travels as an entry of the partition's own
Raft group: a control batch (consumers skip it, as they skip transaction markers) of one record
whose key is `ControlType.LOG_START` and whose value is the new log start offset (msgpack int).
Every replica's log notes the batch as pending when it writes it and raises its log start when
the batch commits (`PartitionLog.commit_log_starts`), leader and followers alike, so the deletion
holds on every replica, after restarts (the log persists it) and failovers, and a batch a
failover discards raises nothing. The leader proposes the batch only for an offset at or below
its high watermark.

Pure: encoding and decoding only.
"""

from __future__ import annotations

import msgpack

from wire.batch import (
    BatchHeader,
    ControlType,
    InvalidBatchError,
    build_control_batch,
    control_type_of,
    decode_records,
)
from wire.error_codes import ErrorCode


def build_log_start_batch(offset: int, *, timestamp_ms: int) -> bytes:
    """The control batch that moves a partition's log start to `offset`."""
    assert offset >= 0, offset
    return build_control_batch(
        ControlType.LOG_START, msgpack.packb(int(offset)), timestamp_ms=timestamp_ms
    )


def log_start_of(
    buf: bytes | bytearray | memoryview, position: int, header: BatchHeader
) -> int | None:
    """The log start a non-transactional control batch at `position` sets; None when it is
    another control batch (a Raft no-op or configuration). Raises InvalidBatchError when it is
    a log start batch whose value is not an offset."""
    records = decode_records(buf, position, header=header)
    if len(records) != 1:
        return None
    try:
        if control_type_of(records[0]) is not ControlType.LOG_START:
            return None
    except ValueError:
        return None  # a control type this broker does not know: not ours to act on
    try:
        offset = msgpack.unpackb(records[0].value or b"", raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise InvalidBatchError(
            ErrorCode.INVALID_RECORD,
            f"log start value {records[0].value!r} does not decode: {exc!r}",
        ) from exc
    if type(offset) is not int or offset < 0:
        raise InvalidBatchError(
            ErrorCode.INVALID_RECORD, f"log start value {offset!r} is not an offset"
        )
    return offset
