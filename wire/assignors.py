"""Partition assignors (run by the group leader's client) and the consumer protocol's metadata.

The coordinator never looks inside a subscription: it hands the leader every member's bytes and
distributes the leader's answer. This module defines those bytes (`Subscription`, `Assignment`,
msgpack) and four assignors with Kafka's names and behaviour:
- `range`: per topic, consecutive ranges of partitions over the subscribed members;
- `roundrobin`: all partitions, sorted, dealt in turn to the members subscribed to each;
- `sticky`: balanced (counts differ by at most one when subscriptions are equal), moving as few
  previously owned partitions as possible;
- `cooperative-sticky` (KIP-429): the sticky target, minus every partition that changes owner,
  which is only revoked this round and assigned in the follow-up rebalance, so a partition is
  never owned by two members at once and partitions that stay put are never revoked.
Rules: pure and deterministic; members are ordered by (static instance id, member id) and
partitions by (topic, partition); no set of str is ever iterated.
It lives in `wire` because both sides run it: the client's group leader assigns, the broker
describes groups by decoding these bytes.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgpack

# "No generation": a member before its first join (the coordinator's group vocabulary uses it too).
NO_GENERATION = -1


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    """One partition of one topic; ordered by (topic, partition) so that sorting is total.

    Defined here, where the consumer protocol encodes it, so that the client's group member and
    the broker's coordinator (`broker.consumer_groups.group` re-exports it) share one type.
    """

    topic: str
    partition: int


CONSUMER_PROTOCOL_TYPE = "consumer"
METADATA_VERSION = 0

Assignments = dict[str, tuple[TopicPartition, ...]]


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    """A member's protocol metadata: what it wants, what it owns now, and since which generation."""

    topics: tuple[str, ...]
    owned: tuple[TopicPartition, ...] = ()
    generation: int = NO_GENERATION
    group_instance_id: str | None = None
    user_data: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "v": METADATA_VERSION,
                "topics": list(self.topics),
                "owned": [[tp.topic, tp.partition] for tp in self.owned],
                "generation": self.generation,
                "instance": self.group_instance_id,
                "user_data": self.user_data,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Subscription:
        fields = _unpack(data)
        return cls(
            topics=tuple(fields["topics"]),
            owned=tuple(TopicPartition(topic, partition) for topic, partition in fields["owned"]),
            generation=fields["generation"],
            group_instance_id=fields["instance"],
            user_data=fields["user_data"],
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Assignment:
    """The leader's answer for one member: the partitions it consumes in this generation."""

    partitions: tuple[TopicPartition, ...]
    user_data: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "v": METADATA_VERSION,
                "partitions": [[tp.topic, tp.partition] for tp in self.partitions],
                "user_data": self.user_data,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Assignment:
        if not data:  # a member the leader left out gets empty bytes: no partitions
            return cls(())
        fields = _unpack(data)
        partitions = tuple(TopicPartition(topic, number) for topic, number in fields["partitions"])
        return cls(partitions, fields["user_data"])


def _unpack(data: bytes) -> dict[str, Any]:
    fields = msgpack.unpackb(data)
    if not isinstance(fields, dict) or fields.get("v") != METADATA_VERSION:
        raise ValueError(f"not consumer protocol metadata of version {METADATA_VERSION}: {data!r}")
    return fields


class Assignor(abc.ABC):
    """One partition assignment strategy; `name` is the protocol name sent in JoinGroup."""

    name: ClassVar[str]
    # True for KIP-429 assignors: members keep consuming the partitions they keep.
    cooperative: ClassVar[bool] = False

    @abc.abstractmethod
    def assign(
        self, subscriptions: Mapping[str, Subscription], partition_counts: Mapping[str, int]
    ) -> Assignments:
        """Map every member id to its sorted partitions.

        `partition_counts` maps topic -> number of partitions; subscribed topics missing from it
        are ignored (they do not exist yet). Every member id appears in the result.
        """


def member_order(subscriptions: Mapping[str, Subscription]) -> list[str]:
    """Members sorted static-first by instance id, then by member id.

    Static members sort by their instance id, which survives restarts: a static member that comes
    back with a new member id lands in the same place, so range and round-robin hand it the same
    partitions.
    """

    def key(member_id: str) -> tuple[bool, str, str]:
        instance = subscriptions[member_id].group_instance_id
        return (instance is None, instance or "", member_id)

    return sorted(subscriptions, key=key)


def _topic_partitions(topic: str, partition_counts: Mapping[str, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, number) for number in range(partition_counts.get(topic, 0))]


def _subscribed_topics(subscriptions: Mapping[str, Subscription]) -> list[str]:
    return sorted({topic for sub in subscriptions.values() for topic in sub.topics})


def _finish(assignment: Mapping[str, list[TopicPartition]]) -> Assignments:
    return {member_id: tuple(sorted(parts)) for member_id, parts in sorted(assignment.items())}


class RangeAssignor(Assignor):
    """Kafka's RangeAssignor: for each topic, member i gets a consecutive range of partitions."""

    name = "range"

    def assign(
        self, subscriptions: Mapping[str, Subscription], partition_counts: Mapping[str, int]
    ) -> Assignments:
        ordered = member_order(subscriptions)
        assignment: dict[str, list[TopicPartition]] = {member_id: [] for member_id in ordered}
        for topic in _subscribed_topics(subscriptions):
            members = [m for m in ordered if topic in subscriptions[m].topics]
            partitions = _topic_partitions(topic, partition_counts)
            share, extra = divmod(len(partitions), len(members))
            start = 0
            for index, member_id in enumerate(members):
                length = share + (1 if index < extra else 0)
                assignment[member_id] += partitions[start : start + length]
                start += length
        return _finish(assignment)


class RoundRobinAssignor(Assignor):
    """Kafka's RoundRobinAssignor: deal sorted partitions to members in turn, skipping members
    not subscribed to the partition's topic."""

    name = "roundrobin"

    def assign(
        self, subscriptions: Mapping[str, Subscription], partition_counts: Mapping[str, int]
    ) -> Assignments:
        ordered = member_order(subscriptions)
        assignment: dict[str, list[TopicPartition]] = {member_id: [] for member_id in ordered}
        cursor = 0
        for topic in _subscribed_topics(subscriptions):
            for tp in _topic_partitions(topic, partition_counts):
                # At most one full turn: someone is subscribed to every topic in this list.
                for step in range(len(ordered)):
                    member_id = ordered[(cursor + step) % len(ordered)]
                    if topic in subscriptions[member_id].topics:
                        assignment[member_id].append(tp)
                        cursor = (cursor + step + 1) % len(ordered)
                        break
        return _finish(assignment)


class StickyAssignor(Assignor):
    """Kafka's StickyAssignor: balance first, then keep as many owned partitions as possible."""

    name = "sticky"

    def assign(
        self, subscriptions: Mapping[str, Subscription], partition_counts: Mapping[str, int]
    ) -> Assignments:
        owners = valid_owners(subscriptions, partition_counts)
        return _finish(sticky_target(subscriptions, partition_counts, owners))


class CooperativeStickyAssignor(Assignor):
    """KIP-429: the sticky target without the partitions whose owner changes this round.

    A partition that moves from A to B is left out of B's assignment; A, seeing it missing from
    its own assignment, revokes it and rejoins, and the follow-up rebalance (where A no longer
    claims it) gives it to B. So no partition is ever assigned to a new owner in the rebalance that
    revokes it, and a partition that stays with its owner is never revoked.
    """

    name = "cooperative-sticky"
    cooperative = True

    def assign(
        self, subscriptions: Mapping[str, Subscription], partition_counts: Mapping[str, int]
    ) -> Assignments:
        owners = valid_owners(subscriptions, partition_counts)
        target = sticky_target(subscriptions, partition_counts, owners)
        withheld = {
            member_id: [tp for tp in parts if owners.get(tp, member_id) == member_id]
            for member_id, parts in target.items()
        }
        return _finish(withheld)


def valid_owners(
    subscriptions: Mapping[str, Subscription], partition_counts: Mapping[str, int]
) -> dict[TopicPartition, str]:
    """Who owns each partition now, by the members' own claims.

    A claim counts if the partition exists and the member still subscribes to its topic. When two
    members claim one partition (one of them missed a rebalance), the claim from the highest
    generation wins, then the member that sorts first: Kafka's rule, made deterministic.
    """
    owners: dict[TopicPartition, str] = {}
    for member_id in member_order(subscriptions):
        sub = subscriptions[member_id]
        for tp in sorted(sub.owned):
            if tp.topic not in sub.topics or not 0 <= tp.partition < partition_counts.get(
                tp.topic, 0
            ):
                continue
            holder = owners.get(tp)
            if holder is None or sub.generation > subscriptions[holder].generation:
                owners[tp] = member_id
    return owners


def sticky_target(
    subscriptions: Mapping[str, Subscription],
    partition_counts: Mapping[str, int],
    owners: Mapping[TopicPartition, str],
) -> dict[str, list[TopicPartition]]:
    """The balanced assignment closest to `owners`.

    1. Every member keeps the partitions it validly owns.
    2. Each unowned partition goes to the eligible member with the fewest partitions (partitions
       with the fewest eligible members first, as Kafka does, so that narrow subscriptions are
       served before broad ones take everything).
    3. While some member has two more partitions than another member that could take one of them,
       move one (preferring partitions it did not own before). Each move lowers the sum of
       squared counts by at least 2, so the loop ends; it stops with counts within one of each
       other when subscriptions are equal, and no member drops below floor(partitions / members).
    """
    ordered = member_order(subscriptions)
    rank = {member_id: index for index, member_id in enumerate(ordered)}
    eligible = {
        m: frozenset(t for t in subscriptions[m].topics if t in partition_counts) for m in ordered
    }
    assignment: dict[str, list[TopicPartition]] = {member_id: [] for member_id in ordered}
    for tp, member_id in sorted(owners.items()):
        assignment[member_id].append(tp)
    unowned: list[tuple[int, TopicPartition, list[str]]] = []
    for topic in _subscribed_topics(subscriptions):
        candidates = [m for m in ordered if topic in eligible[m]]
        for tp in _topic_partitions(topic, partition_counts):
            if tp not in owners:
                unowned.append((len(candidates), tp, candidates))
    for _, tp, candidates in sorted(unowned, key=lambda item: (item[0], item[1])):
        target = min(candidates, key=lambda m: (len(assignment[m]), rank[m]))
        assignment[target].append(tp)
    total = sum(len(parts) for parts in assignment.values())
    for _ in range(total * total + 1):
        move = _find_move(assignment, eligible, owners, ordered)
        if move is None:
            return assignment
        tp, source, target = move
        assignment[source].remove(tp)
        assignment[target].append(tp)
    raise AssertionError("sticky balancing did not converge")  # the potential argument above


def _find_move(
    assignment: Mapping[str, list[TopicPartition]],
    eligible: Mapping[str, frozenset[str]],
    owners: Mapping[TopicPartition, str],
    ordered: Sequence[str],
) -> tuple[TopicPartition, str, str] | None:
    """One partition to move from a most-loaded member to a least-loaded one, or None."""
    by_load = sorted(ordered, key=lambda m: len(assignment[m]))
    for source in reversed(by_load):
        for target in by_load:
            if len(assignment[source]) - len(assignment[target]) <= 1:
                break
            movable = sorted(tp for tp in assignment[source] if tp.topic in eligible[target])
            if movable:
                # Give away partitions the source only just received before ones it owned.
                return max(movable, key=lambda tp: (owners.get(tp) != source, tp)), source, target
    return None


ASSIGNORS: dict[str, Assignor] = {
    assignor.name: assignor
    for assignor in (
        RangeAssignor(),
        RoundRobinAssignor(),
        StickyAssignor(),
        CooperativeStickyAssignor(),
    )
}


def assign_encoded(
    protocol_name: str,
    members: Sequence[tuple[str, bytes]],
    partition_counts: Mapping[str, int],
) -> dict[str, bytes]:
    """The leader's job in one call: decode the members' metadata (as JoinGroup returned it),
    run the chosen assignor, and encode each member's assignment for SyncGroup."""
    subscriptions = {member_id: Subscription.decode(metadata) for member_id, metadata in members}
    result = ASSIGNORS[protocol_name].assign(subscriptions, partition_counts)
    return {member_id: Assignment(parts).encode() for member_id, parts in result.items()}
