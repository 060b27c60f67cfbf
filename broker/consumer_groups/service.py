"""GroupService: the trio shell around the pure group cores, over the __consumer_offsets topic.

One `GroupCoordinatorCore` per partition of `__consumer_offsets` this broker leads (on a single
broker: every partition). The service carries out the core's contract (coordinator.py):
- Load: a partition is loaded when this broker leads it and every entry of earlier leaderships is
  committed (its high watermark has reached its log end): its log is replayed into a fresh core's
  `LoadPartition`. The coordinator epoch grows with every leadership, so member ids handed out by
  a later coordinator never collide with persisted ones: on a single node it is a start counter
  kept in LMDB (`KeySpace.GROUPS`); in a cluster, the partition's Raft term. When the broker
  stops leading the partition its core is unloaded (waiting requests get NOT_COORDINATOR) and
  replaced by an unloaded one, which answers NOT_COORDINATOR until the next leadership.
- Persist: `PersistRecords` is appended at once, as one batch, in the order the core emitted it
  (`PartitionState.append`: the local log, or a Raft proposal); a writer task per partition then
  waits for it to be acknowledged as acks=all would be (durable here, or committed by the group)
  and feeds `RecordsPersisted(token)` in that same order, or `AppendFailed(token)`, to the core
  that asked for it (a core from an earlier leadership ignores it).
- Respond: every `Respond*` goes to the request that waits for it, by `request_id`. Handlers
  submit an event synchronously (so pipelined requests take effect in arrival order) and await the
  answer, bounded by a timeout the handler chooses (the rebalance timeout for JoinGroup).
- Tick: `Tick(now_ms)` at the cores' next deadline, and at least every `TICK_INTERVAL_MS`.
- Shutdown: `unload_all()` answers every waiting request NOT_COORDINATOR, so no join holds the
  broker's graceful stop.
- Containment: a core that raises (a broken invariant is a bug in the core, not in the request) is
  logged with its traceback and discarded: every request waiting on it is answered
  NOT_COORDINATOR (retriable: clients find the coordinator again and retry), later reports for it
  are ignored, and the leadership watcher reloads the partition from its log, which is the truth.
  One bad event costs that partition's waiting requests a retry; it never stops the service or
  the broker. A core that raises while loading is not reloaded until the leadership changes:
  replaying the same log would fail the same way.
Time is the wall clock in ms (commit timestamps are persisted and compared after restarts).

`coordinator_partition(group_id, N)` picks the core; a broker that does not lead that partition
answers NOT_COORDINATOR (FindCoordinator names the leader).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Final

import trio

from broker.appended import Appended
from broker.consumer_groups.actions import (
    PersistRecords,
    RespondDescribeGroups,
    RespondListGroups,
    Response,
)
from broker.consumer_groups.assignors import Assignment
from broker.consumer_groups.config import GroupConfig
from broker.consumer_groups.coordinator import GroupCoordinatorCore, GroupCoordinatorStatistics
from broker.consumer_groups.events import (
    AppendFailed,
    DescribeGroupsRequested,
    Event,
    ListGroupsRequested,
    LoadPartition,
    RecordsPersisted,
    Request,
    Tick,
    UnloadPartition,
)
from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import EncodedRecord, coordinator_partition
from broker.errors import BrokerError, ErrorCode
from broker.log.batch import build_batch, decode_records, iter_batches

logger = logging.getLogger(__name__)

OFFSETS_TOPIC: Final = "__consumer_offsets"
# The internal topic's own configs: commits must never be deleted by time or size retention
# (compaction is not built yet), and an acknowledged commit must be on disk.
OFFSETS_TOPIC_CONFIGS: Final = {"retention.ms": -1, "retention.bytes": -1, "flush.policy": "always"}
# Upper bound on the time between two Ticks, whatever the cores' deadlines say.
TICK_INTERVAL_MS: Final = 100
# How often the lag and statistics snapshot for /metrics is rebuilt.
METRICS_REFRESH_MS: Final = 1_000
# Bytes read per step while replaying a partition at load.
LOAD_READ_BYTES: Final = 4 * 1024 * 1024
EPOCH_KEY: Final = b"coordinator_epoch"
# A leadership watcher looks again this often even without a change (a replica appearing).
LEADERSHIP_RECHECK_S: Final = 0.5


def is_internal_topic(name: str) -> bool:
    """Topics only the broker writes (clients may read them)."""
    return name == OFFSETS_TOPIC


def group_config_of(broker_config: Any) -> GroupConfig:
    """The `GroupConfig` named by a `BrokerConfig`'s group fields."""
    return GroupConfig(
        session_timeout_ms_min=broker_config.group_min_session_timeout_ms,
        session_timeout_ms_max=broker_config.group_max_session_timeout_ms,
        initial_rebalance_delay_ms=broker_config.group_initial_rebalance_delay_ms,
        group_size_max=broker_config.group_max_size,
        offsets_retention_ms=broker_config.offsets_retention_ms,
    )


def ensure_offsets_topic(topics: Any, partition_count: int) -> None:
    """Create `__consumer_offsets` if this data directory has none yet (at start-up)."""
    if topics.get(OFFSETS_TOPIC) is not None:
        existing = topics.get(OFFSETS_TOPIC).partition_count
        if existing != partition_count:
            logger.warning(
                "%s has %d partitions, offsets_topic_partitions says %d: keeping %d (the count "
                "is fixed once created, or groups would move)",
                OFFSETS_TOPIC,
                existing,
                partition_count,
                existing,
            )
        return
    topics.create(OFFSETS_TOPIC, partitions=partition_count, configs=OFFSETS_TOPIC_CONFIGS)


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class LagSample:
    """One partition a group commits to, for /metrics."""

    group_id: str
    topic: str
    partition: int
    committed_offset: int
    log_end_offset: int
    lag: int


@dataclasses.dataclass(frozen=True, slots=True)
class GroupMetricsSnapshot:
    lag: tuple[LagSample, ...] = ()
    statistics: tuple[tuple[int, GroupCoordinatorStatistics], ...] = ()


class _Pending:
    """A request waiting for its response from a core.

    It remembers the core it was fed to and the request itself, so that if that core breaks the
    service can still answer it (`request.reject`).
    """

    __slots__ = ("core", "event", "request", "response")

    def __init__(self, core: GroupCoordinatorCore) -> None:
        self.core = core
        self.event = trio.Event()
        self.request: Request | None = None
        self.response: Response | None = None


class GroupService:
    """The cores of every __consumer_offsets partition this broker leads. See the module rules.

    `context` is the broker's `BrokerContext` (topics, partitions, flusher); `store` the LMDB
    `KvStore` (None in tests: the epoch then starts at 1).
    """

    def __init__(
        self,
        context: Any,
        *,
        config: GroupConfig,
        store: Any = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        config.validate()
        self._context = context
        self._config = config
        self._store = store
        self._clock_ms = clock_ms
        record = context.topics.get(OFFSETS_TOPIC)
        assert record is not None, "ensure_offsets_topic before the service starts"
        self.partition_count: int = record.partition_count
        self._cores = {p: _unloaded_core(config) for p in range(self.partition_count)}
        # The partition state each loaded core was loaded from (its leadership).
        self._leaderships: dict[int, Any] = {}
        self._pending: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        # Per partition, in emission order: (the core that asked, token, the append | error).
        self._writes: dict[
            int, collections.deque[tuple[GroupCoordinatorCore, int, Appended | ErrorCode]]
        ] = {p: collections.deque() for p in self._cores}
        self._write_wanted = {p: trio.Event() for p in self._cores}
        # Cores that raised: discarded, their late reports ignored (see "Containment").
        self._broken: weakref.WeakSet[GroupCoordinatorCore] = weakref.WeakSet()
        # Per partition: the leadership whose load raised (not retried until it changes), the
        # next member id sequence (a reload in the same epoch continues it), and the event that
        # wakes its leadership watcher.
        self._unloadable: dict[int, Any] = {}
        self._member_sequences: dict[int, int] = {}
        self._watcher_wakeups: dict[int, trio.Event] = {}
        self._unloaded = False
        self.metrics_snapshot = GroupMetricsSnapshot()
        self._metrics_due_ms = 0

    @property
    def config(self) -> GroupConfig:
        return self._config

    # --- lifecycle --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow every partition's leadership (loading and unloading cores), run the writers and
        the ticker until cancelled. Partitions led at start are loaded before `started`."""
        base_epoch = self._next_epoch()
        for partition in sorted(self._cores):
            self._follow_leadership(partition, base_epoch)
        async with trio.open_nursery() as nursery:
            for partition in sorted(self._cores):
                nursery.start_soon(self._write_loop, partition)
                nursery.start_soon(self._watch_leadership, partition, base_epoch)
            nursery.start_soon(self._tick_loop)
            task_status.started()

    def _next_epoch(self) -> int:
        if self._store is None:
            return 1
        from broker.kvstore import KeySpace

        stored = self._store.get_obj(KeySpace.GROUPS, EPOCH_KEY)
        epoch = (int(stored) if stored is not None else 0) + 1
        self._store.put_obj(KeySpace.GROUPS, EPOCH_KEY, epoch, durable=True)
        return epoch

    async def _watch_leadership(self, partition: int, base_epoch: int) -> None:
        """Load or unload `partition`'s core whenever its leadership changes."""
        while not self._unloaded:
            event = self._watcher_wakeups[partition] = trio.Event()
            state = self._context.partitions.get((OFFSETS_TOPIC, partition))
            if state is not None:
                state.waiters.add(event)  # woken at every change of the partition
            try:
                self._follow_leadership(partition, base_epoch)
                # The partition may also appear or be replaced (a replica starting): look again.
                with trio.move_on_after(LEADERSHIP_RECHECK_S):
                    await event.wait()
            finally:
                if state is not None:
                    state.waiters.discard(event)

    def _follow_leadership(self, partition: int, base_epoch: int) -> None:
        if self._unloaded:
            return
        state = self._context.partitions.get((OFFSETS_TOPIC, partition))
        loaded = self._leaderships.get(partition)
        leads = state is not None and not state.removed and state.is_leader
        if loaded is not None and (state is not loaded or not leads):
            self._unload(partition)
        elif loaded is None and leads and self._unloadable.get(partition) is not state:
            assert state is not None
            if state.high_watermark < state.log.log_end_offset:
                return  # earlier leaderships' entries are not all committed yet: replay later
            # A cluster's partition term grows with every leadership; a single node has one.
            epoch = base_epoch if self._context.cluster is None else state.leader_epoch
            self._load(partition, state, epoch)

    def _load(self, partition: int, state: Any, epoch: int) -> None:
        records = tuple(_read_all(state.log))
        started = time.monotonic()
        core = GroupCoordinatorCore(
            self._config, first_member_sequence=self._member_sequences.get(partition, 1)
        )
        self._cores[partition] = core
        self._leaderships[partition] = state
        self._feed(
            partition,
            LoadPartition(now_ms=self._clock_ms(), coordinator_epoch=epoch, records=records),
        )
        if core in self._broken:
            self._unloadable[partition] = state
            logger.error(
                "%s-%d: its %d record(s) cannot be loaded; the partition's groups are not served "
                "until its leadership changes (or the broker restarts)",
                OFFSETS_TOPIC,
                partition,
                len(records),
            )
            return
        logger.info(
            "%s-%d: loaded %d record(s) in %.3f s (coordinator epoch %d)",
            OFFSETS_TOPIC,
            partition,
            len(records),
            time.monotonic() - started,
            epoch,
        )

    def _unload(self, partition: int) -> None:
        self._feed(partition, UnloadPartition(now_ms=self._clock_ms()))
        self._retire(partition, self._cores[partition])
        logger.info("%s-%d: unloaded (no longer the leader)", OFFSETS_TOPIC, partition)

    def unload_all(self) -> None:
        """Shutdown: answer every waiting request NOT_COORDINATOR and serve no more."""
        if self._unloaded:
            return
        self._unloaded = True
        for partition in sorted(self._cores):
            self._feed(partition, UnloadPartition(now_ms=self._clock_ms()))

    # --- requests (called from handlers, in the trio thread) ------------------------------------

    def partition_of(self, group_id: str) -> int:
        return coordinator_partition(group_id, self.partition_count)

    def submit(self, partition: int, build: Callable[[int, int], Request]) -> _Pending:
        """Feed the request `build(request_id, now_ms)` to `partition`'s core now.

        Returns the pending answer: `response` is already set if the core answered at once.
        """
        request_id = next(self._request_ids)
        pending = _Pending(self._cores[partition])
        self._pending[request_id] = pending
        pending.request = build(request_id, self._clock_ms())
        self._feed(partition, pending.request)
        return pending

    async def wait(self, pending: _Pending, timeout_s: float) -> Response | None:
        """The response, or None if it did not come within `timeout_s`."""
        with trio.move_on_after(timeout_s):
            await pending.event.wait()
        return pending.response

    def call_now(self, partition: int, build: Callable[[int, int], Request]) -> Response:
        """Submit a request the core answers synchronously (fetch, list, describe)."""
        pending = self.submit(partition, build)
        assert pending.response is not None, "this request is answered at once"
        return pending.response

    # --- feeding the cores ---------------------------------------------------------------------

    def _feed(self, partition: int, event: Event) -> None:
        self._feed_core(partition, self._cores[partition], event)

    def _feed_core(self, partition: int, core: GroupCoordinatorCore, event: Event) -> None:
        if core in self._broken:
            return  # a late report (or tick) for a core discarded after it raised
        try:
            actions = core.handle(event)
        except Exception:
            # A bug in the core (a broken invariant), met while handling `event`: contain it to
            # this partition. `handle` returns its actions only at the end, so nothing the core
            # ordered during the failed call has been carried out.
            logger.exception(
                "%s-%d: the group coordinator failed on %s; discarding it, answering its waiting "
                "requests NOT_COORDINATOR, reloading the partition from its log",
                OFFSETS_TOPIC,
                partition,
                type(event).__name__,
            )
            self._discard(partition, core)
            return
        for action in actions:
            if isinstance(action, PersistRecords):
                self._append(partition, core, action)
            else:
                self._deliver(action)

    def _deliver(self, response: Response) -> None:
        pending = self._pending.pop(response.request_id, None)
        if pending is not None:  # None: its handler gave up (timeout, closed)
            pending.response = response
            pending.event.set()

    def _discard(self, partition: int, core: GroupCoordinatorCore) -> None:
        """Containment: `core` raised. Answer everything waiting on it with a retriable error,
        ignore it from now on, and have the leadership watcher load the partition afresh."""
        self._broken.add(core)
        waiting = [p for p in self._pending.values() if p.core is core and p.request is not None]
        for pending in waiting:
            assert pending.request is not None
            self._deliver(pending.request.reject(ErrorCode.NOT_COORDINATOR))
        if self._cores[partition] is core:
            self._retire(partition, core)
            wakeup = self._watcher_wakeups.get(partition)
            if wakeup is not None:
                wakeup.set()

    def _retire(self, partition: int, core: GroupCoordinatorCore) -> None:
        """Replace `partition`'s core by one answering NOT_COORDINATOR until the watcher loads
        it again; that load continues `core`'s member id sequence (it may have the same epoch)."""
        self._member_sequences[partition] = max(
            self._member_sequences.get(partition, 1), core.next_member_sequence
        )
        self._cores[partition] = _unloaded_core(self._config)
        self._leaderships.pop(partition, None)

    def _append(self, partition: int, core: GroupCoordinatorCore, action: PersistRecords) -> None:
        """Append the records as one batch now (emission order); the writer reports the outcome."""
        assert action.records, action
        outcome: Appended | ErrorCode
        try:
            # The leadership the core was loaded from: a replica started since is not ours yet.
            state = self._leaderships.get(partition)
            if state is None:
                raise BrokerError(
                    ErrorCode.NOT_COORDINATOR, f"{OFFSETS_TOPIC}-{partition} is not loaded here"
                )
            now_ms = self._clock_ms()
            batch = build_batch([(now_ms, r.key, r.value, None) for r in action.records])
            outcome = state.append(batch)
        except (BrokerError, OSError) as exc:
            logger.error("%s-%d: append failed: %s", OFFSETS_TOPIC, partition, exc)
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
            event: Event
            if isinstance(outcome, ErrorCode):
                event = AppendFailed(now_ms=self._clock_ms(), token=token, error=outcome)
            else:
                try:
                    # Group commit: one fsync (or one Raft commit) covers every write appended
                    # meanwhile, so the writes queued behind this one find themselves done at once.
                    await outcome.wait_acked()
                    event = RecordsPersisted(now_ms=self._clock_ms(), token=token)
                except (BrokerError, OSError) as exc:
                    logger.error("%s-%d: write not acknowledged: %s", OFFSETS_TOPIC, partition, exc)
                    event = AppendFailed(
                        now_ms=self._clock_ms(), token=token, error=ErrorCode.NOT_COORDINATOR
                    )
                state = self._context.partitions.get((OFFSETS_TOPIC, partition))
                if state is not None:
                    state.notify()  # readers of __consumer_offsets see the new high watermark
            queue.popleft()
            self._feed_core(partition, core, event)

    async def _tick_loop(self) -> None:
        while True:
            now_ms = self._clock_ms()
            deadlines = [d for c in self._cores.values() if (d := c.next_deadline_ms()) is not None]
            wait_ms = min([TICK_INTERVAL_MS, *(d - now_ms for d in deadlines)])
            await trio.sleep(max(wait_ms, 1) / 1000)
            now_ms = self._clock_ms()
            for partition in sorted(self._cores):
                self._feed(partition, Tick(now_ms=now_ms))
            if now_ms >= self._metrics_due_ms and not self._unloaded:
                self._metrics_due_ms = now_ms + METRICS_REFRESH_MS
                self.metrics_snapshot = self._build_metrics_snapshot()

    # --- queries the handlers and metrics share ---------------------------------------------------

    def list_groups(self, states: tuple[Any, ...] = ()) -> RespondListGroups:
        """Every group of every loaded core, i.e. of the partitions this broker leads (answered at
        once; a cluster-wide list asks every broker)."""
        groups = []
        error = ErrorCode.NONE
        for partition in sorted(self._leaderships):
            response = self.call_now(
                partition,
                lambda rid, now: ListGroupsRequested(request_id=rid, now_ms=now, states=states),
            )
            assert isinstance(response, RespondListGroups)
            if response.error is not ErrorCode.NONE:
                error = response.error
            groups += response.groups
        return RespondListGroups(request_id=0, error=error, groups=tuple(groups))

    def describe_groups(self, group_ids: Iterable[str]) -> RespondDescribeGroups:
        """Descriptions in the order asked (answered at once)."""
        by_partition: dict[int, list[str]] = {}
        for group_id in group_ids:
            by_partition.setdefault(self.partition_of(group_id), []).append(group_id)
        found = {}
        error = ErrorCode.NONE
        for partition, ids in sorted(by_partition.items()):
            response = self.call_now(
                partition,
                lambda rid, now, ids=tuple(ids): DescribeGroupsRequested(
                    request_id=rid, now_ms=now, group_ids=ids
                ),
            )
            assert isinstance(response, RespondDescribeGroups)
            if response.error is not ErrorCode.NONE:
                error = response.error
            found.update({description.group_id: description for description in response.groups})
        ordered = tuple(found[g] for g in dict.fromkeys(group_ids) if g in found)
        return RespondDescribeGroups(request_id=0, error=error, groups=ordered)

    def log_end_offset(self, topic: str, partition: int) -> int:
        """The high watermark of a partition this broker serves, else -1."""
        state = self._context.partitions.get((topic, partition))
        return -1 if state is None else int(state.high_watermark)

    def partition_offsets(self, description: Any) -> list[tuple[TopicPartition, int, str, str]]:
        """(partition, committed offset or -1, metadata, owning member id) for a description:
        every committed partition and every assigned one, sorted."""
        rows: dict[TopicPartition, list[Any]] = {}
        for tp, value in description.offsets:
            rows[tp] = [value.offset, value.metadata, ""]
        for member in description.members:
            try:
                assigned = Assignment.decode(member.assignment).partitions
            except (ValueError, TypeError, KeyError):
                continue  # not the consumer protocol: nothing to show
            for tp in assigned:
                rows.setdefault(tp, [-1, "", ""])[2] = member.member_id
        return [(tp, row[0], row[1], row[2]) for tp, row in sorted(rows.items())]

    def _build_metrics_snapshot(self) -> GroupMetricsSnapshot:
        listed = self.list_groups()
        samples = []
        if listed.groups:
            described = self.describe_groups([group.group_id for group in listed.groups])
            for description in described.groups:
                if description.error is not ErrorCode.NONE:
                    continue
                for tp, committed, _, _ in self.partition_offsets(description):
                    if committed < 0:
                        continue
                    end = self.log_end_offset(tp.topic, tp.partition)
                    lag = max(end - committed, 0) if end >= 0 else -1
                    samples.append(
                        LagSample(description.group_id, tp.topic, tp.partition, committed, end, lag)
                    )
        statistics = tuple((p, core.statistics()) for p, core in sorted(self._cores.items()))
        return GroupMetricsSnapshot(tuple(samples), statistics)


def _unloaded_core(config: GroupConfig) -> GroupCoordinatorCore:
    """A core for a partition this broker does not lead: it answers NOT_COORDINATOR."""
    core = GroupCoordinatorCore(config)
    core.handle(UnloadPartition(now_ms=0))
    return core


def _read_all(log: Any) -> Iterable[EncodedRecord]:
    """Every record of a partition log, oldest first (the replay at load)."""
    offset = log.log_start_offset
    end = log.log_end_offset
    while offset < end:
        result = log.read(offset, LOAD_READ_BYTES)
        if result.next_offset <= offset:
            break
        data = result.data
        for position, header in iter_batches(data, max_batch_bytes=log.config.max_batch_bytes):
            if header.is_control:
                continue
            for record in decode_records(data, position, header=header):
                if record.offset >= offset and record.key is not None:
                    yield EncodedRecord(bytes(record.key), record.value)
        offset = result.next_offset
