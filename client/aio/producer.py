"""The trio-native producer: the accumulator's sender and the per-record `send` hot path.

Rules:
- `send_nowait` is the hot path, shared with the blocking facade (called from any thread). It
  validates, picks the partition and appends a plain tuple to the accumulator; nothing else.
- The sender task drains ready batches (at most one per partition in flight: ordering), builds
  each with one `build_batch` call, groups them by leader into one Produce request per broker, and
  completes their futures from the response. Retriable failures go back to the head of their
  partition's queue after `retry_backoff_ms * 2**attempt` (capped), until `retries` or
  `delivery_timeout_ms` runs out; then the batch fails with the last error.
- acks=0 gets no response: batches complete at once with offset -1 after the write.
- Leader changes: NOT_LEADER, LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC, a dead connection or an
  unreachable leader forget the topic's leaders and start one metadata refresh per topic; a batch
  whose partition has no leader known is not sent, just retried. With one batch per partition in
  flight (the default) the failed batch goes back first, so order survives a failover. Not
  idempotent: a batch whose acknowledgement was lost is stored again when retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from broker import codec
from broker.config import ConfigError
from broker.errors import BrokerError, ErrorCode
from broker.log.batch import MAX_BATCH_BYTES_DEFAULT, Compression, build_batch
from client._gc import gc_paused
from client.accumulator import (
    RECORD_OVERHEAD_BYTES,
    DeliveryCallback,
    ProducerBatch,
    RecordAccumulator,
    RecordFuture,
)
from client.aio._base import AsyncClientBase
from client.aio._wait import wait_batch
from client.aio.cluster import (
    CLIENT_ID_DEFAULT,
    METADATA_STALE_CODES,
    REQUEST_TIMEOUT_MS_DEFAULT,
)
from client.errors import BufferFullError, ClientClosedError, ClientError
from client.partitioner import partition_for_key
from client.types import RecordMetadata

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
# Batches of one partition in flight at once. 1 keeps records in send order even across
# retries; more pipelines a busy partition, but a batch that fails while a later one succeeds
# lands after it on retry (Kafka's max.in.flight behaviour without idempotence).
MAX_IN_FLIGHT_PER_PARTITION_DEFAULT = 1
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

    Options are Kafka's, in Python spelling (see docs/client.md for each).
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        acks: str | int = "all",
        linger_ms: float = LINGER_MS_DEFAULT,
        batch_bytes: int = BATCH_BYTES_DEFAULT,
        compression: str | None = None,
        buffer_memory_bytes: int = BUFFER_MEMORY_BYTES_DEFAULT,
        max_block_ms: int = MAX_BLOCK_MS_DEFAULT,
        retries: int = RETRIES_DEFAULT,
        retry_backoff_ms: int = RETRY_BACKOFF_MS_DEFAULT,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        delivery_timeout_ms: int = DELIVERY_TIMEOUT_MS_DEFAULT,
        max_records_per_batch: int = MAX_RECORDS_PER_BATCH_DEFAULT,
        max_in_flight_per_partition: int = MAX_IN_FLIGHT_PER_PARTITION_DEFAULT,
        max_record_bytes: int = MAX_RECORD_BYTES_DEFAULT,
        client_id: str = CLIENT_ID_DEFAULT,
        thread_safe: bool = False,
    ) -> None:
        """`thread_safe=True` lets threads other than the trio loop's call `send_nowait` (the
        blocking facade does); without it the accumulator skips its lock."""
        super().__init__(bootstrap, client_id=client_id, request_timeout_ms=request_timeout_ms)
        if acks not in _ACKS:
            raise ConfigError("acks", f"expected 'all', 1 or 0, got {acks!r}")
        if compression not in _COMPRESSION:
            raise ConfigError("compression", f"expected None, gzip, zstd or lz4: {compression!r}")
        _positive("batch_bytes", batch_bytes)
        _positive("buffer_memory_bytes", buffer_memory_bytes)
        _positive("max_records_per_batch", max_records_per_batch)
        _positive("max_in_flight_per_partition", max_in_flight_per_partition)
        if linger_ms < 0 or retries < 0 or retry_backoff_ms < 0 or max_block_ms < 0:
            raise ConfigError("linger_ms/retries/retry_backoff_ms/max_block_ms", "must be >= 0")
        self.acks = _ACKS[acks]
        self.compression = _COMPRESSION[compression]
        self.max_block_s = max_block_ms / 1000.0
        self.retries = retries
        self.retry_backoff_s = retry_backoff_ms / 1000.0
        self.delivery_timeout_s = delivery_timeout_ms / 1000.0
        self.max_record_bytes = max_record_bytes
        self._acc = RecordAccumulator(
            batch_bytes=batch_bytes,
            linger_ms=linger_ms,
            buffer_memory_bytes=buffer_memory_bytes,
            max_records_per_batch=max_records_per_batch,
            thread_safe=thread_safe,
        )
        self._counts: dict[str, int] = {}
        self.max_in_flight_per_partition = max_in_flight_per_partition
        # Batches in flight per partition, and per partition the unfinished retried batches
        # (while there are any, the partition has one batch in flight at most).
        self._in_flight: dict[tuple[str, int], int] = {}
        self._retrying: dict[tuple[str, int], int] = {}
        self._refreshing: set[str] = set()  # topics whose metadata refresh is under way
        self._wake = trio.Event()
        self._memory_freed = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._sends = 0
        self._wake_pending = False
        self._close_timeout_s = float("inf")

    # --- hot path ---------------------------------------------------------------------------------

    def send_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        callback: DeliveryCallback | None = None,
    ) -> RecordFuture | None:
        """Queue one record; None if buffer memory is full (wait and call again).

        Thread-safe. Raises `NeedMetadataError` if the topic is not known yet.
        """
        count = self._counts.get(topic)
        if count is None:
            if self._closed:
                raise ClientClosedError("the producer is closed; create a new one")
            raise NeedMetadataError(topic)
        if value.__class__ is not bytes and value is not None:
            value = _as_bytes("value", value)
        size = RECORD_OVERHEAD_BYTES + (len(value) if value is not None else 0)
        if key is not None:
            if key.__class__ is not bytes:
                key = _as_bytes("key", key)
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
            headers, size = _normalise_headers(headers, size)
        if size > self.max_record_bytes:
            raise BrokerError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"record of {size} bytes exceeds max_record_bytes={self.max_record_bytes}; "
                "split it or raise the topic's max.message.bytes and the producer's limit",
            )
        if timestamp_ms is None:
            timestamp_ms = _time_ns() // 1_000_000
        future = self._acc.append(
            topic, partition, (timestamp_ms, key, value, headers), size, count
        )
        if future is not None and callback is not None:
            future.add_done_callback(callback)
        return future

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        callback: DeliveryCallback | None = None,
    ) -> RecordFuture:
        """Queue one record and return its future (`await future` -> RecordMetadata).

        Waits for buffer memory up to `max_block_ms`, then raises `BufferFullError`.
        """
        try:
            future = self.send_nowait(topic, value, key, headers, partition, timestamp_ms, callback)
        except NeedMetadataError:
            future = None
        if future is None:
            return await self._send_slowly(
                topic, value, key, headers, partition, timestamp_ms, callback
            )
        # The caller's loop must let the sender run: yield when the sender has work (a batch
        # opened or sealed) and every YIELD_EVERY_SENDS records, so responses are handled. A plain
        # attribute, not Event.is_set(): this runs once per record.
        self._sends += 1
        if self._wake_pending or not self._sends % YIELD_EVERY_SENDS:
            await trio.lowlevel.checkpoint()
        return future

    async def _send_slowly(self, topic: str, *args: Any) -> RecordFuture:
        # The topic is not known yet, or buffer memory is full (then wait up to max_block_ms).
        deadline: float | None = None
        while True:
            try:
                future = self.send_nowait(topic, *args)
            except NeedMetadataError:
                await self.load_topic(topic)
                continue
            if future is not None:
                await trio.lowlevel.checkpoint()
                return future
            if deadline is None:
                deadline = trio.current_time() + self.max_block_s
            await self._wait_for_memory(deadline)

    async def send_and_wait(self, topic: str, value: bytes | None, **kwargs: Any) -> RecordMetadata:
        """`send` and wait for the acknowledgement."""
        future = await self.send(topic, value, **kwargs)
        return await future

    async def load_topic(self, topic: str) -> int:
        """Make sure `topic`'s partition count is known (raises UNKNOWN_TOPIC if it is not and
        the broker does not create topics on demand: `auto_create_topics`)."""
        count = await self._cluster.topic_partitions(topic, auto_create=True)
        self._counts[topic] = count
        return count

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
                await wait_batch(batch)
        finally:
            self._acc.end_flush()

    # --- lifecycle --------------------------------------------------------------------------------

    async def _start_tasks(self, nursery: trio.Nursery) -> None:
        self._token = trio.lowlevel.current_trio_token()
        # Without thread_safe every append happens in this trio thread, which may wake the
        # sender directly; otherwise appends come from other threads and go through the token.
        self._acc.notify = self._notify_threadsafe if self._acc.thread_safe else self._wake_up
        nursery.start_soon(self._run_sender)

    def _notify_threadsafe(self) -> None:
        # Called by `append` from whatever thread sealed a batch; run_sync_soon is thread-safe.
        assert self._token is not None
        self._token.run_sync_soon(self._wake_up)

    def _wake_up(self) -> None:
        self._wake_pending = True
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

    # --- sender -----------------------------------------------------------------------------------

    async def _run_sender(self) -> None:
        assert self._nursery is not None
        while True:
            self._wake = trio.Event()
            self._wake_pending = False
            batches, next_at = self._acc.drain(
                time.monotonic(),
                self._in_flight,
                max_in_flight=self.max_in_flight_per_partition,
                retrying=self._retrying,
            )
            if batches:
                by_leader: dict[int | None, list[ProducerBatch]] = {}
                for batch in batches:
                    key = (batch.topic, batch.partition)
                    self._in_flight[key] = self._in_flight.get(key, 0) + 1
                    leader = self._cluster.leader(batch.topic, batch.partition)
                    by_leader.setdefault(leader, []).append(batch)
                for leader, group in by_leader.items():
                    if leader is None:
                        self._nursery.start_soon(self._leaderless, group)
                    else:
                        self._nursery.start_soon(self._produce, leader, group)
                continue
            timeout = (next_at - time.monotonic()) if next_at is not None else float("inf")
            with trio.move_on_after(max(timeout, 0.0)):
                await self._wake.wait()

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
            for batch in batches:
                _count_down(self._in_flight, (batch.topic, batch.partition))
            self._wake_up()
        await trio.lowlevel.checkpoint()

    async def _produce(self, leader: int, batches: list[ProducerBatch]) -> None:
        try:
            parts = []
            with gc_paused():
                for batch in batches:
                    if batch.payload is None:
                        batch.payload = build_batch(batch.records, compression=self.compression)
            for batch in batches:
                parts.append(
                    codec.ProducePartition(
                        topic=batch.topic, partition=batch.partition, records=batch.payload
                    )
                )
            request = codec.ProduceRequest(
                partitions=tuple(parts),
                acks=self.acks,
                timeout_ms=int(self._cluster.request_timeout_s * 1000),
            )
            try:
                if self.acks == codec.ACKS_NONE:
                    await self._cluster.call_oneway(request, leader)
                    for batch in batches:
                        self._finish(batch, -1, None)
                    return
                response: codec.ProduceResponse = await self._cluster.call(request, leader)
            except (*_TRANSPORT_ERRORS, BrokerError) as exc:
                for batch in batches:
                    self._retry_or_fail(batch, exc)
                return
            self._handle_response(batches, response)
        finally:
            for batch in batches:
                _count_down(self._in_flight, (batch.topic, batch.partition))
            self._wake_up()

    def _handle_response(
        self, batches: list[ProducerBatch], response: codec.ProduceResponse
    ) -> None:
        results = {(r.topic, r.partition): r for r in response.partitions}
        for batch in batches:
            result = results.get((batch.topic, batch.partition))
            if result is None:
                error = BrokerError(
                    ErrorCode.UNKNOWN_SERVER_ERROR,
                    f"the broker's produce response left out {batch.topic}/{batch.partition}",
                )
                self._retry_or_fail(batch, error)
            elif result.error is ErrorCode.NONE:
                self._finish(batch, result.base_offset, None)
            else:
                self._retry_or_fail(batch, BrokerError(result.error, result.error_message))

    def _retry_or_fail(self, batch: ProducerBatch, error: Exception) -> None:
        stale = isinstance(error, BrokerError) and error.code in METADATA_STALE_CODES
        transport = isinstance(error, ClientError) and not isinstance(error, ClientClosedError)
        if stale or transport:  # a dead broker or connection: the leader may have moved
            self._cluster.invalidate_leaders(batch.topic)
            if batch.topic not in self._refreshing:
                self._refreshing.add(batch.topic)
                self._nursery_start(self._refresh_topic, batch.topic)
        # A dead or unreachable leader is retriable: its partitions get a new leader.
        retriable = transport or getattr(error, "retriable", False)
        now = time.monotonic()
        expired = now - batch.created_at > self.delivery_timeout_s
        if retriable and batch.attempts < self.retries and not expired:
            backoff = min(self.retry_backoff_s * 2**batch.attempts, RETRY_BACKOFF_MAX_MS / 1000)
            log.info("retrying %s/%s after %r", batch.topic, batch.partition, error)
            if batch.attempts == 0:
                key = (batch.topic, batch.partition)
                self._retrying[key] = self._retrying.get(key, 0) + 1
            self._acc.reenqueue(batch, now + backoff)
            return
        self._finish(batch, -1, error)

    async def _refresh_topic(self, topic: str) -> None:
        try:
            self._counts[topic] = await self._cluster.topic_partitions(topic, auto_create=True)
        except (ClientError, BrokerError) as exc:
            log.warning("metadata refresh for %r failed: %r", topic, exc)
        finally:
            self._refreshing.discard(topic)
        self._wake_up()  # batches waiting for a leader may go now

    def _nursery_start(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def _finish(self, batch: ProducerBatch, base_offset: int, error: BaseException | None) -> None:
        if batch.attempts:
            _count_down(self._retrying, (batch.topic, batch.partition))
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


def _positive(key: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")


def _as_bytes(what: str, data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(
        f"record {what} must be bytes, str or None, not {type(data).__name__}; "
        "serialize it first (e.g. json.dumps(obj).encode())"
    )


def _normalise_headers(
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes], size: int
) -> tuple[list[tuple[str, bytes]] | None, int]:
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    out = []
    for name, value in items:
        data = value if value.__class__ is bytes else _as_bytes("header value", value)
        out.append((name, data))
        size += len(name) + len(data)
    return (out or None), size
