"""Eager writes over real loopback TCP: `send()` writes a message itself when the link's writer
holds nothing, and when the socket is full the rest, and everything sent after it, goes through
the writer in the order sent (broker/raft/transport.py, "Eager writes")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from broker.raft.messages import AppendRequest, Message, assign_entry
from broker.raft.transport import RaftTransport, RaftTransportConfig
from tests.unit.raft_shell.helpers import record_batch
from tests.unit.raft_shell.test_transport import Endpoint, _poll_until

CLUSTER = "unit"
CONFIG = RaftTransportConfig(heartbeat_interval_ms=100, reconnect_backoff_initial_ms=10)


class GatedStream(trio.abc.HalfCloseableStream):
    """The receiving end of a socket that reads its first chunk (the handshake), then reads
    nothing until `gate` is set: the sender's socket buffer fills up."""

    def __init__(self, stream: trio.SocketStream, gate: trio.Event) -> None:
        self._stream = stream
        self._gate = gate
        self._reads = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._reads += 1
        if self._reads > 1:
            await self._gate.wait()
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _tcp_connector(
    nursery: trio.Nursery, receiver: RaftTransport, gate: trio.Event
) -> Callable[[int, str, int], Awaitable[trio.abc.Stream]]:
    async def connect(node_id: int, host: str, port: int) -> trio.abc.Stream:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        accepted: list[trio.SocketStream] = []
        got = trio.Event()

        async def accept() -> None:
            stream = await listeners[0].accept()
            accepted.append(stream)
            got.set()

        nursery.start_soon(accept)
        address = listeners[0].socket.getsockname()
        client = await trio.open_tcp_stream(*address[:2])
        await got.wait()
        await listeners[0].aclose()
        nursery.start_soon(receiver.serve_inbound, GatedStream(accepted[0], gate))
        return client

    return connect


def _append(index: int, size: int) -> AppendRequest:
    entry = assign_entry(record_batch(bytes([index % 256]) * size), base_index=index, term=1)
    return AppendRequest(1, 2, 1, index - 1, 1 if index else 0, (entry,), -1)


async def _connected(
    nursery: trio.Nursery, gate: trio.Event
) -> tuple[RaftTransport, RaftTransport, Endpoint]:
    """Node 1's transport linked over loopback TCP to node 2's, whose group "g" is returned;
    node 2 reads past the handshake only once `gate` is set."""
    receiver = RaftTransport(node_id=2, cluster_id=CLUSTER, peers={1: ("tcp", 1)}, config=CONFIG)
    sender = RaftTransport(
        node_id=1,
        cluster_id=CLUSTER,
        peers={2: ("tcp", 2)},
        config=CONFIG,
        connector=_tcp_connector(nursery, receiver, gate),
    )
    group = Endpoint()
    receiver.register("g", group)
    await nursery.start(receiver.run)
    await nursery.start(sender.run)
    await _poll_until(lambda: 2 in sender.statistics().peers_connected)
    return sender, receiver, group


async def test_a_full_socket_hands_the_rest_to_the_writer_and_order_holds() -> None:
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        sender, receiver, group = await _connected(nursery, gate)

        # The writer holds nothing: the first message is written by send() itself, before this
        # task yields.
        first = _append(0, 100)
        assert sender.send("g", first)
        assert sender.statistics().eager_writes == 1
        assert sender.statistics().frames_sent >= 1

        # The peer reads nothing now: ~16 MB cannot all fit in the socket buffers, so one eager
        # write is cut short and the messages after it queue behind its rest.
        sent: list[Message] = [first]
        for index in range(1, 257):
            message = _append(index, 64 * 1024)
            assert sender.send("g", message)
            sent.append(message)
        stats = sender.statistics()
        assert 1 < stats.eager_writes < len(sent), stats

        gate.set()
        await group.wait_for(lambda: len(group.received) >= len(sent))
        assert group.received == sent
        assert receiver.statistics().protocol_errors == 0
        nursery.cancel_scope.cancel()


async def test_a_failed_framing_makes_sends_queue_instead_of_raising() -> None:
    """Between a writer's failed write and the end of its connection (an await of the
    connection's nursery), a sending driver must not frame on the failed framing: `send()`
    would raise into the driver. It queues instead (the queue is dropped and reported when the
    connection ends)."""
    async with trio.open_nursery() as nursery:
        sender, _, _ = await _connected(nursery, trio.Event())
        link = sender._links[2]
        assert link._frames is not None
        link._frames.send_failed()  # as the writer's failure path leaves it
        assert sender.send("g", _append(0, 100))
        assert sender.statistics().eager_writes == 0
        nursery.cancel_scope.cancel()
