"""Raft's vocabulary: entries, hard state, snapshots, configurations and peer messages.

Everything here is a frozen dataclass (or a plain function over bytes) and pure: no I/O, no clock,
no randomness. An `Entry` IS a record batch in the partition-log format (wire/batch.py): its
`leader_epoch` header field is the Raft term, its index is the offset of its LAST record
(`base_offset + last_offset_delta`), and the next entry's base offset is this index + 1. Leader
no-ops and configuration changes are control batches. Indexes therefore have gaps: a batch of 10
records occupies offsets [base, base + 9] and only `base + 9` is an entry index.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

import msgpack

from wire import batch as batch_codec

# The term and index "before the first entry": an empty log matches any AppendEntries whose
# previous index is its start index - 1 (Raft paper §5.3, the consistency check's base case).
TERM_NONE = 0
NODE_NONE = 0


class EntryKind(enum.Enum):
    """What an entry means to Raft itself; NORMAL entries are opaque client data."""

    NORMAL = 0
    NOOP = 1
    CONFIGURATION = 2


@dataclasses.dataclass(frozen=True, slots=True)
class Configuration:
    """The cluster membership: voters decide elections and commits; learners only replicate.

    Membership changes go one voter at a time (Ongaro's thesis §4.1), so any majority of the old
    voters overlaps any majority of the new ones. Node ids are positive integers, kept sorted so
    that iteration order never depends on hashing.
    """

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        assert list(self.voters) == sorted(set(self.voters)), self.voters
        assert list(self.learners) == sorted(set(self.learners)), self.learners
        assert not set(self.voters) & set(self.learners), "a node is a voter or a learner"
        assert all(node > 0 for node in self.voters + self.learners)

    @classmethod
    def of(
        cls, voters: tuple[int, ...] | list[int], learners: tuple[int, ...] | list[int] = ()
    ) -> Configuration:
        return cls(tuple(sorted(voters)), tuple(sorted(learners)))

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters + self.learners))

    def encode(self) -> bytes:
        return msgpack.packb({"voters": list(self.voters), "learners": list(self.learners)})

    @classmethod
    def decode(cls, payload: bytes) -> Configuration:
        fields = msgpack.unpackb(payload)
        return cls.of(fields["voters"], fields["learners"])


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry: one record batch, with the header fields Raft needs decoded once.

    `data` is the whole batch, header included, exactly as the partition log stores it.
    """

    index: int  # offset of the batch's last record
    term: int  # the batch's leader_epoch
    base_index: int  # the batch's base offset
    data: bytes
    # len(data), stored because flow control and Ready sizing read it per entry on the hot path.
    size_bytes: int
    kind: EntryKind = EntryKind.NORMAL
    # For CONFIGURATION entries: the configuration it installs.
    configuration: Configuration | None = None


# attributes (i16) and last_offset_delta (i32) sit next to each other at byte 21 of the header.
_ATTRIBUTES_POSITION = batch_codec.CRC_START
_ATTRIBUTES_AND_DELTA = struct.Struct(">hi")

_CONTROL_KINDS = {
    batch_codec.ControlType.LEADER_NOOP: EntryKind.NOOP,
    batch_codec.ControlType.RAFT_CONFIGURATION: EntryKind.CONFIGURATION,
}


def entry_from_batch(data: bytes) -> Entry:
    """Describe a batch whose offsets and leader epoch are already assigned.

    Only the 61-byte header is decoded, except for control batches, whose single record says
    whether the batch is a leader no-op or a configuration (they are rare and small).
    """
    header = batch_codec.unpack_header(data)
    kind = EntryKind.NORMAL
    configuration = None
    if header.is_control and not header.is_transactional:
        record = batch_codec.decode_records(data, header=header)[0]
        control_type = batch_codec.control_type_of(record)
        kind = _CONTROL_KINDS.get(control_type, EntryKind.NORMAL)
        if kind is EntryKind.CONFIGURATION:
            configuration = Configuration.decode(record.value or b"")
    return Entry(
        index=header.base_offset + header.last_offset_delta,
        term=header.leader_epoch,
        base_index=header.base_offset,
        data=data,
        size_bytes=len(data),
        kind=kind,
        configuration=configuration,
    )


def assign_entry(batch: bytes | bytearray, *, base_index: int, term: int) -> Entry:
    """The leader's half of offset assignment: rewrite base offset and leader epoch in place.

    Both fields sit outside the CRC, so the batch stays valid without re-checksumming (ARCHITECTURE
    §4). Returns the entry the batch has become. The caller has validated the batch (CRC, bounds).
    """
    buffer = bytearray(batch)
    batch_codec.set_base_offset(buffer, 0, base_index)
    batch_codec.set_leader_epoch(buffer, 0, term)
    attributes, last_offset_delta = _ATTRIBUTES_AND_DELTA.unpack_from(buffer, _ATTRIBUTES_POSITION)
    if attributes & batch_codec.ATTR_CONTROL:
        return entry_from_batch(bytes(buffer))
    # The hot path (every client batch): two header fields, no full header decode.
    data = bytes(buffer)
    return Entry(base_index + last_offset_delta, term, base_index, data, len(data))


@dataclasses.dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message of the same Ready leaves (Raft paper Figure 2).

    `commit_index` is not needed for safety (it can be re-learned) but saves replay on restart.
    """

    term: int = TERM_NONE
    vote: int = NODE_NONE
    commit_index: int = -1


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The state covering every entry up to and including `index` (Raft paper §7).

    `data` is opaque to Raft. For a state-machine group (the controller) it is the serialized state;
    for a data partition it is empty and means "reset the log to start at index + 1": the records
    themselves are then fetched from the new start offset by ordinary replication.
    """

    index: int
    term: int
    configuration: Configuration
    data: bytes = b""


# --- messages -------------------------------------------------------------------------------------
# Every message names its source and target node and the sender's current term; a receiver with a
# lower term adopts the higher one first (Raft paper §5.1), except for pre-votes (thesis §9.6).


@dataclasses.dataclass(frozen=True, slots=True)
class VoteRequest:
    source: int
    target: int
    term: int  # for a pre-vote: the term the candidate WOULD campaign in
    last_index: int
    last_term: int
    pre_vote: bool = False
    # Set when a leadership transfer forces the election: voters ignore their leader lease.
    transfer: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class VoteResponse:
    source: int
    target: int
    term: int
    granted: bool
    pre_vote: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class AppendRequest:
    source: int
    target: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit_index: int


@dataclasses.dataclass(frozen=True, slots=True)
class AppendResponse:
    """Success: `match_index` is the last index the follower now holds durably for this leader.

    Rejection: `match_index` is the rejected `prev_index`; `hint_index`/`hint_term` are the fast
    backtracking hint: the follower's last index at or below the leader's `prev_index` whose term is
    at most `prev_term` (etcd's findConflictByTerm), so the leader skips a whole term per round
    trip.
    """

    source: int
    target: int
    term: int
    success: bool
    match_index: int
    hint_index: int = -1
    hint_term: int = TERM_NONE


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    source: int
    target: int
    term: int
    # min(leader commit, follower's match): safe to adopt without a log check.
    commit_index: int
    # The leader's last heartbeat before its group goes quiet (CockroachDB's quiescence): every
    # follower holds the leader's whole log and `commit_index` is its last index. A follower
    # whose term and commit index match stops its election timer and does not answer.
    quiesce: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    source: int
    target: int
    term: int


@dataclasses.dataclass(frozen=True, slots=True)
class InstallSnapshot:
    source: int
    target: int
    term: int
    snapshot: Snapshot


@dataclasses.dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer (thesis §3.10): the target campaigns at once, skipping pre-vote."""

    source: int
    target: int
    term: int


Message = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
)


def describe(message: Message) -> str:
    """A one-line, deterministic rendering used by golden traces and failure reports."""
    head = f"{message.source}->{message.target} {type(message).__name__} term={message.term}"
    if isinstance(message, VoteRequest):
        flags = (" pre" if message.pre_vote else "") + (" transfer" if message.transfer else "")
        return f"{head} last={message.last_index}@{message.last_term}{flags}"
    if isinstance(message, VoteResponse):
        return f"{head} {'granted' if message.granted else 'rejected'}" + (
            " pre" if message.pre_vote else ""
        )
    if isinstance(message, AppendRequest):
        entries = " ".join(f"{e.index}@{e.term}" for e in message.entries)
        return (
            f"{head} prev={message.prev_index}@{message.prev_term} "
            f"commit={message.commit_index} entries=[{entries}]"
        )
    if isinstance(message, AppendResponse):
        if message.success:
            return f"{head} ok match={message.match_index}"
        return (
            f"{head} reject index={message.match_index} "
            f"hint={message.hint_index}@{message.hint_term}"
        )
    if isinstance(message, Heartbeat):
        return f"{head} commit={message.commit_index}" + (" quiesce" if message.quiesce else "")
    if isinstance(message, InstallSnapshot):
        snapshot = message.snapshot
        return f"{head} snapshot={snapshot.index}@{snapshot.term} bytes={len(snapshot.data)}"
    return head
