"""ShareCoordinatorCore: the pure state machine of one `__share_group_state` partition.

It holds every share group whose id maps to that partition: the group's config overrides, its
members, and a `SharePartition` (the in-flight window) per topic partition the group reads. The
shell (broker/share_groups/service.py, on the shared CoordinatorShell) feeds it events and
carries out its actions; it never reads a clock or a log.

Rules:
- One event orders at most one write (`PersistRecords`, one batch): every partition update and
  config change the event made. An acknowledgement (and a config change) is answered only once
  that write is replicated, so an acknowledged ACCEPT is never delivered again, whatever fails
  over. Acquisitions answer at once (they are not persisted: module rules of share_partition.py).
- Members join on their first request and leave by `leave` or by staying silent for the session
  timeout; what a leaving member holds is released at once (its delivery counts).
- A write that fails leaves this core's memory ahead of the log, which is the truth: the core
  raises `StateDiverged`, and the shell's containment discards it and reloads the partition from
  its log (requests waiting on it are answered NOT_COORDINATOR, which clients retry).
- Dead-letter writes are the shell's (`WriteDeadLetters`); the records wait in DEAD_LETTERING
  (persisted) until `DeadLettered`, and a failure is retried after the backoff. A reload asks
  again for every run still DEAD_LETTERING.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from collections.abc import Iterable
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
from broker.consumer_groups.state import CoreStatus, route_event
from broker.share_groups.share_actions import (
    RecordsAvailable,
    RespondAcknowledge,
    RespondAcquire,
    RespondAlterConfigs,
    RespondDescribeShareGroups,
    ShareGroupDescription,
    ShareMemberStatistics,
    SharePartitionStatistics,
    WriteDeadLetters,
)
from broker.share_groups.share_config import (
    GROUP_CONFIG_NAMES,
    ShareCoordinatorConfig,
    ShareGroupConfig,
    validate_group_configs,
)
from broker.share_groups.share_events import (
    AcknowledgeRequested,
    AcquireRequested,
    AlterConfigsRequested,
    DeadLettered,
    DeadLetterFailed,
    DescribeShareGroupsRequested,
    MemberRequest,
)
from broker.share_groups.share_partition import (
    Acquired,
    Change,
    DeadLetterJob,
    Limits,
    Outcome,
    RecordState,
    SharePartition,
)
from broker.share_groups.share_records import (
    ConfigRecord,
    PartitionRecord,
    ShareRecord,
    UnreadableRecord,
    decode,
    encode,
)
from wire.config_error import ConfigError
from wire.error_codes import ErrorCode

logger = logging.getLogger(__name__)

# `read_position` answers for a share partition not started yet: where its reset points.
RESET_EARLIEST = -2
RESET_LATEST = -1


class StateDiverged(RuntimeError):
    """A write failed after the core applied it: reload from the log (module rules)."""


@dataclasses.dataclass(slots=True)
class ShareMember:
    member_id: str
    client_id: str
    client_host: str
    topics: tuple[str, ...] = ()
    last_seen_ms: int = 0


@dataclasses.dataclass(slots=True)
class DeadLetterRetry:
    topic_partition: TopicPartition
    job: DeadLetterJob
    retry_at_ms: int


@dataclasses.dataclass(slots=True)
class ShareGroup:
    group_id: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    members: dict[str, ShareMember] = dataclasses.field(default_factory=dict)
    partitions: dict[TopicPartition, SharePartition] = dataclasses.field(default_factory=dict)
    retries: list[DeadLetterRetry] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class PendingWrite:
    """A write being replicated and the request answered when it is (None: nobody waits)."""

    token: int
    response: Any = None


class ShareCoordinatorCore:
    """See the module rules. `validate=True` checks every window's invariants after each event
    (tests and simulations)."""

    def __init__(self, config: ShareCoordinatorConfig, *, validate: bool = False) -> None:
        config.validate()
        self._config = config
        self._validate = validate
        self._status = CoreStatus.LOADING
        self.groups: dict[str, ShareGroup] = {}
        self._writes: dict[int, PendingWrite] = {}
        self._tokens = itertools.count(1)
        self._out: list[Any] = []
        self._rotation = 0
        self._last_tick_ms = 0
        # What the current event changed, written as one batch at its end.
        self._dirty: dict[tuple[str, TopicPartition], None] = {}
        self._dirty_configs: dict[str, None] = {}

    # --- the shell's interface --------------------------------------------------------------------

    def handle(self, event: Event) -> list[Any]:
        """Apply one event; return the actions to carry out, in order."""
        assert not self._out
        route_event(self._status, event, self._out.append, self._dispatch)
        actions, self._out = self._out, []
        if self._validate:
            self.validate()
        return actions

    def next_deadline_ms(self) -> int | None:
        """The earliest `now_ms` at which a Tick has something to do."""
        if self._status is not CoreStatus.ACTIVE:
            return None
        deadlines: list[int] = []
        for group in self.groups.values():
            deadlines += [
                m.last_seen_ms + self._config.session_timeout_ms for m in group.members.values()
            ]
            deadlines += [retry.retry_at_ms for retry in group.retries]
            for partition in group.partitions.values():
                deadline = partition.next_deadline_ms(self._last_tick_ms)
                if deadline is not None:
                    deadlines.append(deadline)
        return min(deadlines, default=None)

    def read_position(self, group_id: str, tp: TopicPartition) -> int:
        """Where the shell reads `tp` for this group: its SPEO, or RESET_EARLIEST/RESET_LATEST
        for a share partition not started yet."""
        group = self.groups.get(group_id)
        partition = group.partitions.get(tp) if group is not None else None
        if partition is not None and partition.initialized:
            return partition.end_offset
        reset = self.group_config(group_id).auto_offset_reset
        return RESET_EARLIEST if reset == "earliest" else RESET_LATEST

    def group_config(self, group_id: str) -> ShareGroupConfig:
        group = self.groups.get(group_id)
        return ShareGroupConfig.of(group.overrides if group else {}, self._config)

    @property
    def loaded(self) -> bool:
        return self._status is CoreStatus.ACTIVE

    # --- events -----------------------------------------------------------------------------------

    @functools.singledispatchmethod
    def _dispatch(self, event: Event) -> None:
        raise AssertionError(f"unknown event {event!r}")

    @_dispatch.register
    def _load(self, event: LoadPartition) -> None:
        skipped = 0
        for entry in event.records:
            if not isinstance(entry, EncodedRecord):
                continue  # no transaction markers on this topic
            try:
                record = decode(entry.key, entry.value)
            except UnreadableRecord as exc:
                skipped += 1
                logger.warning("skipping a share state record this version cannot read: %s", exc)
                continue
            self._replay(record)
        self._status = CoreStatus.ACTIVE
        self._last_tick_ms = event.now_ms
        for group in self.groups.values():
            for tp, partition in group.partitions.items():
                for job in partition.dead_lettering():
                    self._dead_letter(group, tp, job)
        if skipped:
            logger.warning("%d share state record(s) skipped at load", skipped)

    def _replay(self, record: ShareRecord) -> None:
        if isinstance(record, ConfigRecord):
            group = self._group(record.group_id)
            group.overrides = dict(record.configs or {})
            return
        group = self._group(record.group_id)
        partition = group.partitions.setdefault(record.topic_partition, SharePartition())
        partition.apply(record.start_offset, record.changes, record.counters)

    @_dispatch.register
    def _unload(self, event: UnloadPartition) -> None:
        self._status = CoreStatus.UNLOADED
        for write in self._writes.values():
            if write.response is not None:
                self._out.append(
                    dataclasses.replace(write.response, error=ErrorCode.NOT_COORDINATOR)
                )
        self._writes.clear()
        self.groups.clear()

    @_dispatch.register
    def _persisted(self, event: RecordsPersisted) -> None:
        write = self._writes.pop(event.token, None)
        if write is not None and write.response is not None:
            self._out.append(write.response)

    @_dispatch.register
    def _append_failed(self, event: AppendFailed) -> None:
        raise StateDiverged(
            f"share state write {event.token} failed ({event.error.name}): reloading from the log"
        )

    @_dispatch.register
    def _tick(self, event: Tick) -> None:
        now = event.now_ms
        for group in list(self.groups.values()):
            limits = self._limits(group)
            woke = False
            for member in list(group.members.values()):
                if member.last_seen_ms + self._config.session_timeout_ms <= now:
                    logger.info(
                        "share group %s: member %s silent for %d ms, removed",
                        group.group_id,
                        member.member_id,
                        now - member.last_seen_ms,
                    )
                    woke |= self._remove_member(group, member.member_id, now, limits)
            for tp, partition in group.partitions.items():
                deadline = partition.next_deadline_ms(self._last_tick_ms)
                if deadline is None or deadline > now:
                    continue
                if partition.has_available(now):
                    woke = True  # a release delay ended
                woke |= self._apply(group, tp, partition.expire_locks(now, limits))
            due = [retry for retry in group.retries if retry.retry_at_ms <= now]
            group.retries = [retry for retry in group.retries if retry.retry_at_ms > now]
            for retry in due:
                self._dead_letter(group, retry.topic_partition, retry.job)
            if woke:
                self._out.append(RecordsAvailable(group_id=group.group_id))
        self._last_tick_ms = now
        self._flush(None)

    @_dispatch.register
    def _acquire(self, event: AcquireRequested) -> None:
        group = self._group(event.group_id)
        if not self._join(group, event):
            self._out.append(
                RespondAcquire(
                    request_id=event.request_id,
                    error=ErrorCode.GROUP_MAX_SIZE_REACHED,
                    error_message=(
                        f"share group {event.group_id} already has "
                        f"{self._config.group_max_size} members (group.share.max.size)"
                    ),
                )
            )
            return
        config = self.group_config(group.group_id)
        limits = self._limits(group)
        reads = list(event.reads)
        if reads:  # rotate, so that no partition starves the others of `max_records`
            self._rotation = (self._rotation + 1) % len(reads)
            reads = reads[self._rotation :] + reads[: self._rotation]
        remaining = event.max_records
        acquired: list[tuple[TopicPartition, tuple[Acquired, ...]]] = []
        for read in reads:
            tp = read.topic_partition
            partition = group.partitions.get(tp)
            if partition is None:
                partition = group.partitions[tp] = SharePartition()
            if not partition.initialized:
                partition.initialize(max(read.from_offset, read.log_start_offset))
                self._dirty[(group.group_id, tp)] = None
            if partition.move_start(read.log_start_offset):
                self._dirty[(group.group_id, tp)] = None
            if remaining <= 0:
                continue
            batches = read.batches if read.from_offset <= partition.end_offset else ()
            ranges = partition.acquire(event.member_id, event.now_ms, remaining, limits, batches)
            if ranges:
                acquired.append((tp, tuple(ranges)))
                remaining -= sum(r.last - r.first + 1 for r in ranges)
        self._flush(None)
        self._out.append(
            RespondAcquire(
                request_id=event.request_id,
                lock_duration_ms=config.lock_duration_ms,
                acquired=tuple(sorted(acquired)),
            )
        )

    @_dispatch.register
    def _acknowledge(self, event: AcknowledgeRequested) -> None:
        group = self.groups.get(event.group_id)
        if group is None:  # nothing was ever delivered: refuse without creating the group
            self._out.append(
                RespondAcknowledge(
                    request_id=event.request_id,
                    results=tuple(
                        (acks.topic_partition, ErrorCode.INVALID_RECORD_STATE, "unknown group")
                        for acks in event.acknowledgements
                    ),
                )
            )
            return
        member = group.members.get(event.member_id)
        if member is not None:
            member.last_seen_ms = event.now_ms
        limits = self._limits(group)
        results: list[tuple[TopicPartition, ErrorCode, str]] = []
        woke = False
        for acks in event.acknowledgements:
            tp = acks.topic_partition
            partition = group.partitions.get(tp)
            problem = (
                "no records of this partition were delivered to the group"
                if partition is None or not partition.initialized
                else partition.check_acknowledgement(event.member_id, acks.ranges)
            )
            if problem is not None or partition is None:
                results.append((tp, ErrorCode.INVALID_RECORD_STATE, problem or ""))
                continue
            outcome = partition.acknowledge(event.member_id, acks.ranges, event.now_ms, limits)
            woke |= self._apply(group, tp, outcome)
            results.append((tp, ErrorCode.NONE, ""))
        if event.leave and member is not None:
            woke |= self._remove_member(group, event.member_id, event.now_ms, limits)
        if woke:
            self._out.append(RecordsAvailable(group_id=group.group_id))
        self._flush(RespondAcknowledge(request_id=event.request_id, results=tuple(results)))

    @_dispatch.register
    def _alter_configs(self, event: AlterConfigsRequested) -> None:
        unknown = [name for name in event.reset if name not in GROUP_CONFIG_NAMES]
        try:
            if unknown:
                raise ConfigError(unknown[0], "unknown group config")
            changes = validate_group_configs(event.configs, self._config)
        except ConfigError as exc:
            self._out.append(
                RespondAlterConfigs(
                    request_id=event.request_id,
                    error=ErrorCode.INVALID_CONFIG,
                    error_message=str(exc),
                )
            )
            return
        group = self._group(event.group_id)
        overrides = {k: v for k, v in group.overrides.items() if k not in event.reset}
        overrides.update(changes)
        had_dead_letter = bool(self.group_config(group.group_id).dead_letter_topic)
        group.overrides = overrides
        self._dirty_configs[group.group_id] = None
        if had_dead_letter and not self.group_config(group.group_id).dead_letter_topic:
            group.retries.clear()
            for tp, partition in group.partitions.items():
                self._apply(group, tp, partition.archive_dead_lettering())
        self._flush(
            RespondAlterConfigs(
                request_id=event.request_id, configs=self._effective_configs(group.group_id)
            )
        )

    @_dispatch.register
    def _describe(self, event: DescribeShareGroupsRequested) -> None:
        self._out.append(
            RespondDescribeShareGroups(
                request_id=event.request_id,
                groups=tuple(self.describe(group_id, event.now_ms) for group_id in event.group_ids),
            )
        )

    @_dispatch.register
    def _dead_lettered(self, event: DeadLettered) -> None:
        group = self.groups.get(event.group_id)
        partition = group.partitions.get(event.topic_partition) if group else None
        if group is None or partition is None:
            return
        outcome = partition.dead_lettered(event.first_offset, event.last_offset)
        self._apply(group, event.topic_partition, outcome)
        self._flush(None)

    @_dispatch.register
    def _dead_letter_failed(self, event: DeadLetterFailed) -> None:
        group = self.groups.get(event.group_id)
        partition = group.partitions.get(event.topic_partition) if group else None
        if group is None or partition is None:
            return
        # Retry exactly the failed range (runs merge: a neighbouring job may be in flight).
        for job in partition.dead_lettering():
            first, last = max(job.first, event.first_offset), min(job.last, event.last_offset)
            if first <= last:
                group.retries.append(
                    DeadLetterRetry(
                        event.topic_partition,
                        dataclasses.replace(job, first=first, last=last),
                        event.now_ms + self._config.dead_letter_retry_backoff_ms,
                    )
                )

    # --- queries ----------------------------------------------------------------------------------

    def describe(self, group_id: str, now_ms: int) -> ShareGroupDescription:
        group = self.groups.get(group_id)
        if group is None:
            return ShareGroupDescription(group_id=group_id, error=ErrorCode.GROUP_ID_NOT_FOUND)
        members = tuple(
            ShareMemberStatistics(
                member_id=m.member_id,
                client_id=m.client_id,
                client_host=m.client_host,
                topics=m.topics,
                acquired_records=sum(
                    p.count(RecordState.ACQUIRED, m.member_id) for p in group.partitions.values()
                ),
            )
            for m in sorted(group.members.values(), key=lambda m: m.member_id)
        )
        partitions = tuple(
            SharePartitionStatistics(
                topic_partition=tp,
                start_offset=p.start_offset,
                end_offset=p.end_offset,
                in_flight=p.in_flight(),
                available=p.count(RecordState.AVAILABLE),
                acquired=p.count(RecordState.ACQUIRED),
                acknowledged=p.count(RecordState.ACKNOWLEDGED),
                archived_total=p.counters.archived,
                dead_lettered_total=p.counters.dead_lettered,
                redelivered_total=p.counters.redelivered,
                lock_expired_total=p.counters.lock_expired,
                oldest_available_ms=p.oldest_available_ms(),
            )
            for tp, p in sorted(group.partitions.items())
        )
        return ShareGroupDescription(
            group_id=group_id,
            state="Stable" if group.members else "Empty",
            configs=self._effective_configs(group_id),
            members=members,
            partitions=partitions,
        )

    def group_ids(self) -> list[str]:
        return sorted(self.groups)

    def validate(self) -> None:
        for group in self.groups.values():
            for partition in group.partitions.values():
                partition.validate()

    # --- plumbing ---------------------------------------------------------------------------------

    def _group(self, group_id: str) -> ShareGroup:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = ShareGroup(group_id)
        return group

    def _join(self, group: ShareGroup, event: MemberRequest) -> bool:
        """Register or refresh the member; False if the group is full."""
        member = group.members.get(event.member_id)
        if member is None:
            if len(group.members) >= self._config.group_max_size:
                return False
            member = group.members[event.member_id] = ShareMember(
                event.member_id, event.client_id, event.client_host
            )
        if isinstance(event, AcquireRequested):
            member.topics = event.topics
        member.last_seen_ms = event.now_ms
        return True

    def _remove_member(
        self, group: ShareGroup, member_id: str, now_ms: int, limits: Limits
    ) -> bool:
        group.members.pop(member_id, None)
        woke = False
        for tp, partition in group.partitions.items():
            woke |= self._apply(group, tp, partition.release_member(member_id, now_ms, limits))
        return woke

    def _limits(self, group: ShareGroup) -> Limits:
        config = self.group_config(group.group_id)
        return Limits(
            lock_duration_ms=config.lock_duration_ms,
            delivery_count_limit=config.delivery_count_limit,
            dead_letter=bool(config.dead_letter_topic),
            release_delay_max_ms=config.release_delay_max_ms,
            max_record_locks=self._config.partition_max_record_locks,
        )

    def _effective_configs(self, group_id: str) -> dict[str, Any]:
        group = self.groups.get(group_id)
        return {**self._config.defaults(), **(group.overrides if group else {})}

    def _apply(self, group: ShareGroup, tp: TopicPartition, outcome: Outcome) -> bool:
        """Note what `outcome` changed (written at the event's end), start its dead-letter
        writes; returns whether records became available."""
        if outcome.changes:
            self._dirty[(group.group_id, tp)] = None
        for job in outcome.dead_letters:
            self._dead_letter(group, tp, job)
        return outcome.made_available

    def _dead_letter(self, group: ShareGroup, tp: TopicPartition, job: DeadLetterJob) -> None:
        topic = self.group_config(group.group_id).dead_letter_topic
        assert topic, "records wait for a dead-letter write only while the group has a topic"
        self._out.append(
            WriteDeadLetters(
                group_id=group.group_id, topic_partition=tp, dead_letter_topic=topic, job=job
            )
        )

    def _flush(self, response: Any) -> None:
        """Write what this event changed, as one batch; `response` waits for it (or goes now)."""
        records: list[EncodedRecord] = []
        for group_id in self._dirty_configs:
            group = self.groups[group_id]
            records.append(encode(ConfigRecord(group_id, dict(group.overrides))))
        for group_id, tp in self._dirty:
            partition = self.groups[group_id].partitions[tp]
            records.append(
                encode(
                    PartitionRecord(
                        group_id,
                        tp,
                        partition.start_offset,
                        tuple(_persisted_runs(partition)),
                        tuple(partition.counters.as_list()),
                    )
                )
            )
        self._dirty.clear()
        self._dirty_configs.clear()
        if not records:
            if response is not None:
                self._out.append(response)
            return
        token = next(self._tokens)
        self._writes[token] = PendingWrite(token, response)
        self._out.append(PersistRecords(token=token, records=tuple(records)))


def _persisted_runs(partition: SharePartition) -> Iterable[Change]:
    """The whole window as it must survive a failover (each update is a snapshot of the window:
    simpler and self-healing compared with deltas, and small, since runs are coalesced and the
    window bounded). An acquired run is written AVAILABLE with the deliveries before this one:
    a delivery in flight at a failover is not counted (module rules of share_partition.py)."""
    for run in partition.runs:
        if run.state is RecordState.ACQUIRED:
            # Not persisted as acquired: after a failover it is AVAILABLE with its last count.
            yield Change(run.first, run.last, RecordState.AVAILABLE, run.delivery_count - 1)
        else:
            yield Change(run.first, run.last, run.state, run.delivery_count, run.reason)
