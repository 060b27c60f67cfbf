"""SharePartition: one share group's view of one topic partition, as a queue (pure, no I/O).

The records between the share-partition start offset (SPSO, `start_offset`) and end offset
(SPEO, `end_offset`) are in flight; everything below SPSO is done (acknowledged or archived) and
everything from SPEO on has never been handed out. The window is a list of `Run`s, contiguous
from SPSO to SPEO, each a range of offsets in one state:

    AVAILABLE       may be acquired (after `not_before_ms`, for a release with a delay)
    ACQUIRED        held by `member_id` until `deadline_ms` (its lock)
    ACKNOWLEDGED    accepted: done
    DEAD_LETTERING  rejected or out of deliveries, being written to the dead-letter topic
    ARCHIVED        done without being accepted (rejected, out of deliveries, a gap)

Rules:
- Acquisition hands out AVAILABLE runs first (redeliveries), then new records from SPEO, at most
  `max_records` (a batch larger than what is left is split: its records go to several members,
  each receiving the whole batch and keeping its range), never more than `max_record_locks`
  offsets in flight. Each acquisition counts one delivery.
- An acknowledgement is all or nothing per partition: every offset it names must be ACQUIRED by
  the member, or none of it applies (INVALID_RECORD_STATE).
- A record released, or whose lock expires, with `delivery_count >= limit` is archived instead of
  made available; with a dead-letter topic it goes through DEAD_LETTERING first, and is ARCHIVED
  only once the dead-letter write is acknowledged (`dead_lettered`). So a record is never both
  gone from the queue and absent from the dead-letter topic.
- SPSO moves up past leading ACKNOWLEDGED and ARCHIVED runs; a log start offset past SPSO (the
  records were deleted by retention) moves it too.
- What must survive a failover is returned as `Change`s (ranges in a persisted state:
  AVAILABLE with its delivery count, ACKNOWLEDGED, DEAD_LETTERING with its reason, ARCHIVED);
  acquisitions and renewals are not persisted (Kafka's choice: a delivery in flight when the
  coordinator fails over is not counted, and its records come back AVAILABLE).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import itertools
from collections.abc import Iterable, Iterator
from typing import Final

# Reasons a record was dead-lettered (the `dlq.reason` header).
REASON_REJECTED: Final = "rejected"
REASON_DELIVERY_LIMIT: Final = "delivery-limit"


class RecordState(enum.IntEnum):
    """A record's state; the values of the persisted ones are Kafka's (0, 2, 4)."""

    AVAILABLE = 0
    ACQUIRED = 1
    ACKNOWLEDGED = 2
    ARCHIVED = 4
    DEAD_LETTERING = 5


# States a persisted change may carry (ACQUIRED is never persisted).
PERSISTED_STATES: Final = frozenset(
    {
        RecordState.AVAILABLE,
        RecordState.ACKNOWLEDGED,
        RecordState.ARCHIVED,
        RecordState.DEAD_LETTERING,
    }
)
DONE_STATES: Final = frozenset({RecordState.ACKNOWLEDGED, RecordState.ARCHIVED})


class AckType(enum.IntEnum):
    """What a consumer says about records (the wire's ack types, wire/codec.py)."""

    GAP = 0
    ACCEPT = 1
    RELEASE = 2
    REJECT = 3
    RENEW = 4


@dataclasses.dataclass(slots=True)
class Run:
    """Offsets [first, last] in one state. `timestamp_ms`: append time of the batch they came
    from (-1: unknown, after a reload), for the age of the oldest available record."""

    first: int
    last: int
    state: RecordState
    delivery_count: int
    member_id: str = ""
    deadline_ms: int = 0  # ACQUIRED: the lock's expiry; AVAILABLE: not before this
    timestamp_ms: int = -1
    reason: str = ""  # DEAD_LETTERING / ARCHIVED: why

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclasses.dataclass(frozen=True, slots=True)
class BatchRun:
    """One batch of the log, as the shell read it: offsets [first, last], its append time."""

    first: int
    last: int
    timestamp_ms: int = -1


@dataclasses.dataclass(frozen=True, slots=True)
class Acquired:
    first: int
    last: int
    delivery_count: int


@dataclasses.dataclass(frozen=True, slots=True)
class AckRange:
    first: int
    last: int
    ack_type: AckType
    delay_ms: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """A persisted state of offsets [first, last] (what a replay applies)."""

    first: int
    last: int
    state: RecordState
    delivery_count: int
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterJob:
    """Offsets [first, last] to write to the dead-letter topic before they are archived."""

    first: int
    last: int
    delivery_count: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The group's configs a partition needs for one operation."""

    lock_duration_ms: int
    delivery_count_limit: int
    dead_letter: bool  # whether archived-by-failure records go to a dead-letter topic first
    release_delay_max_ms: int = 0
    max_record_locks: int = 20_000


@dataclasses.dataclass(slots=True)
class Counters:
    """Totals since the partition was created (persisted with every update)."""

    archived: int = 0
    dead_lettered: int = 0
    redelivered: int = 0
    lock_expired: int = 0

    def as_list(self) -> list[int]:
        return [self.archived, self.dead_lettered, self.redelivered, self.lock_expired]

    @classmethod
    def of(cls, values: Iterable[int]) -> Counters:
        return cls(*values)


@dataclasses.dataclass(slots=True)
class Outcome:
    """What an operation changed: to persist, and records newly in DEAD_LETTERING."""

    changes: list[Change] = dataclasses.field(default_factory=list)
    dead_letters: list[DeadLetterJob] = dataclasses.field(default_factory=list)
    made_available: bool = False


class SharePartition:
    """The in-flight window of one share partition. See the module rules."""

    def __init__(self, start_offset: int = -1) -> None:
        self.start_offset = start_offset
        self.end_offset = start_offset
        self.runs: list[Run] = []
        self.counters = Counters()

    @property
    def initialized(self) -> bool:
        return self.start_offset >= 0

    def initialize(self, offset: int) -> None:
        """Start the queue at `offset` (the reset point of a new share partition)."""
        assert not self.initialized and offset >= 0
        self.start_offset = self.end_offset = offset

    # --- queries ----------------------------------------------------------------------------------

    def in_flight(self) -> int:
        return self.end_offset - self.start_offset if self.initialized else 0

    def count(self, state: RecordState, member_id: str | None = None) -> int:
        return sum(
            run.size
            for run in self.runs
            if run.state is state and (member_id is None or run.member_id == member_id)
        )

    def oldest_available_ms(self) -> int:
        """Append time of the oldest AVAILABLE record in the window (-1: none known)."""
        times = [
            run.timestamp_ms
            for run in self.runs
            if run.state is RecordState.AVAILABLE and run.timestamp_ms >= 0
        ]
        return min(times, default=-1)

    def next_deadline_ms(self, now_ms: int) -> int | None:
        """The next lock expiry, or end of a release delay after `now_ms` (None: none)."""
        deadlines = [
            run.deadline_ms
            for run in self.runs
            if run.state is RecordState.ACQUIRED
            or (run.state is RecordState.AVAILABLE and run.deadline_ms > now_ms)
        ]
        return min(deadlines, default=None)

    def dead_lettering(self) -> list[DeadLetterJob]:
        """Every run waiting for its dead-letter write (re-requested after a reload)."""
        return [
            DeadLetterJob(run.first, run.last, run.delivery_count, run.reason)
            for run in self.runs
            if run.state is RecordState.DEAD_LETTERING
        ]

    def has_available(self, now_ms: int) -> bool:
        return any(
            run.state is RecordState.AVAILABLE and run.deadline_ms <= now_ms for run in self.runs
        )

    # --- acquisition ------------------------------------------------------------------------------

    def acquire(
        self,
        member_id: str,
        now_ms: int,
        max_records: int,
        limits: Limits,
        batches: Iterable[BatchRun] = (),
    ) -> list[Acquired]:
        """Hand up to `max_records` records to `member_id`: AVAILABLE ones first, then the new
        `batches` read from the log at SPEO (those below SPEO are skipped; a gap stops)."""
        assert self.initialized
        deadline = now_ms + limits.lock_duration_ms
        acquired: list[Acquired] = []
        remaining = max_records
        for run in list(self.runs):
            if remaining <= 0:
                break
            if run.state is not RecordState.AVAILABLE or run.deadline_ms > now_ms:
                continue
            if run.size > remaining:
                self._split(run.first + remaining)
            run.state = RecordState.ACQUIRED
            run.member_id = member_id
            run.deadline_ms = deadline
            run.delivery_count += 1
            if run.delivery_count > 1:
                self.counters.redelivered += run.size
            acquired.append(Acquired(run.first, run.last, run.delivery_count))
            remaining -= run.size
        for batch in batches:
            if remaining <= 0 or self.in_flight() >= limits.max_record_locks:
                break
            if batch.last < self.end_offset:
                continue
            if batch.first > self.end_offset:
                break  # not contiguous with the window: read again from SPEO
            first = self.end_offset
            # Split the batch at `max_records` and at the in-flight cap (module rules).
            last = min(
                batch.last,
                first + remaining - 1,
                self.start_offset + limits.max_record_locks - 1,
            )
            self.runs.append(
                Run(first, last, RecordState.ACQUIRED, 1, member_id, deadline, batch.timestamp_ms)
            )
            self.end_offset = last + 1
            acquired.append(Acquired(first, last, 1))
            remaining -= last - first + 1
        self._coalesce()
        return _merge_acquired(acquired)

    # --- acknowledgement --------------------------------------------------------------------------

    def check_acknowledgement(self, member_id: str, ranges: Iterable[AckRange]) -> str | None:
        """Why these acknowledgements cannot apply (None: they all can)."""
        ranges = list(ranges)
        for ack in ranges:
            if ack.first > ack.last or ack.first < 0:
                return f"bad offset range [{ack.first}, {ack.last}]"
        # Ranges that overlap would have the second apply to what the first changed.
        ordered = sorted(ranges, key=lambda ack: ack.first)
        for previous, ack in itertools.pairwise(ordered):
            if ack.first <= previous.last:
                return (
                    f"offsets [{ack.first}, {min(ack.last, previous.last)}] are acknowledged "
                    "twice in one request"
                )
        for ack in ranges:
            if ack.first < self.start_offset or ack.last >= self.end_offset:
                return (
                    f"offsets [{ack.first}, {ack.last}] are outside the in-flight window "
                    f"[{self.start_offset}, {self.end_offset})"
                )
            for run in self._runs_over(ack.first, ack.last):
                if run.state is not RecordState.ACQUIRED or run.member_id != member_id:
                    return (
                        f"offsets [{max(run.first, ack.first)}, {min(run.last, ack.last)}] are "
                        f"{run.state.name.lower()}, not held by this member (its lock expired, "
                        "or they were acknowledged already)"
                    )
        return None

    def acknowledge(
        self, member_id: str, ranges: Iterable[AckRange], now_ms: int, limits: Limits
    ) -> Outcome:
        """Apply acknowledgements already checked by `check_acknowledgement`."""
        outcome = Outcome()
        for ack in ranges:
            for run in self._isolate(ack.first, ack.last):
                assert run.state is RecordState.ACQUIRED and run.member_id == member_id
                if ack.ack_type is AckType.ACCEPT:
                    self._set(run, RecordState.ACKNOWLEDGED, outcome)
                elif ack.ack_type is AckType.RELEASE:
                    delay = min(max(ack.delay_ms, 0), limits.release_delay_max_ms)
                    self._give_back(run, now_ms + delay, limits, outcome)
                elif ack.ack_type is AckType.REJECT:
                    self._archive(run, REASON_REJECTED, limits, outcome)
                elif ack.ack_type is AckType.RENEW:
                    run.deadline_ms = now_ms + limits.lock_duration_ms
                else:  # GAP: offsets with no record for the client (control batches)
                    self._set(run, RecordState.ARCHIVED, outcome)
        self._coalesce()
        self._advance()
        return outcome

    # --- time, members, the log -------------------------------------------------------------------

    def expire_locks(self, now_ms: int, limits: Limits) -> Outcome:
        """Locks past their deadline: the records are given back (or archived at the limit)."""
        outcome = Outcome()
        for run in list(self.runs):
            if run.state is RecordState.ACQUIRED and run.deadline_ms <= now_ms:
                self.counters.lock_expired += run.size
                self._give_back(run, now_ms, limits, outcome)
        if outcome.changes or outcome.dead_letters:
            self._coalesce()
            self._advance()
        return outcome

    def release_member(self, member_id: str, now_ms: int, limits: Limits) -> Outcome:
        """The member left (or was dropped): everything it holds is given back."""
        outcome = Outcome()
        for run in list(self.runs):
            if run.state is RecordState.ACQUIRED and run.member_id == member_id:
                self._give_back(run, now_ms, limits, outcome)
        self._coalesce()
        self._advance()
        return outcome

    def dead_lettered(self, first: int, last: int) -> Outcome:
        """The dead-letter write of [first, last] is acknowledged: archive what still waits."""
        outcome = Outcome()
        first, last = max(first, self.start_offset), min(last, self.end_offset - 1)
        if first > last:
            return outcome
        for run in self._runs_over(first, last):
            if run.state is RecordState.DEAD_LETTERING:
                break
        else:
            return outcome
        return self._archive_waiting(self._isolate(first, last), written=True)

    def archive_dead_lettering(self) -> Outcome:
        """The dead-letter topic was removed from the group's configs: what waited for it is
        archived without it (the user chose to have no dead-letter topic)."""
        return self._archive_waiting(list(self.runs), written=False)

    def _archive_waiting(self, runs: list[Run], *, written: bool) -> Outcome:
        """Archive the DEAD_LETTERING runs among `runs` (`written`: copied to the DLQ)."""
        outcome = Outcome()
        for run in runs:
            if run.state is RecordState.DEAD_LETTERING:
                if written:
                    self.counters.dead_lettered += run.size
                self.counters.archived += run.size
                run.state = RecordState.ARCHIVED
                outcome.changes.append(self._change(run))
        self._coalesce()
        self._advance()
        return outcome

    def move_start(self, log_start_offset: int) -> bool:
        """The log no longer holds offsets below `log_start_offset` (retention): forget them.
        Returns whether SPSO moved (a change to persist)."""
        if not self.initialized or log_start_offset <= self.start_offset:
            return False
        if log_start_offset < self.end_offset:
            self._split(log_start_offset)
            self.runs = [run for run in self.runs if run.first >= log_start_offset]
        else:
            self.runs = []
        self.start_offset = log_start_offset
        self.end_offset = max(self.end_offset, log_start_offset)
        self._advance()
        return True

    # --- replay -----------------------------------------------------------------------------------

    def apply(self, start_offset: int, runs: Iterable[Change], counters: Iterable[int]) -> None:
        """Replay one persisted update, a snapshot of the window: SPSO, the runs in offset order
        (offsets between them are AVAILABLE with no delivery counted), the counters."""
        self.start_offset = self.end_offset = start_offset
        self.runs = []
        for change in runs:
            if change.last < self.end_offset:
                continue
            first = max(change.first, self.end_offset)
            if first > self.end_offset:
                self.runs.append(Run(self.end_offset, first - 1, RecordState.AVAILABLE, 0))
            self.runs.append(
                Run(first, change.last, change.state, change.delivery_count, reason=change.reason)
            )
            self.end_offset = change.last + 1
        self.counters = Counters.of(counters)
        self._coalesce()
        self._advance()

    # --- plumbing ---------------------------------------------------------------------------------

    def _give_back(self, run: Run, not_before_ms: int, limits: Limits, outcome: Outcome) -> None:
        if run.delivery_count >= limits.delivery_count_limit:
            self._archive(run, REASON_DELIVERY_LIMIT, limits, outcome)
            return
        run.state = RecordState.AVAILABLE
        run.member_id = ""
        run.deadline_ms = not_before_ms
        outcome.changes.append(self._change(run))
        outcome.made_available = True

    def _archive(self, run: Run, reason: str, limits: Limits, outcome: Outcome) -> None:
        run.member_id = ""
        run.deadline_ms = 0
        run.reason = reason
        if limits.dead_letter:
            run.state = RecordState.DEAD_LETTERING
            outcome.dead_letters.append(
                DeadLetterJob(run.first, run.last, run.delivery_count, reason)
            )
        else:
            run.state = RecordState.ARCHIVED
            self.counters.archived += run.size
        outcome.changes.append(self._change(run))

    def _set(self, run: Run, state: RecordState, outcome: Outcome) -> None:
        run.state = state
        run.member_id = ""
        run.deadline_ms = 0
        outcome.changes.append(self._change(run))

    @staticmethod
    def _change(run: Run) -> Change:
        return Change(run.first, run.last, run.state, run.delivery_count, run.reason)

    def _index(self, offset: int) -> int:
        """Index of the run holding `offset` (which must lie in the window)."""
        firsts = [run.first for run in self.runs]
        return bisect.bisect_right(firsts, offset) - 1

    def _split(self, offset: int) -> None:
        """Make `offset` the first offset of a run (it must lie in the window)."""
        index = self._index(offset)
        run = self.runs[index]
        if run.first == offset:
            return
        tail = dataclasses.replace(run, first=offset)
        run.last = offset - 1
        self.runs.insert(index + 1, tail)

    def _runs_over(self, first: int, last: int) -> Iterator[Run]:
        index = self._index(first)
        while index < len(self.runs) and self.runs[index].first <= last:
            yield self.runs[index]
            index += 1

    def _isolate(self, first: int, last: int) -> list[Run]:
        """The runs covering exactly [first, last] (splitting the runs at both ends)."""
        self._split(first)
        if last + 1 < self.end_offset:
            self._split(last + 1)
        return list(self._runs_over(first, last))

    def _coalesce(self) -> None:
        """Merge neighbouring runs in the same state (keeps the window short)."""
        merged: list[Run] = []
        for run in self.runs:
            previous = merged[-1] if merged else None
            if (
                previous is not None
                and previous.state is run.state
                and previous.delivery_count == run.delivery_count
                and previous.member_id == run.member_id
                and previous.deadline_ms == run.deadline_ms
                and previous.reason == run.reason
                and previous.last + 1 == run.first
            ):
                previous.last = run.last
                if previous.timestamp_ms < 0:
                    previous.timestamp_ms = run.timestamp_ms
            else:
                merged.append(run)
        self.runs = merged

    def _advance(self) -> None:
        """Move SPSO past the leading runs that are done."""
        done = 0
        while done < len(self.runs) and self.runs[done].state in DONE_STATES:
            done += 1
        if done:
            self.start_offset = self.runs[done - 1].last + 1
            del self.runs[:done]

    def validate(self) -> None:
        """The window's invariants (tests call this after every step)."""
        assert self.start_offset <= self.end_offset
        expected = self.start_offset
        for run in self.runs:
            assert run.first == expected and run.first <= run.last, (run, expected)
            assert (run.state is RecordState.ACQUIRED) == bool(run.member_id), run
            assert run.delivery_count >= 0
            expected = run.last + 1
        assert expected == self.end_offset, (expected, self.end_offset)
        if self.runs:
            assert self.runs[0].state not in DONE_STATES


def _merge_acquired(ranges: list[Acquired]) -> list[Acquired]:
    """Neighbouring acquired ranges with the same delivery count, as one."""
    merged: list[Acquired] = []
    for item in sorted(ranges, key=lambda r: r.first):
        if (
            merged
            and merged[-1].last + 1 == item.first
            and (merged[-1].delivery_count == item.delivery_count)
        ):
            merged[-1] = Acquired(merged[-1].first, item.last, item.delivery_count)
        else:
            merged.append(item)
    return merged
