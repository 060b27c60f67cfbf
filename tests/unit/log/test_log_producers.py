"""Goal: a partition log's producer state is always what its batches say, whatever happened.

The log feeds every written batch to `log.producers` (leader appends and follower copies alike),
snapshots it beside the segments at each roll and at a clean close, and rebuilds it on open,
truncation and reset; a damaged or stale snapshot is skipped, never fatal. See
docs/transactions.md, "Producer state on a partition".
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from broker.log.log import PRODUCER_SNAPSHOTS_KEPT, PartitionLog
from broker.transactions.producer_state import Duplicate
from tests.unit.log.helpers import small_config, with_offset_and_epoch
from tests.unit.log.producer_helpers import (
    TS,
    marker_batch,
    producer_batch,
    producer_header,
    same_state,
    snapshot_offsets,
)
from wire.batch import ControlType, InvalidBatchError, build_control_batch
from wire.error_codes import ErrorCode


def open_log(directory: Path, **changes: object) -> PartitionLog:
    return PartitionLog.open(directory, small_config(**changes))


def fill_segments(log: PartitionLog, segments: int, count: int) -> int:
    """Append producer 1's batches of `count` records until the log has `segments` segments;
    returns the sequence of the last batch."""
    seq = 0
    while log.segment_count < segments:
        log.append(producer_batch(1, 0, seq, count))
        seq += count
    return seq - count


def test_every_append_feeds_the_producer_state(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(producer_batch(count=2))
    first = log.append(producer_batch(1, 0, 0, 3))
    assert log.producers.applied_end == log.log_end_offset == 5
    assert log.producers.check(producer_header(1, 0, 0, 3), 0) == Duplicate(2, 4)
    assert first.base_offset == 2


def test_a_follower_copy_feeds_the_same_state(tmp_path: Path) -> None:
    leader = open_log(tmp_path / "leader")
    follower = open_log(tmp_path / "follower")
    batches = [
        producer_batch(1, 0, 0, 2, txn=True),
        producer_batch(count=4),
        marker_batch(1, 1, commit=False),
        producer_batch(2, 0, 7),
    ]
    copies = []
    for batch in batches:
        appended = leader.append(batch, leader_epoch=1)
        copies.append(with_offset_and_epoch(batch, appended.base_offset, 1))
    follower.append_replicated(b"".join(copies[:2]))
    follower.append_replicated(b"".join(copies[2:]))
    assert follower.producers.snapshot() == leader.producers.snapshot()
    assert follower.producers.aborted_transactions(0, 10) == [(1, 0)]


def test_a_bad_marker_is_refused_by_append_and_ignored_when_replicated(tmp_path, caplog) -> None:
    log = open_log(tmp_path)
    log.append(producer_batch(1, 0, 0, txn=True))
    bad = build_control_batch(ControlType.ABORT, b"\xc1", timestamp_ms=TS, producer_id=1,
                              producer_epoch=0, transactional=True)  # fmt: skip
    with pytest.raises(InvalidBatchError) as caught:
        log.append(bad)
    assert caught.value.code is ErrorCode.INVALID_RECORD
    assert log.log_end_offset == 1  # nothing written
    with caplog.at_level(logging.WARNING):
        log.append_replicated(with_offset_and_epoch(bad, 1, 0))
    assert "is ignored" in caplog.text
    assert log.producers.stats().open_transactions == 1
    assert same_state(log)


def test_snapshots_are_written_at_each_roll_and_at_a_clean_close(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    last_seq = fill_segments(log, 6, 3)
    offsets = snapshot_offsets(log)
    assert len(offsets) == PRODUCER_SNAPSHOTS_KEPT
    assert offsets[-1] == log.active.base_offset
    log.close()
    assert snapshot_offsets(log)[-1] == log.log_end_offset
    reopened = open_log(tmp_path)
    assert reopened.producers.check(producer_header(1, 0, last_seq, 3), 0) is not None
    assert same_state(reopened)


def test_an_unclean_restart_replays_from_the_last_roll(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    sequences = [0, 0, 0]
    for number in range(60):
        pid = number % 3
        log.append(producer_batch(pid, 0, sequences[pid], 2, txn=pid == 2))
        sequences[pid] += 2
    assert log.segment_count > 2
    log.close(clean=False)
    reopened = open_log(tmp_path)
    assert same_state(reopened)


def test_snapshots_above_a_recovered_end_are_deleted(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    fill_segments(log, 4, 2)
    last_roll = log.active.base_offset
    log.close(clean=False)
    # Recovery cut the log (as a torn tail would): the newest snapshot describes lost data.
    segment = tmp_path / f"{last_roll:020d}.log"
    segment.unlink()
    for suffix in (".index", ".timeindex"):
        (tmp_path / f"{last_roll:020d}{suffix}").unlink(missing_ok=True)
    previous = sorted(tmp_path.glob("*.log"))[-1]
    previous.write_bytes(previous.read_bytes()[:-10])
    reopened = open_log(tmp_path)
    assert reopened.log_end_offset < last_roll
    assert all(offset <= reopened.log_end_offset for offset in snapshot_offsets(reopened))
    assert same_state(reopened)


@pytest.mark.parametrize("damage", ["garbage", "empty", "wrong_end"])
def test_a_damaged_snapshot_is_skipped_with_a_warning(tmp_path, caplog, damage) -> None:
    log = open_log(tmp_path)
    seq = 0
    while log.segment_count < 4:
        log.append(producer_batch(1, 0, seq, 2, txn=seq % 4 == 0))
        if seq % 4 == 0:
            log.append(marker_batch(1, 0, commit=seq % 8 == 0))
        seq += 2
    log.close()
    newest = sorted(tmp_path.glob("*.producers"))[-1]
    if damage == "garbage":
        newest.write_bytes(b"\x00\xff" * 10)
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        older = sorted(tmp_path.glob("*.producers"))[-2]
        newest.write_bytes(older.read_bytes())
    with caplog.at_level(logging.WARNING):
        reopened = open_log(tmp_path)
    assert "unusable" in caplog.text
    assert same_state(reopened)
    assert reopened.log_end_offset == log.log_end_offset  # no log data was touched


def test_no_snapshot_at_all_replays_the_whole_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for seq in range(40):
        log.append(producer_batch(1 + seq % 2, 0, seq // 2, txn=seq % 5 == 0))
    log.close()
    for path in tmp_path.glob("*.producers"):
        path.unlink()
    reopened = open_log(tmp_path)
    assert same_state(reopened)
    assert reopened.producers.stats().producers == 2


def test_truncation_rebuilds_the_state_and_keeps_older_duplicates(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    appended = [log.append(producer_batch(1, 0, seq, 1)) for seq in range(60)]
    log.append(producer_batch(2, 0, 0, txn=True))
    cut = appended[50].base_offset
    log.truncate(cut)
    assert log.log_end_offset == cut
    assert all(offset <= cut for offset in snapshot_offsets(log))
    assert same_state(log)
    assert log.producers.stats().open_transactions == 0
    # The batch before the cut is still a duplicate; the removed one may be written again.
    assert log.producers.check(producer_header(1, 0, 49), 0) == Duplicate(
        appended[49].base_offset, appended[49].base_offset
    )
    assert log.producers.check(producer_header(1, 0, 50), 0) is None


def test_reset_starts_an_empty_state_at_the_new_start(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for seq in range(60):
        log.append(producer_batch(1, 0, seq))
    log.reset(1000)
    assert snapshot_offsets(log) == []
    assert log.producers.applied_end == 1000
    assert log.producers.stats().producers == 0
    log.append(producer_batch(1, 0, 77))  # unknown here now: any sequence
    log.close()
    assert same_state(open_log(tmp_path))


def test_retention_prunes_the_aborted_index_snapshots_and_idle_producers(tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_bytes=3000, producer_id_expiration_ms=10_000)
    seq = 0
    while log.segment_count < 6:
        log.append(producer_batch(1, 0, seq, txn=True))
        log.append(marker_batch(1, 0, commit=False))
        seq += 1
    aborted_before = log.producers.stats().aborted_index_size
    assert log.apply_retention(now_ms=TS) > 0
    start = log.log_start_offset
    assert log.producers.stats().aborted_index_size < aborted_before
    assert all(first >= start - 1 for _, first in log.producers.aborted_transactions(0, start + 1))
    assert all(offset >= start for offset in snapshot_offsets(log))
    assert log.producers.stats().producers == 1
    log.apply_retention(now_ms=TS + 10_000)
    assert log.producers.stats().producers == 0
