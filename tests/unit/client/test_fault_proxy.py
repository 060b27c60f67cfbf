"""`FaultProxy` in front of a trio echo server: forwarding, blackholing, healing, cleanup."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from functools import partial

import trio

from client.embedded import open_in_thread
from client.fault_proxy import FaultProxy

WAIT_S = 5.0
# How long a blocked link is watched to show that nothing passes. Absence has no event to wait
# for; a held chunk would otherwise pass within microseconds on loopback.
SILENCE_S = 0.2


class EchoServer:
    """Echoes every byte back; counts connections (accepted, still open) and bytes received."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.received = 0
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self.open += 1
        try:
            async with stream:
                with contextlib.suppress(trio.BrokenResourceError):
                    while data := await stream.receive_some(65536):
                        self.received += len(data)
                        await stream.send_all(data)
        finally:
            self.open -= 1


@contextlib.asynccontextmanager
async def echo_behind_proxy(**options: int) -> AsyncIterator[tuple[EchoServer, FaultProxy]]:
    echo = EchoServer()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo.handle, 0, host="127.0.0.1"))
        echo.port = listeners[0].socket.getsockname()[1]
        async with open_in_thread(FaultProxy(("127.0.0.1", echo.port), **options)) as proxy:
            yield echo, proxy
        nursery.cancel_scope.cancel()


async def connect(proxy: FaultProxy) -> trio.SocketStream:
    return await trio.open_tcp_stream(proxy.host, proxy.port)


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    with trio.fail_after(WAIT_S):
        while len(data) < size:
            chunk = await stream.receive_some(size - len(data))
            assert chunk, "the proxy closed the connection"
            data += chunk
    return data


async def assert_silent(stream: trio.SocketStream) -> None:
    with trio.move_on_after(SILENCE_S):
        data = await stream.receive_some(65536)
        raise AssertionError(f"a blocked proxy let {data!r} through")


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.01)  # poll a counter owned by another thread's loop


async def test_forwards_bytes_both_ways_and_the_end_of_stream() -> None:
    # 1 MiB through 64 KiB chunks: many chunks each way, with TCP flow control in play.
    payload = bytes(range(256)) * 4096
    async with echo_behind_proxy() as (echo, proxy), await connect(proxy) as stream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            assert await receive_exactly(stream, len(payload)) == payload
        await stream.send_eof()
        with trio.fail_after(WAIT_S):
            assert await stream.receive_some(1) == b""  # the echo's close came back through
    assert echo.accepted == 1


async def test_block_holds_traffic_and_new_connections_until_unblock() -> None:
    async with echo_behind_proxy() as (echo, proxy), await connect(proxy) as old:
        await old.send_all(b"before")
        assert await receive_exactly(old, 6) == b"before"

        proxy.block()
        assert proxy.blocked
        await old.send_all(b"during")
        new = await connect(proxy)  # accepted (the kernel answers), never forwarded
        async with new:
            await new.send_all(b"new")
            await assert_silent(old)
            await assert_silent(new)
            assert echo.received == 6 and echo.accepted == 1
            assert proxy.connections == 2

            proxy.unblock()
            assert await receive_exactly(old, 6) == b"during"  # held, then delivered in order
            assert await receive_exactly(new, 3) == b"new"
            assert echo.accepted == 2


async def test_block_holds_the_end_of_stream_too() -> None:
    async with echo_behind_proxy() as (echo, proxy):
        stream = await connect(proxy)
        await stream.send_all(b"x")
        assert await receive_exactly(stream, 1) == b"x"
        proxy.block()
        await stream.aclose()
        await trio.sleep(SILENCE_S)  # an absence: see SILENCE_S
        assert echo.open == 1 and proxy.connections == 1  # the close is held, the echo waits
        proxy.unblock()
        await wait_for(lambda: proxy.connections == 0 and echo.open == 0)  # the close passed


async def test_target_down_closes_the_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        target = unused.getsockname()
    async with open_in_thread(FaultProxy(target)) as proxy, await connect(proxy) as stream:
        with trio.fail_after(WAIT_S):
            assert await stream.receive_some(1) == b""


async def test_connections_beyond_the_limit_are_closed() -> None:
    async with echo_behind_proxy(max_connections=1) as (_, proxy), await connect(proxy) as first:
        await first.send_all(b"ok")
        assert await receive_exactly(first, 2) == b"ok"  # now it counts
        async with await connect(proxy) as second:
            with trio.fail_after(WAIT_S):
                assert await second.receive_some(1) == b""
        await first.send_all(b"still")
        assert await receive_exactly(first, 5) == b"still"


async def test_close_cuts_connections_and_releases_the_port() -> None:
    async with echo_behind_proxy() as (_, proxy):
        stream = await connect(proxy)
        proxy.block()  # even held connections are cut
        await trio.to_thread.run_sync(proxy.close)
        with trio.fail_after(WAIT_S):
            with contextlib.suppress(trio.BrokenResourceError):  # a reset is as good as EOF
                assert await stream.receive_some(1) == b""
        await stream.aclose()
        with socket.socket() as again:
            # SO_REUSEADDR, as every server sets it: the closed connection's TIME_WAIT stays, but
            # binding still fails if anything listens on the port.
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind((proxy.host, proxy.port))
            again.listen()
