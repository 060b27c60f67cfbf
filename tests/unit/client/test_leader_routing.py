"""`Cluster.for_leaders` (per-partition requests grouped per leader, retried after metadata
refreshes) and the consumer's offsets over control batches, without a broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio

from client.aio.cluster import Cluster
from client.aio.consumer import Consumer, _Chunk, scan_fetched
from client.errors import BrokerUnavailableError
from client.types import TopicPartition
from wire import codec
from wire.batch import ControlType, build_batch, build_control_batch, set_base_offset
from wire.error_codes import BrokerError, ErrorCode

T0, T1, T2 = (TopicPartition("t", p) for p in range(3))


class ScriptedCluster(Cluster):
    """A `Cluster` whose metadata comes from `self.script` (one leaders list per refresh)."""

    def __init__(self, nursery: trio.Nursery, script: list[list[int]]) -> None:
        super().__init__(nursery, "127.0.0.1:1", request_timeout_ms=2_000)
        self.script = script
        self.refreshes = 0

    async def refresh_metadata(
        self, topics: Sequence[str] | None, *, allow_auto_create: bool = False
    ) -> codec.MetadataResponse:
        leaders = self.script[min(self.refreshes, len(self.script) - 1)]
        self.refreshes += 1
        self.leaders["t"] = list(leaders)
        self.partition_counts["t"] = len(leaders)
        return codec.MetadataResponse(brokers=(), controller_id=1, topics=())


async def test_requests_are_grouped_per_leader(nursery: trio.Nursery) -> None:
    cluster = ScriptedCluster(nursery, [[1, 2, 1]])
    calls: list[tuple[int, list[TopicPartition]]] = []

    async def send(node: int, group: list[TopicPartition]) -> dict[TopicPartition, Any]:
        calls.append((node, group))
        return {tp: tp.partition * 10 for tp in group}

    assert await cluster.for_leaders([T0, T1, T2], send) == {T0: 0, T1: 10, T2: 20}
    assert sorted(calls) == [(1, [T0, T2]), (2, [T1])]


async def test_not_leader_and_dead_brokers_are_retried_after_a_refresh(
    nursery: trio.Nursery,
) -> None:
    # Node 2 is dead, node 1 no longer leads t-0: the next metadata moves both to node 3.
    cluster = ScriptedCluster(nursery, [[1, 2, 1], [3, 3, 1]])
    calls: list[int] = []

    async def send(node: int, group: list[TopicPartition]) -> dict[TopicPartition, Any]:
        calls.append(node)
        if node == 2:
            raise BrokerUnavailableError("127.0.0.1:2", "Connection refused")
        if node == 1:
            return {
                tp: BrokerError(ErrorCode.NOT_LEADER, "moved") if tp == T0 else 7 for tp in group
            }
        return {tp: 3 for tp in group}

    result = await cluster.for_leaders([T0, T1, T2], send, retry_backoff_s=0.001)
    assert result == {T0: 3, T1: 3, T2: 7}
    assert cluster.refreshes == 2 and calls.count(3) == 1


async def test_a_leaderless_partition_waits_for_an_election(nursery: trio.Nursery) -> None:
    cluster = ScriptedCluster(nursery, [[-1], [-1], [2]])

    async def send(node: int, group: list[TopicPartition]) -> dict[TopicPartition, Any]:
        return dict.fromkeys(group, node)

    assert await cluster.for_leaders([T0], send, retry_backoff_s=0.001) == {T0: 2}
    assert cluster.refreshes == 3


async def test_non_retriable_errors_raise_at_once_and_retriable_ones_at_the_deadline(
    nursery: trio.Nursery,
) -> None:
    cluster = ScriptedCluster(nursery, [[1]])

    async def refused(node: int, group: list[TopicPartition]) -> dict[TopicPartition, Any]:
        return dict.fromkeys(group, BrokerError(ErrorCode.UNKNOWN_SERVER_ERROR, "boom"))

    with pytest.raises(BrokerError, match="boom"):
        await cluster.for_leaders([T0], refused)

    async def never_leader(node: int, group: list[TopicPartition]) -> dict[TopicPartition, Any]:
        return dict.fromkeys(group, BrokerError(ErrorCode.NOT_LEADER, "not me"))

    with pytest.raises(BrokerError, match="not me"):
        await cluster.for_leaders([T0], never_leader, timeout_s=0.05, retry_backoff_s=0.001)
    with pytest.raises(BrokerError) as info:
        await cluster.for_leaders([TopicPartition("t", 5)], never_leader)
    assert info.value.code is ErrorCode.UNKNOWN_PARTITION


# --- control batches ------------------------------------------------------------------------------


def at(offset: int, batch: bytes) -> bytes:
    data = bytearray(batch)
    set_base_offset(data, 0, offset)
    return bytes(data)


NOOP = build_control_batch(ControlType.LEADER_NOOP, b"", timestamp_ms=0)


def records(*values: bytes) -> bytes:
    return build_batch([(0, None, v, None) for v in values])


def test_scan_steps_over_control_batches_and_never_moves_back() -> None:
    assert scan_fetched(at(0, NOOP) + at(1, NOOP), 0) == (2, 0)
    assert scan_fetched(at(0, NOOP) + at(1, records(b"a", b"b")) + at(3, NOOP), 0) == (4, 2)
    # A batch wholly below the fetch offset counts nothing and does not move the offset back.
    assert scan_fetched(at(0, records(b"a", b"b")), 5) == (5, 0)


def make_consumer() -> Consumer:
    consumer = Consumer("127.0.0.1:1", auto_offset_reset="earliest")
    consumer.assign([T0])
    consumer._states[T0].fetch_offset = consumer._states[T0].position = 0
    return consumer


def chunk(consumer: Consumer, data: bytes, offset: int) -> _Chunk:
    next_offset, count = scan_fetched(data, offset)
    return _Chunk(T0, consumer._states[T0].epoch, data, offset, next_offset, count)


def test_a_control_only_fetch_moves_the_position() -> None:
    consumer = make_consumer()
    consumer._buffer_chunk(chunk(consumer, at(0, NOOP) + at(1, NOOP), 0))
    assert (consumer._states[T0].fetch_offset, consumer._states[T0].position) == (2, 2)
    assert consumer.poll_nowait() == []


def test_control_batches_behind_unread_records_move_the_position_once_read() -> None:
    consumer = make_consumer()
    consumer._buffer_chunk(chunk(consumer, at(0, records(b"a", b"b")), 0))
    consumer._buffer_chunk(chunk(consumer, at(2, NOOP), 2))
    assert consumer._states[T0].position == 0  # "a" and "b" are not polled yet
    assert [r.value for r in consumer.poll_nowait(max_records=1)] == [b"a"]
    assert consumer._states[T0].position == 1
    assert [(r.offset, r.value) for r in consumer.poll_nowait()] == [(1, b"b")]
    assert consumer._states[T0].position == 3
