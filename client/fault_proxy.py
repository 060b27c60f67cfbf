"""A fault-injecting TCP proxy for tests: forwards a loopback port to a target and can cut the link.

    with FaultProxy(("127.0.0.1", 9092)) as proxy:   # listens on 127.0.0.1:<free port>
        ...connect to proxy.address...
        proxy.block()      # a network partition: nothing passes, in either direction
        proxy.unblock()    # healed: the held bytes flow again, in order

Why `block()` blackholes (accepts and holds) rather than resetting connections:
- A real partition drops packets silently. Neither side gets a RST or a FIN; TCP retransmits, and
  if the partition heals before TCP gives up (minutes), the bytes arrive late but in order. A Raft
  transport must survive exactly that: its failure detector is heartbeats and election timeouts,
  not socket errors, and a link that looks open while nothing passes is where a transport hangs
  (a writer blocked on a full socket, a connect whose handshake never completes). Resetting
  connections would instead hand it an immediate error and a quick reconnect, the easy case that
  killing a broker process already produces.
- So while blocked: established connections stop forwarding in both directions (each direction
  holds at most one chunk, then TCP flow control pushes back on the sender), an end of stream or
  a reset from one side is held too, and new connections are accepted but not connected to the
  target until `unblock()`. Approximation: a dropped SYN would make `connect()` time out; here the
  kernel completes the TCP handshake before we can refuse, so the connect succeeds and the
  application's own handshake is what times out.

Rules:
- The proxy runs its own trio loop in a background thread (`client._loop.LoopThread`), so it works
  the same from synchronous tests and from inside another trio loop. `start()` and `close()` block
  briefly (in trio code prefer `client.embedded.open_in_thread`); `block()` and `unblock()` never
  block and are safe from any thread or trio task.
- Bounded: `chunk_bytes` per direction per connection, at most `max_connections` connections (more
  are closed at once, as a full listen backlog would refuse them).
- `close()` cuts every connection and releases the port.
"""

from __future__ import annotations

import contextlib
from typing import Self

import trio

from client._loop import LoopThread
from client._started import StartedByWith

CHUNK_BYTES_DEFAULT = 64 * 1024
MAX_CONNECTIONS_DEFAULT = 64


class FaultProxy(StartedByWith):
    """Forward `host:port` (default: a free loopback port) to `target`. See the module rules."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_bytes: int = CHUNK_BYTES_DEFAULT,
        max_connections: int = MAX_CONNECTIONS_DEFAULT,
    ) -> None:
        self.target = target
        self.host = host
        self._forwarder = _Forwarder(target, host, port, chunk_bytes, max_connections)
        self._loop = LoopThread(self._forwarder, f"fault-proxy-{target[0]}:{target[1]}")

    @property
    def port(self) -> int:
        """The listening port (0 until started)."""
        return self._forwarder.port

    @property
    def address(self) -> str:
        """`HOST:PORT` to connect to instead of the target."""
        if self.port == 0:
            raise RuntimeError("the proxy is not started")
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted and not yet closed (held ones included)."""
        return self._forwarder.connections

    @property
    def blocked(self) -> bool:
        return self._forwarder.blocked

    def block(self) -> None:
        """Partition: from now on no byte, end of stream or new connection passes (module doc)."""
        self._forwarder.blocked = True

    def unblock(self) -> None:
        """Heal: held bytes and connections go through, in order; new traffic passes again."""
        self._forwarder.blocked = False
        self._loop.call_soon(self._forwarder.open_gate)

    def start(self) -> Self:
        """Bind the listener (raises its `OSError`) and serve in the background thread."""
        self._loop.start()
        return self

    def close(self) -> None:
        """Cut every connection, release the port and end the thread."""
        self._loop.stop()


class _Forwarder:
    """The proxy's trio side; `LoopThread` runs `start()` and `aclose()` in one task of its loop."""

    def __init__(
        self,
        target: tuple[str, int],
        host: str,
        port: int,
        chunk_bytes: int,
        max_connections: int,
    ) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.chunk_bytes = chunk_bytes
        self.max_connections = max_connections
        self.connections = 0
        # Read by the forwarding tasks after each receive, written by any thread: a plain bool is
        # enough, since bytes received after `block()` returns always see it set.
        self.blocked = False
        # Set (and replaced) in the loop thread to wake the tasks held by a block.
        self._gate = trio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._nursery: trio.Nursery | None = None

    async def start(self) -> None:
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except BaseException:
            nursery.cancel_scope.cancel()
            await self._stack.aclose()
            raise
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._serve, listeners)
        self._nursery = nursery

    async def aclose(self) -> None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        await self._stack.aclose()

    def open_gate(self) -> None:
        self._gate.set()
        self._gate = trio.Event()

    async def _wait_unblocked(self) -> None:
        while self.blocked:
            await self._gate.wait()

    async def _serve(self, client: trio.SocketStream) -> None:
        async with client:
            if self.connections >= self.max_connections:
                return
            self.connections += 1
            try:
                await self._wait_unblocked()
                try:
                    upstream = await trio.open_tcp_stream(*self.target)
                except OSError:
                    return  # the target is down: close, as a refused connect would
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
            finally:
                self.connections -= 1

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, link: trio.CancelScope
    ) -> None:
        """Copy one direction, one chunk at a time; whatever arrives while blocked waits."""
        try:
            while data := await source.receive_some(self.chunk_bytes):
                await self._wait_unblocked()
                await sink.send_all(data)
            await self._wait_unblocked()
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # A reset on either side closes both, once no block holds the news.
            await self._wait_unblocked()
            link.cancel()
