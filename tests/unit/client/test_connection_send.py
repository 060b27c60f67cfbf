"""BrokerConnection's writes over a real socket: a frame the kernel takes only in part is finished
whole, even when its caller is cancelled meanwhile, and a peer that stops reading fails the write
after WRITE_TIMEOUT_S (the connection is unusable then: the peer may hold half a frame)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from wire import codec, connection
from wire.connection import BrokerConnection
from wire.errors import ConnectionLostError
from wire.framing import NEED_DATA, Frame, FrameConnection, Role

# Far more than a socketpair's send and receive buffers hold, so the write cannot finish at once.
BIG_PAYLOAD = bytes(range(256)) * 16_384  # 4 MiB


async def _socket_connection() -> tuple[BrokerConnection, trio.SocketStream]:
    client_sock, broker_sock = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = BrokerConnection(
        trio.SocketStream(client_sock), ("local", 0), max_in_flight=4, max_frame_bytes=None
    )
    # The connection's first frame is the handshake (framing enforces it); it fits at once.
    hello = codec.HandshakeRequest(client_id="t")
    await conn.start_request(*codec.encode_request(hello, correlation_id=0))
    return conn, trio.SocketStream(broker_sock)


async def _read_frames(stream: trio.SocketStream, count: int) -> list[Frame]:
    frames = FrameConnection(Role.SERVER)
    received: list[Frame] = []
    while len(received) < count:
        frame = frames.next_frame()
        if frame is NEED_DATA:
            frames.receive_data(await stream.receive_some(1 << 16))
        else:
            assert isinstance(frame, Frame)
            received.append(frame)
    return received


def _metadata_request() -> tuple[dict, bytes]:  # type: ignore[type-arg]
    return codec.encode_request(codec.MetadataRequest(topics=None), correlation_id=0)


async def test_a_frame_written_in_part_is_finished_whole_though_its_caller_was_cancelled() -> None:
    conn, broker_end = await _socket_connection()
    header, _ = _metadata_request()
    received: list[Frame] = []
    with trio.fail_after(10):  # a frame cut in half would leave the reader waiting forever
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as caller:

                async def cancel_the_caller_then_read() -> None:
                    await trio.testing.wait_all_tasks_blocked()  # the writer waits: buffers full
                    caller.cancel()
                    received.extend(await _read_frames(broker_end, 3))

                nursery.start_soon(cancel_the_caller_then_read)
                await conn.start_request(dict(header), BIG_PAYLOAD)
                await trio.lowlevel.checkpoint()
            assert caller.cancelled_caught
            # The connection still works: the next frame follows the big one intact.
            assert not conn.closed
            await conn.start_request(*_metadata_request())
    handshake, big, after = received
    assert handshake.header["api"] == codec.HandshakeRequest.API.value
    assert bytes(big.payload) == BIG_PAYLOAD
    assert after.header["correlation_id"] == big.header["correlation_id"] + 1
    await conn.aclose()
    await broker_end.aclose()


async def test_a_peer_that_stops_reading_fails_the_write_after_the_write_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "WRITE_TIMEOUT_S", 0.2)
    conn, broker_end = await _socket_connection()
    header, _ = _metadata_request()
    with trio.fail_after(5):
        with pytest.raises(ConnectionLostError, match=r"write not done within 0\.2 s"):
            await conn.start_request(header, BIG_PAYLOAD)
    assert conn.closed
    with pytest.raises(ConnectionLostError, match="closed"):
        await conn.start_request(*_metadata_request())
    await conn.aclose()
    await broker_end.aclose()
