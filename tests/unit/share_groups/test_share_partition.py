"""Goal: a SharePartition keeps the KIP-932 queue rules of its module docstring: acquisition
(redeliveries first, `max_records`, the in-flight cap), locks and their expiry, every kind of
acknowledgement (all or nothing per request, with a reason), the delivery limit with and without
a dead-letter topic, SPSO moves, retention, a member leaving, and a replay of what the
coordinator persists giving back the same persisted view."""

from __future__ import annotations

import random

import pytest

from broker.share_groups.coordinator import _persisted_runs
from broker.share_groups.share_partition import (
    REASON_DELIVERY_LIMIT,
    REASON_REJECTED,
    AckRange,
    AckType,
    Acquired,
    BatchRun,
    Change,
    DeadLetterJob,
    Limits,
    RecordState,
    SharePartition,
)

LOCK_MS = 1_000
LIMITS = Limits(lock_duration_ms=LOCK_MS, delivery_count_limit=3, dead_letter=False,
                release_delay_max_ms=5_000, max_record_locks=1_000)  # fmt: skip
DLQ_LIMITS = Limits(lock_duration_ms=LOCK_MS, delivery_count_limit=3, dead_letter=True,
                    release_delay_max_ms=5_000, max_record_locks=1_000)  # fmt: skip

A, R, X, W, G = AckType.ACCEPT, AckType.RELEASE, AckType.REJECT, AckType.RENEW, AckType.GAP


def batches(*sizes: int, start: int = 0, timestamp_ms: int = -1) -> list[BatchRun]:
    """Contiguous batches of these sizes from `start`."""
    out = []
    for size in sizes:
        out.append(BatchRun(start, start + size - 1, timestamp_ms))
        start += size
    return out


def offsets(p: SharePartition) -> dict[int, tuple[RecordState, int, str]]:
    """Each offset of the window: (state, delivery count, holder)."""
    return {
        offset: (run.state, run.delivery_count, run.member_id)
        for run in p.runs
        for offset in range(run.first, run.last + 1)
    }


def ack(p: SharePartition, member: str, now_ms: int, *ranges: AckRange, limits: Limits = LIMITS):
    """Check then apply, as the coordinator does; the check must pass."""
    problem = p.check_acknowledgement(member, ranges)
    assert problem is None, problem
    outcome = p.acknowledge(member, ranges, now_ms, limits)
    p.validate()
    return outcome


def acquired_window(size: int = 10, member: str = "m1", now_ms: int = 0) -> SharePartition:
    p = SharePartition(0)
    assert p.acquire(member, now_ms, size, LIMITS, batches(size)) == [Acquired(0, size - 1, 1)]
    return p


# --- acquisition ----------------------------------------------------------------------------------


def test_acquire_hands_out_whole_batches_within_max_records() -> None:
    p = SharePartition(0)
    got = p.acquire("m1", 0, 10, LIMITS, batches(5, 5, 5))
    assert got == [Acquired(0, 9, 1)]
    assert (p.start_offset, p.end_offset) == (0, 10)
    assert offsets(p) == {o: (RecordState.ACQUIRED, 1, "m1") for o in range(10)}
    p.validate()


def test_max_records_splits_a_batch_between_members() -> None:
    """Module rule: a batch larger than what is left is split, each member keeping its range."""
    p = SharePartition(0)
    assert p.acquire("m1", 0, 7, LIMITS, batches(5, 5)) == [Acquired(0, 6, 1)]
    assert p.acquire("m2", 0, 100, LIMITS, batches(5, 5)) == [Acquired(7, 9, 1)]
    assert {o for o, (_, _, m) in offsets(p).items() if m == "m1"} == set(range(7))
    assert {o for o, (_, _, m) in offsets(p).items() if m == "m2"} == {7, 8, 9}
    p.validate()


def test_available_records_go_before_new_ones() -> None:
    p = acquired_window(10)
    ack(p, "m1", 10, AckRange(2, 4, R))
    got = p.acquire("m2", 20, 5, LIMITS, batches(10, 10))
    assert got == [Acquired(2, 4, 2), Acquired(10, 11, 1)]
    assert p.counters.redelivered == 3
    assert p.end_offset == 12


def test_batches_below_speo_are_skipped_and_a_hole_stops_acquisition() -> None:
    p = acquired_window(10)
    # A stale read from 0: the batches already in the window are skipped, the rest acquired.
    assert p.acquire("m2", 0, 100, LIMITS, batches(5, 5, 5)) == [Acquired(10, 14, 1)]
    # Batches not contiguous with SPEO (15): nothing, read again from SPEO.
    assert p.acquire("m2", 0, 100, LIMITS, [BatchRun(17, 20)]) == []
    assert p.end_offset == 15


def test_max_record_locks_caps_the_in_flight_window() -> None:
    limits = Limits(lock_duration_ms=LOCK_MS, delivery_count_limit=3, dead_letter=False,
                    max_record_locks=10)  # fmt: skip
    p = SharePartition(0)
    assert p.acquire("m1", 0, 500, limits, batches(100)) == [Acquired(0, 9, 1)]
    assert p.in_flight() == 10
    assert p.acquire("m2", 0, 500, limits, batches(100)) == []
    ack(p, "m1", 1, AckRange(0, 3, A), limits=limits)
    assert p.start_offset == 4
    assert p.acquire("m2", 2, 500, limits, batches(100)) == [Acquired(10, 13, 1)]
    assert p.in_flight() == 10
    # Acknowledged records past SPSO still count: SPSO is what frees room.
    ack(p, "m1", 3, AckRange(5, 9, A), limits=limits)
    assert p.start_offset == 4
    assert p.acquire("m2", 4, 500, limits, batches(100)) == []


# --- locks ----------------------------------------------------------------------------------------


def test_an_expired_lock_makes_records_available_keeping_their_count() -> None:
    p = acquired_window(10, now_ms=100)
    assert p.next_deadline_ms(100) == 100 + LOCK_MS
    outcome = p.expire_locks(100 + LOCK_MS - 1, LIMITS)
    assert outcome.changes == [] and not outcome.made_available
    assert p.count(RecordState.ACQUIRED) == 10
    outcome = p.expire_locks(100 + LOCK_MS, LIMITS)
    p.validate()
    assert outcome.made_available
    assert outcome.changes == [Change(0, 9, RecordState.AVAILABLE, 1)]
    assert offsets(p) == {o: (RecordState.AVAILABLE, 1, "") for o in range(10)}
    assert p.counters.lock_expired == 10
    assert p.acquire("m2", 2_000, 10, LIMITS) == [Acquired(0, 9, 2)]
    assert p.counters.redelivered == 10


def test_renew_extends_the_lock_without_persisting_anything() -> None:
    p = acquired_window(10)
    outcome = ack(p, "m1", 800, AckRange(0, 4, W))
    assert outcome.changes == []
    assert p.expire_locks(LOCK_MS, LIMITS).changes == [Change(5, 9, RecordState.AVAILABLE, 1)]
    assert offsets(p)[0] == (RecordState.ACQUIRED, 1, "m1")
    assert p.next_deadline_ms(LOCK_MS) == 800 + LOCK_MS
    p.expire_locks(800 + LOCK_MS, LIMITS)
    assert p.count(RecordState.AVAILABLE) == 10


# --- acknowledgements -----------------------------------------------------------------------------


def test_release_with_a_delay_is_not_acquirable_before_it_ends() -> None:
    p = acquired_window(10)
    outcome = ack(p, "m1", 100, AckRange(0, 9, R, delay_ms=500))
    assert outcome.made_available
    assert p.next_deadline_ms(100) == 600
    assert not p.has_available(599)
    assert p.acquire("m2", 599, 10, LIMITS) == []
    assert p.has_available(600)
    assert p.acquire("m2", 600, 10, LIMITS) == [Acquired(0, 9, 2)]


@pytest.mark.parametrize(("asked", "effective"), [(10_000_000, 5_000), (-7, 0), (0, 0)])
def test_the_release_delay_is_capped_by_release_delay_max(asked: int, effective: int) -> None:
    p = acquired_window(4)
    ack(p, "m1", 100, AckRange(0, 3, R, delay_ms=asked))
    assert p.acquire("m2", 100 + effective - 1, 10, LIMITS) == []
    assert p.acquire("m2", 100 + effective, 10, LIMITS) == [Acquired(0, 3, 2)]


def test_accept_is_done_and_spso_moves_past_leading_done_runs() -> None:
    p = acquired_window(10)
    outcome = ack(p, "m1", 1, AckRange(3, 5, A))
    assert outcome.changes == [Change(3, 5, RecordState.ACKNOWLEDGED, 1)]
    assert p.start_offset == 0  # 0..2 still held
    ack(p, "m1", 2, AckRange(0, 1, A), AckRange(2, 2, G))
    assert p.start_offset == 6
    assert offsets(p) == {o: (RecordState.ACQUIRED, 1, "m1") for o in range(6, 10)}
    ack(p, "m1", 3, AckRange(6, 9, A))
    assert (p.start_offset, p.end_offset, p.runs) == (10, 10, [])


def test_gap_archives_the_offsets() -> None:
    p = acquired_window(10)
    outcome = ack(p, "m1", 1, AckRange(5, 6, G))
    assert [(c.first, c.last, c.state) for c in outcome.changes] == [(5, 6, RecordState.ARCHIVED)]
    assert not outcome.dead_letters  # a gap is not a failure: never dead-lettered
    assert offsets(p)[5][0] is RecordState.ARCHIVED


def test_reject_without_a_dead_letter_topic_archives() -> None:
    p = acquired_window(10)
    outcome = ack(p, "m1", 1, AckRange(4, 6, X))
    assert outcome.changes == [Change(4, 6, RecordState.ARCHIVED, 1, REASON_REJECTED)]
    assert outcome.dead_letters == []
    assert p.counters.archived == 3
    ack(p, "m1", 1, AckRange(0, 3, A))
    assert p.start_offset == 7


def test_reject_with_a_dead_letter_topic_waits_for_the_dead_letter_write() -> None:
    p = acquired_window(10)
    outcome = ack(p, "m1", 1, AckRange(0, 3, X), limits=DLQ_LIMITS)
    assert outcome.dead_letters == [DeadLetterJob(0, 3, 1, REASON_REJECTED)]
    assert outcome.changes == [Change(0, 3, RecordState.DEAD_LETTERING, 1, REASON_REJECTED)]
    assert p.start_offset == 0  # not done until written
    assert p.dead_lettering() == [DeadLetterJob(0, 3, 1, REASON_REJECTED)]
    assert p.counters.archived == 0
    # Half of it written: that half is archived, the rest still waits.
    outcome = p.dead_lettered(0, 1)
    p.validate()
    assert outcome.changes == [Change(0, 1, RecordState.ARCHIVED, 1, REASON_REJECTED)]
    assert p.start_offset == 2
    assert (p.counters.dead_lettered, p.counters.archived) == (2, 2)
    # A report for offsets not waiting changes nothing (counters included).
    assert p.dead_lettered(5, 9).changes == []
    assert p.dead_lettered(0, 1).changes == []
    assert p.counters.dead_lettered == 2
    p.dead_lettered(2, 3)
    assert (p.start_offset, p.counters.dead_lettered, p.counters.archived) == (4, 4, 4)


@pytest.mark.parametrize("how", ["release", "expiry", "leave"])
def test_the_delivery_limit_archives(how: str) -> None:
    p = SharePartition(0)
    p.acquire("keep", 0, 1, LIMITS, batches(1))  # offset 0 stays held: the window stays put
    now = 0
    outcome = None
    for delivery in range(1, LIMITS.delivery_count_limit + 1):
        assert p.acquire("m1", now, 5, LIMITS, batches(1, 5)) == [Acquired(1, 5, delivery)]
        if how == "release":
            outcome = ack(p, "m1", now, AckRange(1, 5, R))
        elif how == "leave":
            outcome = p.release_member("m1", now, LIMITS)
        else:
            ack(p, "keep", now + LOCK_MS - 1, AckRange(0, 0, W))  # only m1's lock expires
            now += LOCK_MS
            outcome = p.expire_locks(now, LIMITS)
        p.validate()
    assert outcome is not None and not outcome.dead_letters
    assert offsets(p)[1] == (RecordState.ARCHIVED, 3, "")
    assert p.runs[1].reason == REASON_DELIVERY_LIMIT
    assert p.counters.archived == 5
    assert p.acquire("m1", now, 5, LIMITS) == []


def test_the_delivery_limit_with_a_dead_letter_topic_goes_through_dead_lettering() -> None:
    p = SharePartition(0)
    now = 0
    for delivery in range(1, 4):
        assert p.acquire("m1", now, 5, DLQ_LIMITS, batches(5)) == [Acquired(0, 4, delivery)]
        now += LOCK_MS
        outcome = p.expire_locks(now, DLQ_LIMITS)
    assert outcome.dead_letters == [DeadLetterJob(0, 4, 3, REASON_DELIVERY_LIMIT)]
    assert offsets(p)[0] == (RecordState.DEAD_LETTERING, 3, "")
    assert p.counters.lock_expired == 15
    assert p.acquire("m1", now, 5, DLQ_LIMITS) == []
    assert p.start_offset == 0
    p.dead_lettered(0, 4)
    assert (p.start_offset, p.counters.dead_lettered, p.counters.archived) == (5, 5, 5)


def test_archive_dead_lettering_archives_without_writing() -> None:
    p = acquired_window(10)
    ack(p, "m1", 1, AckRange(0, 4, X), limits=DLQ_LIMITS)
    outcome = p.archive_dead_lettering()
    assert outcome.changes == [Change(0, 4, RecordState.ARCHIVED, 1, REASON_REJECTED)]
    assert (p.start_offset, p.counters.archived, p.counters.dead_lettered) == (5, 5, 0)


@pytest.mark.parametrize(
    ("member", "ranges", "reason"),
    [
        ("m2", [AckRange(0, 4, A)], "not held by this member"),
        ("m1", [AckRange(0, 4, A), AckRange(6, 6, A)], "offsets [6, 6] are acquired"),
        ("m1", [AckRange(2, 3, A), AckRange(8, 9, A)], "offsets [8, 8] are available"),
        ("m1", [AckRange(0, 1, A), AckRange(10, 12, A)], "outside the in-flight window"),
        ("m1", [AckRange(0, 0, A), AckRange(3, 2, A)], "bad offset range [3, 2]"),
        ("m1", [AckRange(0, 3, A), AckRange(2, 4, X)], "acknowledged twice in one request"),
        ("m1", [AckRange(3, 4, X), AckRange(0, 3, A)], "acknowledged twice in one request"),
        ("m1", [AckRange(0, 4, W), AckRange(4, 4, A)], "acknowledged twice in one request"),
    ],
)
def test_an_acknowledgement_applies_all_or_nothing(
    member: str, ranges: list[AckRange], reason: str
) -> None:
    p = SharePartition(0)
    p.acquire("m1", 0, 6, LIMITS, batches(10))  # m1: 0..5
    p.acquire("m2", 0, 2, LIMITS, batches(10))  # m2: 6..7
    p.acquire("m1", 0, 2, LIMITS, batches(10))  # m1: 8..9
    ack(p, "m1", 1, AckRange(8, 8, R))  # 8: available again
    before = offsets(p)
    problem = p.check_acknowledgement(member, ranges)
    assert problem is not None and reason in problem, problem
    assert offsets(p) == before


def test_acknowledging_twice_and_after_expiry_are_refused() -> None:
    p = acquired_window(10)
    ack(p, "m1", 1, AckRange(4, 5, A))
    problem = p.check_acknowledgement("m1", [AckRange(4, 4, A)])
    assert problem is not None and "acknowledged" in problem
    ack(p, "m1", 1, AckRange(0, 3, A))
    problem = p.check_acknowledgement("m1", [AckRange(4, 4, A)])  # now below SPSO
    assert problem is not None and "outside the in-flight window [6, 10)" in problem
    p.expire_locks(LOCK_MS, LIMITS)
    problem = p.check_acknowledgement("m1", [AckRange(6, 9, A)])
    assert problem is not None and "available" in problem and "lock expired" in problem


# --- members, retention ---------------------------------------------------------------------------


def test_release_member_gives_back_only_that_members_records() -> None:
    p = SharePartition(0)
    p.acquire("m1", 0, 5, LIMITS, batches(10))
    p.acquire("m2", 0, 5, LIMITS, batches(10))
    outcome = p.release_member("m1", 10, LIMITS)
    p.validate()
    assert outcome.made_available
    assert outcome.changes == [Change(0, 4, RecordState.AVAILABLE, 1)]
    assert p.count(RecordState.ACQUIRED, "m2") == 5 and p.count(RecordState.ACQUIRED, "m1") == 0
    assert p.release_member("nobody", 10, LIMITS).changes == []


def test_move_start_forgets_what_retention_deleted() -> None:
    p = acquired_window(10)
    assert not p.move_start(0)
    assert p.move_start(4)
    p.validate()
    assert (p.start_offset, p.end_offset) == (4, 10)
    assert sorted(offsets(p)) == list(range(4, 10))
    # Retention past the window: empty, and new records come from the log start.
    assert p.move_start(25)
    p.validate()
    assert (p.start_offset, p.end_offset, p.runs) == (25, 25, [])
    assert p.acquire("m1", 0, 3, LIMITS, batches(10, start=20)) == [Acquired(25, 27, 1)]


def test_move_start_moves_past_done_runs_it_uncovers() -> None:
    p = acquired_window(10)
    ack(p, "m1", 1, AckRange(5, 7, A))
    p.move_start(3)
    assert p.start_offset == 3
    ack(p, "m1", 1, AckRange(3, 4, A))
    assert p.start_offset == 8
    assert not SharePartition().move_start(5)  # not started yet: nothing to move


def test_oldest_available_is_the_append_time_of_available_records() -> None:
    p = SharePartition(0)
    p.acquire("m1", 0, 4, LIMITS, batches(2, timestamp_ms=500) + batches(2, start=2))
    assert p.oldest_available_ms() == -1
    ack(p, "m1", 1, AckRange(0, 3, R))
    assert p.oldest_available_ms() == 500


# --- replay ---------------------------------------------------------------------------------------


def persisted_view(p: SharePartition) -> tuple[int, int, dict[int, tuple], list[int]]:
    """What the coordinator persists of `p`, offset by offset (runs may coalesce differently)."""
    view = {}
    for change in _persisted_runs(p):
        assert change.state in (
            RecordState.AVAILABLE,
            RecordState.ACKNOWLEDGED,
            RecordState.ARCHIVED,
            RecordState.DEAD_LETTERING,
        )
        for offset in range(change.first, change.last + 1):
            view[offset] = (change.state, change.delivery_count, change.reason)
    return p.start_offset, p.end_offset, view, p.counters.as_list()


def replayed(p: SharePartition) -> SharePartition:
    q = SharePartition()
    q.apply(p.start_offset, tuple(_persisted_runs(p)), p.counters.as_list())
    q.validate()
    return q


def test_a_replay_brings_acquired_records_back_available_with_the_delivery_not_counted() -> None:
    p = acquired_window(10)
    p.expire_locks(LOCK_MS, LIMITS)
    p.acquire("m2", LOCK_MS, 4, LIMITS)  # 0..3 second delivery, 4..9 available (1)
    p.acquire("m2", LOCK_MS, 100, LIMITS, batches(10, 5))  # 4..9 second delivery, 10..14 first
    ack(p, "m2", LOCK_MS, AckRange(12, 12, A), AckRange(13, 13, X, 0))
    q = replayed(p)
    assert offsets(q) == {
        **{o: (RecordState.AVAILABLE, 1, "") for o in range(10)},
        10: (RecordState.AVAILABLE, 0, ""),
        11: (RecordState.AVAILABLE, 0, ""),
        12: (RecordState.ACKNOWLEDGED, 1, ""),
        13: (RecordState.ARCHIVED, 1, ""),
        14: (RecordState.AVAILABLE, 0, ""),
    }
    assert q.runs[-2].reason == REASON_REJECTED
    assert persisted_view(q) == persisted_view(p)


def test_apply_fills_the_holes_between_changes_with_available_records() -> None:
    q = SharePartition()
    q.apply(5, [Change(3, 6, RecordState.ACKNOWLEDGED, 1), Change(9, 9, RecordState.ARCHIVED, 2)],
            [1, 2, 3, 4])  # fmt: skip
    q.validate()
    assert (q.start_offset, q.end_offset) == (7, 10)
    assert offsets(q) == {
        7: (RecordState.AVAILABLE, 0, ""),
        8: (RecordState.AVAILABLE, 0, ""),
        9: (RecordState.ARCHIVED, 2, ""),
    }
    assert q.counters.as_list() == [1, 2, 3, 4]


@pytest.mark.parametrize("seed", range(40))
def test_replaying_what_is_persisted_gives_the_same_persisted_view(seed: int) -> None:
    """Random operations; after each one the window is valid and a replay of its persisted
    snapshot persists the same view (and so on, through a second replay)."""
    rng = random.Random(seed)
    limits = DLQ_LIMITS if seed % 2 else LIMITS
    p = SharePartition(rng.randrange(0, 50))
    log_end = p.start_offset
    members = ["m1", "m2", "m3"]
    now = 0
    for _ in range(60):
        now += rng.randrange(0, 400)
        op = rng.random()
        if op < 0.35:
            new = [BatchRun(log_end, log_end + rng.randrange(0, 6))]
            log_end = new[-1].last + 1
            p.acquire(rng.choice(members), now, rng.randrange(1, 12), limits, new)
        elif op < 0.75:
            member = rng.choice(members)
            held = [run for run in p.runs if run.member_id == member]
            if held:
                run = rng.choice(held)
                first = rng.randrange(run.first, run.last + 1)
                last = rng.randrange(first, run.last + 1)
                ack_type = rng.choice([A, A, R, X, W, G])
                delay = rng.randrange(0, 1_000) if ack_type is R else 0
                ack(p, member, now, AckRange(first, last, ack_type, delay), limits=limits)
        elif op < 0.85:
            p.expire_locks(now, limits)
        elif op < 0.9:
            p.release_member(rng.choice(members), now, limits)
        elif op < 0.95:
            jobs = p.dead_lettering()
            if jobs:
                job = rng.choice(jobs)
                p.dead_lettered(job.first, rng.randrange(job.first, job.last + 1))
        else:
            p.move_start(p.start_offset + rng.randrange(0, 3))
            log_end = max(log_end, p.end_offset)
        p.validate()
        for run in p.runs:
            assert run.delivery_count <= limits.delivery_count_limit, run
        q = replayed(p)
        assert persisted_view(q) == persisted_view(p), f"seed {seed}"
        assert persisted_view(replayed(q)) == persisted_view(q), f"seed {seed}"
        assert q.count(RecordState.ACQUIRED) == 0
