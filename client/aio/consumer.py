"""The trio-native consumer: assignment, positions, a pipelined fetcher and bulk decoding.

Rules:
- Two positions per partition: `fetch_offset` (where the next fetch starts, ahead of the app) and
  `position` (the next offset `poll` returns). The fetcher keeps one fetch per broker in flight
  while the application works through what is buffered, up to `max_buffered_records` and
  `fetch_max_bytes` of fetched bytes not yet polled (so memory follows the fetch limits).
  Each answer is taken in by the connection's reader task (`_take_in`), which wakes a waiting
  `poll` itself: one scheduler pass from the socket to `poll`, not two.
- `seek*`, `assign` and `subscribe` bump the partition's `epoch`: buffered chunks and in-flight
  responses from an older epoch are dropped, and the in-flight long poll is cancelled so the new
  position takes effect at once.
- Batches are CRC-checked and decoded in bulk (`wire.batch.decode_records`, one msgpack call
  per batch); control batches (Raft no-ops, transaction markers) are skipped, so offsets may have
  gaps.
- `isolation_level="read_committed"` fetches up to the last stable offset; each partition's answer
  lists its aborted transactions (producer id, first offset), and a transactional batch of such a
  producer from that offset up to its ABORT marker is dropped whole, by its header, never decoded
  (`visible_batches`). The position moves past dropped batches and markers.
- OFFSET_OUT_OF_RANGE resets the position per `auto_offset_reset` ("earliest", "latest") or, with
  "none", raises from `poll`.
- The buffer and positions sit under one `threading.Lock` so the blocking facade's `poll` can
  take records without a round trip through the trio thread.
- `poll` never cancels a fetch in flight (its answer would be thrown away and fetched again):
  when the buffer is full the fetcher pauses (`_fetch_paused`) and `poll` wakes it once half of
  the buffer is free (`_wake_fetcher`). Only repositioning (`seek*`, `assign`, `pause`...)
  cancels, because the answer in flight is stale then.
- `poll` returns a `ConsumerRecords` (client/consumer_records.py): the decoded batches' rows,
  each record built when the application reads it, not one object per record here.
- With a `group_id`, `subscribe` joins a consumer group: `client/aio/group.py` (GroupMember)
  decides the assignment and calls `_add_partitions`/`_remove_partitions`; commits go through it.
  Without one, the consumer is a plain (manually positioned) reader as before.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Unpack

import trio

from client._gc import GC_PAUSE_ROWS, gc_paused_promoting_for
from client.aio._base import AsyncClientBase
from client.aio.cluster import (
    CLIENT_ID_DEFAULT,
    METADATA_STALE_CODES,
    REQUEST_TIMEOUT_MS_DEFAULT,
    Cluster,
)
from client.aio.group import (
    AUTO_COMMIT_INTERVAL_MS_DEFAULT,
    HEARTBEAT_INTERVAL_MS_DEFAULT,
    MAX_POLL_INTERVAL_MS_DEFAULT,
    SESSION_TIMEOUT_MS_DEFAULT,
    GroupMember,
)
from client.aio.metadata_refresh import (
    METADATA_MAX_AGE_MS_DEFAULT,
    RefreshSchedule,
    compile_pattern,
    subscribed_partition_counts,
)
from client.consumer_records import ConsumerRecords, ListRun, RowsRun, Run
from client.errors import ClientClosedError, ClientError
from client.security import SecurityOptions
from client.serialization import Deserializer, SerializationError, deserialize_records
from client.types import (
    ConsumerGroupMetadata,
    ConsumerRecord,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    TopicPartition,
)
from wire import codec
from wire.batch import (
    BatchHeader,
    ControlType,
    control_type_of,
    decode_records,
    decode_rows,
    is_dense,
    iter_batches,
)
from wire.config_error import ConfigError
from wire.error_codes import BrokerError, ErrorCode
from wire.framing import MAX_FRAME_BYTES_DEFAULT, Frame

log = logging.getLogger("client.consumer")

FETCH_MAX_WAIT_MS_DEFAULT = 500
FETCH_MIN_BYTES_DEFAULT = 1
FETCH_MAX_BYTES_DEFAULT = 50 * 1024 * 1024
MAX_PARTITION_FETCH_BYTES_DEFAULT = 1024 * 1024
MAX_POLL_RECORDS_DEFAULT = 500
# Records decoded ahead of the application before the fetcher pauses.
MAX_BUFFERED_RECORDS_DEFAULT = 200_000
RETRY_BACKOFF_MS_DEFAULT = 100
# The consumer accepts any batch that fits in a frame: the topic's max.message.bytes, which the
# broker enforced on write, may be above the library default.
MAX_FETCHED_BATCH_BYTES = MAX_FRAME_BYTES_DEFAULT
# On close, how long beyond the long-poll time to wait for the fetch in flight.
CLOSE_GRACE_S = 1.0
_RESETS = ("earliest", "latest", "none")
_ISOLATION_LEVELS = {
    "read_uncommitted": codec.READ_UNCOMMITTED,
    "read_committed": codec.READ_COMMITTED,
}
_EARLIEST = codec.EARLIEST_TIMESTAMP
_LATEST = codec.LATEST_TIMESTAMP


class _PartitionState:
    __slots__ = ("epoch", "fetch_offset", "paused", "position", "reset")

    def __init__(self, reset: int | None) -> None:
        self.epoch = 0
        self.fetch_offset = -1  # -1: unknown until `reset` is resolved
        self.position = -1
        self.reset = reset  # EARLIEST/LATEST timestamp to resolve, or None
        self.paused = False  # pause(): not fetched, nothing buffered


class Consumer(AsyncClientBase):
    """Read records: `async with Consumer(bootstrap) as c: c.assign([...]); await c.poll()`."""

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        auto_offset_reset: str = "latest",
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS_DEFAULT,
        fetch_min_bytes: int = FETCH_MIN_BYTES_DEFAULT,
        fetch_max_bytes: int = FETCH_MAX_BYTES_DEFAULT,
        max_partition_fetch_bytes: int = MAX_PARTITION_FETCH_BYTES_DEFAULT,
        max_poll_records: int = MAX_POLL_RECORDS_DEFAULT,
        max_buffered_records: int = MAX_BUFFERED_RECORDS_DEFAULT,
        retry_backoff_ms: int = RETRY_BACKOFF_MS_DEFAULT,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        client_id: str = CLIENT_ID_DEFAULT,
        group_id: str | None = None,
        group_instance_id: str | None = None,
        assignor: str = "range",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = AUTO_COMMIT_INTERVAL_MS_DEFAULT,
        session_timeout_ms: int = SESSION_TIMEOUT_MS_DEFAULT,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS_DEFAULT,
        max_poll_interval_ms: int = MAX_POLL_INTERVAL_MS_DEFAULT,
        isolation_level: str = "read_uncommitted",
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS_DEFAULT,
        key_deserializer: Deserializer | None = None,
        value_deserializer: Deserializer | None = None,
        bootstrap_servers: str | Sequence[str] | None = None,
        **security: Unpack[SecurityOptions],
    ) -> None:
        """`isolation_level="read_committed"` returns only committed transactional records and
        stops at the last stable offset (an open transaction holds later records back).

        `metadata_max_age_ms`: how often a subscription looks for new topics and partitions
        (sooner while a subscribed topic does not exist). `key_deserializer`/`value_deserializer`:
        `f(bytes) -> object` applied to each record (`client.serialization`).
        `bootstrap_servers`: kafka-python's name for `bootstrap`."""
        super().__init__(
            bootstrap,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            bootstrap_servers=bootstrap_servers,
            **security,
        )
        if auto_offset_reset not in _RESETS:
            raise ConfigError("auto_offset_reset", f"expected one of {_RESETS}")
        self.isolation_level = isolation_level_code(isolation_level)
        if max_poll_records < 1 or max_buffered_records < 1:
            raise ConfigError("max_poll_records", "max_poll_records/max_buffered_records >= 1")
        self.auto_offset_reset = auto_offset_reset
        self._default_reset = {"earliest": _EARLIEST, "latest": _LATEST}.get(auto_offset_reset)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_bytes = fetch_max_bytes
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.max_poll_records = max_poll_records
        self.max_buffered_records = max_buffered_records
        self.retry_backoff_s = retry_backoff_ms / 1000.0
        self.lock = threading.Lock()
        self._states: dict[TopicPartition, _PartitionState] = {}
        self._subscribed: list[str] = []
        self._pattern: re.Pattern[str] | None = None
        self._refresh = RefreshSchedule(max_age_ms=metadata_max_age_ms, backoff_ms=retry_backoff_ms)
        self._deserializers = (
            (key_deserializer, value_deserializer)
            if key_deserializer is not None or value_deserializer is not None
            else None
        )
        # Fetched chunks in arrival order; each is decoded by the first poll that reaches it.
        # `_buffered` counts their records not yet polled, `_buffered_bytes` their raw bytes not
        # decoded yet: the two bounds of the fetch-ahead (`_buffer_full`).
        self._buffer: deque[_Chunk] = deque()
        self._buffered = 0
        self._buffered_bytes = 0
        # Set by the fetcher when it stops because the buffer is full; poll wakes it.
        self._fetch_paused = False
        self._error: BaseException | None = None
        self._changed = trio.Event()
        self._data = trio.Event()
        self._fetch_scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closing = False
        self._fetcher_done = trio.Event()
        self._failing_since: float | None = None
        self._group: GroupMember | None = None
        if group_id is not None:
            self._group = GroupMember(
                self,
                group_id=group_id,
                group_instance_id=group_instance_id,
                assignor=assignor,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                max_poll_interval_ms=max_poll_interval_ms,
                enable_auto_commit=enable_auto_commit,
                auto_commit_interval_ms=auto_commit_interval_ms,
                metadata_max_age_ms=metadata_max_age_ms,
            )

    # --- assignment and positions (thread-safe, synchronous) -----------------------------------

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        """Read exactly these partitions, from `auto_offset_reset` unless you `seek`."""
        wanted = [TopicPartition(*tp) for tp in partitions]
        with self.lock:
            self._subscribed, self._pattern = [], None
            self._states = {tp: self._states.get(tp) or self._new_state() for tp in wanted}
            self._drop_buffered(lambda tp: tp not in self._states)
        self._signal()

    def subscribe(
        self,
        topics: Iterable[str] | re.Pattern[str] = (),
        pattern: str | re.Pattern[str] | None = None,
        listener: Any = None,
    ) -> None:
        """Read `topics`, or every topic whose whole name matches `pattern` (a regular
        expression, as kafka-python's `subscribe(pattern=...)`; a compiled pattern may also be
        passed as `topics`). Topics created and partitions added later are picked up (see
        `metadata_max_age_ms`), including topics that do not exist yet when this is called.

        With a `group_id` the group shares the partitions among its members and `listener`
        (see `client.aio.group.ConsumerRebalanceListener`) hears of every change; without one,
        every partition is read by this consumer.
        """
        if isinstance(topics, re.Pattern):
            topics, pattern = (), topics
        if isinstance(topics, str):
            raise TypeError(f"subscribe() takes a list of topics, not the string {topics!r}")
        if pattern is not None and topics:
            raise ClientError("subscribe() takes topics or a pattern, not both")
        compiled = compile_pattern(pattern) if pattern is not None else None
        if self._group is not None:
            self._group.subscribe(compiled if compiled is not None else topics, listener)
            return
        if listener is not None:
            raise ClientError(
                "a rebalance listener needs a group: create the Consumer with group_id"
            )
        with self.lock:
            self._subscribed, self._pattern = list(topics), compiled
            self._states = {
                tp: s for tp, s in self._states.items() if self._subscribes_to(tp.topic)
            }
            self._drop_buffered(lambda tp: tp not in self._states)
        self._refresh.request()
        self._signal()

    def _subscribes_to(self, topic: str) -> bool:
        # Caller holds the lock.
        if self._pattern is not None:
            return not topic.startswith("__") and self._pattern.fullmatch(topic) is not None
        return topic in self._subscribed

    def unsubscribe(self) -> None:
        """Stop reading every topic and partition (subscribed or assigned); with a group, give
        the partitions up (committing what poll() returned, as a rebalance does) and leave it."""
        if self._group is not None:
            self._group.unsubscribe()
        with self.lock:
            self._subscribed, self._pattern = [], None
            self._states = {}
            self._drop_buffered(lambda tp: True)
        self._signal()

    def subscription(self) -> set[str]:
        """The topics subscribed to (with a pattern: those it matched at the last refresh)."""
        if self._group is not None:
            return self._group.subscription()
        with self.lock:
            if self._pattern is None:
                return set(self._subscribed)
            return {tp.topic for tp in self._states}

    def pause(self, *partitions: TopicPartition | tuple[str, int]) -> None:
        """Stop fetching `partitions` (assigned ones) until `resume`; poll() returns none of
        their records meanwhile. Positions are kept, and so is group membership: keep calling
        poll() while paused (Kafka's flow control for a slow downstream)."""
        self._set_paused(partitions, paused=True)

    def resume(self, *partitions: TopicPartition | tuple[str, int]) -> None:
        """Fetch `partitions` again, from where poll() left them."""
        self._set_paused(partitions, paused=False)

    def paused(self) -> set[TopicPartition]:
        """The assigned partitions that are paused (a rebalance forgets pauses, as in Kafka)."""
        with self.lock:
            return {tp for tp, state in self._states.items() if state.paused}

    def _set_paused(
        self, partitions: Iterable[TopicPartition | tuple[str, int]], *, paused: bool
    ) -> None:
        tps = [TopicPartition(*tp) for tp in partitions]
        with self.lock:
            states = [self._assigned(tp) for tp in tps]
            for state in states:
                if state.paused == paused:
                    continue
                state.paused = paused
                if paused:
                    # Buffered records are dropped and fetched again on resume, from the
                    # position: the buffer stays in offset order with no held-back chunks.
                    state.epoch += 1
                    if state.position >= 0:
                        state.fetch_offset = state.position
            if paused:
                chosen = set(tps)
                self._drop_buffered(lambda tp: tp in chosen)
        self._signal()

    def _assigned(self, tp: TopicPartition) -> _PartitionState:
        # Caller holds the lock.
        state = self._states.get(tp)
        if state is None:
            raise ClientError(f"{tp.topic}/{tp.partition} is not assigned; assign() it first")
        return state

    def assignment(self) -> set[TopicPartition]:
        with self.lock:
            return set(self._states)

    def seek(self, partition: TopicPartition | tuple[str, int], offset: int) -> None:
        """Make the next `poll` return `partition`'s records from `offset` on."""
        tp = TopicPartition(*partition)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._reposition([tp], offset=offset, reset=None)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        self._reposition(partitions, offset=-1, reset=_EARLIEST)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        self._reposition(partitions, offset=-1, reset=_LATEST)

    def _reposition(
        self, partitions: Iterable[TopicPartition] | None, *, offset: int, reset: int | None
    ) -> None:
        with self.lock:
            tps = (
                list(self._states)
                if partitions is None
                else [TopicPartition(*p) for p in partitions]
            )
            for tp in tps:
                state = self._assigned(tp)
                state.epoch += 1
                state.fetch_offset = state.position = offset
                state.reset = reset
            changed = set(tps)
            self._drop_buffered(lambda tp: tp in changed)
        self._signal()

    def _new_state(self) -> _PartitionState:
        return _PartitionState(self._default_reset if self._default_reset is not None else None)

    def _drop_buffered(self, drop: object) -> None:
        # Caller holds the lock.
        self._buffer = deque(chunk for chunk in self._buffer if not drop(chunk.tp))  # type: ignore[operator]
        self._recount()

    def _recount(self) -> None:
        # Caller holds the lock; after chunks left the buffer other than from its head.
        self._buffered = sum(chunk.count for chunk in self._buffer)
        self._buffered_bytes = sum(len(chunk.raw) for chunk in self._buffer)

    def _buffer_full(self) -> bool:
        # Caller holds the lock. Bounded by records and by bytes: fetched bytes not yet polled
        # (raw chunks) stop fetching at one full response's worth, so a consumer holds about
        # fetch_max_bytes buffered plus one response per leader in flight, whatever the record
        # size.
        return (
            self._buffered >= self.max_buffered_records
            or self._buffered_bytes >= self.fetch_max_bytes
        )

    def _signal(self) -> None:
        """Tell the fetcher that assignment or positions changed (from any thread)."""
        self._call_in_loop(self._on_change)  # after close there is no fetcher left to tell

    def _on_change(self) -> None:
        self._changed.set()
        if self._fetch_scope is not None and not self._closing:
            self._fetch_scope.cancel()

    def _wake_fetcher(self) -> None:
        """Let the paused fetcher fetch again (from any thread); nothing in flight is cancelled:
        the fetcher only waits on `_changed` while it has no fetch out."""
        self._call_in_loop(self._changed.set)

    # --- polling ----------------------------------------------------------------------------------

    def poll_nowait(self, max_records: int | None = None) -> ConsumerRecords:
        """Take up to `max_records` buffered records without waiting (thread-safe).

        Chunks are decoded here, outside the lock, on first use: the fetcher sends its next
        request as soon as a response's batch headers are checked, so the broker works on the
        next fetch while this thread decodes.
        """
        if self._group is not None:
            self._group.on_poll()  # what earlier polls returned is now safe to auto-commit
        limit = max_records or self.max_poll_records
        out: list[Run] = []
        taken = 0
        while taken < limit:
            with self.lock:
                if self._error is not None:
                    if taken:
                        break  # return what was taken; the next poll raises
                    error, self._error = self._error, None
                    raise error
                chunk = self._head_chunk()
                if chunk is None:
                    break
                if chunk.runs is not None:
                    taken += self._take(chunk, out, limit - taken)
                    continue
            runs, refused = self._decode(chunk)
            if refused is not None and not runs:
                # The chunk stays undecoded at the head: the position stays on the refused
                # record and every poll raises again, until a seek() moves past it.
                if taken:
                    break
                raise refused
            with self.lock:
                # Another thread may have decoded it meanwhile, or dropped it (a rebalance, a
                # seek): then the counters no longer include it and it is left alone.
                if chunk.runs is None and self._buffer and self._buffer[0] is chunk:
                    if refused is not None:
                        self._end_chunk_at(chunk, refused.offset)
                    count = sum(map(len, runs))
                    self._buffered += count - chunk.count
                    self._buffered_bytes -= len(chunk.raw)
                    chunk.runs, chunk.raw, chunk.count = deque(runs), b"", count
        with self.lock:
            # Hysteresis: the fetcher waits for half the buffer to be free, so it goes back
            # to fetching in full responses rather than waking at every poll.
            wake = (
                self._fetch_paused
                and self._buffered <= self.max_buffered_records // 2
                and self._buffered_bytes <= self.fetch_max_bytes // 2
            )
            if wake:
                self._fetch_paused = False
        if wake:
            self._wake_fetcher()
        return ConsumerRecords(out)

    def _decode(self, chunk: _Chunk) -> tuple[list[Run], SerializationError | None]:
        """The chunk's records as runs, through the deserializers if any: then built here, up to
        the first record they refuse, whose error comes second."""
        tp, raw, aborted = chunk.tp, chunk.raw, chunk.aborted
        runs = decode_runs(tp, raw, chunk.fetch_offset, aborted, validate=False, count=chunk.count)
        if self._deserializers is None:
            return runs, None
        records, refused = deserialize_records(list(ConsumerRecords(runs)), *self._deserializers)
        return [ListRun(records)] if records else [], refused

    def _end_chunk_at(self, chunk: _Chunk, offset: int) -> None:
        """Cut `chunk` before `offset` (a record the deserializer refused) and fetch that
        partition again from there: the records before it are returned, then poll() meets the
        refused record again, alone, and raises. Caller holds the lock."""
        chunk.next_offset = offset
        state = self._states.get(chunk.tp)
        if state is None or state.epoch != chunk.epoch:
            return
        state.fetch_offset = offset
        self._buffer = deque(c for c in self._buffer if c is chunk or c.tp != chunk.tp)
        self._recount()
        self._signal()

    def _head_chunk(self) -> _Chunk | None:
        # Caller holds the lock. Chunks of unassigned or re-positioned partitions are dropped.
        buffer = self._buffer
        while buffer:
            chunk = buffer[0]
            state = self._states.get(chunk.tp)
            if state is not None and state.epoch == chunk.epoch:
                return chunk
            buffer.popleft()
            self._buffered -= chunk.count
            self._buffered_bytes -= len(chunk.raw)
        return None

    def _take(self, chunk: _Chunk, out: list[Run], wanted: int) -> int:
        """Move up to `wanted` records from `chunk` (the valid, decoded head of the buffer) to
        `out`, and the partition's position after them; return how many. Caller holds the lock.
        """
        runs = chunk.runs
        assert runs is not None and wanted > 0
        taken = 0
        while runs and taken < wanted:
            run = runs[0]
            if len(run) <= wanted - taken:
                out.append(runs.popleft())
                taken += len(run)
            else:
                head, runs[0] = run.split(wanted - taken)
                out.append(head)
                taken = wanted
        chunk.count -= taken
        self._buffered -= taken
        state = self._states[chunk.tp]
        if not runs:
            self._buffer.popleft()
            state.position = chunk.next_offset
        else:
            state.position = out[-1].next_offset
        return taken

    async def poll(
        self, timeout_ms: float = 1000, max_records: int | None = None
    ) -> ConsumerRecords:
        """Records in offset order per partition, as a `ConsumerRecords` (a sequence that builds
        each `ConsumerRecord` as it is read); empty if none arrived within `timeout_ms`."""
        self._cluster  # noqa: B018 - raises if the consumer is not open
        records = self.poll_nowait(max_records)
        if records:
            await trio.lowlevel.checkpoint()
            return records
        with trio.move_on_after(timeout_ms / 1000.0):
            while not records:
                await self._data.wait()
                records = self.poll_nowait(max_records)
        return records

    def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ConsumerRecord]:
        while True:
            for record in await self.poll(timeout_ms=self.fetch_max_wait_ms):
                yield record

    async def position(self, partition: TopicPartition | tuple[str, int]) -> int:
        """The offset of the next record `poll` will return for `partition`."""
        tp = TopicPartition(*partition)
        with self.lock:
            state = self._assigned(tp)
            if state.position >= 0:
                return state.position
        await self._resolve_resets()
        with self.lock:
            return self._states[tp].position

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition (what `seek_to_end` would seek to); with
        read_committed, the last stable offset."""
        return await self._list_offsets(dict.fromkeys(map(_tp, partitions), _LATEST))

    async def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return await self._list_offsets(dict.fromkeys(map(_tp, partitions), _EARLIEST))

    async def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the first record with a timestamp >= the one given (ms), as an
        `OffsetAndTimestamp`; None where no record is that recent (Kafka's answer)."""
        for tp, ts in timestamps.items():
            if ts < 0:
                raise ValueError(f"{tp}: timestamp {ts} is negative; give ms since the epoch")
        found = await list_offset_results(
            self._cluster,
            {_tp(tp): ts for tp, ts in timestamps.items()},
            retry_backoff_s=self.retry_backoff_s,
            isolation_level=self.isolation_level,
        )
        return {
            tp: None if hit.offset < 0 else OffsetAndTimestamp(hit.offset, hit.timestamp)
            for tp, hit in found.items()
        }

    # --- consumer groups (client/aio/group.py) ---------------------------------------------------

    def _member(self) -> GroupMember:
        if self._group is None:
            raise ClientError("commits need a group: create the Consumer with group_id=...")
        return self._group

    async def commit(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None
    ) -> None:
        """Commit `offsets` (default: the position of every assigned partition, i.e. everything
        poll() returned so far) and wait until it is durable. Call it after processing. A value
        is the next offset to read, or an `OffsetAndMetadata` to store a note with it."""
        self._cluster  # noqa: B018 - raises if the consumer is not open
        await self._member().commit(offsets)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None,
        callback: Callable[[BaseException | None], Any] | None = None,
    ) -> None:
        """Start a commit without waiting; `callback(error or None)` runs when it is done."""
        member = self._member()
        if offsets is None:
            offsets = self._positions(member.owned)
        nursery = self._nursery
        assert nursery is not None, "the consumer is not open"

        async def run() -> None:
            error: BaseException | None = None
            try:
                await member.commit(offsets)
            except (ClientError, BrokerError) as exc:
                error = exc
                log.warning("commit_async failed: %s", exc)
            if callback is not None:
                callback(error)

        nursery.start_soon(run)

    async def committed(
        self, partitions: TopicPartition | Iterable[TopicPartition | tuple[str, int]]
    ) -> OffsetAndMetadata | dict[TopicPartition, OffsetAndMetadata | None] | None:
        """The group's committed offset and metadata: for one partition (kafka-python's
        `committed(tp)`) an `OffsetAndMetadata` or None; for several (Java's `committed(set)`)
        a dict of them, None where the group has no commit."""
        self._cluster  # noqa: B018 - raises if the consumer is not open
        if _is_partition(partitions):
            tp = TopicPartition(*partitions)  # type: ignore[misc]
            return (await self._member().committed([tp]))[tp]
        return await self._member().committed([TopicPartition(*tp) for tp in partitions])

    def group_metadata(self) -> ConsumerGroupMetadata:
        """This member's group id, generation, member id and instance id, for
        `Producer.send_offsets_to_transaction` (Kafka's `groupMetadata()`)."""
        member = self._member()
        return ConsumerGroupMetadata(
            group_id=member.group_id,
            generation_id=member.generation,
            member_id=member.member_id,
            group_instance_id=member.group_instance_id,
        )

    def _positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        wanted = set(partitions)
        with self.lock:
            return {
                tp: state.position
                for tp, state in self._states.items()
                if tp in wanted and state.position >= 0
            }

    def _add_partitions(self, positions: Mapping[TopicPartition, int | None]) -> None:
        """Start reading these partitions: at the committed offset, else per auto_offset_reset."""
        with self.lock:
            for tp, offset in positions.items():
                state = self._new_state()
                if offset is not None:
                    state.fetch_offset = state.position = offset
                self._states[tp] = state
        self._signal()

    def _remove_partitions(self, partitions: Iterable[TopicPartition]) -> None:
        gone = set(partitions)
        with self.lock:
            for tp in gone:
                self._states.pop(tp, None)
            self._drop_buffered(lambda tp: tp in gone)
        self._signal()

    def _call_in_loop(self, fn: Callable[[], Any]) -> None:
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(fn)

    def _fail(self, exc: BaseException) -> None:
        """A group error the application must see: raised by the next poll()."""
        with self.lock:
            self._error = exc
        self._data.set()

    # --- fetcher ----------------------------------------------------------------------------------

    async def _start_tasks(self, nursery: trio.Nursery) -> None:
        self._token = trio.lowlevel.current_trio_token()
        nursery.start_soon(self._run_fetcher)
        if self._group is not None:
            nursery.start_soon(self._group.run)

    async def _run_fetcher(self) -> None:
        try:
            await self._fetch_until_closed()
        finally:
            self._fetcher_done.set()

    async def _before_close(self) -> None:
        # Graceful close: let the fetch in flight be answered before the socket closes, so the
        # broker never writes a reply into a dead connection. Bounded by the long-poll time.
        if self._group is not None:
            await self._group.close()  # last commit and LeaveGroup while the fetcher still runs
        self._closing = True
        self._changed.set()
        with trio.move_on_after(self.fetch_max_wait_ms / 1000.0 + CLOSE_GRACE_S):
            await self._fetcher_done.wait()

    async def _fetch_until_closed(self) -> None:
        while not self._closing:
            self._changed = trio.Event()
            try:
                await self._resolve_subscriptions()
                await self._resolve_resets()
                fetched = await self._fetch_round()
            except (ClientError, BrokerError) as exc:
                if self._closing:
                    return
                if isinstance(exc, ClientError):
                    self._cluster.invalidate_all()
                self._report(exc)
                with trio.move_on_after(self.retry_backoff_s):
                    await self._changed.wait()
                continue
            self._failing_since = None
            if not fetched and not self._closing:
                with trio.move_on_after(self._until_refresh_s()):
                    await self._changed.wait()

    def _until_refresh_s(self) -> float:
        """How long the idle fetcher may sleep before the subscription's next metadata look."""
        with self.lock:
            subscribed = bool(self._subscribed) or self._pattern is not None
        if not subscribed:
            return math.inf
        return max(self._refresh.next_at - time.monotonic(), 0.0)

    def _report(self, exc: BaseException) -> None:
        # Transport trouble (a broker restarting, a lost connection) is retried quietly and
        # surfaces from poll() only once it has lasted request_timeout_ms; an error the broker
        # states that will not go away by retrying surfaces at once.
        now = time.monotonic()
        transport = isinstance(exc, ClientError)
        if transport and self._failing_since is None:
            self._failing_since = now
            log.warning("fetcher: %s; retrying", exc)
        failing_for = now - self._failing_since if self._failing_since is not None else 0.0
        if (transport and failing_for >= self._cluster.request_timeout_s) or (
            not transport and not getattr(exc, "retriable", False)
        ):
            with self.lock:
                self._error = exc
            self._data.set()
            self._failing_since = None

    async def _resolve_subscriptions(self) -> None:
        """Read every partition of the subscribed topics (without a group): when the refresh is
        due, look the subscription up and add new topics' and new partitions' states. Also
        (re)loads the leaders of assigned topics the metadata cache forgot after an error
        (NOT_LEADER, a dead connection): fetches route by leader."""
        with self.lock:
            topics, pattern = list(self._subscribed), self._pattern
            assigned = {tp.topic for tp in self._states}
        if (topics or pattern is not None) and self._refresh.due(time.monotonic()):
            counts = await subscribed_partition_counts(self._cluster, topics, pattern)
            missing = sorted(set(topics) - set(counts))
            self._refresh.done(
                time.monotonic(), complete=bool(counts) if pattern is not None else not missing
            )
            if missing:
                log.info("subscribed topics %s do not exist (yet); looking again soon", missing)
            with self.lock:
                for topic, count in counts.items():
                    if self._subscribes_to(topic):
                        for partition in range(count):
                            tp = TopicPartition(topic, partition)
                            if tp not in self._states:
                                self._states[tp] = self._new_state()
            assigned.update(counts)
        for topic in assigned:
            if topic not in self._cluster.leaders:
                await self._cluster.topic_partitions(topic)

    async def _resolve_resets(self) -> None:
        with self.lock:
            pending = {tp: s.reset for tp, s in self._states.items() if s.fetch_offset < 0}
        if any(reset is None for reset in pending.values()):
            raise BrokerError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                "no position for "
                + ", ".join(f"{tp.topic}/{tp.partition}" for tp, r in pending.items() if r is None)
                + " and auto_offset_reset='none': seek() first",
            )
        if pending:
            offsets = await self._list_offsets(pending)  # type: ignore[arg-type]
            with self.lock:
                for tp, offset in offsets.items():
                    state = self._states.get(tp)
                    if state is not None and state.fetch_offset < 0 and state.reset == pending[tp]:
                        state.fetch_offset = state.position = offset

    async def _list_offsets(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """ListOffsets for each partition at its timestamp, sent to each partition's leader."""
        return await list_offsets(
            self._cluster,
            timestamps,
            retry_backoff_s=self.retry_backoff_s,
            isolation_level=self.isolation_level,
        )

    async def _fetch_round(self) -> bool:
        """Send one fetch per leader for the partitions that have room; False if none had."""
        with self.lock:
            # poll() wakes the fetcher (`_wake_fetcher`) once it has drained half the buffer.
            self._fetch_paused = self._buffer_full()
            if self._fetch_paused:
                return False
            wanted = [
                (tp, state.fetch_offset, state.epoch)
                for tp, state in self._states.items()
                if state.fetch_offset >= 0 and not state.paused
            ]
        if not wanted:
            return False
        by_leader: dict[int, list[tuple[TopicPartition, int, int]]] = {}
        errors: list[Exception] = []
        for item in wanted:
            leader = self._cluster.leader(*item[0])
            if leader is None:
                # Leaderless (an election) or forgotten after an error: reload the leaders and
                # come back after the backoff; the other partitions are fetched meanwhile.
                self._cluster.invalidate_leaders(item[0].topic)
                errors.append(
                    BrokerError(
                        ErrorCode.LEADER_NOT_AVAILABLE,
                        f"{item[0].topic}/{item[0].partition}: no leader known; retrying",
                    )
                )
                continue
            by_leader.setdefault(leader, []).append(item)
        with trio.CancelScope() as scope:
            self._fetch_scope = scope
            try:
                if len(by_leader) == 1:
                    # One leader (every single-broker and most small reads): no task and nursery
                    # per round, which cost a task start and two scheduler passes per fetch.
                    ((leader, items),) = by_leader.items()
                    await self._fetch_from(leader, items, errors)
                else:
                    # One fetch per leader; a failing leader (a dead broker) does not cancel
                    # the others' fetches: its error is raised once they are answered.
                    async with trio.open_nursery() as nursery:
                        for leader, items in by_leader.items():
                            nursery.start_soon(self._fetch_from, leader, items, errors)
            finally:
                self._fetch_scope = None
        if errors:
            transport = [e for e in errors if isinstance(e, ClientError)]
            raise (transport or errors)[0]
        return True

    async def _fetch_from(
        self, leader: int, items: list[tuple[TopicPartition, int, int]], errors: list[Exception]
    ) -> None:
        """One Fetch to `leader`; its answer is taken in by the connection's reader as it comes
        in (`_take_in`), and this task only waits for that: the records reach `poll` one
        scheduler pass after they are read, not two (reader, then this task, then `poll`)."""
        request = codec.FetchRequest(
            partitions=tuple(
                codec.FetchPartition(
                    topic=tp.topic,
                    partition=tp.partition,
                    fetch_offset=offset,
                    partition_max_bytes=self.max_partition_fetch_bytes,
                )
                for tp, offset, _ in items
            ),
            max_wait_ms=self.fetch_max_wait_ms,
            min_bytes=self.fetch_min_bytes,
            max_bytes=self.fetch_max_bytes,
            isolation_level=self.isolation_level,
        )
        # What the answer raised: the request's failure (a lost connection, a request-level
        # error), handled below as the call's; then taking its records in, raised as is.
        failure: list[BaseException] = []
        broken: list[BaseException] = []
        try:
            connection, header, pending = await self._cluster.send_request(request, leader)

            def answered(frame: Frame | None, error: BaseException | None) -> None:
                # In the reader's task (or whoever fails the connection): never raises.
                try:
                    if error is not None:
                        raise error
                    assert frame is not None
                    response = self._cluster.decode(connection, frame)
                except BaseException as exc:
                    failure.append(exc)
                else:
                    try:
                        self._take_in(response, items, errors)
                    except BaseException as exc:
                        broken.append(exc)

            # Cancelled (re-aimed, closing) or timed out: an answer that comes later is dropped,
            # as an awaited one would have been.
            await connection.finish_with_wait(
                header,
                pending,
                answered,
                timeout_s=self._cluster.request_timeout_s + self.fetch_max_wait_ms / 1000.0,
            )
            if failure:
                raise failure[0]
        except ClientClosedError:
            raise
        except (ClientError, BrokerError) as exc:
            for topic in {tp.topic for tp, _, _ in items}:
                self._cluster.invalidate_leaders(topic)  # the leader may have moved
            errors.append(exc)
        if broken:
            raise broken[0]

    def _take_in(
        self,
        response: codec.FetchResponse,
        items: list[tuple[TopicPartition, int, int]],
        errors: list[Exception],
    ) -> None:
        """Buffer a fetch answer's records (and note its partitions' errors) for `poll`."""
        asked = {tp: (offset, epoch) for tp, offset, epoch in items}
        got_data = False
        for result in response.partitions:
            tp = TopicPartition(result.topic, result.partition)
            if tp not in asked:
                continue
            offset, epoch = asked[tp]
            if result.error is not ErrorCode.NONE:
                error = self._partition_error(tp, epoch, result)
                if error is not None:
                    errors.append(error)
                continue
            if result.records:
                aborted = _aborted(result)
                next_offset, count = scan_fetched(result.records, offset, aborted)
                chunk = _Chunk(tp, epoch, result.records, offset, next_offset, count, aborted)
                got_data |= self._buffer_chunk(chunk)
        if got_data:
            self._data.set()
            self._data = trio.Event()

    def _buffer_chunk(self, chunk: _Chunk) -> bool:
        with self.lock:
            state = self._states.get(chunk.tp)
            if (
                state is None
                or state.epoch != chunk.epoch
                or state.fetch_offset != chunk.fetch_offset
            ):
                return False  # seeked or unassigned while the fetch was in flight
            state.fetch_offset = chunk.next_offset
            if not chunk.count:
                # Only control batches (a Raft term's leader no-op) or nothing new: no record to
                # hand out, but the position moves past them once everything before them has
                # been polled (Kafka does the same), so position() and commits advance.
                if state.position == chunk.fetch_offset and not any(
                    queued.tp == chunk.tp for queued in self._buffer
                ):
                    state.position = chunk.next_offset
                else:
                    self._buffer.append(chunk)  # _take moves the position when it gets there
                    self._buffered_bytes += len(chunk.raw)
                return False
            self._buffer.append(chunk)
            self._buffered += chunk.count
            self._buffered_bytes += len(chunk.raw)
            return True

    def _partition_error(
        self, tp: TopicPartition, epoch: int, result: codec.FetchPartitionResult
    ) -> BrokerError | None:
        """Handle a partition's fetch error; return it if the fetcher must back off or raise."""
        if result.error is ErrorCode.OFFSET_OUT_OF_RANGE and self._default_reset is not None:
            log.info(
                "%s/%s: %s; resetting to %s",
                tp.topic,
                tp.partition,
                result.error_message,
                self.auto_offset_reset,
            )
            with self.lock:
                state = self._states.get(tp)
                if state is not None and state.epoch == epoch:
                    state.fetch_offset = -1
                    state.reset = self._default_reset
            return None
        if result.error in METADATA_STALE_CODES:
            if result.leader_id >= 0 and self._cluster.learn_leader(
                tp.topic, tp.partition, result.leader_id
            ):
                return None  # NOT_LEADER naming the new leader: fetch there now, no backoff
            self._cluster.invalidate_leaders(tp.topic)
        return BrokerError(result.error, f"{tp.topic}/{tp.partition}: {result.error_message}")


def isolation_level_code(name: str) -> int:
    """The wire value of an isolation level name; anything else is a ConfigError."""
    if name not in _ISOLATION_LEVELS:
        raise ConfigError(
            "isolation_level", f"expected 'read_uncommitted' or 'read_committed', got {name!r}"
        )
    return _ISOLATION_LEVELS[name]


def _tp(partition: TopicPartition | tuple[str, int]) -> TopicPartition:
    return TopicPartition(*partition)


def _is_partition(value: object) -> bool:
    """One (topic, partition) pair, as opposed to a collection of them."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


async def list_offsets(
    cluster: Cluster,
    timestamps: Mapping[TopicPartition, int],
    *,
    retry_backoff_s: float,
    isolation_level: int = codec.READ_UNCOMMITTED,
) -> dict[TopicPartition, int]:
    """ListOffsets for each partition at its timestamp (EARLIEST/LATEST or ms), each partition
    asked of its leader (grouped per leader, retried on leader moves: `Cluster.for_leaders`).
    READ_COMMITTED makes LATEST the last stable offset rather than the high watermark."""
    found = await list_offset_results(
        cluster, timestamps, retry_backoff_s=retry_backoff_s, isolation_level=isolation_level
    )
    return {tp: result.offset for tp, result in found.items()}


async def list_offset_results(
    cluster: Cluster,
    timestamps: Mapping[TopicPartition, int],
    *,
    retry_backoff_s: float,
    isolation_level: int = codec.READ_UNCOMMITTED,
) -> dict[TopicPartition, codec.ListOffsetsPartitionResult]:
    """`list_offsets` with each partition's whole answer (the found record's timestamp too)."""

    async def send(node: int, group: list[TopicPartition]) -> dict[TopicPartition, Any]:
        request = codec.ListOffsetsRequest(
            partitions=tuple(
                codec.ListOffsetsPartition(
                    topic=tp.topic, partition=tp.partition, timestamp=timestamps[tp]
                )
                for tp in group
            ),
            isolation_level=isolation_level,
        )
        response: codec.ListOffsetsResponse = await cluster.call(request, node)
        outcome: dict[TopicPartition, Any] = {}
        for result in response.partitions:
            tp = TopicPartition(result.topic, result.partition)
            outcome[tp] = (
                result
                if result.error is ErrorCode.NONE
                else BrokerError(result.error, f"{tp.topic}/{tp.partition}: {result.error_message}")
            )
        return outcome

    if not timestamps:
        return {}
    return await cluster.for_leaders(list(timestamps), send, retry_backoff_s=retry_backoff_s)


class _Chunk:
    """Fetched batches of one partition: raw until a poll decodes them, then runs of records
    (client/consumer_records.py) that polls hand out from the front."""

    __slots__ = (
        "aborted",
        "count",
        "epoch",
        "fetch_offset",
        "next_offset",
        "raw",
        "runs",
        "tp",
    )

    def __init__(
        self,
        tp: TopicPartition,
        epoch: int,
        raw: bytes,
        fetch_offset: int,
        next_offset: int,
        count: int,
        aborted: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.tp = tp
        self.epoch = epoch
        self.raw = raw
        self.fetch_offset = fetch_offset
        self.next_offset = next_offset
        # Records not yet returned by poll: from the headers until decoded, then exact.
        self.count = count
        self.runs: deque[Run] | None = None  # decoded; polls take runs (or parts) from the left
        self.aborted = aborted  # read_committed: (producer id, first offset) to drop


def _aborted(result: codec.FetchPartitionResult) -> tuple[tuple[int, int], ...]:
    return tuple((a.producer_id, a.first_offset) for a in result.aborted_transactions)


def visible_batches(
    data: bytes,
    aborted: Sequence[tuple[int, int]] = (),
    *,
    validate: bool = True,
) -> Iterator[tuple[int, BatchHeader, bool]]:
    """Every batch of a fetched run as `(position, header, visible)`: control batches and
    batches of aborted transactions are not visible (their offsets still count).

    `aborted` is the fetch answer's (producer id, first offset) list (read_committed). As
    Kafka's fetcher does, a producer id is aborted from the batch that reaches its first offset
    until that producer's ABORT marker; per batch, from the header, so dropped records are never
    decoded.
    """
    pending = sorted(aborted, key=lambda item: item[1])
    aborting: set[int] = set()
    for position, header in iter_batches(
        data, validate=validate, max_batch_bytes=MAX_FETCHED_BATCH_BYTES
    ):
        if header.is_control:
            if header.producer_id in aborting and _is_abort_marker(data, position, header):
                aborting.discard(header.producer_id)
            yield position, header, False
            continue
        if pending or aborting:
            while pending and pending[0][1] <= header.last_offset:
                aborting.add(pending.pop(0)[0])
            if header.is_transactional and header.producer_id in aborting:
                yield position, header, False
                continue
        yield position, header, True


def _is_abort_marker(data: bytes, position: int, header: BatchHeader) -> bool:
    # One control record per marker batch: decoding it is per batch, not per record.
    records = decode_records(data, position, header=header)
    return bool(records) and control_type_of(records[0]) is ControlType.ABORT


def scan_fetched(
    data: bytes, fetch_offset: int, aborted: Sequence[tuple[int, int]] = ()
) -> tuple[int, int]:
    """CRC-check fetched batches; return the next fetch offset and a count of the records.

    Header work only (the CRC runs in C), so the next fetch can leave before any decoding.
    """
    next_offset = fetch_offset
    count = 0
    for _, header, visible in visible_batches(data, aborted):
        # A batch wholly below the fetch offset (the broker returns whole batches) neither moves
        # the offset back nor counts; a control or aborted batch moves it and does not count.
        if header.next_offset > next_offset:
            next_offset = header.next_offset
        if visible and header.next_offset > fetch_offset:
            count += header.record_count
    return next_offset, count


def decode_fetched(
    tp: TopicPartition,
    data: bytes,
    fetch_offset: int,
    aborted: Sequence[tuple[int, int]] = (),
    *,
    validate: bool = True,
    count: int | None = None,
) -> list[ConsumerRecord]:
    """The records at or after `fetch_offset` in a fetched run of batches, built at once (the
    share consumer's and the tests' form of `decode_runs`)."""
    runs = decode_runs(tp, data, fetch_offset, aborted, validate=validate, count=count)
    return list(ConsumerRecords(runs))


def decode_runs(
    tp: TopicPartition,
    data: bytes,
    fetch_offset: int,
    aborted: Sequence[tuple[int, int]] = (),
    *,
    validate: bool = True,
    count: int | None = None,
) -> list[Run]:
    """The records at or after `fetch_offset` in a fetched run of batches, one run per batch:
    a msgpack batch's rows as they were decoded (no record object built yet), else records.

    Control batches and aborted transactions' batches are skipped (their offsets still count).
    `validate=False` skips the CRC check, for data that `scan_fetched` already checked. `count`
    is the run's record count when known (`scan_fetched`'s): a run of a few records is decoded
    without the GC pause, whose young collection would cost more (client/_gc.py).
    """
    topic, partition = head = (tp.topic, tp.partition)
    runs: list[Run] = []
    # The rows outlive this call: past the young generations (client/_gc.py).
    with gc_paused_promoting_for(GC_PAUSE_ROWS if count is None else count):
        for position, header, visible in visible_batches(data, aborted, validate=validate):
            if not visible or header.next_offset <= fetch_offset:
                continue
            rows = decode_rows(data, position, header)
            if rows is None or not is_dense(header):
                # Kafka's varint encoding, or a compacted batch (rows carry offset deltas):
                # the general decoder.
                records = [
                    _new_record(ConsumerRecord, head + record)
                    for record in decode_records(data, position, header=header)
                    if record.offset >= fetch_offset
                ]
                if records:  # a run is never empty: its last record gives the position
                    runs.append(ListRun(records))
                continue
            skip = max(fetch_offset - header.base_offset, 0)
            runs.append(
                RowsRun(
                    topic,
                    partition,
                    header.base_offset,
                    header.base_timestamp,
                    rows,
                    skip,
                    len(rows),
                )
            )
    return runs


_new_record = tuple.__new__
