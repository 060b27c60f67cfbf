"""What the core hands its driver: `Ready` (the work to do), `RaftStatistics`, and `Role`.

Split from core.py so the driver and metrics code can import the output types alone. Pure.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol

from broker.raft.messages import Entry, HardState, Message, Snapshot


class RandomSource(Protocol):
    """The one thing the core needs from randomness; pass a seeded `random.Random`."""

    def randrange(self, stop: int, /) -> int: ...


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    """Everything the core wants done, in the order the driver must do it.

    1. Persist: install `snapshot` if set (log.reset / state restore), then append `entries`
       (truncating the stored log at `entries[0].base_index` first if that offset is already
       stored), then write `hard_state` if set. When `must_sync`, fsync before step 2. Several
       Readys may share one fsync (group commit), as long as no message of any of them is sent
       before that fsync.
    2. Send `messages` (only after step 1 is durable: a vote or an acknowledgement must never
       outrun the disk, Raft paper Figure 2 "Updated on stable storage before responding").
    3. Apply `committed_entries` (in order; they are durable on a majority) after step 1.
    4. Call `advance(ready)`. After the fsync covering this Ready, call
       `persisted(last_index, last_term)` so a leader can count its own copy toward commit.
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    must_sync: bool
    # The log end this Ready leaves on disk: what to report to `persisted` after the fsync.
    last_index: int
    last_term: int

    def is_empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.committed_entries
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RaftStatistics:
    node_id: int
    role: Role
    term: int
    leader_id: int
    commit_index: int
    applied_index: int
    first_index: int
    last_index: int
    elections_started: int
    elections_won: int
    proposals_accepted: int
    proposals_dropped: int
    entries_committed: int
    messages_sent: int
    snapshots_sent: int
    snapshots_installed: int
    entries_truncated: int
    uncommitted_bytes: int
    # The group is quiet (docs/raft.md, "Quiescence"), and how often it went quiet and woke.
    quiescent: bool = False
    quiesced: int = 0
    woken: int = 0
