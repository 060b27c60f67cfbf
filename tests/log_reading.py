"""Test helper: the whole content of a partition log, for comparing replicas byte for byte.

`PartitionLog.read` returns batches of one segment at a time, so comparing single reads would
compare only the first segment; this walks every segment from the log start to the log end.
"""

from __future__ import annotations

from broker.log.log import PartitionLog


def log_bytes(log: PartitionLog) -> bytes:
    chunks = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        read = log.read(offset, 1 << 20)
        if not read.data:
            break
        chunks.append(bytes(read.data))
        offset = read.next_offset
    return b"".join(chunks)
