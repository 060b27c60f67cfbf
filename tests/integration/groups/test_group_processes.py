"""Consumer groups with real processes: `broker serve` plus consumer processes that we kill."""

from __future__ import annotations

import time
from collections.abc import Callable

from client import AdminClient, Producer
from client.embedded import EmbeddedBroker
from tests.integration.groups.conftest import ConsumerProcess, wait_for

PARTITIONS = 6
SESSION_TIMEOUT_S = 2.0


def produce(broker: EmbeddedBroker, topic: str, per_partition: int) -> set[tuple[int, int]]:
    """Send `per_partition` records to each partition; return every (partition, offset)."""
    produced: set[tuple[int, int]] = set()
    with Producer(broker.bootstrap) as producer:
        futures = [
            producer.send(topic, f"{p}-{i}".encode(), partition=p)
            for i in range(per_partition)
            for p in range(PARTITIONS)
        ]
        producer.flush()
        for future in futures:
            metadata = future.result(10)
            produced.add((metadata.partition, metadata.offset))
    return produced


def balanced(consumers: list[ConsumerProcess]) -> bool:
    owned = [consumer.owned() for consumer in consumers]
    every = sorted(p for parts in owned for p in parts)
    share = PARTITIONS // len(consumers)
    return every == list(range(PARTITIONS)) and all(len(parts) == share for parts in owned)


def test_three_consumers_share_six_partitions_and_survive_a_killed_member(
    group_broker: EmbeddedBroker, spawn_consumer: Callable[..., ConsumerProcess]
) -> None:
    # Goal: each partition is owned by exactly one member; after kill -9 of one member its
    # partitions move to the others within the session timeout, and every record is processed
    # at least once (the union of the ledgers covers everything produced).
    with AdminClient(group_broker.bootstrap) as admin:
        admin.create_topic("events", PARTITIONS)
    produced = produce(group_broker, "events", 50)
    consumers = [
        spawn_consumer(group_broker.bootstrap, "events", "workers", f"c{i}") for i in range(3)
    ]
    wait_for(lambda: balanced(consumers), 30, "three members with two partitions each")
    victim, survivors = consumers[0], consumers[1:]
    victim.kill()
    killed_at = time.monotonic()
    produced |= produce(group_broker, "events", 50)
    wait_for(lambda: balanced(survivors), 20, "the survivors to take over the partitions")
    moved_after_s = time.monotonic() - killed_at
    # Detection takes the session timeout; the rebalance itself a few heartbeats.
    assert moved_after_s < SESSION_TIMEOUT_S + 4.0, moved_after_s

    def processed() -> set[tuple[int, int]]:
        ledger: set[tuple[int, int]] = set()
        for consumer in consumers:
            ledger |= consumer.ledger()
        return ledger

    wait_for(lambda: produced <= processed(), 30, "every produced record to be processed")
    for consumer in survivors:
        assert consumer.stop() == 0


def test_static_member_restarts_without_a_rebalance(
    group_broker: EmbeddedBroker, spawn_consumer: Callable[..., ConsumerProcess]
) -> None:
    # Goal: a static member (group_instance_id) that restarts within its session timeout gets
    # its partitions back and the group's generation does not change.
    with AdminClient(group_broker.bootstrap) as admin:
        admin.create_topic("static", PARTITIONS)
    first = spawn_consumer(group_broker.bootstrap, "static", "g", "a1", instance="alpha")
    other = spawn_consumer(group_broker.bootstrap, "static", "g", "b1", instance="beta")
    wait_for(lambda: balanced([first, other]), 30, "a balanced static group")
    with AdminClient(group_broker.bootstrap) as admin:
        before = admin.describe_group("g")
    owned_before = first.owned()
    assert first.stop() == 0  # static members do not leave on close
    second = spawn_consumer(group_broker.bootstrap, "static", "g", "a2", instance="alpha")
    wait_for(lambda: second.owned() == owned_before, 20, "the restarted member's partitions")
    with AdminClient(group_broker.bootstrap) as admin:
        after = admin.describe_group("g")
    assert after.state == "Stable"
    assert after.generation == before.generation
    assert second.state()["generation"] == before.generation
    assert other.owned() == sorted(set(range(PARTITIONS)) - set(owned_before))
