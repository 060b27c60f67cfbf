"""Key and value (de)serializers, as kafka-python's `key_serializer=` / `value_deserializer=`.

A serializer is any callable `f(obj) -> bytes` (e.g. `lambda v: json.dumps(v).encode()`), a
deserializer any callable `f(bytes) -> obj` (e.g. `json.loads`). Unlike kafka-python, None is
never passed to them: a record without a key, or a tombstone, stays None both ways, so the
functions need no special case for it.

The producer serializes in `send()`, before the record is sized and queued; a serializer that
raises fails that `send()` call and queues nothing. The consumer deserializes when a fetched chunk
is first decoded by `poll()`. The records before one a deserializer refuses are returned; then
`poll()` raises `SerializationError` naming the partition and offset, the position stays on that
record and every later poll raises again (as in Kafka) until `seek()` moves past it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from client.errors import ClientError
from client.types import ConsumerRecord

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


def as_bytes(what: str, data: Any) -> bytes:
    """A record field given as `str` (UTF-8), `bytearray` or `memoryview`, as bytes; anything
    else is a `TypeError` saying to serialize it (the producer's `send` and `send_many`)."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(
        f"record {what} must be bytes, str or None, not {type(data).__name__}; "
        "serialize it first (e.g. json.dumps(obj).encode())"
    )


def normalise_headers(
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes], size: int
) -> tuple[list[tuple[str, bytes]] | None, int]:
    """A record's headers as the wire's list of `(name, bytes)` (None when empty), and `size`
    plus their bytes."""
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    out = []
    for name, value in items:
        data = value if value.__class__ is bytes else as_bytes("header value", value)
        out.append((name, data))
        size += len(name) + len(data)
    return (out or None), size


class SerializationError(ClientError):
    """A key/value serializer or deserializer raised; the message names the record, and
    `offset` is the refused record's offset (-1 when producing)."""

    offset: int = -1


def serialize(
    key_serializer: Serializer | None,
    value_serializer: Serializer | None,
    topic: str,
    key: Any,
    value: Any,
) -> tuple[Any, Any]:
    """`(key, value)` through the serializers given (None values are left alone)."""
    try:
        if key_serializer is not None and key is not None:
            key = key_serializer(key)
        if value_serializer is not None and value is not None:
            value = value_serializer(value)
    except Exception as exc:
        raise SerializationError(
            f"serializing a record for topic {topic!r} failed: {exc!r}; fix the object or the "
            "key_serializer/value_serializer"
        ) from exc
    return key, value


def deserialize_records(
    records: list[ConsumerRecord],
    key_deserializer: Deserializer | None,
    value_deserializer: Deserializer | None,
) -> tuple[list[ConsumerRecord], SerializationError | None]:
    """`records` with keys and values through the deserializers given (None left alone), up to
    the first record a deserializer refuses; that record's error (with `.offset`), or None."""
    out = []
    for record in records:
        key, value = record.key, record.value
        try:
            if key_deserializer is not None and key is not None:
                key = key_deserializer(key)
            if value_deserializer is not None and value is not None:
                value = value_deserializer(value)
        except Exception as exc:
            error = SerializationError(
                f"deserializing the record at {record.topic}/{record.partition} offset "
                f"{record.offset} failed: {exc!r}; fix the deserializer, or seek() to offset "
                f"{record.offset + 1} to skip the record"
            )
            error.__cause__ = exc
            error.offset = record.offset
            return out, error
        out.append(record._replace(key=key, value=value))
    return out, None
