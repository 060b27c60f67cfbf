"""CoordinatorShell: the trio half of a coordinator hosted on an internal topic's partitions.

A coordinator here is a pure core per partition of an internal topic (`__consumer_offsets` for
the group coordinator, `__transaction_state` for the transaction coordinator) with the caller
contract of the group core: load by replaying the partition, unload on losing it, append its
writes in order and report each outcome in that order, tick at its deadline, route responses by
request id. This module does that once, for both services (broker/consumer_groups/service.py,
broker/transactions/service.py); a service adds only what is its own through hooks: `on_action`
(the transaction coordinator's marker deliveries), `on_retire` (the group core's member id
sequence, carried over to the partition's next core), `after_tick` (metrics snapshots). The
lifecycle events it feeds are the group core's classes (broker/consumer_groups/events.py), which
every such core accepts.

Rules (docs/transactions.md "The service"):
- Load: a partition is loaded when this broker leads it and every entry of earlier leaderships
  is committed (high watermark = log end). The coordinator epoch grows with every leadership: a
  start counter on a single node, the partition's Raft term in a cluster.
- Persist: `PersistRecords` is appended at once, as one batch (transactional, with the producer's
  id and epoch, for a TxnOffsetCommit), and `PersistMarker` as a transaction marker batch, in
  emission order, to the leadership the core was loaded from; a writer task per partition waits
  for each append to be acknowledged (acks=all) and feeds `RecordsPersisted(token)`, or
  `AppendFailed(token)`, in that order, to the core that asked (a core from an earlier leadership
  ignores it).
- Respond: every response goes to the request that waits for it, by `request_id`. Handlers
  submit a request synchronously (pipelined requests take effect in arrival order) and await its
  answer, bounded by a timeout the handler chooses.
- Tick: `Tick(now_ms)` to a core once its next deadline (`next_deadline_ms`) has come; the
  shell looks at the deadlines at least every `TICK_INTERVAL_MS`, so a deadline an event moved
  earlier is late by at most that. A core with nothing due gets no Tick (an idle broker's three
  coordinators were ticked 240 times a second).
- Shutdown: `stop()` answers every waiting request NOT_COORDINATOR, so no request holds the
  broker's graceful stop.
- Containment: a core that raises (a broken invariant is a bug in the core, not in the request)
  is logged with its traceback and discarded: every request waiting on it is answered
  NOT_COORDINATOR (retriable: clients find the coordinator again and retry), later reports for it
  are ignored, and the leadership watcher reloads the partition from its log, which is the truth.
  One bad event costs that partition's waiting requests a retry; it never stops the service or
  the broker. A core that raises while loading is not reloaded until the leadership changes:
  replaying the same log would fail the same way.
Time is the wall clock in ms (timestamps are persisted and compared after restarts).
"""

from __future__ import annotations

import abc
import collections
import itertools
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Final, Generic, Protocol, TypeVar

import trio

from broker.appended import Appended
from broker.consumer_groups.actions import PersistMarker, PersistRecords
from broker.consumer_groups.events import (
    AppendFailed,
    LoadPartition,
    RecordsPersisted,
    Tick,
    UnloadPartition,
)
from broker.consumer_groups.offsets import (
    EncodedRecord,
    LogEntry,
    MarkerRecord,
    coordinator_partition,
)
from broker.transactions.producer_state import Marker, build_marker_batch, is_marker, marker_of
from wire.batch import (
    InvalidBatchError,
    build_batch,
    decode_records,
    iter_batches,
    unpack_header,
)
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

# Upper bound on the time between two looks at the cores' deadlines.
TICK_INTERVAL_MS: Final = 100
# Bytes read per step while replaying a partition at load.
LOAD_READ_BYTES: Final = 4 * 1024 * 1024
# A leadership watcher looks again this often even without a change (a replica appearing).
LEADERSHIP_RECHECK_S: Final = 0.5
# How often a service's snapshot for /metrics is rebuilt (after a round of ticks).
METRICS_REFRESH_MS: Final = 1_000


class Core(Protocol):
    """What the shell needs of a pure coordinator core."""

    def handle(self, event: Any) -> list[Any]: ...
    def next_deadline_ms(self) -> int | None: ...


# What a core asks the shell to append to its partition, in the order it asks.
Write = PersistRecords | PersistMarker


class Waiting:
    """A request waiting for its response from a core. It remembers the core and the request, so
    that if that core breaks the shell can still answer it (`request.reject`)."""

    __slots__ = ("core", "event", "request", "response")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.event = trio.Event()
        self.request: Any = None
        self.response: Any = None


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def next_coordinator_epoch(store: Any, key_space: Any, key: bytes) -> int:
    """A single node's coordinator epoch for this start: one more than the last start's, kept
    durably in the LMDB `store` (None in tests: always 1). It must grow with every start, so that
    ids a later coordinator derives from it never collide with persisted ones."""
    if store is None:
        return 1
    stored = store.get_obj(key_space, key)
    epoch = (int(stored) if stored is not None else 0) + 1
    store.put_obj(key_space, key, epoch, durable=True)
    return epoch


def ensure_internal_topic(
    topics: Any, name: str, partition_count: int, configs: dict[str, Any]
) -> None:
    """Create an internal topic if this data directory has none yet (at start-up). Its partition
    count is fixed once created: a different value later is logged and ignored, since every key
    (group, transactional id) would move to another partition."""
    existing = topics.get(name)
    if existing is None:
        topics.create(name, partitions=partition_count, configs=configs)
    elif existing.partition_count != partition_count:
        logger.warning(
            "%s has %d partitions, the configuration says %d: keeping %d",
            name,
            existing.partition_count,
            partition_count,
            existing.partition_count,
        )


class CoordinatorShell:
    """One core per partition of `topic`, following each partition's leadership.

    `new_core(partition)` makes a fresh core for `partition` (to load, or to stand unloaded);
    `on_action(partition, core, action)` carries out actions that are neither writes nor
    responses (those have a `request_id`); `next_epoch()` is called once per `run` and gives a
    single node's coordinator epoch; `on_retire(partition, core)` sees a core that is
    replaced (unloaded, or discarded after it raised) before `new_core` makes its successor;
    `after_tick(now_ms)` runs after every round of ticks while serving. `name` names the
    coordinator in the log.
    """

    def __init__(
        self,
        context: Any,
        *,
        topic: str,
        name: str,
        new_core: Callable[[int], Core],
        next_epoch: Callable[[], int],
        on_action: Callable[[int, Core, Any], None] | None = None,
        on_retire: Callable[[int, Core], None] | None = None,
        after_tick: Callable[[int], None] | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._context = context
        self.topic = topic
        self._name = name
        self._new_core = new_core
        self._on_action = on_action
        self._on_retire = on_retire
        self._next_epoch = next_epoch
        self.clock_ms = clock_ms
        self._after_tick = after_tick
        record = context.topics.get(topic)
        assert record is not None, f"create {topic} before its coordinator starts"
        self.partition_count: int = record.partition_count
        self.cores: dict[int, Core] = {p: self._unloaded(p) for p in range(self.partition_count)}
        self._leaderships: dict[int, Any] = {}  # partition -> the PartitionState loaded from
        self._waiting: dict[int, Waiting] = {}
        self._request_ids = itertools.count(1)
        # Per partition, in emission order: (the core that asked, token, the append | error).
        self._writes: dict[int, collections.deque[tuple[Core, int, Appended | ErrorCode]]] = {
            p: collections.deque() for p in self.cores
        }
        self._write_wanted = {p: trio.Event() for p in self.cores}
        # Cores that raised: discarded, their late reports ignored (see "Containment").
        self._broken: weakref.WeakSet[Any] = weakref.WeakSet()
        # Per partition: the leadership whose load raised (not retried until it changes), and
        # the event that wakes its leadership watcher.
        self._unloadable: dict[int, Any] = {}
        self._watcher_wakeups: dict[int, trio.Event] = {}
        self._stopped = False
        self._nursery: trio.Nursery | None = None

    def _unloaded(self, partition: int) -> Core:
        """A core for a partition this broker does not lead: it answers NOT_COORDINATOR."""
        core = self._new_core(partition)
        core.handle(UnloadPartition(now_ms=0))
        return core

    # --- lifecycle --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow every partition's leadership, run the writers and the ticker until cancelled.
        Partitions led at start are loaded before `started`."""
        base_epoch = self._next_epoch()
        async with trio.open_nursery() as nursery:
            # The nursery first: loading may already start tasks (a transaction's markers).
            self._nursery = nursery
            for partition in sorted(self.cores):
                self._follow(partition, base_epoch)
            for partition in sorted(self.cores):
                nursery.start_soon(self._write_loop, partition)
                nursery.start_soon(self._watch, partition, base_epoch)
            nursery.start_soon(self._tick_loop)
            task_status.started()

    def start_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Run a task of the service (a marker delivery) in the shell's nursery."""
        assert self._nursery is not None, "the shell is not running"
        self._nursery.start_soon(function, *args)

    def loaded_partitions(self) -> list[int]:
        return sorted(self._leaderships)

    def stop(self) -> None:
        """Shutdown: answer every waiting request NOT_COORDINATOR and serve no more."""
        if not self._stopped:
            self._stopped = True
            for partition in sorted(self.cores):
                self.feed(partition, UnloadPartition(now_ms=self.clock_ms()))

    async def _watch(self, partition: int, base_epoch: int) -> None:
        while not self._stopped:
            wakeup = self._watcher_wakeups[partition] = trio.Event()
            state = self._context.partitions.get((self.topic, partition))
            if state is not None:
                state.waiters.add(wakeup)  # woken at every change of the partition
            try:
                self._follow(partition, base_epoch)
                # The partition may also appear or be replaced (a replica starting): look again.
                with trio.move_on_after(LEADERSHIP_RECHECK_S):
                    await wakeup.wait()
            finally:
                if state is not None:
                    state.waiters.discard(wakeup)

    def _follow(self, partition: int, base_epoch: int) -> None:
        """Load or unload `partition`'s core if its leadership changed."""
        if self._stopped:
            return
        state = self._context.partitions.get((self.topic, partition))
        loaded = self._leaderships.get(partition)
        leads = state is not None and not state.removed and state.is_leader
        if loaded is not None and (state is not loaded or not leads):
            self.feed(partition, UnloadPartition(now_ms=self.clock_ms()))
            self._retire(partition, self.cores[partition])
            logger.info("%s-%d: unloaded (no longer the leader)", self.topic, partition)
        elif loaded is None and leads and self._unloadable.get(partition) is not state:
            assert state is not None
            if state.high_watermark < state.log.log_end_offset:
                return  # earlier leaderships' entries are not all committed yet: replay later
            # A cluster's partition term grows with every leadership; a single node has one.
            epoch = base_epoch if self._context.cluster is None else state.leader_epoch
            self._load(partition, state, epoch)

    def _load(self, partition: int, state: Any, epoch: int) -> None:
        records = tuple(read_records(state.log))
        started = time.monotonic()
        core = self._new_core(partition)
        self.cores[partition] = core
        self._leaderships[partition] = state
        self.feed(
            partition,
            LoadPartition(now_ms=self.clock_ms(), coordinator_epoch=epoch, records=records),
        )
        if core in self._broken:
            self._unloadable[partition] = state
            logger.error(
                "%s-%d: its %d record(s) cannot be loaded; not served until its leadership "
                "changes (or the broker restarts)",
                self.topic,
                partition,
                len(records),
            )
            return
        logger.info(
            "%s-%d: loaded %d record(s) in %.3f s (coordinator epoch %d)",
            self.topic,
            partition,
            len(records),
            time.monotonic() - started,
            epoch,
        )

    def _retire(self, partition: int, core: Core) -> None:
        """Replace `partition`'s core by one answering NOT_COORDINATOR until the watcher loads
        it again (`on_retire` first sees the core it replaces)."""
        if self._on_retire is not None:
            self._on_retire(partition, core)
        self.cores[partition] = self._unloaded(partition)
        self._leaderships.pop(partition, None)

    # --- requests ---------------------------------------------------------------------------------

    def submit(self, partition: int, build: Callable[[int, int], Any]) -> Waiting:
        """Feed the request `build(request_id, now_ms)` to `partition`'s core now; `response` is
        already set on the result if the core answered at once."""
        request_id = next(self._request_ids)
        waiting = Waiting(self.cores[partition])
        self._waiting[request_id] = waiting
        waiting.request = build(request_id, self.clock_ms())
        self.feed(partition, waiting.request)
        return waiting

    async def wait(self, waiting: Waiting, timeout_s: float) -> Any:
        """The response, or None if it did not come within `timeout_s`."""
        with trio.move_on_after(timeout_s):
            await waiting.event.wait()
        if waiting.response is None:
            self._waiting.pop(getattr(waiting.request, "request_id", -1), None)
        return waiting.response

    def call_now(self, partition: int, build: Callable[[int, int], Any]) -> Any:
        """Submit a request the core answers synchronously (list, describe)."""
        waiting = self.submit(partition, build)
        assert waiting.response is not None, "this request is answered at once"
        return waiting.response

    # --- feeding the cores ------------------------------------------------------------------------

    def feed(self, partition: int, event: Any) -> None:
        self.feed_core(partition, self.cores[partition], event)

    def feed_core(self, partition: int, core: Core, event: Any) -> None:
        """Hand `event` to `core` and carry out its actions; a core that raises is contained."""
        if core in self._broken:
            return  # a late report (or tick) for a core discarded after it raised
        try:
            actions = core.handle(event)
        except Exception:
            # A bug in the core (a broken invariant), met while handling `event`: contain it to
            # this partition. `handle` returns its actions only at the end, so nothing the core
            # ordered during the failed call has been carried out.
            logger.exception(
                "%s-%d: the %s failed on %s; discarding it, answering its waiting "
                "requests NOT_COORDINATOR, reloading the partition from its log",
                self.topic,
                partition,
                self._name,
                type(event).__name__,
            )
            self._discard(partition, core)
            return
        for action in actions:
            if isinstance(action, Write):
                self._append(partition, core, action)
            elif hasattr(action, "request_id"):
                self._answer(action)
            else:
                assert self._on_action is not None, action
                self._on_action(partition, core, action)

    def _answer(self, response: Any) -> None:
        waiting = self._waiting.pop(response.request_id, None)
        if waiting is not None:  # None: its handler gave up (timeout, closed connection)
            waiting.response = response
            waiting.event.set()

    def _discard(self, partition: int, core: Core) -> None:
        """Containment: `core` raised. Answer everything waiting on it with a retriable error,
        ignore it from now on, and have the leadership watcher load the partition afresh."""
        self._broken.add(core)
        stranded = [w for w in self._waiting.values() if w.core is core and w.request is not None]
        for waiting in stranded:
            self._answer(waiting.request.reject(ErrorCode.NOT_COORDINATOR))
        if self.cores[partition] is core:
            self._retire(partition, core)
            wakeup = self._watcher_wakeups.get(partition)
            if wakeup is not None:
                wakeup.set()

    def _append(self, partition: int, core: Core, action: Write) -> None:
        """Append the write as one batch now (emission order); the writer reports the outcome.

        A transactional batch or a marker is also handed to the partition's producer state
        (`accept`): in a cluster the proposal is written later, and a marker or produce racing it
        must see the transaction it opens or closes."""
        outcome: Appended | ErrorCode
        try:
            # The leadership the core was loaded from: a replica started since is not ours yet.
            state = self._leaderships.get(partition)
            if state is None:
                raise BrokerError(
                    ErrorCode.NOT_COORDINATOR, f"{self.topic}-{partition} is not loaded here"
                )
            batch = batch_of(action, self.clock_ms())
            outcome = state.append(batch)
            if action.producer_id >= 0:
                marker = None
                if isinstance(action, PersistMarker):
                    marker = Marker(action.commit, action.coordinator_epoch)
                state.accept(
                    unpack_header(batch), outcome.base_offset, state.leader_epoch, marker=marker
                )
        except (BrokerError, OSError) as exc:
            logger.error("%s-%d: append failed: %s", self.topic, partition, exc)
            outcome = ErrorCode.NOT_COORDINATOR
        self._writes[partition].append((core, action.token, outcome))
        self._write_wanted[partition].set()

    async def _write_loop(self, partition: int) -> None:
        queue = self._writes[partition]
        while True:
            while not queue:
                await self._write_wanted[partition].wait()
                self._write_wanted[partition] = trio.Event()
            core, token, outcome = queue[0]
            error = outcome if isinstance(outcome, ErrorCode) else None
            if not isinstance(outcome, ErrorCode):
                try:
                    # Group commit: one fsync (or one Raft commit) covers every write appended
                    # meanwhile, so the writes queued behind this one find themselves done at once.
                    await outcome.wait_acked()
                except (BrokerError, OSError) as exc:
                    logger.error("%s-%d: write not acknowledged: %s", self.topic, partition, exc)
                    error = ErrorCode.NOT_COORDINATOR
                state = self._context.partitions.get((self.topic, partition))
                if state is not None:
                    state.notify()  # readers of the topic see the new high watermark
            queue.popleft()
            now_ms = self.clock_ms()
            report = (
                RecordsPersisted(now_ms=now_ms, token=token)
                if error is None
                else AppendFailed(now_ms=now_ms, token=token, error=error)
            )
            self.feed_core(partition, core, report)

    async def _tick_loop(self) -> None:
        while True:
            now_ms = self.clock_ms()
            deadlines = [d for c in self.cores.values() if (d := c.next_deadline_ms()) is not None]
            wait_ms = min([TICK_INTERVAL_MS, *(d - now_ms for d in deadlines)])
            await trio.sleep(max(wait_ms, 1) / 1000)
            now_ms = self.clock_ms()
            # Only the cores with something to do (events since the sleep may have moved their
            # deadlines, so they are asked again): an idle core costs one question per round.
            for partition in sorted(self.cores):
                deadline = self.cores[partition].next_deadline_ms()
                if deadline is not None and deadline <= now_ms:
                    self.feed(partition, Tick(now_ms=now_ms))
            if self._after_tick is not None and not self._stopped:
                self._after_tick(now_ms)


ResponseT = TypeVar("ResponseT")
SnapshotT = TypeVar("SnapshotT")


class CoordinatorService(abc.ABC, Generic[ResponseT, SnapshotT]):
    """The part of a coordinator service that only hands over to its `CoordinatorShell`: the
    lifecycle, the request calls the handlers make, the key -> partition mapping, and the
    /metrics snapshot rebuilt every `METRICS_REFRESH_MS` (give the shell `after_tick=
    self._after_tick`). Both services (groups, transactions) have exactly this front; what is
    their own stays in the subclass."""

    def __init__(self, shell: CoordinatorShell, metrics_snapshot: SnapshotT) -> None:
        self.shell = shell
        self.partition_count = shell.partition_count
        self.metrics_snapshot = metrics_snapshot
        self._metrics_due_ms = 0

    @abc.abstractmethod
    def _build_metrics_snapshot(self) -> SnapshotT:
        """What /metrics shows now (answered at once from the loaded cores)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow every partition's leadership (loading and unloading cores), run the writers and
        the ticker until cancelled. Partitions led at start are loaded before `started`."""
        await self.shell.run(task_status=task_status)

    def unload_all(self) -> None:
        """Shutdown: answer every waiting request NOT_COORDINATOR and serve no more."""
        self.shell.stop()

    def partition_of(self, key: str) -> int:
        """The partition whose core owns `key` (a group id, a transactional id)."""
        return coordinator_partition(key, self.partition_count)

    def submit(self, partition: int, build: Callable[[int, int], Any]) -> Waiting:
        """Feed the request `build(request_id, now_ms)` to `partition`'s core now.

        Returns the waiting answer: `response` is already set if the core answered at once.
        """
        return self.shell.submit(partition, build)

    async def wait(self, waiting: Waiting, timeout_s: float) -> ResponseT | None:
        """The response, or None if it did not come within `timeout_s`."""
        response: ResponseT | None = await self.shell.wait(waiting, timeout_s)
        return response

    def call_now(self, partition: int, build: Callable[[int, int], Any]) -> ResponseT:
        """Submit a request the core answers synchronously (fetch, list, describe)."""
        response: ResponseT = self.shell.call_now(partition, build)
        return response

    def _after_tick(self, now_ms: int) -> None:
        if now_ms >= self._metrics_due_ms:
            self._metrics_due_ms = now_ms + METRICS_REFRESH_MS
            self.metrics_snapshot = self._build_metrics_snapshot()


def batch_of(action: Write, now_ms: int) -> bytes:
    """The batch a write orders: msgpack records `[key, value]` as the core encoded them
    (transactional, sequence -1, for a producer's offsets; a coordinator's write opens the
    transaction without sequence checks), or a transaction marker."""
    if isinstance(action, PersistMarker):
        return build_marker_batch(
            action.producer_id,
            action.producer_epoch,
            commit=action.commit,
            coordinator_epoch=action.coordinator_epoch,
            timestamp_ms=now_ms,
        )
    assert action.records, action
    return build_batch(
        [(now_ms, r.key, r.value, None) for r in action.records],
        producer_id=action.producer_id,
        producer_epoch=action.producer_epoch,
        base_sequence=-1,
        transactional=action.producer_id >= 0,
    )


def read_records(log: Any) -> Iterable[LogEntry]:
    """Every record of a partition log, oldest first (the replay at load), with the producer of
    a transactional batch, and the transaction markers (only `__consumer_offsets` has either).
    Raft no-ops (control batches without the transactional bit) are skipped; so is a marker that
    does not decode, as the partition's producer state ignores it."""
    offset = log.log_start_offset
    end = log.log_end_offset
    while offset < end:
        result = log.read(offset, LOAD_READ_BYTES)
        if result.next_offset <= offset:
            break
        data = result.data
        for position, header in iter_batches(data, max_batch_bytes=log.config.max_batch_bytes):
            if is_marker(header):
                if header.base_offset >= offset:
                    try:
                        marker = marker_of(data, position, header)
                    except InvalidBatchError:
                        logger.warning("skipping an undecodable marker at %d", header.base_offset)
                        continue
                    yield MarkerRecord(header.producer_id, header.producer_epoch, marker.commit)
                continue
            if header.is_control:
                continue
            producer_id = header.producer_id if header.is_transactional else -1
            producer_epoch = header.producer_epoch if header.is_transactional else -1
            for record in decode_records(data, position, header=header):
                if record.offset >= offset and record.key is not None:
                    yield EncodedRecord(
                        bytes(record.key), record.value, producer_id, producer_epoch
                    )
        offset = result.next_offset
