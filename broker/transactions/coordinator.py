"""TransactionCoordinatorCore: every transactional id of one `__transaction_state` partition, pure.

`handle(event) -> list[Action]` is the whole interface, as for the group coordinator: events are
facts (a request arrived, time is now T, a write was replicated, markers were written), actions
are orders (append these records, write these markers, send this response). No clock, network,
disk or randomness lives here; producer ids come in with the requests (the shell allocates them).

The transaction states are Kafka's (txn_records.TransactionState):

         InitProducerId         AddPartitions/AddOffsets          EndTxn (epoch + 1)
  (new) ----------------> Empty ------------------------> Ongoing ---------------> Prepare*
                            ^                              |  timeout, new instance    |
                            |                              +-----> PrepareAbort -------+ markers
                            |   InitProducerId (epoch + 1)                             v written
                            +----------------------------------------------------- Complete*
                                   AddPartitions/AddOffsets: Complete* -> Ongoing

Rules (docs/transactions.md, "Transaction coordinator"):
1. The store changes only when a write is reported persisted, so the store is always exactly what
   a replay of the partition rebuilds; responses that depend on a write wait for its report. At
   most one write per transactional id is in flight; a request meeting one gets
   CONCURRENT_TRANSACTIONS (retriable), as it does while a transaction is completing (Prepare*).
   One exception: an AddPartitions/AddOffsets from the pair an EndTxn just handed out, arriving
   while that EndTxn's transaction is completing, is parked and handled (as if it arrived then)
   once Complete* is persisted; the producer starts its next transaction at once, and a refusal
   would cost it a client backoff. Parked requests are bounded (TransactionConfig) and answered
   NOT_COORDINATOR on unload, like a parked fencing InitProducerId.
2. Every end of a transaction bumps the producer epoch (KIP-890) in the Prepare* record itself:
   the markers carry the new epoch, so a late write of the old transaction is refused by every
   partition, and EndTxn answers the new epoch. An epoch that would pass 32767 rotates to a fresh
   producer id with epoch 0 (the markers still carry the old id, at epoch 32767).
3. Once Prepare* is persisted the outcome never changes: the markers are requested until every
   partition has them (`WriteMarkers` again after `MarkersFailed`, after a backoff, and at load
   after a failover), and only then is Complete* written.
4. The identity before the last bump (`last_producer_id/epoch`) and why it was bumped decide what
   an older caller gets: the same answer again (a retry after a lost response), TRANSACTION_ABORTED
   (its transaction timed out) or PRODUCER_FENCED (a zombie). A new transaction forgets it.

The caller's duties are the group core's (consumer_groups/coordinator.py): LoadPartition first,
UnloadPartition on losing the partition, outcomes of writes in emission order, Tick at
`next_deadline_ms()`; plus: deliver each `WriteMarkers` and report `MarkersWritten` or
`MarkersFailed` (a report for markers the core no longer waits for is ignored).
"""

from __future__ import annotations

import dataclasses
import enum
import functools

from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.state import CoreStatus, route_event
from broker.internal_topics import OFFSETS_TOPIC
from broker.transactions.txn_actions import (
    Action,
    PersistRecords,
    RespondAddOffsets,
    RespondAddPartitions,
    RespondDescribeTransactions,
    RespondEndTxn,
    RespondInitProducerId,
    RespondListTransactions,
    Response,
    TransactionDescription,
    WriteMarkers,
)
from broker.transactions.txn_config import TransactionConfig
from broker.transactions.txn_events import (
    AddOffsetsRequested,
    AddPartitionsRequested,
    AppendFailed,
    DescribeTransactionsRequested,
    EndTxnRequested,
    Event,
    InitProducerIdRequested,
    ListTransactionsRequested,
    LoadPartition,
    MarkersFailed,
    MarkersWritten,
    RecordsPersisted,
    Request,
    Tick,
    UnloadPartition,
    needs_new_producer_id,
)
from broker.transactions.txn_records import (
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    NO_TIMESTAMP,
    PRODUCER_EPOCH_MAX,
    EpochBump,
    TransactionMetadata,
    TransactionRecord,
    TransactionState,
    TransactionStore,
    encode_record,
    replay,
)
from wire.error_codes import ErrorCode

State = TransactionState
AddRequest = AddPartitionsRequested | AddOffsetsRequested


class WriteKind(enum.Enum):
    """Why a write was ordered, which decides what its outcome does."""

    INIT = "init"  # InitProducerId: answer the new pair
    ADD = "add"  # AddPartitions / AddOffsets: answer NONE
    PREPARE = "prepare"  # EndTxn, a timeout or a fencing InitProducerId: then write markers
    COMPLETE = "complete"  # markers written: then a parked InitProducerId or adds may go on
    EXPIRE = "expire"  # an idle id's tombstone


@dataclasses.dataclass(frozen=True, slots=True)
class PendingWrite:
    token: int
    kind: WriteKind
    transactional_id: str
    value: TransactionMetadata | None
    request: Request | None = None  # answered by the outcome (None: nobody waits)


@dataclasses.dataclass(slots=True)
class Completion:
    """A persisted Prepare* transaction on its way to Complete* (volatile: rebuilt at load)."""

    in_flight: bool = False  # WriteMarkers emitted, no report yet
    markers_written: bool = False  # then only the Complete* write is missing
    retry_at_ms: int | None = None  # when to try again after a failure


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionCoordinatorStatistics:
    """A snapshot for metrics: counts now, and counters since the core was created."""

    loaded: bool
    transactional_id_count: int
    transactions_by_state: tuple[tuple[TransactionState, int], ...]
    pending_write_count: int
    markers_in_flight_count: int
    commit_count: int
    abort_count: int
    timeout_abort_count: int
    fenced_instance_count: int  # older instances fenced by a new one (InitProducerId)
    fenced_request_count: int  # requests answered PRODUCER_FENCED (zombies that tried)
    expired_id_count: int
    parked_request_count: int  # requests waiting for a transaction to complete (now)
    parked_add_count: int  # adds that waited for the previous transaction's Complete* (counter)


def bumped(producer_id: int, producer_epoch: int, new_producer_id: int) -> tuple[int, int]:
    """The pair after one epoch bump: epoch + 1, or a fresh producer id with epoch 0 once the
    epoch would reach its maximum. Without a fresh id (a timeout has none) the epoch may reach
    32767; nobody is ever handed that pair, and the producer's recovery rotates it."""
    if not needs_new_producer_id(producer_epoch):
        return producer_id, producer_epoch + 1
    if new_producer_id >= 0:
        return new_producer_id, 0
    return producer_id, PRODUCER_EPOCH_MAX


class TransactionCoordinatorCore:
    """All transactional ids of one coordinator partition. See the module docstring.

    With `validate=True` (tests, simulation) the whole state is checked after every event.
    """

    def __init__(self, config: TransactionConfig | None = None, *, validate: bool = False) -> None:
        self._config = config if config is not None else TransactionConfig()
        self._config.validate()
        self._validate = validate
        self._status = CoreStatus.LOADING
        self._coordinator_epoch = -1
        self._store = TransactionStore()
        self._writes: dict[int, PendingWrite] = {}  # by token, in emission order
        self._write_of: dict[str, int] = {}  # transactional id -> its write in flight
        self._completions: dict[str, Completion] = {}  # exactly the Prepare* ids of the store
        self._parked: dict[str, InitProducerIdRequested] = {}  # inits waiting for a fencing abort
        # Adds of the next transaction waiting for the previous one's Complete*, in arrival order.
        self._parked_adds: dict[str, list[AddRequest]] = {}
        self._out: list[Action] = []
        self._next_token = 1
        self._next_timeout_check_ms = 0
        self._next_expiration_check_ms = 0
        self._counters = dict.fromkeys(
            (
                "commit",
                "abort",
                "timeout",
                "fenced_instance",
                "fenced_request",
                "expired",
                "parked_add",
            ),
            0,
        )

    # --- the interface ----------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to carry out, in order."""
        assert not self._out
        route_event(self._status, event, self._respond, self._dispatch)
        actions, self._out = self._out, []
        if self._validate:
            self.validate()
        return actions

    @functools.singledispatchmethod
    def _dispatch(self, event: Event) -> None:
        raise AssertionError(f"unknown event {event!r}")

    @property
    def store(self) -> TransactionStore:
        """The persisted metadata (read-only for callers: tests compare it with a replay)."""
        return self._store

    def next_deadline_ms(self) -> int | None:
        """The earliest `now_ms` at which a `Tick` has something to do (None: nothing loaded)."""
        if self._status is not CoreStatus.ACTIVE:
            return None
        deadlines = [self._next_timeout_check_ms, self._next_expiration_check_ms]
        deadlines += [
            c.retry_at_ms for c in self._completions.values() if c.retry_at_ms is not None
        ]
        return min(deadlines)

    def statistics(self) -> TransactionCoordinatorStatistics:
        values = list(self._store.metadata.values())
        counters = self._counters
        return TransactionCoordinatorStatistics(
            loaded=self._status is CoreStatus.ACTIVE,
            transactional_id_count=len(values),
            transactions_by_state=tuple(
                (kind, sum(1 for value in values if value.state is kind)) for kind in State
            ),
            pending_write_count=len(self._writes),
            markers_in_flight_count=sum(1 for c in self._completions.values() if c.in_flight),
            commit_count=counters["commit"],
            abort_count=counters["abort"],
            timeout_abort_count=counters["timeout"],
            fenced_instance_count=counters["fenced_instance"],
            fenced_request_count=counters["fenced_request"],
            expired_id_count=counters["expired"],
            parked_request_count=len(self._parked) + self._parked_add_total(),
            parked_add_count=counters["parked_add"],
        )

    # --- plumbing ---------------------------------------------------------------------------------

    def _respond(self, response: Response) -> None:
        if getattr(response, "error", None) is ErrorCode.PRODUCER_FENCED:
            self._counters["fenced_request"] += 1
        self._out.append(response)

    def _write(
        self,
        kind: WriteKind,
        transactional_id: str,
        value: TransactionMetadata | None,
        request: Request | None = None,
    ) -> None:
        """Order the write of `transactional_id`'s new metadata; its outcome does the rest."""
        assert transactional_id not in self._write_of, "one write per transactional id (rule 1)"
        token = self._next_token
        self._next_token += 1
        self._writes[token] = PendingWrite(token, kind, transactional_id, value, request)
        self._write_of[transactional_id] = token
        record = encode_record(TransactionRecord(transactional_id, value))
        self._out.append(PersistRecords(token=token, records=(record,)))

    def _busy(self, transactional_id: str) -> bool:
        """A write or a parked InitProducerId holds the id: other requests must wait (rule 1)."""
        return transactional_id in self._write_of or transactional_id in self._parked

    def _throttled(self) -> bool:
        return len(self._writes) >= self._config.pending_writes_max

    def _identity_error(self, meta: TransactionMetadata, producer_id: int) -> ErrorCode:
        """A caller that is neither the current producer nor its recognised predecessor."""
        if producer_id in (meta.producer_id, meta.last_producer_id):
            return ErrorCode.PRODUCER_FENCED
        return ErrorCode.INVALID_PRODUCER_ID_MAPPING

    def _markers(self, transactional_id: str, meta: TransactionMetadata) -> WriteMarkers:
        return WriteMarkers(
            transactional_id=transactional_id,
            producer_id=meta.marker_producer_id,
            producer_epoch=meta.marker_producer_epoch,
            commit=meta.state.committed,
            partitions=meta.partitions,
            coordinator_epoch=self._coordinator_epoch,
        )

    def _request_markers(self, transactional_id: str) -> None:
        meta = self._store.get(transactional_id)
        assert meta is not None and meta.state.is_prepare, (transactional_id, meta)
        completion = self._completions[transactional_id]
        completion.in_flight, completion.retry_at_ms = True, None
        self._out.append(self._markers(transactional_id, meta))

    # --- lifecycle --------------------------------------------------------------------------------

    @_dispatch.register
    def _on_load(self, event: LoadPartition) -> None:
        assert self._status is CoreStatus.LOADING, "one core per leadership: load it once"
        # A corrupt partition raises CorruptTxnRecordError before the store is replaced, and
        # leaves this core untouched (still loading).
        self._store = replay(event.records)
        self._coordinator_epoch = event.coordinator_epoch
        self._status = CoreStatus.ACTIVE
        self._next_timeout_check_ms = event.now_ms + self._config.timeout_check_interval_ms
        self._next_expiration_check_ms = event.now_ms + self._config.expiration_check_interval_ms
        # Rule 3: the outcome of a Prepare* transaction is decided; this coordinator completes it.
        # Ongoing ones keep their start time, so the timeout still aborts them.
        for transactional_id, meta in sorted(self._store.metadata.items()):
            if meta.state.is_prepare:
                self._completions[transactional_id] = Completion()
                self._request_markers(transactional_id)

    @_dispatch.register
    def _on_unload(self, event: UnloadPartition) -> None:
        for write in self._writes.values():
            if write.request is not None:
                self._respond(write.request.reject(ErrorCode.NOT_COORDINATOR))
        for request in self._parked.values():
            self._respond(request.reject(ErrorCode.NOT_COORDINATOR))
        for queue in self._parked_adds.values():
            for add in queue:
                self._respond(add.reject(ErrorCode.NOT_COORDINATOR))
        self._writes.clear()
        self._write_of.clear()
        self._parked.clear()
        self._parked_adds.clear()
        self._completions.clear()
        self._store = TransactionStore()  # the next leader replays the partition; we forget it
        self._status = CoreStatus.UNLOADED

    @_dispatch.register
    def _on_tick(self, event: Tick) -> None:
        now_ms = event.now_ms
        if now_ms >= self._next_timeout_check_ms:
            self._next_timeout_check_ms = now_ms + self._config.timeout_check_interval_ms
            self._abort_timed_out(now_ms)
        if now_ms >= self._next_expiration_check_ms:
            self._next_expiration_check_ms = now_ms + self._config.expiration_check_interval_ms
            self._expire_idle(now_ms)
        for transactional_id, completion in sorted(self._completions.items()):
            if completion.retry_at_ms is None or completion.retry_at_ms > now_ms:
                continue
            if completion.markers_written:
                completion.retry_at_ms = None
                self._write_complete(transactional_id, now_ms)
            else:
                self._request_markers(transactional_id)

    def _abort_timed_out(self, now_ms: int) -> None:
        """Abort every Ongoing transaction older than its timeout (PrepareAbort, epoch bumped,
        remembered as a timeout so the producer's next call gets TRANSACTION_ABORTED). One with a
        write in flight waits for the next check: its write lands first either way."""
        for transactional_id, meta in sorted(self._store.metadata.items()):
            if meta.state is not State.ONGOING or self._busy(transactional_id):
                continue
            if meta.start_timestamp_ms + meta.timeout_ms > now_ms:
                continue
            self._write_prepare(
                transactional_id, meta, False, EpochBump.TIMEOUT, NO_PRODUCER_ID, now_ms
            )

    def _expire_idle(self, now_ms: int) -> None:
        """Forget ids idle in Empty/Complete* for `transactional_id_expiration_ms` (tombstone)."""
        expiration_ms = self._config.transactional_id_expiration_ms
        for transactional_id, meta in sorted(self._store.metadata.items()):
            idle = meta.state is State.EMPTY or meta.state.is_complete
            if not idle or self._busy(transactional_id):
                continue
            if meta.last_update_timestamp_ms + expiration_ms <= now_ms:
                self._write(WriteKind.EXPIRE, transactional_id, None)

    # --- write outcomes ---------------------------------------------------------------------------

    @_dispatch.register
    def _on_persisted(self, event: RecordsPersisted) -> None:
        # The partition commits in order, so reports must come in order: a replay applies these
        # records in the same order as we do now.
        assert event.token == min(self._writes), (event.token, sorted(self._writes))
        write = self._writes.pop(event.token)
        del self._write_of[write.transactional_id]
        transactional_id, value = write.transactional_id, write.value
        self._store.apply(TransactionRecord(transactional_id, value))
        self._apply_outcome(write, event.now_ms)
        self._resume_parked_adds(transactional_id, event.now_ms)

    def _apply_outcome(self, write: PendingWrite, now_ms: int) -> None:
        """What a persisted write does besides changing the store: answer, go on to the next
        step of its transaction."""
        transactional_id, value = write.transactional_id, write.value
        if write.kind is WriteKind.EXPIRE:
            self._counters["expired"] += 1
            return
        assert value is not None
        if write.kind is WriteKind.INIT:
            assert isinstance(write.request, InitProducerIdRequested)
            if value.last_bump is EpochBump.FENCE:
                self._counters["fenced_instance"] += 1
            self._respond(_pair_response(write.request, value))
        elif write.kind is WriteKind.ADD:
            assert write.request is not None
            self._respond(_add_response(write.request, ErrorCode.NONE))
        elif write.kind is WriteKind.PREPARE:
            if value.last_bump is EpochBump.TIMEOUT:
                self._counters["timeout"] += 1
            if isinstance(write.request, EndTxnRequested):
                self._respond(_pair_response(write.request, value))
            self._completions[transactional_id] = Completion()
            self._request_markers(transactional_id)
        else:
            assert write.kind is WriteKind.COMPLETE
            del self._completions[transactional_id]
            self._counters["commit" if value.state.committed else "abort"] += 1
            parked = self._parked.pop(transactional_id, None)
            if parked is not None:
                # The fencing abort is done: the new instance's InitProducerId goes on.
                self._init_bump(dataclasses.replace(parked, now_ms=now_ms), value)

    @_dispatch.register
    def _on_append_failed(self, event: AppendFailed) -> None:
        write = self._writes.pop(event.token)
        del self._write_of[write.transactional_id]
        transactional_id = write.transactional_id
        if write.request is not None:
            self._respond(write.request.reject(event.error))
        if write.kind is WriteKind.PREPARE:
            # A fencing abort that failed fails the InitProducerId waiting for it; a timeout's is
            # ordered again by the next check; an EndTxn's client retries.
            parked = self._parked.pop(transactional_id, None)
            if parked is not None:
                self._respond(parked.reject(event.error))
        elif write.kind is WriteKind.COMPLETE:
            # The markers are written; only the Complete* record is missing: write it again.
            # Parked adds keep waiting for it.
            self._completions[transactional_id].retry_at_ms = (
                event.now_ms + self._config.marker_retry_backoff_ms
            )
        # A failed add of a drained parked request lets the next parked one go on.
        self._resume_parked_adds(transactional_id, event.now_ms)

    # --- markers ----------------------------------------------------------------------------------

    def _completion_for(
        self, event: MarkersWritten | MarkersFailed
    ) -> tuple[Completion | None, TransactionMetadata | None]:
        """The completion a marker report is about, or None for a stale report (markers of an
        earlier transaction, or of a request the core re-issued since)."""
        completion = self._completions.get(event.transactional_id)
        meta = self._store.get(event.transactional_id)
        if completion is None or meta is None or not completion.in_flight:
            return None, None
        marker = (meta.marker_producer_id, meta.marker_producer_epoch)
        if marker != (event.producer_id, event.producer_epoch):
            return None, None
        return completion, meta

    @_dispatch.register
    def _on_markers_written(self, event: MarkersWritten) -> None:
        completion, _ = self._completion_for(event)
        if completion is None:
            return
        completion.in_flight, completion.markers_written = False, True
        self._write_complete(event.transactional_id, event.now_ms)

    @_dispatch.register
    def _on_markers_failed(self, event: MarkersFailed) -> None:
        completion, _ = self._completion_for(event)
        if completion is None:
            return
        completion.in_flight = False
        completion.retry_at_ms = event.now_ms + self._config.marker_retry_backoff_ms

    def _write_complete(self, transactional_id: str, now_ms: int) -> None:
        meta = self._store.get(transactional_id)
        assert meta is not None and meta.state.is_prepare
        done = State.COMPLETE_COMMIT if meta.state.committed else State.COMPLETE_ABORT
        value = dataclasses.replace(
            meta, state=done, partitions=(), last_update_timestamp_ms=now_ms
        )
        self._write(WriteKind.COMPLETE, transactional_id, value)

    def _write_prepare(
        self,
        transactional_id: str,
        meta: TransactionMetadata,
        commit: bool,
        bump: EpochBump,
        new_producer_id: int,
        now_ms: int,
        request: Request | None = None,
    ) -> None:
        """End an Ongoing transaction: Prepare* with the epoch bumped (rule 2)."""
        assert meta.state is State.ONGOING and meta.producer_epoch < PRODUCER_EPOCH_MAX, meta
        producer_id, producer_epoch = bumped(meta.producer_id, meta.producer_epoch, new_producer_id)
        value = dataclasses.replace(
            meta,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            last_producer_id=meta.producer_id,
            last_producer_epoch=meta.producer_epoch,
            last_bump=bump,
            state=State.PREPARE_COMMIT if commit else State.PREPARE_ABORT,
            last_update_timestamp_ms=now_ms,
        )
        self._write(WriteKind.PREPARE, transactional_id, value, request)

    # --- InitProducerId ---------------------------------------------------------------------------

    @_dispatch.register
    def _on_init(self, event: InitProducerIdRequested) -> None:
        error = self._init_error(event)
        if error is not ErrorCode.NONE:
            return self._respond(event.reject(error))
        transactional_id = event.transactional_id
        meta = self._store.get(transactional_id)
        if meta is None:
            return self._write_new_id(event)
        recovering = event.producer_id != NO_PRODUCER_ID
        caller = (event.producer_id, event.producer_epoch)
        if recovering and caller == (meta.last_producer_id, meta.last_producer_epoch):
            # Rule 4: the caller's pair was bumped already (its response was lost, or its
            # transaction timed out): it is still the same instance, so it gets the current pair,
            # rotated first if a timeout left it at the epoch's maximum.
            if meta.producer_epoch < PRODUCER_EPOCH_MAX:
                return self._respond(_pair_response(event, meta))
            return self._init_bump(event, meta)
        if meta.state is State.ONGOING:
            # A new instance (or a recovering one) abandons the transaction: abort it first
            # (fencing its writes with a bumped epoch), then answer (Kafka's fencing abort).
            self._parked[transactional_id] = event
            return self._write_prepare(
                transactional_id,
                meta,
                False,
                EpochBump.FENCE,
                event.new_producer_id,
                event.now_ms,
            )
        return self._init_bump(event, meta)

    def _init_error(self, event: InitProducerIdRequested) -> ErrorCode:
        """Kafka's checks, in Kafka's order. A timeout out of range would be Kafka's
        INVALID_TRANSACTION_TIMEOUT, which this broker does not have: INVALID_REQUEST."""
        if not event.transactional_id:
            return ErrorCode.INVALID_REQUEST
        timeout_ms = event.transaction_timeout_ms
        if timeout_ms <= 0 or timeout_ms > self._config.transaction_timeout_ms_max:
            return ErrorCode.INVALID_REQUEST
        if (event.producer_id == NO_PRODUCER_ID) != (event.producer_epoch == NO_PRODUCER_EPOCH):
            return ErrorCode.INVALID_REQUEST
        assert event.new_producer_id >= 0, "the shell allocates a producer id for every init"
        if self._busy(event.transactional_id):
            return ErrorCode.CONCURRENT_TRANSACTIONS
        meta = self._store.get(event.transactional_id)
        if meta is not None and meta.state.is_prepare:
            return ErrorCode.CONCURRENT_TRANSACTIONS
        if self._throttled():
            return ErrorCode.THROTTLED
        if event.producer_id == NO_PRODUCER_ID:
            return ErrorCode.NONE
        if meta is None:
            return ErrorCode.INVALID_PRODUCER_ID_MAPPING  # expired, or never ours
        caller = (event.producer_id, event.producer_epoch)
        if caller == (meta.producer_id, meta.producer_epoch):
            return ErrorCode.NONE
        retry = caller == (meta.last_producer_id, meta.last_producer_epoch)
        if retry and meta.last_bump in (EpochBump.END, EpochBump.TIMEOUT, EpochBump.RECOVER):
            return ErrorCode.NONE
        return self._identity_error(meta, event.producer_id)

    def _write_new_id(self, event: InitProducerIdRequested) -> None:
        value = TransactionMetadata(
            producer_id=event.new_producer_id,
            producer_epoch=0,
            last_producer_id=NO_PRODUCER_ID,
            last_producer_epoch=NO_PRODUCER_EPOCH,
            last_bump=EpochBump.NONE,
            timeout_ms=event.transaction_timeout_ms,
            state=State.EMPTY,
            partitions=(),
            start_timestamp_ms=NO_TIMESTAMP,
            last_update_timestamp_ms=event.now_ms,
        )
        self._write(WriteKind.INIT, event.transactional_id, value, event)

    def _init_bump(self, event: InitProducerIdRequested, meta: TransactionMetadata) -> None:
        """Bump the epoch for an InitProducerId (the transaction, if any, is complete): a new
        instance fences the current pair; a recovering one is remembered as the caller, so that
        its retry gets the same answer."""
        assert meta.state is State.EMPTY or meta.state.is_complete, meta
        producer_id, producer_epoch = bumped(
            meta.producer_id, meta.producer_epoch, event.new_producer_id
        )
        recovering = event.producer_id != NO_PRODUCER_ID
        last = (
            (event.producer_id, event.producer_epoch)
            if recovering
            else (meta.producer_id, meta.producer_epoch)
        )
        value = dataclasses.replace(
            meta,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            last_producer_id=last[0],
            last_producer_epoch=last[1],
            last_bump=EpochBump.RECOVER if recovering else EpochBump.FENCE,
            timeout_ms=event.transaction_timeout_ms,
            state=State.EMPTY,
            partitions=(),
            last_update_timestamp_ms=event.now_ms,
        )
        self._write(WriteKind.INIT, event.transactional_id, value, event)

    # --- AddPartitions / AddOffsets ---------------------------------------------------------------

    @_dispatch.register
    def _on_add_partitions(self, event: AddPartitionsRequested) -> None:
        self._add(event, event.partitions)

    @_dispatch.register
    def _on_add_offsets(self, event: AddOffsetsRequested) -> None:
        if not event.group_id or event.offsets_partition < 0:
            return self._respond(event.reject(ErrorCode.INVALID_REQUEST))
        return self._add(event, (TopicPartition(OFFSETS_TOPIC, event.offsets_partition),))

    def _add(
        self,
        event: AddPartitionsRequested | AddOffsetsRequested,
        partitions: tuple[TopicPartition, ...],
    ) -> None:
        """Add partitions to the transaction, starting one if none is going on."""
        meta = self._store.get(event.transactional_id)
        error = self._add_error(event, partitions, meta)
        if error is ErrorCode.CONCURRENT_TRANSACTIONS and self._may_park(event, meta):
            self._parked_adds.setdefault(event.transactional_id, []).append(event)
            self._counters["parked_add"] += 1
            return None
        if error is not ErrorCode.NONE:
            return self._respond(event.reject(error))
        assert meta is not None
        ongoing = meta.state is State.ONGOING
        merged = tuple(sorted(set(partitions) | set(meta.partitions if ongoing else ())))
        if ongoing and merged == meta.partitions:
            return self._respond(_add_response(event, ErrorCode.NONE))  # nothing new to write
        if len(merged) > self._config.partitions_per_transaction_max:
            return self._respond(event.reject(ErrorCode.POLICY_VIOLATION))
        if self._throttled():
            return self._respond(event.reject(ErrorCode.THROTTLED))
        value = dataclasses.replace(
            meta,
            state=State.ONGOING,
            partitions=merged,
            start_timestamp_ms=meta.start_timestamp_ms if ongoing else event.now_ms,
            last_update_timestamp_ms=event.now_ms,
        )
        if not ongoing:
            # Rule 4: the producer holds the current pair, so the one before is forgotten.
            value = dataclasses.replace(
                value,
                last_producer_id=NO_PRODUCER_ID,
                last_producer_epoch=NO_PRODUCER_EPOCH,
                last_bump=EpochBump.NONE,
            )
        return self._write(WriteKind.ADD, event.transactional_id, value, event)

    def _may_park(self, event: AddRequest, meta: TransactionMetadata | None) -> bool:
        """An add refused only because the caller's previous transaction is completing may wait
        for its Complete* instead (rule 1): the caller holds the pair that transaction's EndTxn
        answered, so it is that producer starting its next transaction. A timeout's or a fencing
        abort's Prepare* bumped to a pair nobody holds, and a write in flight of any other kind
        keeps its CONCURRENT_TRANSACTIONS."""
        if meta is None or not meta.state.is_prepare or meta.last_bump is not EpochBump.END:
            return False
        if (event.producer_id, event.producer_epoch) != (meta.producer_id, meta.producer_epoch):
            return False
        queued = len(self._parked_adds.get(event.transactional_id, ()))
        return (
            queued < self._config.parked_requests_per_id_max
            and self._parked_add_total() < self._config.parked_requests_max
        )

    def _parked_add_total(self) -> int:
        return sum(len(queue) for queue in self._parked_adds.values())

    def _resume_parked_adds(self, transactional_id: str, now_ms: int) -> None:
        """Handle the id's parked adds, in arrival order, as if each arrived now: once the
        previous transaction's Complete* is persisted, and each after the write of the one
        before (so they see each other's partitions and never meet their own writes)."""
        queue = self._parked_adds.get(transactional_id)
        while queue and transactional_id not in self._write_of:
            meta = self._store.get(transactional_id)
            if meta is not None and meta.state.is_prepare:
                return  # still completing: its Complete* write resumes them
            request = queue.pop(0)
            if isinstance(request, AddOffsetsRequested):
                self._on_add_offsets(dataclasses.replace(request, now_ms=now_ms))
            else:
                self._on_add_partitions(dataclasses.replace(request, now_ms=now_ms))
        if not queue:
            self._parked_adds.pop(transactional_id, None)

    def _add_error(
        self,
        event: AddPartitionsRequested | AddOffsetsRequested,
        partitions: tuple[TopicPartition, ...],
        meta: TransactionMetadata | None,
    ) -> ErrorCode:
        if not partitions or any(not tp.topic or tp.partition < 0 for tp in partitions):
            return ErrorCode.INVALID_REQUEST
        if event.producer_id < 0 or event.producer_epoch < 0:
            return ErrorCode.INVALID_REQUEST
        if meta is None:
            return ErrorCode.INVALID_PRODUCER_ID_MAPPING
        caller = (event.producer_id, event.producer_epoch)
        if caller == (meta.last_producer_id, meta.last_producer_epoch):
            if meta.last_bump is EpochBump.TIMEOUT:
                return ErrorCode.TRANSACTION_ABORTED
            return ErrorCode.PRODUCER_FENCED
        if caller != (meta.producer_id, meta.producer_epoch):
            return self._identity_error(meta, event.producer_id)
        if meta.producer_epoch >= PRODUCER_EPOCH_MAX:
            return ErrorCode.PRODUCER_FENCED  # nobody was handed this pair (see `bumped`)
        if self._busy(event.transactional_id) or meta.state.is_prepare:
            return ErrorCode.CONCURRENT_TRANSACTIONS
        return ErrorCode.NONE

    # --- EndTxn -----------------------------------------------------------------------------------

    @_dispatch.register
    def _on_end(self, event: EndTxnRequested) -> None:
        meta = self._store.get(event.transactional_id)
        if event.producer_id < 0 or event.producer_epoch < 0:
            return self._respond(event.reject(ErrorCode.INVALID_REQUEST))
        if meta is None:
            return self._respond(event.reject(ErrorCode.INVALID_PRODUCER_ID_MAPPING))
        caller = (event.producer_id, event.producer_epoch)
        if caller == (meta.last_producer_id, meta.last_producer_epoch):
            return self._respond(self._end_retry(event, meta))
        if caller != (meta.producer_id, meta.producer_epoch):
            return self._respond(event.reject(self._identity_error(meta, event.producer_id)))
        if self._busy(event.transactional_id) or meta.state.is_prepare:
            return self._respond(event.reject(ErrorCode.CONCURRENT_TRANSACTIONS))
        if meta.state is not State.ONGOING:
            # Kafka >= 3: EndTxn with no transaction going on (Empty, or already completed at
            # this epoch) is out of order, for commit and abort alike. Our client never sends
            # one for a transaction that added nothing.
            return self._respond(event.reject(ErrorCode.INVALID_TXN_STATE))
        if self._throttled():
            return self._respond(event.reject(ErrorCode.THROTTLED))
        assert event.new_producer_id >= 0 or not needs_new_producer_id(meta.producer_epoch), (
            "the shell passes a new producer id when the epoch runs out (needs_new_producer_id)"
        )
        return self._write_prepare(
            event.transactional_id,
            meta,
            event.commit,
            EpochBump.END,
            event.new_producer_id,
            event.now_ms,
            event,
        )

    def _end_retry(self, event: EndTxnRequested, meta: TransactionMetadata) -> Response:
        """EndTxn from the pair before the last bump (rule 4). After an EndTxn's own bump it is
        the retry of a request whose answer was lost: the decided outcome answers it again, even
        while the markers are being written (a Complete* write in flight changes nothing)."""
        if meta.last_bump is EpochBump.TIMEOUT:
            return event.reject(ErrorCode.TRANSACTION_ABORTED)
        if meta.last_bump is not EpochBump.END:
            return event.reject(ErrorCode.PRODUCER_FENCED)  # a new instance took over
        assert meta.state.is_prepare or meta.state.is_complete, meta
        if meta.state.committed != event.commit:
            return event.reject(ErrorCode.INVALID_TXN_STATE)
        return _pair_response(event, meta)

    # --- admin ------------------------------------------------------------------------------------

    @_dispatch.register
    def _on_list(self, event: ListTransactionsRequested) -> None:
        found = tuple(
            _describe(transactional_id, meta)
            for transactional_id, meta in sorted(self._store.metadata.items())
            if (not event.states or meta.state in event.states)
            and (not event.producer_ids or meta.producer_id in event.producer_ids)
        )
        self._respond(
            RespondListTransactions(
                request_id=event.request_id, error=ErrorCode.NONE, transactions=found
            )
        )

    @_dispatch.register
    def _on_describe(self, event: DescribeTransactionsRequested) -> None:
        found = []
        for transactional_id in event.transactional_ids:
            meta = self._store.get(transactional_id)
            if meta is None:
                found.append(
                    TransactionDescription(
                        transactional_id=transactional_id,
                        error=ErrorCode.TRANSACTIONAL_ID_NOT_FOUND,
                    )
                )
            else:
                found.append(_describe(transactional_id, meta))
        self._respond(
            RespondDescribeTransactions(
                request_id=event.request_id, error=ErrorCode.NONE, transactions=tuple(found)
            )
        )

    # --- checking ---------------------------------------------------------------------------------

    def validate(self) -> None:
        """Assert every whole-state invariant (tests and simulations call this after each event)."""
        if self._status is not CoreStatus.ACTIVE:
            assert not self._writes and not self._write_of and not self._completions
            assert not self._parked and not self._parked_adds
            assert self._store == TransactionStore()
            return
        assert {w.transactional_id: t for t, w in self._writes.items()} == self._write_of
        assert all(token < self._next_token for token in self._writes)
        preparing = {tid for tid, meta in self._store.metadata.items() if meta.state.is_prepare}
        assert set(self._completions) == preparing, (sorted(self._completions), sorted(preparing))
        for completion in self._completions.values():
            assert not (completion.in_flight and completion.markers_written), completion
            assert not (completion.in_flight and completion.retry_at_ms is not None), completion
        for transactional_id in self._parked:
            # A parked InitProducerId waits for its fencing abort: being written, or completing.
            write = self._writes.get(self._write_of.get(transactional_id, -1))
            meta = self._store.get(transactional_id)
            assert (
                write is not None and write.kind in (WriteKind.PREPARE, WriteKind.COMPLETE)
            ) or (meta is not None and meta.state.is_prepare), transactional_id
        assert self._parked_add_total() <= self._config.parked_requests_max
        for transactional_id, queue in self._parked_adds.items():
            # Parked adds wait for the Complete* of the transaction whose EndTxn handed out their
            # pair (its Complete* write may be in flight), or for the add drained before them.
            assert 0 < len(queue) <= self._config.parked_requests_per_id_max, transactional_id
            assert transactional_id not in self._parked, transactional_id
            write = self._writes.get(self._write_of.get(transactional_id, -1))
            meta = self._store.get(transactional_id)
            assert meta is not None, transactional_id
            if meta.state.is_prepare:
                assert meta.last_bump is EpochBump.END, meta
                assert write is None or write.kind is WriteKind.COMPLETE, write
            else:
                assert write is not None and write.kind is WriteKind.ADD, (transactional_id, write)
            for add in queue:
                assert (add.producer_id, add.producer_epoch) == (
                    meta.producer_id,
                    meta.producer_epoch,
                ), (add, meta)
        for meta in self._store.metadata.values():
            _validate_metadata(meta)
        for write in self._writes.values():
            if write.value is not None:
                _validate_metadata(write.value)


def _validate_metadata(meta: TransactionMetadata) -> None:
    assert 0 <= meta.producer_epoch <= PRODUCER_EPOCH_MAX and meta.producer_id >= 0, meta
    assert list(meta.partitions) == sorted(set(meta.partitions)), meta
    if meta.last_bump is EpochBump.NONE:
        assert (meta.last_producer_id, meta.last_producer_epoch) == (-1, -1), meta
    if meta.state is State.ONGOING:
        assert meta.partitions and meta.start_timestamp_ms >= 0, meta
        assert meta.producer_epoch < PRODUCER_EPOCH_MAX, meta
    elif meta.state.is_prepare:
        assert meta.last_bump in (EpochBump.END, EpochBump.TIMEOUT, EpochBump.FENCE), meta
        assert 0 <= meta.last_producer_epoch < PRODUCER_EPOCH_MAX, meta
        assert meta.partitions, meta
    else:
        assert not meta.partitions, meta


def _pair_response(
    event: InitProducerIdRequested | EndTxnRequested, meta: TransactionMetadata
) -> Response:
    """Success for an InitProducerId or an EndTxn: the pair the producer continues with."""
    respond = RespondInitProducerId if isinstance(event, InitProducerIdRequested) else RespondEndTxn
    return respond(
        request_id=event.request_id,
        error=ErrorCode.NONE,
        producer_id=meta.producer_id,
        producer_epoch=meta.producer_epoch,
    )


def _add_response(request: Request, error: ErrorCode) -> Response:
    if isinstance(request, AddOffsetsRequested):
        return RespondAddOffsets(request_id=request.request_id, error=error)
    return RespondAddPartitions(request_id=request.request_id, error=error)


def _describe(transactional_id: str, meta: TransactionMetadata) -> TransactionDescription:
    return TransactionDescription(
        transactional_id=transactional_id,
        error=ErrorCode.NONE,
        state=meta.state,
        producer_id=meta.producer_id,
        producer_epoch=meta.producer_epoch,
        timeout_ms=meta.timeout_ms,
        partitions=meta.partitions,
        start_timestamp_ms=meta.start_timestamp_ms,
        last_update_timestamp_ms=meta.last_update_timestamp_ms,
    )
