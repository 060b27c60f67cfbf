"""`RaftTransport`: one broker's links to its peer brokers, shared by all of its Raft groups.

Shape (etcd's rafthttp stream, redpanda's heartbeat_manager):
- Outbound: one TCP connection per peer, opened by this broker, used only to SEND. Each peer has a
  BOUNDED queue (`peer_queue_messages_max` and `peer_queue_bytes_max`). `send()` never blocks: a
  full queue drops the message and returns False, and the driver tells its core the peer is
  unreachable (etcd's ReportUnreachable). The link reconnects with exponential backoff; messages
  queued when a connection breaks are dropped and reported the same way (Raft retransmits).
- Eager writes: a message for a connected plain-TCP link whose writer has nothing in hand (no
  item queued or handed to it, no partial write under way) is framed and written by `send()`
  itself, with one non-blocking write (wire/eager_io.py); whatever the socket did not take goes
  to the writer task as already-framed bytes, ahead of anything queued later, so a link's frames
  keep their order. The leader's AppendRequests and the followers' answers then leave in the
  driver's own step instead of one scheduler pass later, when the writer task's turn comes (on
  a busy loop that pass is a commit's largest single wait). A failed eager write ends the
  connection as a failed write in the writer does (the groups hear unreachable, the link
  reconnects).
- Heartbeats: Heartbeat and HeartbeatResponse messages are not queued one by one. Per peer, the
  newest one of each group waits in a map, and every `heartbeat_interval_ms` the map becomes ONE
  `raft_heartbeats` frame per peer, whatever the number of groups the two brokers share.
- Inbound: `serve_inbound(stream)` runs a connection the peer opened: handshake (node id must be
  a known peer, cluster id must match), then frames are decoded (strictly, wire.py) and handed to
  the group's endpoint with `deliver_nowait`; a full inbox drops the message (Raft tolerates loss,
  and one slow group must not stall the connection every group shares).
- A protocol error from a peer closes that connection and is logged; the transport stays up.
- Link liveness (what stands in for the heartbeats of quiet groups, docs/raft.md "Quiescence"):
  the heartbeats frame goes to every connected peer every interval, empty if no group has a
  heartbeat to send: one node-level heartbeat per peer link. Any frame from a peer means it is
  alive (`PeerLiveness`); a peer silent for `peer_timeout_ms`, or whose link broke (a killed
  process's sockets close at once), is reported dead to every group (`report_peer_dead`), which
  wakes the quiet groups it leads so that they elect a new leader as usual.

Test hook: `drop_traffic_with(peers)` silently drops everything to and from those peers, as a
network partition does (used to build divergent logs in the integration tests).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Protocol

import trio

from broker.config import MIB, ConfigBase, ConfigError, check_range
from broker.raft import wire
from broker.raft.liveness import PeerLiveness
from broker.raft.messages import Heartbeat, HeartbeatResponse, InstallSnapshot, Message
from wire.eager_io import write_now
from wire.framing import (
    MAX_FRAME_BYTES_DEFAULT,
    NEED_DATA,
    ConnectionState,
    Frame,
    FrameConnection,
    RemoteProtocolError,
    Role,
)

logger = logging.getLogger(__name__)

# Room left in a frame for the msgpack header of a message (its payload is what is large).
_FRAME_HEADROOM_BYTES = 64 * 1024
# Correlation ids on a peer link only number frames (nothing answers them); they wrap at i32.
_CORRELATION_MODULUS = 2**31


@dataclasses.dataclass(frozen=True, slots=True)
class RaftTransportConfig(ConfigBase):
    """Bounds and timings of the broker-to-broker links (every limit named, STYLE §7.5)."""

    # Messages waiting to be written to one peer; beyond it `send` drops and reports unreachable.
    peer_queue_messages_max: int = 1024
    # Bytes (batches, roughly) waiting for one peer: bounds memory when a follower is slow.
    peer_queue_bytes_max: int = 64 * MIB
    # Heartbeats of all groups for one peer are flushed as one frame this often; keep it at the
    # drivers' tick interval so a heartbeat waits at most one tick.
    heartbeat_interval_ms: int = 100
    # A peer heard from by no frame for this long (node heartbeats go every interval) is dead:
    # quiet groups it leads wake and elect. Keep it at the groups' election timeout.
    peer_timeout_ms: int = 1_000
    # Items per heartbeats frame: thousands of shared groups still make bounded headers.
    heartbeats_per_frame_max: int = 10_000
    # Reconnect backoff after a failed connect or a broken link: doubles up to the max.
    reconnect_backoff_initial_ms: int = 50
    reconnect_backoff_max_ms: int = 2_000
    # Connect + handshake must finish within this, or the attempt counts as failed.
    connect_timeout_ms: int = 5_000
    # Bytes of queued frames joined into one write (fewer syscalls under load).
    write_bytes_max: int = 4 * MIB
    # Largest frame accepted or sent on a peer link.
    max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT
    # Bytes asked of the socket per read on an inbound link.
    receive_buffer_bytes: int = 256 * 1024

    def validate(self) -> None:
        check_range("peer_queue_messages_max", self.peer_queue_messages_max, 1)
        check_range("peer_queue_bytes_max", self.peer_queue_bytes_max, 1)
        check_range("heartbeat_interval_ms", self.heartbeat_interval_ms, 1)
        check_range("peer_timeout_ms", self.peer_timeout_ms, 2 * self.heartbeat_interval_ms)
        check_range("heartbeats_per_frame_max", self.heartbeats_per_frame_max, 1)
        check_range("reconnect_backoff_initial_ms", self.reconnect_backoff_initial_ms, 1)
        check_range(
            "reconnect_backoff_max_ms",
            self.reconnect_backoff_max_ms,
            self.reconnect_backoff_initial_ms,
        )
        check_range("connect_timeout_ms", self.connect_timeout_ms, 1)
        check_range("write_bytes_max", self.write_bytes_max, 1)
        check_range("max_frame_bytes", self.max_frame_bytes, 2 * _FRAME_HEADROOM_BYTES)
        check_range("receive_buffer_bytes", self.receive_buffer_bytes, 1024)


class RaftEndpoint(Protocol):
    """What the transport needs from a group's driver (RaftDriver implements it)."""

    def deliver_nowait(self, message: Message) -> bool:
        """Queue an inbound message for the core; False if the inbox is full (dropped)."""
        ...

    def report_unreachable(self, peer: int) -> None: ...

    def report_snapshot_failed(self, peer: int) -> None: ...

    def report_peer_dead(self, peer: int) -> None:
        """The link liveness lost `peer` (wakes a quiet group that depends on it)."""
        ...

    def report_peer_alive(self, peer: int) -> None:
        """The link liveness hears from `peer` again (wakes a leader that went quiet without
        it)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class TransportStatistics:
    node_id: int
    peers_connected: tuple[int, ...]
    frames_sent: int
    frames_received: int
    heartbeat_frames_sent: int
    heartbeats_sent: int
    # Per-group heartbeats (and answers) waiting for their link's next heartbeats frame.
    heartbeats_queued: int
    messages_sent: int
    # Messages framed and written by `send()` itself (module docstring, "Eager writes").
    eager_writes: int
    messages_dropped_queue_full: int
    messages_dropped_link_down: int
    messages_dropped_partitioned: int
    messages_received: int
    messages_dropped_inbox_full: int
    messages_dropped_unknown_group: int
    connections_failed: int
    protocol_errors: int
    peers_alive: tuple[int, ...] = ()
    peers_reported_dead: int = 0


Connector = Callable[[int, str, int], Awaitable[trio.abc.Stream]]


async def _connect_tcp(node_id: int, host: str, port: int) -> trio.abc.Stream:
    return await trio.open_tcp_stream(host, port)


# The queue item that tells a link's writer its pending heartbeats are due.
_HEARTBEATS_DUE = object()


@dataclasses.dataclass(frozen=True, slots=True)
class _Framed:
    """The rest of an eager write the socket did not take: framed bytes for the writer."""

    data: bytes | memoryview
    group: str


class _PeerLink:
    """The outbound side to one peer: bounded queue, pending heartbeats, reconnect loop."""

    def __init__(self, transport: RaftTransport, peer: int, address: tuple[str, int]) -> None:
        self.transport = transport
        self.peer = peer
        self.address = address
        config = transport.config
        self.send_channel, self.receive_channel = trio.open_memory_channel[Any](
            config.peer_queue_messages_max
        )
        self.queued_bytes = 0
        # (group, is_response) -> newest message: a newer heartbeat supersedes an unsent older one.
        self.heartbeats: dict[tuple[str, bool], Heartbeat | HeartbeatResponse] = {}
        self.heartbeats_signalled = False
        self.connected = False
        self._correlation = itertools.count()
        # While a connection is up: its stream and framing, for eager writes (`_write_eagerly`),
        # and the scope that ends it when one fails. A failed write (the writer's or an eager
        # one) leaves the framing in ERROR: no eager write follows it.
        self._stream: trio.SocketStream | None = None
        self._frames: FrameConnection | None = None
        self._connection_scope: trio.CancelScope | None = None
        # Items handed to the channel that the writer has not finished writing (one it received
        # and has not run, or is still writing with `send_all`, counts): an eager write goes
        # only when there are none.
        self._writer_items = 0

    def enqueue(self, group: str, message: Message) -> bool:
        config = self.transport.config
        size = wire.message_size_bytes(message)
        if size > config.max_frame_bytes - _FRAME_HEADROOM_BYTES:
            # Too large for one frame (a huge snapshot): it can never be sent as it is.
            logger.error(
                "node %d: %s for %d is %d bytes, over max_frame_bytes; dropped",
                self.transport.node_id,
                type(message).__name__,
                self.peer,
                size,
            )
            return False
        if self.queued_bytes + size > config.peer_queue_bytes_max:
            return False
        frames = self._frames
        if (
            self._writer_items == 0
            and frames is not None
            and frames.state is not ConnectionState.ERROR
        ):
            self._write_eagerly(group, message, size)
            return True
        try:
            self.send_channel.send_nowait((group, message, size))
        except trio.WouldBlock:
            return False
        self.queued_bytes += size
        self._writer_items += 1
        return True

    def _write_eagerly(self, group: str, message: Message, size: int) -> None:
        """Frame and write `message` now (module docstring, "Eager writes"); the writer holds
        nothing, so nothing queued earlier can be overtaken."""
        stream, frames = self._stream, self._frames
        assert stream is not None and frames is not None
        chunks: list[bytes | memoryview] = []
        self.queued_bytes += size  # `_encode` counts it out again
        self._encode((group, message, size), frames, chunks, [])
        self.transport.counters["eager_writes"] += 1
        try:
            rest = write_now(stream, chunks[0])
        except trio.BrokenResourceError:
            frames.send_failed()
            self.transport.report_unreachable(group, self.peer)
            assert self._connection_scope is not None
            self._connection_scope.cancel()  # the writer stops; the link reconnects
            return
        if rest:
            # The capacity is at least one and the writer holds nothing: there is room.
            self.send_channel.send_nowait(_Framed(rest, group))
            self._writer_items += 1
        else:
            self.transport.counters["frames_sent"] += 1

    def signal_heartbeats(self) -> None:
        # Connected, the frame goes even when empty: it is the node-level heartbeat.
        due = self.connected or bool(self.heartbeats)
        if (
            due
            and not self.heartbeats_signalled
            and self.peer not in self.transport.partitioned_peers
        ):
            try:
                self.send_channel.send_nowait(_HEARTBEATS_DUE)
                self.heartbeats_signalled = True
                self._writer_items += 1
            except trio.WouldBlock:
                pass  # a full queue: the next interval tries again (the peer is slow anyway)

    async def run(self) -> None:
        """Connect, write queued frames until the link breaks, back off, repeat. Runs forever."""
        config = self.transport.config
        backoff_ms = config.reconnect_backoff_initial_ms
        while True:
            try:
                with trio.fail_after(config.connect_timeout_ms / 1000):
                    stream = await self.transport.connector(self.peer, *self.address)
            except (OSError, trio.TooSlowError) as exc:
                logger.debug(
                    "node %d: cannot reach peer %d: %s", self.transport.node_id, self.peer, exc
                )
                self.transport.counters["connections_failed"] += 1
                self._discard_queued()
            else:
                if await self._run_connection(stream):
                    backoff_ms = config.reconnect_backoff_initial_ms
            self.transport.link_lost(self.peer)
            await trio.sleep(backoff_ms / 1000)
            backoff_ms = min(backoff_ms * 2, config.reconnect_backoff_max_ms)

    async def _run_connection(self, stream: trio.abc.Stream) -> bool:
        """One connection's life; True if the handshake succeeded (resets the backoff)."""
        frames = FrameConnection(Role.CLIENT, max_frame_bytes=self.transport.config.max_frame_bytes)
        handshaken = False
        try:
            async with stream:
                with trio.fail_after(self.transport.config.connect_timeout_ms / 1000):
                    await self._handshake(stream, frames)
                handshaken = True
                self.connected = True
                async with trio.open_nursery() as nursery:
                    # The peer never writes after its handshake: a read returning means it closed
                    # (or broke the protocol), and the writer must stop at once.
                    nursery.start_soon(self._watch_for_close, stream, nursery.cancel_scope)
                    self._connection_scope = nursery.cancel_scope
                    if type(stream) is trio.SocketStream:  # TLS keeps its own state: queue
                        self._stream, self._frames = stream, frames
                    await self._write_loop(stream, frames)
        except* (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
        ) as group:
            # (except*: the writer runs in a nursery, which groups its exceptions.)
            logger.info(
                "node %d: link to peer %d broke: %r",
                self.transport.node_id,
                self.peer,
                group.exceptions,
            )
        except* RemoteProtocolError as group:
            self.transport.counters["protocol_errors"] += 1
            logger.warning(
                "node %d: peer %d broke the protocol: %s",
                self.transport.node_id,
                self.peer,
                group.exceptions,
            )
        finally:
            self.connected = False
            self._stream = self._frames = self._connection_scope = None
        self._discard_queued()
        return handshaken

    async def _handshake(self, stream: trio.abc.Stream, frames: FrameConnection) -> None:
        transport = self.transport
        await stream.send_all(
            frames.send(wire.encode_handshake(transport.node_id, transport.cluster_id))
        )
        frame = await _receive_frame(stream, frames, transport.config.receive_buffer_bytes)
        if frame is None:
            raise trio.BrokenResourceError("peer closed during the handshake")
        answer = wire.decode_handshake(frame.header)
        if answer.error:
            raise RemoteProtocolError(f"peer {self.peer} refused the link: {answer.error}")
        if answer.node_id != self.peer or answer.cluster_id != transport.cluster_id:
            raise RemoteProtocolError(
                f"expected node {self.peer} of cluster {transport.cluster_id!r}, reached node "
                f"{answer.node_id} of cluster {answer.cluster_id!r}"
            )

    async def _watch_for_close(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            await stream.receive_some(1)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the writer finds out too, or already has
        finally:
            scope.cancel()

    async def _write_loop(self, stream: trio.abc.Stream, frames: FrameConnection) -> None:
        config = self.transport.config
        while True:
            item = await self.receive_channel.receive()
            chunks: list[bytes | memoryview] = []
            written_groups: list[str] = []
            size = self._encode(item, frames, chunks, written_groups)
            items = 1
            # Join whatever else is already queued into the same write (bounded).
            while size < config.write_bytes_max:
                try:
                    item = self.receive_channel.receive_nowait()
                except trio.WouldBlock:
                    break
                size += self._encode(item, frames, chunks, written_groups)
                items += 1
            try:
                data = b"".join(chunks)
                rest = write_now(stream, data)  # most often all of it: no await
                if rest:
                    await stream.send_all(rest)
            except BaseException:
                # h11's send_failed: the peer may hold half a frame, the stream cannot go on, and
                # these groups' messages may never arrive (nor may an eager write follow).
                frames.send_failed()
                for group in written_groups:
                    self.transport.report_unreachable(group, self.peer)
                raise
            finally:
                self._writer_items -= items
            self.transport.counters["frames_sent"] += len(chunks)

    def _encode(
        self,
        item: Any,
        frames: FrameConnection,
        chunks: list[bytes | memoryview],
        groups: list[str],
    ) -> int:
        if item is _HEARTBEATS_DUE:
            return self._encode_heartbeats(frames, chunks)
        if isinstance(item, _Framed):
            chunks.append(item.data)
            groups.append(item.group)
            return len(item.data)
        group, message, size = item
        self.queued_bytes -= size
        header, payload = wire.encode_message(
            group, message, correlation_id=self._next_correlation()
        )
        # `enqueue` refused anything near the frame bound, so a LocalProtocolError here is a bug.
        data = frames.send(header, payload)
        chunks.append(data)
        groups.append(group)
        self.transport.counters["messages_sent"] += 1
        return len(data)

    def _encode_heartbeats(self, frames: FrameConnection, chunks: list[bytes | memoryview]) -> int:
        self.heartbeats_signalled = False
        pending, self.heartbeats = self.heartbeats, {}
        items = [(group, message) for (group, _), message in pending.items()]
        per_frame = self.transport.config.heartbeats_per_frame_max
        size = 0
        # At least one frame, empty when no group has a heartbeat: the node-level heartbeat.
        for start in range(0, max(len(items), 1), per_frame):
            header = wire.encode_heartbeats(
                self.transport.node_id,
                self.peer,
                items[start : start + per_frame],
                correlation_id=self._next_correlation(),
            )
            data = frames.send(header)
            chunks.append(data)
            size += len(data)
            self.transport.counters["heartbeat_frames_sent"] += 1
        self.transport.counters["heartbeats_sent"] += len(items)
        return size

    def _next_correlation(self) -> int:
        return next(self._correlation) % _CORRELATION_MODULUS

    def _discard_queued(self) -> None:
        # Messages queued for a link that broke are stale by the time it is back: drop them and
        # let each group's core know (it stops pipelining and probes again).
        groups: dict[str, bool] = {}
        while True:
            try:
                item = self.receive_channel.receive_nowait()
            except trio.WouldBlock:
                break
            self._writer_items -= 1
            if item is _HEARTBEATS_DUE:
                continue
            if isinstance(item, _Framed):
                groups.setdefault(item.group, False)
                continue
            group, message, size = item
            self.queued_bytes -= size
            self.transport.counters["messages_dropped_link_down"] += 1
            snapshot = isinstance(message, InstallSnapshot)
            groups[group] = groups.get(group, False) or snapshot
        self.heartbeats.clear()
        self.heartbeats_signalled = False
        for group, snapshot in groups.items():
            self.transport.report_unreachable(group, self.peer, snapshot=snapshot)


class RaftTransport:
    """Peer links of one broker. See the module docstring for the rules."""

    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        peers: dict[int, tuple[str, int]],
        config: RaftTransportConfig | None = None,
        connector: Connector = _connect_tcp,
    ) -> None:
        self.config = config or RaftTransportConfig()
        self.config.validate()
        if not 1 <= len(cluster_id.encode()) <= wire.CLUSTER_ID_BYTES_MAX:
            raise ConfigError("cluster_id", "must be 1 to 255 bytes")
        assert node_id > 0 and node_id not in peers, (node_id, sorted(peers))
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.connector = connector
        self._links = {
            peer: _PeerLink(self, peer, address) for peer, address in sorted(peers.items())
        }
        self._endpoints: dict[str, RaftEndpoint] = {}
        self._partitioned: frozenset[int] = frozenset()
        self.counters: collections.Counter[str] = collections.Counter()
        timeout_ticks = math.ceil(self.config.peer_timeout_ms / self.config.heartbeat_interval_ms)
        self._liveness = PeerLiveness(list(self._links), timeout_ticks=timeout_ticks)
        # Inbound connections open per peer: the link is lost when the last one closes.
        self._inbound: collections.Counter[int] = collections.Counter()
        # Set while `run()` runs: links of peers added later (`add_peer`) start in it.
        self._nursery: trio.Nursery | None = None
        self._link_scopes: dict[int, trio.CancelScope] = {}

    # --- groups ---------------------------------------------------------------------------------

    def register(self, group: str, endpoint: RaftEndpoint) -> None:
        assert group not in self._endpoints, f"group {group!r} is already registered"
        self._endpoints[group] = endpoint

    def unregister(self, group: str, endpoint: RaftEndpoint) -> None:
        if self._endpoints.get(group) is endpoint:
            del self._endpoints[group]

    # --- sending (never blocks) -----------------------------------------------------------------

    def send(self, group: str, message: Message) -> bool:
        """Queue `message` for its target. False: dropped now (the caller reports unreachable).

        A message to a partitioned peer (test hook) is dropped silently and counts as sent, as a
        network that loses packets would.
        """
        link = self._links.get(message.target)
        if link is None:
            return False
        if message.target in self._partitioned:
            self.counters["messages_dropped_partitioned"] += 1
            return True
        if isinstance(message, Heartbeat | HeartbeatResponse):
            link.heartbeats[(group, isinstance(message, HeartbeatResponse))] = message
            return True
        if link.enqueue(group, message):
            return True
        self.counters["messages_dropped_queue_full"] += 1
        return False

    def report_unreachable(self, group: str, peer: int, *, snapshot: bool = False) -> None:
        endpoint = self._endpoints.get(group)
        if endpoint is None:
            return
        endpoint.report_unreachable(peer)
        if snapshot:
            endpoint.report_snapshot_failed(peer)

    # --- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every outbound link and the heartbeat flusher until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for link in self._links.values():
                    nursery.start_soon(self._run_link, link)
                nursery.start_soon(self._flush_heartbeats_forever)
                task_status.started()
        finally:
            self._nursery = None

    async def _run_link(self, link: _PeerLink) -> None:
        with trio.CancelScope() as scope:
            self._link_scopes[link.peer] = scope
            await link.run()

    # --- membership (brokers that join or leave a running cluster, docs/cluster.md) ------------

    def add_peer(self, peer: int, address: tuple[str, int]) -> None:
        """Link to `peer` at `address` from now on, and accept its inbound link. A peer already
        known keeps its address (the one given at start-up may be a proxy in front of it)."""
        assert peer > 0 and peer != self.node_id, peer
        if peer in self._links:
            return
        link = _PeerLink(self, peer, address)
        self._links[peer] = link
        # Quiet groups it leads are woken by the link liveness when it dies: watch it too.
        self._liveness.add(peer)
        if self._nursery is not None:
            self._nursery.start_soon(self._run_link, link)

    def remove_peer(self, peer: int) -> None:
        """Forget `peer` (decommissioned): its link stops, its inbound links are refused."""
        self._links.pop(peer, None)
        self._liveness.remove(peer)
        scope = self._link_scopes.pop(peer, None)
        if scope is not None:
            scope.cancel()

    @property
    def peer_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._links))

    async def _flush_heartbeats_forever(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000
        deadline = trio.current_time() + interval
        while True:
            await trio.sleep_until(deadline)
            # Skip missed intervals rather than bursting: heartbeats only need to be regular.
            deadline += interval * max(1, math.ceil((trio.current_time() - deadline) / interval))
            self.flush_heartbeats()
            for peer in self._liveness.tick():
                self._report_peer_dead(peer, "silent")

    def link_lost(self, peer: int) -> None:
        """A link to or from `peer` broke: it is dead to this broker until heard from again."""
        if self._liveness.link_lost(peer):
            self._report_peer_dead(peer, "link lost")

    def _report_peer_dead(self, peer: int, why: str) -> None:
        self.counters["peers_reported_dead"] += 1
        logger.info(
            "node %d: peer %d is down (%s): waking the groups that depend on it",
            self.node_id,
            peer,
            why,
        )
        for endpoint in list(self._endpoints.values()):
            endpoint.report_peer_dead(peer)

    def _report_peer_alive(self, peer: int) -> None:
        self.counters["peers_reported_alive"] += 1
        logger.info("node %d: peer %d is back: waking the groups it follows", self.node_id, peer)
        for endpoint in list(self._endpoints.values()):
            endpoint.report_peer_alive(peer)

    def flush_heartbeats(self) -> None:
        """Hand every peer's pending heartbeats to its writer (one frame per peer)."""
        for link in self._links.values():
            link.signal_heartbeats()

    async def serve_inbound(
        self,
        stream: trio.abc.Stream,
        *,
        frames: FrameConnection | None = None,
        first_frame: Frame | None = None,
    ) -> None:
        """Run a connection a peer opened to us, until it closes. Never raises for peer faults.

        The broker's client listener calls this with its `FrameConnection` and the handshake frame
        it already read once `wire.is_raft_handshake(first_frame.header)`; a dedicated listener
        (`trio.serve_listeners(transport.serve_inbound, ...)`) passes the stream alone.
        """
        frames = frames or FrameConnection(Role.SERVER, max_frame_bytes=self.config.max_frame_bytes)
        peer = 0
        # The errors are handled inside `async with stream`: counted and logged before the peer
        # sees the connection close.
        async with stream:
            try:
                if first_frame is None:
                    first_frame = await self._receive(stream, frames)
                if first_frame is None:
                    return
                peer = await self._accept_handshake(stream, frames, first_frame)
                if peer:
                    self._inbound[peer] += 1
                    try:
                        await self._read_frames(stream, frames, peer)
                    finally:
                        self._inbound[peer] -= 1
                        if not self._inbound[peer]:
                            self.link_lost(peer)
            except RemoteProtocolError as exc:
                self.counters["protocol_errors"] += 1
                logger.warning("node %d: closing link from peer %d: %s", self.node_id, peer, exc)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                logger.debug("node %d: link from peer %d lost: %r", self.node_id, peer, exc)

    async def _accept_handshake(
        self, stream: trio.abc.Stream, frames: FrameConnection, frame: Frame
    ) -> int:
        """Check the peer's handshake and answer it; the peer's node id, or 0 if refused."""
        hello = wire.decode_handshake(frame.header)
        error = ""
        if hello.cluster_id != self.cluster_id:
            error = f"cluster {hello.cluster_id!r} is not this node's cluster {self.cluster_id!r}"
        elif hello.node_id not in self._links:
            error = f"node {hello.node_id} is not a peer of node {self.node_id}"
        await stream.send_all(
            frames.send(wire.encode_handshake(self.node_id, self.cluster_id, error=error))
        )
        if error:
            self.counters["protocol_errors"] += 1
            logger.warning("node %d: refused a raft link: %s", self.node_id, error)
            return 0
        return hello.node_id

    async def _read_frames(
        self, stream: trio.abc.Stream, frames: FrameConnection, peer: int
    ) -> None:
        while (frame := await self._receive(stream, frames)) is not None:
            self.counters["frames_received"] += 1
            if peer in self._partitioned:
                continue
            if self._liveness.heard_from(peer):
                self._report_peer_alive(peer)
            for group, message in wire.decode_frame(frame.header, frame.payload):
                if message.source != peer or message.target != self.node_id:
                    raise wire.WireFormatError(
                        f"{type(message).__name__} from {message.source} to {message.target} on "
                        f"the link from node {peer} to node {self.node_id}"
                    )
                self._deliver(group, message)

    def _deliver(self, group: str, message: Message) -> None:
        self.counters["messages_received"] += 1
        endpoint = self._endpoints.get(group)
        if endpoint is None:
            self.counters["messages_dropped_unknown_group"] += 1
        elif not endpoint.deliver_nowait(message):
            self.counters["messages_dropped_inbox_full"] += 1

    async def _receive(self, stream: trio.abc.Stream, frames: FrameConnection) -> Frame | None:
        return await _receive_frame(stream, frames, self.config.receive_buffer_bytes)

    # --- test hooks and statistics ----------------------------------------------------------------

    def drop_traffic_with(self, peers: Iterable[int]) -> None:
        """Test hook: silently drop every message to and from `peers` (empty: heal)."""
        self._partitioned = frozenset(peers)

    @property
    def partitioned_peers(self) -> Collection[int]:
        return self._partitioned

    def statistics(self) -> TransportStatistics:
        counters = self.counters
        return TransportStatistics(
            node_id=self.node_id,
            peers_connected=tuple(peer for peer, link in self._links.items() if link.connected),
            frames_sent=counters["frames_sent"],
            frames_received=counters["frames_received"],
            heartbeat_frames_sent=counters["heartbeat_frames_sent"],
            heartbeats_sent=counters["heartbeats_sent"],
            heartbeats_queued=sum(len(link.heartbeats) for link in self._links.values()),
            messages_sent=counters["messages_sent"],
            eager_writes=counters["eager_writes"],
            messages_dropped_queue_full=counters["messages_dropped_queue_full"],
            messages_dropped_link_down=counters["messages_dropped_link_down"],
            messages_dropped_partitioned=counters["messages_dropped_partitioned"],
            messages_received=counters["messages_received"],
            messages_dropped_inbox_full=counters["messages_dropped_inbox_full"],
            messages_dropped_unknown_group=counters["messages_dropped_unknown_group"],
            connections_failed=counters["connections_failed"],
            protocol_errors=counters["protocol_errors"],
            peers_alive=tuple(peer for peer in self._links if self._liveness.is_alive(peer)),
            peers_reported_dead=counters["peers_reported_dead"],
        )


async def _receive_frame(
    stream: trio.abc.Stream, frames: FrameConnection, receive_bytes: int
) -> Frame | None:
    """The next frame from `stream`, or None at end of stream."""
    while True:
        frame = frames.next_frame()
        if frame is not NEED_DATA:
            assert isinstance(frame, Frame)
            return frame
        data = await stream.receive_some(receive_bytes)
        if not data:
            return None
        frames.receive_data(data)
