"""The transactional producer's state machine and its coordinator requests (Kafka's
TransactionManager), used by `client.aio.producer.Producer` when it has a `transactional_id`.

Rules:
- States and transitions are Kafka's: UNINITIALIZED -(init_transactions)-> READY
  -(begin_transaction)-> IN_TRANSACTION -(commit/abort)-> READY. A call out of order raises
  `InvalidTxnStateError` before anything is sent. An error the transaction cannot survive (a
  failed send, TRANSACTION_ABORTED, a refused offset commit) moves it to ABORTABLE_ERROR: sends
  and commit raise it until `abort_transaction()`. Fencing (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH)
  is FATAL_ERROR: every later call raises `ProducerFencedError`; close the producer.
- Coordinator requests (InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn to the
  transaction coordinator, TxnOffsetCommit to the group's) are retried with backoff on a moved or
  loading coordinator (re-discovered with FindCoordinator), CONCURRENT_TRANSACTIONS (the previous
  transaction's markers are still being written), a retriable error or a lost connection, for
  at most `max_block_ms` per call, as Kafka bounds its transactional calls. CONCURRENT_TRANSACTIONS
  is retried after a short constant backoff (`CONCURRENT_TRANSACTIONS_BACKOFF_S`), every other
  error after `retry_backoff_ms`, doubled each attempt.
- EndTxn answers the producer's next epoch (KIP-890) and the producer restarts every partition's
  sequence at 0. After TRANSACTION_ABORTED (or a lost producer id) `abort_transaction()` recovers
  with InitProducerId carrying the current id and epoch (KIP-360) instead of EndTxn.
- A transaction the coordinator never heard of (no partition added, no offsets sent) ends
  locally, with no EndTxn, as Kafka's does.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

import trio

from client.aio.cluster import RETRY_BACKOFF_MAX_S, Cluster
from client.aio.group import COORDINATOR_ERRORS, MEMBERSHIP_ERRORS, CommitFailedError
from client.errors import (
    ClientClosedError,
    ClientError,
    InvalidTxnStateError,
    ProducerFencedError,
    RequestTimedOutError,
    TransactionAbortedError,
)
from client.types import ConsumerGroupMetadata, TopicPartition
from wire import codec
from wire.error_codes import BrokerError, ErrorCode


class TransactionalProducer(Protocol):
    """What a `TransactionManager` needs from its producer (`client.aio.producer.Producer`).

    Declared here, not imported, so the layers read top to bottom: the producer builds on the
    transaction manager, which knows its producer only through this interface.
    """

    _refuse: BaseException | None
    _cluster: Cluster

    @property
    def producer_id_and_epoch(self) -> tuple[int, int]: ...

    def _set_producer_id(self, pid: int, epoch: int, *, reset_sequences: bool = True) -> None: ...

    def _set_fatal(self, error: BaseException) -> None: ...

    async def _drop_pending_sends(self, error: BaseException) -> None: ...

    async def flush(self) -> None: ...


log = logging.getLogger("client.transactions")

TRANSACTION_TIMEOUT_MS_DEFAULT: Final = 60_000
# Backoff of coordinator retries: doubled each attempt up to this.
# Backoff after CONCURRENT_TRANSACTIONS, constant (Kafka's 20 ms for AddPartitionsToTxn): the
# coordinator is finishing the previous transaction, which takes a few milliseconds (markers and
# one record), so waiting retry_backoff_ms (100 ms) would cost most of a short transaction.
CONCURRENT_TRANSACTIONS_BACKOFF_S: Final = 0.02

# Errors that mean another instance took over this producer's id or epoch: fatal.
FENCED_CODES: Final = frozenset({ErrorCode.PRODUCER_FENCED, ErrorCode.INVALID_PRODUCER_EPOCH})
# Abortable errors after which the producer needs a new epoch before its next transaction.
_NEEDS_EPOCH_BUMP: Final = frozenset(
    {
        ErrorCode.TRANSACTION_ABORTED,
        ErrorCode.UNKNOWN_PRODUCER_ID,
        ErrorCode.INVALID_PRODUCER_ID_MAPPING,
        ErrorCode.OUT_OF_ORDER_SEQUENCE,
    }
)


class TxnState(enum.Enum):
    UNINITIALIZED = "Uninitialized"
    INITIALIZING = "Initializing"
    READY = "Ready"
    IN_TRANSACTION = "InTransaction"
    COMMITTING = "CommittingTransaction"
    ABORTING = "AbortingTransaction"
    ABORTABLE_ERROR = "AbortableError"
    FATAL_ERROR = "FatalError"


class TransactionManager:
    """One transactional producer's transaction state (see the module rules)."""

    def __init__(
        self,
        producer: TransactionalProducer,
        *,
        transactional_id: str,
        transaction_timeout_ms: int,
        retry_backoff_s: float,
        max_block_s: float,
    ) -> None:
        self._producer = producer
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self.retry_backoff_s = max(retry_backoff_s, 0.001)
        self.max_block_s = max_block_s
        self.state = TxnState.UNINITIALIZED
        # Partitions the coordinator has added to the current transaction.
        self.partitions: set[tuple[str, int]] = set()
        # True once the coordinator may know of the transaction (an add was sent): it must end
        # with EndTxn.
        self.started = False
        self.error: BaseException | None = None
        self.needs_epoch_bump = False
        self._coordinators: dict[tuple[int, str], int] = {}

    # --- state checks ---------------------------------------------------------------------------

    def send_refusal(self) -> BaseException | None:
        """Why a `send` must be refused now (None inside a healthy transaction)."""
        if self.state is TxnState.IN_TRANSACTION:
            return None
        if self.error is not None:
            return self.error
        if self.state in (TxnState.UNINITIALIZED, TxnState.INITIALIZING):
            return InvalidTxnStateError(
                f"transactional producer {self.transactional_id!r}: call init_transactions() "
                "and begin_transaction() before send()"
            )
        return InvalidTxnStateError(
            f"transactional producer {self.transactional_id!r} is not in a transaction "
            f"(state {self.state.value}): call begin_transaction() before send()"
        )

    def _require(self, action: str, *states: TxnState) -> None:
        if self.state is TxnState.FATAL_ERROR and self.error is not None:
            raise self.error
        if self.state not in states:
            hint = (
                f"; the transaction failed ({self.error}): call abort_transaction()"
                if self.state is TxnState.ABORTABLE_ERROR
                else ""
            )
            raise InvalidTxnStateError(
                f"cannot {action} in state {self.state.value} (transactional id "
                f"{self.transactional_id!r}){hint}"
            )

    def _set_state(self, state: TxnState) -> None:
        self.state = state
        self._producer._refuse = self.send_refusal()

    def fail(self, error: BaseException) -> BaseException:
        """Record `error` against the transaction (abortable, or fatal if it is fencing);
        return what the caller should raise."""
        if self.state is TxnState.FATAL_ERROR and self.error is not None:
            return self.error
        if isinstance(error, ProducerFencedError):
            self.error = error
            self._set_state(TxnState.FATAL_ERROR)
            self._producer._set_fatal(error)
            return error
        # While aborting (records dropped on purpose) or outside a transaction nothing is
        # recorded: only a failure of the transaction under way makes it abortable.
        if self.state in (TxnState.IN_TRANSACTION, TxnState.COMMITTING, TxnState.ABORTABLE_ERROR):
            if isinstance(error, BrokerError) and error.code in _NEEDS_EPOCH_BUMP:
                self.needs_epoch_bump = True
            if self.error is None:
                self.error = error
            self._set_state(TxnState.ABORTABLE_ERROR)
        return error

    # --- the application's calls ----------------------------------------------------------------

    async def init_transactions(self) -> None:
        """InitProducerId at the coordinator: fences older instances of this transactional id
        and completes (aborts) any transaction they left open."""
        self._require("init_transactions()", TxnState.UNINITIALIZED)
        self.state = TxnState.INITIALIZING
        try:
            response = await self._call(self._init_request(new=True), "InitProducerId")
        except BaseException:
            if self.state is TxnState.INITIALIZING:
                self.state = TxnState.UNINITIALIZED  # a timeout: the call may be repeated
            raise
        self._producer._set_producer_id(response.producer_id, response.producer_epoch)
        self._set_state(TxnState.READY)

    def begin_transaction(self) -> None:
        self._require("begin_transaction()", TxnState.READY)
        self.partitions.clear()
        self.started = False
        self.error = None
        self._set_state(TxnState.IN_TRANSACTION)

    async def add_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """AddPartitionsToTxn for partitions about to get their first batch of the transaction
        (called by the producer's sender; raises after recording the failure)."""
        wanted = sorted(set(partitions) - self.partitions)
        if not wanted:
            return
        self.started = True
        pid, epoch = self._producer.producer_id_and_epoch
        request = codec.AddPartitionsToTxnRequest(
            transactional_id=self.transactional_id,
            producer_id=pid,
            producer_epoch=epoch,
            partitions=tuple(codec.TopicPartitionRef(topic=t, partition=p) for t, p in wanted),
        )
        try:
            await self._call(request, "AddPartitionsToTxn")
        except (BrokerError, ClientError) as exc:
            raise self.fail(exc) from None
        self.partitions.update(wanted)

    async def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int] | Mapping[tuple[str, int], int],
        group_metadata: ConsumerGroupMetadata | str,
    ) -> None:
        """Commit a consumer group's offsets as part of the transaction: visible to the group
        only if the transaction commits (consume-transform-produce, exactly once)."""
        self._require("send_offsets_to_transaction()", TxnState.IN_TRANSACTION)
        metadata = (
            ConsumerGroupMetadata(group_metadata)
            if isinstance(group_metadata, str)
            else group_metadata
        )
        pid, epoch = self._producer.producer_id_and_epoch
        self.started = True
        try:
            await self._call(
                codec.AddOffsetsToTxnRequest(
                    transactional_id=self.transactional_id,
                    producer_id=pid,
                    producer_epoch=epoch,
                    group_id=metadata.group_id,
                ),
                "AddOffsetsToTxn",
            )
            commit = codec.TxnOffsetCommitRequest(
                transactional_id=self.transactional_id,
                group_id=metadata.group_id,
                producer_id=pid,
                producer_epoch=epoch,
                partitions=tuple(
                    codec.OffsetCommitPartition(topic=tp[0], partition=tp[1], offset=offset)
                    for tp, offset in sorted(offsets.items())
                ),
                generation=metadata.generation_id,
                member_id=metadata.member_id,
                group_instance_id=metadata.group_instance_id,
            )
            await self._call(commit, "TxnOffsetCommit", group_id=metadata.group_id)
        except (BrokerError, ClientError) as exc:
            raise self.fail(exc) from None

    async def commit_transaction(self) -> None:
        """Flush every send of the transaction, then EndTxn(commit). A failed send fails the
        commit (the transaction is then abortable); a timeout may be retried by calling again."""
        if self.state is TxnState.ABORTABLE_ERROR and self.error is not None:
            raise self.error
        self._require("commit_transaction()", TxnState.IN_TRANSACTION, TxnState.COMMITTING)
        self._set_state(TxnState.COMMITTING)
        await self._producer.flush()
        if self.error is not None:
            self._set_state(TxnState.ABORTABLE_ERROR)
            raise self.error
        if self.started:
            try:
                await self._end(committed=True)
            except (BrokerError, ClientError) as exc:
                if isinstance(exc, BrokerError) and not exc.retriable:
                    raise self.fail(exc) from None
                raise  # unknown outcome: commit_transaction() may be called again
        self._complete()

    async def abort_transaction(self) -> None:
        """Drop the sends not yet made, wait for those in flight, then EndTxn(abort) (or, after
        TRANSACTION_ABORTED, InitProducerId with the current epoch). The producer is then ready
        for `begin_transaction()` again."""
        self._require(
            "abort_transaction()",
            TxnState.IN_TRANSACTION,
            TxnState.ABORTABLE_ERROR,
            TxnState.COMMITTING,
            TxnState.ABORTING,
        )
        self._set_state(TxnState.ABORTING)
        await self._producer._drop_pending_sends(
            TransactionAbortedError("the transaction was aborted before this record was sent")
        )
        try:
            if self.needs_epoch_bump:
                await self._bump_epoch()
            elif self.started:
                try:
                    await self._end(committed=False)
                except BrokerError as exc:
                    if exc.code not in _NEEDS_EPOCH_BUMP:
                        raise
                    await self._bump_epoch()  # the coordinator aborted it already
        except BrokerError as exc:
            error = translate_error(exc, self.transactional_id)
            if isinstance(error, ProducerFencedError):
                raise self.fail(error) from None
            raise error from None
        self._complete()

    # --- plumbing -------------------------------------------------------------------------------

    def _complete(self) -> None:
        self.partitions.clear()
        self.started = False
        self.error = None
        self.needs_epoch_bump = False
        self._set_state(TxnState.READY)

    async def _end(self, *, committed: bool) -> None:
        pid, epoch = self._producer.producer_id_and_epoch
        response = await self._call(
            codec.EndTxnRequest(
                transactional_id=self.transactional_id,
                producer_id=pid,
                producer_epoch=epoch,
                committed=committed,
            ),
            "EndTxn",
        )
        if response.producer_epoch >= 0:
            new_pid = response.producer_id if response.producer_id >= 0 else pid
            self._producer._set_producer_id(new_pid, response.producer_epoch)
        else:  # a coordinator without KIP-890: same epoch, sequences go on
            self._producer._set_producer_id(pid, epoch, reset_sequences=False)

    async def _bump_epoch(self) -> None:
        """KIP-360: InitProducerId with the current id and epoch gives this producer a new
        epoch (the coordinator aborts whatever is left of the transaction)."""
        response = await self._call(self._init_request(new=False), "InitProducerId")
        self._producer._set_producer_id(response.producer_id, response.producer_epoch)

    def _init_request(self, *, new: bool) -> codec.InitProducerIdRequest:
        pid, epoch = (-1, -1) if new else self._producer.producer_id_and_epoch
        return codec.InitProducerIdRequest(
            transactional_id=self.transactional_id,
            transaction_timeout_ms=self.transaction_timeout_ms,
            producer_id=pid,
            producer_epoch=epoch,
        )

    async def _call(self, request: Any, what: str, *, group_id: str | None = None) -> Any:
        """Send `request` to the transaction coordinator (the group's with `group_id`) and
        return the answer, retrying as the module rules say; raise its error otherwise."""
        cluster = self._producer._cluster
        key = (
            (codec.COORDINATOR_KEY_GROUP, group_id)
            if group_id is not None
            else (codec.COORDINATOR_KEY_TRANSACTION, self.transactional_id)
        )
        deadline = trio.current_time() + self.max_block_s
        backoff = self.retry_backoff_s
        while True:
            try:
                node = self._coordinators.get(key)
                if node is None:
                    node = self._coordinators[key] = await cluster.find_coordinator(key[1], key[0])
                response = await cluster.call(request, node)
                error, message = _first_error(response)
            except ClientClosedError:
                raise
            except ClientError as exc:
                self._coordinators.pop(key, None)
                error, message, last = None, "", exc
            except BrokerError as exc:
                error, message = exc.code, exc.message
            if error is ErrorCode.NONE:
                return response
            if error is not None:
                last = BrokerError(error, message or error.name)
                if error in COORDINATOR_ERRORS:
                    self._coordinators.pop(key, None)
                if not error.retriable:
                    if group_id is not None and error in MEMBERSHIP_ERRORS:
                        raise CommitFailedError(
                            f"TxnOffsetCommit to group {group_id!r} refused ({error.name}): the "
                            "group rebalanced; abort the transaction and consume again"
                        )
                    raise translate_error(last, self.transactional_id)
            concurrent = error is ErrorCode.CONCURRENT_TRANSACTIONS
            delay = min(CONCURRENT_TRANSACTIONS_BACKOFF_S, backoff) if concurrent else backoff
            if trio.current_time() + delay >= deadline:
                log.warning("%s for %r gave up: %s", what, self.transactional_id, last)
                if isinstance(last, BrokerError):
                    raise last
                raise RequestTimedOutError(
                    f"{what} for transactional id {self.transactional_id!r} did not succeed "
                    f"within max_block_ms={self.max_block_s * 1000:.0f}: {last}"
                ) from last
            await trio.sleep(delay)
            if not concurrent:  # the previous transaction completing is no reason to slow down
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)


def _first_error(response: Any) -> tuple[ErrorCode, str]:
    """The response's own error, else its first per-partition error (a non-retriable one
    first: retrying cannot help the batch of requests then)."""
    if response.error is not ErrorCode.NONE:
        return response.error, response.error_message
    failed = [p for p in getattr(response, "partitions", ()) if p.error is not ErrorCode.NONE]
    failed.sort(key=lambda p: p.error.retriable)
    if failed:
        first = failed[0]
        return first.error, f"{first.topic}/{first.partition}: {first.error_message}"
    return ErrorCode.NONE, ""


def translate_error(error: BrokerError, transactional_id: str) -> BrokerError:
    """The broker's code as Kafka's exception."""
    if error.code in FENCED_CODES:
        return ProducerFencedError(
            f"transactional id {transactional_id!r}: {error.message}; another producer with this "
            "transactional id has started (or the broker bumped the epoch): close this producer",
            error.code,
        )
    if error.code is ErrorCode.TRANSACTION_ABORTED:
        return TransactionAbortedError(
            f"transactional id {transactional_id!r}: {error.message}; call abort_transaction() "
            "and start the transaction again"
        )
    if error.code is ErrorCode.INVALID_TXN_STATE:
        return InvalidTxnStateError(f"transactional id {transactional_id!r}: {error.message}")
    return error
