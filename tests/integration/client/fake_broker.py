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
from broker.log.batch import iter_batches, set_base_offset
from broker.protocol import NEED_DATA, Frame, FrameConnection, Role


class FakeBroker:
    def __init__(self) -> None:
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

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
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
                node_id=1, protocol_version=1, apis=codec.supported_apis(), max_frame_bytes=1 << 26
            )
            return codec.encode_response(response, correlation_id=cid)
        request = codec.decode_request(frame.header, frame.payload)
        handler = getattr(self, f"_on_{request.API.value}")
        response = handler(request)
        if response is None or response == "drop":
            return response
        return codec.encode_response(response, correlation_id=cid)

    def _on_metadata(self, request: codec.MetadataRequest) -> codec.MetadataResponse:
        names = request.topics if request.topics is not None else tuple(self.topics)
        topics = []
        for name in names:
            if name not in self.topics:
                topics.append(codec.TopicMetadata(name=name, error=ErrorCode.UNKNOWN_TOPIC))
                continue
            parts = tuple(
                codec.PartitionMetadata(partition=p, leader_id=1) for p in range(self.topics[name])
            )
            topics.append(codec.TopicMetadata(name=name, partitions=parts))
        brokers = (codec.BrokerInfo(node_id=1, host="127.0.0.1", port=self.port),)
        return codec.MetadataResponse(brokers=brokers, controller_id=1, topics=tuple(topics))

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
        results = []
        for part in request.partitions:
            end = self.ends[(part.topic, part.partition)]
            offset = 0 if part.timestamp == codec.EARLIEST_TIMESTAMP else end
            results.append(
                codec.ListOffsetsPartitionResult(
                    topic=part.topic, partition=part.partition, offset=offset
                )
            )
        return codec.ListOffsetsResponse(partitions=tuple(results))
