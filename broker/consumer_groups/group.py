"""The group vocabulary and the in-memory state of one group: states, members, protocols.

Rules: this module holds data and small predicates only; every transition lives in
coordinator.py. Members are kept in join order (a dict), which is deterministic and is what picks a
new leader; static members are indexed by `group_instance_id`. No sets of str are iterated here.
"""

from __future__ import annotations

import dataclasses
import enum

# Part of the group vocabulary, defined with the consumer protocol that both sides share.
from wire.assignors import NO_GENERATION as NO_GENERATION
from wire.assignors import TopicPartition as TopicPartition

# "No member id": a member before its first join, a commit from outside.
NO_MEMBER_ID = ""


class GroupState(enum.Enum):
    """Kafka's classic group states; `value` is the name Kafka's tools print."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclasses.dataclass(frozen=True, slots=True)
class JoinProtocol:
    """One protocol (assignor) a member supports, with its opaque subscription metadata."""

    name: str
    metadata: bytes


@dataclasses.dataclass(slots=True)
class Member:
    """One member of a group, as the coordinator sees it.

    `pending_join`/`pending_sync` hold the request id of a JoinGroup/SyncGroup that waits for the
    rebalance (or a write) to finish; a member with a waiting request cannot time out, because the
    client is blocked on us, not dead.
    """

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: tuple[JoinProtocol, ...]
    assignment: bytes = b""
    pending_join: int | None = None
    pending_sync: int | None = None
    session_deadline_ms: int = 0

    @property
    def protocol_names(self) -> tuple[str, ...]:
        return tuple(protocol.name for protocol in self.protocols)

    def metadata_for(self, protocol_name: str | None) -> bytes:
        """The subscription the member sent for `protocol_name` (b"" if it does not support it)."""
        for protocol in self.protocols:
            if protocol.name == protocol_name:
                return protocol.metadata
        return b""

    def touch(self, now_ms: int) -> None:
        """A sign of life: the session restarts from now."""
        self.session_deadline_ms = now_ms + self.session_timeout_ms

    @property
    def is_waiting(self) -> bool:
        return self.pending_join is not None or self.pending_sync is not None


@dataclasses.dataclass(slots=True)
class Group:
    """The live state of one group: membership, generation, timers and in-flight writes.

    Deadlines are absolute `now_ms` values: `join_deadline_ms` ends PreparingRebalance (the
    rebalance timeout), `delay_deadline_ms` is the initial rebalance delay of a group that was
    Empty, `sync_deadline_ms` bounds CompletingRebalance. `assignment_write` is the token of the
    write carrying the leader's assignment; `deletion_write` the token of the tombstones that made
    the group Dead (it is Dead exactly while that write is pending, and only that write's outcome
    removes or revives it: an earlier write of the group, such as retention's tombstones for a few
    expired offsets, may complete first); `pending_tokens` lists every unreplicated write of this
    group, oldest first.
    """

    group_id: str
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str = ""
    protocol_name: str | None = None
    leader_id: str | None = None
    members: dict[str, Member] = dataclasses.field(default_factory=dict)
    instances: dict[str, str] = dataclasses.field(default_factory=dict)
    state_timestamp_ms: int | None = None
    join_deadline_ms: int | None = None
    delay_deadline_ms: int | None = None
    sync_deadline_ms: int | None = None
    assignment_write: int | None = None
    deletion_write: int | None = None
    pending_tokens: list[int] = dataclasses.field(default_factory=list)

    def add(self, member: Member) -> None:
        assert member.member_id not in self.members, member.member_id
        self.members[member.member_id] = member
        if member.group_instance_id is not None:
            assert member.group_instance_id not in self.instances, member.group_instance_id
            self.instances[member.group_instance_id] = member.member_id

    def remove(self, member_id: str) -> Member:
        member = self.members.pop(member_id)
        if member.group_instance_id is not None:
            assert self.instances[member.group_instance_id] == member_id
            del self.instances[member.group_instance_id]
        if self.leader_id == member_id:
            self.leader_id = None
        return member

    def common_protocols(self, *, excluding: str | None = None) -> list[str] | None:
        """Protocol names every member (but `excluding`) supports, sorted; None if no members."""
        others = [member for member in self.members.values() if member.member_id != excluding]
        if not others:
            return None
        common = set(others[0].protocol_names)
        for member in others[1:]:
            common &= set(member.protocol_names)
        return sorted(common)

    def select_protocol(self) -> str:
        """Each member votes for its most preferred common protocol; most votes wins, then name.

        Kafka's rule: the chosen protocol must be supported by every member, and among those the
        members' preference order decides. Ties break on the name so that the choice is
        deterministic whatever the join order.
        """
        candidates = self.common_protocols()
        assert candidates, f"group {self.group_id} has members without a common protocol"
        votes = dict.fromkeys(candidates, 0)
        for member in self.members.values():
            choice = next(name for name in member.protocol_names if name in votes)
            votes[choice] += 1
        return min(candidates, key=lambda name: (-votes[name], name))

    def rebalance_timeout_ms(self) -> int:
        return max((member.rebalance_timeout_ms for member in self.members.values()), default=0)

    def all_joined(self) -> bool:
        return all(member.pending_join is not None for member in self.members.values())
