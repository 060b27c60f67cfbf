"""`RaftDriver`: the trio shell that turns one pure `RaftCore` into a running replica.

One driver per Raft group on this broker. `run()` owns the group's loop; everything else calls in
from other tasks (produce handlers, the controller, tests). The rules, from the `Ready` contract
(broker/raft/ready.py, docs/raft.md) and STYLE §7.2:

1. Persist before send. The loop takes Readys until none is pending, writes each (snapshot ->
   `log.reset`, entries -> `storage.append`, hard state -> `storage.set_hard_state`, written to
   LMDB unsynced) and `advance()`s it; if a term or vote changed it awaits the broker's shared
   `StoreSyncer` (one LMDB fsync in a worker thread for every group that voted meanwhile, so an
   election storm is not a thousand fsyncs in a row on the trio thread); then it runs ONE fsync of
   the partition log for all of them (group commit: everything that arrived during the previous
   fsync shares the next one), and only then sends their messages, applies their committed
   entries and reports `persisted`. A new term or vote is therefore durable before any message.
   One exception (Raft thesis §10.2.1): a leader's AppendRequests leave BEFORE its own fsync, so
   the followers' writes overlap the leader's. This is safe because the core counts the leader's
   own log only once `persisted` reports it; a commit before then is a majority of followers that
   hold the entries durably. Votes, acknowledgements and everything else wait for the fsync.
2. Never block the core. Sends go to the transport's bounded per-peer queues; a refused send is
   reported with `report_unreachable`. Inbound messages arrive through a bounded inbox; when it is
   full they are dropped (Raft retransmits).
3. No await between `ready()` and `advance()`: other tasks may call the core (propose, transfer)
   at any await point of the loop, which is safe because no Ready is ever in flight there.
4. Cancellation: an fsync in a worker thread always completes (trio's `to_thread.run_sync` default)
   and is recorded on the log; the driver then stops WITHOUT sending the messages it covered, so a
   message never leaves for a Ready whose fsync may not have completed. An fsync failure takes
   the group offline (`StorageOfflineError`): after a failed fsync nothing is known to be durable.
5. Time is ticks: every `tick_interval_ms` of trio time, one `core.tick()`. Missed ticks (a slow
   fsync) are skipped, not replayed in a burst, so an overloaded node's clock runs slow rather
   than firing elections all at once. A broker hosting many groups gives them one `RaftTicker`:
   one timer puts a tick marker in every AWAKE driver's inbox, so an idle driver waits on its
   inbox alone instead of arming a timer of its own at every loop (the idle cost of a group).
6. Quiescence (docs/raft.md): a quiet core (`core.quiescent`) is taken off the ticker (without
   one, the loop waits for its inbox with no deadline), so a quiet group costs no wakeup at all
   until a proposal, a message or `report_peer_dead` (from the transport's link liveness) wakes
   it; the loop then puts it back on the ticker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from broker.config import ConfigBase, FlushPolicy, check_range
from broker.log.durability import FlushTicket
from broker.log.log import PartitionLog
from broker.log.sync_threads import SyncThreads
from broker.raft.config import RaftConfig
from broker.raft.core import RaftCore
from broker.raft.errors import NotLeaderError, ProposalDroppedError
from broker.raft.log_storage import LogRaftStorage
from broker.raft.messages import (
    AppendRequest,
    Configuration,
    Entry,
    InstallSnapshot,
    Message,
    Snapshot,
)
from broker.raft.ready import RaftStatistics, RandomSource, Ready, Role
from broker.raft.store_sync import StoreSyncer
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

__all__ = [
    "NotLeaderError",
    "Proposal",
    "ProposalDroppedError",
    "ProposalTimeoutError",
    "RaftDriver",
    "RaftDriverConfig",
    "RaftDriverStatistics",
    "RaftDriverStoppedError",
    "RaftObserver",
    "StorageOfflineError",
    "ThreadLogSyncer",
]


@dataclasses.dataclass(frozen=True, slots=True)
class RaftDriverConfig(ConfigBase):
    """Timing and bounds of one group's driver (the core's own limits are in RaftConfig)."""

    # Length of one core tick; election and heartbeat timeouts are counted in ticks.
    tick_interval_ms: int = 100
    # Inbound messages waiting for the loop; beyond it the transport drops them.
    inbox_messages_max: int = 4096
    # Messages stepped per loop iteration before the Ready is taken: bounds a Ready's size and
    # the latency of a tick behind a flood of messages.
    messages_per_iteration_max: int = 1024
    # Readys taken (written and advanced) per fsync; the loop bound of group commit.
    readys_per_fsync_max: int = 64
    # Proposals waiting for their commit; more raise ProposalDroppedError at once.
    proposals_pending_max: int = 10_000
    # How long `propose` waits for the commit before ProposalTimeoutError (outcome unknown).
    proposal_timeout_ms: int = 30_000

    def validate(self) -> None:
        check_range("tick_interval_ms", self.tick_interval_ms, 1)
        check_range("inbox_messages_max", self.inbox_messages_max, 1)
        check_range("messages_per_iteration_max", self.messages_per_iteration_max, 1)
        check_range("readys_per_fsync_max", self.readys_per_fsync_max, 1)
        check_range("proposals_pending_max", self.proposals_pending_max, 1)
        check_range("proposal_timeout_ms", self.proposal_timeout_ms, 1)


class ProposalTimeoutError(BrokerError):
    """No commit seen in time. The outcome is UNKNOWN: the entry may still commit later."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.REQUEST_TIMED_OUT, message)


class LeadershipLostError(NotLeaderError):
    """This node stopped leading before the proposal committed: its outcome is unknown here."""

    def __init__(self, group: str, index: int, leader_hint: int) -> None:
        BrokerError.__init__(
            self,
            ErrorCode.NOT_LEADER,
            f"{group}: this broker lost leadership before entry {index} committed; it may or "
            f"may not be written (the leader is now {leader_hint or 'being elected'}): retry",
        )
        self.leader_hint = leader_hint


class RaftDriverStoppedError(BrokerError):
    """The driver stopped (cancelled or failed) with this proposal pending: outcome unknown."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BROKER_NOT_AVAILABLE, message)


class StorageOfflineError(BrokerError):
    """An fsync of the group's log failed: nothing after it is known durable; the group stops."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.KAFKA_STORAGE_ERROR, message)


class MessageSender(Protocol):
    """The transport as a driver sees it (RaftTransport implements it)."""

    def register(self, group: str, endpoint: RaftDriver) -> None: ...

    def unregister(self, group: str, endpoint: RaftDriver) -> None: ...

    def send(self, group: str, message: Message) -> bool:
        """Queue without blocking; False when dropped (queue full, unknown peer)."""
        ...


LogSyncer = Callable[[PartitionLog], Awaitable[None]]


class RaftObserver(Protocol):
    """Told the latencies a driver measures (broker/observability feeds them to /metrics)."""

    def fsync_done(self, seconds: float) -> None: ...

    def proposal_committed(self, seconds: float) -> None: ...


class ThreadLogSyncer:
    """The default fsync: one flush ticket of the log, run off the Raft driver's task.

    In `threads` when given (a broker's replicas share theirs): `SyncThreads` take the job at
    once, where `trio.to_thread` first lets every other runnable task have its turn, one more
    scheduler pass before every fsync of a replicated entry, on the leader and on each follower.
    Without `threads` (the controller's group, tests), `trio.to_thread`'s. A plain ticket (the
    active segment's fsync) runs on the event loop at its next turn while the loop's budget
    allows (broker/log/inline_fsync.py), else in their fsync helper process, if they have one.
    A `run_ticket` of the caller's runs in a thread (tests pass one that blocks to hold an
    fsync open). The fsync is not abandoned on cancellation; its result is recorded on the log
    either way.
    """

    def __init__(
        self,
        run_ticket: Callable[[FlushTicket], None] = FlushTicket.run,
        *,
        threads: SyncThreads | None = None,
    ) -> None:
        self._run_ticket = run_ticket
        self._threads = threads
        self.fsync_count = 0

    async def __call__(self, log: PartitionLog) -> None:
        ticket = log.begin_flush()
        try:
            if self._threads is not None:
                fds = ticket.fds if self._run_ticket is FlushTicket.run else ()
                await self._threads.run(functools.partial(self._run_ticket, ticket), fds)
            else:
                await trio.to_thread.run_sync(self._run_ticket, ticket)
        except BaseException:
            log.abort_flush()
            raise
        log.complete_flush(ticket)
        self.fsync_count += 1


@dataclasses.dataclass(slots=True)
class Proposal:
    """A proposed entry: where it went, and (once known) whether it committed."""

    index: int
    term: int
    base_offset: int
    _done: trio.Event = dataclasses.field(default_factory=trio.Event)
    _error: BrokerError | None = None
    # When it was proposed (perf_counter seconds): the start of its propose-to-commit latency.
    proposed_s: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait_committed(self) -> None:
        """Return once committed; raise the error that settled it otherwise."""
        await self._done.wait()
        if self._error is not None:
            raise self._error

    def _settle(self, error: BrokerError | None) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()


@dataclasses.dataclass(frozen=True, slots=True)
class RaftDriverStatistics:
    group: str
    core: RaftStatistics
    high_watermark: int
    fsyncs: int
    # LMDB syncs this group awaited for a new term or vote (shared with other groups).
    hard_state_syncs: int
    readys: int
    messages_sent: int
    messages_refused: int
    inbox_dropped: int
    proposals_pending: int
    proposals_committed: int
    proposals_failed: int
    ticks: int


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# Put in the inbox to wake an idle loop after a proposal or a transfer request.
_WAKE = object()
# Put in the inbox by a RaftTicker: one tick is due.
_TICK = object()
# How many of `_observable()`'s fields are leadership (role, leader, term, quiescence).
_LEADERSHIP_FIELDS = 4


class RaftTicker:
    """One timer for all the Raft groups of a broker (rule 5): every `interval_ms` it puts a tick
    marker in each registered driver's inbox. A full inbox skips that tick (the driver is busy;
    its clock runs slow, as with missed ticks)."""

    def __init__(self, interval_ms: int) -> None:
        check_range("interval_ms", interval_ms, 1)
        self.interval_ms = interval_ms
        # The awake drivers (a dict keeps them in registration order); quiet ones are absent.
        self._drivers: dict[RaftDriver, None] = {}

    def register(self, driver: RaftDriver) -> None:
        self._drivers[driver] = None

    def unregister(self, driver: RaftDriver) -> None:
        self._drivers.pop(driver, None)

    @property
    def driver_count(self) -> int:
        return len(self._drivers)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        interval = self.interval_ms / 1000
        next_tick = trio.current_time() + interval
        task_status.started()
        while True:
            await trio.sleep_until(next_tick)
            for driver in list(self._drivers):
                driver.tick_nowait()
            now = trio.current_time()
            next_tick += interval * (int((now - next_tick) // interval) + 1)


class RaftDriver:
    """Runs one Raft group on this broker. Single trio thread; see the module docstring."""

    def __init__(
        self,
        *,
        group: str,
        node_id: int,
        storage: LogRaftStorage,
        transport: MessageSender,
        raft_config: RaftConfig | None = None,
        config: RaftDriverConfig | None = None,
        rng: RandomSource | None = None,
        applied_index: int | None = None,
        on_apply: Callable[[Sequence[Entry]], None] | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        on_commit: Callable[[Sequence[Entry]], None] | None = None,
        log_syncer: LogSyncer | None = None,
        clock_ms: Callable[[], int] = _wall_clock_ms,
        ticker: RaftTicker | None = None,
        store_syncer: StoreSyncer | None = None,
    ) -> None:
        """`on_apply` gets committed entries in order, after they are durable here (the
        controller and group coordinator apply their records in it; it must not block).
        `on_snapshot` gets an installed snapshot (state-machine groups restore `data`).
        `on_commit` gets committed entries in order as soon as they are committed, perhaps before
        this broker's own copy is durable: for effects the commit itself mandates (a partition's
        DeleteRecords log start). A group with neither `on_apply` nor `on_snapshot` has no state
        machine, and acknowledges its commits before its own fsync (see `_commit_round`).
        `applied_index`: what the state machine already holds durably (skip re-applying).
        `ticker`: a shared timer (rule 5); without one the driver keeps its own.
        `store_syncer`: the broker's shared LMDB sync for terms and votes (rule 1); without
        one the driver keeps its own."""
        self.config = config or RaftDriverConfig()
        self.config.validate()
        self.group = group
        self.storage = storage
        self.transport = transport
        self.core = RaftCore(
            node_id=node_id,
            storage=storage,
            config=raft_config or RaftConfig(),
            rng=rng or random.Random(),
            applied_index=applied_index,
        )
        self._on_apply = on_apply
        self._on_snapshot = on_snapshot
        self._on_commit = on_commit
        # A state machine applies only what is durable here, so that its state never runs ahead
        # of its own log; a group without one applies (acknowledges) commits before its fsync.
        self.applies_before_own_fsync = on_apply is None and on_snapshot is None
        self._sync_log = log_syncer or ThreadLogSyncer()
        self._store_syncer = store_syncer or StoreSyncer(storage.store)
        self._clock_ms = clock_ms
        self._ticker = ticker
        # Whether this driver is on the ticker now (rule 6: only while its core is awake).
        self._on_ticker = False
        self._ticks_due = 0
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[object](
            self.config.inbox_messages_max
        )
        self._proposals: dict[int, Proposal] = {}
        self._proposal_indexes: list[int] = []  # a heap over self._proposals' keys
        self._high_watermark = self.core.applied_index + 1
        self._changed = trio.Event()
        self._change_version = 0
        self._observed = self._observable()
        # The same for changes of leadership alone (`wait_leadership_changed`).
        self._leadership_changed = trio.Event()
        self._leadership_version = 0
        # Called at every change, in the driver's task (`add_change_listener`).
        self._listeners: list[Callable[[], None]] = []
        self._running = False
        self._stopped_error: BrokerError | None = None
        # Set by the broker's metrics (broker/observability/raft_metrics.py); None: not measured.
        self.observer: RaftObserver | None = None
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "fsyncs",
                "hard_state_syncs",
                "readys",
                "messages_sent",
                "messages_refused",
                "inbox_dropped",
                "proposals_committed",
                "proposals_failed",
                "ticks",
            ),
            0,
        )

    # --- state -----------------------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.core.node_id

    @property
    def role(self) -> Role:
        return self.core.role

    @property
    def leader_id(self) -> int:
        """The leader this node knows of (0: none). Clients that hit a follower get it as hint."""
        return self.core.leader_id

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def high_watermark(self) -> int:
        """Exclusive end of what is committed AND applied here: fetch serves up to it."""
        return self._high_watermark

    @property
    def high_watermark_settled(self) -> bool:
        """Leading, and an entry of this term is applied: only then does the high watermark
        cover every write the group acknowledged. A new leader's commit index is what it had
        learnt as a follower (partition followers learn it lazily, `commit_broadcast`) until
        the no-op of its term commits (§5.4.2); Kafka's new leader likewise answers offset
        lookups only once its high watermark is established (KIP-207)."""
        core = self.core
        return core.role is Role.LEADER and core.log.match_term(self._high_watermark - 1, core.term)

    async def wait_high_watermark(self, offset: int) -> None:
        """Return once `high_watermark >= offset` (a fetch long poll, an acks=all produce).

        Raises the driver's stop error if it stops first. Callers bound it with their timeout.
        """
        while self._high_watermark < offset:
            await self.wait_changed()

    async def wait_durable(self, index: int) -> None:
        """Return once this node's log is fsynced through `index` (acks=1: the leader's own
        durable copy, before replication). Raises the driver's stop error if it stops first."""
        while self.core.durable_index < index:
            await self.wait_changed()

    @property
    def change_version(self) -> int:
        """Counts the changes `wait_changed` reports; read it BEFORE checking a condition."""
        return self._change_version

    async def wait_changed(self, since_version: int | None = None) -> None:
        """Return at the next change of role, leader, term, high watermark, log end, durable end
        or quiescence (the group going quiet or waking).

        With `since_version` (a `change_version` read earlier), return at once if a change
        happened since: a task that checks a condition, then starts waiting later (e.g. from
        another task), cannot miss the change in between.
        """
        if self._stopped_error is not None:
            raise self._stopped_error
        if since_version is not None and since_version != self._change_version:
            return
        await self._changed.wait()

    @property
    def leadership_version(self) -> int:
        """Counts the changes `wait_leadership_changed` reports; read it BEFORE checking."""
        return self._leadership_version

    async def wait_leadership_changed(self, since_version: int) -> None:
        """Return at the next change of role, leader, term or quiescence, or at once if one
        happened since `since_version` (a `leadership_version` read earlier). For a watcher of
        leadership (broker/cluster/replicas.py): `wait_changed` would also wake it at every
        append, fsync and commit, three times per replicated write for nothing."""
        if self._stopped_error is not None:
            raise self._stopped_error
        if since_version != self._leadership_version:
            return
        await self._leadership_changed.wait()

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` at every change `wait_changed` reports (and when the driver
        stops), in the driver's task, before its next step: it must be quick and must not raise.
        For a waker of other tasks (a partition's fetch long polls), which would otherwise need a
        task of its own woken at every change only to wake them, one more scheduler pass."""
        self._listeners.append(listener)

    def remove_change_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling `listener` (no error if it was not added)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def statistics(self) -> RaftDriverStatistics:
        return RaftDriverStatistics(
            group=self.group,
            core=self.core.statistics(),
            high_watermark=self._high_watermark,
            proposals_pending=len(self._proposals),
            **self._counters,
        )

    # --- requests from other tasks ----------------------------------------------------------------

    def propose_nowait(self, batch: bytes | bytearray) -> Proposal:
        """Append `batch` to the leader's log now; the returned Proposal settles on commit.

        Raises NotLeaderError (with the leader hint), ProposalDroppedError (transfer under way,
        too many uncommitted bytes or pending proposals) or RaftDriverStoppedError.
        """
        if self._stopped_error is not None:
            raise self._stopped_error
        if len(self._proposals) >= self.config.proposals_pending_max:
            raise ProposalDroppedError(
                f"{len(self._proposals)} proposals are pending; proposals_pending_max is "
                f"{self.config.proposals_pending_max}"
            )
        entry = self.core.propose(batch)
        proposal = Proposal(entry.index, entry.term, entry.base_index)
        self._register_proposal(proposal)
        self._wake()
        return proposal

    async def propose(self, batch: bytes | bytearray, *, timeout_ms: int | None = None) -> Proposal:
        """Propose `batch` and wait until it is committed (acks=all). Returns its Proposal.

        Raises as `propose_nowait`, ProposalDroppedError if another leader's entry took its
        place, and ProposalTimeoutError / RaftDriverStoppedError when the outcome is unknown.
        """
        proposal = self.propose_nowait(batch)
        timeout_ms = self.config.proposal_timeout_ms if timeout_ms is None else timeout_ms
        with trio.move_on_after(timeout_ms / 1000):
            await proposal.wait_committed()
            return proposal
        raise ProposalTimeoutError(
            f"{self.group}: entry {proposal.index}@{proposal.term} not committed within "
            f"{timeout_ms} ms; it may still commit"
        )

    def propose_configuration(self, configuration: Configuration) -> Proposal:
        """Change membership by one node (thesis §4.1; see RaftCore.propose_configuration).

        Raises NotLeaderError, ProposalDroppedError or ConfigurationChangeError; the returned
        Proposal settles like a client proposal's.
        """
        if self._stopped_error is not None:
            raise self._stopped_error
        entry = self.core.propose_configuration(configuration)
        proposal = Proposal(entry.index, entry.term, entry.base_index)
        self._register_proposal(proposal)
        self._wake()
        return proposal

    def campaign(self) -> None:
        """Start an election now (tests; a preferred leader reclaiming leadership)."""
        self.core.campaign()
        self._wake()

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to voter `target` (thesis §3.10); proposals are refused meanwhile.

        Raises NotLeaderError or ConfigurationChangeError. Watch `leader_id` via `wait_changed`.
        """
        self.core.transfer_leadership(target)
        self._wake()

    # --- the transport's side (RaftEndpoint) -----------------------------------------------------

    def deliver_nowait(self, message: Message) -> bool:
        try:
            self._inbox_send.send_nowait(message)
        except trio.WouldBlock:
            self._counters["inbox_dropped"] += 1
            return False
        return True

    def report_unreachable(self, peer: int) -> None:
        self.core.report_unreachable(peer)

    def report_snapshot_failed(self, peer: int) -> None:
        self.core.report_snapshot(peer, success=False)

    def report_peer_dead(self, peer: int) -> None:
        """From the transport's link liveness: `peer` is down. Wakes a quiet group that depends
        on it (rule 6); the loop puts the group back on the ticker."""
        if self._stopped_error is None:
            self.core.report_peer_dead(peer)
            self._wake()

    def report_peer_alive(self, peer: int) -> None:
        """From the transport's link liveness: `peer` is back. Wakes a leader that went quiet
        without it, to catch it up (rule 6)."""
        if self._stopped_error is None:
            self.core.report_peer_alive(peer)
            self._wake()

    # --- the loop --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the group until cancelled (or until its storage fails: StorageOfflineError).

        Registers with the transport for inbound messages while it runs. Pending proposals are
        settled with RaftDriverStoppedError when it stops (their outcome is unknown).
        """
        assert not self._running, "run() once per driver"
        self._running = True
        self.transport.register(self.group, self)
        self._follow_quiescence()
        stopped: BrokerError = RaftDriverStoppedError(
            f"{self.group}: the Raft driver stopped; the outcome of pending proposals is unknown"
        )
        try:
            task_status.started()
            await self._loop()
        except StorageOfflineError as exc:
            stopped = exc
            raise
        finally:
            self.transport.unregister(self.group, self)
            if self._ticker is not None:
                self._ticker.unregister(self)
                self._on_ticker = False
            self._stop(stopped)

    async def _loop(self) -> None:
        interval = self.config.tick_interval_ms / 1000
        next_tick = trio.current_time() + interval
        while True:
            # Block for input only when the core has nothing to do; otherwise just drain what is
            # there, so inbound acknowledgements are never starved by a stream of proposals. With
            # a shared ticker, ticks arrive as inbox items and there is no deadline to arm.
            idle = not self.core.has_ready()
            timed = self._ticker is None and not self.core.quiescent
            deadline = (next_tick if timed else math.inf) if idle else None
            for message in await self._receive_inputs(deadline):
                self.core.step(message)
            if self._ticker is not None:
                tick = self._ticks_due > 0
                self._ticks_due = 0
            else:
                now = trio.current_time()
                tick = now >= next_tick
                if tick:
                    next_tick += interval * (int((now - next_tick) // interval) + 1)
            if tick:
                self.core.tick(now_ms=self._clock_ms())
                self._counters["ticks"] += 1
            if self.core.has_ready():
                await self._commit_round()
            self._notify()
            self._follow_quiescence()

    def _follow_quiescence(self) -> None:
        """Rule 6: on the shared ticker exactly while the core is awake."""
        awake = not self.core.quiescent
        if self._ticker is None or awake == self._on_ticker:
            return
        if awake:
            self._ticker.register(self)
        else:
            self._ticker.unregister(self)
        self._on_ticker = awake

    async def _receive_inputs(self, deadline: float | None) -> list[Message]:
        """Inbound messages: wait until `deadline` for the first (None: don't wait), then drain."""
        messages: list[Message] = []
        if deadline is None:
            await trio.lowlevel.checkpoint()
        elif deadline == math.inf:
            self._take(await self._inbox_receive.receive(), messages)
        else:
            with trio.move_on_at(deadline):
                self._take(await self._inbox_receive.receive(), messages)
        while len(messages) < self.config.messages_per_iteration_max:
            try:
                item = self._inbox_receive.receive_nowait()
            except trio.WouldBlock:
                break
            self._take(item, messages)
        return messages

    def _take(self, item: object, messages: list[Message]) -> None:
        if item is _TICK:
            self._ticks_due += 1
        elif item is not _WAKE:
            messages.append(item)  # type: ignore[arg-type]

    async def _commit_round(self) -> None:
        """Group commit: take and write every pending Ready, fsync once, then send and apply."""
        readys: list[Ready] = []
        must_sync = False
        while self.core.has_ready() and len(readys) < self.config.readys_per_fsync_max:
            ready = self.core.ready()
            # No await from here to advance(): the core must not be called with a Ready in flight.
            self._persist(ready)
            self.core.advance(ready)
            readys.append(ready)
            must_sync = must_sync or ready.must_sync
        self._counters["readys"] += len(readys)
        if self.storage.hard_state_unsynced:
            # A new term or vote is on disk before any message of these Readys leaves (rule 1).
            await self._sync_hard_state()
            await trio.lowlevel.checkpoint_if_cancelled()
        log = self.storage.log
        sent_early = must_sync and log.config.flush_policy is FlushPolicy.ALWAYS
        # A partition's committed entries (no state machine to apply them to) are applied before
        # this fsync: the core commits on durable copies only (the leader's own counts from
        # `persisted`), so they are durable on a majority already. Applying them after it made
        # every acknowledgement wait for the fsync of the entries proposed since (one more fsync
        # per commit under load). A state machine (the controller) applies only what is durable
        # here, so that its applied state never runs ahead of its own log.
        applied_early = sent_early and self.applies_before_own_fsync
        if sent_early:
            # Rule 1's exception: the leader's appends go out while its own fsync runs.
            appends_out = False
            for ready in readys:
                for message in ready.messages:
                    if isinstance(message, AppendRequest):
                        self._send(message)
                        appends_out = True
                if applied_early:
                    self._apply(ready)
            self._notify()  # produce acks and fetch long-polls waiting on the group wake now
            if appends_out:
                # The links' writers (and the tasks `_notify` woke) take their turn before the
                # fsync is asked for: an fsync run on the event loop (broker/log/inline_fsync.py)
                # would otherwise hold the AppendRequests back for as long as it takes in half of
                # the rounds (trio runs a batch in either order).
                await trio.lowlevel.cancel_shielded_checkpoint()
            await self._fsync(log)
            # Cancelled during the fsync? It completed (the thread always finishes) and is recorded;
            # stop now rather than send: the rule is simply that a cancelled driver sends nothing
            # more, which also covers a syncer that did not complete.
            await trio.lowlevel.checkpoint_if_cancelled()
        for ready in readys:
            self._complete(ready, appends_sent=sent_early, applied=applied_early)
        last = readys[-1]
        self.core.persisted(last.last_index, last.last_term)

    def _persist(self, ready: Ready) -> None:
        # The order of the Ready contract: snapshot (log reset), entries (the storage truncates a
        # conflicting suffix first), then hard state. Term and vote are durable on return (LMDB).
        if ready.snapshot is not None:
            self.storage.apply_snapshot(ready.snapshot)
        if ready.entries:
            self.storage.append(ready.entries)
        if ready.hard_state is not None:
            self.storage.set_hard_state(ready.hard_state)

    async def _sync_hard_state(self) -> None:
        try:
            await self._store_syncer.sync()
        except OSError as exc:
            logger.error("%s: LMDB sync failed, stopping the group: %s", self.group, exc)
            raise StorageOfflineError(
                f"{self.group}: the sync of the term and vote failed ({exc}); restart the broker"
            ) from exc
        self.storage.hard_state_unsynced = False
        self._counters["hard_state_syncs"] += 1

    async def _fsync(self, log: PartitionLog) -> None:
        started = time.perf_counter()
        try:
            await self._sync_log(log)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: a retry that
            # succeeds proves nothing (fsyncgate). The group goes offline on this broker.
            logger.error(
                "%s: fsync of %s failed, stopping the group: %s", self.group, log.directory, exc
            )
            raise StorageOfflineError(
                f"{self.group}: fsync of {log.directory} failed ({exc}); restart the broker"
            ) from exc
        self._counters["fsyncs"] += 1
        if self.observer is not None:
            self.observer.fsync_done(time.perf_counter() - started)

    def _complete(self, ready: Ready, *, appends_sent: bool, applied: bool) -> None:
        """After the fsync covering `ready`: send its messages (but the AppendRequests already
        sent, rule 1), then apply what it committed (unless `applied` before the fsync)."""
        for message in ready.messages:
            if not (appends_sent and isinstance(message, AppendRequest)):
                self._send(message)
        if not applied:
            self._apply(ready)

    def _apply(self, ready: Ready) -> None:
        """Install `ready`'s snapshot and apply its committed entries: callbacks, proposals
        settled, high watermark."""
        if ready.snapshot is not None:
            if self._on_snapshot is not None:
                self._on_snapshot(ready.snapshot)
            self._settle_up_to(ready.snapshot.index, committed=())
            self._high_watermark = max(self._high_watermark, ready.snapshot.index + 1)
        if ready.committed_entries:
            if self._on_commit is not None:
                self._on_commit(ready.committed_entries)
            if self._on_apply is not None:
                self._on_apply(ready.committed_entries)
            last = ready.committed_entries[-1].index
            self._settle_up_to(last, committed=ready.committed_entries)
            self._high_watermark = max(self._high_watermark, last + 1)

    def _send(self, message: Message) -> None:
        if self.transport.send(self.group, message):
            self._counters["messages_sent"] += 1
            return
        # Dropped (full queue, link down): the core stops pipelining to that peer and probes.
        self._counters["messages_refused"] += 1
        self.core.report_unreachable(message.target)
        if isinstance(message, InstallSnapshot):
            self.core.report_snapshot(message.target, success=False)

    # --- proposals -------------------------------------------------------------------------------

    def _settle_up_to(self, index: int, *, committed: Sequence[Entry]) -> None:
        # A proposal commits iff an entry with its index AND term is committed. Any other proposal
        # at or below the applied index lost its place to another leader's entry (or a snapshot
        # covered it, and then its fate is unknown here).
        for entry in committed:
            proposal = self._proposals.get(entry.index)
            if proposal is not None and proposal.term == entry.term:
                del self._proposals[entry.index]
                proposal._settle(None)
                self._counters["proposals_committed"] += 1
                if self.observer is not None:
                    self.observer.proposal_committed(time.perf_counter() - proposal.proposed_s)
        while self._proposal_indexes and self._proposal_indexes[0] <= index:
            lost = self._proposals.pop(heapq.heappop(self._proposal_indexes), None)
            if lost is None:
                continue  # committed above
            self._counters["proposals_failed"] += 1
            if committed:
                lost._settle(
                    ProposalDroppedError(
                        f"{self.group}: entry {lost.index}@{lost.term} was replaced by another "
                        "leader's entry; retry"
                    )
                )
            else:
                lost._settle(
                    ProposalTimeoutError(
                        f"{self.group}: a snapshot covered entry {lost.index}@{lost.term}; "
                        "its outcome is unknown here"
                    )
                )

    def _fail_proposals_on_step_down(self) -> None:
        """A deposed leader cannot learn its proposals' fate until it hears from the new leader
        (cut off, it may never). Settle them now with a retriable NOT_LEADER, as Kafka does: a
        client that retries may write a record twice, never lose one that was acknowledged."""
        pending, self._proposals = self._proposals, {}
        self._proposal_indexes = []
        for proposal in pending.values():
            self._counters["proposals_failed"] += 1
            proposal._settle(LeadershipLostError(self.group, proposal.index, self.core.leader_id))

    def _register_proposal(self, proposal: Proposal) -> None:
        previous = self._proposals.get(proposal.index)
        if previous is not None:
            # We lost leadership, our log was truncated and we lead again at a higher term: the
            # old entry at this index is not in our log, and a leader holds every committed entry.
            self._counters["proposals_failed"] += 1
            previous._settle(
                ProposalDroppedError(
                    f"{self.group}: entry {previous.index}@{previous.term} was truncated; retry"
                )
            )
        else:
            heapq.heappush(self._proposal_indexes, proposal.index)
        self._proposals[proposal.index] = proposal

    def _stop(self, error: BrokerError) -> None:
        self._stopped_error = error
        pending, self._proposals = self._proposals, {}
        self._proposal_indexes = []
        for proposal in pending.values():
            proposal._settle(error)
        self._change_version += 1
        self._changed.set()
        self._leadership_version += 1
        self._leadership_changed.set()
        self._call_listeners()

    # --- change notification ---------------------------------------------------------------------

    def _observable(self) -> tuple[object, ...]:
        core = self.core
        return (  # leadership first (`_LEADERSHIP_FIELDS`), then progress
            core.role,
            core.leader_id,
            core.term,
            core.quiescent,
            self._high_watermark,
            core.log.last_index(),
            core.durable_index,
        )

    def _notify(self) -> None:
        observed = self._observable()
        if observed != self._observed:
            if self._observed[0] is Role.LEADER and observed[0] is not Role.LEADER:
                self._fail_proposals_on_step_down()
            if observed[:_LEADERSHIP_FIELDS] != self._observed[:_LEADERSHIP_FIELDS]:
                self._leadership_version += 1
                self._leadership_changed.set()
                self._leadership_changed = trio.Event()
            self._observed = observed
            self._change_version += 1
            self._changed.set()
            self._changed = trio.Event()
            self._call_listeners()

    def _call_listeners(self) -> None:
        for listener in tuple(self._listeners):
            listener()

    def tick_nowait(self) -> None:
        """From the shared `RaftTicker`: one tick is due (skipped if the inbox is full)."""
        with contextlib.suppress(trio.WouldBlock):
            self._inbox_send.send_nowait(_TICK)

    def _wake(self) -> None:
        # A full inbox wakes the loop anyway.
        with contextlib.suppress(trio.WouldBlock):
            self._inbox_send.send_nowait(_WAKE)
