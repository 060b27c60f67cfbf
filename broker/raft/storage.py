"""The durable side of a Raft node, as the core sees it: a read-only `RaftStorage` protocol.

The core only READS storage (etcd's Storage); the driver WRITES it from each `Ready` (append with
truncation, hard state, snapshot/reset) and fsyncs. Every read maps onto one partition-log call,
so the production implementation over `PartitionLog` + LMDB is thin:

    first_index()          -> log.local_start_offset
    last_index()           -> log.log_end_offset - 1
    term(index)            -> log.term_at(index) (snapshot term at first_index - 1)
    entries(lo, hi, max)   -> log.read(lo, max, max_offset=hi - 1), whole batches
    snapshot()             -> start offset/term + configuration (+ state bytes for the controller)
    initial_state()        -> hard state from LMDB + the configuration history (see below)

and the writes the driver performs map onto `log.truncate(offset)`, `log.append_replicated(batches)`
and `log.reset(start_offset)`. `MemoryStorage` implements both sides in memory for tests and the
simulator. This module is pure: no I/O.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from typing import Protocol

from broker.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
)


class StorageError(Exception):
    """Base of the named errors storage reads raise; the core handles both below."""


class CompactedError(StorageError):
    """The index is below the log start: the entry is gone, only a snapshot covers it."""


class UnavailableError(StorageError):
    """The index is beyond the last stored entry."""


@dataclasses.dataclass(frozen=True, slots=True)
class InitialState:
    hard_state: HardState
    # Every configuration from the snapshot on, oldest first: (index of its entry, configuration).
    # The snapshot's own configuration comes first at the snapshot index. The core needs the
    # history because a configuration takes effect when APPENDED (thesis §4.1) and must be rolled
    # back when its entry is truncated. The partition-log implementation keeps this short list in
    # LMDB, updated when it appends or truncates a configuration batch.
    configurations: tuple[tuple[int, Configuration], ...]


class RaftStorage(Protocol):
    """What the core reads. Indexes are offsets; inside a batch, `term` is that batch's term."""

    def initial_state(self) -> InitialState: ...

    def first_index(self) -> int:
        """The log start offset. The snapshot covers everything below it."""
        ...

    def last_index(self) -> int:
        """The index of the last stored entry (log end offset - 1), or the snapshot index."""
        ...

    def term(self, index: int) -> int:
        """The term at `index`; CompactedError below first_index - 1, UnavailableError above."""
        ...

    def entries(self, low: int, high: int, bytes_max: int) -> list[Entry]:
        """Whole entries overlapping offsets [low, high), oldest first, up to `bytes_max` bytes.

        The first entry is the one containing `low` and is returned even when it alone exceeds
        `bytes_max`. Raises CompactedError if `low < first_index()`.
        """
        ...

    def snapshot(self) -> Snapshot:
        """The snapshot at first_index - 1: what a follower behind the log start gets."""
        ...


class MemoryStorage:
    """RaftStorage in memory, plus the write operations a driver performs (the simulator's disk)."""

    def __init__(self, configuration: Configuration, *, start_index: int = 0) -> None:
        # The snapshot sits just below the first offset; an empty log "starts" at start_index.
        self._snapshot = Snapshot(index=start_index - 1, term=0, configuration=configuration)
        self._entries: list[Entry] = []
        # Parallel list of entry indexes for bisection: the entry containing offset o is the first
        # one whose index is >= o.
        self._indexes: list[int] = []
        self.hard_state = HardState()
        self._configurations: list[tuple[int, Configuration]] = [(start_index - 1, configuration)]

    def copy(self) -> MemoryStorage:
        """A snapshot of this storage's state (entries are immutable and shared)."""
        clone = MemoryStorage.__new__(MemoryStorage)
        clone._snapshot = self._snapshot
        clone._entries = list(self._entries)
        clone._indexes = list(self._indexes)
        clone.hard_state = self.hard_state
        clone._configurations = list(self._configurations)
        return clone

    # --- reads (RaftStorage) ---------------------------------------------------------------------

    def initial_state(self) -> InitialState:
        return InitialState(self.hard_state, tuple(self._configurations))

    def first_index(self) -> int:
        return self._snapshot.index + 1

    def last_index(self) -> int:
        return self._indexes[-1] if self._indexes else self._snapshot.index

    def term(self, index: int) -> int:
        if index == self._snapshot.index:
            return self._snapshot.term
        if index < self._snapshot.index:
            raise CompactedError(f"index {index} is below the snapshot at {self._snapshot.index}")
        if not self._indexes or index > self._indexes[-1]:
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self._entries[bisect.bisect_left(self._indexes, index)].term

    def entries(self, low: int, high: int, bytes_max: int) -> list[Entry]:
        if low <= self._snapshot.index:
            raise CompactedError(f"offset {low} is below the log start {self.first_index()}")
        position = bisect.bisect_left(self._indexes, low)
        result: list[Entry] = []
        take_entries(self._entries[position:], low, high, bytes_max, result)
        return result

    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def all_entries(self) -> Sequence[Entry]:
        """Every stored entry, for checkers and golden traces (not part of RaftStorage)."""
        return self._entries

    # --- writes (the driver's side) --------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append, first truncating any stored suffix from the first new entry's base offset.

        This is the driver's rule for `Ready.entries` (Raft paper §5.3: a conflicting entry and all
        that follow it are deleted); on a partition log it is `truncate` then `append_replicated`.
        """
        if not entries:
            return
        first = entries[0].base_index
        assert first > self._snapshot.index, "cannot overwrite entries below the snapshot"
        assert first <= self.last_index() + 1, f"gap: appending {first} after {self.last_index()}"
        if first <= self.last_index():
            self.truncate(first)
        expected = self.last_index() + 1
        configuration_kind = EntryKind.CONFIGURATION
        for entry in entries:
            assert entry.base_index == expected, "entries must be contiguous"
            expected = entry.index + 1
            if entry.kind is configuration_kind:
                assert entry.configuration is not None
                self._configurations.append((entry.index, entry.configuration))
        self._entries.extend(entries)
        self._indexes.extend([entry.index for entry in entries])

    def truncate(self, offset: int) -> None:
        """Remove the entry starting at `offset` and everything after it (log.truncate)."""
        position = bisect.bisect_left(self._indexes, offset)
        assert position == len(self._entries) or self._entries[position].base_index == offset, (
            "truncation must fall on a batch boundary"
        )
        del self._entries[position:]
        del self._indexes[position:]
        while self._configurations[-1][0] >= offset:
            self._configurations.pop()

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot: the log empties and starts at snapshot.index + 1 (log.reset)."""
        self._snapshot = snapshot
        self._entries = []
        self._indexes = []
        self._configurations = [(snapshot.index, snapshot.configuration)]

    def compact(self, index: int, data: bytes = b"") -> None:
        """Drop entries up to and including `index`, keeping a snapshot there (retention).

        The caller only compacts committed, applied and durable entries.
        """
        position = bisect.bisect_left(self._indexes, index)
        assert position < len(self._entries), "compacting beyond the last index"
        assert self._entries[position].index == index, "compaction must end on an entry"
        term = self._entries[position].term
        configuration = self._snapshot.configuration
        for config_index, config in self._configurations:
            if config_index <= index:
                configuration = config
        self._snapshot = Snapshot(index=index, term=term, configuration=configuration, data=data)
        del self._entries[: position + 1]
        del self._indexes[: position + 1]
        kept = [(i, c) for i, c in self._configurations if i > index]
        self._configurations = [(index, configuration), *kept]


def take_entries(
    entries: Sequence[Entry], low: int, high: int, bytes_max: int, result: list[Entry]
) -> None:
    """Append to `result` the entries of `entries` (in order) overlapping [low, high), while
    within `bytes_max` counted with what `result` holds; its first entry is always taken."""
    size_bytes = sum(entry.size_bytes for entry in result)
    for entry in entries:
        if entry.index < low:
            continue
        if entry.base_index >= high:
            break
        size_bytes += entry.size_bytes
        if result and size_bytes > bytes_max:
            break
        result.append(entry)
