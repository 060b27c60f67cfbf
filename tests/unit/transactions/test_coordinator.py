"""Goal: each transition and each error of the transaction coordinator core, one at a time, as
Kafka's clients expect them (KIP-98, KIP-360, KIP-890): the happy path, retries after lost
responses, zombies, timeouts, epoch exhaustion, failover, expiry, bounds and the record codec."""

from __future__ import annotations

import msgpack
import pytest

from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import EncodedRecord
from broker.transactions.coordinator import TransactionCoordinatorCore
from broker.transactions.txn_actions import (
    RespondDescribeTransactions,
    RespondEndTxn,
    RespondInitProducerId,
    RespondListTransactions,
    WriteMarkers,
)
from broker.transactions.txn_events import (
    DescribeTransactionsRequested,
    InitProducerIdRequested,
    ListTransactionsRequested,
    UnloadPartition,
)
from broker.transactions.txn_records import (
    PRODUCER_EPOCH_MAX,
    CorruptTxnRecordError,
    EpochBump,
    TransactionMetadata,
    TransactionRecord,
    TransactionState,
    decode_record,
    encode_record,
    replay,
)
from wire.error_codes import ErrorCode

from .coordinator_harness import TIMEOUT_MS, TxnHarness, fast_config, seeded_record, tp

State = TransactionState


def started(h: TxnHarness, transactional_id: str = "t") -> tuple[int, int]:
    return h.pair(h.init(transactional_id))


def completing(
    h: TxnHarness, *partitions: TopicPartition, commit: bool = True
) -> tuple[tuple[int, int], tuple[int, int]]:
    """A transaction of "t" ended and still writing its markers (the test delivers them): the
    pair it ran with and the pair its EndTxn handed out for the next one."""
    h.auto_markers = False
    producer = started(h)
    h.add(producer, *partitions)
    return producer, h.pair(h.end(producer, commit))


def state_of(h: TxnHarness, transactional_id: str = "t") -> TransactionMetadata:
    meta = h.core.store.get(transactional_id)
    assert meta is not None
    return meta


def test_a_transaction_commits_with_the_epoch_bumped() -> None:
    h = TxnHarness()
    h.auto_markers = False
    producer = started(h)
    assert producer == (1001, 0)
    assert h.error(h.add(producer, tp("a", 0), tp("b", 1))) is ErrorCode.NONE
    assert h.error(h.add_offsets(producer)) is ErrorCode.NONE
    assert state_of(h).state is State.ONGOING
    assert state_of(h).partitions == (tp("__consumer_offsets", 3), tp("a", 0), tp("b", 1))
    end = h.end(producer, True)
    assert h.pair(end) == (1001, 1), "EndTxn answers the bumped epoch (KIP-890)"
    assert state_of(h).state is State.PREPARE_COMMIT
    (markers,) = h.markers
    assert markers == WriteMarkers(
        transactional_id="t",
        producer_id=1001,
        producer_epoch=1,
        commit=True,
        partitions=(tp("__consumer_offsets", 3), tp("a", 0), tp("b", 1)),
        coordinator_epoch=1,
    )
    h.markers_written()
    assert state_of(h).state is State.COMPLETE_COMMIT and state_of(h).partitions == ()
    assert replay(h.log) == h.core.store
    stats = h.core.statistics()
    assert (stats.commit_count, stats.abort_count) == (1, 0)


def test_the_next_transaction_uses_the_new_epoch_and_the_old_one_is_fenced() -> None:
    h = TxnHarness()
    producer = started(h)
    h.add(producer)
    producer2 = h.pair(h.end(producer, False))
    assert state_of(h).state is State.COMPLETE_ABORT
    assert h.error(h.add(producer2)) is ErrorCode.NONE
    assert h.error(h.add((producer[0], producer[1]))) is ErrorCode.PRODUCER_FENCED
    assert h.error(h.end(producer, False)) is ErrorCode.PRODUCER_FENCED, "a new txn began"
    assert h.core.statistics().fenced_request_count == 2


def test_a_lost_end_txn_response_is_answered_again_and_the_opposite_is_refused() -> None:
    h = TxnHarness()
    h.auto_markers = False
    producer = started(h)
    h.add(producer)
    first = h.pair(h.end(producer, True))
    assert h.pair(h.end(producer, True)) == first, "retry while completing"
    assert h.error(h.end(producer, False)) is ErrorCode.INVALID_TXN_STATE
    h.markers_written()
    assert h.pair(h.end(producer, True)) == first, "retry once completed"
    assert h.error(h.end(first, True)) is ErrorCode.INVALID_TXN_STATE, "no transaction at all"


def test_requests_while_completing_are_concurrent_transactions() -> None:
    """Only the next transaction's adds wait for the completion (below); the rest is refused."""
    h = TxnHarness()
    producer, nxt = completing(h)
    assert h.error(h.end(nxt, True)) is ErrorCode.CONCURRENT_TRANSACTIONS
    assert h.error(h.init()) is ErrorCode.CONCURRENT_TRANSACTIONS
    assert ErrorCode.CONCURRENT_TRANSACTIONS.retriable
    assert h.error(h.add(producer)) is ErrorCode.PRODUCER_FENCED, "the old pair is a zombie's"
    h.markers_written()
    assert h.error(h.add(nxt)) is ErrorCode.NONE


def test_the_next_transactions_adds_wait_for_the_previous_ones_complete_record() -> None:
    h = TxnHarness()
    _, nxt = completing(h, tp("a", 0))
    add = h.add(nxt, tp("b", 0))
    offsets = h.add_offsets(nxt)
    assert h.response(add) is None and h.response(offsets) is None
    assert h.core.statistics().parked_request_count == 2
    h.auto_persist = False
    h.now_ms += 7
    h.markers_written()
    assert h.response(add) is None, "not before Complete* is persisted"
    h.persist_next()
    assert state_of(h).state is State.COMPLETE_COMMIT
    assert len(h.pending) == 1, "the first parked add's write, the second waits for it"
    assert h.response(add) is None and h.response(offsets) is None
    h.persist_next()
    assert h.error(add) is ErrorCode.NONE and h.response(offsets) is None
    h.persist_next()
    assert h.error(offsets) is ErrorCode.NONE
    states = [decode_record(r).value.state for r in h.log[-3:]]  # type: ignore[union-attr]
    assert states == [State.COMPLETE_COMMIT, State.ONGOING, State.ONGOING]
    meta = state_of(h)
    assert meta.partitions == (tp("__consumer_offsets", 3), tp("b", 0))
    assert meta.start_timestamp_ms == h.now_ms, "the transaction starts when the add is handled"
    assert (meta.producer_id, meta.producer_epoch) == nxt
    stats = h.core.statistics()
    assert stats.parked_request_count == 0 and stats.parked_add_count == 2
    assert h.core.store == replay(h.log)


def test_a_parked_add_gets_what_it_would_have_got_after_the_completion() -> None:
    """Each parked add is handled in full once its turn comes: a bound it passes, a failed write
    (which lets the next one go on) or a partition already added answer as they would then."""
    h = TxnHarness(fast_config(partitions_per_transaction_max=1))
    _, nxt = completing(h, commit=False)
    failed = h.add(nxt, tp("a", 0))
    added = h.add(nxt, tp("b", 0))
    again = h.add(nxt, tp("b", 0))
    too_many = h.add(nxt, tp("c", 0))
    h.auto_persist = False
    h.markers_written()
    h.persist_next()  # CompleteAbort
    h.fail_next(ErrorCode.NOT_COORDINATOR)
    assert h.error(failed) is ErrorCode.NOT_COORDINATOR
    h.persist_next()
    assert h.error(added) is ErrorCode.NONE
    assert h.error(again) is ErrorCode.NONE, "nothing new: answered without a write"
    assert h.error(too_many) is ErrorCode.POLICY_VIOLATION, "and the next one goes on at once"
    assert not h.pending
    assert state_of(h).partitions == (tp("b", 0),)
    assert h.core.statistics().parked_request_count == 0


def test_parked_adds_wait_through_a_failed_complete_write() -> None:
    h = TxnHarness()
    _, nxt = completing(h)
    h.auto_persist = False
    add = h.add(nxt)
    h.markers_written()
    h.fail_next()
    assert h.response(add) is None
    h.tick(50)
    h.persist_next()
    assert h.response(add) is None
    h.persist_next()
    assert h.error(add) is ErrorCode.NONE


def test_only_the_pair_the_end_txn_handed_out_is_parked() -> None:
    """A timeout's Prepare* bumped to a pair nobody holds; a write in flight is not a completion:
    both keep CONCURRENT_TRANSACTIONS."""
    h = TxnHarness()
    h.auto_markers = False
    producer = started(h)
    h.add(producer)
    h.tick(TIMEOUT_MS + 100)
    meta = state_of(h)
    assert meta.state is State.PREPARE_ABORT
    unheld = (meta.producer_id, meta.producer_epoch)
    assert h.error(h.add(unheld)) is ErrorCode.CONCURRENT_TRANSACTIONS
    assert h.error(h.add(producer)) is ErrorCode.TRANSACTION_ABORTED
    h.markers_written()
    recovered = h.pair(h.init(producer_id=producer[0], producer_epoch=producer[1]))
    h.add(recovered)
    h.auto_persist = False
    h.end(recovered, True)  # its Prepare* write in flight, not answered yet
    assert h.error(h.add(recovered)) is ErrorCode.CONCURRENT_TRANSACTIONS
    assert h.core.statistics().parked_add_count == 0


def test_parked_adds_are_bounded_per_id_and_in_total() -> None:
    h = TxnHarness(fast_config(parked_requests_per_id_max=2, parked_requests_max=3))
    h.auto_markers = False
    pairs = {}
    for tid in ("t", "u"):
        producer = started(h, tid)
        h.add(producer, transactional_id=tid)
        pairs[tid] = h.pair(h.end(producer, True, transactional_id=tid))
    parked = [h.add(pairs["t"]), h.add_offsets(pairs["t"])]
    assert h.error(h.add(pairs["t"])) is ErrorCode.CONCURRENT_TRANSACTIONS, "per id"
    parked.append(h.add(pairs["u"], transactional_id="u"))
    refused = h.add_offsets(pairs["u"], transactional_id="u")
    assert h.error(refused) is ErrorCode.CONCURRENT_TRANSACTIONS, "in total"
    assert h.core.statistics().parked_request_count == 3
    while h.markers:
        h.markers_written()
    assert [h.error(rid) for rid in parked] == [ErrorCode.NONE] * 3
    disabled = TxnHarness(fast_config(parked_requests_per_id_max=0))
    _, nxt = completing(disabled)
    assert disabled.error(disabled.add(nxt)) is ErrorCode.CONCURRENT_TRANSACTIONS


def test_a_request_meeting_a_write_in_flight_waits_its_turn() -> None:
    h = TxnHarness()
    producer = started(h)
    h.auto_persist = False
    add = h.add(producer)
    assert h.error(h.end(producer, True)) is ErrorCode.CONCURRENT_TRANSACTIONS
    assert h.response(add) is None
    h.persist_next()
    assert h.error(add) is ErrorCode.NONE


def test_errors_for_unknown_ids_wrong_producer_ids_and_empty_transactions() -> None:
    h = TxnHarness()
    assert h.error(h.add((5, 0), transactional_id="x")) is ErrorCode.INVALID_PRODUCER_ID_MAPPING
    producer = started(h)
    assert h.error(h.add((producer[0] + 7, 0))) is ErrorCode.INVALID_PRODUCER_ID_MAPPING
    assert h.error(h.end(producer, True)) is ErrorCode.INVALID_TXN_STATE, "Empty: no transaction"
    assert h.error(h.end(producer, False)) is ErrorCode.INVALID_TXN_STATE
    assert h.error(h.add(producer, tp("", 0))) is ErrorCode.INVALID_REQUEST
    assert h.error(h.init(timeout_ms=16 * 60_000)) is ErrorCode.INVALID_REQUEST
    assert h.error(h.init(timeout_ms=0)) is ErrorCode.INVALID_REQUEST
    assert h.error(h.init(producer_id=producer[0])) is ErrorCode.INVALID_REQUEST


def test_a_partition_already_in_the_transaction_needs_no_write() -> None:
    h = TxnHarness()
    producer = started(h)
    h.add(producer, tp("a", 0))
    records = len(h.log)
    assert h.error(h.add(producer, tp("a", 0))) is ErrorCode.NONE
    assert len(h.log) == records


def test_a_new_instance_fences_the_old_one_and_aborts_its_transaction_first() -> None:
    h = TxnHarness()
    h.auto_markers = False
    old = started(h)
    h.add(old, tp("a", 0))
    init = h.init()
    assert h.response(init) is None, "answered once the fencing abort is complete"
    (markers,) = h.markers
    assert (markers.commit, markers.producer_epoch) == (False, old[1] + 1)
    assert state_of(h).state is State.PREPARE_ABORT
    h.markers_written()
    new = h.pair(init)
    assert new == (old[0], old[1] + 2)
    assert h.error(h.add(old)) is ErrorCode.PRODUCER_FENCED
    assert h.error(h.end(old, True)) is ErrorCode.PRODUCER_FENCED
    assert h.error(h.add(new)) is ErrorCode.NONE
    assert h.core.statistics().fenced_instance_count == 1


def test_a_new_instance_on_an_idle_id_bumps_the_epoch() -> None:
    h = TxnHarness()
    old = started(h)
    new = started(h)
    assert new == (old[0], old[1] + 1)
    assert h.error(h.add(old)) is ErrorCode.PRODUCER_FENCED
    assert h.error(h.init(producer_id=old[0], producer_epoch=old[1])) is ErrorCode.PRODUCER_FENCED


def test_a_timed_out_transaction_is_aborted_and_the_producer_recovers() -> None:
    h = TxnHarness()
    producer = started(h)
    h.add(producer)
    h.tick(TIMEOUT_MS - 1)
    assert state_of(h).state is State.ONGOING
    h.tick(200)
    assert state_of(h).state is State.COMPLETE_ABORT
    assert h.core.statistics().timeout_abort_count == 1
    assert h.error(h.add(producer)) is ErrorCode.TRANSACTION_ABORTED
    assert h.error(h.end(producer, True)) is ErrorCode.TRANSACTION_ABORTED
    assert h.error(h.end(producer, False)) is ErrorCode.TRANSACTION_ABORTED
    # KIP-360: InitProducerId with the old pair gets the epoch the timeout bumped to (again on
    # a retry).
    recovered = h.pair(h.init(producer_id=producer[0], producer_epoch=producer[1]))
    assert recovered == (producer[0], producer[1] + 1)
    again = h.pair(h.init(producer_id=producer[0], producer_epoch=producer[1]))
    assert again == recovered
    assert h.error(h.add(recovered)) is ErrorCode.NONE
    assert h.error(h.init(producer_id=producer[0], producer_epoch=producer[1])) is (
        ErrorCode.PRODUCER_FENCED
    ), "once a new transaction began, the old pair is a zombie"


def test_kip360_recovery_with_the_current_pair_bumps_and_its_retry_gets_the_same() -> None:
    h = TxnHarness()
    producer = started(h)
    recovered = h.pair(h.init(producer_id=producer[0], producer_epoch=producer[1]))
    assert recovered == (producer[0], producer[1] + 1)
    assert h.pair(h.init(producer_id=producer[0], producer_epoch=producer[1])) == recovered
    assert h.error(h.init(producer_id=producer[0] + 1, producer_epoch=0)) is (
        ErrorCode.INVALID_PRODUCER_ID_MAPPING
    )


def test_recovery_of_an_ongoing_transaction_aborts_it_first() -> None:
    h = TxnHarness()
    producer = started(h)
    h.add(producer)
    recovered = h.pair(h.init(producer_id=producer[0], producer_epoch=producer[1]))
    assert recovered == (producer[0], producer[1] + 2)
    assert state_of(h).state is State.EMPTY
    assert h.pair(h.init(producer_id=producer[0], producer_epoch=producer[1])) == recovered


def test_the_epoch_is_exhausted_into_a_fresh_producer_id() -> None:
    h = TxnHarness(records=(seeded_record("t", producer_epoch=PRODUCER_EPOCH_MAX - 2),))
    h.auto_markers = False
    producer = (7, PRODUCER_EPOCH_MAX - 2)
    h.add(producer)
    producer = h.pair(h.end(producer, True))
    assert producer == (7, PRODUCER_EPOCH_MAX - 1)
    h.markers_written()
    h.add(producer)
    rotated = h.pair(h.end(producer, True))
    assert rotated[1] == 0 and rotated[0] not in (7, -1)
    (markers,) = h.markers
    assert (markers.producer_id, markers.producer_epoch) == (7, PRODUCER_EPOCH_MAX)
    assert h.pair(h.end(producer, True)) == rotated, "the retry is recognised across the rotation"
    h.markers_written()
    assert h.error(h.add(rotated)) is ErrorCode.NONE


def test_a_timeout_at_the_last_epoch_rotates_at_recovery() -> None:
    record = seeded_record(
        "t",
        producer_epoch=PRODUCER_EPOCH_MAX - 1,
        state=State.ONGOING,
        partitions=(tp("a", 0),),
        start_timestamp_ms=1_000_000,
    )
    h = TxnHarness(records=(record,))
    h.tick(TIMEOUT_MS + 100)
    assert state_of(h).producer_epoch == PRODUCER_EPOCH_MAX
    old = (7, PRODUCER_EPOCH_MAX - 1)
    assert h.error(h.add((7, PRODUCER_EPOCH_MAX))) is ErrorCode.PRODUCER_FENCED
    recovered = h.pair(h.init(producer_id=old[0], producer_epoch=old[1]))
    assert recovered[1] == 0 and recovered[0] != 7
    assert h.pair(h.init(producer_id=old[0], producer_epoch=old[1])) == recovered


def test_failed_markers_are_retried_after_the_backoff_until_written() -> None:
    h = TxnHarness()
    h.auto_markers = False
    producer = started(h)
    h.add(producer)
    h.end(producer, False)
    h.markers_failed()
    assert not h.markers
    assert h.core.next_deadline_ms() == h.now_ms + 50
    h.tick(49)
    assert not h.markers
    h.tick(1)
    assert len(h.markers) == 1
    h.markers_written()
    assert state_of(h).state is State.COMPLETE_ABORT


def test_a_stale_marker_report_is_ignored() -> None:
    h = TxnHarness()
    h.auto_markers = False
    producer = started(h)
    h.add(producer)
    h.end(producer, True)
    markers = h.markers_failed()
    h.markers.append(markers)  # the old delivery reports late, after the failure
    h.markers_written()
    assert state_of(h).state is State.PREPARE_COMMIT, "no delivery is in flight"


def test_a_failed_complete_write_is_written_again() -> None:
    h = TxnHarness()
    h.auto_markers = False
    producer = started(h)
    h.add(producer)
    h.end(producer, True)
    h.auto_persist = False
    h.markers_written()
    h.fail_next()
    assert state_of(h).state is State.PREPARE_COMMIT
    h.tick(50)
    h.persist_next()
    assert state_of(h).state is State.COMPLETE_COMMIT


def test_a_failed_write_answers_its_request_with_the_error() -> None:
    h = TxnHarness()
    producer = started(h)
    h.auto_persist = False
    add = h.add(producer)
    h.fail_next(ErrorCode.NOT_COORDINATOR)
    assert h.error(add) is ErrorCode.NOT_COORDINATOR
    assert state_of(h).state is State.EMPTY


def test_failover_in_prepare_completes_the_transaction_on_the_new_coordinator() -> None:
    h = TxnHarness()
    h.auto_markers = False
    producer = started(h)
    h.add(producer, tp("a", 0))
    h.end(producer, True)
    h.handle(UnloadPartition(now_ms=h.now_ms))
    successor = TxnHarness(records=tuple(h.log), epoch=2, now_ms=h.now_ms)
    assert successor.core.store.get("t") is not None
    assert state_of(successor).state is State.COMPLETE_COMMIT, "markers re-requested at load"


def test_failover_keeps_an_ongoing_transactions_start_so_it_still_times_out() -> None:
    h = TxnHarness()
    producer = started(h)
    h.add(producer)
    h.tick(TIMEOUT_MS // 2)
    successor = TxnHarness(records=tuple(h.log), epoch=2, now_ms=h.now_ms)
    successor.tick(TIMEOUT_MS // 2 + 100)
    assert state_of(successor).state is State.COMPLETE_ABORT


def test_unload_answers_every_waiting_request_not_coordinator() -> None:
    h = TxnHarness()
    h.auto_markers = False
    completing = started(h, "w")
    h.add(completing, transactional_id="w")
    nxt = h.pair(h.end(completing, True, transactional_id="w"))
    old = started(h)
    h.add(old)
    init = h.init()  # parked behind the fencing abort
    h.auto_persist = False
    h.add(started_pair := (old[0], old[1]), transactional_id="t")
    other = h.init("u")
    parked = h.add_offsets(nxt, transactional_id="w")  # waits for w's CompleteCommit
    h.handle(UnloadPartition(now_ms=h.now_ms))
    assert h.error(init) is ErrorCode.NOT_COORDINATOR
    assert h.error(parked) is ErrorCode.NOT_COORDINATOR
    assert h.error(other) is ErrorCode.NOT_COORDINATOR
    assert started_pair == old
    assert h.error(h.init("v")) is ErrorCode.NOT_COORDINATOR


def test_requests_before_load_get_load_in_progress() -> None:
    core = TransactionCoordinatorCore(fast_config(), validate=True)
    (response,) = core.handle(
        InitProducerIdRequested(
            now_ms=0,
            request_id=1,
            transactional_id="t",
            transaction_timeout_ms=1,
            new_producer_id=1,
        )
    )
    assert response == RespondInitProducerId(
        request_id=1, error=ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
    )


def test_idle_ids_expire_with_a_tombstone() -> None:
    h = TxnHarness(fast_config(transactional_id_expiration_ms=120_000))
    started(h, "t")
    h.tick(60_000)
    assert h.core.store.get("t") is not None
    h.tick(60_000)
    assert h.core.store.get("t") is None
    assert h.log[-1].value is None
    assert replay(h.log) == h.core.store
    assert h.core.statistics().expired_id_count == 1
    assert h.error(h.add((1001, 0))) is ErrorCode.INVALID_PRODUCER_ID_MAPPING
    assert h.pair(h.init()) == (h.next_producer_id, 0), "a fresh id after expiry"


def test_bounds_partitions_and_pending_writes() -> None:
    h = TxnHarness(fast_config(partitions_per_transaction_max=2, pending_writes_max=1))
    producer = started(h)
    assert h.error(h.add(producer, tp("a", 0), tp("a", 1), tp("a", 2))) is (
        ErrorCode.POLICY_VIOLATION
    )
    h.auto_persist = False
    h.add(producer, tp("a", 0))
    assert h.error(h.init("other")) is ErrorCode.THROTTLED


def test_list_and_describe() -> None:
    h = TxnHarness()
    producer = started(h, "t")
    started(h, "u")
    h.add(producer, tp("a", 0))
    rid = h.request(ListTransactionsRequested, states=(State.ONGOING,))
    listed = h.response(rid)
    assert isinstance(listed, RespondListTransactions)
    assert [(d.transactional_id, d.state) for d in listed.transactions] == [("t", State.ONGOING)]
    rid = h.request(DescribeTransactionsRequested, transactional_ids=("t", "nope"))
    described = h.response(rid)
    assert isinstance(described, RespondDescribeTransactions)
    first, missing = described.transactions
    assert (first.producer_id, first.partitions, first.timeout_ms) == (
        producer[0],
        (tp("a", 0),),
        TIMEOUT_MS,
    )
    assert first.start_timestamp_ms == h.now_ms
    assert missing.error is ErrorCode.TRANSACTIONAL_ID_NOT_FOUND


def test_the_record_codec_round_trips_and_refuses_garbage() -> None:
    meta = TransactionMetadata(
        1, 2, 1, 1, EpochBump.END, 5, State.PREPARE_COMMIT, (tp("a", 1),), 3, 4
    )
    record = TransactionRecord("t", meta)
    encoded = encode_record(record)
    assert decode_record(encoded) == record
    assert decode_record(encode_record(TransactionRecord("t", None))).value is None
    value = msgpack.unpackb(encoded.value)
    for broken in (
        EncodedRecord(b"\xc1", None),
        EncodedRecord(msgpack.packb([9, "t"]), None),
        EncodedRecord(encoded.key, msgpack.packb({**value, "v": 1})),
        EncodedRecord(encoded.key, msgpack.packb({**value, "extra": 1})),
        EncodedRecord(encoded.key, msgpack.packb({**value, "state": "Dead"})),
        EncodedRecord(encoded.key, msgpack.packb({**value, "producer_id": True})),
        EncodedRecord(encoded.key, msgpack.packb({**value, "partitions": [["b", 0], ["a", 0]]})),
    ):
        with pytest.raises(CorruptTxnRecordError):
            decode_record(broken)


def test_a_corrupt_partition_leaves_the_core_loading() -> None:
    core = TransactionCoordinatorCore(fast_config(), validate=True)
    from broker.transactions.txn_events import LoadPartition

    with pytest.raises(CorruptTxnRecordError):
        core.handle(
            LoadPartition(now_ms=0, coordinator_epoch=1, records=(EncodedRecord(b"x", b"y"),))
        )
    assert core.next_deadline_ms() is None


def test_end_txn_response_type() -> None:
    h = TxnHarness()
    producer = started(h)
    h.add(producer)
    assert isinstance(h.response(h.end(producer, True)), RespondEndTxn)
