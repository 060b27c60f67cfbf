"""Goal: the batch codec round-trips every codec and names every kind of damage it refuses."""

from __future__ import annotations

import struct

import crc32c
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.config import LogConfig
from broker.log.log import PartitionLog
from wire.batch import (
    CRC_START,
    HEADER_SIZE,
    MAGIC_KAFKA_V2,
    MAGIC_MSGPACK,
    BadLengthError,
    BadMagicError,
    BatchTooLargeError,
    BatchTruncatedError,
    Compression,
    ControlType,
    CrcMismatchError,
    InvalidBatchError,
    RecordCountError,
    available_compressions,
    build_batch,
    build_batch_columns,
    build_batch_rows,
    build_control_batch,
    control_type_of,
    decode_records,
    iter_batches,
    set_base_offset,
    set_leader_epoch,
    unpack_header,
    validate_batch,
)
from wire.error_codes import ErrorCode

from .conftest import PROFILE
from .helpers import reseal_crc

records_strategy = st.lists(
    st.tuples(
        st.integers(0, 2**40),
        st.one_of(st.none(), st.binary(max_size=20)),
        st.one_of(st.none(), st.binary(max_size=200)),
        st.one_of(
            st.none(),
            st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=5)), min_size=1, max_size=3),
        ),
    ),
    min_size=1,
    max_size=20,
)


def test_all_codecs_are_installed():
    assert set(available_compressions()) == {
        Compression.NONE,
        Compression.GZIP,
        Compression.LZ4,
        Compression.ZSTD,
    }


@settings(PROFILE)
@given(
    records=records_strategy,
    codec=st.sampled_from([Compression.NONE, Compression.GZIP, Compression.LZ4, Compression.ZSTD]),
    base_offset=st.integers(0, 2**62),
    epoch=st.integers(-1, 2**31 - 1),
    transactional=st.booleans(),
)
def test_round_trip(records, codec, base_offset, epoch, transactional):
    batch = build_batch(
        records,
        compression=codec,
        base_offset=base_offset,
        leader_epoch=epoch,
        producer_id=7,
        producer_epoch=3,
        base_sequence=11,
        transactional=transactional,
    )
    header = validate_batch(batch)
    assert header.size_bytes == len(batch)
    assert header.magic == MAGIC_MSGPACK
    assert header.compression == codec
    assert header.base_offset == base_offset and header.leader_epoch == epoch
    assert header.record_count == len(records) and header.last_offset_delta == len(records) - 1
    assert header.base_timestamp == min(r[0] for r in records)
    assert header.max_timestamp == max(r[0] for r in records)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 3, 11)
    assert header.is_transactional == transactional and not header.is_control
    decoded = decode_records(batch, header=header)
    assert [(r.offset, r.timestamp, r.key, r.value) for r in decoded] == [
        (base_offset + i, ts, key, value) for i, (ts, key, value, _) in enumerate(records)
    ]
    assert [r.headers and list(r.headers) for r in decoded] == [
        (h and [tuple(x) for x in h]) or None for *_, h in records
    ]


def test_rewriting_offset_and_epoch_keeps_the_crc_valid():
    batch = bytearray(build_batch([(1, b"k", b"v", None)]))
    set_base_offset(batch, 0, 12345)
    set_leader_epoch(batch, 0, 9)
    header = validate_batch(batch)
    assert (header.base_offset, header.leader_epoch) == (12345, 9)


def test_control_batch():
    batch = build_control_batch(
        ControlType.COMMIT,
        b"payload",
        timestamp_ms=5,
        leader_epoch=2,
        producer_id=4,
        transactional=True,
    )
    header = validate_batch(batch)
    assert header.is_control and header.is_transactional and header.record_count == 1
    (record,) = decode_records(batch)
    assert control_type_of(record) is ControlType.COMMIT
    assert record.value == b"payload" and record.timestamp == 5


# --- Kafka's varint records (magic 2), encoded here by hand ---------------------------------------


def _zigzag(value: int) -> bytes:
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = encoded & 0x7F
        encoded >>= 7
        if encoded:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _kafka_bytes(value: bytes | None) -> bytes:
    return _zigzag(-1) if value is None else _zigzag(len(value)) + value


def _kafka_record(ts_delta, offset_delta, key, value, headers) -> bytes:
    body = b"\x00" + _zigzag(ts_delta) + _zigzag(offset_delta) + _kafka_bytes(key)
    body += _kafka_bytes(value) + _zigzag(len(headers))
    for name, header_value in headers:
        body += _kafka_bytes(name.encode()) + _kafka_bytes(header_value)
    return _zigzag(len(body)) + body


def _kafka_batch(records: bytes, count: int, last_delta: int, base_ts: int) -> bytes:
    body = bytearray(HEADER_SIZE) + records
    struct.pack_into(
        ">qiibIhiqqqhii",
        body,
        0,
        500,
        len(body) - 12,
        3,
        MAGIC_KAFKA_V2,
        0,
        0,
        last_delta,
        base_ts,
        base_ts + 300,
        -1,
        -1,
        -1,
        count,
    )
    struct.pack_into(">I", body, 17, crc32c.crc32c(bytes(body[CRC_START:])))
    return bytes(body)


def test_kafka_v2_records_decode():
    records = (
        _kafka_record(0, 0, b"key", b"value", [])
        + _kafka_record(300, 1, None, b"x" * 200, [("h1", b"v1"), ("h2", b"")])
        # A large negative-free delta and a long value exercise multi-byte varints.
        + _kafka_record(70_000, 5, b"", None, [])
    )
    batch = _kafka_batch(records, 3, 5, 1_700_000_000_000)
    header = validate_batch(batch)
    decoded = decode_records(batch, header=header)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in decoded] == [
        (500, 1_700_000_000_000, b"key", b"value", None),
        (501, 1_700_000_000_300, None, b"x" * 200, [("h1", b"v1"), ("h2", b"")]),
        (505, 1_700_000_070_000, b"", None, None),
    ]


def test_kafka_v2_varint_decoding_of_extremes():
    for delta in (0, 1, -1, 63, -64, 64, 2**31 - 1, -(2**31), 2**40):
        records = _kafka_record(delta, 0, b"k", b"v", [])
        (record,) = decode_records(_kafka_batch(records, 1, 0, 10**12))
        assert record.timestamp == 10**12 + delta


def test_kafka_v2_truncated_records_are_named():
    records = _kafka_record(0, 0, b"key", b"value", [])[:-4]
    with pytest.raises(BatchTruncatedError):
        decode_records(_kafka_batch(records, 1, 0, 0))


# --- validation failures ------------------------------------------------------------------------


def _batch() -> bytearray:
    return bytearray(build_batch([(1, b"k", b"v" * 50, None), (2, None, b"w", None)]))


def test_bad_magic():
    batch = _batch()
    batch[16] = 7
    reseal_crc(batch)
    with pytest.raises(BadMagicError) as info:
        validate_batch(batch)
    assert info.value.code is ErrorCode.CORRUPT_MESSAGE


@pytest.mark.parametrize("length", [-1, 0, HEADER_SIZE - 13])
def test_bad_length(length):
    batch = _batch()
    struct.pack_into(">i", batch, 8, length)
    with pytest.raises(BadLengthError):
        validate_batch(batch)


@pytest.mark.parametrize("cut", [0, 5, 11, 12, 40, HEADER_SIZE, -1])
def test_truncated(cut):
    batch = _batch()
    with pytest.raises(BatchTruncatedError):
        validate_batch(batch[:cut])


def test_crc_mismatch():
    batch = _batch()
    batch[-1] ^= 0x01
    with pytest.raises(CrcMismatchError):
        validate_batch(batch)


def test_an_emptied_batch_is_valid_but_never_a_produced_one(tmp_path):
    # record_count 0 is what the log cleaner leaves of a batch whose records all went: it keeps
    # the batch's offsets (a Raft entry); a producer's batch must have consecutive offsets.
    batch = _batch()
    struct.pack_into(">i", batch, 57, 0)
    reseal_crc(batch)
    assert validate_batch(batch).record_count == 0
    log = PartitionLog.open(tmp_path, LogConfig())
    with pytest.raises(RecordCountError):
        log.append(batch)
    log.close()


@pytest.mark.parametrize(("count", "delta"), [(-1, 0), (3, 1), (1, -1)])
def test_record_count_out_of_bounds(count, delta):
    batch = _batch()
    struct.pack_into(">i", batch, 57, count)
    struct.pack_into(">i", batch, 23, delta)
    reseal_crc(batch)
    with pytest.raises(RecordCountError) as info:
        validate_batch(batch)
    assert info.value.code is ErrorCode.INVALID_RECORD


def test_record_count_above_the_limit():
    batch = _batch()
    with pytest.raises(RecordCountError):
        validate_batch(batch, max_records=1)


def test_too_large():
    batch = _batch()
    with pytest.raises(BatchTooLargeError) as info:
        validate_batch(batch, max_batch_bytes=len(batch) - 1)
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
    assert validate_batch(batch, max_batch_bytes=len(batch)).size_bytes == len(batch)


@settings(PROFILE, max_examples=PROFILE.max_examples * 5)
@given(data=st.data())
def test_any_single_bit_flip_in_the_crc_region_is_detected(data):
    batch = _batch()
    bit = data.draw(st.integers(17 * 8, len(batch) * 8 - 1))
    batch[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidBatchError):
        validate_batch(batch)


@settings(PROFILE)
@given(data=st.data())
def test_any_single_bit_flip_in_the_length_or_magic_is_detected(data):
    batch = _batch()
    bit = data.draw(st.one_of(st.integers(8 * 8, 12 * 8 - 1), st.integers(16 * 8, 17 * 8 - 1)))
    batch[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidBatchError):
        validate_batch(batch)


def test_iter_batches_walks_and_stops_at_damage():
    first, second = build_batch([(1, b"a", b"b", None)]), build_batch([(2, b"c", b"d", None)])
    assert [h.size_bytes for _, h in iter_batches(first + second)] == [len(first), len(second)]
    with pytest.raises(BatchTruncatedError):
        list(iter_batches(first + second[:-1]))
    with pytest.raises(BatchTruncatedError):
        list(iter_batches(first + second[:-1], validate=False))


def test_unpack_header_needs_a_whole_header():
    with pytest.raises(BatchTruncatedError):
        unpack_header(b"\x00" * (HEADER_SIZE - 1))


def test_empty_batch_is_refused():
    with pytest.raises(RecordCountError):
        build_batch([])


def test_build_batch_rows_is_build_batch_with_rows_stored_as_they_go_on_the_wire() -> None:
    # The producer stores rows (delta from its first timestamp, key, value, headers) and packs
    # them as they are; the batch must equal what build_batch makes of absolute timestamps,
    # including when an explicit timestamp is older than the first (a negative delta, shifted so
    # that the header's base timestamp stays the smallest).
    records = [
        (1_000, None, b"a", None),
        (990, b"k", b"b", [("h", b"1")]),
        (1_007, None, b"c", None),
    ]
    rows = [(t - 1_000, key, value, headers) for t, key, value, headers in records]
    built = build_batch_rows(rows, base_timestamp=1_000, producer_id=7, base_sequence=3)
    assert built == build_batch(records, producer_id=7, base_sequence=3)
    header = validate_batch(built)
    assert (header.base_timestamp, header.max_timestamp, header.record_count) == (990, 1_007, 3)
    assert [(r.timestamp, r.key, r.value) for r in decode_records(built)] == [
        (t, key, value) for t, key, value, _ in records
    ]
    with pytest.raises(RecordCountError):
        build_batch_rows([], base_timestamp=0)


def test_build_batch_columns_is_build_batch_rows_of_the_zipped_columns() -> None:
    # The producer keeps columns: deltas, values, and keys/headers only once a record has any.
    # One kept packer serves every batch, an error (an unpackable value) included.
    records = [
        (1_000, None, b"a", None),
        (990, b"k", b"b", [("h", b"1")]),
        (1_007, None, b"c", None),
    ]
    deltas = [t - 1_000 for t, *_ in records]
    keys = [key for _, key, _, _ in records]
    values = [value for _, _, value, _ in records]
    headers = [h for *_, h in records]
    packer = msgpack.Packer(use_bin_type=True)
    expected = build_batch(records, producer_id=7, base_sequence=3)
    for _ in range(2):
        built = build_batch_columns(
            deltas, keys, values, headers, base_timestamp=1_000, packer=packer,
            producer_id=7, base_sequence=3,
        )  # fmt: skip
        assert built == expected
        with pytest.raises(TypeError):
            build_batch_columns([0], None, [object()], None, base_timestamp=0, packer=packer)
    plain = build_batch_columns([0, 5], None, [b"x", b"y"], None, base_timestamp=2_000)
    assert plain == build_batch([(2_000, None, b"x", None), (2_005, None, b"y", None)])
    with pytest.raises(RecordCountError):
        build_batch_columns([], None, [], None, base_timestamp=0)
