"""Idempotence and transactions: InitProducerId, the transaction coordinator's APIs, markers.

- InitProducerId without a transactional id is answered by any broker: a fresh producer id from
  this broker's allocator (broker/transactions/producer_ids.py), epoch 0.
- With a transactional id, it and AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, ListTransactions
  and DescribeTransactions go to the transaction coordinator (broker/transactions/service.py),
  which answers NOT_COORDINATOR unless this broker leads the id's `__transaction_state` partition.
- WriteTxnMarkers (coordinator -> partition leader) appends each marker in the reader, in arrival
  order, and answers once each is acknowledged (broker/transactions/markers.py).
- TxnOffsetCommit goes to the group coordinator, like OffsetCommit (broker/handlers/groups.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from broker.consumer_groups.group import TopicPartition
from broker.handlers.context import BrokerContext
from broker.handlers.reply import Deferred, answer_when_ready
from broker.transactions.markers import append_markers, await_markers
from broker.transactions.txn_records import TransactionState
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

# How long a WriteTxnMarkers waits for its markers' acknowledgements.
MARKER_TIMEOUT_S: Final = 30.0
# How long a coordinator request may wait for its write (and, for EndTxn, nothing more: the
# markers are written after the answer, as in Kafka).
COORDINATOR_TIMEOUT_S: Final = 30.0


def handle_init_producer_id(
    ctx: BrokerContext, request: codec.InitProducerIdRequest
) -> codec.InitProducerIdResponse | Deferred:
    if ctx.producer_ids is None:
        raise BrokerError(ErrorCode.BROKER_NOT_AVAILABLE, "the broker is still starting")
    if request.transactional_id is None:
        return codec.InitProducerIdResponse(
            producer_id=ctx.producer_ids.allocate(), producer_epoch=0
        )
    _check_id(request.transactional_id)
    service = _transactions(ctx)
    waiting = service.submit_init_producer_id(
        request.transactional_id,
        request.transaction_timeout_ms,
        request.producer_id,
        request.producer_epoch,
    )

    return _answer(service, waiting, codec.InitProducerIdResponse, _with_pair)


def handle_add_partitions_to_txn(
    ctx: BrokerContext, request: codec.AddPartitionsToTxnRequest
) -> Any:
    _check_id(request.transactional_id)
    partitions = tuple(TopicPartition(p.topic, p.partition) for p in request.partitions)
    for tp in partitions:
        if tp.partition < 0 or not tp.topic:
            raise BrokerError(ErrorCode.INVALID_REQUEST, f"bad partition {tp.topic}-{tp.partition}")

    service = _transactions(ctx)
    waiting = service.submit_add_partitions(
        request.transactional_id, request.producer_id, request.producer_epoch, partitions
    )

    def per_partition(response: Any) -> dict[str, Any]:
        return {
            "partitions": tuple(
                codec.TxnPartitionResult(
                    topic=tp.topic, partition=tp.partition, error=response.error
                )
                for tp in partitions
            )
        }

    return _answer(service, waiting, codec.AddPartitionsToTxnResponse, per_partition)


def handle_add_offsets_to_txn(ctx: BrokerContext, request: codec.AddOffsetsToTxnRequest) -> Any:
    _check_id(request.transactional_id)
    if not request.group_id:
        raise BrokerError(ErrorCode.INVALID_REQUEST, "group_id must not be empty")
    if ctx.groups is None:
        raise BrokerError(ErrorCode.COORDINATOR_NOT_AVAILABLE, "the group service is not running")
    service = _transactions(ctx)
    waiting = service.submit_add_offsets(
        request.transactional_id,
        request.producer_id,
        request.producer_epoch,
        request.group_id,
        ctx.groups.partition_of(request.group_id),
    )

    return _answer(service, waiting, codec.AddOffsetsToTxnResponse, lambda response: {})


def handle_end_txn(ctx: BrokerContext, request: codec.EndTxnRequest) -> Any:
    _check_id(request.transactional_id)
    service = _transactions(ctx)
    waiting = service.submit_end_txn(
        request.transactional_id, request.producer_id, request.producer_epoch, request.committed
    )

    return _answer(service, waiting, codec.EndTxnResponse, _with_pair)


def handle_list_transactions(
    ctx: BrokerContext, request: codec.ListTransactionsRequest
) -> codec.ListTransactionsResponse:
    """The transactions of the `__transaction_state` partitions this broker leads (a client
    asks every broker for the whole cluster's, as for groups)."""
    try:
        states = tuple(TransactionState(name) for name in request.states)
    except ValueError:
        known = ", ".join(state.value for state in TransactionState)
        raise BrokerError(
            ErrorCode.INVALID_REQUEST, f"unknown state in {list(request.states)}; known: {known}"
        ) from None
    listed = _transactions(ctx).list_transactions(states)
    return codec.ListTransactionsResponse(
        error=listed.error,
        transactions=tuple(
            codec.ListedTransaction(
                transactional_id=t.transactional_id, producer_id=t.producer_id, state=t.state.value
            )
            for t in listed.transactions
        ),
    )


def handle_describe_transactions(
    ctx: BrokerContext, request: codec.DescribeTransactionsRequest
) -> codec.DescribeTransactionsResponse:
    described = _transactions(ctx).describe_transactions(request.transactional_ids)
    return codec.DescribeTransactionsResponse(
        error=described.error,
        transactions=tuple(
            codec.TransactionDescription(
                transactional_id=t.transactional_id,
                error=t.error,
                error_message="" if t.error is ErrorCode.NONE else _message(t.error),
                state=t.state.value,
                producer_id=t.producer_id,
                producer_epoch=t.producer_epoch,
                transaction_timeout_ms=t.timeout_ms,
                transaction_start_ms=t.start_timestamp_ms,
                last_update_ms=t.last_update_timestamp_ms,
                partitions=tuple(
                    codec.TopicPartitionRef(topic=tp.topic, partition=tp.partition)
                    for tp in t.partitions
                ),
            )
            for t in described.transactions
        ),
    )


def handle_write_txn_markers(ctx: BrokerContext, request: codec.WriteTxnMarkersRequest) -> Deferred:
    appended = [(marker, append_markers(ctx, marker)) for marker in request.markers]

    async def wait() -> codec.WriteTxnMarkersResponse:
        results = [
            await await_markers(ctx, marker, outcomes, MARKER_TIMEOUT_S)
            for marker, outcomes in appended
        ]
        return codec.WriteTxnMarkersResponse(markers=tuple(results))

    return Deferred(wait)


_TIMED_OUT: Final = "the coordinator did not answer in time; retry"
_MESSAGES: Final = {
    ErrorCode.NONE: "",
    ErrorCode.NOT_COORDINATOR: "this broker is not (or no longer) the transaction coordinator",
    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: "the transaction coordinator is loading; retry",
    ErrorCode.CONCURRENT_TRANSACTIONS: "the previous transaction is still completing; retry",
    ErrorCode.PRODUCER_FENCED: "a newer producer with this transactional id exists: close this one",
    ErrorCode.INVALID_PRODUCER_ID_MAPPING: "the producer id does not belong to this "
    "transactional id; call init_transactions()",
    ErrorCode.INVALID_TXN_STATE: "the call does not fit the transaction's state",
    ErrorCode.TRANSACTION_ABORTED: "the coordinator aborted the transaction (it ran past "
    "transaction_timeout_ms); abort and begin again",
    ErrorCode.TRANSACTIONAL_ID_NOT_FOUND: "no such transactional id",
}


def _message(error: ErrorCode) -> str:
    return _MESSAGES.get(error, error.name.lower().replace("_", " "))


def _check_id(transactional_id: str) -> None:
    if not transactional_id:
        raise BrokerError(ErrorCode.INVALID_REQUEST, "transactional_id must not be empty")


def _answer(
    service: Any,
    waiting: Any,
    response_type: type[Any],
    fields: Callable[[Any], dict[str, Any]],
) -> Any:
    """The coordinator's answer as `response_type`: its error with a message a person can act
    on, plus `fields(answer)`; REQUEST_TIMED_OUT if none comes within COORDINATOR_TIMEOUT_S."""

    def convert(response: Any) -> Any:
        return response_type(
            error=response.error, error_message=_message(response.error), **fields(response)
        )

    timeout = response_type(error=ErrorCode.REQUEST_TIMED_OUT, error_message=_TIMED_OUT)
    return answer_when_ready(service, waiting, convert, COORDINATOR_TIMEOUT_S, timeout)


def _with_pair(response: Any) -> dict[str, Any]:
    """The producer id and epoch an InitProducerId or EndTxn answer hands out."""
    return {"producer_id": response.producer_id, "producer_epoch": response.producer_epoch}


def _transactions(ctx: BrokerContext) -> Any:
    service = ctx.transactions
    if service is None:
        raise BrokerError(
            ErrorCode.COORDINATOR_NOT_AVAILABLE, "the transaction coordinator is not running yet"
        )
    return service
