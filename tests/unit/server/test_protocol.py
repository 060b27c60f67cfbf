"""FrameConnection: frames survive any chunking, bad frames raise RemoteProtocolError, misuse raises
LocalProtocolError, and every error is terminal. Pure: no sockets, no trio."""

from __future__ import annotations

import ast
import pathlib
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import framing
from wire.framing import (
    NEED_DATA,
    ConnectionState,
    Frame,
    FrameConnection,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
)

HANDSHAKE = {"api": "handshake", "version": 1, "correlation_id": 0, "body": {"client_id": "t"}}


class ConnectionPair:
    """A client and a server FrameConnection with a fake network link in between (h11's helper)."""

    def __init__(self, *, max_frame_bytes: int = framing.MAX_FRAME_BYTES_DEFAULT) -> None:
        self.client = FrameConnection(Role.CLIENT, max_frame_bytes=max_frame_bytes)
        self.server = FrameConnection(Role.SERVER, max_frame_bytes=max_frame_bytes)

    def send(self, sender: FrameConnection, header: dict, payload: bytes = b"") -> list[Frame]:
        receiver = self.server if sender is self.client else self.client
        receiver.receive_data(sender.send(header, payload))
        return drain(receiver)

    def handshake(self) -> None:
        assert self.send(self.client, HANDSHAKE)[0].api == "handshake"
        reply = dict(HANDSHAKE, body={"node_id": 0})
        assert self.send(self.server, reply)[0].api == "handshake"


def drain(connection: FrameConnection) -> list[Frame]:
    frames = []
    while (frame := connection.next_frame()) is not NEED_DATA:
        assert isinstance(frame, Frame)
        frames.append(frame)
    return frames


def raw_frame(header: object, payload: bytes = b"") -> bytes:
    packed = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">II", 4 + len(packed) + len(payload), len(packed)) + packed + payload


def test_handshake_then_request_round_trip_keeps_payload_bytes_exact() -> None:
    pair = ConnectionPair()
    assert pair.client.state is ConnectionState.HANDSHAKE
    pair.handshake()
    assert pair.client.state is ConnectionState.OPEN
    assert pair.server.state is ConnectionState.OPEN
    payload = bytes(range(256)) * 10
    header = {"api": "produce", "version": 1, "correlation_id": 7, "body": {"x": [0, 2560]}}
    [frame] = pair.send(pair.client, header, payload)
    assert frame.header == header
    assert frame.payload == payload
    assert frame.correlation_id == 7


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    cut=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=40),
)
def test_frames_survive_any_chunking(payloads: list[bytes], cut: list[int]) -> None:
    # Goal: the parser does not care how TCP splits the stream.
    client = FrameConnection(Role.CLIENT)
    server = FrameConnection(Role.SERVER)
    stream = client.send(HANDSHAKE)
    for index, payload in enumerate(payloads):
        stream += client.send({"api": "fetch", "correlation_id": index + 1}, payload)
    frames: list[Frame] = []
    position = 0
    sizes = iter(cut * (len(stream) // max(1, min(cut)) + 1))
    while position < len(stream):
        step = next(sizes)
        server.receive_data(stream[position : position + step])
        position += step
        frames.extend(drain(server))
    assert [frame.payload for frame in frames[1:]] == payloads
    assert [frame.correlation_id for frame in frames] == list(range(len(payloads) + 1))
    assert server.buffered_bytes == 0


def test_oversized_frame_is_refused_from_its_length_field_alone() -> None:
    server = FrameConnection(Role.SERVER, max_frame_bytes=1024)
    server.receive_data(struct.pack(">I", 1025))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 1024 bytes"):
        server.next_frame()
    assert server.state is ConnectionState.ERROR
    with pytest.raises(LocalProtocolError):
        server.next_frame()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack(">II", 2, 1), "shorter than"),
        (struct.pack(">II", 10, 20) + b"x" * 10, "declares a header of 20 bytes"),
        (struct.pack(">II", 10, 0) + b"x" * 10, "declares a header of 0 bytes"),
        (raw_frame([1, 2, 3]), "must be a msgpack map"),
        (raw_frame({"api": "handshake"}), "correlation_id"),
        (raw_frame({"api": "handshake", "correlation_id": True}), "correlation_id"),
        (raw_frame({"api": "handshake", "correlation_id": 2**40}), "correlation_id"),
        (raw_frame({1: 2, "correlation_id": 1}), "map key"),
        (raw_frame({"api": "produce", "correlation_id": 1}), "first frame must be a 'handshake'"),
        (struct.pack(">II", 6, 2) + b"\xc1\xc1", "not valid msgpack"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "received an HTTP request"),
    ],
)
def test_garbage_frames_raise_remote_protocol_error(data: bytes, message: str) -> None:
    server = FrameConnection(Role.SERVER)
    server.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=message):
        server.next_frame()
    assert server.state is ConnectionState.ERROR


def test_header_limit_is_enforced() -> None:
    server = FrameConnection(Role.SERVER)
    size = framing.MAX_HEADER_BYTES + 1
    server.receive_data(struct.pack(">II", size + 4, size))
    with pytest.raises(RemoteProtocolError, match="MAX_HEADER_BYTES"):
        server.next_frame()


def test_sending_before_the_handshake_is_a_local_error() -> None:
    client = FrameConnection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="handshake"):
        client.send({"api": "produce", "correlation_id": 1})
    assert client.state is ConnectionState.ERROR


def test_server_may_not_open_the_handshake() -> None:
    server = FrameConnection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        server.send(HANDSHAKE)


def test_send_refuses_oversized_frames_and_bad_headers() -> None:
    client = FrameConnection(Role.CLIENT, max_frame_bytes=1024)
    client.send(HANDSHAKE)
    with pytest.raises(
        framing.OversizedFrameError, match=r"limit of 1024 bytes \(max_frame_bytes\)"
    ):
        client.send({"api": "produce", "correlation_id": 1}, b"x" * 2000)
    # Nothing was framed: the connection is still usable.
    assert client.state is not ConnectionState.ERROR
    client.send({"api": "produce", "correlation_id": 2}, b"x" * 10)
    client = FrameConnection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="correlation_id"):
        client.send({"api": "handshake"})


def test_an_oversized_header_names_the_header_limit_not_the_frame_limit() -> None:
    # The log said "frame of 16260117 bytes exceeds max_frame_bytes 67108864": the limit
    # broken was the header's.
    pair = ConnectionPair()
    pair.handshake()
    header = {"api": "metadata", "correlation_id": 1, "topics": ["t" * 100] * 50_000}
    with pytest.raises(framing.OversizedFrameError) as caught:
        pair.server.send(header)
    assert caught.value.limit_name == "MAX_HEADER_BYTES"
    assert "frame header of" in str(caught.value) and "MAX_HEADER_BYTES" in str(caught.value)
    assert pair.server.state is ConnectionState.OPEN


def test_pending_frame_bytes_is_known_from_the_length_prefix() -> None:
    server = FrameConnection(Role.SERVER, max_frame_bytes=1024)
    assert server.pending_frame_bytes is None
    server.receive_data((100).to_bytes(4, "big"))
    assert server.pending_frame_bytes == 104
    oversized = FrameConnection(Role.SERVER, max_frame_bytes=1024)
    oversized.receive_data((5000).to_bytes(4, "big"))
    assert oversized.pending_frame_bytes is None


def test_send_failed_makes_the_connection_unusable() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.client.send_failed()
    with pytest.raises(LocalProtocolError):
        pair.client.send({"api": "fetch", "correlation_id": 3})


def test_abstract_protocol_error_cannot_be_raised() -> None:
    with pytest.raises(TypeError):
        framing.ProtocolError("x")


@pytest.mark.parametrize("module", ["wire/framing.py", "wire/codec.py"])
def test_sans_io_modules_import_no_io(module: str) -> None:
    # Goal: the cores stay pure (STYLE.md 7.1): no trio, socket, os, time, random, threading.
    root = pathlib.Path(__file__).resolve().parents[3]
    tree = ast.parse((root / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"trio", "socket", "os", "time", "random", "threading", "asyncio", "selectors"}
    assert not imported & forbidden
