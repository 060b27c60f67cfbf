"""Wire framing: bytes in, frames out, in the sans-I/O style of h11.

A frame on the wire is

    u32 frame_length   bytes after this field (header_length field + header + payload)
    u32 header_length  bytes of the msgpack header
    header             one msgpack map with str keys: at least `correlation_id` (int), `api` (str)
    payload            raw bytes (record batches) that never go through msgpack

All integers are big-endian. The header refers to parts of the payload by `(offset, length)` slices
(see wire/codec.py), so record batches cross the wire and the broker untouched.

Rules:
- This module does no I/O and knows nothing of trio, sockets or clocks. A shell feeds received
  bytes to `FrameConnection.receive_data`, drains `next_frame()` until it returns `NEED_DATA`, and
  writes the bytes that `send()` returns.
- Every bound is a named limit. A frame longer than `max_frame_bytes`, a header longer than
  `MAX_HEADER_BYTES`, a header that is not a msgpack map with an integer correlation id, or a
  first frame that is not a handshake raises `RemoteProtocolError`: the peer is broken, close the
  connection.
- Misusing this API (sending a request before the handshake, sending after an error) raises
  `LocalProtocolError`: a bug on our side. Any error moves the connection to
  `ConnectionState.ERROR`, where every further call raises.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Any, Final

import msgpack

# Version of the framing and of the handshake itself; APIs carry their own versions (codec.py).
PROTOCOL_VERSION: Final = 1
# The API name of the handshake frame, the first frame each way on every connection.
HANDSHAKE_API: Final = "handshake"

# Default bound on a whole frame (header + payload). Large enough for a fetch response of the
# default fetch max_bytes (50 MiB) plus headers; a broker configures its own (max_frame_bytes).
MAX_FRAME_BYTES_DEFAULT: Final = 64 * 1024 * 1024
# Bound on the msgpack header alone: headers describe partitions, they never carry data, so a header
# larger than this is a broken or hostile peer (it would make msgpack allocate for nothing).
MAX_HEADER_BYTES: Final = 4 * 1024 * 1024
# Smallest frame_length: the header_length field plus a one-byte msgpack header.
_MIN_FRAME_LENGTH: Final = 4 + 1
# Correlation ids are signed 32-bit, as in Kafka.
CORRELATION_ID_MIN: Final = -(2**31)
CORRELATION_ID_MAX: Final = 2**31 - 1

# First bytes of an HTTP request, read as a frame length: named in the error, a common mistake.
_HTTP_METHODS: Final = frozenset({b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC"})
# First bytes of a TLS handshake record (content type 22, version 3.x): a TLS client on a
# plaintext listener, named in the error too.
_TLS_RECORD_PREFIX: Final = b"\x16\x03"

_PREFIX = struct.Struct(">II")  # frame_length, header_length
PREFIX_SIZE: Final = _PREFIX.size


class ProtocolError(Exception):
    """Abstract base: the byte stream can no longer be trusted."""

    def __init__(self, message: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """We misused the connection (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not a valid frame: close the connection and log this."""


class OversizedFrameError(LocalProtocolError):
    """A frame we were asked to send is over a limit the peer enforces (`max_frame_bytes` for
    the whole frame, `MAX_HEADER_BYTES` for its header). Nothing was framed, so unlike the other
    errors this one leaves the connection usable: the shell answers with an error instead."""

    def __init__(self, size_bytes: int, limit_bytes: int, limit_name: str) -> None:
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        self.limit_name = limit_name
        what = "frame header" if limit_name == "MAX_HEADER_BYTES" else "frame"
        super().__init__(
            f"{what} of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes ({limit_name})"
        )


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class ConnectionState(enum.Enum):
    # Until both handshake frames have passed: the first frame each way must be a handshake.
    HANDSHAKE = "handshake"
    OPEN = "open"
    # Terminal: a protocol error happened; nothing more may be sent or received.
    ERROR = "error"


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


# Sentinel returned by `next_frame` when the buffer holds no complete frame.
NEED_DATA: Final = _NeedData.NEED_DATA


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. `header` is the msgpack map; `payload` the raw bytes after it."""

    header: dict[str, Any]
    payload: bytes

    @property
    def correlation_id(self) -> int:
        return int(self.header["correlation_id"])

    @property
    def api(self) -> str:
        api = self.header.get("api")
        return api if isinstance(api, str) else ""


class FrameConnection:
    """Frame codec and handshake state for one side of one connection.

    Args:
        role: which side we are. Both sides must send a handshake frame first; the server only
            after receiving the client's.
        max_frame_bytes: largest frame accepted from the peer (and sent, to catch our own bugs).
    """

    def __init__(self, role: Role, *, max_frame_bytes: int = MAX_FRAME_BYTES_DEFAULT) -> None:
        assert max_frame_bytes > _MIN_FRAME_LENGTH
        self.role = role
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._state = ConnectionState.HANDSHAKE
        self._handshake_sent = False
        self._handshake_received = False
        self.frames_received = 0
        self.frames_sent = 0

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet returned as a frame (a shell may bound its reads by this)."""
        return len(self._buffer)

    @property
    def pending_frame_bytes(self) -> int | None:
        """Whole size (length prefix included) of the frame at the head of the buffer once its
        length prefix is here and within `max_frame_bytes`, else None: a shell reserves memory
        for the frame before reading the rest of it."""
        if len(self._buffer) < 4:
            return None
        frame_length = int.from_bytes(self._buffer[:4], "big")
        if frame_length > self.max_frame_bytes:
            return None  # next_frame() raises for it
        return 4 + frame_length

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer. An empty `data` is not end-of-stream: the shell closes."""
        if self._state is ConnectionState.ERROR:
            raise LocalProtocolError("receive_data after a protocol error")
        self._buffer += data

    def next_frame(self) -> Frame | _NeedData:
        """The next complete frame, or `NEED_DATA`. Raises `RemoteProtocolError` on a bad frame."""
        if self._state is ConnectionState.ERROR:
            raise LocalProtocolError("next_frame after a protocol error")
        try:
            frame = self._parse_frame()
            if frame is NEED_DATA:
                return NEED_DATA
            assert isinstance(frame, Frame)
            self._track_received(frame)
        except RemoteProtocolError:
            self._state = ConnectionState.ERROR
            raise
        except Exception as exc:
            # h11's rule: anything but RemoteProtocolError escaping here is our bug; still, the
            # connection is unusable after it.
            self._state = ConnectionState.ERROR
            raise LocalProtocolError(f"bug while parsing a frame: {exc!r}") from exc
        self.frames_received += 1
        return frame

    def send(self, header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> bytes:
        """The bytes of one frame carrying `header` and `payload`; write them to the peer.

        Raises `LocalProtocolError` if the header lacks a correlation id or api, or if the first
        frame we send is not a handshake; `OversizedFrameError` (the connection stays usable) if
        the frame would exceed `max_frame_bytes` or its header `MAX_HEADER_BYTES`.
        """
        if self._state is ConnectionState.ERROR:
            raise LocalProtocolError("send after a protocol error")
        try:
            data = self._build_frame(header, payload)
        except OversizedFrameError:
            raise  # nothing was framed: the stream is intact
        except LocalProtocolError:
            self._state = ConnectionState.ERROR
            raise
        self.frames_sent += 1
        return data

    def send_failed(self) -> None:
        """Tell the core the bytes of the last `send` never left (e.g. the write was cancelled).

        The peer may now see half a frame, so the stream cannot continue.
        """
        self._state = ConnectionState.ERROR

    # --- internals --------------------------------------------------------------------------------

    def _parse_frame(self) -> Frame | _NeedData:
        buffer = self._buffer
        if len(buffer) < PREFIX_SIZE:
            # Check the length field as soon as it is here, so an oversized frame is refused before
            # we buffer any of it.
            if len(buffer) >= 4:
                self._check_frame_length(int.from_bytes(buffer[:4], "big"))
            return NEED_DATA
        frame_length, header_length = _PREFIX.unpack_from(buffer, 0)
        self._check_frame_length(frame_length)
        if header_length < 1 or header_length > frame_length - 4:
            raise RemoteProtocolError(
                f"frame declares a header of {header_length} bytes in a frame of {frame_length} "
                "bytes: not a frame of this protocol (is the peer speaking another protocol?)"
            )
        if header_length > MAX_HEADER_BYTES:
            raise RemoteProtocolError(
                f"frame header of {header_length} bytes exceeds the limit of "
                f"{MAX_HEADER_BYTES} bytes (MAX_HEADER_BYTES)"
            )
        end = 4 + frame_length
        if len(buffer) < end:
            return NEED_DATA
        # Through a memoryview: the payload is copied once, straight out of the buffer (slicing
        # the bytearray itself would copy it twice); the view is released before the buffer
        # shrinks.
        with memoryview(buffer) as view:
            header = _decode_header(view[PREFIX_SIZE : PREFIX_SIZE + header_length])
            payload = bytes(view[PREFIX_SIZE + header_length : end])
        del buffer[:end]
        return Frame(header, payload)

    def _check_frame_length(self, frame_length: int) -> None:
        if frame_length > self.max_frame_bytes:
            if bytes(self._buffer[:4]) in _HTTP_METHODS:
                raise RemoteProtocolError(
                    "received an HTTP request: this port speaks the broker protocol (point "
                    "HTTP clients at the metrics address instead)"
                )
            if bytes(self._buffer[:2]) == _TLS_RECORD_PREFIX:
                raise RemoteProtocolError(
                    "received a TLS handshake on a plaintext listener: connect with "
                    "security_protocol PLAINTEXT, or to a tls:// listener"
                )
            raise RemoteProtocolError(
                f"frame of {frame_length} bytes exceeds the limit of {self.max_frame_bytes} bytes "
                "(max_frame_bytes); send smaller requests or raise max_frame_bytes on both sides"
            )
        if frame_length < _MIN_FRAME_LENGTH:
            raise RemoteProtocolError(
                f"frame of {frame_length} bytes is shorter than the "
                f"{_MIN_FRAME_LENGTH}-byte minimum"
            )

    def _track_received(self, frame: Frame) -> None:
        if not self._handshake_received:
            if frame.api != HANDSHAKE_API:
                raise RemoteProtocolError(
                    f"first frame must be a {HANDSHAKE_API!r}, got api {frame.header.get('api')!r}"
                )
            self._handshake_received = True
            self._update_state()

    def _build_frame(
        self, header: dict[str, Any], payload: bytes | bytearray | memoryview
    ) -> bytes:
        api = header.get("api")
        correlation_id = header.get("correlation_id")
        if not isinstance(api, str) or not _is_correlation_id(correlation_id):
            raise LocalProtocolError(
                f"header needs a str api and an i32 correlation_id: {header!r}"
            )
        if not self._handshake_sent:
            if api != HANDSHAKE_API:
                raise LocalProtocolError(f"the first frame sent must be a handshake, not {api!r}")
            if self.role is Role.SERVER and not self._handshake_received:
                raise LocalProtocolError("the server answers the client's handshake first")
        packed = msgpack.packb(header, use_bin_type=True)
        frame_length = 4 + len(packed) + len(payload)
        # Both limits are the peer's too: it refuses such a frame and closes the connection. The
        # header limit is checked first, and named, as it is the one a frame far below
        # max_frame_bytes can still break (a response listing very many partitions).
        if len(packed) > MAX_HEADER_BYTES:
            raise OversizedFrameError(len(packed), MAX_HEADER_BYTES, "MAX_HEADER_BYTES")
        if frame_length > self.max_frame_bytes:
            raise OversizedFrameError(frame_length, self.max_frame_bytes, "max_frame_bytes")
        if api == HANDSHAKE_API and not self._handshake_sent:
            self._handshake_sent = True
            self._update_state()
        # One join: the payload is copied once into the outgoing buffer and never through msgpack.
        return b"".join((_PREFIX.pack(frame_length, len(packed)), packed, payload))

    def _update_state(self) -> None:
        if self._handshake_sent and self._handshake_received:
            self._state = ConnectionState.OPEN


def _is_correlation_id(value: object) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and CORRELATION_ID_MIN <= value <= CORRELATION_ID_MAX
    )


def _decode_header(raw: memoryview) -> dict[str, Any]:
    """Decode and check the envelope of a header: a map with str keys and an i32 correlation id."""
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises ValueError, UnicodeDecodeError, ExtraData, ...
        raise RemoteProtocolError(f"frame header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        kind = type(header).__name__
        raise RemoteProtocolError(f"frame header must be a msgpack map, got {kind}")
    if not all(isinstance(key, str) for key in header):
        raise RemoteProtocolError("frame header keys must all be strings")
    if not _is_correlation_id(header.get("correlation_id")):
        raise RemoteProtocolError(
            f"frame header needs an i32 'correlation_id', got {header.get('correlation_id')!r}"
        )
    return header
