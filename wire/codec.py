"""Message schemas: a frozen dataclass per request and response, and the header <-> object codec.

A frame's msgpack header is the envelope

    {"api": str, "version": int, "correlation_id": int, "body": {...}}            request/response
    {"api": str, "version": int, "correlation_id": int, "error": int, "error_message": str}
                                                        request-level failure (ErrorResponse)

`body` is the dataclass as a map of its field names. Fields typed `bytes` (record batches) are not
in the header: they travel in the frame's raw payload and the header holds an `[offset, length]`
slice into it, so batches are never copied through msgpack. `ErrorCode` fields travel as wire ids.

Rules:
- Pure: no I/O, no clock. The converters are compiled once per dataclass from its type hints.
- Decoding is strict: a missing required field, a wrong type (a bool is not an int), an integer out
  of i64 range or a slice outside the payload raises `InvalidRequestError` naming the field path
  (the server answers INVALID_REQUEST; the connection stays open). Unknown keys are ignored, and a
  missing field that has a default takes it, so adding an optional field is backward compatible.
- Every API has a version range in `API_VERSIONS`; a version outside it is UNSUPPORTED_VERSION.
- Adding an API is its `ApiKey` and two dataclasses (`<Name>Request`, `<Name>Response`, each with
  `API`): the request and response tables are derived from them at the end of the module.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Final, Union

from wire.error_codes import BrokerError, ErrorCode
from wire.framing import HANDSHAKE_API, PROTOCOL_VERSION

I64_MIN: Final = -(2**63)
I64_MAX: Final = 2**63 - 1

# ListOffsets special timestamps (Kafka's values).
LATEST_TIMESTAMP: Final = -1
EARLIEST_TIMESTAMP: Final = -2

# Produce acks values.
ACKS_NONE: Final = 0
ACKS_LEADER: Final = 1
ACKS_ALL: Final = -1


class ApiKey(enum.Enum):
    """The APIs of the wire protocol; the value is the `api` string in the header."""

    HANDSHAKE = HANDSHAKE_API
    METADATA = "metadata"
    CREATE_TOPICS = "create_topics"
    ALTER_TOPIC_CONFIGS = "alter_topic_configs"
    # Kafka's CreatePartitions and DeleteRecords (schemas at the end of this module).
    CREATE_PARTITIONS = "create_partitions"
    DELETE_RECORDS = "delete_records"
    DELETE_TOPICS = "delete_topics"
    DESCRIBE_TOPICS = "describe_topics"
    PRODUCE = "produce"
    FETCH = "fetch"
    LIST_OFFSETS = "list_offsets"
    # Consumer groups (schemas at the end of this module; docs/consumer-groups.md).
    FIND_COORDINATOR = "find_coordinator"
    JOIN_GROUP = "join_group"
    SYNC_GROUP = "sync_group"
    HEARTBEAT = "heartbeat"
    LEAVE_GROUP = "leave_group"
    OFFSET_COMMIT = "offset_commit"
    OFFSET_FETCH = "offset_fetch"
    LIST_GROUPS = "list_groups"
    DESCRIBE_GROUPS = "describe_groups"
    DELETE_GROUPS = "delete_groups"
    # Cluster (schemas at the end of this module; docs/cluster.md). The broker_* and
    # leader_report APIs are broker-to-controller requests, not for clients.
    CLUSTER_STATUS = "cluster_status"
    BROKER_REGISTRATION = "broker_registration"
    BROKER_HEARTBEAT = "broker_heartbeat"
    LEADER_REPORT = "leader_report"
    # `broker-cli cluster decommission` (runs on the controller leader; others forward it).
    DECOMMISSION_BROKER = "decommission_broker"
    # Idempotence and transactions (schemas at the end of this module; docs/transactions.md).
    # write_txn_markers is broker-to-broker (transaction coordinator -> partition leader).
    INIT_PRODUCER_ID = "init_producer_id"
    ADD_PARTITIONS_TO_TXN = "add_partitions_to_txn"
    ADD_OFFSETS_TO_TXN = "add_offsets_to_txn"
    END_TXN = "end_txn"
    TXN_OFFSET_COMMIT = "txn_offset_commit"
    WRITE_TXN_MARKERS = "write_txn_markers"
    LIST_TRANSACTIONS = "list_transactions"
    DESCRIBE_TRANSACTIONS = "describe_transactions"
    # Share groups: queues (schemas at the end of this module; docs/queues.md).
    SHARE_FETCH = "share_fetch"
    SHARE_ACKNOWLEDGE = "share_acknowledge"
    ALTER_GROUP_CONFIGS = "alter_group_configs"
    DESCRIBE_SHARE_GROUPS = "describe_share_groups"
    # Partition reassignment (schemas at the end of this module; docs/reassignment.md).
    # reassignment_completed is broker-to-controller (a partition leader's report).
    ALTER_PARTITION_REASSIGNMENTS = "alter_partition_reassignments"
    LIST_PARTITION_REASSIGNMENTS = "list_partition_reassignments"
    REASSIGNMENT_COMPLETED = "reassignment_completed"
    REBALANCE = "rebalance"
    # Security: authentication (schemas at the end of this module; docs/security.md). The
    # two sasl_* APIs are the only ones a broker with `--auth scram` answers before a login.
    SASL_HANDSHAKE = "sasl_handshake"
    SASL_AUTHENTICATE = "sasl_authenticate"
    ALTER_USER_SCRAM_CREDENTIALS = "alter_user_scram_credentials"
    DESCRIBE_USER_SCRAM_CREDENTIALS = "describe_user_scram_credentials"
    # Security: ACLs and quotas (schemas at the end of this module; docs/security.md).
    CREATE_ACLS = "create_acls"
    DESCRIBE_ACLS = "describe_acls"
    DELETE_ACLS = "delete_acls"
    ALTER_CLIENT_QUOTAS = "alter_client_quotas"
    DESCRIBE_CLIENT_QUOTAS = "describe_client_quotas"


# Supported (min, max) version of each API. Bump max when adding a version; never drop min silently.
API_VERSIONS: Final[dict[ApiKey, tuple[int, int]]] = {api: (1, 1) for api in ApiKey}


def supported_apis() -> dict[str, tuple[int, int]]:
    """`API_VERSIONS` keyed by wire name, as sent in the handshake."""
    return {api.value: versions for api, versions in API_VERSIONS.items()}


class InvalidRequestError(BrokerError):
    """A header or body does not match its schema; `path` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(ErrorCode.INVALID_REQUEST, f"{path}: {message}")
        self.path = path


class UnsupportedApiError(BrokerError):
    """An unknown API name or a version outside the supported range."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNSUPPORTED_VERSION, message)


_message = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
ConfigValue = Union[str, int, bool, float]  # noqa: UP007 - a runtime alias, resolved by get_type_hints


# --- handshake ------------------------------------------------------------------------------------


@_message
class HandshakeRequest:
    """First frame from the client. `apis`: what the client speaks, by name, (min, max) version."""

    API: ClassVar[ApiKey] = ApiKey.HANDSHAKE
    client_id: str
    protocol_version: int = PROTOCOL_VERSION
    apis: dict[str, tuple[int, int]] = dataclasses.field(default_factory=supported_apis)


@_message
class HandshakeResponse:
    """First frame from the server. An error (UNSUPPORTED_VERSION) means: close and upgrade."""

    API: ClassVar[ApiKey] = ApiKey.HANDSHAKE
    node_id: int
    protocol_version: int
    apis: dict[str, tuple[int, int]]
    max_frame_bytes: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    # The SASL mechanisms a login must use before any other request; empty when auth is off.
    sasl_mechanisms: tuple[str, ...] = ()


# --- metadata -------------------------------------------------------------------------------------


@_message
class MetadataRequest:
    """`topics=None` asks for every topic. Unknown topics are created only if both this flag and
    the broker's `auto_create_topics` are on."""

    API: ClassVar[ApiKey] = ApiKey.METADATA
    topics: tuple[str, ...] | None = None
    allow_auto_create: bool = False


@_message
class BrokerInfo:
    node_id: int
    host: str
    port: int


@_message
class PartitionMetadata:
    partition: int
    leader_id: int
    leader_epoch: int = 0
    replicas: tuple[int, ...] = ()
    isr: tuple[int, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class TopicMetadata:
    name: str
    partitions: tuple[PartitionMetadata, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class MetadataResponse:
    API: ClassVar[ApiKey] = ApiKey.METADATA
    brokers: tuple[BrokerInfo, ...]
    controller_id: int
    topics: tuple[TopicMetadata, ...]


# --- topic administration ------------------------------------------------------------------------


@_message
class NewTopic:
    """`partitions=-1` and `replication_factor=-1` take the broker defaults. `configs` uses Kafka's
    dotted keys (`retention.ms`) or field names (`retention_ms`), values as str, int or bool."""

    name: str
    partitions: int = -1
    replication_factor: int = -1
    configs: dict[str, ConfigValue] = dataclasses.field(default_factory=dict)


@_message
class CreateTopicsRequest:
    API: ClassVar[ApiKey] = ApiKey.CREATE_TOPICS
    topics: tuple[NewTopic, ...]
    validate_only: bool = False


@_message
class TopicResult:
    name: str
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class CreateTopicsResponse:
    API: ClassVar[ApiKey] = ApiKey.CREATE_TOPICS
    topics: tuple[TopicResult, ...]


@_message
class DeleteTopicsRequest:
    API: ClassVar[ApiKey] = ApiKey.DELETE_TOPICS
    topics: tuple[str, ...]


@_message
class DeleteTopicsResponse:
    API: ClassVar[ApiKey] = ApiKey.DELETE_TOPICS
    topics: tuple[TopicResult, ...]


@_message
class DescribeTopicsRequest:
    """`topics=None` describes every topic."""

    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_TOPICS
    topics: tuple[str, ...] | None = None


@_message
class PartitionDescription:
    """Offsets are record offsets; end offsets and the high watermark are exclusive."""

    partition: int
    leader_id: int
    replicas: tuple[int, ...] = ()
    isr: tuple[int, ...] = ()
    log_start_offset: int = -1
    log_end_offset: int = -1
    high_watermark: int = -1
    size_bytes: int = 0
    segment_count: int = 0
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class TopicDescription:
    """`configs`: the effective topic config under Kafka's dotted keys."""

    name: str
    partition_count: int = 0
    replication_factor: int = 0
    configs: dict[str, ConfigValue] = dataclasses.field(default_factory=dict)
    partitions: tuple[PartitionDescription, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class DescribeTopicsResponse:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_TOPICS
    topics: tuple[TopicDescription, ...]


# --- produce --------------------------------------------------------------------------------------


@_message
class ProducePartition:
    """`records`: one or more whole record batches, carried in the frame payload."""

    topic: str
    partition: int
    records: bytes


@_message
class ProduceRequest:
    """`acks`: 0 = no response at all, 1 = after the leader's append, -1 = once durable (all)."""

    API: ClassVar[ApiKey] = ApiKey.PRODUCE
    partitions: tuple[ProducePartition, ...]
    acks: int = ACKS_ALL
    timeout_ms: int = 30_000


@_message
class ProducePartitionResult:
    """With NOT_LEADER, `leader_id`/`leader_epoch` name the leader the broker knows (its Raft
    term), so the client retries there at once; -1 when it knows none (an election)."""

    topic: str
    partition: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = -1
    leader_id: int = -1
    leader_epoch: int = -1


@_message
class ProduceResponse:
    API: ClassVar[ApiKey] = ApiKey.PRODUCE
    partitions: tuple[ProducePartitionResult, ...]
    # How long the broker will read nothing more from this connection: the client went over a
    # quota (docs/security.md, "Quotas"). The client should wait as long before its next request.
    throttle_time_ms: int = 0


# --- fetch ----------------------------------------------------------------------------------------


@_message
class FetchPartition:
    topic: str
    partition: int
    fetch_offset: int
    partition_max_bytes: int = 1024 * 1024


@_message
class FetchRequest:
    """Long poll: answer once `min_bytes` are available across the partitions or after
    `max_wait_ms`. At most `max_bytes` in all, except that the first non-empty partition always
    returns at least one whole batch so a consumer can make progress."""

    API: ClassVar[ApiKey] = ApiKey.FETCH
    partitions: tuple[FetchPartition, ...]
    max_wait_ms: int = 500
    min_bytes: int = 1
    max_bytes: int = 50 * 1024 * 1024
    # READ_UNCOMMITTED (0) reads up to the high watermark; READ_COMMITTED (1) up to the last
    # stable offset, with the aborted transactions of the range in each partition's result.
    isolation_level: int = 0


# Fetch isolation levels (Kafka's values).
READ_UNCOMMITTED: Final = 0
READ_COMMITTED: Final = 1


@_message
class AbortedTransaction:
    producer_id: int
    first_offset: int


@_message
class FetchPartitionResult:
    """`records`: whole batches (offsets below `high_watermark`), carried in the frame payload."""

    topic: str
    partition: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    high_watermark: int = -1
    log_start_offset: int = -1
    records: bytes = b""
    # The end of what read_committed may read (-1 for read_uncommitted fetches).
    last_stable_offset: int = -1
    # read_committed only: (producer id, first offset) of each aborted transaction overlapping the
    # returned records; the consumer drops that producer's records from the first offset up to
    # its abort marker. Ranges, not records: the broker never decodes a batch to build this.
    aborted_transactions: tuple[AbortedTransaction, ...] = ()
    # NOT_LEADER: the leader this broker knows and its epoch (-1: none known), as in Produce.
    leader_id: int = -1
    leader_epoch: int = -1


@_message
class FetchResponse:
    API: ClassVar[ApiKey] = ApiKey.FETCH
    partitions: tuple[FetchPartitionResult, ...]
    # See ProduceResponse.throttle_time_ms.
    throttle_time_ms: int = 0


# --- list offsets ---------------------------------------------------------------------------------


@_message
class ListOffsetsPartition:
    """`timestamp`: EARLIEST_TIMESTAMP (-2), LATEST_TIMESTAMP (-1) or ms since the epoch."""

    topic: str
    partition: int
    timestamp: int


@_message
class ListOffsetsRequest:
    API: ClassVar[ApiKey] = ApiKey.LIST_OFFSETS
    partitions: tuple[ListOffsetsPartition, ...]
    # READ_COMMITTED: "latest" is the last stable offset rather than the high watermark.
    isolation_level: int = 0


@_message
class ListOffsetsPartitionResult:
    """`offset`: the earliest offset, the high watermark (latest), or the first offset whose
    timestamp is >= the one asked; -1 when no record is that recent."""

    topic: str
    partition: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    offset: int = -1
    timestamp: int = -1


@_message
class ListOffsetsResponse:
    API: ClassVar[ApiKey] = ApiKey.LIST_OFFSETS
    partitions: tuple[ListOffsetsPartitionResult, ...]


# --- request-level error --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The server could not handle the request at all (INVALID_REQUEST, UNSUPPORTED_VERSION)."""

    api: str
    error: ErrorCode
    error_message: str


Request = (
    HandshakeRequest
    | MetadataRequest
    | CreateTopicsRequest
    | DeleteTopicsRequest
    | DescribeTopicsRequest
    | ProduceRequest
    | FetchRequest
    | ListOffsetsRequest
)
Response = (
    HandshakeResponse
    | MetadataResponse
    | CreateTopicsResponse
    | DeleteTopicsResponse
    | DescribeTopicsResponse
    | ProduceResponse
    | FetchResponse
    | ListOffsetsResponse
)


# --- envelope -------------------------------------------------------------------------------------


def encode_request(
    request: Request, *, correlation_id: int, version: int | None = None
) -> tuple[dict[str, Any], bytes]:
    """The `(header, payload)` of a request frame; pass them to `FrameConnection.send`."""
    return _encode_envelope(request, correlation_id, version)


def encode_response(
    response: Response, *, correlation_id: int, version: int | None = None
) -> tuple[dict[str, Any], bytes]:
    """The `(header, payload)` of a response frame, for the request with `correlation_id`."""
    return _encode_envelope(response, correlation_id, version)


def encode_error_response(
    api: str, *, correlation_id: int, error: ErrorCode, error_message: str, version: int = 1
) -> tuple[dict[str, Any], bytes]:
    """A request-level failure: the client's `decode_response` returns it as an `ErrorResponse`."""
    header = {
        "api": api,
        "version": version,
        "correlation_id": correlation_id,
        "error": error.wire_id,
        "error_message": error_message,
    }
    return header, b""


def decode_request(header: dict[str, Any], payload: bytes) -> Request:
    """The request object of a frame. Raises `InvalidRequestError` or `UnsupportedApiError`."""
    api, _ = _check_envelope(header)
    return typing.cast(Request, _decode_body(REQUEST_TYPES[api], header, payload))


def decode_response(header: dict[str, Any], payload: bytes) -> Response | ErrorResponse:
    """The response object of a frame, or an `ErrorResponse` if the server refused the request."""
    if "error" in header:
        # Checked before the api: a request with an unknown api is answered with an error too.
        error_id = header["error"]
        message = header.get("error_message", "")
        api_name = header.get("api")
        if not _is_int(error_id) or not isinstance(message, str) or not isinstance(api_name, str):
            raise InvalidRequestError("error", f"expected an int code and str message: {header!r}")
        return ErrorResponse(api_name, ErrorCode.from_wire(error_id), message)
    api, _ = _check_envelope(header)
    return typing.cast(Response, _decode_body(RESPONSE_TYPES[api], header, payload))


def header_version(header: dict[str, Any]) -> int:
    """The version a reply to `header` should carry: the request's if usable, else 1."""
    version = header.get("version")
    return version if _is_int(version) and 0 <= version <= 2**15 else 1


def _encode_envelope(
    message: Any, correlation_id: int, version: int | None
) -> tuple[dict[str, Any], bytes]:
    api: ApiKey = message.API
    writer = _PayloadWriter()
    body = _converter(type(message)).encode(message, writer)
    header = {
        "api": api.value,
        "version": API_VERSIONS[api][1] if version is None else version,
        "correlation_id": correlation_id,
        "body": body,
    }
    return header, writer.getvalue()


def _check_envelope(header: dict[str, Any]) -> tuple[ApiKey, int]:
    name = header.get("api")
    try:
        api = ApiKey(name)
    except ValueError:
        known = ", ".join(key.value for key in ApiKey)
        raise UnsupportedApiError(f"unknown api {name!r}; this broker speaks: {known}") from None
    version = header.get("version")
    if not _is_int(version):
        raise InvalidRequestError("version", f"expected an integer, got {version!r}")
    low, high = API_VERSIONS[api]
    if not low <= version <= high:
        raise UnsupportedApiError(
            f"{api.value} version {version} is not supported; supported: {low} to {high}"
        )
    return api, version


def _decode_body(cls: type[Any], header: dict[str, Any], payload: bytes) -> Any:
    if "body" not in header:
        raise InvalidRequestError(f"{cls.API.value}.body", "missing")
    return _converter(cls).decode(header["body"], payload, cls.API.value)


# --- compiled converters --------------------------------------------------------------------------


class _PayloadWriter:
    """Collects `bytes` fields into the frame payload and hands back their `[offset, length]`."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes | bytearray | memoryview) -> list[int]:
        slice_ = [self.size, len(data)]
        if data:
            self.parts.append(bytes(data) if not isinstance(data, bytes) else data)
            self.size += len(data)
        return slice_

    def getvalue(self) -> bytes:
        # One part (the common single-partition case) is returned as is, without a copy.
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


Encoder = Callable[[Any, _PayloadWriter], Any]
Decoder = Callable[[Any, bytes, str], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Converter:
    encode: Encoder
    decode: Decoder


_CONVERTERS: dict[Any, _Converter] = {}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _converter(tp: Any) -> _Converter:
    converter = _CONVERTERS.get(tp)
    if converter is None:
        converter = _compile(tp)
        _CONVERTERS[tp] = converter
    return converter


def _compile(tp: Any) -> _Converter:
    if dataclasses.is_dataclass(tp):
        return _compile_dataclass(tp)
    if tp in _SCALARS:
        return _SCALARS[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _compile_sequence(_converter(args[0]))
        return _compile_fixed_tuple([_converter(arg) for arg in args])
    if origin is dict:
        assert args[0] is str, f"dict keys must be str in {tp}"
        return _compile_mapping(_converter(args[1]))
    if origin is Union or origin is types.UnionType:
        return _compile_union(tp, args)
    raise AssertionError(f"no wire converter for type {tp!r}")


def _identity_encode(value: Any, writer: _PayloadWriter) -> Any:
    return value


def _decode_int(value: Any, payload: bytes, path: str) -> int:
    if not _is_int(value):
        raise InvalidRequestError(path, f"expected an integer, got {type(value).__name__}")
    if not I64_MIN <= value <= I64_MAX:
        raise InvalidRequestError(path, f"integer {value} is out of the i64 range")
    return typing.cast(int, value)


def _decode_str(value: Any, payload: bytes, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(path, f"expected a string, got {type(value).__name__}")
    return value


def _decode_bool(value: Any, payload: bytes, path: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(path, f"expected true or false, got {type(value).__name__}")
    return value


def _encode_bytes(value: Any, writer: _PayloadWriter) -> Any:
    return writer.add(value)


def _decode_bytes(value: Any, payload: bytes, path: str) -> bytes:
    # Payload slices: [offset, length] into the raw payload that follows the header.
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise InvalidRequestError(path, f"expected an [offset, length] slice, got {value!r}")
    offset, length = value
    if offset < 0 or length < 0 or offset + length > len(payload):
        raise InvalidRequestError(
            path, f"payload slice [{offset}, {length}] is outside the {len(payload)}-byte payload"
        )
    return payload[offset : offset + length]


def _encode_error(value: Any, writer: _PayloadWriter) -> Any:
    return value.wire_id


def _decode_error(value: Any, payload: bytes, path: str) -> ErrorCode:
    return ErrorCode.from_wire(_decode_int(value, payload, path))


_SCALARS: dict[Any, _Converter] = {
    int: _Converter(_identity_encode, _decode_int),
    str: _Converter(_identity_encode, _decode_str),
    bool: _Converter(_identity_encode, _decode_bool),
    bytes: _Converter(_encode_bytes, _decode_bytes),
    ErrorCode: _Converter(_encode_error, _decode_error),
}


def _compile_sequence(item: _Converter) -> _Converter:
    def encode(value: Any, writer: _PayloadWriter) -> Any:
        return [item.encode(element, writer) for element in value]

    def decode(value: Any, payload: bytes, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise InvalidRequestError(path, f"expected an array, got {type(value).__name__}")
        return tuple(item.decode(v, payload, f"{path}[{i}]") for i, v in enumerate(value))

    return _Converter(encode, decode)


def _compile_fixed_tuple(items: list[_Converter]) -> _Converter:
    def encode(value: Any, writer: _PayloadWriter) -> Any:
        return [conv.encode(element, writer) for conv, element in zip(items, value, strict=True)]

    def decode(value: Any, payload: bytes, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list) or len(value) != len(items):
            raise InvalidRequestError(path, f"expected an array of {len(items)}, got {value!r}")
        return tuple(
            conv.decode(v, payload, f"{path}[{i}]")
            for i, (conv, v) in enumerate(zip(items, value, strict=True))
        )

    return _Converter(encode, decode)


def _compile_mapping(item: _Converter) -> _Converter:
    def encode(value: Any, writer: _PayloadWriter) -> Any:
        return {key: item.encode(element, writer) for key, element in value.items()}

    def decode(value: Any, payload: bytes, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InvalidRequestError(path, f"expected a map, got {type(value).__name__}")
        result = {}
        for key, element in value.items():
            if not isinstance(key, str):
                raise InvalidRequestError(path, f"map keys must be strings, got {key!r}")
            result[key] = item.decode(element, payload, f"{path}.{key}")
        return result

    return _Converter(encode, decode)


def _compile_union(tp: Any, args: tuple[Any, ...]) -> _Converter:
    optional = type(None) in args
    choices = [arg for arg in args if arg is not type(None)]
    if len(choices) == 1:
        inner = _converter(choices[0])

        def encode_optional(value: Any, writer: _PayloadWriter) -> Any:
            return None if value is None else inner.encode(value, writer)

        def decode_optional(value: Any, payload: bytes, path: str) -> Any:
            return None if value is None else inner.decode(value, payload, path)

        return _Converter(encode_optional, decode_optional)
    # A union of scalars (config values): the wire value must be exactly one of them.
    assert all(choice in (str, int, bool, float) for choice in choices), f"unsupported union {tp!r}"
    names = " or ".join(choice.__name__ for choice in choices)

    def decode_scalar(value: Any, payload: bytes, path: str) -> Any:
        if value is None and optional:
            return None
        if type(value) in choices:
            return value
        raise InvalidRequestError(path, f"expected {names}, got {type(value).__name__}")

    return _Converter(_identity_encode, decode_scalar)


def _compile_dataclass(cls: type[Any]) -> _Converter:
    hints = typing.get_type_hints(cls)
    fields = [
        (field.name, _converter(hints[field.name]), _default_of(field))
        for field in dataclasses.fields(cls)
    ]

    def encode(value: Any, writer: _PayloadWriter) -> dict[str, Any]:
        return {name: conv.encode(getattr(value, name), writer) for name, conv, _ in fields}

    def decode(value: Any, payload: bytes, path: str) -> Any:
        if not isinstance(value, dict):
            raise InvalidRequestError(path, f"expected a map, got {type(value).__name__}")
        kwargs = {}
        for name, conv, default in fields:
            if name in value:
                kwargs[name] = conv.decode(value[name], payload, f"{path}.{name}")
            elif default is _REQUIRED:
                raise InvalidRequestError(f"{path}.{name}", "required field is missing")
        return cls(**kwargs)

    return _Converter(encode, decode)


_REQUIRED: Final = object()


def _default_of(field: dataclasses.Field[Any]) -> Any:
    has_default = field.default is not dataclasses.MISSING
    has_factory = field.default_factory is not dataclasses.MISSING
    return None if has_default or has_factory else _REQUIRED


# --- consumer groups ------------------------------------------------------------------------------
#
# The wire side of broker/consumer_groups (the pure GroupCoordinatorCore): FindCoordinator, the
# classic membership protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), offsets
# (OffsetCommit, OffsetFetch) and administration (ListGroups, DescribeGroups, DeleteGroups).
# Member metadata and assignments are opaque bytes to the broker (payload slices); the consumer
# protocol's encoding is wire/assignors.py. Group states travel as Kafka's
# names ("Empty", "Stable", ...). A request-wide failure is `error` + `error_message` in the body.

# FindCoordinator key types (Kafka's): a consumer group, a transactional id.
COORDINATOR_KEY_GROUP: Final = 0
COORDINATOR_KEY_TRANSACTION: Final = 1
COORDINATOR_KEY_SHARE: Final = 2  # a share group: the leader of its __share_group_state partition


@_message
class FindCoordinatorRequest:
    API: ClassVar[ApiKey] = ApiKey.FIND_COORDINATOR
    key: str
    key_type: int = COORDINATOR_KEY_GROUP


@_message
class FindCoordinatorResponse:
    """Where the coordinator of `key` is: the leader of its __consumer_offsets partition."""

    API: ClassVar[ApiKey] = ApiKey.FIND_COORDINATOR
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    node_id: int = -1
    host: str = ""
    port: int = -1


@_message
class JoinGroupProtocol:
    """One assignor the member supports (`name`) with its subscription (`metadata`)."""

    name: str
    metadata: bytes


@_message
class JoinGroupRequest:
    """`member_id=""` on a member's first join (the coordinator assigns one).
    `rebalance_timeout_ms <= 0` takes the coordinator's default."""

    API: ClassVar[ApiKey] = ApiKey.JOIN_GROUP
    group_id: str
    session_timeout_ms: int
    protocols: tuple[JoinGroupProtocol, ...]
    rebalance_timeout_ms: int = -1
    member_id: str = ""
    group_instance_id: str | None = None
    protocol_type: str = "consumer"
    client_id: str = ""  # shown by DescribeGroups; prefixes the member id the coordinator assigns


@_message
class JoinGroupMember:
    member_id: str
    metadata: bytes
    group_instance_id: str | None = None


@_message
class JoinGroupResponse:
    """Only the leader's response carries `members`; it runs the assignor over them."""

    API: ClassVar[ApiKey] = ApiKey.JOIN_GROUP
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    generation: int = -1
    protocol_type: str = ""
    protocol_name: str = ""
    leader_id: str = ""
    member_id: str = ""
    skip_assignment: bool = False
    members: tuple[JoinGroupMember, ...] = ()


@_message
class SyncGroupAssignment:
    member_id: str
    assignment: bytes


@_message
class SyncGroupRequest:
    """Only the leader sends `assignments`; every member gets its own back in the response."""

    API: ClassVar[ApiKey] = ApiKey.SYNC_GROUP
    group_id: str
    generation: int
    member_id: str
    group_instance_id: str | None = None
    protocol_type: str = ""
    protocol_name: str = ""
    assignments: tuple[SyncGroupAssignment, ...] = ()


@_message
class SyncGroupResponse:
    API: ClassVar[ApiKey] = ApiKey.SYNC_GROUP
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    protocol_type: str = ""
    protocol_name: str = ""
    assignment: bytes = b""


@_message
class HeartbeatRequest:
    API: ClassVar[ApiKey] = ApiKey.HEARTBEAT
    group_id: str
    generation: int
    member_id: str
    group_instance_id: str | None = None


@_message
class HeartbeatResponse:
    """REBALANCE_IN_PROGRESS tells the member to rejoin."""

    API: ClassVar[ApiKey] = ApiKey.HEARTBEAT
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class LeaveGroupMember:
    """By `member_id`, or by `group_instance_id` with member_id "" (static members)."""

    member_id: str = ""
    group_instance_id: str | None = None


@_message
class LeaveGroupRequest:
    API: ClassVar[ApiKey] = ApiKey.LEAVE_GROUP
    group_id: str
    members: tuple[LeaveGroupMember, ...]


@_message
class LeaveGroupMemberResult:
    member_id: str
    group_instance_id: str | None = None
    error: ErrorCode = ErrorCode.NONE


@_message
class LeaveGroupResponse:
    API: ClassVar[ApiKey] = ApiKey.LEAVE_GROUP
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    members: tuple[LeaveGroupMemberResult, ...] = ()


@_message
class OffsetCommitPartition:
    """`offset`: the next record the group will consume (last processed + 1)."""

    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str = ""


@_message
class OffsetCommitRequest:
    """From a member: its generation and member id. generation -1 with member id "" commits
    from outside the group (a simple consumer, reset-offsets): only while the group is Empty."""

    API: ClassVar[ApiKey] = ApiKey.OFFSET_COMMIT
    group_id: str
    partitions: tuple[OffsetCommitPartition, ...]
    generation: int = -1
    member_id: str = ""
    group_instance_id: str | None = None


@_message
class OffsetCommitPartitionResult:
    topic: str
    partition: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class OffsetCommitResponse:
    """Answered once the commit is durable in __consumer_offsets."""

    API: ClassVar[ApiKey] = ApiKey.OFFSET_COMMIT
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    partitions: tuple[OffsetCommitPartitionResult, ...] = ()


@_message
class GroupTopicPartition:
    topic: str
    partition: int


@_message
class OffsetFetchRequest:
    """`partitions=None`: every partition the group has committed."""

    API: ClassVar[ApiKey] = ApiKey.OFFSET_FETCH
    group_id: str
    partitions: tuple[GroupTopicPartition, ...] | None = None
    # KIP-447: a partition with transactional offsets still completing is answered with
    # UNSTABLE_OFFSET_COMMIT (retriable) instead of its last stable commit.
    require_stable: bool = False


@_message
class OffsetFetchPartitionResult:
    """`offset = -1` (metadata "") when the group has no commit for the partition."""

    topic: str
    partition: int
    offset: int = -1
    leader_epoch: int = -1
    metadata: str = ""
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class OffsetFetchResponse:
    API: ClassVar[ApiKey] = ApiKey.OFFSET_FETCH
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    partitions: tuple[OffsetFetchPartitionResult, ...] = ()


@_message
class ListGroupsRequest:
    """`states`: Kafka's state names to keep ("Empty", "Stable", ...); empty keeps all."""

    API: ClassVar[ApiKey] = ApiKey.LIST_GROUPS
    states: tuple[str, ...] = ()


@_message
class ListedGroupInfo:
    group_id: str
    protocol_type: str
    state: str


@_message
class ListGroupsResponse:
    API: ClassVar[ApiKey] = ApiKey.LIST_GROUPS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    groups: tuple[ListedGroupInfo, ...] = ()


@_message
class DescribeGroupsRequest:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_GROUPS
    group_ids: tuple[str, ...]


@_message
class DescribedMember:
    """`subscription`/`assignment`: consumer protocol bytes (assignors.Subscription/Assignment)."""

    member_id: str
    group_instance_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    session_timeout_ms: int = -1
    rebalance_timeout_ms: int = -1
    subscription: bytes = b""
    assignment: bytes = b""


@_message
class DescribedOffset:
    """One partition the group commits to or is assigned: `committed_offset` -1 when none;
    `log_end_offset` is the partition's high watermark (-1 when unknown here); `lag` is
    log_end_offset - committed_offset (never below 0), -1 when either is unknown."""

    topic: str
    partition: int
    committed_offset: int = -1
    log_end_offset: int = -1
    lag: int = -1
    metadata: str = ""
    member_id: str = ""


@_message
class DescribedGroup:
    group_id: str
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    state: str = "Dead"
    protocol_type: str = ""
    protocol_name: str = ""
    generation: int = -1
    leader_id: str = ""
    members: tuple[DescribedMember, ...] = ()
    offsets: tuple[DescribedOffset, ...] = ()


@_message
class DescribeGroupsResponse:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_GROUPS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    groups: tuple[DescribedGroup, ...] = ()


@_message
class DeleteGroupsRequest:
    API: ClassVar[ApiKey] = ApiKey.DELETE_GROUPS
    group_ids: tuple[str, ...]


@_message
class GroupResultInfo:
    group_id: str
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class DeleteGroupsResponse:
    API: ClassVar[ApiKey] = ApiKey.DELETE_GROUPS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    groups: tuple[GroupResultInfo, ...] = ()


# Registered with the other APIs: the envelope functions look types up in these two tables.


# --- cluster --------------------------------------------------------------------------------------
# ClusterStatus is for clients (`broker-cli cluster status`). The other three are sent by a broker
# to the controller leader (docs/cluster.md "Controller RPC"): its registration, its heartbeats
# (which also ask to be unfenced) and a partition leader's report. Controller refusals carry
# NOT_CONTROLLER with `leader_hint`, the metadata-group leader the answering broker knows (0: none).


@_message
class ClusterStatusRequest:
    API: ClassVar[ApiKey] = ApiKey.CLUSTER_STATUS


@_message
class ClusterBroker:
    """`state`: "active", "fenced" or "shutting_down" (broker/controller/records.py)."""

    node_id: int
    host: str
    port: int
    state: str
    broker_epoch: int
    replica_count: int
    leader_count: int
    preferred_leader_count: int


@_message
class TopicPartitionRef:
    topic: str
    partition: int


@_message
class ClusterStatusResponse:
    """`controller_id`: the controller leader (-1: none known); `metadata_index`: how far the
    answering broker has applied the metadata log."""

    API: ClassVar[ApiKey] = ApiKey.CLUSTER_STATUS
    controller_id: int
    metadata_index: int
    brokers: tuple[ClusterBroker, ...]
    topic_count: int
    partition_count: int
    offline_partitions: tuple[TopicPartitionRef, ...] = ()
    under_replicated_partitions: tuple[TopicPartitionRef, ...] = ()
    preferred_leader_imbalance_count: int = 0
    # The metadata group's voters as the answering broker's log has them (the other brokers
    # follow it as learners).
    controller_voters: tuple[int, ...] = ()
    # Internal topics (consumer offsets, transaction state, share-group state) the brokers create
    # once the cluster has formed, not created yet: the cluster is still forming.
    internal_topics_missing: tuple[str, ...] = ()


@_message
class ListenerEndpoint:
    """One listener's advertised address (Kafka's `advertised.listeners` entry)."""

    listener: str
    host: str
    port: int


@_message
class BrokerRegistrationRequest:
    """`host`/`port`: where peers reach the broker (its inter-broker listener); `endpoints`:
    every listener's advertised address, empty for a broker with one listener."""

    API: ClassVar[ApiKey] = ApiKey.BROKER_REGISTRATION
    node_id: int
    host: str
    port: int
    incarnation: int
    endpoints: tuple[ListenerEndpoint, ...] = ()


@_message
class BrokerRegistrationResponse:
    API: ClassVar[ApiKey] = ApiKey.BROKER_REGISTRATION
    broker_epoch: int = -1
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class BrokerHeartbeatRequest:
    """`want_active`: the broker has applied its own registration and asks to be unfenced.
    `shutting_down`: it is stopping on purpose (controlled shutdown): mark it SHUTTING_DOWN, so
    no leadership is handed back to it."""

    API: ClassVar[ApiKey] = ApiKey.BROKER_HEARTBEAT
    node_id: int
    broker_epoch: int
    want_active: bool = True
    shutting_down: bool = False


@_message
class BrokerHeartbeatResponse:
    """`state`: the broker's state in the controller's applied metadata after this heartbeat.
    STALE_BROKER_EPOCH means: register again."""

    API: ClassVar[ApiKey] = ApiKey.BROKER_HEARTBEAT
    state: str = ""
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class LeaderReportRequest:
    API: ClassVar[ApiKey] = ApiKey.LEADER_REPORT
    topic: str
    partition: int
    leader_id: int
    leader_epoch: int
    in_sync: tuple[int, ...]


@_message
class LeaderReportResponse:
    API: ClassVar[ApiKey] = ApiKey.LEADER_REPORT
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class DecommissionBrokerRequest:
    """Start moving every replica (and the controller vote) off `node_id`, then remove it."""

    API: ClassVar[ApiKey] = ApiKey.DECOMMISSION_BROKER
    node_id: int


@_message
class DecommissionBrokerResponse:
    API: ClassVar[ApiKey] = ApiKey.DECOMMISSION_BROKER
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


# --- idempotence and transactions -----------------------------------------------------------------
# The wire side of broker/transactions (docs/transactions.md), named as Kafka names them.
# InitProducerId goes to any broker for an idempotent producer (transactional_id None) and to the
# transaction coordinator (FindCoordinator key_type 1) for a transactional one, like
# AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and the admin List/DescribeTransactions.
# TxnOffsetCommit goes to the group's coordinator. WriteTxnMarkers is sent by a transaction
# coordinator to partition leaders.


@_message
class InitProducerIdRequest:
    """`producer_id`/`producer_epoch` -1: a new producer instance. A transactional producer
    recovering from TRANSACTION_ABORTED passes its current pair (KIP-360)."""

    API: ClassVar[ApiKey] = ApiKey.INIT_PRODUCER_ID
    transactional_id: str | None = None
    transaction_timeout_ms: int = 60_000
    producer_id: int = -1
    producer_epoch: int = -1


@_message
class InitProducerIdResponse:
    API: ClassVar[ApiKey] = ApiKey.INIT_PRODUCER_ID
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    producer_id: int = -1
    producer_epoch: int = -1


@_message
class TxnPartitionResult:
    topic: str
    partition: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class AddPartitionsToTxnRequest:
    API: ClassVar[ApiKey] = ApiKey.ADD_PARTITIONS_TO_TXN
    transactional_id: str
    producer_id: int
    producer_epoch: int
    partitions: tuple[TopicPartitionRef, ...]


@_message
class AddPartitionsToTxnResponse:
    API: ClassVar[ApiKey] = ApiKey.ADD_PARTITIONS_TO_TXN
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    partitions: tuple[TxnPartitionResult, ...] = ()


@_message
class AddOffsetsToTxnRequest:
    API: ClassVar[ApiKey] = ApiKey.ADD_OFFSETS_TO_TXN
    transactional_id: str
    producer_id: int
    producer_epoch: int
    group_id: str


@_message
class AddOffsetsToTxnResponse:
    API: ClassVar[ApiKey] = ApiKey.ADD_OFFSETS_TO_TXN
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class EndTxnRequest:
    API: ClassVar[ApiKey] = ApiKey.END_TXN
    transactional_id: str
    producer_id: int
    producer_epoch: int
    committed: bool


@_message
class EndTxnResponse:
    """The new producer epoch (KIP-890): every transaction ends with an epoch bump, so a late
    write of the old transaction is fenced; the next transaction's sequences restart at 0."""

    API: ClassVar[ApiKey] = ApiKey.END_TXN
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    producer_id: int = -1
    producer_epoch: int = -1


@_message
class TxnOffsetCommitRequest:
    """Offsets written as part of a transaction: visible (to OffsetFetch) only once it commits.
    `generation`/`member_id` are the consumer's group metadata (KIP-447 fencing)."""

    API: ClassVar[ApiKey] = ApiKey.TXN_OFFSET_COMMIT
    transactional_id: str
    group_id: str
    producer_id: int
    producer_epoch: int
    partitions: tuple[OffsetCommitPartition, ...]
    generation: int = -1
    member_id: str = ""
    group_instance_id: str | None = None


@_message
class TxnOffsetCommitResponse:
    API: ClassVar[ApiKey] = ApiKey.TXN_OFFSET_COMMIT
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    partitions: tuple[OffsetCommitPartitionResult, ...] = ()


@_message
class TxnMarker:
    producer_id: int
    producer_epoch: int
    committed: bool
    coordinator_epoch: int
    partitions: tuple[TopicPartitionRef, ...]


@_message
class WriteTxnMarkersRequest:
    API: ClassVar[ApiKey] = ApiKey.WRITE_TXN_MARKERS
    markers: tuple[TxnMarker, ...]


@_message
class TxnMarkerResult:
    producer_id: int
    partitions: tuple[TxnPartitionResult, ...]


@_message
class WriteTxnMarkersResponse:
    """Answered per partition once each marker is acknowledged as acks=all would be."""

    API: ClassVar[ApiKey] = ApiKey.WRITE_TXN_MARKERS
    markers: tuple[TxnMarkerResult, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class ListTransactionsRequest:
    """`states`: Kafka's state names ("Ongoing", "PrepareCommit", ...); empty: all."""

    API: ClassVar[ApiKey] = ApiKey.LIST_TRANSACTIONS
    states: tuple[str, ...] = ()


@_message
class ListedTransaction:
    transactional_id: str
    producer_id: int
    state: str


@_message
class ListTransactionsResponse:
    API: ClassVar[ApiKey] = ApiKey.LIST_TRANSACTIONS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    transactions: tuple[ListedTransaction, ...] = ()


@_message
class DescribeTransactionsRequest:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_TRANSACTIONS
    transactional_ids: tuple[str, ...]


@_message
class TransactionDescription:
    transactional_id: str
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    state: str = ""
    producer_id: int = -1
    producer_epoch: int = -1
    transaction_timeout_ms: int = -1
    transaction_start_ms: int = -1
    last_update_ms: int = -1
    partitions: tuple[TopicPartitionRef, ...] = ()


@_message
class DescribeTransactionsResponse:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_TRANSACTIONS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    transactions: tuple[TransactionDescription, ...] = ()


# --- share groups ---------------------------------------------------------------------------------
# A share group reads topics as a queue (docs/queues.md): every request goes to the group's share
# coordinator (FindCoordinator with COORDINATOR_KEY_SHARE). ShareFetch hands out records: raw
# batches plus the ranges of offsets this member acquired in them, each with its delivery count
# (the client keeps only the records inside those ranges). Acknowledgements name offset ranges,
# never single records on the wire, and ride on the next ShareFetch or on a ShareAcknowledge.

# Acknowledgement types (KIP-932's values; RENEW extends the lock).
ACK_GAP: Final = 0  # offsets with no record the client could see (archived)
ACK_ACCEPT: Final = 1
ACK_RELEASE: Final = 2
ACK_REJECT: Final = 3
ACK_RENEW: Final = 4


@_message
class ShareAcknowledgementBatch:
    """`ack_type` for every offset in [first_offset, last_offset]; `delay_ms` (RELEASE only):
    the records become available again only after this long (retry with backoff)."""

    first_offset: int
    last_offset: int
    ack_type: int
    delay_ms: int = 0


@_message
class ShareAcknowledgePartition:
    topic: str
    partition: int
    batches: tuple[ShareAcknowledgementBatch, ...]


@_message
class ShareFetchRequest:
    """Acknowledge (first), then acquire up to `max_records` records of `topics`' partitions for
    `member_id` (a client-chosen unique id; a new one joins the group). Waits up to
    `max_wait_ms` for records when none is available."""

    API: ClassVar[ApiKey] = ApiKey.SHARE_FETCH
    group_id: str
    member_id: str
    topics: tuple[str, ...]
    acknowledgements: tuple[ShareAcknowledgePartition, ...] = ()
    max_records: int = 500
    max_bytes: int = 50 * 1024 * 1024
    max_wait_ms: int = 500
    client_id: str = ""


@_message
class AcquiredRange:
    first_offset: int
    last_offset: int
    delivery_count: int


@_message
class ShareFetchPartitionResult:
    """`records`: whole batches covering `acquired`; `acknowledge_error`: the outcome of this
    partition's acknowledgements in the request (NONE when there were none)."""

    topic: str
    partition: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    records: bytes = b""
    acquired: tuple[AcquiredRange, ...] = ()
    acknowledge_error: ErrorCode = ErrorCode.NONE
    acknowledge_error_message: str = ""


@_message
class ShareFetchResponse:
    """`lock_duration_ms`: how long the member holds what it acquired (RENEW extends it)."""

    API: ClassVar[ApiKey] = ApiKey.SHARE_FETCH
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    lock_duration_ms: int = -1
    partitions: tuple[ShareFetchPartitionResult, ...] = ()


@_message
class ShareAcknowledgeRequest:
    """Acknowledge without fetching (`commit()`); `leave`: the member closes, and every record it
    still holds is released at once (after these acknowledgements)."""

    API: ClassVar[ApiKey] = ApiKey.SHARE_ACKNOWLEDGE
    group_id: str
    member_id: str
    acknowledgements: tuple[ShareAcknowledgePartition, ...] = ()
    leave: bool = False
    client_id: str = ""


@_message
class ShareAcknowledgePartitionResult:
    topic: str
    partition: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class ShareAcknowledgeResponse:
    API: ClassVar[ApiKey] = ApiKey.SHARE_ACKNOWLEDGE
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    partitions: tuple[ShareAcknowledgePartitionResult, ...] = ()


@_message
class AlterGroupConfigsRequest:
    """Set a share group's configs (`share.record.lock.duration.ms`, ...); `reset` names configs
    to return to the broker default. Validated as a whole: one bad value changes nothing."""

    API: ClassVar[ApiKey] = ApiKey.ALTER_GROUP_CONFIGS
    group_id: str
    configs: dict[str, ConfigValue] = dataclasses.field(default_factory=dict)
    reset: tuple[str, ...] = ()


@_message
class AlterGroupConfigsResponse:
    """`configs`: the group's effective configs after the change (defaults included)."""

    API: ClassVar[ApiKey] = ApiKey.ALTER_GROUP_CONFIGS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    configs: dict[str, ConfigValue] = dataclasses.field(default_factory=dict)


@_message
class DescribeShareGroupsRequest:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_SHARE_GROUPS
    group_ids: tuple[str, ...]


@_message
class ShareMemberDescription:
    member_id: str
    client_id: str
    client_host: str
    topics: tuple[str, ...]
    acquired_records: int


@_message
class SharePartitionDescription:
    """One share partition: the window [start_offset, end_offset) of in-flight records and its
    counts; `backlog`: records past end_offset not handed out yet (high watermark - end);
    `oldest_available_ms`: the append time of the oldest record waiting (-1: none)."""

    topic: str
    partition: int
    start_offset: int
    end_offset: int
    in_flight: int
    available: int
    acquired: int
    acknowledged: int
    archived_total: int
    dead_lettered_total: int
    redelivered_total: int
    lock_expired_total: int
    backlog: int = -1
    oldest_available_ms: int = -1


@_message
class DescribedShareGroup:
    group_id: str
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    state: str = ""
    configs: dict[str, ConfigValue] = dataclasses.field(default_factory=dict)
    members: tuple[ShareMemberDescription, ...] = ()
    partitions: tuple[SharePartitionDescription, ...] = ()
    dead_letter_writes: int = 0


@_message
class DescribeShareGroupsResponse:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_SHARE_GROUPS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    groups: tuple[DescribedShareGroup, ...] = ()


# --- partition reassignment -----------------------------------------------------------------------
# Kafka's AlterPartitionReassignments / ListPartitionReassignments (KIP-455), plus the partition
# leader's completion report and a rebalance plan (docs/reassignment.md). Alter and rebalance run
# on the controller leader; any other broker forwards them there. `replicas=None` cancels.


@_message
class ReassignPartition:
    topic: str
    partition: int
    replicas: tuple[int, ...] | None = None


@_message
class AlterPartitionReassignmentsRequest:
    """`throttle_bytes_per_s`: replication to the new replicas (0: the brokers' default)."""

    API: ClassVar[ApiKey] = ApiKey.ALTER_PARTITION_REASSIGNMENTS
    partitions: tuple[ReassignPartition, ...]
    throttle_bytes_per_s: int = 0


@_message
class ReassignPartitionResult:
    topic: str
    partition: int
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class AlterPartitionReassignmentsResponse:
    API: ClassVar[ApiKey] = ApiKey.ALTER_PARTITION_REASSIGNMENTS
    partitions: tuple[ReassignPartitionResult, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class ListPartitionReassignmentsRequest:
    """`topics=None`: every topic."""

    API: ClassVar[ApiKey] = ApiKey.LIST_PARTITION_REASSIGNMENTS
    topics: tuple[str, ...] | None = None


@_message
class ReplicaProgress:
    """A replica as the partition leader sees it: `match_offset` (-1: nothing yet), the offsets
    it lags the leader's log end by, and an estimate of the bytes it holds."""

    node_id: int
    match_offset: int = -1
    lag_offsets: int = -1
    caught_up_bytes: int = -1
    role: str = ""


@_message
class PartitionReassignmentStatus:
    """`progress` is filled when the answering broker leads the partition (the client asks
    each leader); `log_size_bytes` is then the leader's log size."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    target_replicas: tuple[int, ...]
    adding_replicas: tuple[int, ...]
    removing_replicas: tuple[int, ...]
    leader_id: int = -1
    throttle_bytes_per_s: int = 0
    log_end_offset: int = -1
    log_size_bytes: int = -1
    progress: tuple[ReplicaProgress, ...] = ()


@_message
class ListPartitionReassignmentsResponse:
    API: ClassVar[ApiKey] = ApiKey.LIST_PARTITION_REASSIGNMENTS
    reassignments: tuple[PartitionReassignmentStatus, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class ReassignmentCompletedRequest:
    API: ClassVar[ApiKey] = ApiKey.REASSIGNMENT_COMPLETED
    topic: str
    partition: int
    replicas: tuple[int, ...]


@_message
class ReassignmentCompletedResponse:
    API: ClassVar[ApiKey] = ApiKey.REASSIGNMENT_COMPLETED
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class RebalanceRequest:
    """Even replicas and preferred leaders over the ACTIVE brokers; `dry_run`: plan only."""

    API: ClassVar[ApiKey] = ApiKey.REBALANCE
    dry_run: bool = False
    throttle_bytes_per_s: int = 0
    move_count_max: int = 1000


@_message
class RebalanceMove:
    topic: str
    partition: int
    replicas: tuple[int, ...]
    target_replicas: tuple[int, ...]
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class RebalanceResponse:
    API: ClassVar[ApiKey] = ApiKey.REBALANCE
    moves: tuple[RebalanceMove, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


# --- topic configs --------------------------------------------------------------------------------


@_message
class AlterTopicConfigsRequest:
    """Set a topic's config overrides (`cleanup.policy`, `retention.ms`, ...) and return `reset`
    ones to the broker default. Validated as a whole: one bad value changes nothing. The
    effective configs are read back with DescribeTopics."""

    API: ClassVar[ApiKey] = ApiKey.ALTER_TOPIC_CONFIGS
    topic: str
    configs: dict[str, ConfigValue] = dataclasses.field(default_factory=dict)
    reset: tuple[str, ...] = ()


@_message
class AlterTopicConfigsResponse:
    API: ClassVar[ApiKey] = ApiKey.ALTER_TOPIC_CONFIGS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    # The topic's overrides after the change (dotted keys).
    configs: dict[str, ConfigValue] = dataclasses.field(default_factory=dict)
    leader_hint: int = 0


# --- partitions admin -----------------------------------------------------------------------------
# CreatePartitions raises a topic's partition count (never lowers it), as Kafka's does; in a cluster
# it runs on the controller leader. DeleteRecords moves the log start of partitions forward; the
# client sends each partition to its leader, as Kafka's admin client does.


@_message
class CreatePartitionsRequest:
    """Raise `topic`'s partition count to `partition_count` (the new total, as Kafka's)."""

    API: ClassVar[ApiKey] = ApiKey.CREATE_PARTITIONS
    topic: str
    partition_count: int
    validate_only: bool = False


@_message
class CreatePartitionsResponse:
    API: ClassVar[ApiKey] = ApiKey.CREATE_PARTITIONS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class DeleteRecordsPartition:
    """Delete the records of `partition` below `offset` (-1: below the high watermark)."""

    topic: str
    partition: int
    offset: int


@_message
class DeleteRecordsRequest:
    API: ClassVar[ApiKey] = ApiKey.DELETE_RECORDS
    partitions: tuple[DeleteRecordsPartition, ...] = ()


@_message
class DeleteRecordsPartitionResult:
    topic: str
    partition: int
    # The partition's log start offset after the deletion (-1 on error).
    low_watermark: int = -1
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class DeleteRecordsResponse:
    API: ClassVar[ApiKey] = ApiKey.DELETE_RECORDS
    partitions: tuple[DeleteRecordsPartitionResult, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


# --- security: authentication ---------------------------------------------------------------------
# SASL as Kafka runs it (docs/security.md): SaslHandshake picks a mechanism, then SaslAuthenticate
# carries the mechanism's opaque messages (SCRAM: client-first, then client-final) until the login
# succeeds or fails; a failed login closes the connection. Users are SCRAM credentials derived on
# the client (`wire.scram.make_credential`): the password itself never reaches the broker.


@_message
class SaslHandshakeRequest:
    API: ClassVar[ApiKey] = ApiKey.SASL_HANDSHAKE
    mechanism: str


@_message
class SaslHandshakeResponse:
    """`mechanisms`: what this broker offers (sent with UNSUPPORTED_SASL_MECHANISM too)."""

    API: ClassVar[ApiKey] = ApiKey.SASL_HANDSHAKE
    mechanisms: tuple[str, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class SaslAuthenticateRequest:
    API: ClassVar[ApiKey] = ApiKey.SASL_AUTHENTICATE
    auth_bytes: bytes


@_message
class SaslAuthenticateResponse:
    API: ClassVar[ApiKey] = ApiKey.SASL_AUTHENTICATE
    auth_bytes: bytes = b""
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class ScramCredentialUpsertion:
    """Set `name`'s credential for `mechanism` (SCRAM-SHA-256 or -512); replaces an existing one."""

    name: str
    mechanism: str
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


@_message
class ScramCredentialDeletion:
    name: str
    mechanism: str


@_message
class AlterUserScramCredentialsRequest:
    API: ClassVar[ApiKey] = ApiKey.ALTER_USER_SCRAM_CREDENTIALS
    upsertions: tuple[ScramCredentialUpsertion, ...] = ()
    deletions: tuple[ScramCredentialDeletion, ...] = ()


@_message
class UserScramResult:
    name: str
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class AlterUserScramCredentialsResponse:
    API: ClassVar[ApiKey] = ApiKey.ALTER_USER_SCRAM_CREDENTIALS
    results: tuple[UserScramResult, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class DescribeUserScramCredentialsRequest:
    """`users=None` describes every user."""

    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS
    users: tuple[str, ...] | None = None


@_message
class ScramCredentialInfo:
    mechanism: str
    iterations: int


@_message
class DescribedUser:
    name: str
    credentials: tuple[ScramCredentialInfo, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class DescribeUserScramCredentialsResponse:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS
    users: tuple[DescribedUser, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


# --- Security: ACLs and quotas --------------------------------------------------------------------
# ACLs and client quotas live in the controller's metadata log (a single node: its LMDB store);
# the changes run on the controller leader, forwarded there by any other broker. Enum fields are
# strings: resource_type topic|group|cluster|transactional_id, pattern_type literal|prefixed,
# operation read|write|create|delete|alter|describe|cluster_action|describe_configs|
# alter_configs|idempotent_write|all, permission allow|deny (docs/security.md).


@_message
class AclBindingData:
    resource_type: str
    resource_name: str
    pattern_type: str
    principal: str
    operation: str
    permission: str
    host: str = "*"


@_message
class AclFilterData:
    """A None (or "any") field matches every binding; pattern_type "match" selects every pattern
    that applies to `resource_name` (literal, the literal `*`, prefixes of it)."""

    resource_type: str = "any"
    resource_name: str | None = None
    pattern_type: str = "any"
    principal: str | None = None
    host: str | None = None
    operation: str = "any"
    permission: str = "any"


@_message
class CreateAclsRequest:
    API: ClassVar[ApiKey] = ApiKey.CREATE_ACLS
    acls: tuple[AclBindingData, ...]


@_message
class CreateAclsResponse:
    API: ClassVar[ApiKey] = ApiKey.CREATE_ACLS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class DescribeAclsRequest:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_ACLS
    filter: AclFilterData = dataclasses.field(default_factory=AclFilterData)


@_message
class DescribeAclsResponse:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_ACLS
    acls: tuple[AclBindingData, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


@_message
class DeleteAclsRequest:
    API: ClassVar[ApiKey] = ApiKey.DELETE_ACLS
    filters: tuple[AclFilterData, ...]


@_message
class DeleteAclsResponse:
    API: ClassVar[ApiKey] = ApiKey.DELETE_ACLS
    deleted: tuple[AclBindingData, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class QuotaEntityData:
    """`user`, `client_id`: a name, "<default>", or None (not part of the entity)."""

    user: str | None = None
    client_id: str | None = None


@_message
class AlterClientQuotasRequest:
    """Set `values` (producer_byte_rate, consumer_byte_rate: bytes/s; request_rate: requests/s)
    and remove the `remove` keys of one entity."""

    API: ClassVar[ApiKey] = ApiKey.ALTER_CLIENT_QUOTAS
    entity: QuotaEntityData
    values: dict[str, int] = dataclasses.field(default_factory=dict)
    remove: tuple[str, ...] = ()


@_message
class AlterClientQuotasResponse:
    API: ClassVar[ApiKey] = ApiKey.ALTER_CLIENT_QUOTAS
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""
    leader_hint: int = 0


@_message
class DescribeClientQuotasRequest:
    """Entities whose user and client id equal these (None: any)."""

    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_CLIENT_QUOTAS
    user: str | None = None
    client_id: str | None = None


@_message
class ClientQuotaEntry:
    entity: QuotaEntityData
    values: dict[str, int] = dataclasses.field(default_factory=dict)


@_message
class DescribeClientQuotasResponse:
    API: ClassVar[ApiKey] = ApiKey.DESCRIBE_CLIENT_QUOTAS
    entries: tuple[ClientQuotaEntry, ...] = ()
    error: ErrorCode = ErrorCode.NONE
    error_message: str = ""


# --- the API tables -------------------------------------------------------------------------------


def _message_types(suffix: str) -> dict[ApiKey, type[Any]]:
    """Every message class above whose name ends with `suffix`, keyed by its `API`: adding an API
    is its ApiKey and its two dataclasses, nothing else."""
    found: dict[ApiKey, type[Any]] = {}
    for value in list(globals().values()):
        api = getattr(value, "API", None)
        if isinstance(value, type) and value.__name__.endswith(suffix) and isinstance(api, ApiKey):
            assert api not in found, f"{value.__name__} and {found[api].__name__} both serve {api}"
            found[api] = value
    return found


REQUEST_TYPES: Final[dict[ApiKey, type[Any]]] = _message_types("Request")
RESPONSE_TYPES: Final[dict[ApiKey, type[Any]]] = _message_types("Response")
