"""The trio-native producer: the accumulator's sender and the per-record `send` hot path.

Rules:
- `send_nowait` is the hot path, shared with the blocking facade (called from any thread). It
  validates, picks the partition and appends a plain tuple to the accumulator; nothing else
  (one attribute test refuses sends a transactional producer may not make now). `send` first
  tries its fast path: the common record (a bytes value, nothing else given) joins its topic's
  open sticky batch inline, with the accumulator's own checks and no further call; anything
  else, or any limit reached, takes the general path.
- Adaptive batching (`adaptive_batching=True`, the default): an open batch leaves as soon as
  its partition has nothing in flight, and grows while a request is out (up to `batch_bytes`,
  or `linger_ms` when more may be in flight). Low rates get one-record batches with no wait;
  high rates get big batches, sized by the round trip (client/accumulator.py).
- The sender task drains ready batches (at most `max_in_flight` per partition in flight), builds
  each with one `build_batch_columns` call (one msgpack call for the whole batch), groups them by
  leader into one Produce request per broker, and completes their futures from the response.
  Retriable failures go back to the head of their partition's queue after
  `retry_backoff_ms * 2**attempt` (capped), until `retries` or `delivery_timeout_ms` runs out;
  then the batch fails with the last error.
- One writer task per broker writes that broker's Produce requests in the order the sender
  drained them (`Cluster.send_request`); their answers come back through callbacks, with one
  task for their timeouts (client/aio/answers.py), not a task per request. So a partition's
  pipelined batches reach its leader in order.
- Idempotence (the default, as Kafka >= 3.0): before the first send, InitProducerId gives a
  producer id and epoch; each batch is numbered at its first send with its partition's next
  sequence (per record, as Kafka: the next batch starts at base + record count, modulo 2**31)
  and keeps that number through every retry, so the leader answers a batch it already has with
  its original offsets instead of storing it twice. With up to 5 batches per partition in flight,
  a failure makes the later ones come back OUT_OF_ORDER_SEQUENCE: they are requeued behind the
  failed one (its creation order) and resent one at a time, in sequence order. OUT_OF_ORDER_SEQUENCE
  or UNKNOWN_PRODUCER_ID for a partition's oldest unacknowledged batch means the leader lost this
  producer's state, and a batch that failed for good leaves a gap in the sequence: both make the
  sender wait for its requests in flight, then ask for a new producer id (InitProducerId with the
  current one, KIP-360); queued batches are renumbered from 0, except those whose fate is unknown
  (an attempt timed out or lost its connection), which fail rather than risk a duplicate.
  INVALID_PRODUCER_EPOCH / PRODUCER_FENCED is fatal. A broker without InitProducerId (older
  than idempotence) gets a warning and a non-idempotent producer.
- Transactions (`transactional_id`): `client/aio/transactions.py` holds the state machine. A
  transaction's first batch to a partition waits for AddPartitionsToTxn (one request for every
  partition waiting), then goes out with the transactional attribute; any failed batch makes the
  transaction abortable. EndTxn's new epoch restarts every partition's sequence at 0.
- acks=0 gets no response: batches complete at once with offset -1 after the write.
- Leader changes: NOT_LEADER, LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC, a dead connection or an
  unreachable leader forget the topic's leaders and start one metadata refresh per topic; a batch
  whose partition has no leader known is not sent, just retried. Without idempotence (and
  `max_in_flight_per_partition=1`, then the default) the failed batch goes back first, so order
  survives a failover, but a batch whose acknowledgement was lost is stored again when retried.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Unpack

import msgpack
import trio

from client._gc import gc_paused
from client.accumulator import (
    RECORD_OVERHEAD_BYTES,
    DeliveryCallback,
    ProducerBatch,
    RecordAccumulator,
    RecordFuture,
)
from client.aio._base import AsyncClientBase
from client.aio.answers import AnswerWatch
from client.aio.cluster import (
    CLIENT_ID_DEFAULT,
    METADATA_STALE_CODES,
    REQUEST_TIMEOUT_MS_DEFAULT,
)
from client.aio.leader_wait import LeaderPoll, LeaderWait
from client.aio.metadata_refresh import METADATA_MAX_AGE_MS_DEFAULT
from client.aio.transactions import (
    FENCED_CODES,
    TRANSACTION_TIMEOUT_MS_DEFAULT,
    TransactionManager,
    TxnState,
)
from client.bulk import BulkAppend, SendManyFuture
from client.errors import (
    BrokerUnavailableError,
    BufferFullError,
    ClientClosedError,
    ClientError,
    InvalidTxnStateError,
    ProducerFencedError,
)
from client.partitioner import partition_for_key
from client.security import SecurityOptions
from client.serialization import Serializer, as_bytes, normalise_headers, serialize
from client.types import ConsumerGroupMetadata, RecordMetadata, TopicPartition
from wire import codec
from wire.batch import (
    MAX_BATCH_BYTES_DEFAULT,
    Compression,
    build_batch_columns,
    increment_sequence,
)
from wire.config_error import ConfigError
from wire.connection import BrokerConnection
from wire.error_codes import BrokerError, ErrorCode
from wire.framing import Frame

log = logging.getLogger("client.producer")

LINGER_MS_DEFAULT = 5
# A batch is sealed at this size; well under the broker's default max batch (1 MiB).
BATCH_BYTES_DEFAULT = 512 * 1024
BUFFER_MEMORY_BYTES_DEFAULT = 32 * 1024 * 1024
MAX_BLOCK_MS_DEFAULT = 60_000
# Like Kafka's producer: retry retriable errors until delivery_timeout_ms, however many times
# (a leader failover takes an election plus a metadata update).
RETRIES_DEFAULT = 2**31 - 1
RETRY_BACKOFF_MS_DEFAULT = 100
RETRY_BACKOFF_MAX_MS = 1_000
DELIVERY_TIMEOUT_MS_DEFAULT = 120_000
# Records in one batch; bounds the msgpack work of one build and the broker's per-batch limit.
MAX_RECORDS_PER_BATCH_DEFAULT = 100_000
# Batches of one partition in flight at once. Without idempotence 1 keeps records in send order
# even across retries; more pipelines a busy partition, but a batch that fails while a later one
# succeeds lands after it on retry (Kafka's max.in.flight behaviour without idempotence). With
# idempotence the sequence numbers keep the order with up to 5, Kafka's default and limit.
MAX_IN_FLIGHT_PER_PARTITION_DEFAULT = 1
MAX_IN_FLIGHT_IDEMPOTENT_DEFAULT = 5
MAX_IN_FLIGHT_IDEMPOTENT_LIMIT = 5
# Sequence numbers are i32 and wrap to 0 after 2**31 - 1 (Kafka's DefaultRecordBatch).
# Errors after which the broker certainly did not write the batch: a retry under a new producer
# id cannot duplicate it. After any other failure (a timeout, a lost connection) its fate is
# unknown.
_UNWRITTEN = frozenset(
    {
        ErrorCode.NOT_LEADER,
        ErrorCode.LEADER_NOT_AVAILABLE,
        ErrorCode.UNKNOWN_TOPIC,
        ErrorCode.UNKNOWN_PARTITION,
        ErrorCode.BROKER_NOT_AVAILABLE,
        ErrorCode.OUT_OF_ORDER_SEQUENCE,
        ErrorCode.UNKNOWN_PRODUCER_ID,
        ErrorCode.INVALID_PRODUCER_EPOCH,
        ErrorCode.PRODUCER_FENCED,
        ErrorCode.CORRUPT_MESSAGE,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.INVALID_RECORD,
        ErrorCode.RECORD_LIST_TOO_LARGE,
        ErrorCode.UNSUPPORTED_COMPRESSION,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.INVALID_TXN_STATE,
        ErrorCode.THROTTLED,
    }
)
_SEQUENCE_LOST = frozenset({ErrorCode.OUT_OF_ORDER_SEQUENCE, ErrorCode.UNKNOWN_PRODUCER_ID})
# InitProducerId answered by a broker that has no such API (older than idempotence).
_UNSUPPORTED = frozenset({ErrorCode.UNSUPPORTED_VERSION, ErrorCode.INVALID_REQUEST})
# Largest single record (key + value + overhead); the broker refuses batches above its
# max.message.bytes (1 MiB by default), so a bigger record could never be delivered.
MAX_RECORD_BYTES_DEFAULT = MAX_BATCH_BYTES_DEFAULT - 1024

_ACKS = {"all": codec.ACKS_ALL, -1: codec.ACKS_ALL, 1: codec.ACKS_LEADER, "1": codec.ACKS_LEADER,
         "leader": codec.ACKS_LEADER, 0: codec.ACKS_NONE, "0": codec.ACKS_NONE}  # fmt: skip
_COMPRESSION = {None: Compression.NONE, "none": Compression.NONE, "gzip": Compression.GZIP,
                "zstd": Compression.ZSTD, "lz4": Compression.LZ4}  # fmt: skip
_TRANSPORT_ERRORS = (ClientError,)
_time_ns = time.time_ns
# A trio task that sends in a tight loop yields at least this often (see `send`).
YIELD_EVERY_SENDS = 256


class NeedMetadataError(Exception):
    """Internal: the topic's partition count is not cached yet; load it and call again."""


class Producer(AsyncClientBase):
    """Publish records to topics: `async with Producer("127.0.0.1:9092") as p: await p.send(...)`.

    Options are Kafka's, in Python spelling (see docs/client.md for each). Idempotent unless
    `enable_idempotence=False` (or, left unset, a conflicting `acks`/`retries`/in-flight option);
    transactional with `transactional_id` (see docs/transactions.md).
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        acks: str | int = "all",
        linger_ms: float = LINGER_MS_DEFAULT,
        adaptive_batching: bool = True,
        batch_bytes: int = BATCH_BYTES_DEFAULT,
        compression: str | None = None,
        buffer_memory_bytes: int = BUFFER_MEMORY_BYTES_DEFAULT,
        max_block_ms: int = MAX_BLOCK_MS_DEFAULT,
        retries: int = RETRIES_DEFAULT,
        retry_backoff_ms: int = RETRY_BACKOFF_MS_DEFAULT,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS_DEFAULT,
        max_records_per_batch: int = MAX_RECORDS_PER_BATCH_DEFAULT,
        max_in_flight_per_partition: int | None = None,
        max_in_flight_requests_per_connection: int | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES_DEFAULT,
        enable_idempotence: bool | None = None,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = TRANSACTION_TIMEOUT_MS_DEFAULT,
        client_id: str = CLIENT_ID_DEFAULT,
        thread_safe: bool = False,
        key_serializer: Serializer | None = None,
        value_serializer: Serializer | None = None,
        bootstrap_servers: str | Sequence[str] | None = None,
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS_DEFAULT,
        **security: Unpack[SecurityOptions],
    ) -> None:
        """`thread_safe=True` lets threads other than the trio loop's call `send_nowait` (the
        blocking facade does); without it the accumulator skips its lock.
        `metadata_max_age_ms`: how often the topics written to are looked up again (Kafka's
        default, 5 minutes), so partitions added since receive records too.

        `max_in_flight_requests_per_connection` is Kafka's name for `max_in_flight_per_partition`
        (batches of one partition in flight): default 5 with idempotence, else 1.
        `key_serializer`/`value_serializer`: `f(object) -> bytes` applied by `send`
        (`client.serialization`). `bootstrap_servers`: kafka-python's name for `bootstrap`.
        `adaptive_batching=False` makes every batch wait `linger_ms` (Kafka's behaviour) instead
        of leaving at once when its partition has nothing in flight.
        """
        super().__init__(
            bootstrap,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            bootstrap_servers=bootstrap_servers,
            **security,
        )
        self._serializers = (
            (key_serializer, value_serializer)
            if key_serializer is not None or value_serializer is not None
            else None
        )
        if acks not in _ACKS:
            raise ConfigError("acks", f"expected 'all', 1 or 0, got {acks!r}")
        if compression not in _COMPRESSION:
            raise ConfigError("compression", f"expected None, gzip, zstd or lz4: {compression!r}")
        _positive("batch_bytes", batch_bytes)
        _positive("buffer_memory_bytes", buffer_memory_bytes)
        _positive("max_records_per_batch", max_records_per_batch)
        if linger_ms < 0 or retries < 0 or retry_backoff_ms < 0 or max_block_ms < 0:
            raise ConfigError("linger_ms/retries/retry_backoff_ms/max_block_ms", "must be >= 0")
        _positive("metadata_max_age_ms", metadata_max_age_ms)
        self.metadata_max_age_s = metadata_max_age_ms / 1000.0
        self.acks = _ACKS[acks]
        in_flight = _in_flight_option(
            max_in_flight_per_partition, max_in_flight_requests_per_connection
        )
        self.enable_idempotence = _idempotence(
            enable_idempotence, transactional_id, acks=acks, retries=retries, in_flight=in_flight
        )
        _positive("transaction_timeout_ms", transaction_timeout_ms)
        self._in_flight_explicit = in_flight is not None
        if in_flight is None:
            in_flight = (
                MAX_IN_FLIGHT_IDEMPOTENT_DEFAULT
                if self.enable_idempotence
                else MAX_IN_FLIGHT_PER_PARTITION_DEFAULT
            )
        self.compression = _COMPRESSION[compression]
        self.max_block_s = max_block_ms / 1000.0
        self.retries = retries
        self.retry_backoff_s = retry_backoff_ms / 1000.0
        self.delivery_timeout_s = delivery_timeout_ms / 1000.0
        self.max_record_bytes = max_record_bytes
        # The fast path's lanes (client/accumulator.py): none open when serializers, a lock or
        # a transaction (whose state may refuse sends) are in play, which it does not handle. A
        # fatal error closes them, and `_append` refuses sends before one opens again.
        fast = self._serializers is None and not thread_safe and transactional_id is None
        self._acc = RecordAccumulator(
            batch_bytes=batch_bytes,
            linger_ms=linger_ms,
            buffer_memory_bytes=buffer_memory_bytes,
            max_records_per_batch=max_records_per_batch,
            adaptive=adaptive_batching,
            thread_safe=thread_safe,
            lane_record_bytes=max_record_bytes if fast else None,
        )
        self._lanes = self._acc.lanes
        self._batch_bytes = batch_bytes
        # Kept for every batch the sender builds (wire.batch.build_batch_columns says why).
        self._packer = msgpack.Packer(use_bin_type=True)
        self._counts: dict[str, int] = {}
        self.max_in_flight_per_partition = in_flight
        # Batches in flight per partition, and per partition the unfinished retried batches
        # (while there are any, the partition has one batch in flight at most).
        self._in_flight: dict[tuple[str, int], int] = {}
        self._retrying: dict[tuple[str, int], int] = {}
        # Topics whose metadata refresh is under way, each with the event that makes it look
        # again at once (a later failure forgot the leaders meanwhile).
        self._refreshing: dict[str, trio.Event] = {}
        # Batches whose leader moved, released as soon as the metadata names another one.
        self._leader_wait = LeaderWait()
        self._wake = trio.Event()
        self._memory_freed = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._sends = 0
        self._close_timeout_s = float("inf")
        # Produce requests waiting for their answers (the cluster's request timeout).
        self._answers = AnswerWatch(self._request_timeout_ms / 1000)
        # One writer per broker keeps that broker's requests in drain order (see the rules).
        self._writers: dict[int, trio.MemorySendChannel[list[ProducerBatch]]] = {}
        # Idempotence: producer id and epoch (-1: none yet), each partition's next sequence and
        # its numbered, unacknowledged batches in sequence order.
        self._pid = -1
        self._epoch = -1
        self._bump_wanted = False
        self._next_sequence: dict[tuple[str, int], int] = {}
        self._unacked: dict[tuple[str, int], list[ProducerBatch]] = {}
        # Why `send` must raise now (a fatal error, or a transactional producer outside a
        # transaction); None almost always, so the hot path pays one attribute test.
        self._refuse: BaseException | None = None
        self._fatal: BaseException | None = None
        self._txn: TransactionManager | None = None
        # Transactional batches waiting for AddPartitionsToTxn, in drain order.
        self._held: list[ProducerBatch] = []
        self._adding: trio.Event | None = None
        if transactional_id is not None:
            self._txn = TransactionManager(
                self,
                transactional_id=transactional_id,
                transaction_timeout_ms=transaction_timeout_ms,
                retry_backoff_s=self.retry_backoff_s,
                max_block_s=self.max_block_s,
            )
            self._refuse = self._txn.send_refusal()

    # --- hot path ---------------------------------------------------------------------------------

    def send_nowait(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        callback: DeliveryCallback | None = None,
    ) -> RecordFuture | None:
        """Queue one record; None if buffer memory is full (wait and call again).

        Thread-safe. Raises `NeedMetadataError` if the topic is not known yet.
        """
        if self._serializers is not None:
            key, value = serialize(*self._serializers, topic, key, value)
        return self._append(topic, value, key, headers, partition, timestamp_ms, callback)

    def _append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None,
        partition: int | None,
        timestamp_ms: int | None,
        callback: DeliveryCallback | None,
    ) -> RecordFuture | None:
        """`send_nowait` after serialization: size, partition and queue the record."""
        if self._refuse is not None:
            raise self._refuse.with_traceback(None)
        count = self._counts.get(topic)
        if count is None:
            if self._closed:
                raise ClientClosedError("the producer is closed; create a new one")
            raise NeedMetadataError(topic)
        if value.__class__ is not bytes and value is not None:
            value = as_bytes("value", value)
        size = RECORD_OVERHEAD_BYTES + (len(value) if value is not None else 0)
        if key is not None:
            if key.__class__ is not bytes:
                key = as_bytes("key", key)
            size += len(key)
            if partition is None:
                partition = partition_for_key(key, count)
        if partition is None:
            partition = -1  # the accumulator's sticky choice
        elif not 0 <= partition < count:
            raise BrokerError(
                ErrorCode.UNKNOWN_PARTITION,
                f"topic {topic!r} has partitions 0..{count - 1}, not {partition}",
            )
        if headers is not None:
            headers, size = normalise_headers(headers, size)
        if size > self.max_record_bytes:
            raise BrokerError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"record of {size} bytes exceeds max_record_bytes={self.max_record_bytes}; "
                "split it or raise the topic's max.message.bytes and the producer's limit",
            )
        if timestamp_ms is None:
            timestamp_ms = _time_ns() // 1_000_000
        future = self._acc.append(topic, partition, timestamp_ms, key, value, headers, size, count)
        if future is not None and callback is not None:
            future.add_done_callback(callback)
        return future

    async def send(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        callback: DeliveryCallback | None = None,
    ) -> RecordFuture:
        """Queue one record and return its future (`await future` -> RecordMetadata).

        Waits for buffer memory up to `max_block_ms`, then raises `BufferFullError`.
        """
        batch = self._lanes.get(topic)
        if (
            batch is not None
            and value.__class__ is bytes
            and key is None
            and headers is None
            and partition is None
            and timestamp_ms is None
            and callback is None
        ):
            # The fast path: a keyless bytes value joining its topic's lane, whose reserved room
            # stands for every check of `_append` (client/accumulator.py, the rules).
            total = batch.size_bytes + RECORD_OVERHEAD_BYTES + len(value)
            if total <= batch.lane_limit:
                batch.size_bytes = total
                batch.deltas.append(_time_ns() // 1_000_000 - batch.base_timestamp)
                values = batch.values
                values.append(value)
                count = len(values)
                # Seal a full batch as `_append` does, and yield when this send sealed it or
                # every YIELD_EVERY_SENDS records, as the general path below does (the batch's
                # record count stands in for the send counter; a batch sealed elsewhere made
                # that send yield).
                if total >= self._batch_bytes or not count % YIELD_EVERY_SENDS:
                    if total >= self._batch_bytes:
                        self._acc.seal(batch, self._counts[topic])
                    await trio.lowlevel.checkpoint()
                return RecordFuture((batch, count - 1))
        if self._serializers is not None:
            key, value = serialize(*self._serializers, topic, key, value)
        try:
            future = self._append(topic, value, key, headers, partition, timestamp_ms, callback)
        except NeedMetadataError:
            future = None
        except BrokerError as exc:
            if exc.code is not ErrorCode.UNKNOWN_PARTITION:
                raise
            await self.reload_topic(topic)  # still out of range: UNKNOWN_PARTITION again
            future = self._append(topic, value, key, headers, partition, timestamp_ms, callback)
        if future is None:
            return await self._send_slowly(
                topic, value, key, headers, partition, timestamp_ms, callback
            )
        # The caller's loop must let the sender run: yield when a batch is sealed (full, so the
        # sender should take it now) and every YIELD_EVERY_SENDS records, so responses are
        # handled. A batch that only opened leaves at the caller's next await: a burst of sends
        # then goes as one request, not its first record alone and the rest after its answer
        # (docs/performance.md, "Per-request overhead at low rates"). A plain attribute, not
        # Event.is_set(): this runs once per record.
        self._sends += 1
        if self._acc.sealed_pending or not self._sends % YIELD_EVERY_SENDS:
            await trio.lowlevel.checkpoint()
        return future

    async def _send_slowly(self, topic: str, *args: Any) -> RecordFuture:
        # The topic is not known yet, or buffer memory is full (then wait up to max_block_ms).
        deadline: float | None = None
        while True:
            try:
                future = self._append(topic, *args)
            except NeedMetadataError:
                await self.load_topic(topic)
                continue
            if future is not None:
                await trio.lowlevel.checkpoint()
                return future
            if deadline is None:
                deadline = trio.current_time() + self.max_block_s
            await self._wait_for_memory(deadline)

    async def send_and_wait(self, topic: str, value: Any, **kwargs: Any) -> RecordMetadata:
        """`send` and wait for the acknowledgement."""
        future = await self.send(topic, value, **kwargs)
        return await future

    async def send_many(
        self,
        topic: str,
        values: Iterable[Any],
        *,
        keys: Iterable[Any] | None = None,
        headers: Iterable[Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> SendManyFuture:
        """Queue many records at once and return one future for all of them (`await future`
        -> a `SendManyResult`, their metadata in call order). The bulk twin of `send` (see
        client/bulk.py): one timestamp for the call, no per-record coroutine or future.

        `keys` and `headers`, if given, hold one entry per value (None for none). Everything
        is checked before anything is queued (too big a record raises MESSAGE_TOO_LARGE). Waits
        for buffer memory between batches, up to `max_block_ms` without progress, then raises
        `BufferFullError` (its `queued`: the future of the records queued until then).
        """
        bulk = BulkAppend(self, topic, values, keys, headers, partition, timestamp_ms)
        try:
            routed = bulk.route()
        except BrokerError as exc:
            if exc.code is not ErrorCode.UNKNOWN_PARTITION:
                raise
            await self.reload_topic(topic)  # still out of range: UNKNOWN_PARTITION again
            routed = bulk.route()
        if not routed:
            await self.load_topic(topic)
            bulk.route()
        deadline: float | None = None
        while not bulk.finished:
            if bulk.append_some():
                deadline = None
                if self._acc.sealed_pending:  # a full batch is waiting: let the sender take it
                    await trio.lowlevel.checkpoint()
                continue
            if deadline is None:
                deadline = trio.current_time() + self.max_block_s
            try:
                await self._wait_for_memory(deadline)
            except BufferFullError as exc:
                exc.queued = bulk.future()
                raise
        await trio.lowlevel.checkpoint()
        return bulk.future()

    async def load_topic(self, topic: str) -> int:
        """Make sure `topic`'s partition count is known (raises UNKNOWN_TOPIC if it is not and
        the broker does not create topics on demand: `auto_create_topics`)."""
        count = await self._cluster.topic_partitions(topic, auto_create=True)
        self._counts[topic] = count
        return count

    async def reload_topic(self, topic: str) -> int:
        """Look `topic`'s partition count up afresh: a record sent to a partition beyond the
        cached count may be for one added since (CreatePartitions)."""
        self._cluster.invalidate(topic)
        return await self.load_topic(topic)

    async def _wait_for_memory(self, deadline: float) -> None:
        self._wake_up()  # make the sender drain whatever is lingering
        with trio.move_on_at(deadline):
            await self._memory_freed.wait()
            return
        raise BufferFullError(
            f"no buffer memory freed within max_block_ms={self.max_block_s * 1000:.0f}: the "
            "broker is not keeping up or not reachable; flush(), slow down or raise "
            "buffer_memory_bytes"
        )

    async def flush(self) -> None:
        """Send everything queued so far and wait until each record is acknowledged or failed."""
        pending = self._acc.begin_flush()
        try:
            for batch in pending:
                await batch.wait()
        finally:
            self._acc.end_flush()

    # --- lifecycle --------------------------------------------------------------------------------

    async def _start_tasks(self, nursery: trio.Nursery) -> None:
        self._token = trio.lowlevel.current_trio_token()
        # Without thread_safe every append happens in this trio thread, which may wake the
        # sender directly; otherwise appends come from other threads and go through the token.
        self._acc.notify = self._notify_threadsafe if self._acc.thread_safe else self._wake_up
        nursery.start_soon(self._answers.run)
        nursery.start_soon(self._run_sender)
        nursery.start_soon(self._refresh_metadata_periodically)

    def _notify_threadsafe(self) -> None:
        # Called by `append` from whatever thread sealed a batch; run_sync_soon is thread-safe.
        assert self._token is not None
        self._token.run_sync_soon(self._wake_up)

    def _wake_up(self) -> None:
        self._wake.set()

    async def _before_close(self) -> None:
        with trio.move_on_after(self._close_timeout_s):
            await self.flush()

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Flush (for at most `timeout_s`, default: as long as delivery takes), then close.

        Records not delivered by then fail their futures with `ClientClosedError`.
        """
        if timeout_s is not None:
            self._close_timeout_s = timeout_s
        try:
            await super().aclose()
        finally:
            # Sends after this find no topic and raise ClientClosedError (see send_nowait), at
            # no cost to the hot path.
            self._counts.clear()
            error = ClientClosedError("the producer was closed before this record was delivered")
            for batch in self._acc.abort_all():
                self._finish(batch, -1, error)

    # --- transactions (client/aio/transactions.py) -----------------------------------------------

    def _transactions(self) -> TransactionManager:
        if self._txn is None:
            raise InvalidTxnStateError(
                "transactions need a transactional producer: Producer(..., transactional_id=...)"
            )
        return self._txn

    async def init_transactions(self) -> None:
        """Register `transactional_id` with its coordinator: fences older producers with the
        same id and finishes the transaction they left open. Call once, before the first
        `begin_transaction()`. Raises `ProducerFencedError`, or a timeout after max_block_ms."""
        self._cluster  # noqa: B018 - raises if the producer is not open
        await self._transactions().init_transactions()

    def begin_transaction(self) -> None:
        """Start a transaction (local: the coordinator hears of it with its first partition)."""
        self._transactions().begin_transaction()

    async def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int] | Mapping[tuple[str, int], int],
        group_metadata: ConsumerGroupMetadata | str,
    ) -> None:
        """Commit `offsets` ({tp: next offset to consume}) for the consumer group of
        `group_metadata` (`consumer.group_metadata()`) as part of this transaction."""
        await self._transactions().send_offsets_to_transaction(offsets, group_metadata)

    async def commit_transaction(self) -> None:
        """Flush the transaction's records and commit it. A failed record fails the commit (then
        `abort_transaction()`); `ProducerFencedError` means close the producer."""
        await self._transactions().commit_transaction()

    async def abort_transaction(self) -> None:
        """Abort the transaction: unsent records fail with `TransactionAbortedError`, the rest
        are never visible to read_committed consumers."""
        await self._transactions().abort_transaction()

    @property
    def producer_id_and_epoch(self) -> tuple[int, int]:
        """The producer id and epoch from InitProducerId/EndTxn ((-1, -1) before the first)."""
        return self._pid, self._epoch

    def _set_producer_id(self, pid: int, epoch: int, *, reset_sequences: bool = True) -> None:
        """A new producer id or epoch: every partition's sequence restarts at 0 (a batch
        numbered under the old pair is renumbered at its next send)."""
        self._pid, self._epoch = pid, epoch
        if reset_sequences:
            self._next_sequence.clear()
            for unacked in self._unacked.values():
                for batch in unacked:
                    if batch.settled is not None:  # acknowledged: its wait for order ends here
                        self._complete(batch, batch.settled, None)
            self._unacked.clear()

    def _set_fatal(self, error: BaseException) -> None:
        """An error the producer cannot recover from (fencing): fail everything unsent and
        refuse every later send with it."""
        if self._fatal is None:
            log.error("producer failed for good: %s", error)
            self._fatal = error
        self._refuse = self._fatal
        for batch in self._acc.abort_unsent():
            self._finish(batch, -1, self._fatal)
        self._fail_held(self._fatal)

    async def _drop_pending_sends(self, error: BaseException) -> None:
        """For abort_transaction: fail what is not sent yet, then wait for what is in flight
        (its failures are not retried while the transaction is aborting)."""
        for batch in self._acc.abort_unsent():
            self._finish(batch, -1, error)
        self._fail_held(error)
        if self._adding is not None:
            await self._adding.wait()
        await self.flush()

    # --- sender -----------------------------------------------------------------------------------

    async def _run_sender(self) -> None:
        assert self._nursery is not None
        while True:
            self._wake = trio.Event()
            if self._needs_producer_id():
                if self._in_flight or not self._acc.has_unsent():
                    # A new id waits for the old one's requests to come back, and for
                    # something to send (a producer that sends nothing asks for nothing).
                    await self._wake.wait()
                else:
                    await self._init_producer_id()
                continue
            batches, next_at = self._acc.drain(
                time.monotonic(),
                self._in_flight,
                max_in_flight=self.max_in_flight_per_partition,
                retrying=self._retrying,
            )
            if batches:
                for batch in batches:
                    key = (batch.topic, batch.partition)
                    self._in_flight[key] = self._in_flight.get(key, 0) + 1
                if self.enable_idempotence:
                    self._number(batches)
                if self._txn is not None:
                    batches = self._hold_new_partitions(batches)
                self._dispatch(batches)
                continue
            timeout = (next_at - time.monotonic()) if next_at is not None else float("inf")
            with trio.move_on_after(max(timeout, 0.0)):
                await self._wake.wait()

    def _needs_producer_id(self) -> bool:
        # A transactional producer gets its id from init_transactions (sends are refused
        # before), and a failed producer sends nothing more.
        return (
            self.enable_idempotence
            and self._txn is None
            and self._fatal is None
            and (self._pid < 0 or self._bump_wanted)
        )

    async def _init_producer_id(self) -> None:
        """InitProducerId (no transactional id) from any broker, retried with backoff; a broker
        without the API turns idempotence off. Batches waiting longer than delivery_timeout_ms
        fail with the last error meanwhile."""
        apis = self._cluster.broker_apis()
        if apis is not None and codec.ApiKey.INIT_PRODUCER_ID.value not in apis:
            self._without_idempotence("its handshake does not list init_producer_id")
            return
        request = codec.InitProducerIdRequest(producer_id=self._pid, producer_epoch=self._epoch)
        backoff = self.retry_backoff_s
        since = time.monotonic()
        while True:
            last: BaseException
            try:
                response: codec.InitProducerIdResponse = await self._cluster.call(request)
                error, last = response.error, BrokerError(ErrorCode.UNKNOWN_SERVER_ERROR, "-")
                if error is not ErrorCode.NONE:
                    last = BrokerError(error, response.error_message or error.name)
            except ClientClosedError:
                raise
            except ClientError as exc:
                error, last = ErrorCode.UNKNOWN_SERVER_ERROR, exc
            except BrokerError as exc:
                error, last = exc.code, exc
            if error is ErrorCode.NONE:
                self._bump_wanted = False
                self._set_producer_id(response.producer_id, response.producer_epoch)
                self._fail_unknown_fate()
                return
            if error in _UNSUPPORTED:
                self._without_idempotence(f"InitProducerId answered {last}")
                return
            if isinstance(last, BrokerError) and not last.retriable:
                self._set_fatal(BrokerError(last.code, f"InitProducerId failed: {last.message}"))
                return
            if time.monotonic() - since >= self.delivery_timeout_s:
                for batch in self._acc.abort_unsent():
                    self._finish(batch, -1, last)
                since = time.monotonic()
            log.info("InitProducerId failed (%s); retrying", last)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX_MS / 1000)

    def _without_idempotence(self, reason: str) -> None:
        log.warning(
            "the broker does not support idempotent producers (%s): producing without "
            "idempotence; a retried batch may be stored twice",
            reason,
        )
        self.enable_idempotence = False
        if not self._in_flight_explicit:
            self.max_in_flight_per_partition = MAX_IN_FLIGHT_PER_PARTITION_DEFAULT

    def _fail_unknown_fate(self) -> None:
        """After a new producer id: queued batches numbered under the old one are renumbered at
        their next send, except those an attempt of which may have been written (a timeout, a
        lost connection): resent under the new id they could be stored twice, so they fail."""
        for batch in self._acc.take_sealed(lambda b: b.ambiguous and b.producer_id >= 0):
            self._finish(
                batch,
                -1,
                BrokerError(
                    ErrorCode.OUT_OF_ORDER_SEQUENCE,
                    f"{batch.topic}/{batch.partition}: the broker lost this producer's sequence "
                    "state while this batch's outcome was unknown (an earlier attempt timed out "
                    "or lost its connection); it may or may not have been written, and is not "
                    "resent under the new producer id, which could store it twice",
                ),
            )

    def _number(self, batches: list[ProducerBatch]) -> None:
        """Give each batch its partition's next sequence at its first send under the current
        producer id and epoch; a retry keeps its numbers (and its built payload)."""
        pid, epoch = self._pid, self._epoch
        for batch in batches:
            if batch.producer_id == pid and batch.producer_epoch == epoch:
                continue
            key = (batch.topic, batch.partition)
            sequence = self._next_sequence.get(key, 0)
            batch.producer_id, batch.producer_epoch, batch.base_sequence = pid, epoch, sequence
            batch.payload = None
            batch.ambiguous = False
            self._next_sequence[key] = increment_sequence(sequence, batch.record_count)
            self._unacked.setdefault(key, []).append(batch)

    def _hold_new_partitions(self, batches: list[ProducerBatch]) -> list[ProducerBatch]:
        """Transactional: batches whose partition is not in the transaction yet wait for
        AddPartitionsToTxn (one task adds every waiting partition); return the others."""
        txn = self._txn
        assert txn is not None
        ready = []
        for batch in batches:
            if (batch.topic, batch.partition) in txn.partitions:
                ready.append(batch)
            else:
                self._held.append(batch)
        if self._held and self._adding is None:
            self._adding = trio.Event()
            self._nursery_start(self._add_partitions)
        return ready

    async def _add_partitions(self) -> None:
        txn = self._txn
        assert txn is not None
        try:
            while self._held:
                await txn.add_partitions({(b.topic, b.partition) for b in self._held})
                # Dispatched at once, before the sender drains again: a partition's batches
                # still go out in order.
                ready = [b for b in self._held if (b.topic, b.partition) in txn.partitions]
                self._held = [b for b in self._held if (b.topic, b.partition) not in txn.partitions]
                self._dispatch(ready)
        except (BrokerError, ClientError) as exc:
            self._fail_held(exc)
        finally:
            assert self._adding is not None
            self._adding.set()
            self._adding = None
            self._wake_up()

    def _fail_held(self, error: BaseException) -> None:
        held, self._held = self._held, []
        for batch in held:
            _count_down(self._in_flight, (batch.topic, batch.partition))
            self._finish(batch, -1, error)
        if held:
            self._wake_up()

    def _dispatch(self, batches: list[ProducerBatch]) -> None:
        """Hand batches to their leaders' writers (one Produce per leader per drain)."""
        by_leader: dict[int | None, list[ProducerBatch]] = {}
        for batch in batches:
            leader = self._cluster.leader(batch.topic, batch.partition)
            by_leader.setdefault(leader, []).append(batch)
        for leader, group in by_leader.items():
            if leader is None:
                self._nursery_start(self._leaderless, group)
                continue
            writer = self._writers.get(leader)
            if writer is None:
                writer, requests = trio.open_memory_channel[list[ProducerBatch]](math.inf)
                self._writers[leader] = writer
                self._nursery_start(self._write_to, leader, requests)
            writer.send_nowait(group)

    async def _write_to(
        self, leader: int, requests: trio.MemoryReceiveChannel[list[ProducerBatch]]
    ) -> None:
        async for batches in requests:
            await self._produce(leader, batches)

    async def _leaderless(self, batches: list[ProducerBatch]) -> None:
        """Batches whose partition has no known leader (an election, or leaders forgotten after
        an error): not sent anywhere, retried after a metadata refresh and the backoff."""
        try:
            for batch in batches:
                error = BrokerError(
                    ErrorCode.LEADER_NOT_AVAILABLE,
                    f"{batch.topic}/{batch.partition} has no leader known; retrying",
                )
                self._retry_or_fail(batch, error)
        finally:
            self._settle(batches)
        await trio.lowlevel.checkpoint()

    async def _produce(self, leader: int, batches: list[ProducerBatch]) -> None:
        """Build and write one Produce (in this leader's writer task, so in drain order); its
        answer is awaited by a task of its own."""
        answered = False
        try:
            transactional = self._txn is not None
            # One msgpack call per batch, no Python per record (the columns are zipped into
            # rows in C). The rows live only until packed and hold no cycles: the GC, which would
            # walk each of them, waits (client/_gc.py).
            with gc_paused():
                for batch in batches:
                    if batch.payload is not None:
                        continue
                    batch.payload = build_batch_columns(
                        batch.deltas,
                        batch.keys,
                        batch.values,
                        batch.headers,
                        base_timestamp=batch.base_timestamp,
                        packer=self._packer,
                        compression=self.compression,
                        producer_id=batch.producer_id,
                        producer_epoch=batch.producer_epoch,
                        base_sequence=batch.base_sequence,
                        transactional=transactional,
                    )
            request = codec.ProduceRequest(
                partitions=tuple(
                    codec.ProducePartition(
                        topic=batch.topic, partition=batch.partition, records=batch.payload
                    )
                    for batch in batches
                ),
                acks=self.acks,
                timeout_ms=int(self._cluster.request_timeout_s * 1000),
            )
            try:
                if self.acks == codec.ACKS_NONE:
                    await self._cluster.call_oneway(request, leader)
                    for batch in batches:
                        self._finish(batch, -1, None)
                    return
                connection, header, pending = await self._cluster.send_request(request, leader)
            except (*_TRANSPORT_ERRORS, BrokerError) as exc:
                for batch in batches:
                    self._retry_or_fail(batch, exc, leader)
                return
            self._answers.watch(
                connection,
                header,
                pending,
                lambda frame, error: self._answered(leader, batches, connection, frame, error),
            )
            answered = True
        finally:
            if not answered:
                self._settle(batches)

    def _answered(
        self,
        leader: int,
        batches: list[ProducerBatch],
        connection: BrokerConnection,
        frame: Frame | None,
        error: BaseException | None,
    ) -> None:
        """A Produce's answer, or why there is none (a lost connection, the request timeout):
        called by the connection's reader or the answer watch (client/aio/answers.py)."""
        if self._closed:
            return  # aclose fails every batch still unacknowledged
        try:
            try:
                if error is not None:
                    raise error
                assert frame is not None
                response: codec.ProduceResponse = self._cluster.decode(connection, frame)
            except (*_TRANSPORT_ERRORS, BrokerError) as exc:
                for batch in batches:
                    self._retry_or_fail(batch, exc, leader)
                return
            self._handle_response(leader, batches, response)
        finally:
            self._settle(batches)

    def _settle(self, batches: list[ProducerBatch]) -> None:
        for batch in batches:
            _count_down(self._in_flight, (batch.topic, batch.partition))
        # A freed in-flight slot matters only to a batch waiting to go (an open one leaves when
        # its partition has nothing in flight): with none, waking the sender would cost a
        # scheduler pass for an empty drain. A batch opened later wakes it itself.
        if self._acc.has_unsent():
            self._wake_up()

    def _handle_response(
        self, leader: int, batches: list[ProducerBatch], response: codec.ProduceResponse
    ) -> None:
        results = {(r.topic, r.partition): r for r in response.partitions}
        for batch in batches:
            result = results.get((batch.topic, batch.partition))
            if result is None:
                error = BrokerError(
                    ErrorCode.UNKNOWN_SERVER_ERROR,
                    f"the broker's produce response left out {batch.topic}/{batch.partition}",
                )
                self._retry_or_fail(batch, error, leader)
            elif result.error is ErrorCode.NONE or result.error is ErrorCode.DUPLICATE_SEQUENCE:
                # DUPLICATE_SEQUENCE: the broker already has this batch (Kafka: a success).
                self._finish(batch, result.base_offset, None)
            else:
                self._retry_or_fail(batch, BrokerError(result.error, result.error_message), leader)
                if result.leader_id >= 0 and self._cluster.learn_leader(
                    batch.topic, batch.partition, result.leader_id
                ):
                    # NOT_LEADER naming the new leader: retry there now, no metadata round.
                    self._leader_wait.release(batch.topic, self._cluster.leader)

    def _retry_or_fail(
        self, batch: ProducerBatch, error: Exception, failed_leader: int | None = None
    ) -> None:
        """Requeue `batch` after a retriable `error` (its answer from `failed_leader`, None if it
        was not sent), or fail it. A moved leader releases it as soon as another is known."""
        if self._txn is not None and self._txn.state is TxnState.ABORTING:
            self._finish(batch, -1, error)  # the transaction is being aborted: no retries
            return
        code = error.code if isinstance(error, BrokerError) else None
        # A dead or unreachable leader is retriable: its partitions get a new leader.
        transport = isinstance(error, ClientError) and not isinstance(error, ClientClosedError)
        retriable = transport or getattr(error, "retriable", False)
        if batch.producer_id >= 0:  # numbered: idempotent
            if code in FENCED_CODES:
                self._fenced(batch, error)
                return
            if code in _SEQUENCE_LOST:
                if self._txn is not None and not self._earlier_unacked(batch):
                    self._finish(batch, -1, error)  # the transaction is abortable; abort resets
                    return
                # Behind an earlier failed batch: follow it. The oldest: the broker lost our
                # state; a new producer id renumbers it (or fails it if its fate is unknown).
                if not self._earlier_unacked(batch) and self._is_current(batch):
                    self._bump_wanted = True
                retriable = True
            elif (code not in _UNWRITTEN and code is not None) or (
                transport and not isinstance(error, BrokerUnavailableError)
            ):
                batch.ambiguous = True
        stale = code in METADATA_STALE_CODES
        leader_moved = stale or transport  # a dead broker or connection: the leader may have moved
        if leader_moved:
            self._cluster.invalidate_leaders(batch.topic)
            again = self._refreshing.get(batch.topic)
            if again is None:
                self._refreshing[batch.topic] = trio.Event()
                self._nursery_start(self._refresh_topic, batch.topic)
            else:
                again.set()
        now = time.monotonic()
        expired = now - batch.created_at > self.delivery_timeout_s
        if retriable and batch.attempts < self.retries and not expired:
            backoff = min(self.retry_backoff_s * 2**batch.attempts, RETRY_BACKOFF_MAX_MS / 1000)
            log.info("retrying %s/%s after %r", batch.topic, batch.partition, error)
            if batch.attempts == 0:
                key = (batch.topic, batch.partition)
                self._retrying[key] = self._retrying.get(key, 0) + 1
            self._acc.reenqueue(batch, now + backoff)
            if leader_moved:  # the backoff is a fallback: a new leader releases it at once
                self._leader_wait.add(batch, failed_leader)
            return
        self._finish(batch, -1, error)

    def _fenced(self, batch: ProducerBatch, error: Exception) -> None:
        fenced = ProducerFencedError(
            f"{batch.topic}/{batch.partition}: {error}; another producer took over this "
            "producer's id or epoch: close this producer",
            error.code if isinstance(error, BrokerError) else ErrorCode.PRODUCER_FENCED,
        )
        if self._txn is not None:
            self._txn.fail(fenced)
        else:
            self._set_fatal(fenced)
        self._finish(batch, -1, fenced)

    def _is_current(self, batch: ProducerBatch) -> bool:
        return batch.producer_id == self._pid and batch.producer_epoch == self._epoch

    def _earlier_unacked(self, batch: ProducerBatch) -> bool:
        """Whether a batch numbered before `batch` (same partition, id and epoch) is still
        unacknowledged: then an OUT_OF_ORDER_SEQUENCE for `batch` is just its failure's echo."""
        for other in self._unacked.get((batch.topic, batch.partition), ()):
            if other is batch:
                return False
            if (
                other.settled is None
                and other.producer_id == batch.producer_id
                and other.producer_epoch == batch.producer_epoch
            ):
                return True
        return False

    async def _refresh_metadata_periodically(self) -> None:
        """Every `metadata_max_age_ms`, look the topics written to up again in one request, as
        Kafka's producer does: a keyless or keyed record goes to partitions added since
        (CreatePartitions), and a moved leader is known before a send fails on it. A failed look
        is logged and tried again at the next period (sends still refresh on their errors)."""
        while True:
            await trio.sleep(self.metadata_max_age_s)
            topics = list(self._counts)
            if not topics:
                continue
            try:
                response = await self._cluster.refresh_metadata(topics)
            except (ClientError, BrokerError) as exc:
                log.warning("periodic metadata refresh of %d topics failed: %r", len(topics), exc)
                continue
            for meta in response.topics:
                # Partition counts only grow; a topic deleted meanwhile is found by its sends.
                if meta.error is ErrorCode.NONE and meta.name in self._counts:
                    self._counts[meta.name] = max(self._counts[meta.name], len(meta.partitions))
            self._wake_up()  # batches waiting for a leader may go now

    async def _refresh_topic(self, topic: str) -> None:
        """Refresh `topic`'s leaders; while batches wait for a new leader of one of its
        partitions (an election under way), poll again with exponential backoff, releasing each
        batch as soon as its partition has another leader (client/aio/leader_wait.py)."""
        poll = LeaderPoll(RETRY_BACKOFF_MAX_MS / 1000)
        try:
            try:
                self._counts[topic] = await self._cluster.topic_partitions(topic, auto_create=True)
            except (ClientError, BrokerError) as exc:
                log.warning("metadata refresh for %r failed: %r", topic, exc)
            while True:
                if self._leader_wait.release(topic, self._cluster.leader):
                    self._wake_up()  # batches waiting for a leader may go now
                if not self._leader_wait.waiting(topic):
                    break
                # Until the backoff, or at once when another failure forgot the leaders.
                with trio.move_on_after(poll.next_delay()):
                    await self._refreshing[topic].wait()
                self._refreshing[topic] = trio.Event()
                # Refreshed in place: the leaders known meanwhile stay usable until replaced.
                try:
                    await self._cluster.refresh_metadata([topic], allow_auto_create=True)
                except (ClientError, BrokerError) as exc:
                    log.info("metadata poll for %r failed: %r", topic, exc)
        finally:
            self._refreshing.pop(topic, None)
        self._wake_up()

    def _nursery_start(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def _finish(self, batch: ProducerBatch, base_offset: int, error: BaseException | None) -> None:
        """Complete `batch`. A numbered batch acknowledged while an earlier one of its partition
        is still unacknowledged (several in flight, answers racing) waits for it, so that a
        partition's futures and callbacks complete in offset order, as Kafka promises."""
        if batch.producer_id < 0:
            self._complete(batch, base_offset, error)
            return
        unacked = self._unacked.get((batch.topic, batch.partition))
        if unacked is None or batch not in unacked:
            self._complete(batch, base_offset, error)
            return
        if error is None and unacked[0] is not batch:
            batch.settled = base_offset
            return
        unacked.remove(batch)
        self._complete(batch, base_offset, error)
        while unacked and unacked[0].settled is not None:
            ready = unacked.pop(0)
            self._complete(ready, ready.settled, None)

    def _complete(
        self, batch: ProducerBatch, base_offset: int, error: BaseException | None
    ) -> None:
        if batch.attempts:
            _count_down(self._retrying, (batch.topic, batch.partition))
        if batch.producer_id >= 0 and error is not None:
            if self._txn is not None:
                self._txn.fail(error)
            elif self._is_current(batch) and self._fatal is None:
                self._bump_wanted = True  # its sequence is a gap now: start afresh
        batch.complete(base_offset, error)
        self._acc.release(batch)
        # Wake trio tasks waiting for memory (blocking senders use the accumulator's condition).
        self._memory_freed.set()
        self._memory_freed = trio.Event()


def _count_down(counts: dict[tuple[str, int], int], key: tuple[str, int]) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _in_flight_option(per_partition: int | None, per_connection: int | None) -> int | None:
    """`max_in_flight_per_partition` or its Kafka name; None when neither is given."""
    if per_partition is not None and per_connection is not None and per_partition != per_connection:
        raise ConfigError(
            "max_in_flight_requests_per_connection",
            f"{per_connection} contradicts max_in_flight_per_partition={per_partition}; give one",
        )
    value = per_partition if per_partition is not None else per_connection
    if value is not None:
        _positive("max_in_flight_requests_per_connection", value)
    return value


def _idempotence(
    wanted: bool | None,
    transactional_id: str | None,
    *,
    acks: str | int,
    retries: int,
    in_flight: int | None,
) -> bool:
    """Whether the producer is idempotent: by default yes, as Kafka >= 3.0. An explicit
    enable_idempotence=True (or a transactional_id, which needs idempotence) with a conflicting
    option is a ConfigError; left unset, a conflicting option turns idempotence off instead
    (Kafka >= 3.2), so `Producer(acks=1)` keeps working as before."""
    if transactional_id is not None:
        if not transactional_id:
            raise ConfigError("transactional_id", "must not be empty")
        if wanted is False:
            raise ConfigError(
                "enable_idempotence", "a transactional producer is idempotent; drop one option"
            )
    conflicts = []
    if _ACKS[acks] != codec.ACKS_ALL:
        conflicts.append(f"acks={acks!r} (idempotence needs acks='all')")
    if retries == 0:
        conflicts.append("retries=0 (idempotence retries with the same sequence numbers)")
    if in_flight is not None and in_flight > MAX_IN_FLIGHT_IDEMPOTENT_LIMIT:
        conflicts.append(
            f"max_in_flight_requests_per_connection={in_flight} (at most "
            f"{MAX_IN_FLIGHT_IDEMPOTENT_LIMIT} with idempotence)"
        )
    explicit = wanted is True or transactional_id is not None
    if conflicts and explicit:
        what = "transactional_id" if transactional_id is not None else "enable_idempotence"
        raise ConfigError(what, "idempotence conflicts with " + "; ".join(conflicts))
    return wanted is not False and not conflicts


def _positive(key: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")
