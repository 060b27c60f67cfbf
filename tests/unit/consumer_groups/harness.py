"""A fake shell around GroupCoordinatorCore: a clock, a list for the partition, request ids.

`Harness` plays the trio service's part exactly as the core's contract asks (the shared loop is
fake_shell.py's): it keeps the __consumer_offsets partition as a list of entries (records, with
their producer id when written in a transaction, and transaction markers), appends each
PersistRecords or PersistMarker in order, and reports it persisted (at once, when `auto_persist`)
or failed. Every response is kept by request id, and a request answered twice fails the test.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from hypothesis import HealthCheck, settings

from broker.consumer_groups.actions import PersistMarker
from broker.consumer_groups.config import GroupConfig
from broker.consumer_groups.coordinator import GroupCoordinatorCore
from broker.consumer_groups.events import (
    HeartbeatReceived,
    JoinGroupRequested,
    LeaveGroupRequested,
    LeavingMember,
    OffsetCommitRequested,
    OffsetToCommit,
    RecordsPersisted,
    SyncAssignment,
    SyncGroupRequested,
    TxnMarkerRequested,
    TxnOffsetCommitRequested,
)
from broker.consumer_groups.group import JoinProtocol, TopicPartition
from broker.consumer_groups.offsets import LogEntry, MarkerRecord
from wire.assignors import Assignment, Subscription, assign_encoded
from wire.error_codes import ErrorCode

from .fake_shell import FakeShell

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


class Harness(FakeShell):
    def __init__(
        self,
        config: GroupConfig | None = None,
        *,
        records: tuple[LogEntry, ...] = (),
        now_ms: int = 1_000_000,
        epoch: int = 1,
        load: bool = True,
    ) -> None:
        self.auto_persist = True
        self._persisting = False
        core = GroupCoordinatorCore(config or fast_config(), validate=True)
        super().__init__(core, records=records, now_ms=now_ms, epoch=epoch, load=load)

    # --- the shell's loop -------------------------------------------------------------------------

    def settle(self) -> None:
        if self.auto_persist and not self._persisting:
            self.persist_all()

    def persist_next(self) -> None:
        write = self.pending.pop(0)
        if isinstance(write, PersistMarker):
            self.log.append(MarkerRecord(write.producer_id, write.producer_epoch, write.commit))
        else:
            # As the service's batch: a transactional one carries its producer.
            self.log.extend(
                dataclasses.replace(
                    record, producer_id=write.producer_id, producer_epoch=write.producer_epoch
                )
                for record in write.records
            )
        self.handle(RecordsPersisted(now_ms=self.now_ms, token=write.token))

    def persist_all(self) -> None:
        self._persisting = True
        try:
            while self.pending:
                self.persist_next()
        finally:
            self._persisting = False

    # --- requests ---------------------------------------------------------------------------------

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
        **transaction: Any,
    ) -> int:
        """An OffsetCommit; with `transaction` fields, a TxnOffsetCommit (see `txn_commit`)."""
        return self.request(
            TxnOffsetCommitRequested if transaction else OffsetCommitRequested,
            group_id=group_id,
            generation=generation,
            member_id=member_id,
            group_instance_id=instance_id,
            offsets=tuple(OffsetToCommit(p, o, metadata="m") for p, o in sorted(offsets.items())),
            **transaction,
        )

    def txn_commit(
        self,
        offsets: dict[TopicPartition, int],
        *,
        producer_id: int,
        producer_epoch: int = 0,
        **fields: Any,
    ) -> int:
        return self.commit(
            offsets,
            transactional_id=f"txn-{producer_id}",
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            **fields,
        )

    def marker(
        self, producer_id: int, *, commit: bool, producer_epoch: int = 0, coordinator_epoch: int = 0
    ) -> int:
        return self.request(
            TxnMarkerRequested,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            commit=commit,
            coordinator_epoch=coordinator_epoch,
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
