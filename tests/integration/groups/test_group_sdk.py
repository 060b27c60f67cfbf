"""Consumer groups through the blocking SDK, the CLI and /metrics, against `broker serve`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
import trio

from client import AdminClient, Consumer, OffsetAndMetadata, Producer, TopicPartition
from client.aio.group import ConsumerRebalanceListener
from client.embedded import EmbeddedBroker
from tests.integration.groups.conftest import wait_for
from tests.unit.server.wire_client import WireClient
from wire import codec
from wire.assignors import Subscription
from wire.error_codes import BrokerError, ErrorCode

CLI = [sys.executable, "-c", "from cli.broker_cli import app; app()"]
FAST = {
    "auto_offset_reset": "earliest",
    "session_timeout_ms": 2_000,
    "heartbeat_interval_ms": 200,
    "max_poll_interval_ms": 10_000,
}


def cli(broker: EmbeddedBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--bootstrap", broker.bootstrap, *args], capture_output=True, text=True, timeout=60
    )


def create_and_fill(
    broker: EmbeddedBroker, topic: str, partitions: int, per_partition: int
) -> None:
    with AdminClient(broker.bootstrap) as admin:
        admin.create_topic(topic, partitions)
    with Producer(broker.bootstrap) as producer:
        for i in range(per_partition):
            for p in range(partitions):
                producer.send(topic, f"{p}-{i}".encode(), partition=p)
        producer.flush()


def drain(consumer: Consumer, count: int, timeout_s: float = 20) -> list[Any]:
    records: list[Any] = []
    wait_for(
        lambda: records.extend(consumer.poll(timeout_ms=100)) or len(records) >= count,
        timeout_s,
        f"{count} records",
    )
    return records


def test_committed_offsets_survive_a_broker_restart(group_broker: EmbeddedBroker) -> None:
    # Goal: commits are records in __consumer_offsets, replayed when the broker starts again.
    create_and_fill(group_broker, "durable", 2, 10)
    with Consumer(group_broker.bootstrap, group_id="keep", **FAST) as consumer:
        consumer.subscribe(["durable"])
        drain(consumer, 20)
        outcomes: list[BaseException | None] = []
        consumer.commit_async(callback=outcomes.append)
        wait_for(lambda: outcomes, 10, "the asynchronous commit")
        assert outcomes == [None]
        committed = consumer.committed([("durable", 0), ("durable", 1)])
    assert committed == {
        TopicPartition("durable", 0): OffsetAndMetadata(10),
        TopicPartition("durable", 1): OffsetAndMetadata(10),
    }
    group_broker.restart()
    with Producer(group_broker.bootstrap) as producer:
        producer.send("durable", b"after", partition=0).result(10)
    with Consumer(group_broker.bootstrap, group_id="keep", **FAST) as consumer:
        assert consumer.committed([("durable", 0), ("durable", 1)]) == committed
        consumer.subscribe(["durable"])
        (record,) = drain(consumer, 1)
        assert (record.partition, record.offset, record.value) == (0, 10, b"after")


class Recorder(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.revoked: list[set[TopicPartition]] = []
        self.assigned: list[set[TopicPartition]] = []

    def on_partitions_revoked(self, partitions: set[TopicPartition]) -> None:
        self.revoked.append(set(partitions))

    def on_partitions_assigned(self, partitions: set[TopicPartition]) -> None:
        self.assigned.append(set(partitions))


def test_cooperative_sticky_revokes_only_what_moves(group_broker: EmbeddedBroker) -> None:
    # Goal: with cooperative-sticky a member that keeps a partition never has it revoked; only
    # the partitions handed to the newcomer are revoked, and the first member consumes throughout.
    create_and_fill(group_broker, "coop", 6, 5)
    options = {**FAST, "assignor": "cooperative-sticky"}
    first_listener = Recorder()
    with Consumer(group_broker.bootstrap, group_id="coop-g", **options) as first:
        first.subscribe(["coop"], listener=first_listener)
        drain(first, 30)
        assert first.assignment() == {TopicPartition("coop", p) for p in range(6)}
        with Consumer(group_broker.bootstrap, group_id="coop-g", **options) as second:
            second.subscribe(["coop"])

            def split() -> bool:
                first.poll(timeout_ms=50)
                second.poll(timeout_ms=50)
                return len(first.assignment()) == 3 and len(second.assignment()) == 3

            wait_for(split, 20, "a 3/3 split")
            kept = first.assignment()
            moved = second.assignment()
            assert not kept & moved
            revoked = set().union(*first_listener.revoked)
            assert revoked == moved  # only what moved; nothing kept was ever revoked
            assert not revoked & kept


def test_auto_commit_never_commits_unreturned_records(group_broker: EmbeddedBroker) -> None:
    # Goal: auto-commit commits only records that poll() returned before the previous poll.
    create_and_fill(group_broker, "auto", 1, 100)
    options = {**FAST, "auto_commit_interval_ms": 50, "max_poll_records": 5}
    with Consumer(group_broker.bootstrap, group_id="auto-g", **options) as consumer:
        consumer.subscribe(["auto"])
        member = consumer._aio._group
        assert member is not None
        first = drain(consumer, 1)
        assert [r.offset for r in first] == [0, 1, 2, 3, 4]

        def auto_commits_ran(count: int) -> Any:
            start = member._next_auto_commit
            seen = [start]

            def check() -> bool:
                if member._next_auto_commit != seen[-1]:
                    seen.append(member._next_auto_commit)
                return len(seen) > count

            return check

        # Records 0-4 were returned by the latest poll only: not committed, however long we wait.
        wait_for(auto_commits_ran(3), 10, "three auto-commit rounds")
        assert consumer.committed(("auto", 0)) in (None, OffsetAndMetadata(0))
        second = consumer.poll(timeout_ms=1000)
        assert [r.offset for r in second] == [5, 6, 7, 8, 9]
        # Entering that poll finished 0-4: offset 5 is committed, and never 10 (not finished).
        wait_for(
            lambda: consumer.committed(("auto", 0)) == OffsetAndMetadata(5),
            10,
            "offset 5 to be auto-committed",
        )
        wait_for(auto_commits_ran(3), 10, "three more auto-commit rounds")
        assert consumer.committed([("auto", 0)]) == {
            TopicPartition("auto", 0): OffsetAndMetadata(5)
        }


def test_max_poll_interval_makes_a_stuck_member_leave(group_broker: EmbeddedBroker) -> None:
    # Goal: a member that stops calling poll() leaves after max_poll_interval_ms and the other
    # member gets every partition; polling again rejoins.
    create_and_fill(group_broker, "stuck", 2, 1)
    options = {**FAST, "max_poll_interval_ms": 1_500}
    with (
        Consumer(group_broker.bootstrap, group_id="stuck-g", **options) as stuck,
        Consumer(group_broker.bootstrap, group_id="stuck-g", **options) as busy,
    ):
        stuck.subscribe(["stuck"])
        busy.subscribe(["stuck"])

        def both_own_one() -> bool:
            stuck.poll(timeout_ms=50)
            busy.poll(timeout_ms=50)
            return len(stuck.assignment()) == 1 and len(busy.assignment()) == 1

        wait_for(both_own_one, 20, "one partition each")

        def busy_owns_both() -> bool:
            busy.poll(timeout_ms=50)
            return len(busy.assignment()) == 2

        # `stuck` stops polling now: after max_poll_interval_ms it leaves.
        wait_for(busy_owns_both, 20, "the busy member to own both")
        assert stuck.assignment() == set()
        # Polling again rejoins: the rebalance revokes one partition from `busy` before `stuck`
        # is handed it, so wait for the split to finish on both sides.
        wait_for(both_own_one, 20, "the stuck member to rejoin and own one partition")


async def _move_the_group_on(broker: EmbeddedBroker, group: str, topic: str, member_id: str) -> int:
    """Over another connection: a member B joins, `member_id` rejoins (its JoinGroup answered
    here, so the group's generation passes the one its consumer knows), then a member C joins.
    The group is left waiting for B, which never rejoins. Returns the new generation."""
    client = await WireClient.connect(broker.host, broker.port, client_id="other")
    metadata = Subscription(topics=(topic,)).encode()

    def join(member: str = "") -> codec.JoinGroupRequest:
        return codec.JoinGroupRequest(
            group_id=group,
            session_timeout_ms=30_000,
            rebalance_timeout_ms=30_000,
            protocols=(codec.JoinGroupProtocol(name="range", metadata=metadata),),
            member_id=member,
        )

    try:
        b_joins = await client.send(join())
        rejoined = await client.request(join(member_id))
        assert rejoined.error is ErrorCode.NONE, rejoined
        b_joined = await client.wait_response(b_joins)
        assert b_joined.generation == rejoined.generation, b_joined
        await client.send(join())  # C: held until B rejoins or the rebalance times out
        response = await client.request(codec.DescribeGroupsRequest(group_ids=(group,)))
        (described,) = response.groups
        assert described.state == "PreparingRebalance", described
        assert len(described.members) == 3, described
        return int(rejoined.generation)
    finally:
        await client.aclose()


def test_a_member_between_generations_still_leaves_on_close(group_broker: EmbeddedBroker) -> None:
    # Goal: a dynamic member that closes while it has a member id but no generation (evicted by
    # ILLEGAL_GENERATION, its rejoin held in a rebalance) still sends LeaveGroup: the coordinator
    # drops it at once, instead of keeping it (and the rebalance waiting for it) until its
    # session or the rebalance times out, 30 s here, well beyond this test's waits.
    create_and_fill(group_broker, "between", 1, 1)
    options = {
        **FAST,
        "session_timeout_ms": 30_000,
        "max_poll_interval_ms": 30_000,  # the rebalance timeout
        # The member's first heartbeat comes 5 s after it joined: the group is moved on before.
        "heartbeat_interval_ms": 5_000,
        "enable_auto_commit": False,
    }
    with (
        AdminClient(group_broker.bootstrap) as admin,
        Consumer(group_broker.bootstrap, group_id="between", **options) as consumer,
    ):
        consumer.subscribe(["between"])
        member = consumer._aio._group
        assert member is not None
        drain(consumer, 1)
        member_id, generation = member.member_id, member.generation
        moved_to = trio.run(_move_the_group_on, group_broker, "between", "between", member_id)
        assert moved_to == generation + 1
        # The member's next heartbeat is answered ILLEGAL_GENERATION: it loses its partition and
        # its generation, keeps its member id, and rejoins; the rejoin waits for B.
        wait_for(lambda: member.generation < 0, 15, "the member to lose its generation")
        assert member.member_id == member_id and consumer.assignment() == set()

        def members() -> set[str]:
            return {m.member_id for m in admin.describe_group("between").members}

        assert member_id in members()
        consumer.close()
        wait_for(lambda: member_id not in members(), 10, "the coordinator to drop the member")
        assert len(members()) == 2  # B and C; the rebalance no longer waits for the member


def test_cli_describe_lag_reset_offsets_and_delete(group_broker: EmbeddedBroker) -> None:
    # Goal: `groups describe` shows committed offset, log end and lag; reset-offsets is refused
    # while the group is active and takes effect once it is empty; the lag is on /metrics.
    create_and_fill(group_broker, "ops", 2, 10)
    with Consumer(group_broker.bootstrap, group_id="ops-g", **FAST) as consumer:
        consumer.subscribe(["ops"])
        drain(consumer, 20)
        consumer.commit({TopicPartition("ops", 0): 4, TopicPartition("ops", 1): 10})
        active = cli(group_broker, "groups", "reset-offsets", "ops-g", "--topic", "ops",
                     "--to-earliest", "--execute")  # fmt: skip
        assert active.returncode == 1
        assert "is active" in active.stderr and len(active.stderr.strip().splitlines()) == 1
        listed = cli(group_broker, "groups", "list", "--json")
        assert {"group": "ops-g", "state": "Stable", "protocol_type": "consumer"} in json.loads(
            listed.stdout
        )
    described = json.loads(cli(group_broker, "groups", "describe", "ops-g", "--json").stdout)
    assert described["state"] == "Empty"
    rows = {o["partition"]: o for o in described["offsets"]}
    assert rows[0]["committed_offset"] == 4 and rows[0]["log_end_offset"] == 10
    assert rows[0]["lag"] == 6 and rows[1]["lag"] == 0
    assert described["total_lag"] == 6
    human = cli(group_broker, "groups", "describe", "ops-g")
    assert human.returncode == 0 and "total lag=6" in human.stdout

    metrics = f"http://{group_broker.metrics_address}/metrics"
    expected = 'broker_consumer_group_lag{group="ops-g",partition="0",topic="ops"} 6.0'
    wait_for(lambda: expected in urllib.request.urlopen(metrics, timeout=5).read().decode(),
             10, "the lag metric")  # fmt: skip
    scraped = urllib.request.urlopen(metrics, timeout=5).read().decode()
    assert (
        'broker_consumer_group_committed_offset{group="ops-g",partition="0",topic="ops"} 4.0'
        in scraped
    )
    assert 'broker_consumer_groups{coordinator_partition="' in scraped  # the cores' statistics()

    dry = cli(group_broker, "groups", "reset-offsets", "ops-g", "--topic", "ops", "--to-offset",
              "2", "--dry-run")  # fmt: skip
    assert dry.returncode == 0
    assert [line.split() for line in dry.stdout.splitlines()[1:]] == [
        ["ops-g", "ops", "0", "4", "2"],
        ["ops-g", "ops", "1", "10", "2"],
    ]
    with AdminClient(group_broker.bootstrap) as admin:
        assert admin.describe_group("ops-g").offsets[0].committed_offset == 4
    done = cli(group_broker, "groups", "reset-offsets", "ops-g", "--topic", "ops", "--to-earliest",
               "--execute")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Consumer(group_broker.bootstrap, group_id="ops-g", **FAST) as consumer:
        consumer.subscribe(["ops"])
        assert len(drain(consumer, 20)) == 20  # everything again, from the reset offsets
    deleted = cli(group_broker, "groups", "delete", "ops-g")
    assert deleted.returncode == 0, deleted.stderr
    missing = cli(group_broker, "groups", "describe", "ops-g")
    assert missing.returncode == 1 and "GROUP_ID_NOT_FOUND" in missing.stderr


def test_clients_may_read_but_not_write_the_offsets_topic(group_broker: EmbeddedBroker) -> None:
    with Producer(group_broker.bootstrap, retries=0) as producer:
        future = producer.send("__consumer_offsets", b"forged", partition=0)
        with pytest.raises(BrokerError) as caught:
            future.result(10)
    assert caught.value.code is ErrorCode.INVALID_TOPIC
    assert "internal" in caught.value.message
    with AdminClient(group_broker.bootstrap) as admin:
        assert "__consumer_offsets" not in admin.list_topics()
        assert admin.describe_topic("__consumer_offsets").partition_count == 8
        with pytest.raises(BrokerError):
            admin.delete_topic("__consumer_offsets")


def test_pattern_subscription_follows_new_topics(group_broker: EmbeddedBroker) -> None:
    # Goal: a compiled pattern subscribes to every matching topic, including ones created later.
    create_and_fill(group_broker, "metrics-a", 1, 3)
    create_and_fill(group_broker, "other", 1, 3)
    with Consumer(
        group_broker.bootstrap, group_id="pattern-g", metadata_max_age_ms=1_000, **FAST
    ) as consumer:
        consumer.subscribe(re.compile(r"metrics-.*"))
        assert {r.topic for r in drain(consumer, 3)} == {"metrics-a"}
        create_and_fill(group_broker, "metrics-b", 1, 3)
        assert {r.topic for r in drain(consumer, 3)} == {"metrics-b"}
        assert consumer.assignment() == {
            TopicPartition("metrics-a", 0),
            TopicPartition("metrics-b", 0),
        }
