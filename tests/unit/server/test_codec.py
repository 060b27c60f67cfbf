"""Codec: every message round-trips through (header, payload), batches ride in the payload,
and any wrong shape is a named InvalidRequestError (never another exception)."""

from __future__ import annotations

import dataclasses
import typing

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import codec
from wire.batch import build_batch
from wire.codec import (
    ApiKey,
    ErrorResponse,
    FetchPartitionResult,
    FetchResponse,
    InvalidRequestError,
    ProducePartition,
    ProduceRequest,
    UnsupportedApiError,
)
from wire.error_codes import BrokerError, ErrorCode

BATCH = build_batch([(1_700_000_000_000, b"key", b"value", None)])


def sample_messages() -> list[typing.Any]:
    partition = codec.PartitionMetadata(partition=0, leader_id=1, replicas=(1,), isr=(1,))
    return [
        codec.HandshakeRequest(client_id="c"),
        codec.HandshakeResponse(
            node_id=1, protocol_version=1, apis={"fetch": (1, 1)}, max_frame_bytes=1024
        ),
        codec.MetadataRequest(topics=("a", "b")),
        codec.MetadataRequest(),
        codec.MetadataResponse(
            brokers=(codec.BrokerInfo(node_id=1, host="h", port=9),),
            controller_id=1,
            topics=(codec.TopicMetadata(name="a", partitions=(partition,)),),
        ),
        codec.CreateTopicsRequest(
            topics=(codec.NewTopic(name="t", partitions=3, configs={"retention.ms": 5, "x": "y"}),)
        ),
        codec.CreateTopicsResponse(
            topics=(codec.TopicResult(name="t", error=ErrorCode.INVALID_CONFIG, error_message="m"),)
        ),
        codec.DeleteTopicsRequest(topics=("t",)),
        codec.DeleteTopicsResponse(topics=(codec.TopicResult(name="t"),)),
        codec.DescribeTopicsRequest(topics=None),
        codec.DescribeTopicsResponse(
            topics=(
                codec.TopicDescription(
                    name="t",
                    partition_count=1,
                    configs={"flush.policy": "always", "retention.ms": -1},
                    partitions=(codec.PartitionDescription(partition=0, leader_id=0),),
                ),
            )
        ),
        ProduceRequest(
            acks=1,
            partitions=(
                ProducePartition(topic="t", partition=0, records=BATCH),
                ProducePartition(topic="t", partition=1, records=BATCH + BATCH),
            ),
        ),
        codec.ProduceResponse(
            partitions=(codec.ProducePartitionResult(topic="t", partition=0, base_offset=5),)
        ),
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=3),),
            max_wait_ms=100,
        ),
        FetchResponse(
            partitions=(
                FetchPartitionResult(topic="t", partition=0, high_watermark=9, records=BATCH),
                FetchPartitionResult(topic="t", partition=1, error=ErrorCode.OFFSET_OUT_OF_RANGE),
            )
        ),
        codec.ListOffsetsRequest(
            partitions=(codec.ListOffsetsPartition(topic="t", partition=0, timestamp=-2),)
        ),
        codec.ListOffsetsResponse(
            partitions=(codec.ListOffsetsPartitionResult(topic="t", partition=0, offset=4),)
        ),
    ]


def wire(header: dict, payload: bytes) -> tuple[dict, bytes]:
    # Through real msgpack, as the frame layer does (tuples come back as lists).
    return msgpack.unpackb(msgpack.packb(header, use_bin_type=True), raw=False), payload


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: typing.Any) -> None:
    is_request = type(message) in codec.REQUEST_TYPES.values()
    if is_request:
        header, payload = wire(*codec.encode_request(message, correlation_id=42))
        assert codec.decode_request(header, payload) == message
    else:
        header, payload = wire(*codec.encode_response(message, correlation_id=42))
        assert codec.decode_response(header, payload) == message
    assert header["correlation_id"] == 42
    assert header["api"] == message.API.value


def test_batches_travel_in_the_payload_not_the_header() -> None:
    request = ProduceRequest(
        partitions=(
            ProducePartition(topic="t", partition=0, records=BATCH),
            ProducePartition(topic="t", partition=1, records=b""),
            ProducePartition(topic="t", partition=2, records=BATCH),
        )
    )
    header, payload = codec.encode_request(request, correlation_id=1)
    assert payload == BATCH + BATCH
    slices = [p["records"] for p in header["body"]["partitions"]]
    assert slices == [[0, len(BATCH)], [len(BATCH), 0], [len(BATCH), len(BATCH)]]
    assert BATCH not in msgpack.packb(header)


def test_single_payload_part_is_not_copied() -> None:
    response = FetchResponse(
        partitions=(FetchPartitionResult(topic="t", partition=0, records=BATCH),)
    )
    _, payload = codec.encode_response(response, correlation_id=1)
    assert payload is BATCH


def produce_header(body: typing.Any, **envelope: typing.Any) -> dict:
    header = {"api": "produce", "version": 1, "correlation_id": 1, "body": body}
    header.update(envelope)
    return header


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "produce.partitions"),
        ({"partitions": "x"}, "produce.partitions"),
        ({"partitions": [{"topic": "t", "partition": 0}]}, "produce.partitions[0].records"),
        (
            {"partitions": [{"topic": 1, "partition": 0, "records": [0, 0]}]},
            "produce.partitions[0].topic",
        ),
        (
            {"partitions": [{"topic": "t", "partition": True, "records": [0, 0]}]},
            "produce.partitions[0].partition",
        ),
        (
            {"partitions": [{"topic": "t", "partition": 2**64, "records": [0, 0]}]},
            "produce.partitions[0].partition",
        ),
        (
            {"partitions": [{"topic": "t", "partition": 0, "records": [0, 99]}]},
            "produce.partitions[0].records",
        ),
        (
            {"partitions": [{"topic": "t", "partition": 0, "records": [-1, 1]}]},
            "produce.partitions[0].records",
        ),
        (
            {"partitions": [{"topic": "t", "partition": 0, "records": b"raw"}]},
            "produce.partitions[0].records",
        ),
        ({"partitions": [], "acks": "all"}, "produce.acks"),
        ([1, 2], "produce"),
        (None, "produce"),
    ],
)
def test_wrong_shapes_name_the_field(body: typing.Any, path: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        codec.decode_request(produce_header(body), b"0123456789")
    assert info.value.path == path
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_unknown_api_and_version_are_unsupported() -> None:
    with pytest.raises(UnsupportedApiError, match="unknown api 'nope'"):
        codec.decode_request({"api": "nope", "version": 1, "correlation_id": 1}, b"")
    with pytest.raises(UnsupportedApiError, match="version 9"):
        codec.decode_request(produce_header({"partitions": []}, version=9), b"")
    with pytest.raises(InvalidRequestError, match="version"):
        codec.decode_request(produce_header({"partitions": []}, version="1"), b"")
    with pytest.raises(InvalidRequestError, match="body"):
        codec.decode_request({"api": "fetch", "version": 1, "correlation_id": 1}, b"")


def test_unknown_keys_are_ignored_and_defaults_fill_in() -> None:
    body = {"partitions": [], "future_field": [1, 2]}
    request = codec.decode_request(produce_header(body), b"")
    assert request == ProduceRequest(partitions=(), acks=codec.ACKS_ALL, timeout_ms=30_000)


def test_error_response_round_trip() -> None:
    header, payload = codec.encode_error_response(
        "produce", correlation_id=5, error=ErrorCode.INVALID_REQUEST, error_message="bad"
    )
    decoded = codec.decode_response(*wire(header, payload))
    assert decoded == ErrorResponse("produce", ErrorCode.INVALID_REQUEST, "bad")


def test_unknown_error_wire_id_decodes_to_unknown_server_error() -> None:
    header, payload = codec.encode_response(
        codec.DeleteTopicsResponse(topics=(codec.TopicResult(name="t"),)), correlation_id=1
    )
    header["body"]["topics"][0]["error"] = 9999
    decoded = codec.decode_response(header, payload)
    assert isinstance(decoded, codec.DeleteTopicsResponse)
    assert decoded.topics[0].error is ErrorCode.UNKNOWN_SERVER_ERROR


def test_every_api_has_request_response_and_versions() -> None:
    for api in ApiKey:
        assert codec.REQUEST_TYPES[api].API is api
        assert codec.RESPONSE_TYPES[api].API is api
        low, high = codec.API_VERSIONS[api]
        assert 0 < low <= high


def test_header_version_falls_back_to_one() -> None:
    assert codec.header_version({"version": 1}) == 1
    assert codec.header_version({"version": "x"}) == 1
    assert codec.header_version({}) == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "partitions",
        "topic",
        "partition",
        "records",
        "acks",
        "fetch_offset",
        "topics",
        "name",
        "configs",
        "timestamp",
        "max_wait_ms",
        "client_id",
        "apis",
        "x",
    ]
)
bodies = st.recursive(
    json_values,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(field_names, children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(
    api=st.sampled_from([api.value for api in ApiKey]), body=bodies, payload=st.binary(max_size=64)
)
def test_random_bodies_decode_or_raise_a_broker_error(
    api: str, body: typing.Any, payload: bytes
) -> None:
    # Goal: no shape of input makes the codec raise anything but a named BrokerError.
    header = {"api": api, "version": 1, "correlation_id": 1, "body": body}
    try:
        request = codec.decode_request(header, payload)
    except BrokerError as exc:
        assert exc.code in (ErrorCode.INVALID_REQUEST, ErrorCode.UNSUPPORTED_VERSION)
    else:
        assert dataclasses.is_dataclass(request)


names = st.text(alphabet="abcxyz._-", min_size=1, max_size=12)
errors = st.sampled_from(list(ErrorCode))
produce_requests = st.builds(
    ProduceRequest,
    partitions=st.lists(
        st.builds(
            ProducePartition,
            topic=names,
            partition=st.integers(0, 2**31 - 1),
            records=st.binary(max_size=200),
        ),
        max_size=5,
    ).map(tuple),
    acks=st.sampled_from([0, 1, -1]),
    timeout_ms=st.integers(0, 2**31 - 1),
)
fetch_responses = st.builds(
    FetchResponse,
    partitions=st.lists(
        st.builds(
            FetchPartitionResult,
            topic=names,
            partition=st.integers(0, 1000),
            error=errors,
            error_message=st.text(max_size=20),
            high_watermark=st.integers(-1, 2**62),
            log_start_offset=st.integers(-1, 2**62),
            records=st.binary(max_size=200),
        ),
        max_size=5,
    ).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(request=produce_requests, correlation_id=st.integers(-(2**31), 2**31 - 1))
def test_produce_requests_round_trip(request: ProduceRequest, correlation_id: int) -> None:
    header, payload = wire(*codec.encode_request(request, correlation_id=correlation_id))
    assert codec.decode_request(header, payload) == request
    assert len(payload) == sum(len(p.records) for p in request.partitions)


@settings(max_examples=300, deadline=None)
@given(response=fetch_responses)
def test_fetch_responses_round_trip(response: FetchResponse) -> None:
    header, payload = wire(*codec.encode_response(response, correlation_id=1))
    decoded = codec.decode_response(header, payload)
    # Unknown-to-this-version codes aside, every code survives the wire.
    assert decoded == response
