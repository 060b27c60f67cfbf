"""A fake shell around TransactionCoordinatorCore: a clock, the partition as a list, request ids.

`TxnHarness` plays the trio service's part as the core's contract asks (the loop it shares with
the group harness is tests/unit/consumer_groups/fake_shell.py's): it keeps
`__transaction_state` as a list of records, appends each PersistRecords in order and reports it
persisted (at once when `auto_persist`) or failed, queues every WriteMarkers for the test to
deliver (at once when `auto_markers`), and keeps every response by request id: a request answered
twice fails the test. Producer ids come from a counter, as the shell's allocator would give them.
"""

from __future__ import annotations

import os
from typing import Any

from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import EncodedRecord
from broker.transactions.coordinator import TransactionCoordinatorCore
from broker.transactions.txn_actions import PersistRecords, WriteMarkers
from broker.transactions.txn_config import TransactionConfig
from broker.transactions.txn_events import (
    AddOffsetsRequested,
    AddPartitionsRequested,
    EndTxnRequested,
    InitProducerIdRequested,
    MarkersFailed,
    MarkersWritten,
    RecordsPersisted,
    needs_new_producer_id,
)
from broker.transactions.txn_records import (
    EpochBump,
    TransactionMetadata,
    TransactionRecord,
    TransactionState,
    encode_record,
)
from tests.unit.consumer_groups.fake_shell import FakeShell
from wire.error_codes import ErrorCode

# Sizes of the seeded simulation: bounded by default (the unit suite stays fast); TXN_THOROUGH=1
# runs many more seeds and longer runs.
THOROUGH = os.environ.get("TXN_THOROUGH") == "1"
TIMEOUT_MS = 10_000


def fast_config(**changes: Any) -> TransactionConfig:
    """Test timings: timeouts checked every 100 ms, ids expire after an hour."""
    fields: dict[str, Any] = {
        "timeout_check_interval_ms": 100,
        "transactional_id_expiration_ms": 3_600_000,
        "expiration_check_interval_ms": 60_000,
        "marker_retry_backoff_ms": 50,
    }
    fields.update(changes)
    return TransactionConfig(**fields)


def tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def seeded_record(transactional_id: str, **changes: Any) -> EncodedRecord:
    """A record of an id as an earlier coordinator left it (Empty at producer id 7 unless
    `changes` say otherwise): how tests start an id near the end of its epochs."""
    fields: dict[str, Any] = {
        "producer_id": 7,
        "producer_epoch": 0,
        "last_producer_id": -1,
        "last_producer_epoch": -1,
        "last_bump": EpochBump.NONE,
        "timeout_ms": TIMEOUT_MS,
        "state": TransactionState.EMPTY,
        "partitions": (),
        "start_timestamp_ms": -1,
        "last_update_timestamp_ms": 1_000_000,
    }
    fields.update(changes)
    return encode_record(TransactionRecord(transactional_id, TransactionMetadata(**fields)))


class TxnHarness(FakeShell):
    def __init__(
        self,
        config: TransactionConfig | None = None,
        *,
        records: tuple[EncodedRecord, ...] = (),
        now_ms: int = 1_000_000,
        epoch: int = 1,
        next_producer_id: int = 1000,
        auto: bool = True,
    ) -> None:
        self.markers: list[WriteMarkers] = []  # requested, not yet reported
        self.next_producer_id = next_producer_id
        # Persist every write and write every marker at once (False: the test does it).
        self.auto_persist = auto
        self.auto_markers = auto
        self._draining = False
        core = TransactionCoordinatorCore(config or fast_config(), validate=True)
        super().__init__(core, records=records, now_ms=now_ms, epoch=epoch)

    # --- the shell's loop -------------------------------------------------------------------------

    def carry_out(self, action: object) -> None:
        assert isinstance(action, WriteMarkers), action
        self.markers.append(action)

    def settle(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while (self.auto_persist and self.pending) or (self.auto_markers and self.markers):
                if self.auto_persist and self.pending:
                    self.persist_next()
                else:
                    self.markers_written()
        finally:
            self._draining = False

    def persist_next(self) -> None:
        write: PersistRecords = self.pending.pop(0)
        self.log.extend(write.records)
        self.handle(RecordsPersisted(now_ms=self.now_ms, token=write.token))

    def markers_written(self, index: int = 0) -> WriteMarkers:
        return self._report_markers(index, MarkersWritten)

    def markers_failed(self, index: int = 0) -> WriteMarkers:
        return self._report_markers(index, MarkersFailed)

    def _report_markers(self, index: int, report: type[Any]) -> WriteMarkers:
        markers = self.markers.pop(index)
        self.handle(
            report(
                now_ms=self.now_ms,
                transactional_id=markers.transactional_id,
                producer_id=markers.producer_id,
                producer_epoch=markers.producer_epoch,
            )
        )
        return markers

    # --- requests ---------------------------------------------------------------------------------

    def allocate(self) -> int:
        self.next_producer_id += 1
        return self.next_producer_id

    def init(
        self,
        transactional_id: str = "t",
        producer_id: int = -1,
        producer_epoch: int = -1,
        *,
        timeout_ms: int = TIMEOUT_MS,
    ) -> int:
        return self.request(
            InitProducerIdRequested,
            transactional_id=transactional_id,
            transaction_timeout_ms=timeout_ms,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            new_producer_id=self.allocate(),
        )

    def add(
        self,
        producer: tuple[int, int],
        *partitions: TopicPartition,
        transactional_id: str = "t",
    ) -> int:
        return self.request(
            AddPartitionsRequested,
            transactional_id=transactional_id,
            producer_id=producer[0],
            producer_epoch=producer[1],
            partitions=partitions or (tp("a", 0),),
        )

    def add_offsets(
        self, producer: tuple[int, int], group_id: str = "g", *, transactional_id: str = "t"
    ) -> int:
        return self.request(
            AddOffsetsRequested,
            transactional_id=transactional_id,
            producer_id=producer[0],
            producer_epoch=producer[1],
            group_id=group_id,
            offsets_partition=3,
        )

    def end(self, producer: tuple[int, int], commit: bool, *, transactional_id: str = "t") -> int:
        return self.request(
            EndTxnRequested,
            transactional_id=transactional_id,
            producer_id=producer[0],
            producer_epoch=producer[1],
            commit=commit,
            new_producer_id=self.allocate() if needs_new_producer_id(producer[1]) else -1,
        )

    def error(self, request_id: int) -> ErrorCode:
        response = self.response(request_id)
        assert response is not None, f"request {request_id} is not answered"
        return response.error  # type: ignore[no-any-return]

    def pair(self, request_id: int) -> tuple[int, int]:
        """The (producer id, epoch) a successful InitProducerId or EndTxn answered."""
        response = self.response(request_id)
        assert response is not None and response.error is ErrorCode.NONE, response
        return response.producer_id, response.producer_epoch
