"""The share consumer and the admin client's share group calls against a scripted share
coordinator (no broker, trio's autojump clock): what each request carries, retries when the
coordinator moves, acknowledgements kept across failures, and how their outcomes surface."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
import trio

from client.aio.admin import AdminClient
from client.aio.cluster import Cluster
from client.aio.share_consumer import AcknowledgementStateError, ShareConsumer
from client.errors import ClientError, ConnectionLostError
from client.types import TopicPartition
from wire import codec
from wire.batch import build_batch
from wire.error_codes import BrokerError, ErrorCode

T0 = TopicPartition("t", 0)
COORDINATOR = 7
ACCEPT, RELEASE, REJECT = codec.ACK_ACCEPT, codec.ACK_RELEASE, codec.ACK_REJECT
# An answer that never comes (the caller's cancellation ends the wait).
HANG = object()


class CoordinatorCluster(Cluster):
    """A `Cluster` whose share coordinator (node 7) answers from `answers` in order (an
    exception is raised, HANG never answers); with none left, a ShareFetch long-polls and gets
    nothing, and a ShareAcknowledge succeeds. Every request is kept in `requests`, every
    coordinator lookup counted in `lookups`."""

    def __init__(self, nursery: trio.Nursery, answers: list[Any]) -> None:
        super().__init__(nursery, "127.0.0.1:1", request_timeout_ms=2_000)
        self.answers = answers
        self.requests: list[Any] = []
        self.lookups = 0

    async def find_coordinator(self, key: str, key_type: int = codec.COORDINATOR_KEY_GROUP) -> int:
        assert key_type == codec.COORDINATOR_KEY_SHARE
        self.lookups += 1
        return COORDINATOR

    async def call(
        self, request: Any, node_id: int | None = None, *, extra_timeout_s: float = 0.0
    ) -> Any:
        assert node_id == COORDINATOR
        self.requests.append(request)
        if not self.answers and isinstance(request, codec.ShareAcknowledgeRequest):
            return codec.ShareAcknowledgeResponse(
                partitions=tuple(
                    codec.ShareAcknowledgePartitionResult(topic=p.topic, partition=p.partition)
                    for p in request.acknowledgements
                )
            )
        if not self.answers:
            await trio.sleep(request.max_wait_ms / 1000)
            return codec.ShareFetchResponse()
        answer = self.answers.pop(0)
        if answer is HANG:
            await trio.sleep_forever()
        if isinstance(answer, Exception):
            raise answer
        return answer


class _Scripted:
    """Opens the client on a `CoordinatorCluster` instead of connections."""

    fake: Cluster
    _stack: contextlib.AsyncExitStack | None
    _nursery: trio.Nursery | None
    _cluster_obj: Cluster | None

    async def start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._cluster_obj = self.fake


class ScriptedShareConsumer(_Scripted, ShareConsumer):
    def __init__(self, fake: Cluster, **options: Any) -> None:
        super().__init__("127.0.0.1:1", group_id="g", **options)
        self.fake = fake


class ScriptedAdmin(_Scripted, AdminClient):
    def __init__(self, fake: Cluster) -> None:
        super().__init__("127.0.0.1:1")
        self.fake = fake


def fetched(
    first: int,
    count: int,
    *,
    delivery_count: int = 1,
    acknowledge_error: ErrorCode = ErrorCode.NONE,
) -> codec.ShareFetchResponse:
    """A ShareFetch answer: records [first, first + count) of t/0, all acquired."""
    records = [(1_000 + i, None, b"v%d" % (first + i), None) for i in range(count)]
    partition = codec.ShareFetchPartitionResult(
        topic="t",
        partition=0,
        records=build_batch(records, base_offset=first) if count else b"",
        acquired=(
            (
                codec.AcquiredRange(
                    first_offset=first,
                    last_offset=first + count - 1,
                    delivery_count=delivery_count,
                ),
            )
            if count
            else ()
        ),
        acknowledge_error=acknowledge_error,
        acknowledge_error_message="not acquired by this member"
        if acknowledge_error is not ErrorCode.NONE
        else "",
    )
    return codec.ShareFetchResponse(lock_duration_ms=30_000, partitions=(partition,))


def sent(request: Any) -> list[tuple[str, int, int, int, int, int]]:
    """A request's acknowledgements as (topic, partition, first, last, type, delay) rows."""
    return [
        (p.topic, p.partition, b.first_offset, b.last_offset, b.ack_type, b.delay_ms)
        for p in request.acknowledgements
        for b in p.batches
    ]


@pytest.fixture
def answers() -> list[Any]:
    return []


@pytest.fixture
def cluster(nursery: trio.Nursery, answers: list[Any]) -> CoordinatorCluster:
    return CoordinatorCluster(nursery, answers)


async def test_the_next_poll_carries_the_acknowledgements_as_ranges(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    answers.append(fetched(10, 5, delivery_count=2))
    async with ScriptedShareConsumer(cluster, max_poll_records=50) as consumer:
        consumer.subscribe(["t"])
        records = await consumer.poll()
        assert [(r.offset, r.value, r.delivery_count) for r in records] == [
            (o, b"v%d" % o, 2) for o in range(10, 15)
        ]
        assert consumer.lock_duration_ms == 30_000
        consumer.acknowledge(records[2], "reject")
        consumer.acknowledge(records[3], "release", delay_ms=1_000)
        assert await consumer.poll(timeout_ms=100) == []
    first, second = cluster.requests[:2]
    assert first.topics == ("t",) and first.max_records == 50 and first.acknowledgements == ()
    assert first.member_id == second.member_id == consumer.member_id and len(first.member_id) == 32
    assert sent(second) == [
        ("t", 0, 10, 11, ACCEPT, 0),  # implicit mode: left unacknowledged, so accepted
        ("t", 0, 12, 12, REJECT, 0),
        ("t", 0, 13, 13, RELEASE, 1_000),
        ("t", 0, 14, 14, ACCEPT, 0),
    ]


async def test_explicit_mode_poll_refuses_before_sending_anything(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    answers.append(fetched(0, 2))
    async with ScriptedShareConsumer(cluster, acknowledgement_mode="explicit") as consumer:
        consumer.subscribe(["t"])
        records = await consumer.poll()
        consumer.acknowledge(records[0], "accept")
        with pytest.raises(AcknowledgementStateError, match="t/0@1"):
            await consumer.poll()
        assert len(cluster.requests) == 1
        consumer.acknowledge(records[1], "accept")
        await consumer.poll(timeout_ms=0)
        assert sent(cluster.requests[1]) == [("t", 0, 0, 1, ACCEPT, 0)]


async def test_a_moved_coordinator_is_found_again_and_gets_the_same_acknowledgements(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    answers += [
        fetched(0, 3),
        codec.ShareFetchResponse(error=ErrorCode.NOT_COORDINATOR, error_message="moved"),
        ConnectionLostError("the connection dropped"),
        fetched(3, 1),
    ]
    async with ScriptedShareConsumer(cluster) as consumer:
        consumer.subscribe(["t"])
        await consumer.poll()
        records = await consumer.poll()
    assert [r.offset for r in records] == [3]
    assert cluster.lookups == 3
    retried = cluster.requests[1:4]
    assert [sent(r) for r in retried] == [[("t", 0, 0, 2, ACCEPT, 0)]] * 3


async def test_acknowledgements_of_a_failed_poll_are_sent_by_commit(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    answers += [
        fetched(0, 4),
        codec.ShareFetchResponse(error=ErrorCode.GROUP_MAX_SIZE_REACHED, error_message="full"),
        codec.ShareAcknowledgeResponse(
            partitions=(
                codec.ShareAcknowledgePartitionResult(
                    topic="t",
                    partition=0,
                    error=ErrorCode.INVALID_RECORD_STATE,
                    error_message="the lock expired",
                ),
            )
        ),
    ]
    async with ScriptedShareConsumer(cluster) as consumer:
        consumer.subscribe(["t"])
        await consumer.poll()
        with pytest.raises(BrokerError) as failure:
            await consumer.poll()
        assert failure.value.code is ErrorCode.GROUP_MAX_SIZE_REACHED
        results = await consumer.commit()
        assert await consumer.commit() == {}  # nothing left to send
    commit = cluster.requests[2]
    assert isinstance(commit, codec.ShareAcknowledgeRequest) and not commit.leave
    assert sent(commit) == [("t", 0, 0, 3, ACCEPT, 0)]
    error = results[T0]
    assert isinstance(error, BrokerError) and error.code is ErrorCode.INVALID_RECORD_STATE
    assert "lock expired" in error.message


async def test_acknowledgement_errors_reach_the_callback_or_the_log(
    autojump_clock: trio.testing.MockClock,
    cluster: CoordinatorCluster,
    answers: list[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[dict[TopicPartition, Exception | None]] = []

    async def on_acknowledged(results: dict[TopicPartition, Exception | None]) -> None:
        heard.append(results)

    failed = fetched(0, 0, acknowledge_error=ErrorCode.INVALID_RECORD_STATE)
    answers += [fetched(0, 1), failed, codec.ShareAcknowledgeResponse()]
    async with ScriptedShareConsumer(cluster, on_acknowledged=on_acknowledged) as consumer:
        consumer.subscribe(["t"])
        await consumer.poll()
        await consumer.poll(timeout_ms=0)
    (results,) = heard
    assert isinstance(results[T0], BrokerError)
    assert "not acquired" in str(results[T0])

    answers += [fetched(1, 1), failed]
    async with ScriptedShareConsumer(cluster) as quiet:
        quiet.subscribe(["t"])
        await quiet.poll()
        with caplog.at_level(logging.WARNING, logger="client.share_consumer"):
            await quiet.poll(timeout_ms=0)
    assert any("INVALID_RECORD_STATE" in r.getMessage() for r in caplog.records)


async def test_a_cancelled_request_keeps_its_acknowledgements(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    answers += [fetched(0, 2), HANG]
    async with ScriptedShareConsumer(cluster) as consumer:
        consumer.subscribe(["t"])
        await consumer.poll()
        with trio.move_on_after(1):
            await consumer.poll()
        await consumer.commit()
    assert sent(cluster.requests[1]) == sent(cluster.requests[2]) == [("t", 0, 0, 1, ACCEPT, 0)]
    assert isinstance(cluster.requests[2], codec.ShareAcknowledgeRequest)


async def test_records_of_a_cancelled_poll_are_never_accepted_unseen(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    async def on_acknowledged(results: dict[TopicPartition, Exception | None]) -> None:
        await trio.sleep_forever()  # the poll is cancelled after its answer arrived

    answers += [fetched(0, 1), fetched(1, 2), codec.ShareAcknowledgeResponse()]
    async with ScriptedShareConsumer(cluster, on_acknowledged=on_acknowledged) as consumer:
        consumer.subscribe(["t"])
        first = await consumer.poll()
        with trio.move_on_after(1):
            await consumer.poll()
        with pytest.raises(AcknowledgementStateError, match="not returned"):
            consumer.acknowledge(first[0]._replace(offset=1))
        assert await consumer.commit() == {}  # offsets 1-2 stay the broker's to release
    leave = cluster.requests[-1]
    assert isinstance(leave, codec.ShareAcknowledgeRequest) and leave.leave
    assert sent(leave) == []


async def test_close_sends_the_last_acknowledgements_and_leaves(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    answers += [fetched(5, 3), codec.ShareAcknowledgeResponse()]
    async with ScriptedShareConsumer(cluster) as consumer:
        consumer.subscribe(["t"])
        await consumer.poll()
    leave = cluster.requests[-1]
    assert isinstance(leave, codec.ShareAcknowledgeRequest) and leave.leave
    assert sent(leave) == [("t", 0, 5, 7, ACCEPT, 0)]


async def test_a_consumer_that_never_fetched_sends_nothing_on_close(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster
) -> None:
    async with ScriptedShareConsumer(cluster) as consumer:
        consumer.subscribe(["t"])
    assert cluster.requests == []


async def test_a_partition_error_is_raised_only_when_nothing_was_acquired(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    broken = codec.ShareFetchPartitionResult(
        topic="u", partition=0, error=ErrorCode.UNKNOWN_PARTITION, error_message="no such"
    )
    good = fetched(0, 1)
    answers += [
        codec.ShareFetchResponse(partitions=(*good.partitions, broken)),
        codec.ShareFetchResponse(partitions=(broken,)),
    ]
    async with ScriptedShareConsumer(cluster) as consumer:
        consumer.subscribe(["t", "u"])
        assert [r.offset for r in await consumer.poll()] == [0]
        with pytest.raises(BrokerError, match="u/0: no such"):
            await consumer.poll()


async def test_misuse_is_reported_before_any_request(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster
) -> None:
    async with ScriptedShareConsumer(cluster) as consumer:
        with pytest.raises(ClientError, match="subscribe"):
            await consumer.poll()
        with pytest.raises(TypeError, match=r"subscribe\(\['t'\]\)"):
            consumer.subscribe("t")  # type: ignore[arg-type]
    assert cluster.requests == []


# --- admin ----------------------------------------------------------------------------------------


async def test_alter_group_config_returns_the_effective_configs(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    effective = {"share.delivery.count.limit": 3, "share.auto.offset.reset": "latest"}
    answers += [
        codec.AlterGroupConfigsResponse(error=ErrorCode.COORDINATOR_LOAD_IN_PROGRESS),
        codec.AlterGroupConfigsResponse(configs=effective),
        codec.AlterGroupConfigsResponse(
            error=ErrorCode.INVALID_CONFIG,
            error_message="share.delivery.count.limit: must be in 2..10, got 99",
        ),
    ]
    async with ScriptedAdmin(cluster) as admin:
        got = await admin.alter_group_config(
            "g", {"share.delivery.count.limit": 3}, reset=["share.auto.offset.reset"]
        )
        assert got == effective
        with pytest.raises(BrokerError, match=r"must be in 2\.\.10") as failure:
            await admin.alter_group_config("g", {"share.delivery.count.limit": 99})
    assert failure.value.code is ErrorCode.INVALID_CONFIG
    request = cluster.requests[1]
    assert request.configs == {"share.delivery.count.limit": 3}
    assert request.reset == ("share.auto.offset.reset",)


async def test_describe_share_group_raises_the_groups_own_error(
    autojump_clock: trio.testing.MockClock, cluster: CoordinatorCluster, answers: list[Any]
) -> None:
    group = codec.DescribedShareGroup(group_id="g", state="Stable", dead_letter_writes=4)
    answers += [
        codec.DescribeShareGroupsResponse(
            groups=(codec.DescribedShareGroup(group_id="g", error=ErrorCode.NOT_COORDINATOR),)
        ),
        codec.DescribeShareGroupsResponse(groups=(group,)),
        codec.DescribeShareGroupsResponse(
            groups=(codec.DescribedShareGroup(group_id="c", error=ErrorCode.GROUP_ID_NOT_FOUND),)
        ),
    ]
    async with ScriptedAdmin(cluster) as admin:
        assert await admin.describe_share_group("g") == group
        with pytest.raises(BrokerError) as failure:
            await admin.describe_share_group("c")
    assert failure.value.code is ErrorCode.GROUP_ID_NOT_FOUND
    assert cluster.lookups == 3  # found again after NOT_COORDINATOR
