"""`LogRaftStorage`: Raft storage over a real `PartitionLog` plus the broker's LMDB `KvStore`.

The partition log *is* the Raft log (ARCHITECTURE principle 2): entries are the log's batches,
read and written in place. What the log itself cannot answer lives in LMDB under the group's name
(key space RAFT), as three small values:

    <group>/hard      [term, vote, commit_index]       hard state (Raft Figure 2)
    <group>/snapshot  [index, term, configuration, data] what covers everything below the log start
    <group>/configs   [[index, configuration], ...]    configuration entries at or after the start

Durability: the log's data is made durable by the driver's fsync (`PartitionLog.flush` or the
group-commit `LogFlusher`). A vote must never be forgotten, but `set_hard_state` writes term and
vote to LMDB *without* a sync and sets `hard_state_unsynced`: the driver awaits the broker's shared
`StoreSyncer` (one LMDB fsync for every group's votes, in a worker thread) before any message of
that Ready leaves, and clears the flag. A change of the commit index alone needs no sync at all:
commit knowledge is a cache the core re-learns (it clamps it to the stored log on restart). A new
group's first snapshot record is not synced either: lost in a crash, it is derived again, equal.

A group without a state machine (a partition) may keep its commit index *lazily*
(`lazy_commit_index`): a change of the commit index alone is written at most once per
`COMMIT_INDEX_SAVE_INTERVAL_S`, and on a clean stop (`save_commit_index`); a term or vote change
writes it too. Written on every change it cost each round an LMDB write transaction (three to
four `pwrite`s dirtying as many pages, docs/performance.md). After a crash such a replica restarts
with an older commit index, so its high watermark starts lower, until it learns the commit again
from its leader, or (as a new leader) commits an entry of its term: what a follower that becomes
leader goes through anyway (docs/cluster.md). A state machine group (the controller) writes it
on every change: the core clamps the machine's applied index to the stored commit index, and
would otherwise apply again what the machine already holds.

This is the disk-backed twin of `MemoryStorage`: the same reads (the `RaftStorage` protocol) and the
same driver-side writes (`append`, `truncate`, `set_hard_state`, `apply_snapshot`, `compact_to`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from broker.kvstore import KeySpace, KvStore
from broker.log.log import PartitionLog
from broker.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
    entry_from_batch,
)
from broker.raft.storage import CompactedError, InitialState, UnavailableError

# How stale a lazily kept commit index may be on disk (module docstring): a crash costs a
# restarted replica at most this much commit progress to learn again.
COMMIT_INDEX_SAVE_INTERVAL_S = 1.0


class LogRaftStorage:
    """RaftStorage for one group over its partition log. Single-threaded, like the log."""

    def __init__(
        self,
        log: PartitionLog,
        store: KvStore,
        group: str,
        configuration: Configuration,
        *,
        lazy_commit_index: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`lazy_commit_index`: for a group without a state machine (module docstring)."""
        self.log = log
        self._lazy_commit_index = lazy_commit_index
        self._clock = clock
        self._store = store
        self._prefix = group.encode()
        saved_snapshot = self._get(b"snapshot")
        if saved_snapshot is None:
            # A new group: the empty log's start is the snapshot point, at term 0.
            self._snapshot = Snapshot(log.local_start_offset - 1, 0, configuration)
            # Not synced (module docstring): after a crash it is derived again, the same.
            self._put(b"snapshot", self._encode_snapshot(self._snapshot), durable=False)
        else:
            self._snapshot = self._decode_snapshot(saved_snapshot)
        saved_configs = self._get(b"configs")
        self._configurations: list[tuple[int, Configuration]] = (
            [(index, Configuration.decode(raw)) for index, raw in saved_configs]
            if saved_configs is not None
            else [(self._snapshot.index, self._snapshot.configuration)]
        )
        saved_hard = self._get(b"hard")
        self.hard_state = HardState() if saved_hard is None else HardState(*saved_hard)
        # What LMDB holds, and when it was written (a lazy commit index is written again once
        # COMMIT_INDEX_SAVE_INTERVAL_S has passed).
        self._saved_hard_state = self.hard_state
        self._saved_at = -math.inf
        # A term or vote written to LMDB but not yet synced (set_hard_state).
        self.hard_state_unsynced = False
        self._reconcile_with_log()

    def _reconcile_with_log(self) -> None:
        # Retention must record a snapshot (compact_to) before deleting segments; otherwise the
        # term just below the log start is unknown and Raft cannot go on with this log.
        assert self._snapshot.index + 1 >= self.log.local_start_offset, (
            f"{self.log.directory}: the log starts at {self.log.local_start_offset} but the Raft "
            f"snapshot covers only up to {self._snapshot.index}"
        )
        # Configurations may be ahead of the log after a crash (saved before the batch's fsync):
        # drop those whose entry did not survive, as a truncation would.
        last = self.last_index()
        kept = [item for item in self._configurations if item[0] <= last]
        if len(kept) != len(self._configurations):
            self._configurations = kept
            self._save_configurations()

    # --- reads (RaftStorage) --------------------------------------------------------------------

    def initial_state(self) -> InitialState:
        return InitialState(self.hard_state, tuple(self._configurations))

    def first_index(self) -> int:
        # The snapshot may cover more than retention has deleted yet: what lies between the log
        # start and the snapshot is committed data the partition still serves, but not Raft's.
        return self._snapshot.index + 1

    def last_index(self) -> int:
        return self.log.log_end_offset - 1

    def term(self, index: int) -> int:
        snapshot_index = self._snapshot.index
        if index == snapshot_index:
            return self._snapshot.term
        if index < snapshot_index:
            raise CompactedError(f"index {index} is below the snapshot at {snapshot_index}")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self.log.term_at(index)

    def entries(self, low: int, high: int, bytes_max: int) -> list[Entry]:
        if low < self.first_index():
            raise CompactedError(f"offset {low} is below the log start {self.first_index()}")
        result: list[Entry] = []
        size_bytes = 0
        offset = low
        while offset < min(high, self.log.log_end_offset):
            read = self.log.read(offset, max(bytes_max - size_bytes, 1))
            if not read.data:
                break
            data = bytes(read.data)
            position = 0
            while position < len(data):
                entry = entry_from_batch(data[position : position + _batch_size(data, position)])
                over_budget = result and size_bytes + entry.size_bytes > bytes_max
                if entry.base_index >= high or over_budget:
                    return result
                result.append(entry)
                size_bytes += entry.size_bytes
                position += entry.size_bytes
            offset = read.next_offset
        return result

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- writes (the driver's side) -------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append, first truncating any stored suffix from the first new entry's base offset."""
        if not entries:
            return
        first = entries[0].base_index
        assert first >= self.first_index(), "cannot overwrite entries below the snapshot"
        assert first <= self.log.log_end_offset, f"gap: {first} after {self.log.log_end_offset}"
        if first < self.log.log_end_offset:
            self.truncate(first)
        self.log.append_replicated(b"".join(entry.data for entry in entries))
        added = [
            (entry.index, entry.configuration)
            for entry in entries
            if entry.kind is EntryKind.CONFIGURATION and entry.configuration is not None
        ]
        if added:
            self._configurations.extend(added)
            self._save_configurations()

    def truncate(self, offset: int) -> None:
        """Remove the entry starting at `offset` and everything after it."""
        self.log.truncate(offset)
        assert self.log.log_end_offset == offset, "truncation must fall on a batch boundary"
        kept = [item for item in self._configurations if item[0] < offset]
        if len(kept) != len(self._configurations):
            self._configurations = kept or [(self._snapshot.index, self._snapshot.configuration)]
            self._save_configurations()

    def set_hard_state(self, hard_state: HardState) -> None:
        # Term and vote must survive a crash before any message of the Ready leaves: flagged for
        # the driver's shared sync (module docstring). The commit index alone is a cache.
        vote_changed = (hard_state.term, hard_state.vote) != (
            self.hard_state.term,
            self.hard_state.vote,
        )
        if vote_changed:
            self.hard_state_unsynced = True
        self.hard_state = hard_state
        if (
            vote_changed
            or not self._lazy_commit_index
            or self._clock() - self._saved_at >= COMMIT_INDEX_SAVE_INTERVAL_S
        ):
            self._save_hard_state()

    def save_commit_index(self) -> None:
        """Write a lazily kept commit index that LMDB does not hold yet (a clean stop)."""
        if self.hard_state != self._saved_hard_state:
            self._save_hard_state()

    def _save_hard_state(self) -> None:
        hard_state = self.hard_state
        self._put(
            b"hard", [hard_state.term, hard_state.vote, hard_state.commit_index], durable=False
        )
        self._saved_hard_state = hard_state
        self._saved_at = self._clock()

    @property
    def store(self) -> KvStore:
        """The broker's LMDB store this group's records live in (shared by its groups)."""
        return self._store

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot: the log restarts, empty, at `snapshot.index + 1` (log.reset)."""
        # The snapshot record goes first: if we crash between the two writes, the old log with a
        # newer snapshot record is merely a longer log than needed, never a hole.
        self._snapshot = snapshot
        self._put(b"snapshot", self._encode_snapshot(snapshot), durable=True)
        self.log.reset(snapshot.index + 1)
        self._configurations = [(snapshot.index, snapshot.configuration)]
        self._save_configurations()

    def compact_to(self, index: int, term: int, data: bytes = b"") -> None:
        """Record that everything up to `index` (of `term`) is covered by a snapshot.

        Called before retention deletes segments below `index + 1` (`PartitionLog.apply_retention`'s
        `before_delete`, from `ReplicaManager.apply_retention`), so that `term(first_index - 1)`
        can still be answered afterwards.
        """
        configuration = self._snapshot.configuration
        for config_index, config in self._configurations:
            if config_index <= index:
                configuration = config
        self._snapshot = Snapshot(index=index, term=term, configuration=configuration, data=data)
        self._put(b"snapshot", self._encode_snapshot(self._snapshot), durable=True)
        self._configurations = [
            (index, configuration),
            *[item for item in self._configurations if item[0] > index],
        ]
        self._save_configurations()

    # --- LMDB -----------------------------------------------------------------------------------

    def _key(self, name: bytes) -> bytes:
        return self._prefix + b"/" + name

    def _get(self, name: bytes) -> object:
        return self._store.get_obj(KeySpace.RAFT, self._key(name))

    def _put(self, name: bytes, value: object, *, durable: bool) -> None:
        self._store.put_obj(KeySpace.RAFT, self._key(name), value, durable=durable)

    def _save_configurations(self) -> None:
        encoded = [[index, config.encode()] for index, config in self._configurations]
        self._put(b"configs", encoded, durable=True)

    @staticmethod
    def _encode_snapshot(snapshot: Snapshot) -> list[object]:
        return [snapshot.index, snapshot.term, snapshot.configuration.encode(), snapshot.data]

    @staticmethod
    def _decode_snapshot(raw: object) -> Snapshot:
        index, term, configuration, data = raw  # type: ignore[misc]
        return Snapshot(index, term, Configuration.decode(configuration), bytes(data))


def _batch_size(data: bytes, position: int) -> int:
    return int.from_bytes(data[position + 8 : position + 12], "big", signed=True) + 12
