"""Reading a topic back to its end offsets, for tests that check what a producer wrote."""

from __future__ import annotations

import time

from client import Consumer, ConsumerRecord, TopicPartition

READ_DEADLINE_S = 20.0


def read_records(
    bootstrap: str,
    topic: str,
    partitions: int,
    isolation_level: str = "read_uncommitted",
    acked_ends: dict[int, int] | None = None,
) -> list[ConsumerRecord]:
    """Every record of `topic` up to its end offsets (as `isolation_level` sees it), in the order
    the consumer's polls handed them out; fails after `READ_DEADLINE_S`.

    `acked_ends` (partition -> offset after its last acknowledged record): read at least that
    far. Needed after acks=1: the acknowledgement comes before the fsync that makes a record
    readable (the broker's default flush policy), so the end offsets asked for right after it
    may not include the last records yet."""
    records: list[ConsumerRecord] = []
    with Consumer(
        bootstrap, auto_offset_reset="earliest", isolation_level=isolation_level
    ) as consumer:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        for partition, acked in (acked_ends or {}).items():
            tp = TopicPartition(topic, partition)
            ends[tp] = max(ends[tp], acked)
        deadline = time.monotonic() + READ_DEADLINE_S
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "did not reach the end offsets"
            records.extend(consumer.poll(timeout_ms=200))
    return records


def read_partitions(
    bootstrap: str,
    topic: str,
    partitions: int,
    isolation_level: str = "read_uncommitted",
    acked_ends: dict[int, int] | None = None,
) -> dict[int, list[tuple[int, bytes | None, bytes | None]]]:
    """`read_records` per partition, as (offset, key, value)."""
    out: dict[int, list[tuple[int, bytes | None, bytes | None]]] = {}
    for record in read_records(bootstrap, topic, partitions, isolation_level, acked_ends):
        out.setdefault(record.partition, []).append((record.offset, record.key, record.value))
    return out
