"""The in-process server end to end over TCP: topics, produce/fetch, long poll, offsets, errors,
pipelining and limits. Each test opens with its goal."""

from __future__ import annotations

import logging
import struct
import threading

import msgpack
import pytest
import trio

from broker.handlers.context import PartitionState
from broker.server import Broker
from tests.unit.server.conftest import StartBroker
from tests.unit.server.wire_client import WireClient, make_batch
from wire import codec
from wire.batch import iter_batches
from wire.error_codes import ErrorCode
from wire.framing import FrameConnection, Role


def offsets_of(records: bytes) -> list[int]:
    return [header.base_offset for _, header in iter_batches(records)]


async def test_create_describe_and_delete_topics(client: WireClient) -> None:
    # Goal: topic administration with per-topic results and effective configs.
    response = await client.request(
        codec.CreateTopicsRequest(
            topics=(
                codec.NewTopic(name="orders", partitions=3, configs={"retention.ms": "60000"}),
                codec.NewTopic(name="bad/name"),
                codec.NewTopic(name="cfg", configs={"retention.ms": "soon"}),
                codec.NewTopic(name="parts", partitions=0),
                codec.NewTopic(name="rf", replication_factor=3),
            )
        )
    )
    errors = {result.name: result.error for result in response.topics}
    assert errors == {
        "orders": ErrorCode.NONE,
        "bad/name": ErrorCode.INVALID_TOPIC,
        "cfg": ErrorCode.INVALID_CONFIG,
        "parts": ErrorCode.INVALID_PARTITIONS,
        "rf": ErrorCode.INVALID_REPLICATION_FACTOR,
    }
    assert "retention.ms" in response.topics[2].error_message
    again = await client.create_topic("orders")
    assert again.error is ErrorCode.TOPIC_ALREADY_EXISTS
    described = await client.request(codec.DescribeTopicsRequest(topics=("orders", "nope")))
    orders, nope = described.topics
    assert orders.partition_count == 3
    assert orders.configs["retention.ms"] == 60000
    assert [p.high_watermark for p in orders.partitions] == [0, 0, 0]
    assert nope.error is ErrorCode.UNKNOWN_TOPIC
    deleted = await client.request(codec.DeleteTopicsRequest(topics=("orders", "orders")))
    assert [t.error for t in deleted.topics] == [ErrorCode.NONE, ErrorCode.UNKNOWN_TOPIC]
    metadata = await client.request(codec.MetadataRequest())
    assert metadata.topics == ()


async def test_metadata_reports_this_broker_as_leader(client: WireClient, broker: Broker) -> None:
    # Goal: metadata names the broker's advertised address and leaders for every partition.
    await client.create_topic("m", partitions=2)
    metadata = await client.request(codec.MetadataRequest(topics=("m", "missing")))
    assert metadata.brokers[0].port == broker.addresses.listen[1]
    m, missing = metadata.topics
    assert [p.leader_id for p in m.partitions] == [0, 0]
    assert missing.error is ErrorCode.UNKNOWN_TOPIC


async def test_produce_then_fetch_returns_the_same_bytes_with_offsets(client: WireClient) -> None:
    # Goal: batches come back byte for byte except the broker-assigned base offset.
    await client.create_topic("t")
    first = make_batch([b"a", b"b", b"c"])
    second = make_batch([b"d"])
    assert (await client.produce("t", 0, first)).base_offset == 0
    assert (await client.produce("t", 0, second, acks=1)).base_offset == 3
    # acks=1 answers before the fsync; under flush.policy=always the record becomes visible
    # (below the high watermark) once the background fsync ran: long-poll for it.
    started = trio.current_time()
    assert offsets_of((await client.fetch("t", 0, 3, max_wait_ms=10_000)).records) == [3]
    # Woken by the fsync, not by the deadline (a lost wake-up would take the full 10 s).
    assert trio.current_time() - started < 5
    result = await client.fetch("t", 0, 0)
    assert result.error is ErrorCode.NONE
    assert result.high_watermark == 4
    assert offsets_of(result.records) == [0, 3]
    # Only base_offset (bytes 0-8) and leader_epoch (12-16) are rewritten, both outside the CRC.
    assert result.records[16 : len(first)] == first[16:]
    empty = await client.fetch("t", 0, 4)
    assert empty.records == b"" and empty.error is ErrorCode.NONE


async def test_acks_zero_gets_no_response_but_is_written(client: WireClient) -> None:
    # Goal: acks=0 sends nothing back; the next request's response is the next frame.
    await client.create_topic("t")
    await client.send(
        codec.ProduceRequest(
            acks=0,
            partitions=(
                codec.ProducePartition(topic="t", partition=0, records=make_batch([b"x"])),
            ),
        )
    )
    result = await client.fetch("t", 0, 0, max_wait_ms=2000)
    assert offsets_of(result.records) == [0]


async def test_several_partitions_in_one_produce(client: WireClient) -> None:
    # Goal: per-partition results; a bad partition does not fail the good ones.
    await client.create_topic("t", partitions=2)
    batch = make_batch([b"v"])
    corrupt = bytearray(batch)
    corrupt[-1] ^= 0xFF
    response = await client.request(
        codec.ProduceRequest(
            partitions=(
                codec.ProducePartition(topic="t", partition=0, records=batch),
                codec.ProducePartition(topic="t", partition=1, records=bytes(corrupt)),
                codec.ProducePartition(topic="t", partition=7, records=batch),
                codec.ProducePartition(topic="nope", partition=0, records=batch),
                codec.ProducePartition(topic="t", partition=1, records=batch + bytes(corrupt)),
                codec.ProducePartition(topic="t", partition=1, records=b""),
                codec.ProducePartition(topic="t", partition=1, records=batch[:30]),
            )
        )
    )
    assert [p.error for p in response.partitions] == [
        ErrorCode.NONE,
        ErrorCode.CORRUPT_MESSAGE,
        ErrorCode.UNKNOWN_PARTITION,
        ErrorCode.UNKNOWN_TOPIC,
        ErrorCode.CORRUPT_MESSAGE,
        ErrorCode.CORRUPT_MESSAGE,
        ErrorCode.CORRUPT_MESSAGE,
    ]
    assert "CRC" in response.partitions[1].error_message
    # Nothing of partition 1's bad requests was written, not even the good first batch.
    assert (await client.fetch("t", 1, 0)).high_watermark == 0


async def test_several_batches_in_one_partition(client: WireClient) -> None:
    # Goal: records may hold several whole batches; each gets consecutive offsets.
    await client.create_topic("t")
    result = await client.produce("t", 0, make_batch([b"a", b"b"]) + make_batch([b"c"]))
    assert result.base_offset == 0
    fetched = await client.fetch("t", 0, 0)
    assert offsets_of(fetched.records) == [0, 2]


async def test_oversized_batch_is_message_too_large(client: WireClient) -> None:
    # Goal: a batch above the topic's max.message.bytes is refused by name, nothing written.
    await client.create_topic("small", **{"max.message.bytes": 1024})
    result = await client.produce("small", 0, make_batch([b"x" * 2000]))
    assert result.error is ErrorCode.MESSAGE_TOO_LARGE
    assert "max" in result.error_message


async def test_bad_acks_is_invalid_request(client: WireClient) -> None:
    await client.create_topic("t")
    response = await client.request(codec.ProduceRequest(acks=2, partitions=()))
    assert isinstance(response, codec.ErrorResponse)
    assert response.error is ErrorCode.INVALID_REQUEST


async def test_fetch_errors(client: WireClient) -> None:
    # Goal: out-of-range offsets and unknown partitions are named errors.
    await client.create_topic("t")
    await client.produce("t", 0, make_batch([b"a"]))
    assert (await client.fetch("t", 0, 5)).error is ErrorCode.OFFSET_OUT_OF_RANGE
    assert (await client.fetch("t", 0, -1)).error is ErrorCode.OFFSET_OUT_OF_RANGE
    assert (await client.fetch("t", 3, 0)).error is ErrorCode.UNKNOWN_PARTITION
    assert (await client.fetch("u", 0, 0)).error is ErrorCode.UNKNOWN_TOPIC


async def test_long_poll_wakes_on_produce(client: WireClient, broker: Broker) -> None:
    # Goal: a fetch at the end waits, and answers as soon as data is appended (no polling).
    await client.create_topic("t")
    producer = await WireClient.connect(*broker.addresses.listen)
    correlation_id = await client.send(
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=0),),
            max_wait_ms=20_000,
        )
    )
    started = trio.current_time()
    await producer.produce("t", 0, make_batch([b"wake"]))
    response = await client.wait_response(correlation_id, timeout_s=5)
    assert trio.current_time() - started < 5
    assert offsets_of(response.partitions[0].records) == [0]
    await producer.aclose()


async def test_long_poll_times_out_with_nothing(client: WireClient) -> None:
    # Goal: with no data the fetch answers empty after max_wait_ms.
    await client.create_topic("t")
    started = trio.current_time()
    result = await client.fetch("t", 0, 0, max_wait_ms=200)
    elapsed = trio.current_time() - started
    assert result.records == b""
    assert 0.15 <= elapsed < 5


async def test_min_bytes_waits_for_enough_data(client: WireClient, broker: Broker) -> None:
    # Goal: min_bytes holds the answer back until that many bytes are there.
    await client.create_topic("t")
    producer = await WireClient.connect(*broker.addresses.listen)
    batch = make_batch([b"x" * 100])
    correlation_id = await client.send(
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=0),),
            max_wait_ms=20_000,
            min_bytes=len(batch) * 2 + 1,
        )
    )
    for _ in range(3):
        await producer.produce("t", 0, batch)
    response = await client.wait_response(correlation_id, timeout_s=5)
    assert len(offsets_of(response.partitions[0].records)) == 3
    await producer.aclose()


async def test_fetch_byte_limits(client: WireClient) -> None:
    # Goal: partition_max_bytes bounds a partition, except that one batch always comes back.
    await client.create_topic("t")
    batch = make_batch([b"x" * 500])
    for _ in range(4):
        await client.produce("t", 0, batch)
    limited = await client.fetch("t", 0, 0, partition_max_bytes=len(batch) * 2)
    assert offsets_of(limited.records) == [0, 1]
    tiny = await client.fetch("t", 0, 0, partition_max_bytes=1)
    assert offsets_of(tiny.records) == [0]


async def test_list_offsets(client: WireClient) -> None:
    # Goal: earliest, latest (high watermark) and by timestamp.
    await client.create_topic("t")
    await client.produce("t", 0, make_batch([b"a", b"b"], timestamp_ms=1000))
    await client.produce("t", 0, make_batch([b"c"], timestamp_ms=5000))
    assert (await client.list_offset("t", 0, codec.EARLIEST_TIMESTAMP)).offset == 0
    assert (await client.list_offset("t", 0, codec.LATEST_TIMESTAMP)).offset == 3
    assert (await client.list_offset("t", 0, 1001)).offset == 1
    assert (await client.list_offset("t", 0, 3000)).offset == 2
    assert (await client.list_offset("t", 0, 9000)).offset == -1
    assert (await client.list_offset("t", 9, 0)).error is ErrorCode.UNKNOWN_PARTITION
    assert (await client.list_offset("t", 0, -5)).error is ErrorCode.INVALID_REQUEST


async def test_auto_create_is_off_by_default_and_can_be_switched_on(
    start_broker: StartBroker,
) -> None:
    off = await start_broker()
    client = await WireClient.connect(*off.addresses.listen)
    assert (await client.produce("auto", 0, make_batch([b"a"]))).error is ErrorCode.UNKNOWN_TOPIC
    await client.aclose()
    off.request_stop()
    await off.stopped.wait()
    on = await start_broker(auto_create_topics=True, default_partitions=2)
    client = await WireClient.connect(*on.addresses.listen)
    assert (await client.produce("auto", 1, make_batch([b"a"]))).error is ErrorCode.NONE
    metadata = await client.request(
        codec.MetadataRequest(topics=("auto2",), allow_auto_create=True)
    )
    assert len(metadata.topics[0].partitions) == 2
    await client.aclose()


async def test_restart_keeps_topics_configs_and_data(start_broker: StartBroker) -> None:
    # Goal: topics (with their configs) and records survive a graceful restart.
    first = await start_broker()
    client = await WireClient.connect(*first.addresses.listen)
    await client.create_topic("keep", partitions=2, **{"retention.bytes": 1_000_000})
    await client.produce("keep", 1, make_batch([b"a", b"b"]))
    await client.aclose()
    first.request_stop()
    await first.stopped.wait()
    second = await start_broker()
    client = await WireClient.connect(*second.addresses.listen)
    described = await client.request(codec.DescribeTopicsRequest(topics=("keep",)))
    assert described.topics[0].configs["retention.bytes"] == 1_000_000
    fetched = await client.fetch("keep", 1, 0)
    assert offsets_of(fetched.records) == [0]
    assert fetched.high_watermark == 2
    await client.aclose()


async def test_acks_all_fsyncs_in_the_brokers_threads_which_stop_with_it(
    start_broker: StartBroker,
) -> None:
    # Goal: under flush.policy=always an acks=all produce is answered after an fsync in the
    # flusher's own threads (no per-flush hand-off to trio's pool), and a stopped broker leaves
    # none of them running.
    broker = await start_broker()
    client = await WireClient.connect(*broker.addresses.listen)
    await client.create_topic("durable")
    produced = await client.produce("durable", 0, make_batch([b"a", b"b"]))
    assert produced.error is ErrorCode.NONE
    fetched = await client.fetch("durable", 0, 0)
    assert fetched.high_watermark == 2  # the high watermark is the flushed offset
    threads = [t for t in threading.enumerate() if t.name.startswith("log-fsync")]
    assert threads
    await client.aclose()
    broker.request_stop()
    with trio.fail_after(10):
        await broker.stopped.wait()
    assert not any(thread.is_alive() for thread in threads)


async def test_pipelined_requests_keep_order_and_correlation_ids(client: WireClient) -> None:
    # Goal: many requests in flight at once; appends happen in arrival order.
    await client.create_topic("t")
    ids = [
        await client.send(
            codec.ProduceRequest(
                acks=-1,
                partitions=(
                    codec.ProducePartition(topic="t", partition=0, records=make_batch([b"%d" % i])),
                ),
            )
        )
        for i in range(200)
    ]
    offsets = [(await client.wait_response(i)).partitions[0].base_offset for i in ids]
    assert offsets == list(range(200))


async def test_handshake_reports_limits(client: WireClient, broker: Broker) -> None:
    assert client.handshake is not None
    assert client.handshake.max_frame_bytes == broker.config.max_frame_bytes
    assert client.handshake.apis["produce"] == (1, 1)


async def test_wrong_protocol_version_is_refused(broker: Broker) -> None:
    stream = await trio.open_tcp_stream(*broker.addresses.listen)
    frames = FrameConnection(Role.CLIENT)
    header, payload = codec.encode_request(
        codec.HandshakeRequest(client_id="old", protocol_version=99), correlation_id=0
    )
    await stream.send_all(frames.send(header, payload))
    frames.receive_data(await stream.receive_some(65536))
    frame = frames.next_frame()
    response = codec.decode_response(frame.header, frame.payload)
    assert response.error is ErrorCode.UNSUPPORTED_VERSION
    with trio.fail_after(5):
        assert await stream.receive_some(65536) == b""  # then the broker closes
    await stream.aclose()


async def test_wrong_shapes_get_invalid_request_and_the_connection_stays(
    client: WireClient,
) -> None:
    # Goal: a body that does not match the schema is answered, not fatal.
    bad = {"api": "fetch", "version": 1, "correlation_id": 900, "body": {"partitions": 5}}
    await client.send_raw(client.frames.send(bad))
    response = await client.wait_response(900)
    assert response.error is ErrorCode.INVALID_REQUEST
    assert "fetch.partitions" in response.error_message
    unknown = {"api": "frobnicate", "version": 1, "correlation_id": 901}
    await client.send_raw(client.frames.send(unknown))
    assert (await client.wait_response(901)).error is ErrorCode.UNSUPPORTED_VERSION
    second_handshake = {
        "api": "handshake",
        "version": 1,
        "correlation_id": 902,
        "body": {"client_id": "x"},
    }
    await client.send_raw(client.frames.send(second_handshake))
    assert (await client.wait_response(902)).error is ErrorCode.INVALID_REQUEST
    assert (await client.request(codec.MetadataRequest())).topics == ()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET /metrics HTTP/1.1\r\n\r\n",
        struct.pack(">II", 10, 50) + b"x" * 10,
        struct.pack(">I", 2**31),
        struct.pack(">II", 6, 2) + b"\xc1\xc1",
    ],
)
async def test_framing_errors_close_only_that_connection(
    broker: Broker, client: WireClient, garbage: bytes
) -> None:
    # Goal: garbage closes the offending connection; others are still served.
    bad = await WireClient.connect(*broker.addresses.listen)
    await bad.send_raw(garbage)
    with trio.fail_after(5):
        while await bad.stream.receive_some(65536):
            pass
    await bad.aclose()
    assert (await client.request(codec.MetadataRequest())).topics == ()


async def test_first_frame_must_be_a_handshake(broker: Broker) -> None:
    stream = await trio.open_tcp_stream(*broker.addresses.listen)
    header = msgpack.packb({"api": "metadata", "version": 1, "correlation_id": 1, "body": {}})
    await stream.send_all(struct.pack(">II", 4 + len(header), len(header)) + header)
    with trio.fail_after(5):
        assert await stream.receive_some(65536) == b""
    await stream.aclose()


async def test_graceful_stop_answers_long_polls(start_broker: StartBroker) -> None:
    # Goal: a stop does not wait out a 30 s long poll; the fetch is answered, then closed.
    broker = await start_broker()
    client = await WireClient.connect(*broker.addresses.listen)
    await client.create_topic("t")
    correlation_id = await client.send(
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=0),),
            max_wait_ms=30_000,
        )
    )
    await trio.testing.wait_all_tasks_blocked()
    broker.request_stop()
    response = await client.wait_response(correlation_id, timeout_s=5)
    assert response.partitions[0].records == b""
    with trio.fail_after(10):
        await broker.stopped.wait()
    await client.aclose()


async def test_inflight_limit_bounds_reading(start_broker: StartBroker) -> None:
    # Goal: with max 2 in flight, a third long poll is not read until one completes,
    # and everything is still answered.
    broker = await start_broker(max_inflight_requests_per_connection=2)
    client = await WireClient.connect(*broker.addresses.listen)
    await client.create_topic("t")
    polls = [
        await client.send(
            codec.FetchRequest(
                partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=0),),
                max_wait_ms=300,
            )
        )
        for _ in range(5)
    ]
    for correlation_id in polls:
        response = await client.wait_response(correlation_id, timeout_s=10)
        assert response.partitions[0].error is ErrorCode.NONE
    await client.aclose()


async def test_non_leader_partitions_answer_not_leader(client: WireClient, broker: Broker) -> None:
    # Goal: the replication seam - a partition led elsewhere refuses produce and fetch by name.
    await client.create_topic("t")
    assert broker.context is not None
    broker.context.partitions[("t", 0)].leader_id = 42
    produced = await client.produce("t", 0, make_batch([b"a"]))
    assert produced.error is ErrorCode.NOT_LEADER
    assert "node 42" in produced.error_message
    assert (await client.fetch("t", 0, 0)).error is ErrorCode.NOT_LEADER
    metadata = await client.request(codec.MetadataRequest(topics=("t",)))
    assert metadata.topics[0].partitions[0].leader_id == 42


async def test_clients_that_vanish_mid_request_are_not_errors(
    broker: Broker, client: WireClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Goal: a client that resets its connection with replies pending costs nothing but the
    # connection: no error logged, no effect on others.
    import socket

    await client.create_topic("t")
    for _ in range(20):
        gone = await WireClient.connect(*broker.addresses.listen)
        for _ in range(5):
            await gone.send(
                codec.FetchRequest(
                    partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=0),),
                    max_wait_ms=100,
                )
            )
            await gone.send(
                codec.ProduceRequest(
                    partitions=(
                        codec.ProducePartition(topic="t", partition=0, records=make_batch([b"x"])),
                    )
                )
            )
        # SO_LINGER 0: close with a reset, like a crashed client.
        gone.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await gone.aclose()
    await client.fetch("t", 0, 0, max_wait_ms=300, min_bytes=10**9)  # let the polls expire
    assert (await client.request(codec.MetadataRequest())).topics[0].name == "t"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]


async def test_connections_beyond_the_limit_are_closed(start_broker: StartBroker) -> None:
    # Goal: max_connections bounds open connections; the extra one is closed, the first served.
    broker = await start_broker(max_connections=1)
    first = await WireClient.connect(*broker.addresses.listen)
    stream = await trio.open_tcp_stream(*broker.addresses.listen)
    with trio.fail_after(5):
        assert await stream.receive_some(1024) == b""
    await stream.aclose()
    assert (await first.request(codec.MetadataRequest())).topics == ()
    await first.aclose()


async def test_offset_lookups_wait_for_a_settled_high_watermark(
    client: WireClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Goal: while a partition's high watermark may lag what was acknowledged (a new Raft leader
    # before an entry of its term commits: PartitionState.high_watermark_settled), offset
    # lookups and DeleteRecords answer LEADER_NOT_AVAILABLE, which clients retry, rather than a
    # stale offset or OFFSET_OUT_OF_RANGE.
    await client.create_topic("t")
    await client.produce("t", 0, make_batch([b"a", b"b"]))
    monkeypatch.setattr(PartitionState, "high_watermark_settled", property(lambda self: False))
    for timestamp in (codec.EARLIEST_TIMESTAMP, codec.LATEST_TIMESTAMP, 1000):
        answer = await client.list_offset("t", 0, timestamp)
        assert answer.error is ErrorCode.LEADER_NOT_AVAILABLE
        assert "has not yet committed an entry of its term" in answer.error_message
    deleted = await client.request(
        codec.DeleteRecordsRequest(
            partitions=(codec.DeleteRecordsPartition(topic="t", partition=0, offset=1),)
        )
    )
    assert deleted.partitions[0].error is ErrorCode.LEADER_NOT_AVAILABLE
    monkeypatch.undo()
    assert (await client.list_offset("t", 0, codec.LATEST_TIMESTAMP)).offset == 2
