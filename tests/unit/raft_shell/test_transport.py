"""RaftTransport over in-memory streams (autojump clock): routing by group, one heartbeats frame
per peer per interval whatever the group count, bounded queues that drop and report, reconnects,
and the inbound side's handshake and frame checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from broker.raft import wire
from broker.raft.messages import (
    AppendRequest,
    Heartbeat,
    HeartbeatResponse,
    Message,
    TimeoutNow,
    VoteRequest,
    assign_entry,
)
from broker.raft.transport import RaftTransport, RaftTransportConfig
from tests.unit.raft_shell.helpers import record_batch
from wire.framing import FrameConnection, Role

CLUSTER = "unit"
CONFIG = RaftTransportConfig(heartbeat_interval_ms=100, reconnect_backoff_initial_ms=10)


class Endpoint:
    """A group's driver as the transport sees it: records what arrives and what is reported."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.unreachable: list[int] = []
        self.snapshot_failed: list[int] = []
        self.dead_peers: list[int] = []
        self.alive_peers: list[int] = []
        self.accept = True
        self._changed = trio.Event()

    def deliver_nowait(self, message: Message) -> bool:
        if not self.accept:
            return False
        self.received.append(message)
        self._changed.set()
        self._changed = trio.Event()
        return True

    def report_unreachable(self, peer: int) -> None:
        self.unreachable.append(peer)
        self._changed.set()
        self._changed = trio.Event()

    def report_snapshot_failed(self, peer: int) -> None:
        self.snapshot_failed.append(peer)

    def report_peer_dead(self, peer: int) -> None:
        self.dead_peers.append(peer)
        self._changed.set()
        self._changed = trio.Event()

    def report_peer_alive(self, peer: int) -> None:
        self.alive_peers.append(peer)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(10):
            while not predicate():
                await self._changed.wait()


async def _poll_until(predicate: Callable[[], bool]) -> None:
    # Connection state has no change event; under the autojump clock these polls cost no time.
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.001)


def _memory_connector(
    nursery: trio.Nursery, transports: dict[int, RaftTransport], calls: list[int] | None = None
) -> Callable[[int, str, int], Awaitable[trio.abc.Stream]]:
    async def connect(node_id: int, host: str, port: int) -> trio.abc.Stream:
        if calls is not None:
            calls.append(node_id)
        left, right = trio.testing.memory_stream_pair()
        nursery.start_soon(transports[node_id].serve_inbound, right)
        return left

    return connect


def _mesh(
    nursery: trio.Nursery, node_ids: tuple[int, ...], **kwargs: object
) -> dict[int, RaftTransport]:
    transports: dict[int, RaftTransport] = {}
    connector = _memory_connector(nursery, transports)
    for node_id in node_ids:
        peers = {other: ("memory", other) for other in node_ids if other != node_id}
        transports[node_id] = RaftTransport(
            node_id=node_id,
            cluster_id=CLUSTER,
            peers=peers,
            config=RaftTransportConfig(**{**_fields(CONFIG), **kwargs}),  # type: ignore[arg-type]
            connector=connector,
        )
    return transports


def _fields(config: RaftTransportConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


async def test_messages_reach_their_group_on_the_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        transports = _mesh(nursery, (1, 2))
        group_a, group_b = Endpoint(), Endpoint()
        transports[2].register("a", group_a)
        transports[2].register("b", group_b)
        for transport in transports.values():
            await nursery.start(transport.run)
        entry = assign_entry(record_batch(b"payload"), base_index=0, term=1)
        assert transports[1].send("a", VoteRequest(1, 2, 1, -1, 0))
        assert transports[1].send("b", AppendRequest(1, 2, 1, -1, 0, (entry,), -1))
        await group_b.wait_for(lambda: bool(group_b.received))
        assert group_a.received == [VoteRequest(1, 2, 1, -1, 0)]
        assert group_b.received == [AppendRequest(1, 2, 1, -1, 0, (entry,), -1)]
        # Unknown groups are dropped and counted, unknown peers refused at once.
        assert transports[1].send("nope", TimeoutNow(1, 2, 1))
        assert not transports[1].send("a", TimeoutNow(1, 9, 1))
        await trio.testing.wait_all_tasks_blocked()
        assert transports[2].statistics().messages_dropped_unknown_group == 1
        nursery.cancel_scope.cancel()


async def test_heartbeats_of_all_groups_travel_as_one_frame_per_peer_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    groups = [f"t-{n}" for n in range(50)]
    async with trio.open_nursery() as nursery:
        transports = _mesh(nursery, (1, 2, 3))
        endpoints = {(node, group): Endpoint() for node in (2, 3) for group in groups}
        for (node, group), endpoint in endpoints.items():
            transports[node].register(group, endpoint)
        for transport in transports.values():
            await nursery.start(transport.run)
        leader = transports[1]
        for round_number in range(3):
            frames_before = leader.statistics().heartbeat_frames_sent
            sent_before = leader.statistics().frames_sent
            for group in groups:
                for peer in (2, 3):
                    # An older heartbeat of the same group is superseded before it is sent.
                    leader.send(group, Heartbeat(1, peer, 1, round_number - 1))
                    leader.send(group, Heartbeat(1, peer, 1, round_number))
            leader.send(groups[0], HeartbeatResponse(1, 2, 1))
            for endpoint in endpoints.values():
                await endpoint.wait_for(
                    lambda e=endpoint, r=round_number: any(
                        isinstance(m, Heartbeat) and m.commit_index == r for m in e.received
                    )
                )
            await trio.testing.wait_all_tasks_blocked()
            # One frame per peer, and nothing else: 101 heartbeats in 2 frames.
            assert leader.statistics().heartbeat_frames_sent == frames_before + 2
            assert leader.statistics().frames_sent == sent_before + 2
        for endpoint in endpoints.values():
            heartbeats = [m for m in endpoint.received if isinstance(m, Heartbeat)]
            assert [m.commit_index for m in heartbeats] == [0, 1, 2]
        assert leader.statistics().heartbeats_sent == 3 * (2 * 50 + 1)
        nursery.cancel_scope.cancel()


async def test_full_peer_queue_drops_and_the_sender_reports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never_connects(node_id: int, host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError

    transport = RaftTransport(
        node_id=1,
        cluster_id=CLUSTER,
        peers={2: ("memory", 2)},
        config=RaftTransportConfig(
            peer_queue_messages_max=4, peer_queue_bytes_max=10_000, connect_timeout_ms=3_600_000
        ),
        connector=never_connects,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        results = [transport.send("g", TimeoutNow(1, 2, 1)) for _ in range(5)]
        assert results == [True, True, True, True, False]
        assert transport.statistics().messages_dropped_queue_full == 1
        nursery.cancel_scope.cancel()
    # The byte bound: one AppendRequest over peer_queue_bytes_max is refused on its own.
    big = assign_entry(record_batch(b"x" * 20_000), base_index=0, term=1)
    other = RaftTransport(
        node_id=1,
        cluster_id=CLUSTER,
        peers={2: ("memory", 2)},
        config=RaftTransportConfig(peer_queue_bytes_max=10_000),
        connector=never_connects,
    )
    assert not other.send("g", AppendRequest(1, 2, 1, -1, 0, (big,), -1))
    assert other.send("g", TimeoutNow(1, 2, 1))


async def test_a_broken_link_drops_its_queue_reports_and_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []
    server_streams: list[trio.testing.MemoryReceiveStream] = []
    async with trio.open_nursery() as nursery:
        receiver = RaftTransport(node_id=2, cluster_id=CLUSTER, peers={1: ("memory", 1)})
        endpoint_2 = Endpoint()
        receiver.register("g", endpoint_2)

        async def flaky(node_id: int, host: str, port: int) -> trio.abc.Stream:
            attempts.append(node_id)
            if len(attempts) == 1:
                raise OSError("connection refused")
            left, right = trio.testing.memory_stream_pair()
            server_streams.append(right)  # type: ignore[arg-type]
            nursery.start_soon(receiver.serve_inbound, right)
            return left

        sender = RaftTransport(
            node_id=1, cluster_id=CLUSTER, peers={2: ("memory", 2)}, config=CONFIG, connector=flaky
        )
        endpoint_1 = Endpoint()
        sender.register("g", endpoint_1)
        assert sender.send("g", TimeoutNow(1, 2, 1))  # queued before any connection exists
        await nursery.start(sender.run)
        await endpoint_1.wait_for(lambda: endpoint_1.unreachable == [2])
        assert sender.statistics().messages_dropped_link_down == 1
        await _poll_until(lambda: 2 in sender.statistics().peers_connected)
        sender.send("g", TimeoutNow(1, 2, 2))
        await endpoint_2.wait_for(lambda: len(endpoint_2.received) == 1)
        # The peer goes away: the link notices at once (no send needed) and connects again.
        await server_streams[0].aclose()
        await _poll_until(lambda: 2 not in sender.statistics().peers_connected)
        await _poll_until(lambda: len(attempts) == 3 and 2 in sender.statistics().peers_connected)
        sender.send("g", TimeoutNow(1, 2, 3))
        await endpoint_2.wait_for(lambda: len(endpoint_2.received) == 2)
        assert [m.term for m in endpoint_2.received] == [2, 3]
        nursery.cancel_scope.cancel()


async def _raw_client(transport: RaftTransport, nursery: trio.Nursery, node_id: int, cluster: str):  # type: ignore[no-untyped-def]
    left, right = trio.testing.memory_stream_pair()
    nursery.start_soon(transport.serve_inbound, right)
    frames = FrameConnection(Role.CLIENT)
    await left.send_all(frames.send(wire.encode_handshake(node_id, cluster)))
    answer = await _read_frame(left, frames)
    assert answer is not None
    return left, frames, wire.decode_handshake(answer.header)


async def _read_frame(stream: trio.abc.Stream, frames: FrameConnection):  # type: ignore[no-untyped-def]
    from wire.framing import NEED_DATA

    while (frame := frames.next_frame()) is NEED_DATA:
        data = await stream.receive_some(65536)
        if not data:
            return None
        frames.receive_data(data)
    return frame


@pytest.mark.parametrize(("node_id", "cluster"), [(9, CLUSTER), (1, "other-cluster")])
async def test_handshakes_from_unknown_nodes_or_clusters_are_refused(
    autojump_clock: trio.testing.MockClock, node_id: int, cluster: str
) -> None:
    transport = RaftTransport(node_id=2, cluster_id=CLUSTER, peers={1: ("memory", 1)})
    endpoint = Endpoint()
    transport.register("g", endpoint)
    async with trio.open_nursery() as nursery:
        stream, frames, answer = await _raw_client(transport, nursery, node_id, cluster)
        assert answer.node_id == 2 and answer.error
        header, payload = wire.encode_message("g", TimeoutNow(node_id, 2, 1), correlation_id=1)
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(frames.send(header, payload))
            await stream.send_all(frames.send(header, payload))
    assert endpoint.received == []
    assert transport.statistics().protocol_errors == 1


@pytest.mark.parametrize(
    "bad",
    [
        ({"api": "raft", "correlation_id": 1, "group": "g", "type": "bogus", "fields": []}, b""),
        # A message claiming another source than the node that shook hands.
        wire.encode_message("g", TimeoutNow(3, 2, 1), correlation_id=1),
        # ... or addressed to another node.
        wire.encode_message("g", TimeoutNow(1, 3, 1), correlation_id=1),
    ],
)
async def test_a_malformed_frame_closes_only_that_link(
    autojump_clock: trio.testing.MockClock, bad: tuple[dict[str, object], bytes]
) -> None:
    transport = RaftTransport(
        node_id=2, cluster_id=CLUSTER, peers={1: ("memory", 1), 3: ("memory", 3)}
    )
    endpoint = Endpoint()
    transport.register("g", endpoint)
    async with trio.open_nursery() as nursery:
        stream, frames, answer = await _raw_client(transport, nursery, 1, CLUSTER)
        assert answer.error == ""
        good = wire.encode_message("g", TimeoutNow(1, 2, 1), correlation_id=1)
        await stream.send_all(frames.send(*good) + frames.send(*bad))  # type: ignore[arg-type]
        assert await _read_frame(stream, frames) is None  # closed by the transport
        assert endpoint.received == [TimeoutNow(1, 2, 1)]
        assert transport.statistics().protocol_errors == 1
        # The transport still serves other links.
        stream, frames, answer = await _raw_client(transport, nursery, 1, CLUSTER)
        await stream.send_all(frames.send(*wire.encode_message("g", TimeoutNow(1, 2, 5))))
        await endpoint.wait_for(lambda: len(endpoint.received) == 2)
        nursery.cancel_scope.cancel()


async def test_drop_traffic_with_partitions_both_directions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        transports = _mesh(nursery, (1, 2))
        endpoints = {node: Endpoint() for node in (1, 2)}
        for node, transport in transports.items():
            transport.register("g", endpoints[node])
            await nursery.start(transport.run)
        transports[1].drop_traffic_with([2])
        assert transports[1].send("g", TimeoutNow(1, 2, 1))  # silently lost, like a network
        transports[2].send("g", TimeoutNow(2, 1, 1))  # arrives, then is dropped on receipt
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1)  # several heartbeat intervals of virtual time: nothing arrives
        assert endpoints[1].received == endpoints[2].received == []
        transports[1].drop_traffic_with(())
        transports[1].send("g", TimeoutNow(1, 2, 2))
        await endpoints[2].wait_for(lambda: endpoints[2].received == [TimeoutNow(1, 2, 2)])
        nursery.cancel_scope.cancel()


async def test_link_liveness_reports_a_silent_or_disconnected_peer_dead_to_every_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Goal: the node-level heartbeat (an empty heartbeats frame per peer per interval) keeps
    peers alive with no group heartbeating; silence for peer_timeout_ms, or a link that breaks,
    is reported to every group once (it wakes quiet groups, docs/raft.md "Quiescence")."""
    async with trio.open_nursery() as nursery:
        transports = _mesh(nursery, (1, 2, 3), peer_timeout_ms=500)
        endpoints = {(node, group): Endpoint() for node in (1, 2, 3) for group in ("a", "b")}
        for (node, group), endpoint in endpoints.items():
            transports[node].register(group, endpoint)
        for transport in transports.values():
            await nursery.start(transport.run)
        await trio.sleep(3)  # 30 intervals, no group traffic at all
        for node, transport in transports.items():
            statistics = transport.statistics()
            assert statistics.peers_alive == tuple(p for p in (1, 2, 3) if p != node)
            assert statistics.heartbeat_frames_sent >= 2 * 25  # one (empty) frame per peer
        assert all(endpoint.dead_peers == [] for endpoint in endpoints.values())
        # Node 2 goes silent for nodes 1 and 3 (a partition): dead after the timeout, once.
        started = trio.current_time()
        for node in (1, 3):
            transports[node].drop_traffic_with([2])
        await endpoints[(1, "a")].wait_for(lambda: endpoints[(1, "a")].dead_peers == [2])
        assert 0.5 <= trio.current_time() - started <= 0.7
        await trio.sleep(1)
        for node in (1, 3):
            assert endpoints[(node, "a")].dead_peers == endpoints[(node, "b")].dead_peers == [2]
            assert transports[node].statistics().peers_alive == (tuple({1, 3} - {node}))
        assert all(endpoint.alive_peers == [] for endpoint in endpoints.values())
        # The partition heals: node 2 is heard again and reported alive to every group, once.
        for node in (1, 3):
            transports[node].drop_traffic_with([])
        for node in (1, 3):
            for group in ("a", "b"):
                endpoint = endpoints[(node, group)]
                await endpoint.wait_for(lambda endpoint=endpoint: endpoint.alive_peers == [2])
        await trio.sleep(1)
        assert endpoints[(1, "a")].alive_peers == [2]
        nursery.cancel_scope.cancel()


async def test_a_peer_added_at_runtime_is_watched_by_the_link_liveness(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Goal: a broker that joined later (`add_peer`) is watched like the initial peers: when it
    goes silent, every group hears it is dead (else the quiet groups it leads never fail over);
    a removed peer is not reported."""
    async with trio.open_nursery() as nursery:
        transports = _mesh(nursery, (1, 2, 3), peer_timeout_ms=500)
        # Node 1 started before node 3 joined: it knows only node 2.
        transports[1] = RaftTransport(
            node_id=1,
            cluster_id=CLUSTER,
            peers={2: ("memory", 2)},
            config=RaftTransportConfig(**{**_fields(CONFIG), "peer_timeout_ms": 500}),  # type: ignore[arg-type]
            connector=transports[2].connector,
        )
        endpoint = Endpoint()
        transports[1].register("g", endpoint)
        for transport in transports.values():
            await nursery.start(transport.run)
        transports[1].add_peer(3, ("memory", 3))
        await trio.sleep(2)  # four peer timeouts of the mock clock: node 3 must stay alive
        assert transports[1].statistics().peers_alive == (2, 3)
        transports[1].drop_traffic_with([3])
        await endpoint.wait_for(lambda: endpoint.dead_peers == [3])
        transports[1].remove_peer(3)
        transports[1].drop_traffic_with([2])
        await endpoint.wait_for(lambda: endpoint.dead_peers == [3, 2])
        assert transports[1].statistics().peers_alive == ()
        nursery.cancel_scope.cancel()


async def test_a_closed_link_reports_the_peer_dead_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Goal: a killed broker's sockets close, and that alone reports it dead (no timeout)."""
    async with trio.open_nursery() as nursery:
        transports = _mesh(nursery, (1, 2), peer_timeout_ms=60_000)
        endpoint = Endpoint()
        transports[1].register("g", endpoint)
        await nursery.start(transports[1].run)
        async with trio.open_nursery() as peer:
            await peer.start(transports[2].run)
            await trio.sleep(0.5)
            assert transports[1].statistics().frames_received > 0
            started = trio.current_time()
            peer.cancel_scope.cancel()  # the link node 2 opened closes
        await endpoint.wait_for(lambda: endpoint.dead_peers == [2])
        assert trio.current_time() - started < 0.2
        nursery.cancel_scope.cancel()


def test_transport_config_validation_names_the_field() -> None:
    from wire.config_error import ConfigError

    RaftTransportConfig().validate()
    with pytest.raises(ConfigError, match="peer_queue_messages_max"):
        RaftTransportConfig(peer_queue_messages_max=0).validate()
    with pytest.raises(ConfigError, match="reconnect_backoff_max_ms"):
        RaftTransportConfig(
            reconnect_backoff_initial_ms=100, reconnect_backoff_max_ms=10
        ).validate()
