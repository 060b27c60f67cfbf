"""Goal: DeleteRecords in the partition log. The log start clients see moves to the exact offset
asked for (inside a segment, too) and survives a reopen; whole segments below it are deleted, the
one holding it stays for Raft (`local_start_offset`); a log start control batch raises it on
every replica once it commits, leader append and follower copy alike (never one a failover
discards); a replica behind the new start keeps it and applies it as its log grows."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.log.log import PartitionLog
from broker.log.log_start import build_log_start_batch
from tests.unit.log.helpers import BASE_TS, make_batch, small_config
from wire.batch import ControlType, build_control_batch, iter_batches

BATCHES = 40


def filled(directory: Path, count: int = BATCHES) -> PartitionLog:
    log = PartitionLog.open(directory, small_config())
    for number in range(count):
        log.append(make_batch([BASE_TS + number], value_bytes=100))
    return log


def test_the_log_start_moves_inside_a_segment_and_whole_segments_go(tmp_path: Path) -> None:
    log = filled(tmp_path)
    segments = log.segment_count
    assert segments > 3
    target = 25  # inside a segment, not at its base
    assert log.delete_records(target) == target
    assert log.log_start_offset == target
    assert log.local_start_offset <= target < log.local_start_offset + 10
    assert log.segment_count < segments
    # Reads from the stored start still work (Raft replicates from there).
    assert log.read(log.local_start_offset, 1 << 20).data
    log.close()
    reopened = PartitionLog.open(tmp_path, small_config())
    assert reopened.log_start_offset == target
    assert reopened.delete_records(10) == target, "the log start never moves back"
    reopened.close()


def test_segments_above_max_offset_stay_until_committed(tmp_path: Path) -> None:
    log = filled(tmp_path)
    base = log.local_start_offset
    assert log.delete_records(30, max_offset=0) == 30
    assert log.local_start_offset == base, "nothing committed: no segment may go"
    assert log.apply_retention(BASE_TS) > 0, "the next sweep deletes what is below the start"
    assert log.local_start_offset <= 30
    log.close()


def test_a_log_start_batch_raises_the_start_of_leader_and_follower_once_committed(
    tmp_path: Path,
) -> None:
    leader = filled(tmp_path / "leader", 20)
    leader.append(build_log_start_batch(12, timestamp_ms=BASE_TS))
    assert leader.log_start_offset == 0, "written, not committed: nothing is deleted yet"
    leader.commit_log_starts(20)
    assert leader.log_start_offset == 0, "the entry (offset 20) is not below the commit end"
    leader.commit_log_starts(21)
    assert leader.log_start_offset == 12
    follower = PartitionLog.open(tmp_path / "follower", small_config())
    copied: list[bytes] = []
    while follower.log_end_offset < leader.log_end_offset:  # one segment per read
        copied.append(bytes(leader.read(follower.log_end_offset, 1 << 20).data))
        follower.append_replicated(copied[-1])
    assert follower.log_start_offset == 0
    follower.commit_log_starts(follower.log_end_offset)
    assert follower.log_start_offset == 12
    last = [header for _, header in iter_batches(copied[-1])][-1]
    assert last.is_control, "the entry is a control batch: consumers skip it"
    leader.close()
    follower.close()


def test_an_entry_a_failover_discards_never_raises_the_start(tmp_path: Path) -> None:
    """A follower writes the entry, the leader dies before it commits, the new leader's log
    replaces it: the follower's log start must not have moved (the client got an error)."""
    follower = filled(tmp_path, 20)
    follower.append(build_log_start_batch(12, timestamp_ms=BASE_TS))  # at offset 20
    follower.truncate(20)  # the new leader's log diverges at the entry
    follower.commit_log_starts(follower.log_end_offset)
    assert follower.log_start_offset == 0
    follower.append(make_batch([BASE_TS], value_bytes=100))  # the new leader's entry at 20
    follower.commit_log_starts(follower.log_end_offset)
    assert follower.log_start_offset == 0
    follower.close()


def test_a_pending_entry_survives_a_restart_and_applies_when_it_commits(tmp_path: Path) -> None:
    log = filled(tmp_path, 20)
    log.append(build_log_start_batch(12, timestamp_ms=BASE_TS))
    log.close()
    reopened = PartitionLog.open(tmp_path, small_config())
    assert reopened.log_start_offset == 0
    reopened.commit_log_starts(reopened.log_end_offset)  # Raft re-commits after a restart
    assert reopened.log_start_offset == 12
    reopened.close()
    again = PartitionLog.open(tmp_path, small_config())
    assert again.log_start_offset == 12, "applied durably"
    again.close()


def test_a_replica_behind_the_start_applies_it_as_it_grows(tmp_path: Path) -> None:
    behind = filled(tmp_path, 5)
    behind.delete_records(30)  # as a follower whose copy of the entry arrived first
    assert behind.log_start_offset == behind.log_end_offset == 5
    for number in range(30):
        behind.append(make_batch([BASE_TS + number], value_bytes=100))
    assert behind.log_start_offset == 30
    behind.close()


def test_a_negative_offset_is_a_programming_error(tmp_path: Path) -> None:
    log = filled(tmp_path, 1)
    with pytest.raises(AssertionError):
        log.delete_records(-1)
    log.close()


def test_a_log_start_entry_that_does_not_decode_is_ignored_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = filled(tmp_path, 5)
    bad = build_control_batch(ControlType.LOG_START, b"\xc1", timestamp_ms=BASE_TS)
    log.append(bad)  # written (every replica must take the same entries), without effect
    assert log.log_start_offset == 0
    assert "log start entry at offset 5 is ignored" in caplog.text
    log.close()
