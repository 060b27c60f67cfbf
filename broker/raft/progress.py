"""The leader's view of one follower: how far it matches, what to send next, and flow control.

Like etcd's tracker.Progress, a follower is in one of three states (ProgressState). In PROBE the
leader sends one AppendRequest and waits for the answer, to find where the logs match; in REPLICATE
it pipelines AppendRequests optimistically, bounded by `Inflights` (count AND bytes, ARCHITECTURE
principle 5); in SNAPSHOT it waits for a snapshot (or log reset) to be installed. Pure: no I/O.

Indexes are Raft indexes (offsets of batches' last records); `next_index` is the base offset of the
next batch to send, so `next_index - 1` is always an entry index on the leader or its snapshot
index.
"""

from __future__ import annotations

import collections
import enum


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Unacknowledged AppendRequests to one follower: (last index, entry bytes), oldest first."""

    __slots__ = ("_messages", "bytes_max", "bytes_total", "messages_max")

    def __init__(self, *, messages_max: int, bytes_max: int) -> None:
        assert messages_max > 0
        assert bytes_max > 0
        self.messages_max = messages_max
        self.bytes_max = bytes_max
        self._messages: collections.deque[tuple[int, int]] = collections.deque()
        self.bytes_total = 0

    @property
    def count(self) -> int:
        return len(self._messages)

    def add(self, last_index: int, size_bytes: int) -> None:
        # Indexes only grow within one replicate stretch; a reset empties the window first.
        assert not self._messages or self._messages[-1][0] < last_index
        assert not self.full()
        self._messages.append((last_index, size_bytes))
        self.bytes_total += size_bytes

    def free_to(self, index: int) -> None:
        """Forget every message whose last entry is at or below an acknowledged index."""
        while self._messages and self._messages[0][0] <= index:
            self.bytes_total -= self._messages.popleft()[1]
        assert self.bytes_total >= 0

    def free_first(self) -> None:
        if self._messages:
            self.bytes_total -= self._messages.popleft()[1]

    def full(self) -> bool:
        # The byte bound is checked before a send, so one message may take the total above it: a
        # single batch larger than the window must still be able to make progress.
        return len(self._messages) >= self.messages_max or self.bytes_total >= self.bytes_max

    def reset(self) -> None:
        self._messages.clear()
        self.bytes_total = 0


class Progress:
    """Replication state of one follower (or learner), kept by the leader only."""

    __slots__ = (
        "inflights",
        "match_index",
        "next_index",
        "pending_snapshot_index",
        "probe_sent",
        "recent_active",
        "snapshot_elapsed_ticks",
        "state",
    )

    def __init__(self, *, next_index: int, messages_max: int, bytes_max: int) -> None:
        self.match_index = -1
        self.next_index = next_index
        self.state = ProgressState.PROBE
        # PROBE: an AppendRequest is outstanding, so sending more would only duplicate it.
        self.probe_sent = False
        self.pending_snapshot_index = -1
        self.snapshot_elapsed_ticks = 0
        # Set by any message from the follower; check-quorum reads and clears it (thesis §6.2).
        self.recent_active = False
        self.inflights = Inflights(messages_max=messages_max, bytes_max=bytes_max)

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match_index} next={self.next_index} "
            f"inflight={self.inflights.count})"
        )

    def become_probe(self) -> None:
        # After a snapshot, the follower holds at least the snapshot: probe right after it.
        if self.state is ProgressState.SNAPSHOT:
            self.next_index = max(self.match_index + 1, self.pending_snapshot_index + 1)
        else:
            self.next_index = self.match_index + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot_index = -1
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match_index + 1
        self.probe_sent = False
        self.inflights.reset()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot_index = snapshot_index
        self.snapshot_elapsed_ticks = 0
        self.probe_sent = False
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """Record a successful append up to `index`; False if the acknowledgement is stale."""
        updated = index > self.match_index
        if updated:
            self.match_index = index
            self.probe_sent = False
        self.next_index = max(self.next_index, index + 1)
        return updated

    def maybe_decrease_to(self, rejected_index: int, probe_next_index: int) -> bool:
        """Back off after the follower rejected `prev_index == rejected_index`.

        `probe_next_index` is where the fast-backtracking hint says to try next. Returns False for a
        stale rejection (one that does not concern the current probe), which must be ignored.
        """
        if self.state is ProgressState.REPLICATE:
            # A rejection at or below match is a reordered, stale message.
            if rejected_index <= self.match_index:
                return False
            self.next_index = self.match_index + 1
            return True
        if self.next_index - 1 != rejected_index:
            return False
        # Never below match + 1 (the follower has that prefix) and always strictly lower than the
        # rejected probe, so backtracking terminates.
        self.next_index = max(min(rejected_index, probe_next_index), self.match_index + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int, size_bytes: int) -> None:
        """Account for an AppendRequest just sent whose last entry is `last_index`."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next_index:
                self.next_index = last_index + 1
                self.inflights.add(last_index, size_bytes)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
