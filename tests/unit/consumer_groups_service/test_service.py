"""Goal: the GroupService drives the pure cores correctly inside a real (in-process) broker:
requests reach the right core, writes are durable before they are answered, the partition log
replays after a restart, and shutdown answers waiting requests at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import coordinator_partition
from broker.consumer_groups.service import OFFSETS_TOPIC
from broker.server import Broker
from tests.unit.server.conftest import StartBroker
from tests.unit.server.wire_client import WireClient
from wire import codec
from wire.assignors import Assignment, Subscription
from wire.error_codes import ErrorCode

GROUP_SETTINGS = {"group_initial_rebalance_delay_ms": 0, "group_min_session_timeout_ms": 100}


async def connect(broker: Broker) -> WireClient:
    assert broker.addresses is not None
    return await WireClient.connect(*broker.addresses.listen)


def join_request(group: str, member_id: str = "", **options: Any) -> codec.JoinGroupRequest:
    metadata = Subscription(("t",)).encode()
    return codec.JoinGroupRequest(
        group_id=group,
        session_timeout_ms=options.pop("session_timeout_ms", 10_000),
        member_id=member_id,
        protocols=(codec.JoinGroupProtocol(name="range", metadata=metadata),),
        client_id="test",
        **options,
    )


async def join_alone(client: WireClient, group: str) -> codec.JoinGroupResponse:
    """Join and sync as the only member (assigning t/0 to ourselves)."""
    join = await client.request(join_request(group))
    assert join.error is ErrorCode.NONE, join
    assignment = Assignment((TopicPartition("t", 0),)).encode()
    sync = await client.request(
        codec.SyncGroupRequest(
            group_id=group,
            generation=join.generation,
            member_id=join.member_id,
            assignments=(
                codec.SyncGroupAssignment(member_id=join.member_id, assignment=assignment),
            ),
        )
    )
    assert sync.error is ErrorCode.NONE and sync.assignment == assignment
    return join  # type: ignore[no-any-return]


async def commit(client: WireClient, group: str, join: Any, offset: int) -> Any:
    return await client.request(
        codec.OffsetCommitRequest(
            group_id=group,
            generation=join.generation,
            member_id=join.member_id,
            partitions=(codec.OffsetCommitPartition(topic="t", partition=0, offset=offset),),
        )
    )


async def test_offsets_topic_is_created_and_hidden_from_listings(start_broker: StartBroker) -> None:
    broker = await start_broker(offsets_topic_partitions=3)
    client = await connect(broker)
    everything = await client.request(codec.MetadataRequest())
    assert OFFSETS_TOPIC not in [t.name for t in everything.topics]
    asked = await client.request(codec.MetadataRequest(topics=(OFFSETS_TOPIC,)))
    assert len(asked.topics[0].partitions) == 3
    found = await client.request(codec.FindCoordinatorRequest(key="g"))
    assert found.error is ErrorCode.NONE and found.node_id == 0
    bad = await client.request(codec.FindCoordinatorRequest(key="g", key_type=7))
    assert bad.error is ErrorCode.INVALID_REQUEST
    await client.aclose()


async def test_commits_are_durable_and_replayed_after_a_restart(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = await start_broker(**GROUP_SETTINGS)
    client = await connect(broker)
    join = await join_alone(client, "g")
    # Pipelined commits take effect in arrival order: the last one wins.
    ids = [await client.send(_commit_request("g", join, offset)) for offset in (3, 5, 7)]
    for correlation_id in ids:
        response = await client.wait_response(correlation_id)
        assert response.partitions[0].error is ErrorCode.NONE
    state = broker.context.partitions[(OFFSETS_TOPIC, coordinator_partition("g", 8))]
    # Answered only once durable: the commits are below the flushed offset.
    assert state.log.flushed_offset == state.log.log_end_offset >= 4
    await client.aclose()
    broker.request_stop()
    with trio.fail_after(30):
        await broker.stopped.wait()

    again = await start_broker(**GROUP_SETTINGS)
    client = await connect(again)
    fetched = await client.request(codec.OffsetFetchRequest(group_id="g"))
    assert [(p.topic, p.partition, p.offset) for p in fetched.partitions] == [("t", 0, 7)]
    described = await client.request(codec.DescribeGroupsRequest(group_ids=("g",)))
    group = described.groups[0]
    # The group resumes its generation as Stable with its members (docs: failover).
    assert (group.state, group.generation) == ("Stable", join.generation)
    assert [m.member_id for m in group.members] == [join.member_id]
    # New member ids carry the new coordinator epoch, so they cannot collide with old ones.
    newcomer = await client.request(join_request("other"))
    assert newcomer.member_id.split("-")[1] == "2" and join.member_id.split("-")[1] == "1"
    await client.aclose()


def _commit_request(group: str, join: Any, offset: int) -> codec.OffsetCommitRequest:
    return codec.OffsetCommitRequest(
        group_id=group,
        generation=join.generation,
        member_id=join.member_id,
        partitions=(codec.OffsetCommitPartition(topic="t", partition=0, offset=offset),),
    )


async def test_describe_adds_log_end_offset_and_lag(start_broker: StartBroker) -> None:
    broker = await start_broker(**GROUP_SETTINGS)
    client = await connect(broker)
    await client.create_topic("t", 1, **{"flush.policy": "always"})
    from tests.unit.server.wire_client import make_batch

    assert (await client.produce("t", 0, make_batch([b"x"] * 10))).error is ErrorCode.NONE
    join = await join_alone(client, "g")
    assert (await commit(client, "g", join, 4)).partitions[0].error is ErrorCode.NONE
    described = await client.request(codec.DescribeGroupsRequest(group_ids=("g", "missing")))
    group, missing = described.groups
    (row,) = group.offsets
    assert (row.committed_offset, row.log_end_offset, row.lag) == (4, 10, 6)
    assert row.member_id == join.member_id
    assert missing.error is ErrorCode.GROUP_ID_NOT_FOUND
    listed = await client.request(codec.ListGroupsRequest(states=("Stable",)))
    assert [(g.group_id, g.state) for g in listed.groups] == [("g", "Stable")]
    refused = await client.request(codec.ListGroupsRequest(states=("Nope",)))
    assert isinstance(refused, codec.ErrorResponse)
    assert refused.error is ErrorCode.INVALID_REQUEST
    await client.aclose()


async def test_shutdown_answers_a_waiting_join_at_once(start_broker: StartBroker) -> None:
    broker = await start_broker(**GROUP_SETTINGS)
    first = await connect(broker)
    await join_alone(first, "g")
    second = await connect(broker)
    # The newcomer's join waits for the first member to rejoin (up to the rebalance timeout).
    waiting = await second.send(join_request("g"))
    observer = await connect(broker)
    with trio.fail_after(5):
        while True:  # until the coordinator has the newcomer's join
            described = await observer.request(codec.DescribeGroupsRequest(group_ids=("g",)))
            if described.groups[0].state == "PreparingRebalance":
                break
    await observer.aclose()
    broker.request_stop()
    with trio.fail_after(5):
        response = await second.wait_response(waiting)
    assert response.error is ErrorCode.NOT_COORDINATOR
    await first.aclose()
    await second.aclose()


async def test_delete_groups_and_external_commits(start_broker: StartBroker) -> None:
    broker = await start_broker(**GROUP_SETTINGS)
    client = await connect(broker)
    join = await join_alone(client, "g")
    external = codec.OffsetCommitRequest(
        group_id="g", partitions=(codec.OffsetCommitPartition(topic="t", partition=0, offset=1),)
    )
    refused = await client.request(external)
    assert refused.error is ErrorCode.GROUP_NOT_EMPTY
    busy = await client.request(codec.DeleteGroupsRequest(group_ids=("g",)))
    assert busy.groups[0].error is ErrorCode.GROUP_NOT_EMPTY
    left = await client.request(
        codec.LeaveGroupRequest(
            group_id="g", members=(codec.LeaveGroupMember(member_id=join.member_id),)
        )
    )
    assert left.error is ErrorCode.NONE
    accepted = await client.request(external)
    assert accepted.partitions[0].error is ErrorCode.NONE
    deleted = await client.request(codec.DeleteGroupsRequest(group_ids=("g", "unknown")))
    assert [(g.group_id, g.error) for g in deleted.groups] == [
        ("g", ErrorCode.NONE),
        ("unknown", ErrorCode.GROUP_ID_NOT_FOUND),
    ]
    fetched = await client.request(codec.OffsetFetchRequest(group_id="g"))
    assert fetched.partitions == ()
    await client.aclose()
