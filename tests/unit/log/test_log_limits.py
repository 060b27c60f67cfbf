"""Goal: bounds are enforced with named errors and no partial writes; damaged or missing index
files are rebuilt or bypassed; flush tickets never claim more than they synced."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from broker.log.log import (
    RECOVERY_CHECKPOINT_FILE,
    LeaderEpochError,
    OffsetMismatchError,
    PartitionLog,
)
from broker.log.segment import INDEX_MAP_INITIAL_BYTES
from wire.batch import BadLengthError, BatchTooLargeError, CrcMismatchError

from .helpers import BASE_TS, make_batch, small_config

CONFIG = small_config(segment_bytes=2000, index_interval_bytes=200)


def _files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.suffix == ".log"
    }


@pytest.fixture
def log(tmp_path: Path):
    opened = PartitionLog.open(tmp_path / "t-0", CONFIG)
    for number in range(5):
        opened.append(make_batch([BASE_TS + number], value_bytes=100))
    yield opened
    opened.close()


def test_batch_over_max_batch_bytes_is_refused_and_nothing_is_written(log):
    before, end = _files(log.directory), log.log_end_offset
    batch = make_batch([BASE_TS], value_bytes=CONFIG.max_batch_bytes)
    with pytest.raises(BatchTooLargeError):
        log.append(batch)
    with pytest.raises(BatchTooLargeError):
        log.append_replicated(
            make_batch([BASE_TS], value_bytes=CONFIG.max_batch_bytes, base_offset=end)
        )
    assert _files(log.directory) == before and log.log_end_offset == end


def test_two_batches_in_one_append_are_refused(log):
    before = _files(log.directory)
    with pytest.raises(BadLengthError):
        log.append(make_batch([BASE_TS]) + make_batch([BASE_TS]))
    with pytest.raises(BadLengthError):
        log.append(make_batch([BASE_TS]) + b"\x00")
    assert _files(log.directory) == before


def test_corrupt_batch_is_refused(log):
    batch = bytearray(make_batch([BASE_TS]))
    batch[-1] ^= 0xFF
    before = _files(log.directory)
    with pytest.raises(CrcMismatchError):
        log.append(bytes(batch))
    assert _files(log.directory) == before


@pytest.mark.parametrize("shift", [-1, 1])
def test_append_replicated_refuses_gaps_and_overlaps(log, shift):
    before = _files(log.directory)
    good = make_batch([BASE_TS], base_offset=log.log_end_offset, leader_epoch=0)
    bad = make_batch([BASE_TS], base_offset=log.log_end_offset + 1 + shift, leader_epoch=0)
    with pytest.raises(OffsetMismatchError):
        log.append_replicated(good + bad)
    assert _files(log.directory) == before


def test_append_replicated_refuses_epoch_regressions(log):
    end = log.log_end_offset
    log.append_replicated(make_batch([BASE_TS], base_offset=end, leader_epoch=3))
    before = _files(log.directory)
    good = make_batch([BASE_TS], base_offset=end + 1, leader_epoch=4)
    bad = make_batch([BASE_TS], base_offset=end + 2, leader_epoch=2)
    with pytest.raises(LeaderEpochError):
        log.append_replicated(good + bad)
    with pytest.raises(LeaderEpochError):
        log.append(make_batch([BASE_TS]), leader_epoch=2)
    assert _files(log.directory) == before and log.last_term == 3


def test_replicated_run_never_overfills_an_index(tmp_path):
    # 30 small batches in one call into a segment whose indexes hold 4 entries each.
    config = small_config(segment_bytes=10**6, index_interval_bytes=0, index_bytes_max=48)
    log = PartitionLog.open(tmp_path, config)
    run = b"".join(make_batch([BASE_TS + n], base_offset=n, leader_epoch=0) for n in range(30))
    log.append_replicated(run)
    assert all(s.index.entry_count <= s.index.capacity for s in log.segments)
    assert len(log.segments) >= 30 // 4
    # Every time-index entry survived, so every timestamp lookup is exact.
    for n in range(30):
        assert log.offset_for_timestamp(BASE_TS + n).offset == n
    log.close()


def test_index_files_grow_on_demand_up_to_their_maximum(tmp_path):
    # The mappings start at INDEX_MAP_INITIAL_BYTES and double as entries arrive; the segment
    # rolls only when an index reaches index_bytes_max, every entry is kept across growths, and
    # a reopen (without a clean close) finds them all.
    maximum = 4 * INDEX_MAP_INITIAL_BYTES
    config = small_config(segment_bytes=10**8, index_interval_bytes=0, index_bytes_max=maximum)
    log = PartitionLog.open(tmp_path, config)
    active = log.segments[-1]
    assert active.index_path.stat().st_size == INDEX_MAP_INITIAL_BYTES
    count = INDEX_MAP_INITIAL_BYTES // 8 + 100  # past the first mapping of the offset index
    log.append_replicated(
        b"".join(make_batch([BASE_TS + n], base_offset=n, leader_epoch=0) for n in range(count))
    )
    assert len(log.segments) == 1
    assert active.index.entry_count == count
    assert INDEX_MAP_INITIAL_BYTES < active.index_path.stat().st_size <= maximum
    assert active.time_index.entry_count == count
    for n in (0, count // 2, count - 1):
        assert log.read(n, 1).base_offset == n
        assert log.offset_for_timestamp(BASE_TS + n).offset == n
    # Fill the time index (12-byte entries) to its maximum: the next batch rolls.
    more = maximum // 12 - count
    log.append_replicated(
        b"".join(
            make_batch([BASE_TS + n], base_offset=n, leader_epoch=0)
            for n in range(count, count + more + 1)
        )
    )
    assert len(log.segments) == 2
    assert log.segments[0].time_index.entry_count == maximum // 12
    log.close(clean=False)
    reopened = PartitionLog.open(tmp_path, config)
    assert reopened.log_end_offset == count + more + 1
    assert reopened.offset_for_timestamp(BASE_TS + count + 7).offset == count + 7
    reopened.close()


def test_offsets_far_from_the_segment_base_roll_the_segment(tmp_path):
    log = PartitionLog.open(tmp_path, CONFIG)
    wide = make_batch([BASE_TS], base_offset=0, leader_epoch=0, extra_offsets=2**31 - 2)
    log.append_replicated(wide)
    log.append_replicated(make_batch([BASE_TS], base_offset=2**31 - 1, leader_epoch=0))
    # Offset 2**31 - 1 is exactly 2**31 - 1 from the base: still this segment. The next is not.
    log.append_replicated(make_batch([BASE_TS], base_offset=2**31, leader_epoch=0))
    assert [s.base_offset for s in log.segments] == [0, 2**31]
    assert log.read(2**31, 100).base_offset == 2**31
    log.close()


# --- index files ---------------------------------------------------------------------------------


def _closed_log(directory: Path) -> list[bytes]:
    log = PartitionLog.open(directory, CONFIG)
    for number in range(40):
        log.append(make_batch([BASE_TS + number * 10], value_bytes=80))
    assert len(log.segments) > 3
    data = [bytes(log.read(o, 1).data) for o in range(40)]
    log.close()
    return data


def _check_all(log: PartitionLog, expected: list[bytes]) -> None:
    assert [bytes(log.read(o, 1).data) for o in range(40)] == expected
    for number in range(40):
        assert log.offset_for_timestamp(BASE_TS + number * 10).offset == number


@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
@pytest.mark.parametrize("damage", ["missing", "odd size", "empty", "wrong entry", "garbage entry"])
def test_damaged_index_files_are_rebuilt_or_bypassed(tmp_path, caplog, suffix, damage):
    expected = _closed_log(tmp_path)
    victim = sorted(tmp_path.glob(f"*{suffix}"))[1]
    raw = bytearray(victim.read_bytes())
    entry = 8 if suffix == ".index" else 12
    assert len(raw) >= 4 * entry
    if damage == "missing":
        victim.unlink()
    elif damage == "odd size":
        victim.write_bytes(raw[:-3])
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "wrong entry":
        # Entry 2 takes entry 1's value field: still sorted, names a real but wrong batch.
        raw[3 * entry - 4 : 3 * entry] = raw[2 * entry - 4 : 2 * entry]
        victim.write_bytes(raw)
    else:
        raw[entry : 2 * entry] = b"\x00\x00\x00\x05" * (entry // 4)
        victim.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="broker.log"):
        log = PartitionLog.open(tmp_path, CONFIG)
        _check_all(log, expected)
    if damage != "garbage entry":  # garbage may sit where no bisection looks: harmless there
        assert any("index" in record.getMessage() for record in caplog.records)
    log.close()
    # An index found damaged at a lookup is dropped at close and rebuilt at the next open;
    # after that the files are whole and opening is silent.
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="broker.log"):
            log = PartitionLog.open(tmp_path, CONFIG)
            _check_all(log, expected)
        log.close()
    if damage != "garbage entry":
        assert not caplog.records


# --- flush tickets --------------------------------------------------------------------------------


def test_truncation_while_a_ticket_runs_keeps_the_checkpoint_below_the_rewritten_segment(tmp_path):
    log = PartitionLog.open(tmp_path, CONFIG)
    while len(log.segments) < 2:
        log.append(make_batch([BASE_TS], value_bytes=100))
    log.flush()
    checkpoint_path = tmp_path / RECOVERY_CHECKPOINT_FILE
    assert int(checkpoint_path.read_text()) == log.segments[1].base_offset
    while len(log.segments) < 4:
        log.append(make_batch([BASE_TS], value_bytes=100))
    bases = [s.base_offset for s in log.segments]
    ticket = log.begin_flush()
    assert ticket.checkpoint == bases[3]
    # A follower truncates into a sealed segment above the checkpoint while the fsync runs in a
    # worker thread, and appends over it...
    log.truncate(bases[2] + 1)
    log.append(make_batch([BASE_TS], value_bytes=100))
    ticket.run()
    log.complete_flush(ticket)
    # ...so the checkpoint must not pass the segment being written again.
    assert int(checkpoint_path.read_text()) <= bases[2]
    assert log.flushed_offset <= bases[2] + 1
    assert log.needs_flush
    log.flush()
    assert log.flushed_offset == log.log_end_offset
    log.close()


def test_ticket_never_covers_appends_made_after_it(tmp_path):
    log = PartitionLog.open(tmp_path, CONFIG)
    log.append(make_batch([BASE_TS]))
    ticket = log.begin_flush()
    log.append(make_batch([BASE_TS]))
    ticket.run()
    log.complete_flush(ticket)
    assert log.flushed_offset == 1 and log.needs_flush
    log.close()


def test_a_segment_sealed_while_a_ticket_ran_still_needs_its_own_sync(tmp_path):
    # The ticket synced the active segment as it was; appends then filled it and rolled it:
    # its tail and indexes were never synced, so it stays among the segments to sync.
    log = PartitionLog.open(tmp_path, CONFIG)
    log.append(make_batch([BASE_TS], value_bytes=100))
    log.flush()
    log.append(make_batch([BASE_TS], value_bytes=100))
    ticket = log.begin_flush()
    assert ticket.fds == (log.active.fd,)  # a plain ticket: the helper process may run it
    first = log.active
    while log.active is first:
        log.append(make_batch([BASE_TS], value_bytes=100))
    ticket.run()
    log.complete_flush(ticket)
    assert log.has_unsynced_segments
    after = log.begin_flush()
    assert set(first.sync_paths()) <= set(after.paths) and after.fds == ()
    after.run()
    log.complete_flush(after)
    assert not log.has_unsynced_segments and log.flushed_offset == log.log_end_offset
    log.close()


def test_a_closed_log_never_hands_out_a_descriptor_to_fsync(tmp_path):
    log = PartitionLog.open(tmp_path, CONFIG)
    log.append(make_batch([BASE_TS]))
    log.flush()
    log.append(make_batch([BASE_TS]))
    log.close(clean=False)  # as LogManager.delete does while a produce waits for its fsync
    ticket = log.begin_flush()
    assert ticket.fds == ()  # a thread runs it (by path), not the helper with a dead descriptor
    log.abort_flush()


def test_unclean_open_trusts_only_what_the_checkpoint_covers(tmp_path):
    log = PartitionLog.open(tmp_path, CONFIG)
    for number in range(30):
        log.append(make_batch([BASE_TS + number], value_bytes=100))
    log.flush()
    end = log.log_end_offset
    log.close(clean=False)
    log = PartitionLog.open(tmp_path, CONFIG)
    # Everything below the active segment is known durable; the active segment is re-validated.
    assert log.flushed_offset == log.segments[-1].base_offset
    assert log.log_end_offset == end
    log.close()


# --- verify on read -------------------------------------------------------------------------------


def test_bytes_trusted_at_open_are_verified_once_by_reads(tmp_path, monkeypatch):
    import broker.log.verify as verify_module

    log = PartitionLog.open(tmp_path, CONFIG)
    for number in range(20):
        log.append(make_batch([BASE_TS + number], value_bytes=100))
    log.close()
    checked: list[int] = []
    real = verify_module.validate_batch

    def counting(buf, position=0, **kwargs):  # type: ignore[no-untyped-def]
        header = real(buf, position, **kwargs)
        checked.append(header.base_offset)
        return header

    monkeypatch.setattr(verify_module, "validate_batch", counting)
    log = PartitionLog.open(tmp_path, CONFIG)  # clean: nothing validated at open
    assert checked == []
    first = [bytes(log.read(offset, 10**6).data) for offset in range(20)]
    assert sorted(set(checked)) == list(range(20))  # each batch verified before being served
    checked.clear()
    assert [bytes(log.read(offset, 10**6).data) for offset in range(20)] == first
    assert checked == []  # and only once
    log.append(make_batch([BASE_TS]))
    checked.clear()
    assert log.read(20, 10**6).base_offset == 20
    assert checked == []  # appended bytes were validated on the way in
    log.close()
