"""A tiny in-process broker speaking the real wire protocol, for client tests that need control.

It keeps each partition as a list of batches in memory and can be told to fail requests
(`fail_produce`: a queue of ErrorCodes answered before appending), which the real broker cannot.
Only the parts of each API that the client uses are implemented.
"""

from __future__ import annotations

import collections
from typing import Any

import trio

from broker import codec
from broker.errors import ErrorCode
from broker.log.batch import ControlType, build_control_batch, iter_batches, set_base_offset
from broker.protocol import NEED_DATA, Frame, FrameConnection, Role


class FakeBroker:
    """One fake broker. Several make a fake cluster: give them the same `leaders` dict
    ({(topic, partition): node id}, -1 for none; missing means this broker) and `peers` (every
    broker, listed in metadata). A broker that does not lead a partition answers NOT_LEADER for
    produce, fetch and list offsets, as the real one does. `kill()` stops serving and cuts every
    connection (a SIGKILL as the client sees it)."""

    def __init__(
        self,
        node_id: int = 1,
        *,
        leaders: dict[tuple[str, int], int] | None = None,
        peers: list[FakeBroker] | None = None,
    ) -> None:
        self.node_id = node_id
        self.leaders = leaders if leaders is not None else {}
        self.peers = peers
        self.metadata_requests = 0
        self.list_offsets_requests = 0
        self._scope: trio.CancelScope | None = None
        self.port = 0
        self.logs: dict[tuple[str, int], list[bytes]] = {}
        self.ends: dict[tuple[str, int], int] = {}
        self.topics: dict[str, int] = {}
        self.fail_produce: collections.deque[ErrorCode] = collections.deque()
        self.produce_requests = 0
        self.connections = 0
        # Set to drop every connection (once) when the next produce arrives.
        self.drop_next_produce = False
        # Set to leave every produce unanswered (a stuck broker).
        self.hold_produce = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def create(self, topic: str, partitions: int) -> None:
        self.topics[topic] = partitions
        for p in range(partitions):
            self.logs[(topic, p)] = []
            self.ends[(topic, p)] = 0

    def append_control(self, topic: str, partition: int) -> None:
        """A control batch (a Raft term's leader no-op in the real broker) at the log end."""
        key = (topic, partition)
        data = bytearray(build_control_batch(ControlType.LEADER_NOOP, b"", timestamp_ms=0))
        set_base_offset(data, 0, self.ends[key])
        self.logs[key].append(bytes(data))
        self.ends[key] += 1

    def leads(self, topic: str, partition: int) -> bool:
        return self.leaders.get((topic, partition), self.node_id) == self.node_id

    def kill(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        frames = FrameConnection(Role.SERVER)
        try:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    return
                frames.receive_data(data)
                while (frame := frames.next_frame()) is not NEED_DATA:
                    assert isinstance(frame, Frame)
                    reply = self._dispatch(frame)
                    if reply == "drop":
                        await stream.aclose()
                        return
                    if reply is not None:
                        header, payload = reply
                        await stream.send_all(frames.send(header, payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def _dispatch(self, frame: Frame) -> Any:
        cid = frame.correlation_id
        if frame.api == "handshake":
            response: Any = codec.HandshakeResponse(
                node_id=self.node_id,
                protocol_version=1,
                apis=codec.supported_apis(),
                max_frame_bytes=1 << 26,
            )
            return codec.encode_response(response, correlation_id=cid)
        request = codec.decode_request(frame.header, frame.payload)
        handler = getattr(self, f"_on_{request.API.value}")
        response = handler(request)
        if response is None or response == "drop":
            return response
        return codec.encode_response(response, correlation_id=cid)

    def _on_metadata(self, request: codec.MetadataRequest) -> codec.MetadataResponse:
        self.metadata_requests += 1
        names = request.topics if request.topics is not None else tuple(self.topics)
        topics = []
        for name in names:
            if name not in self.topics:
                topics.append(codec.TopicMetadata(name=name, error=ErrorCode.UNKNOWN_TOPIC))
                continue
            parts = []
            for p in range(self.topics[name]):
                leader = self.leaders.get((name, p), self.node_id)
                error = ErrorCode.LEADER_NOT_AVAILABLE if leader < 0 else ErrorCode.NONE
                parts.append(codec.PartitionMetadata(partition=p, leader_id=leader, error=error))
            topics.append(codec.TopicMetadata(name=name, partitions=tuple(parts)))
        brokers = tuple(
            codec.BrokerInfo(node_id=b.node_id, host="127.0.0.1", port=b.port)
            for b in (self.peers or [self])
        )
        return codec.MetadataResponse(
            brokers=brokers, controller_id=self.node_id, topics=tuple(topics)
        )

    def _not_leader(self, topic: str, partition: int) -> dict[str, Any]:
        return {
            "topic": topic,
            "partition": partition,
            "error": ErrorCode.NOT_LEADER,
            "error_message": f"broker {self.node_id} is not the leader of {topic}-{partition}",
        }

    def _on_produce(self, request: codec.ProduceRequest) -> Any:
        self.produce_requests += 1
        if self.hold_produce:
            return None
        if self.drop_next_produce:
            self.drop_next_produce = False
            return "drop"
        results = []
        for part in request.partitions:
            key = (part.topic, part.partition)
            if not self.leads(*key):
                results.append(codec.ProducePartitionResult(**self._not_leader(*key)))
                continue
            if self.fail_produce:
                code = self.fail_produce.popleft()
                results.append(
                    codec.ProducePartitionResult(
                        topic=part.topic, partition=part.partition, error=code, error_message="x"
                    )
                )
                continue
            base = self.ends[key]
            data = bytearray(part.records)
            for position, header in iter_batches(data):
                set_base_offset(data, position, self.ends[key])
                self.ends[key] += header.last_offset_delta + 1
            self.logs[key].append(bytes(data))
            results.append(
                codec.ProducePartitionResult(
                    topic=part.topic, partition=part.partition, base_offset=base
                )
            )
        if request.acks == codec.ACKS_NONE:
            return None
        return codec.ProduceResponse(partitions=tuple(results))

    def _on_fetch(self, request: codec.FetchRequest) -> codec.FetchResponse:
        results = []
        for part in request.partitions:
            key = (part.topic, part.partition)
            if not self.leads(*key):
                results.append(codec.FetchPartitionResult(**self._not_leader(*key)))
                continue
            data = b""
            offset = 0
            for batch in self.logs[key]:
                header_next = offset + next(iter_batches(batch))[1].record_count
                if header_next > part.fetch_offset:
                    data += batch
                offset = header_next
            results.append(
                codec.FetchPartitionResult(
                    topic=part.topic,
                    partition=part.partition,
                    high_watermark=self.ends[key],
                    records=data,
                )
            )
        return codec.FetchResponse(partitions=tuple(results))

    def _on_list_offsets(self, request: codec.ListOffsetsRequest) -> codec.ListOffsetsResponse:
        self.list_offsets_requests += 1
        results = []
        for part in request.partitions:
            if not self.leads(part.topic, part.partition):
                results.append(
                    codec.ListOffsetsPartitionResult(**self._not_leader(part.topic, part.partition))
                )
                continue
            end = self.ends[(part.topic, part.partition)]
            offset = 0 if part.timestamp == codec.EARLIEST_TIMESTAMP else end
            results.append(
                codec.ListOffsetsPartitionResult(
                    topic=part.topic, partition=part.partition, offset=offset
                )
            )
        return codec.ListOffsetsResponse(partitions=tuple(results))
