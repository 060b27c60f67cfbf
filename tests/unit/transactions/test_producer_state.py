"""Goal: the pure per-partition producer state follows Kafka's idempotence and transaction rules.

Each rule of broker/transactions/producer_state.py's docstring has a test: duplicates answered
with their original offsets, sequence gaps and fenced epochs refused, markers ending transactions
(with the KIP-890 epoch bump), the leader's pending overlay, the last stable offset and the
aborted index (against a brute-force model), expiry, and snapshots that decode strictly.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.transactions.producer_state import (
    MAX_CACHED_BATCHES,
    Duplicate,
    Marker,
    ProducerSnapshotError,
    ProducerStateManager,
    build_marker_batch,
    decode_marker_value,
    encode_marker_value,
    is_marker,
    marker_of,
)
from wire.batch import (
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    SEQUENCE_MAX,
    BatchHeader,
    ControlType,
    InvalidBatchError,
    build_control_batch,
    increment_sequence,
    unpack_header,
)
from wire.error_codes import BrokerError, ErrorCode

COMMIT = Marker(True, 0)
ABORT = Marker(False, 0)


def header(
    pid: int = -1,
    epoch: int = 0,
    seq: int = 0,
    count: int = 1,
    *,
    offset: int = 0,
    txn: bool = False,
    control: bool = False,
    ts: int = 1000,
) -> BatchHeader:
    attributes = (ATTR_TRANSACTIONAL if txn else 0) | (ATTR_CONTROL if control else 0)
    return BatchHeader(
        offset, 100, 0, 100, 0, attributes, count - 1, ts, ts, pid, epoch, seq, count
    )


class Feed:
    """Writes batches to a manager in log order, as PartitionLog does."""

    def __init__(self, manager: ProducerStateManager | None = None) -> None:
        self.manager = manager or ProducerStateManager()

    @property
    def end(self) -> int:
        return self.manager.applied_end

    def write(self, pid: int = -1, epoch: int = 0, seq: int = 0, count: int = 1, **kw: Any) -> int:
        base = self.end
        self.manager.on_write(header(pid, epoch, seq, count, offset=base, **kw), base)
        return base

    def marker(self, pid: int, epoch: int, marker: Marker, ts: int = 1000) -> int:
        base = self.end
        self.manager.on_write(
            header(pid, epoch, -1, offset=base, txn=True, control=True, ts=ts), base, marker
        )
        return base

    def check(self, pid: int, epoch: int, seq: int, count: int = 1, term: int = 0, **kw: Any):
        return self.manager.check(header(pid, epoch, seq, count, **kw), term)


def refused(feed: Feed, code: ErrorCode, *args: Any, **kw: Any) -> None:
    with pytest.raises(BrokerError) as caught:
        feed.check(*args, **kw)
    assert caught.value.code is code, caught.value


# --- idempotence ----------------------------------------------------------------------------------


def test_batches_without_producer_id_only_advance_the_applied_end() -> None:
    feed = Feed()
    feed.write(count=3)
    assert feed.end == 3
    assert feed.manager.stats().producers == 0
    assert feed.check(-1, -1, -1) is None


def test_a_new_producer_may_start_at_any_sequence_then_must_continue() -> None:
    feed = Feed()
    assert feed.check(7, 0, 42, 3) is None
    feed.write(7, 0, 42, 3)
    assert feed.check(7, 0, 45) is None
    refused(feed, ErrorCode.OUT_OF_ORDER_SEQUENCE, 7, 0, 46)
    refused(feed, ErrorCode.OUT_OF_ORDER_SEQUENCE, 7, 0, 40)


def test_a_retry_of_any_of_the_last_five_batches_gets_its_original_offsets() -> None:
    feed = Feed()
    feed.write(count=10)  # someone else's records first: offsets differ from sequences
    bases = [feed.write(1, 0, 2 * n, 2) for n in range(MAX_CACHED_BATCHES + 1)]
    for n in range(1, MAX_CACHED_BATCHES + 1):
        assert feed.check(1, 0, 2 * n, 2) == Duplicate(bases[n], bases[n] + 1)
    # The oldest fell out of the cache: not recognised, and not in sequence either.
    refused(feed, ErrorCode.OUT_OF_ORDER_SEQUENCE, 1, 0, 0, 2)
    # Same first sequence but another length is not the same batch.
    refused(feed, ErrorCode.OUT_OF_ORDER_SEQUENCE, 1, 0, 10, 1)


def test_an_older_epoch_is_fenced_and_a_new_epoch_starts_at_zero() -> None:
    feed = Feed()
    feed.write(1, 3, 0, 5)
    refused(feed, ErrorCode.INVALID_PRODUCER_EPOCH, 1, 2, 5)
    refused(feed, ErrorCode.OUT_OF_ORDER_SEQUENCE, 1, 4, 5)
    assert feed.check(1, 4, 0) is None
    feed.write(1, 4, 0)
    # A duplicate of the old epoch's batch is fenced, not answered.
    refused(feed, ErrorCode.INVALID_PRODUCER_EPOCH, 1, 3, 0, 5)


def test_sequences_wrap_past_the_i32_maximum() -> None:
    assert increment_sequence(SEQUENCE_MAX, 1) == 0
    assert increment_sequence(SEQUENCE_MAX - 1, 3) == 1
    feed = Feed()
    feed.write(1, 0, SEQUENCE_MAX - 1, 3)  # sequences MAX-1, MAX, 0
    assert feed.check(1, 0, 1) is None
    assert feed.check(1, 0, SEQUENCE_MAX - 1, 3) == Duplicate(0, 2)
    refused(feed, ErrorCode.OUT_OF_ORDER_SEQUENCE, 1, 0, 0)


def test_client_control_batches_and_missing_sequences_are_invalid() -> None:
    feed = Feed()
    refused(feed, ErrorCode.INVALID_RECORD, 1, 0, 0, control=True, txn=True)
    refused(feed, ErrorCode.INVALID_RECORD, 1, 0, -1)


def test_batches_without_sequence_set_the_epoch_but_not_the_cache() -> None:
    # A coordinator's transactional offset commits carry producer id and epoch, no sequence.
    feed = Feed()
    feed.write(1, 2, -1, txn=True)
    assert feed.manager.stats().open_transactions == 1
    refused(feed, ErrorCode.INVALID_PRODUCER_EPOCH, 1, 1, 0)


# --- transactions ---------------------------------------------------------------------------------


def test_inside_a_transaction_only_transactional_batches_of_its_epoch_are_taken() -> None:
    feed = Feed()
    feed.write(1, 0, 0, txn=True)
    refused(feed, ErrorCode.INVALID_TXN_STATE, 1, 0, 1)
    refused(feed, ErrorCode.CONCURRENT_TRANSACTIONS, 1, 1, 0, txn=True)
    assert feed.check(1, 0, 1, txn=True) is None


def test_a_commit_marker_ends_the_transaction_and_an_abort_indexes_it() -> None:
    feed = Feed()
    first = feed.write(1, 0, 0, 2, txn=True)
    feed.write(2, 0, 0, txn=True)
    feed.write(1, 0, 2, txn=True)
    commit_at = feed.marker(1, 0, COMMIT)
    assert feed.manager.stats().open_transactions == 1
    abort_at = feed.marker(2, 0, ABORT)
    assert feed.manager.stats().open_transactions == 0
    assert feed.manager.aborted_transactions(0, feed.end) == [(2, 2)]
    assert feed.manager.last_stable_offset(feed.end) == feed.end
    assert first == 0 and commit_at == 4 and abort_at == 5
    # Without the bump (same epoch) the sequence just continues.
    assert feed.check(1, 0, 3) is None


def test_a_marker_with_a_higher_epoch_bumps_the_producer_and_resets_its_sequence() -> None:
    feed = Feed()
    feed.write(1, 0, 0, 3, txn=True)
    feed.marker(1, 1, ABORT)  # KIP-890: the transaction's end bumps the epoch
    refused(feed, ErrorCode.INVALID_PRODUCER_EPOCH, 1, 0, 3, txn=True)  # the late write
    refused(feed, ErrorCode.OUT_OF_ORDER_SEQUENCE, 1, 1, 3, txn=True)
    assert feed.check(1, 1, 0, txn=True) is None
    # A retry of the same marker changes nothing: the new transaction keeps its sequences.
    feed.write(1, 1, 0, txn=True)
    feed.marker(1, 1, COMMIT)
    feed.marker(1, 1, COMMIT)
    assert feed.check(1, 1, 1) is None


def test_stale_writes_change_nothing_and_raft_control_batches_are_ignored() -> None:
    feed = Feed()
    feed.write(1, 2, 0, txn=True)
    before = feed.manager.snapshot()
    # Only a race around a leader's check can write these; every replica ignores them alike.
    feed.write(1, 1, 7, txn=True)
    feed.marker(1, 1, COMMIT)
    # A Raft no-op: control without the transactional bit.
    feed.manager.on_write(header(-1, control=True, offset=feed.end), feed.end)
    feed.manager.on_write(header(1, 2, -1, control=True, offset=feed.end), feed.end)
    after = msgpack.unpackb(feed.manager.snapshot())
    assert {k: v for k, v in after.items() if k != "end"} == {
        k: v for k, v in msgpack.unpackb(before).items() if k != "end"
    }
    assert feed.manager.stats().stale_epoch_writes == 2
    assert feed.manager.stats().open_transactions == 1


def test_check_marker_refuses_fenced_coordinators_and_epochs() -> None:
    feed = Feed()
    feed.write(1, 2, 0, txn=True)
    feed.marker(1, 2, Marker(True, 5))
    feed.manager.check_marker(1, 2, 5)
    feed.manager.check_marker(9, 0, 0)  # unknown producer: nothing to compare with
    with pytest.raises(BrokerError) as caught:
        feed.manager.check_marker(1, 2, 4)
    assert caught.value.code is ErrorCode.TRANSACTION_COORDINATOR_FENCED
    with pytest.raises(BrokerError) as caught:
        feed.manager.check_marker(1, 1, 5)
    assert caught.value.code is ErrorCode.INVALID_PRODUCER_EPOCH


# --- the leader's pending overlay -----------------------------------------------------------------


def test_a_retry_before_the_first_copy_is_written_is_a_duplicate() -> None:
    manager = ProducerStateManager()
    first = header(1, 0, 0, 2)
    manager.accept(first, 0, leader_term=3)
    assert manager.check(header(1, 0, 0, 2), 3) == Duplicate(0, 1)
    assert manager.check(header(1, 0, 2), 3) is None  # continues the pending batch
    with pytest.raises(BrokerError) as caught:
        manager.check(header(1, 0, 3), 3)
    assert caught.value.code is ErrorCode.OUT_OF_ORDER_SEQUENCE
    manager.on_write(first, 0)  # the Raft driver writes it: the overlay entry is popped
    assert manager.stats().pending_batches == 0
    assert manager.check(header(1, 0, 0, 2), 3) == Duplicate(0, 1)


def test_a_different_batch_written_in_its_place_clears_the_overlay() -> None:
    manager = ProducerStateManager()
    manager.accept(header(1, 0, 0), 0, leader_term=3)
    manager.accept(header(1, 0, 1), 1, leader_term=3)
    manager.on_write(header(2, 0, 0), 0)  # another leader's entry at offset 0
    assert manager.stats().pending_batches == 0
    assert manager.check(header(1, 0, 5), 3) is None  # unknown producer again


def test_a_new_term_clears_the_overlay_and_written_offsets_are_not_pending() -> None:
    manager = ProducerStateManager()
    manager.accept(header(1, 0, 0), 0, leader_term=3)
    assert manager.check(header(1, 0, 0), 4) is None  # new leadership: the proposal may be lost
    manager.on_write(header(-1), 0)
    manager.accept(header(1, 0, 0), 0, leader_term=4)  # below applied_end: a single node's call
    assert manager.stats().pending_batches == 0


def test_a_pending_marker_fences_the_old_epoch_before_it_is_written() -> None:
    manager = ProducerStateManager()
    manager.on_write(header(1, 0, 0, txn=True), 0)
    marker = unpack_header(
        build_marker_batch(1, 1, commit=False, coordinator_epoch=0, timestamp_ms=1)
    )
    manager.accept(marker, 1, leader_term=1, marker=ABORT)
    with pytest.raises(BrokerError) as caught:
        manager.check(header(1, 0, 1, txn=True), 1)
    assert caught.value.code is ErrorCode.INVALID_PRODUCER_EPOCH
    assert manager.check(header(1, 1, 0, txn=True), 1) is None


# --- read_committed -------------------------------------------------------------------------------


def test_the_lso_holds_at_an_open_transaction_until_its_marker_is_committed() -> None:
    feed = Feed()
    feed.write(count=2)
    first = feed.write(1, 0, 0, 3, txn=True)
    feed.write(count=2)
    assert feed.manager.last_stable_offset(feed.end) == first
    assert feed.manager.last_stable_offset(1) == 1  # never above the high watermark
    marker_at = feed.marker(1, 0, COMMIT)
    # Written but not committed: still open for readers.
    assert feed.manager.last_stable_offset(marker_at) == first
    assert feed.manager.last_stable_offset(marker_at + 1) == marker_at + 1


def test_too_many_unstable_completions_merge_conservatively() -> None:
    feed = Feed(ProducerStateManager(max_unstable_completed=2))
    markers = []
    for pid in range(1, 5):
        feed.write(pid, 0, 0, txn=True)
        markers.append((feed.end - 1, feed.marker(pid, 0, COMMIT)))
    exact = [first for first, marker in markers]
    for high_watermark in range(feed.end + 1):
        lso = feed.manager.last_stable_offset(high_watermark)
        open_at = [f for f, m in markers if f < high_watermark <= m]
        assert lso <= min([high_watermark, *open_at])
    assert feed.manager.last_stable_offset(feed.end) == feed.end
    assert exact == [0, 2, 4, 6]


def test_aborted_transactions_are_ranges_overlapping_the_fetch() -> None:
    feed = Feed()
    long_first = feed.write(9, 0, 0, txn=True)  # spans everything below
    a = feed.write(1, 0, 0, 2, txn=True)
    a_end = feed.marker(1, 0, ABORT)
    b = feed.write(2, 0, 0, txn=True)
    feed.marker(2, 0, COMMIT)
    c = feed.write(3, 0, 0, txn=True)
    c_end = feed.marker(3, 0, ABORT)
    long_end = feed.marker(9, 0, ABORT)
    manager = feed.manager
    assert manager.aborted_transactions(0, feed.end) == [(9, long_first), (1, a), (3, c)]
    assert manager.aborted_transactions(a_end + 1, c) == [(9, long_first)]
    assert manager.aborted_transactions(c_end + 1, feed.end) == [(9, long_first)]
    assert manager.aborted_transactions(long_end + 1, long_end + 5) == []
    assert manager.aborted_transactions(b, b + 1) == [(9, long_first)]
    manager.prune_below(a_end + 1)
    assert manager.aborted_transactions(0, feed.end) == [(9, long_first), (3, c)]
    manager.prune_below(feed.end)
    assert manager.stats().aborted_index_size == 0


# --- expiry and snapshots -------------------------------------------------------------------------


def test_idle_producers_expire_unless_a_transaction_is_open() -> None:
    feed = Feed()
    feed.write(1, 0, 5, ts=1_000)
    feed.write(2, 0, 0, txn=True, ts=1_000)
    feed.write(3, 0, 0, ts=5_000)
    assert feed.manager.expire(now_ms=6_000, expiration_ms=5_000) == 1
    assert feed.manager.producer_ids() == [2, 3]
    assert feed.check(1, 0, 99) is None  # forgotten: any sequence starts it again


def test_a_snapshot_restores_the_same_state() -> None:
    feed = Feed()
    feed.write(count=3)
    feed.write(1, 0, 0, 2)
    feed.write(2, 4, 10, txn=True)
    feed.write(3, 0, 0, txn=True)
    feed.marker(3, 1, Marker(False, 7))
    restored = ProducerStateManager.restore(feed.manager.snapshot())
    assert restored.snapshot() == feed.manager.snapshot()
    assert restored.applied_end == feed.end
    assert restored.check(header(1, 0, 0, 2), 0) == Duplicate(3, 4)
    assert restored.last_stable_offset(feed.end + 1) == 5
    assert restored.aborted_transactions(0, feed.end) == [(3, 6)]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"version": 2, "end": 0, "producers": [], "completed": [], "aborted": []}),
        msgpack.packb({"version": 1, "end": "0", "producers": [], "completed": [], "aborted": []}),
        msgpack.packb({"version": 1, "end": 0, "producers": [[1]], "completed": [], "aborted": []}),
        msgpack.packb(
            {
                "version": 1,
                "end": 0,
                "producers": [],
                "completed": [],
                "aborted": [[1, 0, 5], [2, 0, 4]],
            }
        ),
    ],
)
def test_a_malformed_snapshot_is_a_named_error(data: bytes) -> None:
    with pytest.raises(ProducerSnapshotError):
        ProducerStateManager.restore(data)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0), flip=st.integers(min_value=0), value=st.integers(0, 255))
def test_damaged_snapshots_never_raise_anything_else(cut: int, flip: int, value: int) -> None:
    feed = Feed()
    feed.write(1, 0, 0, 2, txn=True)
    feed.marker(1, 0, ABORT)
    data = bytearray(feed.manager.snapshot())
    data[flip % len(data)] = value
    with contextlib.suppress(ProducerSnapshotError):
        ProducerStateManager.restore(bytes(data[: cut % (len(data) + 1)]))


# --- markers --------------------------------------------------------------------------------------


def test_marker_batches_round_trip() -> None:
    data = build_marker_batch(5, 2, commit=True, coordinator_epoch=9, timestamp_ms=123)
    found = unpack_header(data)
    assert is_marker(found) and found.producer_id == 5 and found.producer_epoch == 2
    assert marker_of(data, 0, found) == Marker(True, 9)
    assert decode_marker_value(encode_marker_value(3)) == 3


@pytest.mark.parametrize(
    "data",
    [
        build_control_batch(ControlType.LEADER_NOOP, b"", timestamp_ms=1, transactional=True),
        build_control_batch(ControlType.ABORT, b"\xc1", timestamp_ms=1, transactional=True),
        build_control_batch(
            ControlType.ABORT, msgpack.packb({"x": 1}), timestamp_ms=1, transactional=True
        ),
    ],
)
def test_a_bad_marker_does_not_decode(data: bytes) -> None:
    with pytest.raises(InvalidBatchError):
        marker_of(data, 0, unpack_header(data))


# --- LSO and aborted index against a brute-force model --------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["data", "txn", "commit", "abort", "plain"]),
        st.integers(1, 4),
        st.integers(1, 3),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events=EVENTS, cap=st.integers(2, 6), data=st.data())
def test_lso_and_aborted_ranges_match_a_brute_force_model(events, cap, data) -> None:
    feed = Feed(ProducerStateManager(max_unstable_completed=cap))
    sequences: dict[int, int] = {}
    opened: dict[int, int] = {}
    transactions: list[tuple[int, int, int | None, bool]] = []  # pid, first, marker, aborted
    for kind, pid, count in events:
        if kind == "plain":
            feed.write(count=count)
        elif kind in ("data", "txn"):
            txn = kind == "txn" or pid in opened
            base = feed.write(pid, 0, sequences.get(pid, 0), count, txn=txn)
            sequences[pid] = sequences.get(pid, 0) + count
            if txn and pid not in opened:
                opened[pid] = base
        else:
            at = feed.marker(pid, 0, COMMIT if kind == "commit" else ABORT)
            if pid in opened:
                transactions.append((pid, opened.pop(pid), at, kind == "abort"))
    transactions += [(pid, first, None, False) for pid, first in opened.items()]
    manager = feed.manager
    watermarks = sorted(data.draw(st.lists(st.integers(0, feed.end), max_size=6)))
    for high_watermark in watermarks:  # a high watermark only moves up
        spanning = [
            first
            for _, first, marker, _ in transactions
            if first < high_watermark and (marker is None or marker >= high_watermark)
        ]
        exact = min([high_watermark, *spanning])
        lso = manager.last_stable_offset(high_watermark)
        unstable = sum(1 for _, _, m, _ in transactions if m is not None and m >= high_watermark)
        if unstable < cap:
            assert lso == exact
        else:
            assert lso <= exact
    start = data.draw(st.integers(0, feed.end))
    end = data.draw(st.integers(start, feed.end + 1))
    expected = sorted(
        (first, pid)
        for pid, first, marker, aborted in transactions
        if aborted and first < end and marker >= start
    )
    assert manager.aborted_transactions(start, end) == [(pid, first) for first, pid in expected]
    restored = ProducerStateManager.restore(manager.snapshot())
    assert restored.aborted_transactions(start, end) == manager.aborted_transactions(start, end)
