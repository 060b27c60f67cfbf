"""Test helpers: the whole content of a partition log, for comparing replicas byte for byte.

`PartitionLog.read` returns batches of one segment at a time, so comparing single reads would
compare only the first segment; `log_bytes` walks every segment from the log start to the log
end. `batches_in_file` reads a segment file directly, which may end in preallocated zeros.
"""

from __future__ import annotations

from broker.log.log import PartitionLog
from wire.batch import BatchHeader, InvalidBatchError, validate_batch


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


def batches_in_file(data: bytes, *, beside_a_writer: bool = False) -> list[tuple[int, BatchHeader]]:
    """`(position, header)` of the batches of a segment file's bytes, which may end in the zeros
    that preallocation wrote ahead of the last batch: only zeros may follow it. `beside_a_writer`
    (the file of a running broker): stop at the first position that holds no whole, valid batch,
    since a batch may be being written there."""
    found = []
    position = 0
    while position < len(data):
        try:
            header = validate_batch(data, position, max_batch_bytes=2**31 - 1)
        except InvalidBatchError:
            if beside_a_writer or data.count(0, position) == len(data) - position:
                break
            raise
        found.append((position, header))
        position += header.size_bytes
    return found
