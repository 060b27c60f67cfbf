"""A fake shell around ShareCoordinatorCore: a clock, a log per topic partition (batch ranges),
the `__share_group_state` partition as a list, request ids, and every action kept.

It plays the service's part (broker/share_groups/service.py) as the core's contract asks: it
reads at `read_position` (the log start for RESET_EARLIEST, the end for RESET_LATEST), keeps each
`PersistRecords` pending until `persist()` reports it replicated, keeps each response by request
id (a request answered twice fails the test) and the `WriteDeadLetters` and `RecordsAvailable`
it was asked for.
"""

from __future__ import annotations

import itertools
from typing import Any

from broker.consumer_groups.actions import PersistRecords
from broker.consumer_groups.events import Event, LoadPartition, RecordsPersisted, Tick
from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import EncodedRecord
from broker.share_groups.coordinator import RESET_EARLIEST, RESET_LATEST, ShareCoordinatorCore
from broker.share_groups.share_actions import RecordsAvailable, WriteDeadLetters
from broker.share_groups.share_config import ShareCoordinatorConfig
from broker.share_groups.share_events import (
    AcknowledgeRequested,
    AcquireRequested,
    AlterConfigsRequested,
    DescribeShareGroupsRequested,
    PartitionAcks,
    PartitionRead,
)
from broker.share_groups.share_partition import AckRange, BatchRun

GROUP = "g"
LOCK_MS = 1_000
SESSION_MS = 10_000
BACKOFF_MS = 500
CONFIG = ShareCoordinatorConfig(
    record_lock_duration_ms=LOCK_MS,
    delivery_count_limit=3,
    session_timeout_ms=SESSION_MS,
    dead_letter_retry_backoff_ms=BACKOFF_MS,
    group_max_size=3,
    release_delay_max_ms=5_000,
)


def tp(topic: str = "t", partition: int = 0) -> TopicPartition:
    return TopicPartition(topic, partition)


class Shell:
    def __init__(
        self,
        config: ShareCoordinatorConfig = CONFIG,
        *,
        records: tuple[EncodedRecord, ...] = (),
        now_ms: int = 0,
        logs: dict[TopicPartition, list[BatchRun]] | None = None,
    ) -> None:
        self.core = ShareCoordinatorCore(config, validate=True)
        self.now_ms = now_ms
        self.logs: dict[TopicPartition, list[BatchRun]] = logs if logs is not None else {}
        self.committed: list[EncodedRecord] = list(records)  # reported persisted, in order
        self.pending: dict[int, tuple[EncodedRecord, ...]] = {}  # token -> records
        self.responses: dict[int, Any] = {}
        self.dead_letter_writes: list[WriteDeadLetters] = []
        self.woken = 0  # RecordsAvailable seen
        self._ids = itertools.count(1)
        self.handle(LoadPartition(now_ms=now_ms, coordinator_epoch=1, records=tuple(records)))

    # --- plumbing ---------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Any]:
        actions = self.core.handle(event)
        persists = [a for a in actions if isinstance(a, PersistRecords)]
        assert len(persists) <= 1, f"one write per event at most: {actions}"
        for action in actions:
            if isinstance(action, PersistRecords):
                self.pending[action.token] = action.records
            elif isinstance(action, WriteDeadLetters):
                self.dead_letter_writes.append(action)
            elif isinstance(action, RecordsAvailable):
                self.woken += 1
            else:
                assert action.request_id not in self.responses, f"answered twice: {action}"
                self.responses[action.request_id] = action
        return actions

    def persist(self, token: int | None = None) -> list[Any]:
        """Report the oldest pending write (or `token`) replicated."""
        token = min(self.pending) if token is None else token
        self.committed += self.pending.pop(token)
        return self.handle(RecordsPersisted(now_ms=self.now_ms, token=token))

    def persist_all(self) -> None:
        while self.pending:
            self.persist()

    def tick(self, now_ms: int) -> list[Any]:
        self.now_ms = now_ms
        return self.handle(Tick(now_ms=now_ms))

    def request(self, kind: type, **fields: Any) -> int:
        request_id = next(self._ids)
        self.handle(kind(request_id=request_id, now_ms=self.now_ms, **fields))
        return request_id

    def response(self, request_id: int) -> Any:
        return self.responses[request_id]

    # --- requests ---------------------------------------------------------------------------------

    def produce(self, size: int, partition: TopicPartition | None = None) -> BatchRun:
        log = self.logs.setdefault(partition or tp(), [])
        first = log[-1].last + 1 if log else 0
        batch = BatchRun(first, first + size - 1, self.now_ms)
        log.append(batch)
        return batch

    def read(self, partition: TopicPartition, max_records: int) -> PartitionRead:
        log = self.logs.get(partition, [])
        end = log[-1].last + 1 if log else 0
        position = self.core.read_position(GROUP, partition)
        if position == RESET_EARLIEST:
            position = 0
        elif position == RESET_LATEST:
            position = end
        return PartitionRead(
            topic_partition=partition,
            from_offset=position,
            log_start_offset=0,
            high_watermark=end,
            batches=tuple(batch for batch in log if batch.last >= position),
        )

    def acquire(
        self, member: str, max_records: int = 100, partitions: tuple[TopicPartition, ...] = ()
    ) -> Any:
        """Acquire; returns the response (acquisitions answer at once)."""
        partitions = partitions or tuple(sorted(self.logs)) or (tp(),)
        request_id = self.request(
            AcquireRequested,
            group_id=GROUP,
            member_id=member,
            topics=tuple(sorted({p.topic for p in partitions})),
            max_records=max_records,
            reads=tuple(self.read(p, max_records) for p in partitions),
        )
        return self.response(request_id)

    def acquired(self, member: str, max_records: int = 100) -> dict[TopicPartition, list]:
        response = self.acquire(member, max_records)
        return {partition: list(ranges) for partition, ranges in response.acquired}

    def ack(
        self,
        member: str,
        acks: dict[TopicPartition, list[AckRange]] | list[AckRange],
        *,
        leave: bool = False,
    ) -> int:
        """Acknowledge; returns the request id (the answer waits for the write)."""
        if isinstance(acks, list):
            acks = {tp(): acks}
        return self.request(
            AcknowledgeRequested,
            group_id=GROUP,
            member_id=member,
            acknowledgements=tuple(
                PartitionAcks(topic_partition=p, ranges=tuple(r)) for p, r in acks.items()
            ),
            leave=leave,
        )

    def alter(self, configs: dict[str, Any], reset: tuple[str, ...] = ()) -> Any:
        request_id = self.request(AlterConfigsRequested, group_id=GROUP, configs=configs,
                                  reset=reset)  # fmt: skip
        self.persist_all()
        return self.response(request_id)

    def describe(self, group_id: str = GROUP) -> Any:
        request_id = self.request(DescribeShareGroupsRequested, group_ids=(group_id,))
        (description,) = self.response(request_id).groups
        return description
