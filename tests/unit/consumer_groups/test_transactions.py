"""Goal: transactional offset commits (KIP-98/KIP-447) in the group core.

A TxnOffsetCommit's offsets are written in the producer's transactional batch and stay pending
(invisible to OffsetFetch, UNSTABLE_OFFSET_COMMIT with require_stable) until the transaction's
marker, which goes through the core too: COMMIT makes them the group's committed offsets, ABORT
drops them. A replay of the partition (records, transactional records and markers in log order)
rebuilds exactly the live store, so a new coordinator after failover agrees.
"""

from __future__ import annotations

from broker.consumer_groups.actions import RespondTxnMarker, RespondTxnOffsetCommit
from broker.consumer_groups.events import (
    DeleteGroupsRequested,
    DescribeGroupsRequested,
    OffsetFetchRequested,
)
from broker.consumer_groups.group import GroupState
from broker.consumer_groups.offsets import (
    CorruptGroupRecordError,
    EncodedRecord,
    GroupMetadataRecord,
    MarkerRecord,
    OffsetCommitRecord,
    OffsetCommitValue,
    encode_record,
    replay,
)
from wire.error_codes import ErrorCode

from .harness import Harness, fast_config, form_group, tp

PID = 7
P0 = tp("t", 0)
P1 = tp("t", 1)


def fetch(h: Harness, *, require_stable: bool = False, group_id: str = "g") -> dict:
    rid = h.request(
        OffsetFetchRequested,
        group_id=group_id,
        partitions=(P0, P1),
        require_stable=require_stable,
    )
    return {o.topic_partition: (o.offset, o.error) for o in h.response(rid).offsets}


def committed(h: Harness, group_id: str = "g") -> dict:
    return {p: v.offset for p, v in h.core._state.store.offsets_of(group_id).items()}


def assert_replay_agrees(h: Harness) -> None:
    assert replay(h.log) == h.core._state.store


def test_pending_offsets_are_invisible_until_the_commit_marker() -> None:
    h = Harness()
    h.commit({P0: 5})
    rid = h.txn_commit({P0: 10, P1: 20}, producer_id=PID)
    answer = h.response(rid)
    assert isinstance(answer, RespondTxnOffsetCommit)
    assert [(r.topic_partition, r.error) for r in answer.partitions] == [
        (P0, ErrorCode.NONE),
        (P1, ErrorCode.NONE),
    ]
    # Written, in the producer's transaction, and pending: the last committed value is read.
    assert [e.producer_id for e in h.log[-2:]] == [PID, PID]
    assert fetch(h) == {P0: (5, ErrorCode.NONE), P1: (-1, ErrorCode.NONE)}
    assert h.core.statistics().pending_txn_offset_count == 2
    assert h.core.statistics().offset_count == 1
    marker = h.response(h.marker(PID, commit=True))
    assert marker == RespondTxnMarker(request_id=marker.request_id, error=ErrorCode.NONE)
    assert fetch(h) == {P0: (10, ErrorCode.NONE), P1: (20, ErrorCode.NONE)}
    assert h.core.statistics().pending_txn_offset_count == 0
    assert_replay_agrees(h)


def test_abort_drops_the_pending_offsets() -> None:
    h = Harness()
    h.commit({P0: 5})
    h.txn_commit({P0: 10, P1: 20}, producer_id=PID)
    assert h.response(h.marker(PID, commit=False)).error is ErrorCode.NONE
    assert fetch(h, require_stable=True) == {P0: (5, ErrorCode.NONE), P1: (-1, ErrorCode.NONE)}
    assert h.core._state.store.pending == {}
    assert_replay_agrees(h)


def test_require_stable_answers_unstable_while_a_transaction_is_open() -> None:
    h = Harness()
    h.commit({P0: 5, P1: 6})
    h.auto_persist = False
    h.txn_commit({P0: 10}, producer_id=PID)
    # Still being written: already unstable (its outcome is not known yet).
    assert fetch(h, require_stable=True)[P0] == (-1, ErrorCode.UNSTABLE_OFFSET_COMMIT)
    h.persist_all()
    assert fetch(h, require_stable=True) == {
        P0: (-1, ErrorCode.UNSTABLE_OFFSET_COMMIT),
        P1: (6, ErrorCode.NONE),
    }
    assert fetch(h) == {P0: (5, ErrorCode.NONE), P1: (6, ErrorCode.NONE)}
    h.marker(PID, commit=True)
    h.persist_all()
    assert fetch(h, require_stable=True) == {P0: (10, ErrorCode.NONE), P1: (6, ErrorCode.NONE)}


def test_a_marker_with_nothing_pending_is_written_and_answered() -> None:
    h = Harness()
    rid = h.marker(PID, commit=True, producer_epoch=3, coordinator_epoch=2)
    assert h.response(rid).error is ErrorCode.NONE
    assert h.log[-1].producer_id == PID and h.log[-1].commit
    assert committed(h) == {}
    assert_replay_agrees(h)


def test_a_failed_marker_write_leaves_the_offsets_pending_for_the_retry() -> None:
    h = Harness()
    h.txn_commit({P0: 10}, producer_id=PID)
    h.auto_persist = False
    rid = h.marker(PID, commit=True)
    h.fail_next(ErrorCode.NOT_COORDINATOR)
    assert h.response(rid).error is ErrorCode.NOT_COORDINATOR
    assert fetch(h, require_stable=True)[P0] == (-1, ErrorCode.UNSTABLE_OFFSET_COMMIT)
    h.auto_persist = True
    assert h.response(h.marker(PID, commit=True)).error is ErrorCode.NONE
    assert committed(h) == {P0: 10}
    assert_replay_agrees(h)


def test_a_failed_txn_commit_write_leaves_nothing_pending() -> None:
    h = Harness()
    h.auto_persist = False
    rid = h.txn_commit({P0: 10}, producer_id=PID)
    h.fail_next()
    assert [r.error for r in h.response(rid).partitions] == [ErrorCode.COORDINATOR_NOT_AVAILABLE]
    assert fetch(h, require_stable=True)[P0] == (-1, ErrorCode.NONE)


def test_commit_replaces_earlier_commits_but_not_a_later_plain_one() -> None:
    """Kafka's rule: at the COMMIT marker, the later write in the log wins. A plain commit
    written after the transactional one (acknowledged to its client) stands."""
    h = Harness()
    h.commit({P0: 1, P1: 1})
    h.txn_commit({P0: 10, P1: 20}, producer_id=PID)
    h.commit({P1: 2})
    h.marker(PID, commit=True)
    assert committed(h) == {P0: 10, P1: 2}
    assert_replay_agrees(h)


def test_two_producers_and_two_groups_are_independent() -> None:
    h = Harness()
    h.txn_commit({P0: 10}, producer_id=1)
    h.txn_commit({P0: 30}, producer_id=2, group_id="other")
    h.txn_commit({P1: 21}, producer_id=1, group_id="other")
    h.marker(2, commit=False)
    assert committed(h, "other") == {}
    h.marker(1, commit=True)
    assert committed(h) == {P0: 10}
    assert committed(h, "other") == {P1: 21}
    assert_replay_agrees(h)


def test_member_and_generation_are_checked_as_for_offset_commit() -> None:
    h = Harness()
    generation, (member,) = form_group(h, 1)

    def error(**fields: object) -> ErrorCode:
        answer = h.response(h.txn_commit({P0: 1}, producer_id=PID, **fields))
        return answer.error if answer.error is not ErrorCode.NONE else answer.partitions[0].error

    assert error(member_id=member, generation=generation) is ErrorCode.NONE
    assert error(member_id=member, generation=generation - 1) is ErrorCode.ILLEGAL_GENERATION
    assert error(member_id="nobody", generation=generation) is ErrorCode.UNKNOWN_MEMBER_ID
    assert error(member_id=member, generation=generation, instance_id="i") is (
        ErrorCode.FENCED_INSTANCE_ID
    )
    assert error(member_id="x", generation=1, group_id="new") is ErrorCode.UNKNOWN_MEMBER_ID
    # A producer outside the group (generation -1, member ""): allowed on an active group,
    # unlike a plain commit from outside (KIP-447 keeps older producers working).
    assert error() is ErrorCode.NONE
    assert h.response(h.commit({P0: 1})).error is ErrorCode.GROUP_NOT_EMPTY


def test_a_txn_commit_creates_an_unknown_group_empty() -> None:
    h = Harness()
    h.txn_commit({P0: 4}, producer_id=PID, group_id="fresh")
    assert h.core._state.groups["fresh"].state is GroupState.EMPTY
    h.marker(PID, commit=True)
    assert committed(h, "fresh") == {P0: 4}


def test_producer_epochs_fence_zombies_and_wait_for_the_older_transaction() -> None:
    h = Harness()
    h.txn_commit({P0: 10}, producer_id=PID, producer_epoch=1)
    newer = h.response(h.txn_commit({P0: 11}, producer_id=PID, producer_epoch=2))
    assert newer.error is ErrorCode.CONCURRENT_TRANSACTIONS
    h.marker(PID, commit=True, producer_epoch=2)  # the KIP-890 bump at the transaction's end
    zombie = h.response(h.txn_commit({P0: 1}, producer_id=PID, producer_epoch=1))
    assert zombie.error is ErrorCode.INVALID_PRODUCER_EPOCH
    stale_marker = h.response(h.marker(PID, commit=False, producer_epoch=1))
    assert stale_marker.error is ErrorCode.INVALID_PRODUCER_EPOCH
    assert h.response(h.txn_commit({P0: 12}, producer_id=PID, producer_epoch=2)).error is (
        ErrorCode.NONE
    )
    assert committed(h) == {P0: 10}
    assert_replay_agrees(h)


def test_replay_ignores_writes_of_an_older_epoch_as_the_producer_state_does() -> None:
    h = Harness()
    h.txn_commit({P0: 10}, producer_id=PID, producer_epoch=5)
    h.marker(PID, commit=True, producer_epoch=5)
    # A zombie's batch that reached the log anyway (a race around the leader's check), and its
    # own marker: both ignored, as the partition's producer state ignores them.
    zombie = encode_record(OffsetCommitRecord("g", P0, OffsetCommitValue(99, -1, "", 0)))
    late = [EncodedRecord(zombie.key, zombie.value, PID, 4), MarkerRecord(PID, 4, True)]
    assert replay([*h.log, *late]) == h.core._state.store


def test_a_transactional_batch_of_anything_but_offsets_is_corrupt() -> None:
    encoded = encode_record(GroupMetadataRecord("g", None))
    try:
        replay([EncodedRecord(encoded.key, encoded.value, PID, 0)])
    except CorruptGroupRecordError:
        pass
    else:
        raise AssertionError("a transactional group metadata record was accepted")


def test_replay_equality_with_interleaved_plain_commits_and_markers() -> None:
    h = Harness()
    h.auto_persist = False
    h.commit({P0: 1})
    h.txn_commit({P0: 2, P1: 2}, producer_id=1)
    h.txn_commit({P1: 3}, producer_id=2)
    h.commit({P1: 4}, group_id="s")
    h.marker(1, commit=True)
    h.commit({P0: 5})
    h.txn_commit({P0: 6}, producer_id=3, group_id="s")
    h.marker(2, commit=False)
    for _ in range(len(h.pending)):
        h.persist_next()
        assert_replay_agrees(h)
    assert committed(h) == {P0: 5, P1: 2}
    assert committed(h, "s") == {P1: 4}
    assert set(h.core._state.store.pending) == {3}


def test_failover_keeps_pending_offsets_until_their_marker() -> None:
    h = Harness()
    h.commit({P0: 1})
    h.txn_commit({P0: 2}, producer_id=1)
    h.txn_commit({P1: 3}, producer_id=2)
    h.marker(2, commit=True)
    successor = Harness(records=tuple(h.log), epoch=2)
    assert successor.core._state.store == h.core._state.store
    assert fetch(successor, require_stable=True)[P0] == (-1, ErrorCode.UNSTABLE_OFFSET_COMMIT)
    assert fetch(successor) == {P0: (1, ErrorCode.NONE), P1: (3, ErrorCode.NONE)}
    # The transaction coordinator finishes the prepared transaction on the new coordinator.
    successor.marker(1, commit=True)
    assert fetch(successor, require_stable=True) == {
        P0: (2, ErrorCode.NONE),
        P1: (3, ErrorCode.NONE),
    }
    assert_replay_agrees(successor)


def test_delete_is_refused_while_a_transaction_has_offsets_in_the_group() -> None:
    h = Harness()
    h.txn_commit({P0: 2}, producer_id=PID)
    result = h.response(h.request(DeleteGroupsRequested, group_ids=("g",))).groups[0]
    assert result.error is ErrorCode.GROUP_NOT_EMPTY
    assert str(PID) in result.message and "transaction" in result.message
    h.marker(PID, commit=False)
    result = h.response(h.request(DeleteGroupsRequested, group_ids=("g",))).groups[0]
    assert result.error is ErrorCode.NONE
    assert "g" not in h.core._state.groups
    assert_replay_agrees(h)


def test_retention_never_expires_pending_offsets_nor_their_group() -> None:
    config = fast_config(offsets_retention_ms=1_000, offsets_retention_check_interval_ms=1_000)
    h = Harness(config)
    h.commit({P0: 1, P1: 1})
    h.txn_commit({P0: 2}, producer_id=PID)
    h.tick(10_000)
    # P1 expired; P0 is in the transaction, and the group stays.
    assert committed(h) == {P0: 1}
    assert "g" in h.core._state.groups
    h.marker(PID, commit=True)
    assert committed(h) == {P0: 2}
    h.tick(10_000)
    assert "g" not in h.core._state.groups
    assert_replay_agrees(h)


def test_describe_shows_committed_offsets_only() -> None:
    h = Harness()
    h.commit({P0: 1})
    h.txn_commit({P0: 2, P1: 2}, producer_id=PID)
    description = h.response(h.request(DescribeGroupsRequested, group_ids=("g",))).groups[0]
    assert [(p, v.offset) for p, v in description.offsets] == [(P0, 1)]


def test_delete_waits_for_a_marker_in_flight_after_its_offsets_failed() -> None:
    """Found by the stateful test: the transactional write fails while the marker naming the
    group is in flight; the group holds nothing, but must not vanish under the marker."""
    h = Harness()
    h.auto_persist = False
    h.txn_commit({P0: 2}, producer_id=PID)
    marker = h.marker(PID, commit=False)
    h.fail_next()
    result = h.response(h.request(DeleteGroupsRequested, group_ids=("g",))).groups[0]
    assert result.error is ErrorCode.GROUP_NOT_EMPTY
    h.persist_next()
    assert h.response(marker).error is ErrorCode.NONE
    result = h.response(h.request(DeleteGroupsRequested, group_ids=("g",))).groups[0]
    assert result.error is ErrorCode.NONE
