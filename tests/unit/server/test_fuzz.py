"""Fuzz: thousands of random and mutated frames against a real in-process broker over TCP.

Goal: whatever a client sends (garbage bytes, truncated or oversized frames, wrong msgpack shapes,
mutated produce frames with bad CRCs), the broker
- stays up and keeps serving a well-behaved client on another connection, in order;
- answers every frame it does answer with a frame that decodes cleanly;
- writes nothing invalid: every batch stored validates (header + CRC), and every stored batch was
  acknowledged or sent with acks=0.

Size: FUZZ_CASES (default 4000 cases, about 9,000 frames, under ten seconds); seed: FUZZ_SEED
(default: random, printed on failure so a run can be reproduced).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
from typing import Any

import msgpack
import pytest
import trio

from tests.unit.server.conftest import StartBroker
from tests.unit.server.wire_client import WireClient, make_batch
from wire import codec
from wire.batch import iter_batches, validate_batch
from wire.error_codes import ErrorCode
from wire.framing import NEED_DATA, Frame, FrameConnection, Role

CASES = int(os.environ.get("FUZZ_CASES", "4000"))
FIELD_NAMES = [
    "partitions", "topic", "partition", "records", "acks", "fetch_offset", "topics", "name",
    "configs", "timestamp", "max_wait_ms", "min_bytes", "max_bytes", "client_id", "apis",
    "timeout_ms", "partition_max_bytes", "validate_only", "allow_auto_create",
]  # fmt: skip
APIS = [api.value for api in codec.ApiKey] + ["nope", ""]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, -2, 2**31, 2**63 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice(["fuzz", "good", "", ".", "a" * 300, "x/y", "t"])
    if kind == 4:
        return rng.randbytes(rng.randrange(8))
    if kind == 5:
        return rng.random()
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELD_NAMES): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def raw_frame(header: Any, payload: bytes = b"") -> bytes:
    packed = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">II", 4 + len(packed) + len(payload), len(packed)) + packed + payload


def random_body_frame(rng: random.Random, correlation_id: int) -> bytes:
    header: dict[str, Any] = {
        "api": rng.choice(APIS),
        "version": rng.choice([1, 1, 1, 0, 2, "1"]),
        "correlation_id": correlation_id,
        "body": random_value(rng),
    }
    if rng.random() < 0.1:
        del header["body"]
    return raw_frame(header, rng.randbytes(rng.randrange(64)))


def produce_frame(rng: random.Random, correlation_id: int) -> bytes:
    values = [rng.randbytes(rng.randrange(1, 40)) for _ in range(rng.randrange(1, 4))]
    request = codec.ProduceRequest(
        acks=rng.choice([-1, 1, 0]),
        partitions=(codec.ProducePartition(topic="fuzz", partition=0, records=make_batch(values)),),
    )
    header, payload = codec.encode_request(request, correlation_id=correlation_id)
    return raw_frame(header, payload)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    choice = rng.randrange(4)
    if choice == 0:  # bit flips anywhere: prefix, header or batch
        for _ in range(rng.randrange(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # flips inside the batch only: mostly CRC failures
        for _ in range(rng.randrange(1, 3)):
            out[rng.randrange(len(out) - 40, len(out))] ^= 1 << rng.randrange(8)
    elif choice == 2:  # truncated
        del out[rng.randrange(len(out)) :]
    else:  # spliced garbage
        position = rng.randrange(len(out))
        out[position:position] = rng.randbytes(rng.randrange(1, 16))
    return bytes(out)


def garbage(rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if choice == 1:  # a huge declared length
        return struct.pack(">II", rng.randrange(2**26, 2**32), 10) + rng.randbytes(20)
    if choice == 2:  # not msgpack / not a map
        return raw_frame(rng.choice([[1, 2], "str", 5, None]))
    return b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n"


class FuzzStats:
    def __init__(self) -> None:
        self.frames = 0
        self.responses = 0
        self.closed_by_broker = 0
        self.produce_acked = 0


async def exchange(
    address: tuple[str, int],
    data: bytes,
    *,
    handshake: bool,
    stats: FuzzStats,
    abrupt: bool = False,
) -> None:
    """Send `data` (after a handshake if asked) plus a ping, half-close, read until EOF.

    With `abrupt`, reset the connection right after sending instead (a crashed client).
    """
    stream = await trio.open_tcp_stream(*address)
    frames = FrameConnection(Role.CLIENT)
    out = b""
    if handshake:
        header, payload = codec.encode_request(
            codec.HandshakeRequest(client_id="fuzz"), correlation_id=0
        )
        out += frames.send(header, payload)
    out += data
    if handshake:
        out += raw_frame(
            {
                "api": "metadata",
                "version": 1,
                "correlation_id": 2**31 - 1,
                "body": {"topics": ["fuzz"]},
            }
        )
    try:
        await stream.send_all(out)
        if abrupt:
            linger = struct.pack("ii", 1, 0)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            return
        await stream.send_eof()
        with trio.fail_after(10):
            await read_until_eof(stream, frames, stats)
    except trio.BrokenResourceError:
        stats.closed_by_broker += 1  # the broker closed before reading everything: fine
    finally:
        await stream.aclose()


async def read_until_eof(
    stream: trio.SocketStream, frames: FrameConnection, stats: FuzzStats
) -> None:
    while True:
        data = await stream.receive_some(1 << 16)
        if not data:
            return
        frames.receive_data(data)
        while (frame := frames.next_frame()) is not NEED_DATA:
            assert isinstance(frame, Frame)
            # Invariant: everything the broker sends decodes cleanly.
            response = codec.decode_response(frame.header, frame.payload)
            stats.responses += 1
            if isinstance(response, codec.ProduceResponse):
                stats.produce_acked += sum(
                    1 for p in response.partitions if p.error is ErrorCode.NONE
                )


async def check_good_client(good: WireClient, expected_offset: int) -> None:
    result = await good.produce("good", 0, make_batch([b"ok-%d" % expected_offset]))
    assert result.error is ErrorCode.NONE, result
    assert result.base_offset == expected_offset


async def read_everything(client: WireClient, topic: str) -> bytes:
    data = b""
    offset = 0
    while True:
        result = await client.fetch(topic, 0, offset)
        assert result.error is ErrorCode.NONE, result
        if not result.records:
            return data
        data += result.records
        offset = list(iter_batches(result.records))[-1][1].next_offset


async def test_fuzz_frames_never_hurt_the_broker(
    start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    broker = await start_broker(
        fetch_max_wait_ms_max=50, max_frame_bytes=1 << 20, **{"log.max_batch_bytes": 64 * 1024}
    )
    address = broker.addresses.listen
    good = await WireClient.connect(*address, client_id="good")
    assert (await good.create_topic("good")).error is ErrorCode.NONE
    assert (await good.create_topic("fuzz")).error is ErrorCode.NONE
    stats = FuzzStats()
    good_count = 0
    try:
        for case in range(CASES):
            kind = rng.randrange(4)
            if kind == 0:  # several random-shaped requests on one connection
                count = rng.randrange(1, 8)
                data = b"".join(random_body_frame(rng, i + 1) for i in range(count))
                stats.frames += count
                await exchange(address, data, handshake=True, stats=stats)
            elif kind == 1:  # mutated produce frames (bad CRC, lengths, headers)
                count = rng.randrange(1, 4)
                data = b"".join(mutate(rng, produce_frame(rng, i + 1)) for i in range(count))
                stats.frames += count
                await exchange(
                    address, data, handshake=True, stats=stats, abrupt=rng.random() < 0.2
                )
            elif kind == 2:  # garbage instead of a frame, with or without a handshake
                stats.frames += 1
                await exchange(address, garbage(rng), handshake=rng.random() < 0.5, stats=stats)
            else:  # valid produce frames mixed in, so that some data is written
                count = rng.randrange(1, 4)
                data = b"".join(produce_frame(rng, i + 1) for i in range(count))
                stats.frames += count
                await exchange(
                    address, data, handshake=True, stats=stats, abrupt=rng.random() < 0.1
                )
            if case % 50 == 0:
                await check_good_client(good, good_count)
                good_count += 1
        # Invariants: still serving; nothing invalid stored; the good records all there, in order.
        await check_good_client(good, good_count)
        good_count += 1
        good_data = await read_everything(good, "good")
        assert [h.base_offset for _, h in iter_batches(good_data)] == list(range(good_count))
        fuzz_data = await read_everything(good, "fuzz")
        batches = list(iter_batches(fuzz_data))
        for position, _ in batches:
            validate_batch(fuzz_data, position)
        # Every stored batch was acknowledged, or sent with acks=0 (never acknowledged).
        assert len(batches) >= stats.produce_acked
    except BaseException:
        print(f"fuzz failed: reproduce with FUZZ_SEED={seed} FUZZ_CASES={CASES}")
        raise
    finally:
        await good.aclose()
    print(
        f"fuzz seed={seed}: {CASES} cases, {stats.frames} frames, {stats.responses} responses, "
        f"{len(batches)} fuzz batches stored, {stats.produce_acked} acknowledged"
    )
    assert stats.frames >= CASES
    # Client input is never a broker error: no ERROR log (handler crash, storage failure).
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:5]
