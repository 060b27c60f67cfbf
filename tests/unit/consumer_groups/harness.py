"""A fake shell around GroupCoordinatorCore: a clock, a list for the partition, request ids.

`Harness` plays the trio service's part exactly as the core's contract asks: it keeps the
__consumer_offsets partition as a list of records, appends each PersistRecords in order, and
reports it persisted (at once, when `auto_persist`) or failed. Every response is kept by request
id, and a request answered twice fails the test.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

from broker.consumer_groups.actions import Action, PersistRecords, Response
from broker.consumer_groups.assignors import Assignment, Subscription, assign_encoded
from broker.consumer_groups.config import GroupConfig
from broker.consumer_groups.coordinator import GroupCoordinatorCore
from broker.consumer_groups.events import (
    AppendFailed,
    Event,
    HeartbeatReceived,
    JoinGroupRequested,
    LeaveGroupRequested,
    LeavingMember,
    LoadPartition,
    OffsetCommitRequested,
    OffsetToCommit,
    RecordsPersisted,
    SyncAssignment,
    SyncGroupRequested,
    Tick,
)
from broker.consumer_groups.group import JoinProtocol, TopicPartition
from broker.consumer_groups.offsets import EncodedRecord
from broker.errors import ErrorCode

# Hypothesis sizes: bounded by default (the unit suite stays fast); CG_THOROUGH=1 for more.
THOROUGH = os.environ.get("CG_THOROUGH") == "1"
PROPERTY_SETTINGS = settings(
    max_examples=500 if THOROUGH else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SESSION_MS = 10_000
DELAY_MS = 100
REBALANCE_MS = 30_000


def fast_config(**changes: Any) -> GroupConfig:
    """Test timings: small session bounds, a short initial delay, an hour of offset retention."""
    fields: dict[str, Any] = {
        "session_timeout_ms_min": 1_000,
        "session_timeout_ms_max": 60_000,
        "initial_rebalance_delay_ms": DELAY_MS,
        "offsets_retention_ms": 3_600_000,
        "offsets_retention_check_interval_ms": 60_000,
    }
    fields.update(changes)
    return GroupConfig(**fields)


def tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def protocols_for(
    names: tuple[str, ...] = ("range",),
    topics: tuple[str, ...] = ("t",),
    owned: tuple[TopicPartition, ...] = (),
    generation: int = -1,
) -> tuple[JoinProtocol, ...]:
    metadata = Subscription(topics, owned, generation).encode()
    return tuple(JoinProtocol(name, metadata) for name in names)


class Harness:
    def __init__(
        self,
        config: GroupConfig | None = None,
        *,
        records: tuple[EncodedRecord, ...] = (),
        now_ms: int = 1_000_000,
        epoch: int = 1,
        load: bool = True,
    ) -> None:
        self.core = GroupCoordinatorCore(config or fast_config(), validate=True)
        self.now_ms = now_ms
        self.log: list[EncodedRecord] = list(records)
        self.pending: list[PersistRecords] = []
        self.responses: dict[int, Response] = {}
        self.arrivals: list[Response] = []  # every response, in the order the core emitted them
        self.next_request_id = 1
        self.auto_persist = True
        self._persisting = False
        if load:
            self.handle(LoadPartition(now_ms=now_ms, coordinator_epoch=epoch, records=records))

    # --- the shell's loop -------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        actions = self.core.handle(event)
        for action in actions:
            if isinstance(action, PersistRecords):
                self.pending.append(action)
            else:
                assert action.request_id not in self.responses, f"answered twice: {action}"
                self.responses[action.request_id] = action
                self.arrivals.append(action)
        if self.auto_persist and not self._persisting:
            self.persist_all()
        return actions

    def persist_next(self) -> None:
        write = self.pending.pop(0)
        self.log.extend(write.records)
        self.handle(RecordsPersisted(now_ms=self.now_ms, token=write.token))

    def fail_next(self, error: ErrorCode = ErrorCode.COORDINATOR_NOT_AVAILABLE) -> None:
        write = self.pending.pop(0)
        self.handle(AppendFailed(now_ms=self.now_ms, token=write.token, error=error))

    def persist_all(self) -> None:
        self._persisting = True
        try:
            while self.pending:
                self.persist_next()
        finally:
            self._persisting = False

    def tick(self, advance_ms: int = 0) -> list[Action]:
        self.now_ms += advance_ms
        return self.handle(Tick(now_ms=self.now_ms))

    # --- requests ---------------------------------------------------------------------------------

    def request(self, cls: type[Any], **fields: Any) -> int:
        request_id = self.next_request_id
        self.next_request_id += 1
        self.handle(cls(now_ms=self.now_ms, request_id=request_id, **fields))
        return request_id

    def response(self, request_id: int) -> Any:
        return self.responses.get(request_id)

    def join(
        self,
        group_id: str = "g",
        member_id: str = "",
        *,
        instance_id: str | None = None,
        names: tuple[str, ...] = ("range",),
        topics: tuple[str, ...] = ("t",),
        session_ms: int = SESSION_MS,
        rebalance_ms: int = REBALANCE_MS,
        client_id: str = "c",
        protocols: tuple[Any, ...] | None = None,
    ) -> int:
        return self.request(
            JoinGroupRequested,
            group_id=group_id,
            member_id=member_id,
            group_instance_id=instance_id,
            client_id=client_id,
            client_host="127.0.0.1",
            session_timeout_ms=session_ms,
            rebalance_timeout_ms=rebalance_ms,
            protocol_type="consumer",
            protocols=protocols if protocols is not None else protocols_for(names, topics),
        )

    def sync(
        self,
        member_id: str,
        generation: int,
        *,
        group_id: str = "g",
        instance_id: str | None = None,
        assignments: dict[str, bytes] | None = None,
    ) -> int:
        return self.request(
            SyncGroupRequested,
            group_id=group_id,
            generation=generation,
            member_id=member_id,
            group_instance_id=instance_id,
            assignments=tuple(SyncAssignment(m, a) for m, a in sorted((assignments or {}).items())),
        )

    def heartbeat(
        self,
        member_id: str,
        generation: int,
        *,
        group_id: str = "g",
        instance_id: str | None = None,
    ) -> Any:
        rid = self.request(
            HeartbeatReceived,
            group_id=group_id,
            generation=generation,
            member_id=member_id,
            group_instance_id=instance_id,
        )
        return self.response(rid).error

    def leave(self, *members: LeavingMember, group_id: str = "g") -> Any:
        return self.response(self.request(LeaveGroupRequested, group_id=group_id, members=members))

    def commit(
        self,
        offsets: dict[TopicPartition, int],
        *,
        group_id: str = "g",
        member_id: str = "",
        generation: int = -1,
        instance_id: str | None = None,
    ) -> int:
        return self.request(
            OffsetCommitRequested,
            group_id=group_id,
            generation=generation,
            member_id=member_id,
            group_instance_id=instance_id,
            offsets=tuple(OffsetToCommit(p, o, metadata="m") for p, o in sorted(offsets.items())),
        )


def form_group(
    harness: Harness,
    count: int,
    *,
    group_id: str = "g",
    names: tuple[str, ...] = ("range",),
    topics: tuple[str, ...] = ("t",),
    partition_counts: dict[str, int] | None = None,
    instance_ids: list[str | None] | None = None,
) -> tuple[int, list[str]]:
    """Start `count` consumers together (one rebalance, thanks to the initial delay) and sync
    them with the chosen assignor's real assignment; returns (generation, member ids)."""
    instance_ids = instance_ids or [None] * count
    joins = [
        harness.join(
            group_id, instance_id=instance_ids[i], names=names, topics=topics, client_id=f"c{i}"
        )
        for i in range(count)
    ]
    harness.tick(DELAY_MS)
    answers = [harness.response(rid) for rid in joins]
    assert all(a is not None and a.error is ErrorCode.NONE for a in answers), answers
    leader = next(a for a in answers if a.members)
    assignments = assign_encoded(
        leader.protocol_name,
        [(m.member_id, m.metadata) for m in leader.members],
        partition_counts or {"t": 6},
    )
    generation = leader.generation
    member_ids = [a.member_id for a in answers]
    syncs = [
        harness.sync(
            a.member_id,
            generation,
            group_id=group_id,
            instance_id=instance_ids[i],
            assignments=assignments if a.member_id == leader.leader_id else None,
        )
        for i, a in enumerate(answers)
    ]
    assert all(harness.response(rid).error is ErrorCode.NONE for rid in syncs)
    return generation, member_ids


def assigned(harness: Harness, request_id: int) -> tuple[TopicPartition, ...]:
    """The partitions a SyncGroup response handed out."""
    return Assignment.decode(harness.response(request_id).assignment).partitions
