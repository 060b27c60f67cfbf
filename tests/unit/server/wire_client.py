"""A minimal trio client over wire.framing + wire.codec, for the server's own tests.

It is deliberately small (the SDK lives in client/): connect + handshake, send requests (pipelined
if wanted), wait for a response by correlation id, and write raw bytes for fuzzing. One task uses
it at a time. Every wait is bounded by `timeout_s`.
"""

from __future__ import annotations

import itertools
from typing import Any, Unpack

import trio

from wire import codec
from wire.batch import HeaderFields, build_batch
from wire.framing import NEED_DATA, Frame, FrameConnection, Role

TIMEOUT_S_DEFAULT = 10.0


class WireClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.frames = FrameConnection(Role.CLIENT)
        self._ids = itertools.count(1)
        self._responses: dict[int, Frame] = {}
        self.handshake: codec.HandshakeResponse | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, *, client_id: str = "test", timeout_s: float = TIMEOUT_S_DEFAULT
    ) -> WireClient:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port)
        client = cls(stream)
        header, payload = codec.encode_request(
            codec.HandshakeRequest(client_id=client_id), correlation_id=0
        )
        await stream.send_all(client.frames.send(header, payload))
        response = await client.wait_response(0, timeout_s=timeout_s)
        assert isinstance(response, codec.HandshakeResponse), response
        client.handshake = response
        return client

    async def send(self, request: Any) -> int:
        """Send a request; returns its correlation id (for `wait_response`)."""
        correlation_id = next(self._ids)
        header, payload = codec.encode_request(request, correlation_id=correlation_id)
        await self.stream.send_all(self.frames.send(header, payload))
        return correlation_id

    async def request(self, request: Any, *, timeout_s: float = TIMEOUT_S_DEFAULT) -> Any:
        """Send and wait for the response (the response object or an ErrorResponse)."""
        correlation_id = await self.send(request)
        return await self.wait_response(correlation_id, timeout_s=timeout_s)

    async def wait_response(
        self, correlation_id: int, *, timeout_s: float = TIMEOUT_S_DEFAULT
    ) -> Any:
        with trio.fail_after(timeout_s):
            while correlation_id not in self._responses:
                frame = self.frames.next_frame()
                if frame is NEED_DATA:
                    data = await self.stream.receive_some(1 << 20)
                    if not data:
                        raise ConnectionError("the broker closed the connection")
                    self.frames.receive_data(data)
                    continue
                assert isinstance(frame, Frame)
                self._responses[frame.correlation_id] = frame
        frame = self._responses.pop(correlation_id)
        return codec.decode_response(frame.header, frame.payload)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()

    # --- conveniences ---------------------------------------------------------------------------

    async def create_topic(
        self, name: str, partitions: int = 1, **configs: Any
    ) -> codec.TopicResult:
        response = await self.request(
            codec.CreateTopicsRequest(
                topics=(codec.NewTopic(name=name, partitions=partitions, configs=configs),)
            )
        )
        return response.topics[0]  # type: ignore[no-any-return]

    async def produce(
        self, topic: str, partition: int, records: bytes, *, acks: int = codec.ACKS_ALL
    ) -> codec.ProducePartitionResult:
        response = await self.request(
            codec.ProduceRequest(
                acks=acks,
                partitions=(
                    codec.ProducePartition(topic=topic, partition=partition, records=records),
                ),
            )
        )
        assert isinstance(response, codec.ProduceResponse), response
        return response.partitions[0]

    async def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        max_wait_ms: int = 0,
        min_bytes: int = 1,
        partition_max_bytes: int = 1 << 20,
        timeout_s: float = TIMEOUT_S_DEFAULT,
    ) -> codec.FetchPartitionResult:
        response = await self.request(
            codec.FetchRequest(
                partitions=(
                    codec.FetchPartition(
                        topic=topic,
                        partition=partition,
                        fetch_offset=offset,
                        partition_max_bytes=partition_max_bytes,
                    ),
                ),
                max_wait_ms=max_wait_ms,
                min_bytes=min_bytes,
            ),
            timeout_s=timeout_s,
        )
        assert isinstance(response, codec.FetchResponse), response
        return response.partitions[0]

    async def list_offset(self, topic: str, partition: int, timestamp: int) -> Any:
        response = await self.request(
            codec.ListOffsetsRequest(
                partitions=(
                    codec.ListOffsetsPartition(
                        topic=topic, partition=partition, timestamp=timestamp
                    ),
                )
            )
        )
        return response.partitions[0]


def make_batch(
    values: list[bytes],
    *,
    timestamp_ms: int = 1_700_000_000_000,
    **header: Unpack[HeaderFields],
) -> bytes:
    """A msgpack batch of `values` (no keys), timestamps one ms apart from `timestamp_ms`;
    `header`: the batch header's fields (a producer id and sequence, say)."""
    return build_batch(
        [(timestamp_ms + i, None, value, None) for i, value in enumerate(values)], **header
    )
