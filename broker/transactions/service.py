"""TransactionService: the trio shell around the transaction coordinator cores, over
`__transaction_state`.

One `TransactionCoordinatorCore` per partition of `__transaction_state` this broker leads; the
partition of a transactional id is `crc32(transactional_id) % partition_count` (never `hash()`).
Loading, writing, ticking, routing answers and containing a failing core are the shared
`CoordinatorShell`'s (broker/coordinator_shell.py), exactly as for the group coordinator. This
module adds what is the transaction coordinator's own:
- producer ids: every InitProducerId gets a freshly allocated `new_producer_id` (used only for an
  id never seen, or when the epoch runs out), and an EndTxn gets one only when its bump would
  exhaust the epoch (`needs_new_producer_id`), so ids are not wasted;
- markers: each `WriteMarkers` runs as a task calling `write_markers` (which appends the marker to
  every partition, locally or by RPC to its leader); when it returns NONE for every partition the
  core is told `MarkersWritten`, otherwise (or if it raises) `MarkersFailed`, and the core asks
  again after its backoff. A delivery of a core that was unloaded meanwhile reports to nobody:
  the next coordinator re-requests the markers of every Prepare* transaction at load.
- queries across the loaded cores (`list_transactions`, `describe_transactions`) and a statistics
  snapshot for metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import trio

from broker.consumer_groups.group import TopicPartition
from broker.coordinator_shell import (
    CoordinatorService,
    CoordinatorShell,
    Waiting,
    ensure_internal_topic,
    next_coordinator_epoch,
    wall_clock_ms,
)
from broker.internal_topics import TRANSACTION_STATE_TOPIC
from broker.transactions.coordinator import (
    TransactionCoordinatorCore,
    TransactionCoordinatorStatistics,
)
from broker.transactions.txn_actions import (
    RespondDescribeTransactions,
    RespondListTransactions,
    TransactionDescription,
    WriteMarkers,
)
from broker.transactions.txn_config import TransactionConfig
from broker.transactions.txn_events import (
    AddOffsetsRequested,
    AddPartitionsRequested,
    DescribeTransactionsRequested,
    EndTxnRequested,
    InitProducerIdRequested,
    ListTransactionsRequested,
    MarkersFailed,
    MarkersWritten,
    needs_new_producer_id,
)
from broker.transactions.txn_records import TransactionState
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

__all__ = [
    "TRANSACTION_STATE_TOPIC",
    "TRANSACTION_STATE_TOPIC_CONFIGS",
    "TransactionMetricsSnapshot",
    "TransactionService",
    "ensure_transaction_state_topic",
]

# The internal topic's own configs, as __consumer_offsets': a transaction's state must never be
# deleted by time or size retention (the log cleaner keeps the latest record per transactional
# id), and an acknowledged state change must be on disk.
TRANSACTION_STATE_TOPIC_CONFIGS: Final = {
    "retention.ms": -1,
    "retention.bytes": -1,
    "flush.policy": "always",
    "cleanup.policy": "compact",
}
EPOCH_KEY: Final = b"transaction_coordinator_epoch"

WriteMarkersFunction = Callable[[WriteMarkers], Awaitable[dict[TopicPartition, ErrorCode]]]


def ensure_transaction_state_topic(topics: Any, partition_count: int) -> None:
    """Create `__transaction_state` if this data directory has none yet (at start-up)."""
    ensure_internal_topic(
        topics, TRANSACTION_STATE_TOPIC, partition_count, TRANSACTION_STATE_TOPIC_CONFIGS
    )


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionMetricsSnapshot:
    """What /metrics shows: totals over the loaded cores, and each core's statistics."""

    ongoing_count: int = 0
    commit_count: int = 0
    abort_count: int = 0
    timeout_abort_count: int = 0
    fenced_instance_count: int = 0
    fenced_request_count: int = 0
    statistics: tuple[tuple[int, TransactionCoordinatorStatistics], ...] = ()


class TransactionService(CoordinatorService[Any, TransactionMetricsSnapshot]):
    """The cores of every `__transaction_state` partition this broker leads (module docstring).

    `context` is the broker's `BrokerContext`; `store` the LMDB `KvStore` (None in tests: the
    coordinator epoch of a single node then starts at 1).
    """

    def __init__(
        self,
        context: Any,
        *,
        config: TransactionConfig,
        allocate_producer_id: Callable[[], int],
        write_markers: WriteMarkersFunction,
        store: Any = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        config.validate()
        self._config = config
        self._allocate = allocate_producer_id
        self._write_markers = write_markers
        self._store = store
        shell = CoordinatorShell(
            context,
            topic=TRANSACTION_STATE_TOPIC,
            name="transaction coordinator",
            new_core=lambda _partition: TransactionCoordinatorCore(config),
            next_epoch=self._next_epoch,
            on_action=self._on_action,
            after_tick=self._after_tick,
            clock_ms=clock_ms,
        )
        super().__init__(shell, TransactionMetricsSnapshot())

    @property
    def config(self) -> TransactionConfig:
        return self._config

    def _next_epoch(self) -> int:
        from broker.kvstore import KeySpace

        return next_coordinator_epoch(self._store, KeySpace.PRODUCERS, EPOCH_KEY)

    # --- requests (called from handlers, in the trio thread; the rest is CoordinatorService's) ---

    def _submit_for(self, transactional_id: str, request: type[Any], **fields: Any) -> Waiting:
        """Submit a request about `transactional_id` to the core of its partition."""
        return self.submit(
            self.partition_of(transactional_id),
            lambda rid, now: request(
                request_id=rid, now_ms=now, transactional_id=transactional_id, **fields
            ),
        )

    def submit_init_producer_id(
        self,
        transactional_id: str,
        transaction_timeout_ms: int,
        producer_id: int = -1,
        producer_epoch: int = -1,
    ) -> Waiting:
        """InitProducerId, with a producer id allocated for the core to use if it must."""
        return self._submit_for(
            transactional_id,
            InitProducerIdRequested,
            transaction_timeout_ms=transaction_timeout_ms,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            new_producer_id=self._allocate(),
        )

    def submit_add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        partitions: Iterable[TopicPartition],
    ) -> Waiting:
        return self._submit_for(
            transactional_id,
            AddPartitionsRequested,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            partitions=tuple(partitions),
        )

    def submit_add_offsets(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        group_id: str,
        offsets_partition: int,
    ) -> Waiting:
        """`offsets_partition`: the group's `__consumer_offsets` partition (GroupService's
        `partition_of(group_id)`)."""
        return self._submit_for(
            transactional_id,
            AddOffsetsRequested,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            group_id=group_id,
            offsets_partition=offsets_partition,
        )

    def submit_end_txn(
        self, transactional_id: str, producer_id: int, producer_epoch: int, commit: bool
    ) -> Waiting:
        """EndTxn; a producer id is allocated only if this bump exhausts the epoch."""
        return self._submit_for(
            transactional_id,
            EndTxnRequested,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            commit=commit,
            new_producer_id=self._allocate() if needs_new_producer_id(producer_epoch) else -1,
        )

    # --- markers ----------------------------------------------------------------------------------

    def _on_action(self, partition: int, core: Any, action: Any) -> None:
        assert isinstance(action, WriteMarkers), action
        self.shell.start_soon(self._deliver, partition, core, action)

    async def _deliver(self, partition: int, core: Any, markers: WriteMarkers) -> None:
        """Write one transaction's markers; tell the core that asked how it went."""
        try:
            results = await self._write_markers(markers)
            missing = [tp for tp in markers.partitions if results.get(tp) is not ErrorCode.NONE]
        except (BrokerError, OSError, trio.TooSlowError) as exc:
            logger.warning("markers of %r: %s", markers.transactional_id, exc)
            missing = list(markers.partitions)
        if missing:
            logger.info(
                "markers of %r not written yet on %d partition(s), e.g. %s: retrying later",
                markers.transactional_id,
                len(missing),
                missing[0],
            )
        fields = {
            "now_ms": self.shell.clock_ms(),
            "transactional_id": markers.transactional_id,
            "producer_id": markers.producer_id,
            "producer_epoch": markers.producer_epoch,
        }
        event = MarkersFailed(**fields) if missing else MarkersWritten(**fields)
        self.shell.feed_core(partition, core, event)  # an unloaded core ignores it

    # --- queries the handlers and metrics share ---------------------------------------------------

    def list_transactions(
        self, states: tuple[TransactionState, ...] = (), producer_ids: tuple[int, ...] = ()
    ) -> RespondListTransactions:
        """Every transactional id of the partitions this broker leads (a cluster-wide list asks
        every broker), answered at once."""
        found: list[TransactionDescription] = []
        error = ErrorCode.NONE
        for partition in self.shell.loaded_partitions():
            response = self.call_now(
                partition,
                lambda rid, now: ListTransactionsRequested(
                    request_id=rid, now_ms=now, states=states, producer_ids=producer_ids
                ),
            )
            if response.error is not ErrorCode.NONE:
                error = response.error
            found += response.transactions
        found.sort(key=lambda description: description.transactional_id)
        return RespondListTransactions(request_id=0, error=error, transactions=tuple(found))

    def describe_transactions(
        self, transactional_ids: Iterable[str]
    ) -> RespondDescribeTransactions:
        """Descriptions in the order asked; an id whose partition this broker does not lead gets
        NOT_COORDINATOR, one the coordinator does not know TRANSACTIONAL_ID_NOT_FOUND."""
        wanted = list(dict.fromkeys(transactional_ids))
        by_partition: dict[int, list[str]] = {}
        for transactional_id in wanted:
            by_partition.setdefault(self.partition_of(transactional_id), []).append(
                transactional_id
            )
        found: dict[str, TransactionDescription] = {}
        for partition, ids in sorted(by_partition.items()):
            response = self.call_now(
                partition,
                lambda rid, now, ids=tuple(ids): DescribeTransactionsRequested(
                    request_id=rid, now_ms=now, transactional_ids=ids
                ),
            )
            if response.error is not ErrorCode.NONE:
                found.update(
                    (tid, TransactionDescription(transactional_id=tid, error=response.error))
                    for tid in ids
                )
            else:
                found.update((d.transactional_id, d) for d in response.transactions)
        return RespondDescribeTransactions(
            request_id=0, error=ErrorCode.NONE, transactions=tuple(found[t] for t in wanted)
        )

    def statistics(self) -> TransactionMetricsSnapshot:
        per_core = tuple(
            (partition, core.statistics()) for partition, core in sorted(self.shell.cores.items())
        )
        loaded = [stats for _, stats in per_core if stats.loaded]
        ongoing = sum(
            count
            for stats in loaded
            for state, count in stats.transactions_by_state
            if state is TransactionState.ONGOING
        )
        return TransactionMetricsSnapshot(
            ongoing_count=ongoing,
            commit_count=sum(stats.commit_count for stats in loaded),
            abort_count=sum(stats.abort_count for stats in loaded),
            timeout_abort_count=sum(stats.timeout_abort_count for stats in loaded),
            fenced_instance_count=sum(stats.fenced_instance_count for stats in loaded),
            fenced_request_count=sum(stats.fenced_request_count for stats in loaded),
            statistics=per_core,
        )

    def _build_metrics_snapshot(self) -> TransactionMetricsSnapshot:
        return self.statistics()
