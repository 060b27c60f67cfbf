"""RaftLog: the core's view of its log, stored entries plus the unstable tail (etcd's raftLog).

Entries the core has appended but the driver has not yet taken (through `Ready`) are "unstable";
they shadow storage from their first base offset on, because a follower may have just replaced a
conflicting stored suffix that the driver will truncate when it writes the Ready. A restored
snapshot is likewise unstable until the driver installs it. Pure: no I/O.

Terms are non-decreasing along the log, which is what lets `find_conflict_by_term` binary search.

Entries the driver has written stay in memory until applied ("recent", at most
`RECENT_BYTES_MAX`): the next Readys read them back as committed entries (a follower learns the
commit of a round's entries from the next AppendRequest), and reading them from the log file
(`PartitionLog.read`, then decoding) was 6 % of a follower's Python time at 10 k records/s. They
mirror storage exactly: dropped where a conflicting append will truncate it, on a snapshot, and
once applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.raft.messages import Entry, Snapshot
from broker.raft.storage import CompactedError, RaftStorage, UnavailableError, take_entries

# The most bytes of written, unapplied entries a group keeps in memory (module docstring): a
# round's worth at low rates; past it, the oldest are read from storage again.
RECENT_BYTES_MAX = 256 * 1024


class RaftLog:
    __slots__ = ("_recent", "_recent_bytes", "_unstable", "_unstable_snapshot", "storage")

    def __init__(self, storage: RaftStorage) -> None:
        self.storage = storage
        self._unstable: list[Entry] = []
        self._unstable_snapshot: Snapshot | None = None
        # Stored entries still in memory, contiguous, ending where storage ends (or where an
        # unstable suffix replaces storage from).
        self._recent: list[Entry] = []
        self._recent_bytes = 0

    # --- shape -----------------------------------------------------------------------------------

    def first_index(self) -> int:
        if self._unstable_snapshot is not None:
            return self._unstable_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self._unstable:
            return self._unstable[-1].index
        if self._unstable_snapshot is not None:
            return self._unstable_snapshot.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at `index`; raises CompactedError / UnavailableError like storage."""
        unstable = self._unstable
        if unstable and index >= unstable[0].base_index:
            if index > unstable[-1].index:
                raise UnavailableError(
                    f"index {index} is beyond the last index {self.last_index()}"
                )
            # The tail is short between two Readys; scan from the end, where lookups land.
            for entry in reversed(unstable):
                if entry.base_index <= index:
                    return entry.term
        snapshot = self._unstable_snapshot
        if snapshot is not None:
            if index == snapshot.index:
                return snapshot.term
            if index < snapshot.index:
                raise CompactedError(f"index {index} is below the snapshot at {snapshot.index}")
            raise UnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self.storage.term(index)

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as up to date (§5.4.1)."""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    def entries(self, low: int, high: int, bytes_max: int) -> list[Entry]:
        """Whole entries overlapping [low, high), first entry always included; see RaftStorage."""
        if low > self.last_index() or low >= high:
            return []
        if low < self.first_index():
            raise CompactedError(f"offset {low} is below the log start {self.first_index()}")
        unstable = self._unstable
        boundary = unstable[0].base_index if unstable else self.last_index() + 1
        result: list[Entry] = []
        if low < boundary:
            recent = self._recent
            if recent and recent[0].base_index <= low and recent[-1].index == boundary - 1:
                take_entries(recent, low, min(high, boundary), bytes_max, result)
            else:
                result = self.storage.entries(low, min(high, boundary), bytes_max)
            if not unstable or high <= boundary or (result and result[-1].index < boundary - 1):
                return result
        take_entries(unstable, low, high, bytes_max, result)
        return result

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= `index` whose term is <= `term` (etcd's findConflictByTerm).

        Used on both sides of fast backtracking: the follower's hint skips every entry of terms the
        leader cannot share, and the leader maps the hint onto its own log. Binary search, as terms
        never decrease along a log. Returns first_index - 1 when nothing qualifies.
        """
        low = self.first_index() - 1
        high = min(index, self.last_index())
        if high < low:
            return low
        if self.term(high) <= term:
            return high
        if self.term(low) > term:
            return low
        # Invariant: term(low) <= term < term(high).
        while high - low > 1:
            middle = (low + high) // 2
            if self.term(middle) <= term:
                low = middle
            else:
                high = middle
        return low

    def batch_start(self, offset: int) -> int:
        """The base offset of the batch containing `offset` (offset itself past the last entry)."""
        if offset > self.last_index() or offset < self.first_index():
            return offset
        return self.entries(offset, offset + 1, 1)[0].base_index

    # --- changes ---------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries starting at most at last_index + 1, replacing any suffix from there."""
        if not entries:
            return
        first = entries[0].base_index
        assert first <= self.last_index() + 1, f"gap: {first} after {self.last_index()}"
        unstable = self._unstable
        if unstable and first > unstable[0].base_index:
            # Replace only the unstable suffix from `first`.
            keep = len(unstable)
            while unstable[keep - 1].base_index >= first:
                keep -= 1
            del unstable[keep:]
            unstable.extend(entries)
        elif unstable and first == unstable[0].base_index:
            self._unstable = list(entries)
        else:
            # From stored entries on: the Ready's first entry tells the driver where to truncate.
            self._unstable = list(entries)
            self._forget_recent_from(first)

    def append_one(self, entry: Entry) -> None:
        """The leader's append: always right after the last entry (it never truncates itself)."""
        assert entry.base_index == self.last_index() + 1, (entry.base_index, self.last_index())
        self._unstable.append(entry)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot; the driver installs it from the next Ready."""
        self._unstable = []
        self._unstable_snapshot = snapshot
        self._recent, self._recent_bytes = [], 0

    def unstable(self) -> tuple[list[Entry], Snapshot | None]:
        return self._unstable, self._unstable_snapshot

    def stable_to(self, entry_count: int, snapshot: Snapshot | None) -> None:
        """The driver wrote the first `entry_count` unstable entries and `snapshot` to storage."""
        written = self._unstable[:entry_count]
        del self._unstable[:entry_count]
        if snapshot is not None and snapshot is self._unstable_snapshot:
            self._unstable_snapshot = None
        if not written:
            return
        recent = self._recent
        # Contiguous: `append` forgot what storage is about to lose, `restore` everything.
        assert not recent or recent[-1].index + 1 == written[0].base_index, "recent has a gap"
        recent.extend(written)
        self._recent_bytes += sum(entry.size_bytes for entry in written)
        self._drop_recent(applied_index=-1)

    def applied_to(self, index: int) -> None:
        """Entries through `index` are applied: no need to keep them in memory."""
        self._drop_recent(applied_index=index)

    def _drop_recent(self, *, applied_index: int) -> None:
        """Forget the oldest kept entries: those applied, and any over `RECENT_BYTES_MAX`."""
        recent = self._recent
        dropped = 0
        while dropped < len(recent) and (
            recent[dropped].index <= applied_index or self._recent_bytes > RECENT_BYTES_MAX
        ):
            self._recent_bytes -= recent[dropped].size_bytes
            dropped += 1
        del recent[:dropped]

    def _forget_recent_from(self, base_index: int) -> None:
        """Storage will be truncated from `base_index`: forget what it held from there."""
        recent = self._recent
        keep = len(recent)
        while keep and recent[keep - 1].base_index >= base_index:
            keep -= 1
            self._recent_bytes -= recent[keep].size_bytes
        del recent[keep:]
