"""Goal: the active segment's file is zero-filled ahead of its last batch (so that an fdatasync of
an append skips the journal commit of a new file size), and those zeros never become data or hide
damage: a seal, a clean close and a truncation cut them; an unclean open takes an all-zero tail for
the end, silently; anything else after the last batch is still cut and reported."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from broker.config import LogConfig
from broker.log import segment as segment_module
from broker.log.log import PartitionLog
from broker.log.segment import PREALLOCATE_MIN_BYTES
from tests.log_reading import batches_in_file, log_bytes

from .helpers import BASE_TS, make_batch, small_config

KIB = 1024
CONFIG = small_config(
    segment_bytes=1024 * KIB, max_batch_bytes=256 * KIB, preallocate_bytes=256 * KIB
)


def _append(log: PartitionLog, count: int, value_bytes: int = 100) -> None:
    for number in range(count):
        log.append(make_batch([BASE_TS + number], value_bytes=value_bytes))


def _file_size(log: PartitionLog) -> int:
    return os.fstat(log.active.fd).st_size


def _read_all(log: PartitionLog) -> list[int]:
    """Base offsets of every batch, read from the log start."""
    return [header.base_offset for _, header in batches_in_file(log_bytes(log))]


def test_the_active_file_is_zero_filled_ahead_as_far_as_the_segment_holds(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "t-0", CONFIG)
    try:
        _append(log, 1)
        end = log.active.size_bytes
        # A young segment: the least fill ahead.
        assert _file_size(log) == log.active.file_bytes == end + PREALLOCATE_MIN_BYTES
        # Appends into the zeros do not grow the file.
        _append(log, 10)
        assert _file_size(log) == end + PREALLOCATE_MIN_BYTES
        # Past the zeros: the fill grows with the segment, up to preallocate_bytes.
        log.append(make_batch([BASE_TS], value_bytes=100 * KIB))
        end = log.active.size_bytes
        assert 100 * KIB < end < 128 * KIB
        assert _file_size(log) == 2 * end
        log.append(make_batch([BASE_TS], value_bytes=200 * KIB))
        end = log.active.size_bytes
        assert _file_size(log) == end + CONFIG.preallocate_bytes
        raw = log.active.log_path.read_bytes()
        assert raw[end:] == bytes(len(raw) - end)
        assert _read_all(log) == list(range(log.log_end_offset))
    finally:
        log.close()


def test_the_fill_stops_at_segment_bytes(tmp_path: Path) -> None:
    config = small_config(segment_bytes=2000, preallocate_bytes=64 * KIB)
    log = PartitionLog.open(tmp_path / "t-0", config)
    try:
        _append(log, 1)
        assert _file_size(log) == 2000
    finally:
        log.close()


def test_a_roll_and_a_clean_close_cut_the_zeros(tmp_path: Path) -> None:
    config = small_config(segment_bytes=8 * KIB, preallocate_bytes=64 * KIB)
    log = PartitionLog.open(tmp_path / "t-0", config)
    _append(log, 100)
    assert len(log.segments) > 2
    for segment in log.segments[:-1]:
        assert segment.log_path.stat().st_size == segment.size_bytes
    assert _file_size(log) > log.active.size_bytes
    active = log.active.log_path
    log.close()
    assert active.stat().st_size == sum(
        h.size_bytes for _, h in batches_in_file(active.read_bytes())
    )
    log = PartitionLog.open(tmp_path / "t-0", config)
    try:
        assert log.recovery_notes == []
        assert _read_all(log) == list(range(100))
        _append(log, 1)  # the reopened segment is zero-filled again
        assert _file_size(log) > log.active.size_bytes
    finally:
        log.close()


def test_an_unclean_open_takes_the_zeros_for_the_end_and_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = PartitionLog.open(tmp_path / "t-0", CONFIG)
    _append(log, 20)
    log.flush()
    end = log.active.size_bytes
    path = log.active.log_path
    log.close(clean=False)
    assert path.stat().st_size > end
    with caplog.at_level(logging.WARNING, logger="broker.log"):
        log = PartitionLog.open(tmp_path / "t-0", CONFIG)
    try:
        assert log.recovery_notes == [] and not caplog.records
        assert path.stat().st_size == end
        assert _read_all(log) == list(range(20))
        assert log.flushed_offset <= 20 == log.log_end_offset
        _append(log, 1)
        assert _read_all(log) == list(range(21))
    finally:
        log.close()


@pytest.mark.parametrize("where", ["right after", "far after"])
def test_anything_but_zeros_after_the_last_batch_is_cut_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    log = PartitionLog.open(tmp_path / "t-0", CONFIG)
    _append(log, 20)
    end = log.active.size_bytes
    path = log.active.log_path
    log.close(clean=False)
    size = path.stat().st_size
    spot = end if where == "right after" else size - 1
    with open(path, "r+b") as file:
        file.seek(spot)
        file.write(b"\x01")
    with caplog.at_level(logging.WARNING, logger="broker.log"):
        log = PartitionLog.open(tmp_path / "t-0", CONFIG)
    try:
        [note] = log.recovery_notes
        assert (note.valid_bytes, note.truncated_bytes) == (end, size - end)
        assert any("truncating" in record.getMessage() for record in caplog.records)
        assert _read_all(log) == list(range(20))
    finally:
        log.close()


@pytest.mark.parametrize("clean", [False, True])
def test_sealed_segments_that_kept_their_zeros_lose_nothing(tmp_path: Path, clean: bool) -> None:
    """A crash may lose a seal's cut of the zeros (never once the segment's own fsync, which
    comes before the checkpoint passes it, is done; but a damaged disk or a copied directory
    may show it anyway): below the checkpoint (trusted) or above it, every batch is kept."""
    config = small_config(segment_bytes=4 * KIB, preallocate_bytes=64 * KIB)
    log = PartitionLog.open(tmp_path / "t-0", config)
    _append(log, 60)
    log.flush()
    _append(log, 30)  # rolls past the checkpoint: one sealed segment is above it
    sealed = [segment.log_path for segment in log.segments[:-1]]
    log.close(clean=clean)
    assert len(sealed) >= 3
    for path in sealed:
        with open(path, "ab") as file:
            file.write(bytes(1000))
    log = PartitionLog.open(tmp_path / "t-0", config)
    try:
        assert _read_all(log) == list(range(90))
    finally:
        log.close()


def test_a_truncation_cuts_the_zeros_and_the_next_append_fills_again(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "t-0", CONFIG)
    try:
        _append(log, 20)
        log.truncate(10)
        assert _file_size(log) == log.active.size_bytes
        _append(log, 1)
        assert _file_size(log) == log.active.size_bytes + PREALLOCATE_MIN_BYTES
        _append(log, 4)
        assert _read_all(log) == list(range(15))
    finally:
        log.close()


def test_a_fill_that_fails_does_not_fail_the_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk runs out of room for the zeros first: the batch before them is written and
    counted, so its append succeeds; the segment stops filling (one warning) and its file is cut
    back to its batches; the next segment fills again."""
    config = small_config(segment_bytes=8 * KIB, preallocate_bytes=64 * KIB)
    log = PartitionLog.open(tmp_path / "t-0", config)
    real_write_zeros = segment_module._write_zeros

    def disk_full(fd: int, start: int, end: int) -> int:
        real_write_zeros(fd, start, (start + end) // 2)  # part of the fill landed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_module, "_write_zeros", disk_full)
    try:
        with caplog.at_level(logging.WARNING, logger="broker.log"):
            _append(log, 5)
        assert log.log_end_offset == 5 and _read_all(log) == list(range(5))
        assert _file_size(log) == log.active.size_bytes == log.active.file_bytes
        [warning] = [r.getMessage() for r in caplog.records if "zero-fill" in r.getMessage()]
        first = len(make_batch([BASE_TS], value_bytes=100))
        assert f"could not zero-fill ahead of byte {first} ([Errno 28] No space left" in warning
        monkeypatch.setattr(segment_module, "_write_zeros", real_write_zeros)
        _append(log, 100)  # rolls: the log's state stayed consistent
        assert len(log.segments) > 1
        assert log.segments[0].log_path.stat().st_size == log.segments[0].size_bytes
        assert _file_size(log) > log.active.size_bytes  # the next segment fills again
        assert _read_all(log) == list(range(105))
    finally:
        log.close()


def test_preallocation_can_be_turned_off(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path / "t-0", small_config(preallocate_bytes=0))
    try:
        _append(log, 30)
        for segment in log.segments:
            assert segment.log_path.stat().st_size == segment.size_bytes
    finally:
        log.close()


def test_the_key_is_validated() -> None:
    assert LogConfig.from_mapping({"preallocate.bytes": "0"}).preallocate_bytes == 0
    with pytest.raises(ValueError, match="preallocate_bytes"):
        LogConfig.from_mapping({"preallocate.bytes": -1})
