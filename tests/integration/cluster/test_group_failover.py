"""Consumer groups on three real brokers: the coordinator's broker is killed with SIGKILL; the
group carries on under a new coordinator and no committed offset is lost.

The coordinator of a group is the leader of its `__consumer_offsets` partition (RF 3), so its
commits are Raft-committed on a majority before they are acknowledged, and the new leader replays
them.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import pytest
import trio

from client import AdminClient, Consumer, Producer
from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster import common
from tests.unit.server.wire_client import WireClient
from wire import codec

TOPIC = "work"
GROUP = "workers"
PARTITIONS = 6
WAIT_S = 60.0


@pytest.fixture
def cluster(group_cluster: EmbeddedCluster) -> EmbeddedCluster:
    return group_cluster


wait_for = functools.partial(common.wait_for, timeout_s=WAIT_S)


def _member(bootstrap: str, processed: set[bytes], stop: threading.Event, errors: list) -> None:
    """Process, then commit (at-least-once), until told to stop. A commit that fails (the
    coordinator moving, a rebalance under way) is tried again after the next poll: the group is
    cooperative, so a partition this member keeps has no records to read again, and without a
    retry its offset would stay behind for good (the likely cause of one CI failure, "timed out
    waiting for the first half to be committed": the second member's join can make the first
    one's last commit fail)."""
    try:
        with Consumer(
            bootstrap,
            group_id=GROUP,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=3_000,
            heartbeat_interval_ms=500,
        ) as consumer:
            consumer.subscribe([TOPIC])
            uncommitted = False
            while not stop.is_set():
                records = consumer.poll(timeout_ms=100)
                processed.update(record.value or b"" for record in records)
                uncommitted |= bool(records)
                if uncommitted:
                    # A failed commit only means reprocessing, or committing at the next poll.
                    with contextlib.suppress(Exception):
                        consumer.commit()
                        uncommitted = False
    except BaseException as exc:
        errors.append(exc)


def _committed(admin: AdminClient) -> dict[int, int]:
    try:
        group = admin.describe_group(GROUP)
    except Exception:
        return {}
    return {o.partition: o.committed_offset for o in group.offsets if o.topic == TOPIC}


def _coordinator(cluster: EmbeddedCluster, ask: int) -> int:
    """The group's coordinator as broker `ask` names it (-1: none yet)."""
    node = cluster.node(ask)

    async def find() -> int:
        client = await WireClient.connect(node.host, node.port)
        response = await client.request(codec.FindCoordinatorRequest(key=GROUP))
        await client.aclose()
        return int(response.node_id)

    return trio.run(find)


def test_the_group_survives_its_coordinators_broker_being_killed(cluster: EmbeddedCluster) -> None:
    values = [b"r%d" % i for i in range(1200)]
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    with Producer(cluster.bootstrap, acks="all") as producer:
        for value in values[:600]:
            producer.send(TOPIC, value)
        producer.flush()
    processed: set[bytes] = set()
    stop = threading.Event()
    errors: list[BaseException] = []
    members = [
        threading.Thread(target=_member, args=(cluster.bootstrap, processed, stop, errors))
        for _ in range(2)
    ]
    for member in members:
        member.start()
    try:
        assert not errors, errors
        with AdminClient(cluster.bootstrap) as admin:
            wait_for(lambda: set(values[:600]) <= processed, "the first half to be processed")
            before = wait_for(
                lambda: (c := _committed(admin)) and sum(c.values()) >= 600 and c,
                "the first half to be committed",
            )
            coordinator = wait_for(lambda: max(_coordinator(cluster, 1), 0), "a coordinator")
            # Every broker lists only the groups it coordinates: the SDK asks them all.
            other = next(n for n in cluster.node_ids if n != coordinator)
            with AdminClient(f"{cluster.node(other).host}:{cluster.node(other).port}") as one:
                assert GROUP in [group.group_id for group in one.list_groups()]
            cluster.kill(coordinator)
            survivors = ",".join(
                f"{cluster.node(n).host}:{cluster.node(n).port}"
                for n in cluster.node_ids
                if n != coordinator
            )
            with Producer(survivors, acks="all") as producer:
                for value in values[600:]:
                    producer.send(TOPIC, value)
                producer.flush()
            wait_for(lambda: set(values) <= processed, "every record to be processed")
        with AdminClient(survivors) as admin:
            ask = next(n for n in cluster.node_ids if n != coordinator)
            new_coordinator = wait_for(
                lambda: (n := _coordinator(cluster, ask)) not in (coordinator, -1) and n,
                "a new coordinator",
            )
            after = wait_for(
                lambda: (c := _committed(admin)) and sum(c.values()) >= sum(before.values()) and c,
                "the committed offsets under the new coordinator",
            )
    finally:
        stop.set()
        for member in members:
            member.join(WAIT_S)
    assert not errors, errors
    assert new_coordinator != coordinator
    # No committed offset went back: the new coordinator replayed every acknowledged commit.
    for partition, offset in before.items():
        assert after.get(partition, -1) >= offset, (partition, before, after)
