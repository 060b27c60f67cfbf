"""`ReplicaManager`: the partition replicas this broker hosts, one Raft group each.

It follows the applied metadata (`reconcile(machine)`, a `ControllerService` listener): every
partition whose replicas include this broker gets its partition log (created, or opened from the
data dir) and a `RaftDriver` (group `<topic>-<partition>`, voters = the replicas) on the node's
shared `RaftTransport`. Rules:

1. Reconcile from state, not from records: the wanted set is recomputed from the whole state after
   each applied entry, so a restart from an LMDB snapshot, a replay and a live update all end in
   the same place. It never awaits (it runs inside the controller driver's apply).
2. A replica leaves by cancelling its own scope. Only when its driver task has finished (an fsync in
   a worker thread always completes first) are its log and its Raft keys in LMDB deleted, and only
   then may a topic re-created under the same name start a replica at that key.
3. Produce runs on the group's leader only (else NotLeaderError with the leader's node id). acks=all
   returns once the batch is committed; acks=1 once the leader's copy is fsynced; acks=0 once it is
   appended. Reads stop at the high watermark (the commit index + 1), so nothing uncommitted leaks.
4. Leadership is decided by each group, and only published to the controller: a leader reports
   (itself, its term, its in-sync replicas) whenever they change, through `reporter`. After
   `preferred_leader_delay_ms` of leading, a leader that is not its partition's preferred leader
   hands over (Raft leadership transfer) once that broker is ACTIVE and holds the whole log.
5. A broker that stops on purpose first hands its leaderships to caught-up followers (Kafka's
   controlled shutdown), so its partitions change leader in a round trip, not after an election
   timeout.
6. Retention deletes only segments wholly below what this replica has applied (committed), and
   first records a Raft snapshot point at the new log start (`LogRaftStorage.compact_to`), so
   the group can still answer for the term there. A follower that falls behind the leader's log
   start is caught up by a snapshot: its log is reset to the leader's start, then replicated.
7. Replica storage is deleted only once the metadata has caught up with the controller
   (`metadata_caught_up`, called by the node when it sees its own registration applied): until
   then an unwanted replica (a topic deleted, or re-created under a new id, in a replay still under
   way, e.g. after `meta.lmdb` was lost) keeps running and its log stays on disk. A log directory
   no applied topic names is never started, so never deleted here (docs/storage.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import math
import random
from collections.abc import Awaitable, Callable

import lmdb
import trio

from broker.config import MIB, ConfigBase, LogConfig, check_range
from broker.controller.records import BrokerState
from broker.controller.state import ControllerStateMachine, PartitionInfo, TopicInfo
from broker.kvstore import KeySpace, KvStore
from broker.log.log import PartitionLog, ReadResult
from broker.log.manager import LogManager, partition_directory_name
from broker.log.sync_threads import fsync_workers
from broker.raft.config import RaftConfig
from broker.raft.driver import (
    RaftDriver,
    RaftDriverConfig,
    RaftTicker,
    StorageOfflineError,
    ThreadLogSyncer,
)
from broker.raft.errors import NotLeaderError
from broker.raft.log_storage import LogRaftStorage
from broker.raft.messages import NODE_NONE, Configuration
from broker.raft.progress import ProgressState
from broker.raft.ready import Role
from broker.raft.store_sync import StoreSyncer
from broker.raft.transport import RaftTransport
from wire import batch as batch_codec
from wire.error_codes import BrokerError, ErrorCode

from .controller_service import ChangeNotifier

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaManagerConfig(ConfigBase):
    """Bounds of the replicas one broker hosts."""

    # Partition replicas (Raft groups) on this broker; more are refused and logged.
    replicas_max: int = 10_000
    # Largest read one call returns (a fetch asks for less).
    read_bytes_max: int = 64 * MIB
    # How long a leader waits between failed reports to the controller, and how often an idle
    # leader re-checks its in-sync set and the preferred-leader rule.
    leader_check_interval_ms: int = 200
    # A leader that is not the preferred one hands over after leading this long; 0 disables it.
    preferred_leader_delay_ms: int = 1_000

    def validate(self) -> None:
        check_range("replicas_max", self.replicas_max, 1)
        check_range("read_bytes_max", self.read_bytes_max, 1)
        check_range("leader_check_interval_ms", self.leader_check_interval_ms, 1)
        check_range("preferred_leader_delay_ms", self.preferred_leader_delay_ms, 0)


# (topic, partition, leader, leader_epoch, in_sync_replicas) -> published by the controller.
LeaderReporter = Callable[[str, int, int, int, tuple[int, ...]], Awaitable[None]]


# While resigning leaderships at shutdown, how often to look at the transfers' progress.
RESIGN_RECHECK_S = 0.05


def can_take_over(driver: RaftDriver, node: int) -> bool:
    """Whether voter `node` can take this leader's place at once: replicating, heard from within
    the last election timeout, holding the leader's whole log. Anything else would stall the
    group's proposals for a transfer timeout (a crashed broker keeps its last match index in
    the progress table)."""
    core = driver.core
    progress = core.progress.get(node)
    return (
        node != core.node_id
        and progress is not None
        and progress.recent_active
        and progress.state is ProgressState.REPLICATE
        and progress.match_index >= core.log.last_index()
    )


def handover_target(driver: RaftDriver) -> int | None:
    """A voter that can take over at once (`can_take_over`), or None."""
    return next(
        (node for node in sorted(driver.core.progress) if can_take_over(driver, node)), None
    )


def _initial_configuration(node_id: int, info: PartitionInfo) -> Configuration:
    """The Raft configuration a NEW group member starts from (a restart uses its stored one).

    While a reassignment is under way, a replica with no Raft state yet starts as a learner of
    the others: it must not campaign before the leader's log, and the configuration entries in
    it, reach it (they then say what it really is)."""
    others = [node for node in info.replicas if node != node_id]
    if info.target_replicas and others:
        return Configuration.of(others, [node_id])
    return Configuration.of(list(info.replicas))


class Acks(enum.IntEnum):
    """How much of the replication a produce waits for (Kafka's acks values)."""

    NONE = 0  # appended to the leader's log (not yet durable)
    LEADER = 1  # fsynced on the leader
    ALL = -1  # committed by the group: on a majority, fsynced under flush.policy=always


@dataclasses.dataclass(frozen=True, slots=True)
class ProduceResult:
    base_offset: int
    last_offset: int


class Replica:
    """One hosted partition replica: its log and its Raft group's driver."""

    def __init__(
        self, topic: TopicInfo, info: PartitionInfo, log: PartitionLog, driver: RaftDriver
    ) -> None:
        self.topic = topic.name
        self.topic_id = topic.topic_id
        self.partition = info.partition
        self.replicas = info.replicas
        # The topic's config overrides the log's config was built from (a ConfigSet changes them).
        self.configs = topic.configs
        self.log = log
        self.driver = driver
        self.scope = trio.CancelScope()
        self.deleting = False
        # A reassignment is under way: its leader moves the group (broker/cluster/reassignment.py)
        # and the preferred-leader rule waits until it completes.
        self.reassigning = bool(info.target_replicas)
        self.stopped = trio.Event()

    @property
    def group(self) -> str:
        return self.driver.group

    @property
    def leader_id(self) -> int:
        """The group's leader as this replica knows it (0: none yet)."""
        return self.driver.leader_id

    @property
    def is_leader(self) -> bool:
        return self.driver.role is Role.LEADER

    @property
    def high_watermark(self) -> int:
        """Exclusive end of the committed (and applied here) offsets."""
        return self.driver.high_watermark

    @property
    def high_watermark_settled(self) -> bool:
        """Leading with a high watermark that covers every acknowledged write (the driver's)."""
        return self.driver.high_watermark_settled

    def check_batch(self, batch: bytes | bytearray | memoryview) -> None:
        # The core trusts its caller with the batch (CRC, bounds): this is the produce gate.
        header = batch_codec.validate_batch(batch, max_batch_bytes=self.log.config.max_batch_bytes)
        if header.size_bytes != len(batch):
            raise batch_codec.BadLengthError(
                f"expected exactly one batch of {header.size_bytes} bytes, got {len(batch)}"
            )
        if header.is_control or header.last_offset_delta != header.record_count - 1:
            raise BrokerError(
                ErrorCode.INVALID_RECORD,
                "a produced batch must be a data batch with consecutive offsets",
            )

    async def produce(
        self, batch: bytes | bytearray, *, acks: Acks = Acks.ALL, timeout_ms: int | None = None
    ) -> ProduceResult:
        """Append one batch through the group. Raises NotLeaderError (`leader_hint`) on a
        follower, InvalidBatchError for a bad batch, and the driver's errors (a timeout or a stop
        means the outcome is unknown; ProposalDroppedError means retry)."""
        self.check_batch(batch)
        if acks is Acks.ALL:
            proposal = await self.driver.propose(batch, timeout_ms=timeout_ms)
        else:
            proposal = self.driver.propose_nowait(batch)
            if acks is Acks.LEADER:
                await self.driver.wait_durable(proposal.index)
        return ProduceResult(proposal.base_offset, proposal.index)

    def read(self, offset: int, max_bytes: int, *, allow_follower: bool = False) -> ReadResult:
        """Whole batches from `offset`, never past the high watermark. On a follower this raises
        NotLeaderError unless `allow_follower` (a follower's watermark may lag the leader's)."""
        if not allow_follower and not self.is_leader:
            raise NotLeaderError(self.leader_id)
        return self.log.read(offset, max_bytes, max_offset=self.driver.high_watermark)

    def deletable_end(self) -> int:
        """Segments wholly below this offset (exclusive) may be deleted (retention,
        DeleteRecords): what this replica has committed and applied."""
        driver = self.driver
        return min(driver.core.applied_index, driver.storage.last_index()) + 1

    def snapshot_before_delete(self, last: int) -> None:
        """Record the Raft snapshot point at `last` before the segments up to it are deleted, so
        the group can still answer for the entry just below its log (docs/cluster.md,
        "Retention")."""
        storage = self.driver.storage
        if last > storage.first_index() - 1:
            storage.compact_to(last, self.driver.core.log.term(last))

    def in_sync_replicas(self, term_start_index: int) -> tuple[int, ...]:
        """On the leader: itself, and the followers replicating that have acknowledged the log up
        to where this term began (an approximation of Kafka's ISR without a lag-time rule)."""
        core = self.driver.core
        in_sync = [
            node
            for node in self.replicas
            if node == core.node_id
            or (
                (progress := core.progress.get(node)) is not None
                and progress.state is ProgressState.REPLICATE
                and progress.match_index >= term_start_index
            )
        ]
        return tuple(sorted(in_sync))


class ReplicaManager:
    """Starts and stops this broker's partition replicas. See the module docstring."""

    def __init__(
        self,
        *,
        node_id: int,
        store: KvStore,
        logs: LogManager,
        transport: RaftTransport,
        log_defaults: LogConfig,
        raft_config: RaftConfig,
        driver_config: RaftDriverConfig,
        config: ReplicaManagerConfig,
        rng: random.Random,
        reporter: LeaderReporter | None = None,
        ticker: RaftTicker | None = None,
    ) -> None:
        """`reporter` publishes a leader's report to the controller (None: nothing is reported)."""
        config.validate()
        self.node_id = node_id
        self.config = config
        self._store = store
        # One LMDB sync for the terms and votes of every hosted group at once (store_sync.py).
        self._store_syncer = StoreSyncer(store)
        # Each replica's log fsync, in threads `run` shares among them (replaced there).
        self._log_syncer = ThreadLogSyncer()
        self._logs = logs
        self._transport = transport
        self._log_defaults = log_defaults
        # Partition groups do not broadcast each new commit index: their followers learn it
        # with the next append or heartbeat. Nothing waits on a follower's commit index (reads
        # and acknowledgements are the leader's; a new leader serves offset lookups only once
        # its high watermark is settled), and the broadcast and its answers were half of the
        # Raft messages of every replicated entry (RaftConfig).
        self._raft_config = dataclasses.replace(raft_config, commit_broadcast=False)
        self._driver_config = driver_config
        self._rng = rng
        self._reporter = reporter
        self._ticker = ticker
        self._replicas: dict[tuple[str, int], Replica] = {}
        # Replicas whose storage failed: not restarted until the broker restarts.
        self._offline: set[tuple[str, int]] = set()
        self._state: ControllerStateMachine | None = None
        self._nursery: trio.Nursery | None = None
        # Rule 7: no replica storage is deleted before the metadata has caught up.
        self._deletions_allowed = False
        self.changes = ChangeNotifier()

    # --- lookups ---------------------------------------------------------------------------------

    def replica(self, topic: str, partition: int) -> Replica:
        """The hosted replica; BrokerError(UNKNOWN_PARTITION) if this broker does not host it."""
        replica = self._replicas.get((topic, partition))
        if replica is None or replica.deleting:
            raise BrokerError(
                ErrorCode.UNKNOWN_PARTITION,
                f"broker {self.node_id} hosts no replica of {topic}-{partition}; refresh metadata",
            )
        return replica

    def replicas(self) -> list[Replica]:
        """Every hosted replica, by (topic, partition)."""
        return [self._replicas[key] for key in sorted(self._replicas)]

    # --- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host replicas until cancelled (cancelling this stops every replica's driver)."""
        # The replicas' fsyncs share these workers (driver.ThreadLogSyncer): a plain one inline
        # on the event loop within its budget, else the fsync helper process; threads for the
        # rest. They stop once every driver has (the nursery is closed first).
        async with fsync_workers("raft-fsync") as threads:
            self._log_syncer = ThreadLogSyncer(threads=threads)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started()
                    self._reconcile()
                    await trio.sleep_forever()
            finally:
                self._nursery = None  # no replica starts after this (`_reconcile`)

    def reconcile(self, machine: ControllerStateMachine) -> None:
        """The controller's listener: make the hosted replicas match `machine` (never awaits)."""
        self._state = machine
        self._reconcile()

    def metadata_caught_up(self) -> None:
        """The applied metadata has caught up with the controller: deletions may go ahead."""
        if not self._deletions_allowed:
            self._deletions_allowed = True
            self._reconcile()

    def _reconcile(self) -> None:
        if self._state is None or self._nursery is None:
            return
        wanted: dict[tuple[str, int], tuple[TopicInfo, PartitionInfo]] = {
            (topic.name, info.partition): (topic, info)
            for topic in self._state.topics()
            for info in topic.partitions
            if self.node_id in info.replicas
        }
        for key, replica in list(self._replicas.items()):
            want = wanted.get(key)
            if want is None or want[0].topic_id != replica.topic_id:
                if self._deletions_allowed:  # else held (rule 7)
                    self._stop(replica, delete=True)
            else:
                # A reassignment changes the replica set of a running group (its in-sync set
                # and preferred leader follow it).
                replica.replicas = want[1].replicas
                replica.reassigning = bool(want[1].target_replicas)
                if want[0].configs != replica.configs:
                    # `topics alter-config`: the next append, roll, sweep and clean use it.
                    replica.configs = want[0].configs
                    replica.log.config = self._log_config(want[0])
        for key, (topic, info) in wanted.items():
            # A key still in _replicas is running or still stopping (rule 2).
            if key in self._replicas or key in self._offline:
                continue
            if len(self._replicas) >= self.config.replicas_max:
                logger.error(
                    "node %d: not hosting %s-%d: replicas_max (%d) reached",
                    self.node_id,
                    *key,
                    self.config.replicas_max,
                )
                continue
            self._start(topic, info)

    def _start(self, topic: TopicInfo, info: PartitionInfo) -> None:
        assert self._nursery is not None
        config = self._log_config(topic)
        log = self._logs.get(topic.name, info.partition)
        if log is None:
            log = self._logs.create(topic.name, info.partition, config)
        else:
            log.config = config  # opened from disk with the defaults before the state was known
        group = partition_directory_name(topic.name, info.partition)
        storage = LogRaftStorage(
            log,
            self._store,
            group,
            _initial_configuration(self.node_id, info),
            # No state machine: the commit index is a cache, written at most once a second.
            lazy_commit_index=True,
        )
        driver = RaftDriver(
            group=group,
            node_id=self.node_id,
            storage=storage,
            transport=self._transport,
            raft_config=self._raft_config,
            config=self._driver_config,
            # One generator for every replica: each core only draws its election timeouts
            # from it, and a Random per group cost 2.5 KB (2.5 MB per 1,000 replicas).
            rng=self._rng,
            ticker=self._ticker,
            store_syncer=self._store_syncer,
            log_syncer=self._log_syncer,
            # A DeleteRecords entry raises the log start once committed (docs/storage.md). An
            # on_commit hook, not on_apply: a partition has no state machine, and acknowledges
            # acks=all writes before its own fsync (docs/raft-driver.md).
            on_commit=lambda entries: log.commit_log_starts(entries[-1].index + 1),
        )
        replica = Replica(topic, info, log, driver)
        self._replicas[(topic.name, info.partition)] = replica
        self._nursery.start_soon(self._run_replica, replica, name=f"replica {group}")
        self.changes.notify()

    def _log_config(self, topic: TopicInfo) -> LogConfig:
        return LogConfig.from_mapping(dict(topic.configs), base=self._log_defaults)

    def _stop(self, replica: Replica, *, delete: bool) -> None:
        replica.deleting = replica.deleting or delete
        replica.scope.cancel()

    async def _run_replica(self, replica: Replica) -> None:
        key = (replica.topic, replica.partition)
        try:
            with replica.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(replica.driver.run)
                    nursery.start_soon(self._watch_leadership, replica)
        except* StorageOfflineError as group:
            # The group is offline on this broker (fsyncgate); the others carry on.
            logger.error("node %d: %s is offline: %s", self.node_id, replica.group, group)
            self._offline.add(key)
        finally:
            if self._replicas.get(key) is replica:
                del self._replicas[key]
            if replica.deleting:
                self._delete_storage(replica)
            else:
                self._save_commit_index(replica)
            replica.stopped.set()
            self.changes.notify()
        if replica.deleting:
            self._reconcile()  # a topic re-created under this name may start its replica now

    def _save_commit_index(self, replica: Replica) -> None:
        """On a stop, once the driver task has finished: the commit index the group keeps
        lazily (docs/raft.md). A failed write costs only a lower high watermark after a
        restart, until the commit is learnt again: logged, so that the stop still completes."""
        try:
            replica.driver.storage.save_commit_index()
        except lmdb.Error as exc:
            logger.warning(
                "node %d: %s: the commit index was not saved (%s); it is learnt again after a "
                "restart",
                self.node_id,
                replica.group,
                exc,
            )

    async def _watch_leadership(self, replica: Replica) -> None:
        """While this replica leads: report changes to the controller, move to the preferred
        leader (rule 4). Wakes on the driver's changes of leadership (role, leader, term,
        quiescence), and every check interval while it leads a group that is not quiet: the
        in-sync set it reports moves with the followers' acknowledgements, which it reads then
        (within `leader_check_interval_ms`) rather than waking at every append, fsync and commit."""
        driver = replica.driver
        interval_s = self.config.leader_check_interval_ms / 1000
        reported: tuple[int, tuple[int, ...]] | None = None
        led_term, led_since, term_start = 0, 0.0, 0
        while True:
            version = driver.leadership_version
            if driver.role is Role.LEADER:
                if led_term != driver.term:
                    led_term, led_since = driver.term, trio.current_time()
                    term_start = driver.core.log.last_index()
                report = (driver.term, replica.in_sync_replicas(term_start))
                if report != reported and self._reporter is not None:
                    if await self._report(replica, *report):
                        reported = report
                    else:
                        await trio.sleep(interval_s)  # back off: no controller answers now
                        continue
                if self._should_transfer(replica, trio.current_time() - led_since):
                    with contextlib.suppress(BrokerError):  # deposed meanwhile: nothing to do
                        replica.driver.transfer_leadership(replica.replicas[0])
                    led_since = trio.current_time()  # once per delay, if it does not complete
            # Only a leader has timed work (reports to retry, the preferred-leader rule); a
            # follower sleeps until its group changes, which keeps idle brokers idle. So does a
            # quiet preferred leader: its in-sync set cannot change until the group wakes, and
            # waking is a change (docs/raft-driver.md, rule 6).
            timed = driver.role is Role.LEADER and (
                not driver.core.quiescent or replica.replicas[0] != self.node_id
            )
            timeout_s = interval_s if timed else math.inf
            with trio.move_on_after(timeout_s):
                try:
                    await driver.wait_leadership_changed(version)
                except BrokerError:
                    return  # the driver stopped (its replica is stopping): nothing to watch

    async def _report(self, replica: Replica, term: int, in_sync: tuple[int, ...]) -> bool:
        """Publish a leader report; True once the controller holds it (or a newer one)."""
        assert self._reporter is not None
        try:
            await self._reporter(replica.topic, replica.partition, self.node_id, term, in_sync)
        except BrokerError as exc:
            logger.debug("node %d: %s leader report: %s", self.node_id, replica.group, exc)
            # NOT_LEADER: the controller already records a newer term; nothing to publish.
            return exc.code is ErrorCode.NOT_LEADER
        return True

    def _should_transfer(self, replica: Replica, led_s: float) -> bool:
        delay_ms = self.config.preferred_leader_delay_ms
        preferred = replica.replicas[0]
        if not replica.is_leader or delay_ms == 0 or preferred == self.node_id:
            return False
        if replica.reassigning:
            return False
        if led_s * 1000 < delay_ms:
            return False
        # Only to an ACTIVE broker that answered within the last election timeout and holds our
        # whole log: a transfer to anything else would stall the group's proposals for nothing
        # (a crashed broker keeps its last match index in our progress table).
        info = self._state.broker(preferred) if self._state is not None else None
        return (
            info is not None
            and info.state is BrokerState.ACTIVE
            and can_take_over(replica.driver, preferred)
        )

    def apply_retention(self, now_ms: int | None = None) -> int:
        """Retention on every hosted replica (rule 6); returns the segments deleted."""
        deleted = 0
        for replica in self.replicas():
            if replica.deleting:
                continue
            try:
                deleted += replica.log.apply_retention(
                    now_ms,
                    max_offset=replica.deletable_end(),
                    before_delete=replica.snapshot_before_delete,
                )
            except (OSError, lmdb.Error) as exc:  # this replica waits for the next sweep
                logger.error("node %d: retention of %s: %s", self.node_id, replica.group, exc)
        return deleted

    async def resign_leaderships(self, timeout_s: float) -> int:
        """Controlled shutdown (rule 5): hand every partition this broker leads to a caught-up
        follower, and wait until it leads none, for at most `timeout_s`. Returns how many it
        still leads (their groups elect a leader after the election timeout instead)."""
        with trio.move_on_after(timeout_s):
            while True:
                leading = [r for r in self.replicas() if r.is_leader and not r.deleting]
                if not leading:
                    return 0
                for replica in leading:
                    if replica.driver.core.transfer_target != NODE_NONE:
                        continue  # under way: asking again would restart its timeout
                    target = handover_target(replica.driver)
                    if target is not None:
                        with contextlib.suppress(BrokerError):  # deposed, or a transfer under way
                            replica.driver.transfer_leadership(target)
                # Transfers take a round trip or two; look again shortly (bounded above).
                await trio.sleep(RESIGN_RECHECK_S)
        return sum(1 for r in self.replicas() if r.is_leader)

    def _delete_storage(self, replica: Replica) -> None:
        # The driver has stopped, so nothing writes the log or the group's Raft keys any more.
        self._logs.delete(replica.topic, replica.partition)
        prefix = replica.group.encode() + b"/"
        for raft_key, _ in self._store.items(KeySpace.RAFT, prefix):
            self._store.delete(KeySpace.RAFT, raft_key, durable=False)
        logger.info("node %d: deleted replica %s", self.node_id, replica.group)
