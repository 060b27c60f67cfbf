"""Goal: the share coordinator core, driven through its events, keeps the rules of its module
docstring: acquisitions answer at once and never hand one offset to two members, an
acknowledgement is answered only once its write is replicated (all or nothing per partition),
members leave or time out with their records released, locks expire at a Tick, dead letters are
written (and retried after the backoff) before records are archived, group configs are
validated, and a new core loaded from what was persisted carries on where it stopped."""

from __future__ import annotations

import pytest

from broker.consumer_groups.actions import PersistRecords
from broker.consumer_groups.events import AppendFailed, LoadPartition, UnloadPartition
from broker.share_groups.coordinator import (
    RESET_EARLIEST,
    RESET_LATEST,
    ShareCoordinatorCore,
    StateDiverged,
)
from broker.share_groups.share_actions import RespondAcknowledge, WriteDeadLetters
from broker.share_groups.share_config import (
    AUTO_OFFSET_RESET,
    DEAD_LETTER_TOPIC,
    DELIVERY_COUNT_LIMIT,
    LOCK_DURATION,
    RELEASE_DELAY_MAX,
)
from broker.share_groups.share_events import (
    AcquireRequested,
    AlterConfigsRequested,
    DeadLettered,
    DeadLetterFailed,
)
from broker.share_groups.share_partition import (
    REASON_DELIVERY_LIMIT,
    REASON_REJECTED,
    AckRange,
    AckType,
    Acquired,
    DeadLetterJob,
    RecordState,
)
from wire.error_codes import ErrorCode

from .harness import BACKOFF_MS, CONFIG, GROUP, LOCK_MS, SESSION_MS, Shell, tp

A, R, X, W, G = AckType.ACCEPT, AckType.RELEASE, AckType.REJECT, AckType.RENEW, AckType.GAP
DLQ = "dlq"


def earliest(shell: Shell, **configs: object) -> Shell:
    response = shell.alter({AUTO_OFFSET_RESET: "earliest", **configs})
    assert response.error is ErrorCode.NONE, response
    return shell


def offsets_of(ranges: list[Acquired]) -> set[int]:
    return {o for r in ranges for o in range(r.first, r.last + 1)}


def window(shell: Shell, partition=None) -> dict[int, tuple[RecordState, int, str]]:
    p = shell.core.groups[GROUP].partitions[partition or tp()]
    return {
        o: (run.state, run.delivery_count, run.member_id)
        for run in p.runs
        for o in range(run.first, run.last + 1)
    }


def statistics(shell: Shell, partition=None):
    (stats,) = [s for s in shell.describe().partitions if s.topic_partition == (partition or tp())]
    return stats


# --- lifecycle ------------------------------------------------------------------------------------


def test_requests_before_the_load_are_refused_and_after_the_unload_too() -> None:
    core = ShareCoordinatorCore(CONFIG)
    request = AcquireRequested(request_id=1, now_ms=0, group_id=GROUP, member_id="m1",
                               topics=("t",), max_records=10, reads=())  # fmt: skip
    (refusal,) = core.handle(request)
    assert refusal.error is ErrorCode.COORDINATOR_LOAD_IN_PROGRESS
    assert core.handle(LoadPartition(now_ms=0, coordinator_epoch=1)) == []
    assert core.loaded
    core.handle(UnloadPartition(now_ms=1))
    (refusal,) = core.handle(request)
    assert refusal.error is ErrorCode.NOT_COORDINATOR


def test_the_reset_point_of_a_new_share_partition() -> None:
    shell = Shell()
    shell.produce(5)
    assert shell.core.read_position(GROUP, tp()) == RESET_LATEST
    assert shell.acquired("m1") == {}  # latest: starts at the end, nothing old handed out
    assert shell.core.read_position(GROUP, tp()) == 5
    shell.produce(3)
    assert shell.acquired("m1") == {tp(): [Acquired(5, 7, 1)]}

    other = earliest(Shell())
    other.produce(5)
    assert other.core.read_position(GROUP, tp()) == RESET_EARLIEST
    assert other.acquired("m1") == {tp(): [Acquired(0, 4, 1)]}


# --- acquisition ----------------------------------------------------------------------------------


def test_two_members_never_acquire_the_same_offset() -> None:
    shell = earliest(Shell())
    for size in (10, 10, 10):
        shell.produce(size)
    one = shell.acquired("m1", 15)[tp()]
    two = shell.acquired("m2", 15)[tp()]
    assert one == [Acquired(0, 14, 1)] and two == [Acquired(15, 29, 1)]
    assert shell.acquired("m3", 15) == {}
    assert statistics(shell).acquired == 30
    members = {m.member_id: m.acquired_records for m in shell.describe().members}
    assert members == {"m1": 15, "m2": 15, "m3": 0}


def test_a_new_partition_is_persisted_once_started() -> None:
    shell = earliest(Shell())
    shell.produce(5)
    response = shell.acquire("m1")
    assert response.error is ErrorCode.NONE and response.lock_duration_ms == LOCK_MS
    assert len(shell.pending) == 1  # the start offset is written, the acquisition answered now
    shell.persist_all()
    assert shell.acquired("m2") == {}
    assert not shell.pending  # acquisitions themselves are not persisted


def test_group_max_size() -> None:
    shell = earliest(Shell())
    shell.produce(5)
    for member in ("m1", "m2", "m3"):
        assert shell.acquire(member, 1).error is ErrorCode.NONE
    response = shell.acquire("m4")
    assert response.error is ErrorCode.GROUP_MAX_SIZE_REACHED
    assert "3 members" in response.error_message
    assert response.acquired == ()
    assert shell.acquire("m1", 1).error is ErrorCode.NONE  # members already in still acquire


# --- acknowledgement ------------------------------------------------------------------------------


def test_an_acknowledgement_is_answered_once_its_write_is_replicated() -> None:
    shell = earliest(Shell())
    shell.produce(10)
    shell.acquired("m1")
    shell.persist_all()
    request = shell.ack("m1", [AckRange(0, 4, A)])
    assert request not in shell.responses
    ((token, records),) = shell.pending.items()
    assert len(records) == 1
    second = shell.ack("m1", [AckRange(5, 9, A)])
    shell.persist(token + 1)  # a later write: not this request's
    assert request not in shell.responses
    assert shell.response(second).results == ((tp(), ErrorCode.NONE, ""),)
    shell.persist(token)
    assert shell.response(request).results == ((tp(), ErrorCode.NONE, ""),)
    assert statistics(shell).start_offset == 10


def test_an_acknowledgement_that_changes_nothing_is_answered_at_once() -> None:
    shell = earliest(Shell())
    shell.produce(10)
    shell.acquired("m1")
    shell.persist_all()
    renew = shell.ack("m1", [AckRange(0, 9, W)])
    assert shell.response(renew).results == ((tp(), ErrorCode.NONE, ""),)
    assert not shell.pending
    wrong = shell.ack("m2", [AckRange(0, 9, A)])
    assert shell.response(wrong).results[0][1] is ErrorCode.INVALID_RECORD_STATE


def test_invalid_record_state_is_per_partition() -> None:
    shell = earliest(Shell())
    shell.produce(5, tp("t", 0))
    shell.produce(5, tp("t", 1))
    got = shell.acquired("m1")
    assert set(got) == {tp("t", 0), tp("t", 1)}
    request = shell.ack(
        "m1",
        {
            tp("t", 0): [AckRange(0, 4, A)],
            tp("t", 1): [AckRange(0, 2, A), AckRange(3, 9, A)],  # 5..9 were never delivered
            tp("u", 0): [AckRange(0, 0, A)],
        },
    )
    shell.persist_all()
    results = {p: (error, message) for p, error, message in shell.response(request).results}
    assert results[tp("t", 0)] == (ErrorCode.NONE, "")
    error, message = results[tp("t", 1)]
    assert error is ErrorCode.INVALID_RECORD_STATE and "outside the in-flight window" in message
    assert results[tp("u", 0)][0] is ErrorCode.INVALID_RECORD_STATE
    assert statistics(shell, tp("t", 0)).start_offset == 5
    assert window(shell, tp("t", 1)) == {o: (RecordState.ACQUIRED, 1, "m1") for o in range(5)}


def test_overlapping_ranges_in_one_acknowledgement_are_refused() -> None:
    """Before the fix the second range met offsets the first had changed: AssertionError in the
    core (a client could make its coordinator fail and reload at will)."""
    shell = earliest(Shell())
    shell.produce(10)
    shell.acquired("m1")
    request = shell.ack("m1", [AckRange(0, 5, A), AckRange(4, 9, X)])
    ((_, error, message),) = shell.response(request).results
    assert error is ErrorCode.INVALID_RECORD_STATE and "twice" in message
    assert window(shell) == {o: (RecordState.ACQUIRED, 1, "m1") for o in range(10)}


def test_leaving_releases_the_members_records_and_wakes_fetches() -> None:
    shell = earliest(Shell())
    shell.produce(10)
    shell.acquired("m1", 6)
    shell.acquired("m2", 4)
    woken = shell.woken
    request = shell.ack("m1", [AckRange(0, 1, A)], leave=True)
    assert shell.woken == woken + 1
    shell.persist_all()
    assert shell.response(request).results == ((tp(), ErrorCode.NONE, ""),)
    assert [m.member_id for m in shell.describe().members] == ["m2"]
    assert shell.acquired("m3")[tp()] == [Acquired(2, 5, 2)]


def test_a_silent_member_is_removed_at_its_session_timeout() -> None:
    shell = earliest(Shell(), **{LOCK_DURATION: 10 * SESSION_MS})  # no lock expires here
    shell.produce(10)
    shell.acquired("m1", 5)
    shell.now_ms = 4_000
    shell.ack("m1", [])  # an acknowledgement (even empty) keeps the session alive
    shell.now_ms = 5_000
    shell.acquired("m2", 5)
    shell.persist_all()
    shell.tick(4_000 + SESSION_MS - 1)
    assert [m.member_id for m in shell.describe().members] == ["m1", "m2"]
    assert shell.core.next_deadline_ms() == 4_000 + SESSION_MS
    woken = shell.woken
    actions = shell.tick(4_000 + SESSION_MS)
    assert [m.member_id for m in shell.describe().members] == ["m2"]
    assert shell.woken == woken + 1
    assert any(isinstance(a, PersistRecords) for a in actions)  # the release is persisted
    assert window(shell) == {
        **{o: (RecordState.AVAILABLE, 1, "") for o in range(5)},
        **{o: (RecordState.ACQUIRED, 1, "m2") for o in range(5, 10)},
    }


def test_a_lock_expires_at_a_tick() -> None:
    shell = earliest(Shell())
    shell.produce(10)
    shell.now_ms = 100
    shell.acquired("m1")
    assert shell.core.next_deadline_ms() == 100 + LOCK_MS
    shell.tick(100 + LOCK_MS - 1)
    assert window(shell)[0][0] is RecordState.ACQUIRED
    woken = shell.woken
    actions = shell.tick(100 + LOCK_MS)
    assert any(isinstance(a, PersistRecords) for a in actions)
    assert shell.woken == woken + 1
    assert window(shell)[0] == (RecordState.AVAILABLE, 1, "")
    assert statistics(shell).lock_expired_total == 10
    # A late acknowledgement of what expired is refused.
    request = shell.ack("m1", [AckRange(0, 9, A)])
    ((_, error, message),) = shell.response(request).results
    assert error is ErrorCode.INVALID_RECORD_STATE and "lock expired" in message
    assert shell.acquired("m2")[tp()] == [Acquired(0, 9, 2)]


def test_a_release_delay_wakes_fetches_when_it_ends() -> None:
    shell = earliest(Shell())
    shell.produce(10)
    shell.acquired("m1")
    shell.now_ms = 50
    shell.ack("m1", [AckRange(0, 9, R, delay_ms=300)])
    shell.persist_all()
    assert shell.acquired("m2") == {}
    shell.tick(100)
    assert shell.core.next_deadline_ms() == 350
    woken = shell.woken
    shell.tick(350)
    assert shell.woken == woken + 1
    assert shell.acquired("m2")[tp()] == [Acquired(0, 9, 2)]


# --- dead letters ---------------------------------------------------------------------------------


def dlq_shell() -> Shell:
    shell = earliest(Shell(), **{DEAD_LETTER_TOPIC: DLQ})
    shell.produce(10)
    shell.acquired("m1")
    return shell


def test_a_rejected_record_is_dead_lettered_then_archived() -> None:
    shell = dlq_shell()
    request = shell.ack("m1", [AckRange(2, 4, X), AckRange(0, 1, A)])
    (write,) = shell.dead_letter_writes
    assert write == WriteDeadLetters(group_id=GROUP, topic_partition=tp(), dead_letter_topic=DLQ,
                                     job=DeadLetterJob(2, 4, 1, REASON_REJECTED))  # fmt: skip
    shell.persist_all()
    assert shell.response(request).results == ((tp(), ErrorCode.NONE, ""),)
    assert window(shell)[2] == (RecordState.DEAD_LETTERING, 1, "")
    assert statistics(shell).start_offset == 2
    actions = shell.handle(DeadLettered(now_ms=shell.now_ms, group_id=GROUP, topic_partition=tp(),
                                        first_offset=2, last_offset=4))  # fmt: skip
    assert [type(a) for a in actions] == [PersistRecords]
    stats = statistics(shell)
    assert (stats.start_offset, stats.archived_total, stats.dead_lettered_total) == (5, 3, 3)
    # What was persisted says so: a new core has them archived and asks for nothing.
    shell.persist_all()
    successor = Shell(records=tuple(shell.committed))
    assert successor.dead_letter_writes == []
    assert statistics(successor).start_offset == 5


def test_the_delivery_limit_dead_letters() -> None:
    shell = earliest(Shell(), **{DEAD_LETTER_TOPIC: DLQ, DELIVERY_COUNT_LIMIT: 2})
    shell.produce(3)
    shell.acquired("m1")
    shell.tick(LOCK_MS)
    assert shell.acquired("m1")[tp()] == [Acquired(0, 2, 2)]
    shell.tick(2 * LOCK_MS)
    (write,) = shell.dead_letter_writes
    assert write.job == DeadLetterJob(0, 2, 2, REASON_DELIVERY_LIMIT)
    assert shell.acquired("m2") == {}


def test_a_failed_dead_letter_write_is_retried_after_the_backoff() -> None:
    shell = dlq_shell()
    shell.ack("m1", [AckRange(0, 3, X)])
    (write,) = shell.dead_letter_writes
    shell.now_ms = 200
    failed = DeadLetterFailed(now_ms=200, group_id=GROUP, topic_partition=tp(), first_offset=0,
                              last_offset=3)  # fmt: skip
    assert shell.handle(failed) == []
    assert shell.core.next_deadline_ms() == 200 + BACKOFF_MS
    shell.tick(200 + BACKOFF_MS - 1)
    assert len(shell.dead_letter_writes) == 1
    shell.tick(200 + BACKOFF_MS)
    assert shell.dead_letter_writes[1:] == [write]
    shell.tick(200 + 3 * BACKOFF_MS)
    assert len(shell.dead_letter_writes) == 2  # retried once per failure
    assert window(shell)[0][0] is RecordState.DEAD_LETTERING


def test_removing_the_dead_letter_topic_archives_what_waited_for_it() -> None:
    shell = dlq_shell()
    shell.ack("m1", [AckRange(0, 3, X)])
    shell.persist_all()
    response = shell.alter({DEAD_LETTER_TOPIC: ""})
    assert response.error is ErrorCode.NONE and response.configs[DEAD_LETTER_TOPIC] == ""
    stats = statistics(shell)
    assert (stats.start_offset, stats.archived_total, stats.dead_lettered_total) == (4, 4, 0)
    successor = Shell(records=tuple(shell.committed))
    assert successor.dead_letter_writes == []
    assert statistics(successor).start_offset == 4


# --- configs and describe -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configs", "reset", "name"),
    [
        ({"share.no.such.config": 1}, (), "share.no.such.config"),
        ({LOCK_DURATION: 10}, (), LOCK_DURATION),
        ({LOCK_DURATION: "soon"}, (), LOCK_DURATION),
        ({DELIVERY_COUNT_LIMIT: 1}, (), DELIVERY_COUNT_LIMIT),
        ({AUTO_OFFSET_RESET: "middle"}, (), AUTO_OFFSET_RESET),
        ({DEAD_LETTER_TOPIC: 7}, (), DEAD_LETTER_TOPIC),
        ({DEAD_LETTER_TOPIC: DLQ}, ("share.bogus",), "share.bogus"),
    ],
)
def test_a_bad_config_is_refused_naming_it_and_nothing_changes(
    configs: dict, reset: tuple, name: str
) -> None:
    shell = Shell()
    shell.alter({DELIVERY_COUNT_LIMIT: 4})
    response = shell.alter({RELEASE_DELAY_MAX: 100, **configs}, reset)
    assert response.error is ErrorCode.INVALID_CONFIG
    assert name in response.error_message
    assert not shell.pending
    assert shell.core.group_config(GROUP).delivery_count_limit == 4
    assert shell.core.group_config(GROUP).release_delay_max_ms == CONFIG.release_delay_max_ms


def test_configs_are_answered_once_persisted_and_reset_to_defaults() -> None:
    shell = Shell()
    request = shell.request(
        AlterConfigsRequested,
        group_id=GROUP,
        configs={LOCK_DURATION: "2000", DELIVERY_COUNT_LIMIT: 4},
    )
    assert request not in shell.responses
    shell.persist_all()
    configs = shell.response(request).configs
    assert (configs[LOCK_DURATION], configs[DELIVERY_COUNT_LIMIT]) == (2000, 4)
    response = shell.alter({}, reset=(LOCK_DURATION,))
    assert response.configs[LOCK_DURATION] == CONFIG.record_lock_duration_ms
    assert response.configs[DELIVERY_COUNT_LIMIT] == 4
    assert Shell(records=tuple(shell.committed)).core.group_config(GROUP).delivery_count_limit == 4


def test_describe_counts() -> None:
    shell = earliest(Shell(), **{DEAD_LETTER_TOPIC: DLQ})
    assert shell.describe("nope").error is ErrorCode.GROUP_ID_NOT_FOUND
    shell.produce(20)
    shell.acquired("m1", 10)
    shell.acquired("m2", 6)
    shell.ack("m1", [AckRange(0, 1, R), AckRange(2, 4, A), AckRange(5, 5, X)])
    shell.persist_all()
    description = shell.describe()
    assert description.state == "Stable"
    assert description.configs[DEAD_LETTER_TOPIC] == DLQ
    (stats,) = description.partitions
    assert (stats.start_offset, stats.end_offset, stats.in_flight) == (0, 16, 16)
    assert (stats.available, stats.acquired, stats.acknowledged) == (2, 10, 3)
    assert (stats.archived_total, stats.dead_lettered_total) == (0, 0)
    assert {m.member_id: m.acquired_records for m in description.members} == {"m1": 4, "m2": 6}
    shell.handle(DeadLettered(now_ms=0, group_id=GROUP, topic_partition=tp(), first_offset=5,
                              last_offset=5))  # fmt: skip
    shell.ack("m1", [AckRange(6, 9, A)], leave=True)
    shell.ack("m2", [], leave=True)
    shell.persist_all()
    description = shell.describe()
    assert description.state == "Empty"
    (stats,) = description.partitions
    assert (stats.archived_total, stats.dead_lettered_total, stats.available) == (1, 1, 8)
    assert stats.redelivered_total == 0


# --- writes and failover --------------------------------------------------------------------------


def test_a_failed_write_raises_state_diverged() -> None:
    shell = earliest(Shell())
    shell.produce(10)
    shell.acquired("m1")
    shell.persist_all()
    shell.ack("m1", [AckRange(0, 4, A)])
    (token,) = shell.pending
    with pytest.raises(StateDiverged):
        shell.core.handle(AppendFailed(now_ms=0, token=token))


def test_unloading_answers_waiting_acknowledgements_not_coordinator() -> None:
    shell = earliest(Shell())
    shell.produce(10)
    shell.acquired("m1")
    request = shell.ack("m1", [AckRange(0, 4, A)])
    shell.handle(UnloadPartition(now_ms=0))
    response = shell.response(request)
    assert isinstance(response, RespondAcknowledge)
    assert response.error is ErrorCode.NOT_COORDINATOR


def test_a_new_core_resumes_from_what_was_persisted() -> None:
    shell = earliest(Shell(), **{DEAD_LETTER_TOPIC: DLQ})
    for size in (4, 4, 4, 4, 4):
        shell.produce(size)
    shell.acquired("m1", 12)  # 0..11
    shell.acquired("m2", 4)  # 12..15
    shell.ack("m1", [AckRange(0, 3, A), AckRange(8, 9, A), AckRange(4, 5, X)])
    shell.ack("m1", [AckRange(6, 7, R)])
    shell.acquired("m2", 1)  # 6 again (second delivery), held at the failover
    shell.persist_all()
    lost = shell.ack("m2", [AckRange(12, 15, A)])  # never replicated: lost
    assert lost not in shell.responses

    successor = Shell(records=tuple(shell.committed), logs=shell.logs, now_ms=shell.now_ms)
    # The dead-letter write still waiting is asked for again.
    assert [w.job for w in successor.dead_letter_writes] == [DeadLetterJob(4, 5, 1,
                                                             REASON_REJECTED)]  # fmt: skip
    assert window(successor) == {
        4: (RecordState.DEAD_LETTERING, 1, ""),
        5: (RecordState.DEAD_LETTERING, 1, ""),
        6: (RecordState.AVAILABLE, 1, ""),  # its second delivery, in flight, is not counted
        7: (RecordState.AVAILABLE, 1, ""),
        8: (RecordState.ACKNOWLEDGED, 1, ""),
        9: (RecordState.ACKNOWLEDGED, 1, ""),
        **{o: (RecordState.AVAILABLE, 0, "") for o in (10, 11, 12, 13, 14, 15)},
    }
    assert successor.describe().members == ()  # members are not persisted
    got = successor.acquired("m3")[tp()]
    acknowledged = set(range(4)) | {8, 9}
    assert not offsets_of(got) & acknowledged
    assert offsets_of(got) == set(range(6, 8)) | set(range(10, 20))
    assert got == [Acquired(6, 7, 2), Acquired(10, 19, 1)]


# --- found by these tests, fixed in coordinator.py -----------------------------------------------


def test_an_acknowledgement_to_an_unknown_group_creates_nothing() -> None:
    shell = Shell()
    request = shell.ack("m1", [AckRange(0, 0, A)])
    assert shell.response(request).results[0][1] is ErrorCode.INVALID_RECORD_STATE
    assert shell.core.group_ids() == []
    assert shell.describe().error is ErrorCode.GROUP_ID_NOT_FOUND


def test_failed_dead_letter_jobs_are_retried_without_overlap() -> None:
    shell = dlq_shell()
    shell.ack("m1", [AckRange(0, 4, X)])
    shell.ack("m1", [AckRange(5, 9, X)])  # the two DEAD_LETTERING runs coalesce into [0, 9]
    assert [w.job for w in shell.dead_letter_writes] == [
        DeadLetterJob(0, 4, 1, REASON_REJECTED),
        DeadLetterJob(5, 9, 1, REASON_REJECTED),
    ]
    for first, last in ((0, 4), (5, 9)):
        shell.handle(DeadLetterFailed(now_ms=0, group_id=GROUP, topic_partition=tp(),
                                      first_offset=first, last_offset=last))  # fmt: skip
    shell.tick(BACKOFF_MS)
    retried = [o for w in shell.dead_letter_writes[2:] for o in range(w.job.first, w.job.last + 1)]
    assert sorted(retried) == list(range(10))
