"""The records of a producer batch as the wire's rows, for tests to compare and index."""

from __future__ import annotations

from typing import Any

from client.accumulator import ProducerBatch
from wire.batch import columns_to_rows


def rows_of(batch: ProducerBatch) -> list[tuple[int, bytes | None, bytes | None, Any]]:
    return columns_to_rows(batch.deltas, batch.keys, batch.values, batch.headers)
