"""Goal: after any torn write, cut file or flipped bit, reopening serves exactly the batches before
the damage: none lost before it, nothing damaged after it, and the cut is logged."""

from __future__ import annotations

import bisect
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.log.log import PartitionLog
from broker.log.segment import SegmentCorruptError
from tests.log_reading import batches_in_file
from wire.batch import iter_batches, validate_batch

from .conftest import PROFILE
from .helpers import BASE_TS, make_batch, small_config

CONFIG = small_config(segment_bytes=3000, index_interval_bytes=300, index_bytes_max=4096)


@dataclass
class Stored:
    """A batch as it lies on disk."""

    segment: Path
    position: int
    data: bytes
    base_offset: int
    next_offset: int

    @property
    def end(self) -> int:
        return self.position + len(self.data)


def _build(directory: Path, seed: int, *, flush_after: int, total: int = 30) -> PartitionLog:
    """A log of `total` varied batches (several segments, a few epochs), flushed once after
    `flush_after` of them, left open."""
    rng = random.Random(seed)
    log = PartitionLog.open(directory, CONFIG)
    epoch = 0
    for number in range(total):
        if rng.random() < 0.15:
            epoch += 1
        count = rng.randint(1, 4)
        timestamps = [BASE_TS + number * 1000 + rng.randrange(500) for _ in range(count)]
        log.append(make_batch(timestamps, value_bytes=rng.randint(5, 300)), leader_epoch=epoch)
        if number + 1 == flush_after:
            log.flush()
    return log


def _layout(directory: Path) -> list[Stored]:
    stored = []
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        for position, header in batches_in_file(data):
            stored.append(
                Stored(
                    path,
                    position,
                    data[position : position + header.size_bytes],
                    header.base_offset,
                    header.next_offset,
                )
            )
    return stored


def _read_all(log: PartitionLog, max_bytes: int = 1000) -> list[bytes]:
    """Every batch, by sequential reads from the log start; each must validate."""
    out: list[bytes] = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        result = log.read(offset, max_bytes)
        data = bytes(result.data)
        for position, header in iter_batches(data, max_batch_bytes=2**31 - 1):
            out.append(data[position : position + header.size_bytes])
        offset = result.next_offset
    return out


def _survivors(stored: list[Stored], damaged: dict[Path, int]) -> list[bytes]:
    """The longest prefix of batches that lie wholly before the first damaged byte of their file."""
    out = []
    for batch in stored:
        if batch.segment in damaged and batch.end > damaged[batch.segment]:
            break
        out.append(batch.data)
    return out


def _check_recovered(
    directory: Path, expected: list[bytes], caplog: pytest.LogCaptureFixture, *, damage_inside: bool
) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="broker.log"):
        log = PartitionLog.open(directory, CONFIG)
    try:
        assert _read_all(log) == expected
        assert _read_all(log, max_bytes=10**6) == expected
        assert log.log_start_offset <= log.flushed_offset <= log.log_end_offset
        if damage_inside:
            assert log.recovery_notes, "recovery must report what it cut"
            assert any(
                "truncat" in r.getMessage() or "deleting" in r.getMessage() for r in caplog.records
            )
        # The recovered log takes appends and survives another unclean restart unchanged.
        log.append(make_batch([BASE_TS]))
        expected_after = _read_all(log)
        log.close(clean=False)
        log = PartitionLog.open(directory, CONFIG)
        assert log.recovery_notes == []
        assert _read_all(log) == expected_after
    finally:
        log.close()


def _recovered_segments(directory: Path, log: PartitionLog) -> list[Path]:
    """Segment files an unclean open re-validates: from the one holding the checkpoint on."""
    bases = [segment.base_offset for segment in log.segments]
    path = directory / "recovery-checkpoint"
    checkpoint = int(path.read_text()) if path.exists() else 0
    first = max(bisect.bisect_right(bases, checkpoint) - 1, 0)
    return [segment.log_path for segment in log.segments[first:]]


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="logcrash-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@settings(PROFILE)
@given(seed=st.integers(0, 2**32), flush_after=st.integers(0, 30), data=st.data())
def test_cut_or_flip_in_the_unsynced_region(seed, flush_after, data, caplog):
    directory = Path(tempfile.mkdtemp(prefix="logcrash-"))
    try:
        log = _build(directory, seed, flush_after=flush_after)
        targets = _recovered_segments(directory, log)
        log.close(clean=False)
        stored = _layout(directory)
        target = data.draw(st.sampled_from(targets), label="segment")
        size = target.stat().st_size
        if size == 0:
            return
        byte = data.draw(st.integers(0, size - 1), label="byte")
        if data.draw(st.booleans(), label="cut"):
            # What is left of a cut batch is reported, unless it is all zeros: recovery cannot
            # tell those from the zeros preallocated after the last batch (docs/storage.md).
            left = target.read_bytes()[:byte]
            os.truncate(target, byte)
            inside = any(
                b.segment == target
                and b.position < byte < b.end
                and left[b.position :].strip(b"\0")
                for b in stored
            ) or (target != stored[-1].segment)
        else:
            bit = data.draw(st.integers(0, 7), label="bit")
            with open(target, "r+b") as file:
                file.seek(byte)
                value = file.read(1)[0]
                file.seek(byte)
                file.write(bytes([value ^ (1 << bit)]))
            inside = True
        expected = _survivors(stored, {target: byte})
        _check_recovered(directory, expected, caplog, damage_inside=inside)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@settings(PROFILE)
@given(seed=st.integers(0, 2**32), flush_after=st.integers(1, 30), data=st.data())
def test_power_loss_keeps_every_flushed_batch(seed, flush_after, data):
    """Unsynced bytes may be lost, torn or garbage; everything below flushed_offset survives."""
    directory = Path(tempfile.mkdtemp(prefix="logcrash-"))
    try:
        log = _build(directory, seed, flush_after=flush_after)
        flushed = log.flushed_offset
        log.close(clean=False)
        stored = _layout(directory)
        synced: dict[Path, int] = {}
        for batch in stored:
            if batch.next_offset <= flushed:
                synced[batch.segment] = batch.end
            else:
                synced.setdefault(batch.segment, batch.position)
        damaged: dict[Path, int] = {}
        for path, durable in synced.items():
            size = path.stat().st_size
            if durable == size:
                continue
            keep = data.draw(st.integers(durable, size), label=f"keep {path.name}")
            os.truncate(path, keep)
            if keep > durable and data.draw(st.booleans(), label="garbage"):
                spot = data.draw(st.integers(durable, keep - 1), label="garbage at")
                with open(path, "r+b") as file:
                    file.seek(spot)
                    file.write(os.urandom(min(40, keep - spot)))
                keep = spot
            damaged[path] = keep
            if data.draw(st.booleans(), label="lose index"):
                path.with_suffix(".index").unlink(missing_ok=True)
        expected = _survivors(stored, damaged)
        assert len(expected) >= sum(1 for b in stored if b.next_offset <= flushed)
        log = PartitionLog.open(directory, CONFIG)
        try:
            assert _read_all(log) == expected
            assert log.log_end_offset >= flushed
        finally:
            log.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_epoch_field_damage_is_caught_by_the_epoch_cache(workdir, caplog):
    """The leader epoch lies outside the CRC: only the epoch cache can tell it was damaged."""
    log = PartitionLog.open(workdir, CONFIG)
    for epoch in (1, 1, 2, 2):
        log.append(make_batch([BASE_TS]), leader_epoch=epoch)
    log.close(clean=False)
    stored = _layout(workdir)
    victim = stored[1]  # epoch 1 -> 1 | 2**20: still >= its predecessor, below nobody's CRC
    with open(victim.segment, "r+b") as file:
        file.seek(victim.position + 12 + 1)
        file.write(b"\x10")
    _check_recovered(workdir, [stored[0].data], caplog, damage_inside=True)


# --- damage below the recovery checkpoint: trusted at open, verified on read ---------------------


def _sealed_and_synced(seed: int, workdir: Path) -> tuple[list[Stored], list[Path]]:
    log = _build(workdir, seed, flush_after=30, total=30)
    log.append(make_batch([BASE_TS], value_bytes=3000))  # rolls: everything before is sealed
    log.flush()
    log.append(make_batch([BASE_TS]))
    trusted = [s.log_path for s in log.segments if s.base_offset < log._checkpoint]
    log.close(clean=False)
    return _layout(workdir), trusted


@settings(PROFILE, max_examples=max(PROFILE.max_examples // 3, 10))
@given(seed=st.integers(0, 2**32), data=st.data(), clean_marker=st.booleans())
def test_damage_in_trusted_segments_is_never_served(seed, data, clean_marker):
    directory = Path(tempfile.mkdtemp(prefix="logcrash-"))
    try:
        stored, trusted = _sealed_and_synced(seed, directory)
        assert trusted
        target = data.draw(st.sampled_from(trusted), label="segment")
        in_target = [b for b in stored if b.segment == target]
        victim = data.draw(st.sampled_from(in_target), label="victim")
        byte = victim.position + data.draw(st.integers(0, len(victim.data) - 1), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        with open(target, "r+b") as file:
            file.seek(byte)
            value = file.read(1)[0]
            file.seek(byte)
            file.write(bytes([value ^ (1 << bit)]))
        if clean_marker:
            (directory / "clean-shutdown").write_bytes(b"")
        index = stored.index(victim)
        log = PartitionLog.open(directory, CONFIG)
        try:
            served = _serve_everything(log, stored)
            # Header damage near a segment's end is found by the open's tail walk, which
            # then recovers the segment; damage elsewhere waits for a read to find it.
            cut_at_open = bool(log.recovery_notes)
        finally:
            log.close(clean=False)
        # Everything before the damage is served; the damaged batch never is.
        assert set(range(index)) <= served
        assert index not in served
        # A full scan cuts the log exactly there.
        log = PartitionLog.open(directory, CONFIG, full_scan=True)
        try:
            assert _read_all(log) == [b.data for b in stored[:index]]
            assert cut_at_open or log.recovery_notes
        finally:
            log.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _serve_everything(log: PartitionLog, stored: list[Stored]) -> set[int]:
    """Read at every batch's offset (read and read_slice); every batch handed out must validate
    and be the original. Returns the indexes of the batches served."""
    by_bytes = {b.data: n for n, b in enumerate(stored)}
    served: set[int] = set()
    for batch in stored:
        if not log.log_start_offset <= batch.base_offset < log.log_end_offset:
            continue
        for max_bytes in (1, 5000):
            try:
                result = bytes(log.read(batch.base_offset, max_bytes).data)
            except SegmentCorruptError:
                result = b""
            try:
                sliced = log.read_slice(batch.base_offset, max_bytes)
            except SegmentCorruptError:
                sliced = None
            if sliced is not None:
                try:
                    result += os.pread(sliced.fd, sliced.length, sliced.position)
                finally:
                    os.close(sliced.fd)
            for position, _ in iter_batches(result, validate=False):
                header = validate_batch(result, position, max_batch_bytes=2**31 - 1)
                chunk = result[position : position + header.size_bytes]
                assert chunk in by_bytes, "a served batch must be one that was written"
                served.add(by_bytes[chunk])
    return served
