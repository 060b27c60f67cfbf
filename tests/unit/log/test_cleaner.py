"""Log compaction: the latest record per key survives, offsets/epochs/batches are kept, aborted
transactions and expired tombstones go, and a crash at any step of the swap loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import DAY_MS, LogConfig
from broker.log import cleaner
from broker.log.log import PartitionLog
from broker.transactions.producer_state import build_marker_batch
from client.aio.consumer import decode_fetched, scan_fetched
from client.types import TopicPartition
from wire.batch import build_batch, decode_records, iter_batches

CONFIG = LogConfig(
    segment_bytes=1024,
    max_batch_bytes=1024,
    cleanup_policy="compact",
    min_cleanable_dirty_ratio=0.0,
)
NOW_MS = 10 * DAY_MS


def open_log(directory: Path, config: LogConfig = CONFIG) -> PartitionLog:
    return PartitionLog.open(directory, config, clock_ms=lambda: NOW_MS)


def put(
    log: PartitionLog, records: list[tuple[bytes | None, bytes | None]], **kwargs: object
) -> None:
    batch = build_batch([(NOW_MS, key, value, None) for key, value in records], **kwargs)  # type: ignore[arg-type]
    log.append(batch, leader_epoch=kwargs.get("leader_epoch", max(log.last_term, 1)))  # type: ignore[arg-type]


def read_all(log: PartitionLog) -> list[tuple[int, bytes | None, bytes | None]]:
    out = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        result = log.read(offset, 1 << 20)
        for position, header in iter_batches(result.data):
            if header.is_control:
                continue
            for record in decode_records(result.data, position, header=header):
                out.append((record.offset, record.key, record.value))
        offset = result.next_offset
    return out


def batch_shape(log: PartitionLog) -> list[tuple[int, int, int]]:
    """(base offset, last offset, epoch) of every batch: what Raft sees."""
    shape = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        result = log.read(offset, 1 << 20)
        shape += [
            (h.base_offset, h.last_offset, h.leader_epoch) for _, h in iter_batches(result.data)
        ]
        offset = result.next_offset
    return shape


def latest_by_key(
    records: list[tuple[int, bytes | None, bytes | None]],
) -> dict[bytes, bytes | None]:
    latest: dict[bytes, bytes | None] = {}
    for _, key, value in records:
        if key is not None:
            latest[key] = value
    return latest


def fill(log: PartitionLog, rounds: int = 30, keys: int = 8) -> None:
    for round_number in range(rounds):
        put(
            log,
            [(b"k%d" % (n % keys), b"v%d-%d" % (round_number, n)) for n in range(3)],
            leader_epoch=max(log.last_term, 1) + (round_number % 10 == 9),
        )


def test_latest_per_key_survives_and_batches_keep_offsets_and_epochs(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill(log)
    before = read_all(log)
    shape = batch_shape(log)
    terms = [log.term_at(offset) for offset in range(log.log_end_offset)]
    stats = cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS)
    assert stats is not None and stats.records_kept < stats.records_read
    after = read_all(log)
    assert latest_by_key(after) == latest_by_key(before)
    assert len(after) < len(before)
    assert set(after) <= set(before)  # same offsets, keys and values: only fewer of them
    assert batch_shape(log) == shape
    assert [log.term_at(offset) for offset in range(log.log_end_offset)] == terms
    # The active segment is never touched: everything in it is still there.
    active_records = [r for r in before if r[0] >= log.active.base_offset]
    assert all(record in after for record in active_records)
    log.close()
    reopened = open_log(tmp_path)
    assert read_all(reopened) == after
    reopened.close()


def test_only_below_the_high_watermark(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill(log)
    before = read_all(log)
    assert cleaner.clean_log(log, high_watermark=log.segments[0].base_offset, now_ms=NOW_MS) is None
    assert read_all(log) == before
    log.close()


def test_tombstones_stay_for_delete_retention_then_go(tmp_path: Path) -> None:
    config = LogConfig(
        segment_bytes=1024,
        max_batch_bytes=1024,
        cleanup_policy="compact",
        min_cleanable_dirty_ratio=0.0,
        delete_retention_ms=1000,
    )
    log = open_log(tmp_path, config)
    put(log, [(b"gone", b"value")])
    put(log, [(b"gone", None)])
    fill(log)
    cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS)
    assert (1, b"gone", None) in read_all(log)  # the tombstone, its value removed
    assert all(key != b"gone" or value is None for _, key, value in read_all(log))
    fill(log, rounds=20)  # new dirty data so that another pass runs
    cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS + 500)
    assert (1, b"gone", None) in read_all(log)  # not yet clean for 1000 ms
    fill(log, rounds=20)
    cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS + 1500)
    assert all(key != b"gone" for _, key, _ in read_all(log))
    log.close()


def test_aborted_transaction_records_go_markers_stay(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    put(log, [(b"a", b"committed")])
    txn = {"producer_id": 7, "producer_epoch": 0, "base_sequence": 0, "transactional": True}
    put(log, [(b"a", b"aborted"), (b"b", b"aborted")], **txn)
    log.append(
        build_marker_batch(7, 0, commit=False, coordinator_epoch=0, timestamp_ms=NOW_MS),
        leader_epoch=1,
    )
    fill(log)
    marker_shape = batch_shape(log)
    cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS)
    values = [value for _, _, value in read_all(log)]
    assert b"aborted" not in values
    assert batch_shape(log) == marker_shape  # the emptied batch and the marker are still there
    assert log.producers.aborted_transactions(0, log.log_end_offset) == [(7, 1)]
    log.close()


def test_records_without_key_are_kept(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    put(log, [(None, b"no key")])
    fill(log)
    cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS)
    assert (0, None, b"no key") in read_all(log)
    log.close()


def test_dirty_ratio_gates_a_pass(tmp_path: Path) -> None:
    config = LogConfig(
        segment_bytes=1024,
        max_batch_bytes=1024,
        cleanup_policy="compact",
        min_cleanable_dirty_ratio=0.5,
    )
    log = open_log(tmp_path, config)
    fill(log)
    assert cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS) is not None
    # Everything cleanable is clean now; a little new data is below the ratio.
    put(log, [(b"k1", b"new")])
    assert cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS) is None
    log.close()


def test_compact_only_topics_are_not_deleted_by_retention(tmp_path: Path) -> None:
    config = LogConfig(
        segment_bytes=1024, max_batch_bytes=1024, cleanup_policy="compact", retention_ms=1
    )
    log = open_log(tmp_path, config)
    fill(log)
    assert log.apply_retention(NOW_MS + DAY_MS) == 0
    log.close()


STEPS = [
    "written",
    "renamed.index",
    "renamed.timeindex",
    "renamed.log",
    "committed",
    "replaced.index",
    "replaced.timeindex",
    "replaced.log",
]


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("clean_close", [False, True])
def test_a_crash_at_any_step_of_a_pass_loses_nothing(
    tmp_path: Path, step: str, clean_close: bool
) -> None:
    log = open_log(tmp_path)
    fill(log, rounds=60)
    before = read_all(log)
    shape = batch_shape(log)

    def fault(at: str) -> None:
        if at == step:
            raise Crash(at)

    with pytest.raises(Crash):
        cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS, fault=fault)
    # The process dies here: files stay as the step left them.
    for segment in log.segments:
        segment.close()
    if clean_close:
        (tmp_path / "clean-shutdown").write_bytes(b"")
    reopened = open_log(tmp_path)
    after = read_all(reopened)
    assert latest_by_key(after) == latest_by_key(before)
    assert set(after) <= set(before)
    assert batch_shape(reopened) == shape
    assert not list(tmp_path.glob("*.swap")) and not (tmp_path / ".cleaning").exists()
    # And the next pass finishes the job.
    cleaner.clean_log(reopened, high_watermark=reopened.log_end_offset, now_ms=NOW_MS)
    assert latest_by_key(read_all(reopened)) == latest_by_key(before)
    reopened.close()


def test_a_pass_maps_at_most_keys_max_keys_and_the_next_pass_goes_on(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for round_number in range(40):  # every record a new key: the map fills fast
        put(log, [(b"key-%d-%d" % (round_number, n), b"v") for n in range(3)])
    segments = len(log.segments) - 1
    stats = cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS, keys_max=5)
    assert stats is not None and 0 < stats.segments < segments
    first_end = cleaner.first_dirty_offset(tmp_path)
    cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS, keys_max=5)
    assert cleaner.first_dirty_offset(tmp_path) > first_end
    log.close()


def test_consumers_read_the_offsets_of_a_compacted_batch(tmp_path: Path) -> None:
    # A partly cleaned batch is not dense: its rows carry offset deltas, which the consumer's
    # decoder uses (offsets never shift), and an emptied batch still moves the fetch offset on.
    log = open_log(tmp_path)
    put(log, [(b"a", b"1"), (b"x", b"1"), (b"a", b"2"), (b"y", b"1")])  # offsets 0-3
    put(log, [(b"y", b"2")])  # 4
    put(log, [(b"x", b"2"), (b"x", b"3")])  # 5-6
    fill(log)  # roll, so that these batches are cleanable
    cleaner.clean_log(log, high_watermark=log.log_end_offset, now_ms=NOW_MS)
    data = bytes(log.read(0, 1 << 20).data)
    records = decode_fetched(TopicPartition("t", 0), data, 0)
    assert [(r.offset, r.key, r.value) for r in records if r.offset < 7] == [
        (2, b"a", b"2"),
        (4, b"y", b"2"),
        (6, b"x", b"3"),
    ]
    assert [r.offset for r in decode_fetched(TopicPartition("t", 0), data, 3)][:2] == [4, 6]
    next_offset, _ = scan_fetched(data, 0)
    assert next_offset > 7
    log.close()
