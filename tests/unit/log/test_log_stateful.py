"""Goal: PartitionLog behaves exactly like a plain list of batches under any sequence of operations.

Tiny segments and indexes make rolls (by size, by time and by a full index) happen every few
appends; every read is checked batch by batch against the model, and the offset invariants
log_start <= flushed <= log_end are checked after every step.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from broker.log.log import (
    LeaderEpochError,
    OffsetMismatchError,
    OffsetOutOfRangeError,
    PartitionLog,
)
from tests.log_reading import batches_in_file
from wire.batch import RecordCountError

from .conftest import PROFILE
from .helpers import (
    BASE_TS,
    LogModel,
    make_batch,
    small_config,
    split_batches,
    with_offset_and_epoch,
)

batch_shapes = st.tuples(
    st.lists(st.integers(0, 5_000), min_size=1, max_size=5),  # timestamps, relative to a cursor
    st.integers(0, 600),  # value bytes per record
    st.sampled_from([0, 0, 0, 1, 7]),  # extra offsets (a compacted batch's gap)
)


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="logsm-"))
        self.directory = self.root / "topic-0"
        self.model = LogModel()
        self.clock = BASE_TS
        self.ts_cursor = BASE_TS
        self.ticket = None
        self.ticket_end = 0
        self.log: PartitionLog

    @initialize(
        segment_bytes=st.integers(1024, 6000),
        index_slots=st.integers(2, 12),
        interval=st.sampled_from([0, 100, 700, 4096]),
        segment_ms=st.sampled_from([10**9, 20_000, 3_000]),
        retention_ms=st.sampled_from([-1, 10_000, 60_000]),
        retention_bytes=st.sampled_from([-1, 3000, 12_000]),
        initial_offset=st.sampled_from([0, 0, 5, 2**33]),
    )
    def open_log(
        self,
        segment_bytes,
        index_slots,
        interval,
        segment_ms,
        retention_ms,
        retention_bytes,
        initial_offset,
    ):
        self.config = small_config(
            segment_bytes=segment_bytes,
            index_bytes_max=12 * index_slots,  # time index entries are 12 bytes, offset ones 8
            index_interval_bytes=interval,
            segment_ms=segment_ms,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
        )
        self.log = PartitionLog.open(
            self.directory, self.config, clock_ms=lambda: self.clock, initial_offset=initial_offset
        )
        self.model.start = initial_offset

    def teardown(self) -> None:
        if hasattr(self, "log"):
            if self.ticket is not None:
                self.log.abort_flush()
            self.log.close(clean=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- helpers --------------------------------------------------------------------------------

    def _new_batch(self, shape, offset=0, epoch=-1) -> bytes:
        deltas, value_bytes, extra = shape
        timestamps = [self.ts_cursor + delta - 1000 for delta in deltas]
        self.ts_cursor += 700
        return make_batch(
            timestamps,
            value_bytes=value_bytes,
            base_offset=offset,
            leader_epoch=epoch,
            extra_offsets=extra,
        )

    def _snapshot_files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.directory.iterdir() if p.suffix == ".log"}

    # --- appends --------------------------------------------------------------------------------

    @rule(shape=batch_shapes, epoch_step=st.sampled_from([None, None, 0, 1]))
    def append(self, shape, epoch_step):
        batch = self._new_batch(shape, offset=12345, epoch=99)
        if shape[2]:
            # A produced batch must use consecutive offsets; only replicas copy compacted gaps.
            before = self._snapshot_files()
            with pytest.raises(RecordCountError):
                self.log.append(batch)
            assert self._snapshot_files() == before
            return
        epoch = None if epoch_step is None else max(self.model.last_term, 0) + epoch_step
        result = self.log.append(batch, leader_epoch=epoch)
        stored_epoch = max(self.model.last_term, 0) if epoch is None else epoch
        expected = with_offset_and_epoch(batch, self.model.end, stored_epoch)
        added = self.model.add(expected)
        assert (result.base_offset, result.last_offset) == (added.base_offset, added.last_offset)
        assert result.size_bytes == len(batch)
        assert result.max_timestamp == added.max_timestamp

    @precondition(lambda self: self.model.last_term > 0)
    @rule(shape=batch_shapes)
    def append_with_old_epoch_is_refused(self, shape):
        before = self._snapshot_files()
        with pytest.raises(LeaderEpochError):
            batch = self._new_batch((shape[0], shape[1], 0))
            self.log.append(batch, leader_epoch=self.model.last_term - 1)
        assert self._snapshot_files() == before

    @rule(
        shapes=st.lists(batch_shapes, min_size=1, max_size=4),
        epoch_steps=st.lists(st.sampled_from([0, 0, 1, 2]), min_size=4, max_size=4),
    )
    def append_replicated(self, shapes, epoch_steps):
        offset = self.model.end
        epoch = max(self.model.last_term, 0)
        batches = []
        for shape, step in zip(shapes, epoch_steps, strict=False):
            epoch += step
            batch = self._new_batch(shape, offset=offset, epoch=epoch)
            batches.append(batch)
            offset = split_batches(batch)[0][0].next_offset
        result = self.log.append_replicated(b"".join(batches))
        for batch in batches:
            self.model.add(batch)
        assert result.last_offset == self.model.end - 1
        assert result.size_bytes == sum(len(batch) for batch in batches)

    @rule(shape=batch_shapes, shift=st.sampled_from([-1, 1, 5]))
    def append_replicated_with_gap_or_overlap_is_refused(self, shape, shift):
        if self.model.end + shift < 0:
            return
        before = self._snapshot_files()
        good = self._new_batch(shape, offset=self.model.end, epoch=max(self.model.last_term, 0))
        bad = self._new_batch(shape, offset=0, epoch=0)
        # The bad batch follows a good one: the whole call must still write nothing.
        good_next = split_batches(good)[0][0].next_offset
        bad = with_offset_and_epoch(bad, good_next + shift, max(self.model.last_term, 0))
        with pytest.raises(OffsetMismatchError):
            self.log.append_replicated(good + bad)
        assert self._snapshot_files() == before

    # --- reads ----------------------------------------------------------------------------------

    def _expected_read(self, offset: int, max_offset: int | None) -> int | None:
        limit = self.model.end if max_offset is None else min(max_offset, self.model.end)
        number = self.model.index_of(offset) if offset < limit else None
        if number is None or self.model.batches[number].last_offset >= limit:
            return None
        return number

    def _check_read_bytes(
        self,
        data: bytes,
        offset: int,
        max_bytes: int,
        max_offset: int | None,
        base_offset: int,
        next_offset: int,
    ) -> None:
        first = self._expected_read(offset, max_offset)
        if first is None:
            assert data == b""
            assert base_offset == next_offset == offset
            return
        limit = self.model.end if max_offset is None else min(max_offset, self.model.end)
        got = split_batches(data)
        assert got, "at least one batch when one is available"
        assert len(data) <= max_bytes or len(got) == 1
        for number, (header, raw) in enumerate(got):
            expected = self.model.batches[first + number]
            assert raw == expected.data, f"batch {number} of a read at {offset} differs"
            assert header.last_offset < limit
        assert base_offset == self.model.batches[first].base_offset
        assert next_offset == got[-1][0].next_offset
        following = first + len(got)
        if following < len(self.model.batches):
            nxt = self.model.batches[following]
            fits = len(data) + nxt.size_bytes <= max_bytes and nxt.last_offset < limit
            # A read stops early only at a segment boundary (reads never span segments).
            if fits:
                assert nxt.base_offset in {s.base_offset for s in self.log.segments}

    @rule(data=st.data())
    def read(self, data):
        offset = data.draw(st.integers(self.model.start, self.model.end), label="offset")
        max_bytes = data.draw(st.sampled_from([1, 100, 700, 2000, 10**6]), label="max_bytes")
        max_offset = data.draw(
            st.one_of(st.none(), st.integers(self.model.start, self.model.end + 2)),
            label="max_offset",
        )
        result = self.log.read(offset, max_bytes, max_offset=max_offset)
        self._check_read_bytes(
            bytes(result.data),
            offset,
            max_bytes,
            max_offset,
            result.base_offset,
            result.next_offset,
        )
        sliced = self.log.read_slice(offset, max_bytes, max_offset=max_offset)
        if sliced is None:
            assert result.data == b""
            return
        try:
            chunk = os.pread(sliced.fd, sliced.length, sliced.position)
        finally:
            os.close(sliced.fd)
        assert chunk == bytes(result.data)
        assert (sliced.base_offset, sliced.next_offset) == (result.base_offset, result.next_offset)

    @rule(delta=st.sampled_from([-1, 1, 1000]))
    def read_out_of_range_is_refused(self, delta):
        offset = self.model.start - 1 if delta < 0 else self.model.end + delta
        if offset < 0:
            return
        with pytest.raises(OffsetOutOfRangeError):
            self.log.read(offset, 1000)

    @rule(delta=st.integers(-3000, 20_000))
    def offset_for_timestamp(self, delta):
        target = self.ts_cursor - delta
        assert self.log.offset_for_timestamp(target) == self.model.offset_for_timestamp(target)

    @rule(data=st.data())
    def term_at(self, data):
        if self.model.end == self.model.start:
            with pytest.raises(OffsetOutOfRangeError):
                self.log.term_at(self.model.start)
            return
        offset = data.draw(st.integers(self.model.start, self.model.end - 1))
        assert self.log.term_at(offset) == self.model.term_at(offset)

    # --- shrinking ------------------------------------------------------------------------------

    @rule(data=st.data())
    def truncate(self, data):
        offset = data.draw(st.integers(max(self.model.start - 2, 0), self.model.end + 2))
        note(f"truncate({offset})")
        self.log.truncate(offset)
        self.model.truncate(offset)

    @rule(delta=st.sampled_from([0, 3, 100]))
    def reset(self, delta):
        start = self.model.end + delta
        self.log.reset(start)
        self.model.reset(start)

    @rule(age=st.integers(0, 120_000))
    def apply_retention(self, age):
        now = self.ts_cursor + age
        bases = [s.base_offset for s in self.log.segments]
        expected_start = self._expected_retention(bases, now)
        deleted = self.log.apply_retention(now)
        assert self.log.log_start_offset == expected_start
        assert deleted == bases.index(expected_start)
        self.model.drop_before(expected_start)

    def _expected_retention(self, bases: list[int], now: int) -> int:
        retention_ms = self.config.retention_ms
        retention_bytes = self.config.retention_bytes
        excess = self.model.size_bytes - retention_bytes
        for number, base in enumerate(bases[:-1]):
            inside = [b for b in self.model.batches if base <= b.base_offset < bases[number + 1]]
            size = sum(b.size_bytes for b in inside)
            max_ts = max((b.max_timestamp for b in inside), default=-1)
            expired = retention_ms >= 0 and max_ts < now - retention_ms
            oversized = retention_bytes >= 0 and excess - size >= 0
            if not (expired or oversized):
                return base
            excess -= size
        return bases[-1]

    # --- durability -----------------------------------------------------------------------------

    @rule()
    def flush(self):
        if self.ticket is not None:
            self.complete_ticket()
        self.log.flush()
        assert self.log.flushed_offset == self.model.end
        assert not self.log.needs_flush

    @precondition(lambda self: self.ticket is None)
    @rule()
    def begin_ticket(self):
        self.ticket = self.log.begin_flush()
        self.ticket_end = self.model.end

    @precondition(lambda self: self.ticket is not None)
    @rule()
    def complete_ticket(self):
        before = self.log.flushed_offset
        self.ticket.run()
        self.log.complete_flush(self.ticket)
        # Never more than the ticket covered, never less than before (unless the log shrank).
        assert self.log.flushed_offset <= max(self.ticket_end, before)
        self.ticket = None

    @rule(clean=st.booleans())
    def reopen(self, clean):
        if self.ticket is not None:
            self.complete_ticket()
        self.log.close(clean=clean)
        self.log = PartitionLog.open(self.directory, self.config, clock_ms=lambda: self.clock)
        # A process crash loses nothing (the page cache keeps it): recovery must cut nothing.
        assert self.log.recovery_notes == []
        if clean:
            assert self.log.flushed_offset == self.model.end
        assert not (self.directory / "clean-shutdown").exists()

    @rule(data=st.data())
    def power_loss(self, data):
        """The machine dies: bytes not yet fsynced may be lost or torn, an outstanding ticket
        never completes. Everything below flushed_offset must survive, and the log must come
        back as an exact prefix of what was written."""
        flushed = self.log.flushed_offset
        if self.ticket is not None:
            self.log.abort_flush()
            self.ticket = None
        self.log.close(clean=False)
        kept: dict[Path, int] = {}
        layout = []
        for path in sorted(self.directory.glob("*.log")):
            raw = path.read_bytes()
            synced = 0
            for position, header in batches_in_file(raw):
                layout.append((path, position + header.size_bytes))
                if header.next_offset <= flushed:
                    synced = position + header.size_bytes
            if synced < len(raw):
                kept[path] = data.draw(st.integers(synced, len(raw)), label=f"keep {path.name}")
                os.truncate(path, kept[path])
        survivors = 0
        for path, end in layout:
            if path in kept and end > kept[path]:
                break
            survivors += 1
        self.log = PartitionLog.open(self.directory, self.config, clock_ms=lambda: self.clock)
        assert self.log.log_end_offset >= flushed
        self.model.batches = self.model.batches[:survivors]
        # Reads must now match the shortened model (the invariants check the offsets).
        offset = self.model.start
        got = []
        while offset < self.log.log_end_offset:
            result = self.log.read(offset, 10**6)
            got.extend(raw for _, raw in split_batches(result.data))
            offset = result.next_offset
        assert got == [batch.data for batch in self.model.batches]

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def offsets_agree(self):
        if not hasattr(self, "log"):
            return
        log = self.log
        assert log.log_start_offset == self.model.start
        assert log.log_end_offset == log.dirty_offset == self.model.end
        assert log.log_start_offset <= log.flushed_offset <= log.log_end_offset
        assert log.last_term == self.model.last_term
        assert log.size_bytes == self.model.size_bytes
        segments = log.segments
        for before, after in itertools.pairwise(segments):
            assert before.next_offset == after.base_offset
            assert before.size_bytes > 0
        for segment in segments:
            # The file is the batches, then (active segment only) the zeros preallocated ahead.
            assert os.fstat(segment.fd).st_size == segment.file_bytes >= segment.size_bytes
            tail = os.pread(segment.fd, segment.file_bytes - segment.size_bytes, segment.size_bytes)
            assert tail.count(0) == len(tail)
            assert segment.file_bytes == segment.size_bytes or not segment.sealed
            assert segment.index.entry_count <= segment.index.capacity or segment.sealed


LogMachine.TestCase.settings = settings(
    PROFILE, max_examples=2 * PROFILE.max_examples, stateful_step_count=50
)
TestLogMachine = LogMachine.TestCase


@pytest.mark.slow
def test_log_machine_long_runs():
    """The same machine with more and longer runs (HYPOTHESIS_PROFILE=log-thorough for more)."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        LogMachine,
        settings=settings(PROFILE, max_examples=3 * PROFILE.max_examples, stateful_step_count=100),
    )
