"""Deterministic simulation of a share group (KIP-932 queue) on one `ShareCoordinatorCore`.

One seed fixes the whole run: a producer appends batches (some of them control batches, which a
consumer acknowledges as GAP) to the partitions of one topic; consumers acquire, then ACCEPT,
RELEASE (with a delay), REJECT, RENEW, acknowledge what they no longer hold, crash (go silent:
their locks expire, their sessions time out) and leave; time passes on a fake clock and the
shell ticks (sometimes late); the coordinator's writes are replicated after a random delay, in
order; sometimes a write fails (`StateDiverged`) or the coordinator fails over, and a fresh core
is loaded from exactly the writes whose `RecordsPersisted` was delivered (later writes are lost,
and so are the answers to acknowledgements that waited on them: allowed). The group has a
dead-letter topic; each `WriteDeadLetters` succeeds or fails at random, later. Now and then
retention deletes the oldest batches of a partition (those offsets are exempt from the checks
below: the log no longer holds them).

The checks are this module's own model of the queue, never the core judging itself:
- locks: the model knows which member holds which offset until when (from the acquisitions it
  saw, the acknowledgements it sent, the ticks, the leaves and session timeouts it computes), and
  the core's ACQUIRED runs are exactly those locks; no acquisition hands out an offset the model
  has locked (so no offset is ever held by two members), nor more than `max_records`;
- an acknowledgement applies exactly when the model says the member holds every offset it names
  (else INVALID_RECORD_STATE for that partition), and one that changed something is answered
  only when its write is reported persisted;
- delivery counts go up by one per acquisition within one core's life and never pass the limit;
- every offset below SPSO, every ACKNOWLEDGED and every ARCHIVED offset is one whose ACCEPT or GAP
  was applied, or that was dead-lettered (`DeadLettered` delivered): with a dead-letter topic,
  nothing is archived by failure without being written there; a dead-letter write is asked only
  for DEAD_LETTERING records;
- an offset whose ACCEPT (or GAP) was answered NONE is never acquired again, across failovers;
- the core's members are the model's;
- at the end (faults healed, every consumer accepting what it gets, time past every lock and
  retry), every produced offset was accepted (answered), dead-lettered, or archived as a gap.

A violation raises `ShareSimFailure` naming its seed and invariant, with the last events.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any

from broker.consumer_groups.actions import PersistRecords
from broker.consumer_groups.events import (
    AppendFailed,
    Event,
    LoadPartition,
    RecordsPersisted,
    Tick,
    UnloadPartition,
)
from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import EncodedRecord
from broker.share_groups.coordinator import (
    RESET_EARLIEST,
    RESET_LATEST,
    ShareCoordinatorCore,
    StateDiverged,
)
from broker.share_groups.share_actions import (
    RecordsAvailable,
    RespondAcknowledge,
    RespondAcquire,
    RespondAlterConfigs,
    RespondDescribeShareGroups,
    WriteDeadLetters,
)
from broker.share_groups.share_config import (
    DEAD_LETTER_TOPIC,
    ShareCoordinatorConfig,
)
from broker.share_groups.share_events import (
    AcknowledgeRequested,
    AcquireRequested,
    AlterConfigsRequested,
    DeadLettered,
    DeadLetterFailed,
    DescribeShareGroupsRequested,
    PartitionAcks,
    PartitionRead,
)
from broker.share_groups.share_partition import (
    REASON_DELIVERY_LIMIT,
    REASON_REJECTED,
    AckRange,
    AckType,
    BatchRun,
    RecordState,
)
from wire.error_codes import ErrorCode

GROUP = "queue"
TOPIC = "t"
DLQ_TOPIC = "t.dlq"
LOCK_MS = 1_000
SESSION_MS = 4_000
LIMIT = 3
RELEASE_DELAY_MAX_MS = 1_500
RETRY_BACKOFF_MS = 300
MAX_RECORD_LOCKS = 40
GROUP_MAX_SIZE = 6
CONFIG = ShareCoordinatorConfig(
    record_lock_duration_ms=LOCK_MS,
    delivery_count_limit=LIMIT,
    auto_offset_reset="earliest",
    release_delay_max_ms=RELEASE_DELAY_MAX_MS,
    partition_max_record_locks=MAX_RECORD_LOCKS,
    session_timeout_ms=SESSION_MS,
    group_max_size=GROUP_MAX_SIZE,
    dead_letter_retry_backoff_ms=RETRY_BACKOFF_MS,
)
TRACE_LINES_REPORTED = 40
DRAIN_ROUNDS_MAX = 200

Key = tuple[TopicPartition, int]


class ShareSimFailure(AssertionError):
    def __init__(self, seed: int, message: str, *, invariant: str, trace: list[str]) -> None:
        lines = "\n".join(trace[-TRACE_LINES_REPORTED:])
        super().__init__(
            f"share simulation seed {seed} failed [{invariant}]: {message}\n"
            f"reproduce with: pytest tests/sim/test_share_sim.py --seed {seed}\n"
            f"last {TRACE_LINES_REPORTED} events:\n{lines}"
        )
        self.seed = seed
        self.invariant = invariant


@dataclasses.dataclass(frozen=True)
class SimOptions:
    """A run's shape, drawn from the seed."""

    steps: int
    partitions: int
    consumers: int
    commit_probability: float  # per step: replicate some pending writes
    failover_probability: float
    append_fail_probability: float
    dead_letter_fail_probability: float
    late_tick_probability: float  # time passes without a tick (the shell ticks late)

    @classmethod
    def from_seed(cls, rng: random.Random, steps: int) -> SimOptions:
        return cls(
            steps=steps,
            partitions=rng.choice([1, 2, 2, 3]),
            consumers=rng.choice([2, 3, 3, 4]),
            commit_probability=rng.choice([0.2, 0.4, 0.7]),
            failover_probability=rng.choice([0.0, 0.01, 0.03]),
            append_fail_probability=rng.choice([0.0, 0.005, 0.01]),
            dead_letter_fail_probability=rng.choice([0.0, 0.3, 0.6]),
            late_tick_probability=rng.choice([0.0, 0.2]),
        )


@dataclasses.dataclass(frozen=True)
class Batch:
    first: int
    last: int
    control: bool
    timestamp_ms: int


@dataclasses.dataclass
class Lock:
    member: str
    deadline_ms: int


@dataclasses.dataclass
class Consumer:
    name: str
    incarnation: int = 0
    crashed: bool = False
    held: dict[Key, None] = dataclasses.field(default_factory=dict)  # what it believes it holds

    @property
    def member_id(self) -> str:
        return f"{self.name}.{self.incarnation}"


@dataclasses.dataclass
class PendingAck:
    """What the model expects of an acknowledgement it sent."""

    member: str
    generation: int
    expected: dict[TopicPartition, ErrorCode]
    accepted: list[Key]
    gaps: list[Key]
    token: int | None = None  # the write it waits for (None: answered at once)


@dataclasses.dataclass(frozen=True)
class DeadLetterWrite:
    generation: int
    tp: TopicPartition
    first: int
    last: int


class ShareSimulation:
    def __init__(self, seed: int, *, steps: int = 400, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = SimOptions.from_seed(self.rng, steps)
        self.trace_enabled = trace
        self.trace: collections.deque[str] = collections.deque(maxlen=TRACE_LINES_REPORTED)
        self.trace_lines: list[str] = []  # every line, when `trace`
        self.now = 0
        self.tps = [TopicPartition(TOPIC, i) for i in range(self.options.partitions)]
        self.logs: dict[TopicPartition, list[Batch]] = {tp: [] for tp in self.tps}
        self.log_start: dict[TopicPartition, int] = dict.fromkeys(self.tps, 0)  # retention
        self.consumers = [Consumer(f"c{i}") for i in range(self.options.consumers)]
        self.request_ids = iter(range(1, 1 << 62))
        # The coordinator partition: committed records, then the writes not yet replicated.
        self.committed: list[EncodedRecord] = []
        self.pending_writes: list[tuple[int, tuple[EncodedRecord, ...]]] = []
        self.generation = 0
        self.core: ShareCoordinatorCore | None = None
        self.dead_letter_queue: list[DeadLetterWrite] = []
        # The model of one core's life (reset at a failover).
        self.members: dict[str, int] = {}  # member -> last seen
        self.locks: dict[Key, Lock] = {}
        self.last_count: dict[Key, int] = {}
        self.not_before: dict[Key, int] = {}  # released with a delay: not acquirable before
        self.pending_acks: dict[int, PendingAck] = {}
        # What happened, over the whole run.
        self.accepted_applied: set[Key] = set()
        self.gaps_applied: set[Key] = set()
        self.accepted_answered: set[Key] = set()
        self.gaps_answered: set[Key] = set()
        self.dead_lettered: set[Key] = set()  # a DeadLettered was delivered for it
        self.verified_below: dict[TopicPartition, int] = dict.fromkeys(self.tps, 0)
        self.steps = 0
        self.failovers = 0
        self.acks_applied = 0
        self.dead_letter_jobs = 0

    # --- reporting --------------------------------------------------------------------------------

    def fail(self, invariant: str, message: str) -> None:
        raise ShareSimFailure(self.seed, message, invariant=invariant, trace=list(self.trace))

    def check(self, condition: object, invariant: str, message: str = "") -> None:
        if not condition:
            self.fail(invariant, message)

    def note(self, line: str) -> None:
        line = f"t={self.now} gen={self.generation} {line}"
        self.trace.append(line)
        if self.trace_enabled:
            self.trace_lines.append(line)

    # --- the run ----------------------------------------------------------------------------------

    def run(self) -> None:
        self.start_core()
        request_id = next(self.request_ids)
        self.handle(
            AlterConfigsRequested(
                request_id=request_id,
                now_ms=self.now,
                group_id=GROUP,
                configs={DEAD_LETTER_TOPIC: DLQ_TOPIC},
            )
        )
        self.commit(len(self.pending_writes))  # the dead-letter topic is set before anything
        for _ in range(self.options.steps):
            self.step()
        self.drain()

    def step(self) -> None:
        self.steps += 1
        roll = self.rng.random()
        options = self.options
        if roll < 0.12:
            self.produce()
        elif roll < 0.35:
            self.acquire(self.pick_consumer())
        elif roll < 0.58:
            self.acknowledge(self.pick_consumer())
        elif roll < 0.63:
            self.crash_or_restart(self.pick_consumer())
        elif roll < 0.75:
            self.advance_time()
        elif roll < 0.75 + options.commit_probability * 0.2:
            self.commit(self.rng.randint(1, 3))
        elif roll < 0.92:
            self.complete_dead_letter_write(
                self.rng.random() >= options.dead_letter_fail_probability
            )
        elif roll < 0.94:
            self.describe()
        else:
            fault = self.rng.random()
            if fault < options.failover_probability * 5:
                self.failover("failover")
            elif fault < (options.failover_probability + options.append_fail_probability) * 5:
                self.append_failed()
            elif fault < 0.3:
                self.retention()

    def pick_consumer(self) -> Consumer:
        return self.consumers[self.rng.randrange(len(self.consumers))]

    # --- the coordinator --------------------------------------------------------------------------

    def start_core(self) -> None:
        """A fresh core, loaded from the committed records only (a failover loses the rest)."""
        self.generation += 1
        self.core = ShareCoordinatorCore(CONFIG, validate=True)
        self.pending_writes = []
        self.members, self.locks, self.last_count = {}, {}, {}
        self.not_before = {}  # release delays are not persisted: over at a failover
        self.pending_acks = {}
        self.handle(
            LoadPartition(
                now_ms=self.now, coordinator_epoch=self.generation, records=tuple(self.committed)
            )
        )

    def failover(self, why: str) -> None:
        assert self.core is not None
        self.note(f"{why}: {len(self.pending_writes)} write(s) lost")
        self.failovers += 1
        if why == "failover":
            actions = self.core.handle(UnloadPartition(now_ms=self.now))
            answered = {a.request_id for a in actions}
            for action in actions:
                self.check(
                    isinstance(action, RespondAcknowledge | RespondAlterConfigs)
                    and action.error is ErrorCode.NOT_COORDINATOR,
                    "unload",
                    f"unload answered {action}",
                )
            self.check(
                answered == set(self.pending_acks),
                "unload",
                f"waiting acks {sorted(self.pending_acks)} answered {sorted(answered)}",
            )
        self.start_core()

    def append_failed(self) -> None:
        if not self.pending_writes:
            return
        assert self.core is not None
        token = self.pending_writes[0][0]
        self.note(f"AppendFailed token={token}")
        try:
            self.core.handle(AppendFailed(now_ms=self.now, token=token))
        except StateDiverged:
            self.failover("append failed")
        else:
            self.fail("append-failed", "a failed write did not raise StateDiverged")

    def commit(self, count: int) -> None:
        """Replicate the `count` oldest pending writes, in order."""
        for _ in range(min(count, len(self.pending_writes))):
            token, records = self.pending_writes.pop(0)
            self.committed += records
            self.handle(RecordsPersisted(now_ms=self.now, token=token), token=token)

    def handle(self, event: Event, *, token: int | None = None) -> list[Any]:
        """Feed the current core one event, route its actions, then check every invariant.
        `token`: the write this event reports persisted."""
        assert self.core is not None
        self.note(short(event))
        try:
            actions = self.core.handle(event)
        except Exception as exc:  # the core must not raise on any event the shell feeds it
            self.fail("core raised", f"{type(exc).__name__}: {exc} on {short(event)}")
        writes = [a for a in actions if isinstance(a, PersistRecords)]
        self.check(len(writes) <= 1, "one write per event", f"{len(writes)} writes")
        write_token = writes[0].token if writes else None
        for action in actions:
            self.note(f"  -> {short(action)}")
            if isinstance(action, PersistRecords):
                self.pending_writes.append((action.token, action.records))
            elif isinstance(action, WriteDeadLetters):
                self.check(action.dead_letter_topic == DLQ_TOPIC, "dead-letter topic")
                job = action.job
                self.dead_letter_queue.append(
                    DeadLetterWrite(self.generation, action.topic_partition, job.first, job.last)
                )
                self.dead_letter_jobs += 1
            elif isinstance(action, RespondAcknowledge):
                self.on_acknowledged(action, token, write_token)
            elif isinstance(action, RespondAcquire | RecordsAvailable):
                pass  # acquisitions are checked by `acquire`
            elif isinstance(action, RespondAlterConfigs | RespondDescribeShareGroups):
                self.check(action.error is ErrorCode.NONE, "admin", str(action))
            else:
                self.fail("actions", f"unexpected action {action!r}")
        self.check_dead_letter_jobs(actions)
        self.check_state()
        if not isinstance(event, AcquireRequested):  # `acquire` checks once it saw the answer
            self.check_locks()
        return actions

    # --- the producer and the consumers -----------------------------------------------------------

    def produce(self) -> None:
        tp = self.tps[self.rng.randrange(len(self.tps))]
        log = self.logs[tp]
        first = log[-1].last + 1 if log else 0
        control = self.rng.random() < 0.1
        size = 1 if control else self.rng.randint(1, 6)
        log.append(Batch(first, first + size - 1, control, self.now))
        self.note(f"produce {tp.partition}:[{first}, {first + size - 1}] control={control}")

    def retention(self) -> None:
        """Retention deletes the oldest batch or few of a partition (whole batches)."""
        tp = self.tps[self.rng.randrange(len(self.tps))]
        boundaries = [b.last + 1 for b in self.logs[tp] if b.last + 1 > self.log_start[tp]]
        if boundaries:
            self.log_start[tp] = boundaries[min(len(boundaries) - 1, self.rng.randrange(3))]
            self.note(f"retention: {tp.partition} starts at {self.log_start[tp]}")

    def is_control(self, key: Key) -> bool:
        tp, offset = key
        return any(b.control and b.first <= offset <= b.last for b in self.logs[tp])

    def log_end(self, tp: TopicPartition) -> int:
        log = self.logs[tp]
        return log[-1].last + 1 if log else 0

    def read(self, tp: TopicPartition, max_records: int) -> PartitionRead:
        """What the service reads: whole batches from the core's position (sometimes a stale
        position, sometimes a short read)."""
        assert self.core is not None
        start = self.log_start[tp]
        position = self.core.read_position(GROUP, tp)
        if position == RESET_EARLIEST:
            position = start
        elif position == RESET_LATEST:
            position = self.log_end(tp)
        elif self.rng.random() < 0.1:
            position = max(0, position - self.rng.randint(1, 8))  # a read raced an acquisition
        position = max(position, start)
        batches: list[BatchRun] = []
        count = 0
        for batch in self.logs[tp]:
            if batch.last < position:
                continue
            if count >= max_records or (batches and self.rng.random() < 0.1):
                break
            batches.append(BatchRun(batch.first, batch.last, batch.timestamp_ms))
            count += batch.last - max(batch.first, position) + 1
        return PartitionRead(
            topic_partition=tp,
            from_offset=position,
            log_start_offset=start,
            high_watermark=self.log_end(tp),
            batches=tuple(batches),
        )

    def acquire(self, consumer: Consumer) -> None:
        if consumer.crashed:
            return
        member = consumer.member_id
        max_records = self.rng.randint(1, 15)
        reads = tuple(self.read(tp, max_records) for tp in self.tps)
        joins = member in self.members or len(self.members) < GROUP_MAX_SIZE
        request_id = next(self.request_ids)
        actions = self.handle(
            AcquireRequested(
                request_id=request_id,
                now_ms=self.now,
                group_id=GROUP,
                member_id=member,
                topics=(TOPIC,),
                max_records=max_records,
                reads=reads,
            )
        )
        (response,) = [a for a in actions if isinstance(a, RespondAcquire)]
        if not joins:
            self.check(
                response.error is ErrorCode.GROUP_MAX_SIZE_REACHED and not response.acquired,
                "group max size",
                str(response),
            )
            return
        self.check(response.error is ErrorCode.NONE, "acquire", str(response))
        self.members[member] = self.now
        # The model of retention: what the log no longer holds is forgotten (locks included),
        # by an acquisition (a refused one reads nothing).
        for key in sorted(k for k in self.locks if k[1] < self.log_start[k[0]]):
            del self.locks[key]
        total = 0
        for tp, ranges in response.acquired:
            self.check(tp in self.tps, "acquire", f"acquired from {tp}")
            for r in ranges:
                self.check(r.delivery_count <= LIMIT, "delivery limit", f"{tp} {r}")
                for offset in range(r.first, r.last + 1):
                    key = (tp, offset)
                    total += 1
                    holder = self.locks.get(key)
                    self.check(
                        holder is None,
                        "one holder",
                        f"{key} handed to {member} while {holder} holds it",
                    )
                    self.check(
                        key not in self.accepted_answered and key not in self.gaps_answered,
                        "accepted never redelivered",
                        f"{key} handed out again after its ACCEPT/GAP was answered",
                    )
                    self.check(offset < self.log_end(tp), "acquire", f"{key} past the log end")
                    self.check(
                        self.now >= self.not_before.get(key, 0),
                        "release delay",
                        f"{key} acquired before {self.not_before.get(key)}",
                    )
                    previous = self.last_count.get(key)
                    self.check(
                        r.delivery_count >= 1
                        and (previous is None or r.delivery_count == previous + 1),
                        "delivery count",
                        f"{key} delivery {r.delivery_count} after {previous}",
                    )
                    self.last_count[key] = r.delivery_count
                    self.locks[key] = Lock(member, self.now + LOCK_MS)
                    consumer.held[key] = None
        self.check(total <= max_records, "max records", f"{total} > {max_records}")
        self.check_locks()

    def acknowledge(self, consumer: Consumer, *, drain: bool = False) -> None:
        if consumer.crashed:
            return
        member = consumer.member_id
        acks: dict[TopicPartition, list[AckRange]] = {}
        chosen = [key for key in consumer.held if drain or self.rng.random() < 0.6]
        if not drain and self.rng.random() < 0.05:
            # Something it does not hold (a stale view, a buggy client).
            tp = self.tps[self.rng.randrange(len(self.tps))]
            chosen.append((tp, self.rng.randrange(0, self.log_end(tp) + 3)))
        for key in sorted(set(chosen)):
            ack_type = self.ack_type(key, drain)
            delay = self.rng.choice([0, 200, 800, 5_000]) if ack_type is AckType.RELEASE else 0
            ranges = acks.setdefault(key[0], [])
            last = ranges[-1] if ranges else None
            if (
                last is not None
                and last.last + 1 == key[1]
                and (last.ack_type, last.delay_ms) == (ack_type, delay)
            ):
                ranges[-1] = dataclasses.replace(last, last=key[1])
            else:
                ranges.append(AckRange(key[1], key[1], ack_type, delay))
        if not drain and acks and self.rng.random() < 0.03:
            # Overlapping ranges: refused for the partition, whatever they name.
            tp = sorted(acks)[0]
            first = acks[tp][0]
            acks[tp].append(AckRange(first.first, first.first, AckType.ACCEPT))
        leave = not drain and self.rng.random() < 0.05
        if not acks and not leave:
            return
        # The model's verdict, per partition, before sending.
        expected: dict[TopicPartition, ErrorCode] = {}
        accepted: list[Key] = []
        gaps: list[Key] = []
        changes = False
        for tp, ranges in acks.items():
            keys = [(tp, o) for r in ranges for o in range(r.first, r.last + 1)]
            overlapping = len(keys) != len(set(keys))
            held = all(self.holder(key) == member for key in keys)
            if overlapping or not held:
                expected[tp] = ErrorCode.INVALID_RECORD_STATE
                continue
            expected[tp] = ErrorCode.NONE
            for r in ranges:
                for offset in range(r.first, r.last + 1):
                    key = (tp, offset)
                    if r.ack_type is AckType.RENEW:
                        self.locks[key].deadline_ms = self.now + LOCK_MS
                        continue
                    changes = True
                    del self.locks[key]
                    if r.ack_type is AckType.RELEASE:
                        self.not_before[key] = self.now + min(r.delay_ms, RELEASE_DELAY_MAX_MS)
                    if r.ack_type is AckType.ACCEPT:
                        accepted.append(key)
                        self.accepted_applied.add(key)
                    elif r.ack_type is AckType.GAP:
                        gaps.append(key)
                        self.gaps_applied.add(key)
        if member in self.members:
            self.members[member] = self.now
            if leave:
                del self.members[member]
                mine = sorted(key for key, lock in self.locks.items() if lock.member == member)
                changes = changes or bool(mine)
                for key in mine:
                    del self.locks[key]
        request_id = next(self.request_ids)
        pending = PendingAck(member, self.generation, expected, accepted, gaps)
        self.pending_acks[request_id] = pending
        for tp, ranges in acks.items():
            for r in ranges:
                if r.ack_type is not AckType.RENEW:
                    for offset in range(r.first, r.last + 1):
                        consumer.held.pop((tp, offset), None)
        actions = self.handle(
            AcknowledgeRequested(
                request_id=request_id,
                now_ms=self.now,
                group_id=GROUP,
                member_id=member,
                acknowledgements=tuple(
                    PartitionAcks(topic_partition=tp, ranges=tuple(ranges))
                    for tp, ranges in acks.items()
                ),
                leave=leave,
            )
        )
        writes = [a.token for a in actions if isinstance(a, PersistRecords)]
        if changes:
            self.check(writes, "acks are persisted", f"request {request_id} changed, no write")
        if request_id in self.pending_acks:  # not answered at once
            self.pending_acks[request_id].token = writes[0] if writes else None
            self.check(writes, "acks are answered", f"request {request_id} waits for no write")
        if leave:
            consumer.incarnation += 1  # a new member next time
            consumer.held.clear()

    def ack_type(self, key: Key, drain: bool) -> AckType:
        if self.is_control(key):
            return AckType.GAP
        if drain:
            return AckType.ACCEPT
        roll = self.rng.random()
        if roll < 0.55:
            return AckType.ACCEPT
        if roll < 0.72:
            return AckType.RELEASE
        if roll < 0.84:
            return AckType.REJECT
        return AckType.RENEW

    def holder(self, key: Key) -> str | None:
        lock = self.locks.get(key)
        return lock.member if lock is not None else None

    def on_acknowledged(
        self, response: RespondAcknowledge, persisted: int | None, write_token: int | None
    ) -> None:
        pending = self.pending_acks.pop(response.request_id, None)
        self.check(pending is not None, "answered once", f"unexpected answer {response}")
        assert pending is not None
        self.check(response.error is ErrorCode.NONE, "ack", str(response))
        if persisted is None:
            # Answered by the event that made it: it must have written nothing.
            self.check(
                write_token is None,
                "acks are answered once persisted",
                f"request {response.request_id} answered before its write {write_token}",
            )
        else:
            self.check(
                pending.token == persisted,
                "acks are answered once persisted",
                f"request {response.request_id} (write {pending.token}) answered by {persisted}",
            )
        results = {tp: error for tp, error, _ in response.results}
        self.check(
            results == pending.expected,
            "ack verdict",
            f"request {response.request_id}: {results} != model {pending.expected}",
        )
        self.accepted_answered.update(pending.accepted)
        self.gaps_answered.update(pending.gaps)
        self.acks_applied += 1

    def crash_or_restart(self, consumer: Consumer) -> None:
        if consumer.crashed:
            consumer.crashed = False
            consumer.incarnation += 1
            self.note(f"restart {consumer.member_id}")
        else:
            consumer.crashed = True
            consumer.held.clear()
            self.note(f"crash {consumer.member_id}")

    # --- time, dead letters -----------------------------------------------------------------------

    def advance_time(self, *, to: int | None = None, tick: bool | None = None) -> None:
        assert self.core is not None
        if to is None:
            deadline = self.core.next_deadline_ms()
            roll = self.rng.random()
            if roll < 0.3 and deadline is not None and deadline > self.now:
                to = deadline
            else:
                to = self.now + self.rng.choice([0, 50, 200, 400, 900, 2_500])
        self.now = max(self.now, to)
        if tick is None:
            tick = self.rng.random() >= self.options.late_tick_probability
        if not tick:
            self.note("time passes, no tick")
            return
        # The model: silent members leave (their locks with them), then expired locks end.
        for member, seen in sorted(self.members.items()):
            if seen + SESSION_MS <= self.now:
                del self.members[member]
                for key in sorted(k for k, lock in self.locks.items() if lock.member == member):
                    del self.locks[key]
        for key in sorted(k for k, lock in self.locks.items() if lock.deadline_ms <= self.now):
            del self.locks[key]
        self.handle(Tick(now_ms=self.now))

    def complete_dead_letter_write(self, ok: bool) -> None:
        if not self.dead_letter_queue:
            return
        write = self.dead_letter_queue.pop(self.rng.randrange(len(self.dead_letter_queue)))
        if write.generation != self.generation:
            self.note(f"dead-letter write {write} done for a core gone: nobody told")
            return
        if ok:
            self.dead_lettered.update((write.tp, o) for o in range(write.first, write.last + 1))
            self.handle(
                DeadLettered(
                    now_ms=self.now,
                    group_id=GROUP,
                    topic_partition=write.tp,
                    first_offset=write.first,
                    last_offset=write.last,
                )
            )
        else:
            self.handle(
                DeadLetterFailed(
                    now_ms=self.now,
                    group_id=GROUP,
                    topic_partition=write.tp,
                    first_offset=write.first,
                    last_offset=write.last,
                )
            )

    def describe(self) -> None:
        actions = self.handle(
            DescribeShareGroupsRequested(
                request_id=next(self.request_ids), now_ms=self.now, group_ids=(GROUP,)
            )
        )
        (response,) = actions
        (group,) = response.groups
        if group.error is ErrorCode.GROUP_ID_NOT_FOUND:
            return
        self.check(
            {m.member_id: m.acquired_records for m in group.members}
            == {m: sum(lock.member == m for lock in self.locks.values()) for m in self.members},
            "describe",
            f"members {group.members} vs model {self.members}",
        )
        for stats in group.partitions:
            held = sum(key[0] == stats.topic_partition for key in self.locks)
            self.check(stats.acquired == held, "describe", f"{stats} vs {held} locks")
            self.check(stats.in_flight <= MAX_RECORD_LOCKS, "record locks", str(stats))

    # --- invariants -------------------------------------------------------------------------------

    def partition(self, tp: TopicPartition) -> Any:
        assert self.core is not None
        group = self.core.groups.get(GROUP)
        return group.partitions.get(tp) if group is not None else None

    def state_of(self, key: Key) -> RecordState | None:
        """The core's state of an offset; None below SPSO (done) or at/after SPEO."""
        partition = self.partition(key[0])
        if partition is None or not partition.start_offset <= key[1] < partition.end_offset:
            return None
        for run in partition.runs:
            if run.first <= key[1] <= run.last:
                return run.state
        raise AssertionError(f"{key} inside the window but in no run")

    def check_locks(self) -> None:
        """The core's ACQUIRED offsets are exactly the model's locks (holder and deadline)."""
        core_locks: dict[Key, tuple[str, int]] = {}
        for tp in self.tps:
            partition = self.partition(tp)
            if partition is None:
                continue
            for run in partition.runs:
                if run.state is RecordState.ACQUIRED:
                    for offset in range(run.first, run.last + 1):
                        core_locks[(tp, offset)] = (run.member_id, run.deadline_ms)
        model = {key: (lock.member, lock.deadline_ms) for key, lock in self.locks.items()}
        if core_locks != model:
            extra = sorted(set(core_locks.items()) - set(model.items()))[:5]
            missing = sorted(set(model.items()) - set(core_locks.items()))[:5]
            self.fail("locks", f"core has {extra} the model has not; model has {missing}")
        assert self.core is not None
        group = self.core.groups.get(GROUP)
        core_members = sorted(group.members) if group is not None else []
        self.check(
            core_members == sorted(self.members),
            "members",
            f"core {core_members} vs model {sorted(self.members)}",
        )

    def check_state(self) -> None:
        done_ok = self.accepted_applied | self.gaps_applied | self.dead_lettered
        for tp in self.tps:
            partition = self.partition(tp)
            if partition is None:
                continue
            self.check(partition.end_offset <= self.log_end(tp), "window", "SPEO past the log")
            self.check(partition.in_flight() <= MAX_RECORD_LOCKS, "record locks", str(partition))
            # Below SPSO: accepted or archived (a gap, or dead-lettered): never dropped.
            for offset in range(self.verified_below[tp], partition.start_offset):
                self.check(
                    (tp, offset) in done_ok or offset < self.log_start[tp],
                    "below SPSO is done",
                    f"{(tp, offset)} below SPSO {partition.start_offset} but neither accepted, "
                    "a gap, dead-lettered nor deleted by retention",
                )
            self.verified_below[tp] = max(self.verified_below[tp], partition.start_offset)
            for run in partition.runs:
                self.check(run.delivery_count <= LIMIT, "delivery limit", str(run))
                keys = [(tp, o) for o in range(run.first, run.last + 1)]
                if run.state is RecordState.ACKNOWLEDGED:
                    self.check(
                        all(k in self.accepted_applied for k in keys),
                        "acknowledged means accepted",
                        str(run),
                    )
                elif run.state is RecordState.ARCHIVED:
                    self.check(
                        all(k in self.gaps_applied or k in self.dead_lettered for k in keys),
                        "archived only once dead-lettered",
                        f"{tp} {run}",
                    )
                elif run.state is RecordState.DEAD_LETTERING:
                    self.check(
                        run.reason in (REASON_REJECTED, REASON_DELIVERY_LIMIT),
                        "dead-letter reason",
                        str(run),
                    )
                    if run.reason == REASON_DELIVERY_LIMIT:
                        self.check(run.delivery_count == LIMIT, "delivery limit", str(run))
        # An answered ACCEPT or GAP stays done, across failovers.
        for key in self.accepted_answered:
            state = self.state_of(key)
            self.check(
                state is RecordState.ACKNOWLEDGED or (state is None and self.below_start(key)),
                "accepted stays accepted",
                f"{key} accepted (answered) but now {state}",
            )
        for key in self.gaps_answered:
            state = self.state_of(key)
            self.check(
                state is RecordState.ARCHIVED or (state is None and self.below_start(key)),
                "gap stays archived",
                f"{key} archived as a gap (answered) but now {state}",
            )

    def below_start(self, key: Key) -> bool:
        partition = self.partition(key[0])
        return partition is not None and key[1] < partition.start_offset

    def check_dead_letter_jobs(self, actions: list[Any]) -> None:
        for action in actions:
            if not isinstance(action, WriteDeadLetters):
                continue
            for offset in range(action.job.first, action.job.last + 1):
                key = (action.topic_partition, offset)
                state = self.state_of(key)
                self.check(
                    state is RecordState.DEAD_LETTERING
                    or key in self.dead_lettered
                    or offset < self.log_start[key[0]],  # a retry for records deleted since
                    "dead letters are dead-lettering",
                    f"{key} asked for the dead-letter topic in state {state}",
                )

    # --- the end ----------------------------------------------------------------------------------

    def drain(self) -> None:
        """Faults healed: every consumer back, accepting everything; time past every lock and
        retry. Every produced offset must end accepted, dead-lettered or a gap."""
        self.note("--- drain ---")
        for consumer in self.consumers:
            if consumer.crashed:
                self.crash_or_restart(consumer)
        for _ in range(DRAIN_ROUNDS_MAX):
            self.commit(len(self.pending_writes))
            while self.dead_letter_queue:
                self.complete_dead_letter_write(True)
            self.commit(len(self.pending_writes))
            if self.drained():
                break
            self.advance_time(to=self.now + max(LOCK_MS, RETRY_BACKOFF_MS) + 1, tick=True)
            for consumer in self.consumers:
                self.acquire(consumer)
                self.acknowledge(consumer, drain=True)
        else:
            self.fail("liveness", "the queue did not drain: " + self.progress())
        for tp in self.tps:
            for offset in range(self.log_start[tp], self.log_end(tp)):
                key = (tp, offset)
                self.check(
                    key in self.accepted_answered
                    or key in self.dead_lettered
                    or key in self.gaps_answered,
                    "nothing lost",
                    f"{key} neither accepted, dead-lettered nor a gap",
                )

    def drained(self) -> bool:
        if self.pending_writes:
            return False
        for tp in self.tps:
            partition = self.partition(tp)
            start = partition.start_offset if partition is not None else self.log_start[tp]
            if start != self.log_end(tp):
                return False
        return True

    def progress(self) -> str:
        parts = []
        for tp in self.tps:
            p = self.partition(tp)
            runs = p.runs[:4] if p is not None else None
            parts.append(f"{tp}: log end {self.log_end(tp)}, window {runs}")
        return "; ".join(parts)


def short(item: Any) -> str:
    """One trace line for an event or action (records left out)."""
    if isinstance(item, LoadPartition):
        return f"LoadPartition({len(item.records)} records)"
    if isinstance(item, PersistRecords):
        return f"PersistRecords(token={item.token}, {len(item.records)} records)"
    text = repr(item)
    return text if len(text) <= 400 else text[:400] + "..."
