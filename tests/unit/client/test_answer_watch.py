"""`AnswerWatch` and `BrokerConnection.finish_with`: answers handed to callbacks, exactly once,
with the request timeout kept by one task (client/aio/answers.py); and `finish_with_wait`, which
waits until its callback has run in the reader.

The connection is a real `BrokerConnection` over an in-memory stream; the test plays the broker
with a server-side `FrameConnection`, so it decides when (and whether) each answer comes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from client.aio.answers import AnswerWatch
from wire import codec
from wire.connection import BrokerConnection
from wire.errors import ConnectionLostError, RequestTimedOutError
from wire.framing import NEED_DATA, Frame, FrameConnection, Role

TIMEOUT_S = 5.0


class FakePeer:
    """The broker's end: reads request frames, answers the ones a test asks it to."""

    def __init__(self, stream: trio.StapledStream[Any, Any]) -> None:
        self.stream = stream
        self.frames = FrameConnection(Role.SERVER)

    async def next_request(self) -> Frame:
        while True:
            frame = self.frames.next_frame()
            if frame is not NEED_DATA:
                assert isinstance(frame, Frame)
                return frame
            self.frames.receive_data(await self.stream.receive_some(65536))

    async def answer(self, request: Frame, base_offset: int) -> None:
        response = codec.ProduceResponse(
            partitions=(
                codec.ProducePartitionResult(topic="t", partition=0, base_offset=base_offset),
            )
        )
        header, payload = codec.encode_response(response, correlation_id=request.correlation_id)
        await self.stream.send_all(self.frames.send(header, payload))


@pytest.fixture
async def link(nursery: trio.Nursery) -> AsyncIterator[tuple[BrokerConnection, FakePeer]]:
    client_end, broker_end = trio.testing.memory_stream_pair()
    connection = BrokerConnection(
        client_end, ("127.0.0.1", 9), max_in_flight=2, max_frame_bytes=None
    )
    nursery.start_soon(connection.run_reader)
    peer = FakePeer(broker_end)
    # The connection's first frame is the handshake (framing enforces it).
    hello = codec.encode_request(codec.HandshakeRequest(client_id="t"), correlation_id=0)
    handshake = await connection.start_request(*hello)
    request = await peer.next_request()
    welcome = codec.HandshakeResponse(
        node_id=1, protocol_version=1, apis={}, max_frame_bytes=1 << 20
    )
    await broker_end.send_all(
        peer.frames.send(*codec.encode_response(welcome, correlation_id=request.correlation_id))
    )
    await connection.finish_request(hello[0], handshake, timeout_s=5)
    yield connection, peer
    await connection.aclose()


@pytest.fixture
async def watch(nursery: trio.Nursery) -> AnswerWatch:
    """A running watch (stopped with the test's nursery)."""
    answers = AnswerWatch(TIMEOUT_S)
    nursery.start_soon(answers.run)
    return answers


async def send(connection: BrokerConnection, watch: AnswerWatch, calls: list[Any]) -> None:
    request = codec.ProduceRequest(
        partitions=(codec.ProducePartition(topic="t", partition=0, records=b"x"),), acks=1
    )
    header, payload = codec.encode_request(request, correlation_id=0)
    pending = await connection.start_request(header, payload)
    watch.watch(connection, header, pending, lambda frame, error: calls.append((frame, error)))


def base_offset(frame: Frame) -> int:
    response = codec.decode_response(frame.header, frame.payload)
    assert isinstance(response, codec.ProduceResponse)
    return response.partitions[0].base_offset


async def test_answers_reach_their_callbacks_once_each_and_free_their_slots(
    link: tuple[BrokerConnection, FakePeer], watch: AnswerWatch
) -> None:
    connection, peer = link
    first: list[Any] = []
    second: list[Any] = []
    # Three requests through a connection with two in-flight slots: the third can only be
    # written because the first answer's callback freed its slot.
    await send(connection, watch, first)
    await send(connection, watch, second)
    assert len(watch) == 2
    await peer.answer(await peer.next_request(), base_offset=7)
    await trio.testing.wait_all_tasks_blocked()
    assert first and not second
    third: list[Any] = []
    with trio.fail_after(5):
        await send(connection, watch, third)
    await peer.answer(await peer.next_request(), base_offset=8)
    await peer.answer(await peer.next_request(), base_offset=9)
    await trio.testing.wait_all_tasks_blocked()
    assert [(base_offset(f), e) for f, e in first + second + third] == [
        (7, None),
        (8, None),
        (9, None),
    ]
    assert len(watch) == 0


async def test_an_unanswered_request_times_out_once_and_its_late_answer_is_dropped(
    link: tuple[BrokerConnection, FakePeer], watch: AnswerWatch, autojump_clock: Any
) -> None:
    connection, peer = link
    calls: list[Any] = []
    await send(connection, watch, calls)
    request = await peer.next_request()
    await trio.sleep(TIMEOUT_S - 0.1)  # the (virtual) clock just short of the deadline
    assert not calls
    await trio.sleep(0.2)  # and just past it
    ((frame, error),) = calls
    assert frame is None and isinstance(error, RequestTimedOutError)
    assert "no response to produce" in str(error)
    await peer.answer(request, base_offset=1)  # too late
    await trio.testing.wait_all_tasks_blocked()
    assert len(calls) == 1 and len(watch) == 0
    # Its slot was freed at the timeout: two more fit in the two slots.
    with trio.fail_after(1):
        await send(connection, watch, calls)
        await send(connection, watch, calls)
    assert len(watch) == 2


async def test_a_lost_connection_settles_every_waiting_request_with_its_error(
    link: tuple[BrokerConnection, FakePeer], watch: AnswerWatch
) -> None:
    connection, peer = link
    calls: list[Any] = []
    await send(connection, watch, calls)
    await send(connection, watch, calls)
    await peer.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert [frame for frame, _ in calls] == [None, None]
    assert all(isinstance(error, ConnectionLostError) for _, error in calls)
    assert len(watch) == 0


async def test_finish_with_wait_returns_after_the_callback_ran_in_the_reader(
    link: tuple[BrokerConnection, FakePeer], autojump_clock: Any
) -> None:
    # `BrokerConnection.finish_with_wait` (the consumer's fetch): the callback runs in the
    # reader's task, and the waiter returns after it; with no answer in time, it raises and
    # the late answer's callback never runs.
    connection, peer = link
    request = codec.ProduceRequest(
        partitions=(codec.ProducePartition(topic="t", partition=0, records=b"x"),), acks=1
    )
    calls: list[tuple[str, int]] = []

    def callback(frame: Frame | None, error: BaseException | None) -> None:
        assert frame is not None and error is None
        calls.append((trio.lowlevel.current_task().name, base_offset(frame)))

    async def answer_next(offset: int) -> None:
        await peer.answer(await peer.next_request(), base_offset=offset)

    header, payload = codec.encode_request(request, correlation_id=0)
    pending = await connection.start_request(header, payload)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_next, 4)
        await connection.finish_with_wait(header, pending, callback, timeout_s=TIMEOUT_S)
    assert len(calls) == 1 and calls[0][0].endswith("run_reader") and calls[0][1] == 4

    header, payload = codec.encode_request(request, correlation_id=0)
    pending = await connection.start_request(header, payload)
    late = await peer.next_request()
    with pytest.raises(RequestTimedOutError, match="no response to produce"):
        await connection.finish_with_wait(header, pending, callback, timeout_s=TIMEOUT_S)
    await peer.answer(late, base_offset=5)  # too late: dropped
    await trio.testing.wait_all_tasks_blocked()
    assert len(calls) == 1
    # Both slots are free again: two more requests go out at once.
    with trio.fail_after(1):
        for _ in range(2):
            await connection.start_request(*codec.encode_request(request, correlation_id=0))
