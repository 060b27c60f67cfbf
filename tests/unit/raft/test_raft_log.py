"""Goal: RaftLog (stored entries + unstable tail) behaves like one plain list of batches, whatever
mix of appends, conflicting overwrites, driver writes (Ready), applies and compactions happens;
and entries written but not yet applied are read back from memory, not from storage."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.raft import raft_log
from broker.raft.messages import Configuration, Entry, assign_entry
from broker.raft.raft_log import RaftLog
from broker.raft.storage import MemoryStorage
from wire import batch as batch_codec


def make_entry(base_index: int, term: int, records: int) -> Entry:
    data = batch_codec.build_batch([(0, None, b"r", None)] * records)
    return assign_entry(data, base_index=base_index, term=term)


class RaftLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.storage = MemoryStorage(Configuration.of([1]))
        self.log = RaftLog(self.storage)
        self.model: list[Entry] = []  # the whole log, oldest first
        self.start = 0  # first offset still held (after compaction)
        self.term = 1

    def _model_last(self) -> int:
        return self.model[-1].index if self.model else self.start - 1

    @rule(records=st.integers(1, 4))
    def leader_append(self, records: int) -> None:
        entry = make_entry(self._model_last() + 1, self.term, records)
        self.log.append_one(entry)
        self.model.append(entry)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data(), count=st.integers(1, 3))
    def follower_overwrite(self, data: st.DataObject, count: int) -> None:
        # A new leader (higher term) replaces the suffix from some entry boundary on.
        position = data.draw(st.integers(0, len(self.model)))
        self.term += 1
        base = (
            self.model[position].base_index
            if position < len(self.model)
            else self._model_last() + 1
        )
        entries = []
        for _ in range(count):
            entry = make_entry(base, self.term, data.draw(st.integers(1, 3)))
            entries.append(entry)
            base = entry.index + 1
        self.log.append(entries)
        self.model[position:] = entries

    @rule()
    def driver_writes(self) -> None:
        # What a driver does with Ready.entries: append with truncation, then advance.
        entries, snapshot = self.log.unstable()
        assert snapshot is None
        self.storage.append(list(entries))
        self.log.stable_to(len(entries), None)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def apply(self, data: st.DataObject) -> None:
        # The core applies committed entries: the log may forget them from memory.
        self.log.applied_to(data.draw(st.integers(self.start - 1, self._model_last())))

    @precondition(lambda self: len(self.model) > 1)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        entries, _ = self.log.unstable()
        stored = [e for e in self.model if not entries or e.index < entries[0].base_index]
        if len(stored) < 2:
            return
        cut = data.draw(st.integers(0, len(stored) - 2))
        self.storage.compact(stored[cut].index)
        self.start = stored[cut].index + 1
        self.model = [e for e in self.model if e.index > stored[cut].index]

    @invariant()
    def matches_model(self) -> None:
        assert self.log.last_index() == self._model_last()
        assert self.log.first_index() == self.start
        for entry in self.model:
            assert self.log.term(entry.index) == entry.term
            assert self.log.term(entry.base_index) == entry.term
        if self.model:
            first = self.model[0].base_index
            assert self.log.entries(first, self._model_last() + 1, 1 << 30) == self.model
            middle = self.model[len(self.model) // 2]
            got = self.log.entries(middle.index, self._model_last() + 1, 1 << 30)
            assert got == self.model[len(self.model) // 2 :]
            limited = self.log.entries(first, self._model_last() + 1, 2 * middle.size_bytes)
            assert limited == self.model[: len(limited)]
            assert 1 <= len(limited) <= 2


TestRaftLog = RaftLogMachine.TestCase


class _CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__(Configuration.of([1]))
        self.reads = 0

    def entries(self, low: int, high: int, bytes_max: int) -> list[Entry]:
        self.reads += 1
        return super().entries(low, high, bytes_max)


def test_written_entries_are_read_back_from_memory_until_applied() -> None:
    storage = _CountingStorage()
    log = RaftLog(storage)
    entries = [make_entry(0, 1, 2), make_entry(2, 1, 1), make_entry(3, 1, 3)]
    for entry in entries:
        log.append_one(entry)
    written, _ = log.unstable()
    storage.append(list(written))
    log.stable_to(len(written), None)
    # Committed and read for the apply: from memory.
    assert log.entries(0, 6, 1 << 20) == entries
    assert log.entries(3, 6, 1 << 20) == entries[2:]
    assert storage.reads == 0
    log.applied_to(2)  # the first two applied: only the third is kept
    assert log.entries(3, 6, 1 << 20) == entries[2:] and storage.reads == 0
    assert log.entries(0, 6, 1 << 20) == entries and storage.reads == 1
    # A conflicting append from the second entry on: what storage will lose is forgotten.
    replacement = make_entry(2, 2, 1)
    log.append([replacement])
    assert log.entries(0, 3, 1 << 20) == [entries[0], replacement]
    assert log.term(2) == 2


def test_kept_entries_are_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = _CountingStorage()
    log = RaftLog(storage)
    entries = [make_entry(0, 1, 1), make_entry(1, 1, 1), make_entry(2, 1, 1)]
    monkeypatch.setattr(raft_log, "RECENT_BYTES_MAX", entries[1].size_bytes + entries[2].size_bytes)
    for entry in entries:
        log.append_one(entry)
    written, _ = log.unstable()
    storage.append(list(written))
    log.stable_to(len(written), None)
    assert log.entries(1, 3, 1 << 20) == entries[1:] and storage.reads == 0  # the newest two
    assert log.entries(0, 3, 1 << 20) == entries and storage.reads == 1  # the oldest: dropped


TestRaftLog.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
