"""A tiny in-process broker speaking the real wire protocol, for client tests that need control.

It keeps each partition as a list of batches in memory and can be told to fail requests
(`fail_produce`: a queue of ErrorCodes answered before appending), which the real broker cannot.
Only the parts of each API that the client uses are implemented.

Idempotence and transactions as Kafka's broker does them, in miniature: per partition and producer
id the epoch and the last sequence (a gap is OUT_OF_ORDER_SEQUENCE, a batch it already has is
answered with its original offset, an unknown producer with a non-zero sequence is
UNKNOWN_PRODUCER_ID, an older epoch INVALID_PRODUCER_EPOCH); one transaction coordinator (this
broker) whose EndTxn writes COMMIT/ABORT markers and bumps the epoch (KIP-890); read_committed
fetches stop at the last stable offset and list the aborted transactions.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from wire import codec
from wire.batch import ControlType, build_control_batch, iter_batches, set_base_offset
from wire.error_codes import ErrorCode
from wire.framing import NEED_DATA, Frame, FrameConnection, Role

SEQUENCE_MODULUS = 2**31


@dataclasses.dataclass
class ProducerEntry:
    """A partition's state for one producer id."""

    epoch: int
    last_sequence: int
    # (base sequence, base offset) of its recent batches: a retry is answered, not stored.
    recent: collections.deque[tuple[int, int]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=5)
    )
    # First offset of its open transaction on this partition, or None.
    txn_first_offset: int | None = None


@dataclasses.dataclass
class FakeTransaction:
    producer_id: int
    epoch: int
    timeout_ms: int
    state: str = "Empty"
    partitions: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    groups: set[str] = dataclasses.field(default_factory=set)
    offsets: dict[tuple[str, str, int], int] = dataclasses.field(default_factory=dict)


class FakeBroker:
    """One fake broker. Several make a fake cluster: give them the same `leaders` dict
    ({(topic, partition): node id}, -1 for none; missing means this broker) and `peers` (every
    broker, listed in metadata). A broker that does not lead a partition answers NOT_LEADER for
    produce, fetch and list offsets, as the real one does. `kill()` stops serving and cuts every
    connection (a SIGKILL as the client sees it)."""

    def __init__(
        self,
        node_id: int = 1,
        *,
        leaders: dict[tuple[str, int], int] | None = None,
        peers: list[FakeBroker] | None = None,
    ) -> None:
        self.node_id = node_id
        self.leaders = leaders if leaders is not None else {}
        self.peers = peers
        self.metadata_requests = 0
        self.list_offsets_requests = 0
        self._scope: trio.CancelScope | None = None
        self.port = 0
        self.logs: dict[tuple[str, int], list[bytes]] = {}
        self.ends: dict[tuple[str, int], int] = {}
        self.topics: dict[str, int] = {}
        self.fail_produce: collections.deque[ErrorCode] = collections.deque()
        self.produce_requests = 0
        self.connections = 0
        # Set to drop every connection (once) when the next produce arrives.
        self.drop_next_produce = False
        # Set to leave every produce unanswered (a stuck broker).
        self.hold_produce = False
        # This many of the next produce requests are neither written nor answered (lost).
        self.unanswered_produces = 0
        # While set (an unset Event), produce requests wait before being handled, in order.
        self.produce_gate: trio.Event | None = None
        # Set to write the next produce, then drop the connection (the acknowledgement is lost).
        self.drop_after_next_append = False
        # ...and lose every producer's state with it (a failover to a leader that never saw it).
        self.forget_producers_on_drop = False
        # Every data batch header appended, per partition: (producer id, epoch, base sequence,
        # record count, transactional).
        self.appended: dict[tuple[str, int], list[tuple[int, int, int, int, bool]]] = {}
        # Idempotence and transactions.
        self.supports_idempotence = True
        self.producers: dict[tuple[str, int], dict[int, ProducerEntry]] = {}
        self._producer_ids = itertools.count(1000)
        self.init_producer_id_requests: list[codec.InitProducerIdRequest] = []
        self.transactions: dict[str, FakeTransaction] = {}
        self.txn_requests: list[Any] = []
        # Errors answered (one each, in order) to the next transaction-coordinator requests.
        self.fail_txn: collections.deque[ErrorCode] = collections.deque()
        self.aborted: dict[tuple[str, int], list[tuple[int, int, int]]] = {}  # pid, first, last
        self.committed_offsets: dict[tuple[str, str, int], int] = {}
        self.unstable_offset_fetches = 0
        self.offset_fetch_requests: list[codec.OffsetFetchRequest] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def create(self, topic: str, partitions: int) -> None:
        self.topics[topic] = partitions
        for p in range(partitions):
            self.logs[(topic, p)] = []
            self.ends[(topic, p)] = 0

    def append_control(
        self,
        topic: str,
        partition: int,
        control_type: ControlType = ControlType.LEADER_NOOP,
        producer_id: int = -1,
        producer_epoch: int = -1,
    ) -> None:
        """A control batch (a Raft term's leader no-op, or a transaction marker) at the log end."""
        key = (topic, partition)
        data = bytearray(
            build_control_batch(
                control_type,
                b"",
                timestamp_ms=0,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                transactional=control_type in (ControlType.COMMIT, ControlType.ABORT),
            )
        )
        set_base_offset(data, 0, self.ends[key])
        self.logs[key].append(bytes(data))
        self.ends[key] += 1

    def forget_producers(self) -> None:
        """Lose every partition's producer state (as a leader that never saw it would)."""
        self.producers.clear()

    def last_stable_offset(self, key: tuple[str, int]) -> int:
        open_firsts = [
            entry.txn_first_offset
            for entry in self.producers.get(key, {}).values()
            if entry.txn_first_offset is not None
        ]
        return min(open_firsts, default=self.ends[key])

    def leads(self, topic: str, partition: int) -> bool:
        return self.leaders.get((topic, partition), self.node_id) == self.node_id

    def kill(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        frames = FrameConnection(Role.SERVER)
        try:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    return
                frames.receive_data(data)
                while (frame := frames.next_frame()) is not NEED_DATA:
                    assert isinstance(frame, Frame)
                    if frame.api == "produce" and self.produce_gate is not None:
                        await self.produce_gate.wait()
                    reply = self._dispatch(frame)
                    if reply == "drop":
                        await stream.aclose()
                        return
                    if reply is not None:
                        header, payload = reply
                        await stream.send_all(frames.send(header, payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def _dispatch(self, frame: Frame) -> Any:
        cid = frame.correlation_id
        if frame.api == "handshake":
            apis = codec.supported_apis()
            if not self.supports_idempotence:
                apis = {k: v for k, v in apis.items() if k != "init_producer_id"}
            response: Any = codec.HandshakeResponse(
                node_id=self.node_id,
                protocol_version=1,
                apis=apis,
                max_frame_bytes=1 << 26,
            )
            return codec.encode_response(response, correlation_id=cid)
        request = codec.decode_request(frame.header, frame.payload)
        if isinstance(request, codec.InitProducerIdRequest) and not self.supports_idempotence:
            return codec.encode_error_response(
                frame.api,
                correlation_id=cid,
                error=ErrorCode.UNSUPPORTED_VERSION,
                error_message="unknown api 'init_producer_id'",
            )
        handler = getattr(self, f"_on_{request.API.value}")
        response = handler(request)
        if response is None or response == "drop":
            return response
        return codec.encode_response(response, correlation_id=cid)

    def _on_metadata(self, request: codec.MetadataRequest) -> codec.MetadataResponse:
        self.metadata_requests += 1
        names = request.topics if request.topics is not None else tuple(self.topics)
        topics = []
        for name in names:
            if name not in self.topics:
                topics.append(codec.TopicMetadata(name=name, error=ErrorCode.UNKNOWN_TOPIC))
                continue
            parts = []
            for p in range(self.topics[name]):
                leader = self.leaders.get((name, p), self.node_id)
                error = ErrorCode.LEADER_NOT_AVAILABLE if leader < 0 else ErrorCode.NONE
                parts.append(codec.PartitionMetadata(partition=p, leader_id=leader, error=error))
            topics.append(codec.TopicMetadata(name=name, partitions=tuple(parts)))
        brokers = tuple(
            codec.BrokerInfo(node_id=b.node_id, host="127.0.0.1", port=b.port)
            for b in (self.peers or [self])
        )
        return codec.MetadataResponse(
            brokers=brokers, controller_id=self.node_id, topics=tuple(topics)
        )

    def _on_cluster_status(
        self, request: codec.ClusterStatusRequest
    ) -> codec.ClusterStatusResponse:
        # A cluster of one that is always ready: what `broker-cli` asks before each command.
        broker = codec.ClusterBroker(
            node_id=self.node_id, host="127.0.0.1", port=self.port, state="active",
            broker_epoch=0, replica_count=0, leader_count=0, preferred_leader_count=0,
        )  # fmt: skip
        return codec.ClusterStatusResponse(
            controller_id=self.node_id, metadata_index=0, brokers=(broker,),
            topic_count=len(self.topics), partition_count=sum(self.topics.values()),
        )  # fmt: skip

    def _on_describe_topics(
        self, request: codec.DescribeTopicsRequest
    ) -> codec.DescribeTopicsResponse:
        # What `broker-cli consume` asks first (does the topic exist, how many partitions).
        described = []
        for name in request.topics if request.topics is not None else tuple(self.topics):
            if name not in self.topics:
                described.append(codec.TopicDescription(name=name, error=ErrorCode.UNKNOWN_TOPIC))
                continue
            parts = tuple(
                codec.PartitionDescription(partition=p, leader_id=self.node_id)
                for p in range(self.topics[name])
            )
            described.append(
                codec.TopicDescription(
                    name=name, partition_count=len(parts), replication_factor=1, partitions=parts
                )
            )
        return codec.DescribeTopicsResponse(topics=tuple(described))

    def _not_leader(self, topic: str, partition: int) -> dict[str, Any]:
        return {
            "topic": topic,
            "partition": partition,
            "error": ErrorCode.NOT_LEADER,
            "error_message": f"broker {self.node_id} is not the leader of {topic}-{partition}",
        }

    def _on_produce(self, request: codec.ProduceRequest) -> Any:
        self.produce_requests += 1
        if self.hold_produce:
            return None
        if self.unanswered_produces:
            self.unanswered_produces -= 1
            return None
        if self.drop_next_produce:
            self.drop_next_produce = False
            return "drop"
        results = []
        for part in request.partitions:
            key = (part.topic, part.partition)
            if not self.leads(*key):
                results.append(codec.ProducePartitionResult(**self._not_leader(*key)))
                continue
            if self.fail_produce:
                code = self.fail_produce.popleft()
                results.append(
                    codec.ProducePartitionResult(
                        topic=part.topic, partition=part.partition, error=code, error_message="x"
                    )
                )
                continue
            result = self._append(key, part.records)
            results.append(result)
            if self.drop_after_next_append and result.error is ErrorCode.NONE:
                self.drop_after_next_append = False
                if self.forget_producers_on_drop:
                    self.forget_producers()
                return "drop"
        if request.acks == codec.ACKS_NONE:
            return None
        return codec.ProduceResponse(partitions=tuple(results))

    def _append(self, key: tuple[str, int], records: bytes) -> codec.ProducePartitionResult:
        topic, partition = key
        data = bytearray(records)
        headers = [header for _, header in iter_batches(data)]
        first = headers[0]
        if first.producer_id >= 0:
            error = self._check_sequence(key, first)
            if isinstance(error, int):  # a duplicate: its original offset
                return codec.ProducePartitionResult(
                    topic=topic, partition=partition, base_offset=error
                )
            if error is not None:
                return codec.ProducePartitionResult(
                    topic=topic, partition=partition, error=error, error_message="fake"
                )
        base = self.ends[key]
        for position, header in iter_batches(data):
            set_base_offset(data, position, self.ends[key])
            self.ends[key] += header.last_offset_delta + 1
            self.appended.setdefault(key, []).append(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                    header.record_count,
                    header.is_transactional,
                )
            )
        self.logs[key].append(bytes(data))
        if first.producer_id >= 0:
            entry = self.producers[key][first.producer_id]
            entry.recent.append((first.base_sequence, base))
            if first.is_transactional and entry.txn_first_offset is None:
                entry.txn_first_offset = base
        return codec.ProducePartitionResult(topic=topic, partition=partition, base_offset=base)

    def _check_sequence(self, key: tuple[str, int], header: Any) -> ErrorCode | int | None:
        """None to append; an offset for a duplicate; an error code to refuse."""
        entries = self.producers.setdefault(key, {})
        entry = entries.get(header.producer_id)
        sequence, epoch = header.base_sequence, header.producer_epoch
        last = (sequence + header.record_count - 1) % SEQUENCE_MODULUS
        if entry is None:
            if sequence != 0:
                return ErrorCode.UNKNOWN_PRODUCER_ID
            entries[header.producer_id] = ProducerEntry(epoch=epoch, last_sequence=last)
            return None
        if epoch < entry.epoch:
            return ErrorCode.INVALID_PRODUCER_EPOCH
        if epoch > entry.epoch:
            if sequence != 0:
                return ErrorCode.OUT_OF_ORDER_SEQUENCE
            entry.epoch, entry.last_sequence = epoch, last
            entry.recent.clear()
            return None
        for base_sequence, base_offset in entry.recent:
            if base_sequence == sequence:
                return base_offset
        if sequence != (entry.last_sequence + 1) % SEQUENCE_MODULUS:
            return ErrorCode.OUT_OF_ORDER_SEQUENCE
        entry.last_sequence = last
        return None

    # --- idempotence and transactions ---------------------------------------------------------

    def _on_init_producer_id(
        self, request: codec.InitProducerIdRequest
    ) -> codec.InitProducerIdResponse:
        self.init_producer_id_requests.append(request)
        if request.transactional_id is None:
            return codec.InitProducerIdResponse(
                producer_id=next(self._producer_ids), producer_epoch=0
            )
        error = self._txn_error(request)
        if error is not None:
            return codec.InitProducerIdResponse(error=error, error_message="fake")
        txn = self.transactions.get(request.transactional_id)
        if txn is None:
            txn = self.transactions[request.transactional_id] = FakeTransaction(
                next(self._producer_ids), 0, request.transaction_timeout_ms
            )
        else:
            if request.producer_id >= 0 and (request.producer_id, request.producer_epoch) != (
                txn.producer_id,
                txn.epoch,
            ):
                return codec.InitProducerIdResponse(error=ErrorCode.PRODUCER_FENCED)
            if txn.state == "Ongoing":
                self._end(request.transactional_id, txn, committed=False)
            txn.epoch += 1
        txn.state = "Empty"
        return codec.InitProducerIdResponse(producer_id=txn.producer_id, producer_epoch=txn.epoch)

    def _txn_error(self, request: Any) -> ErrorCode | None:
        self.txn_requests.append(request)
        if self.fail_txn:
            return self.fail_txn.popleft()
        txn = self.transactions.get(getattr(request, "transactional_id", None) or "")
        epoch = getattr(request, "producer_epoch", -1)
        fenced = txn is not None and (epoch < txn.epoch or request.producer_id != txn.producer_id)
        if fenced and not isinstance(request, codec.InitProducerIdRequest):
            return ErrorCode.PRODUCER_FENCED
        return None

    def _on_find_coordinator(
        self, request: codec.FindCoordinatorRequest
    ) -> codec.FindCoordinatorResponse:
        return codec.FindCoordinatorResponse(node_id=self.node_id, host="127.0.0.1", port=self.port)

    def _on_add_partitions_to_txn(
        self, request: codec.AddPartitionsToTxnRequest
    ) -> codec.AddPartitionsToTxnResponse:
        error = self._txn_error(request)
        if error is not None:
            return codec.AddPartitionsToTxnResponse(error=error, error_message="fake")
        txn = self.transactions[request.transactional_id]
        txn.state = "Ongoing"
        txn.partitions.update((p.topic, p.partition) for p in request.partitions)
        return codec.AddPartitionsToTxnResponse(
            partitions=tuple(
                codec.TxnPartitionResult(topic=p.topic, partition=p.partition)
                for p in request.partitions
            )
        )

    def _on_add_offsets_to_txn(
        self, request: codec.AddOffsetsToTxnRequest
    ) -> codec.AddOffsetsToTxnResponse:
        error = self._txn_error(request)
        if error is not None:
            return codec.AddOffsetsToTxnResponse(error=error, error_message="fake")
        txn = self.transactions[request.transactional_id]
        txn.state = "Ongoing"
        txn.groups.add(request.group_id)
        return codec.AddOffsetsToTxnResponse()

    def _on_txn_offset_commit(
        self, request: codec.TxnOffsetCommitRequest
    ) -> codec.TxnOffsetCommitResponse:
        error = self._txn_error(request)
        if error is not None:
            return codec.TxnOffsetCommitResponse(error=error, error_message="fake")
        txn = self.transactions[request.transactional_id]
        for p in request.partitions:
            txn.offsets[(request.group_id, p.topic, p.partition)] = p.offset
        return codec.TxnOffsetCommitResponse(
            partitions=tuple(
                codec.OffsetCommitPartitionResult(topic=p.topic, partition=p.partition)
                for p in request.partitions
            )
        )

    def _on_end_txn(self, request: codec.EndTxnRequest) -> codec.EndTxnResponse:
        error = self._txn_error(request)
        if error is not None:
            return codec.EndTxnResponse(error=error, error_message="fake")
        txn = self.transactions[request.transactional_id]
        if txn.state != "Ongoing":
            return codec.EndTxnResponse(error=ErrorCode.INVALID_TXN_STATE, error_message="fake")
        self._end(request.transactional_id, txn, committed=request.committed)
        txn.epoch += 1
        return codec.EndTxnResponse(producer_id=txn.producer_id, producer_epoch=txn.epoch)

    def _end(self, transactional_id: str, txn: FakeTransaction, *, committed: bool) -> None:
        marker = ControlType.COMMIT if committed else ControlType.ABORT
        for key in sorted(txn.partitions):
            entry = self.producers.get(key, {}).get(txn.producer_id)
            first = entry.txn_first_offset if entry is not None else None
            if not committed and first is not None:
                self.aborted.setdefault(key, []).append((txn.producer_id, first, self.ends[key]))
            self.append_control(*key, marker, txn.producer_id, txn.epoch)
            if entry is not None:
                entry.txn_first_offset = None
        if committed:
            self.committed_offsets.update(txn.offsets)
        txn.partitions.clear()
        txn.groups.clear()
        txn.offsets.clear()
        txn.state = "CompleteCommit" if committed else "CompleteAbort"

    def _on_list_transactions(
        self, request: codec.ListTransactionsRequest
    ) -> codec.ListTransactionsResponse:
        return codec.ListTransactionsResponse(
            transactions=tuple(
                codec.ListedTransaction(
                    transactional_id=tid, producer_id=txn.producer_id, state=txn.state
                )
                for tid, txn in sorted(self.transactions.items())
                if not request.states or txn.state in request.states
            )
        )

    def _on_describe_transactions(
        self, request: codec.DescribeTransactionsRequest
    ) -> codec.DescribeTransactionsResponse:
        out = []
        for tid in request.transactional_ids:
            txn = self.transactions.get(tid)
            if txn is None:
                out.append(
                    codec.TransactionDescription(
                        transactional_id=tid, error=ErrorCode.TRANSACTIONAL_ID_NOT_FOUND
                    )
                )
                continue
            out.append(
                codec.TransactionDescription(
                    transactional_id=tid,
                    state=txn.state,
                    producer_id=txn.producer_id,
                    producer_epoch=txn.epoch,
                    transaction_timeout_ms=txn.timeout_ms,
                    transaction_start_ms=0,
                    last_update_ms=0,
                    partitions=tuple(
                        codec.TopicPartitionRef(topic=t, partition=p)
                        for t, p in sorted(txn.partitions)
                    ),
                )
            )
        return codec.DescribeTransactionsResponse(transactions=tuple(out))

    def _on_offset_fetch(self, request: codec.OffsetFetchRequest) -> codec.OffsetFetchResponse:
        self.offset_fetch_requests.append(request)
        parts = request.partitions or ()
        if self.unstable_offset_fetches and request.require_stable:
            self.unstable_offset_fetches -= 1
            return codec.OffsetFetchResponse(
                partitions=tuple(
                    codec.OffsetFetchPartitionResult(
                        topic=p.topic, partition=p.partition, error=ErrorCode.UNSTABLE_OFFSET_COMMIT
                    )
                    for p in parts
                )
            )
        return codec.OffsetFetchResponse(
            partitions=tuple(
                codec.OffsetFetchPartitionResult(
                    topic=p.topic,
                    partition=p.partition,
                    offset=self.committed_offsets.get((request.group_id, p.topic, p.partition), -1),
                )
                for p in parts
            )
        )

    def _on_fetch(self, request: codec.FetchRequest) -> codec.FetchResponse:
        results = []
        for part in request.partitions:
            key = (part.topic, part.partition)
            if not self.leads(*key):
                results.append(codec.FetchPartitionResult(**self._not_leader(*key)))
                continue
            committed = request.isolation_level == codec.READ_COMMITTED
            end = self.last_stable_offset(key) if committed else self.ends[key]
            data = b""
            for batch in self.logs[key]:
                header = next(iter_batches(batch))[1]
                if header.next_offset > part.fetch_offset and header.base_offset < end:
                    data += batch
            aborted = (
                tuple(
                    codec.AbortedTransaction(producer_id=pid, first_offset=first)
                    for pid, first, last in self.aborted.get(key, [])
                    if last >= part.fetch_offset
                )
                if committed
                else ()
            )
            results.append(
                codec.FetchPartitionResult(
                    topic=part.topic,
                    partition=part.partition,
                    high_watermark=self.ends[key],
                    records=data,
                    last_stable_offset=end if committed else -1,
                    aborted_transactions=aborted,
                )
            )
        return codec.FetchResponse(partitions=tuple(results))

    def _on_list_offsets(self, request: codec.ListOffsetsRequest) -> codec.ListOffsetsResponse:
        self.list_offsets_requests += 1
        results = []
        for part in request.partitions:
            if not self.leads(part.topic, part.partition):
                results.append(
                    codec.ListOffsetsPartitionResult(**self._not_leader(part.topic, part.partition))
                )
                continue
            key = (part.topic, part.partition)
            end = (
                self.last_stable_offset(key)
                if request.isolation_level == codec.READ_COMMITTED
                else self.ends[key]
            )
            offset = 0 if part.timestamp == codec.EARLIEST_TIMESTAMP else end
            results.append(
                codec.ListOffsetsPartitionResult(
                    topic=part.topic, partition=part.partition, offset=offset
                )
            )
        return codec.ListOffsetsResponse(partitions=tuple(results))


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[FakeBroker]:
    """A fake broker serving topic "t" with two partitions, stopped with the test's nursery."""
    broker = FakeBroker()
    broker.create("t", 2)
    await nursery.start(broker.serve)
    yield broker
