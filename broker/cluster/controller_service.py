"""`ControllerService`: the trio shell around the metadata log (the controller Raft group).

One per broker. It owns the controller group's `RaftDriver` (group `__cluster_metadata`, one
partition log under the node's data dir, voters = the initial peers) and the broker's
`ControllerStateMachine`, and exposes the commands of docs/controller.md. Rules:

1. Apply in log order, exactly once. `on_apply` decodes each committed entry's records (record i of
   a batch has index `base_offset + i`), skips control batches, and applies only records with an
   index above the machine's `applied_index`: after a restart Raft may hand out entries the LMDB
   snapshot already holds (its commit index is written lazily), and those must not apply twice.
2. Snapshot between entries only: `to_bytes()` goes to LMDB (KeySpace.CONTROLLER) every
   `snapshot_interval_records` applied records and at a clean stop; start-up restores it and the
   log replays the rest. Corrupt metadata (`MetadataRecordError`) stops the broker loudly.
3. Commands (`create_topic`, `delete_topic`, `register_broker`, `set_broker_state`) run on the
   controller LEADER only: prepare against its applied state, propose the records as ONE batch,
   return once that entry is applied here. Elsewhere they raise `NotControllerError` with the
   leader hint. Commands are serialized (one prepared at a time), which avoids most skipped records.
4. Listeners (`ReplicaManager.reconcile`) are called synchronously after each applied entry and
   must not block: they react to the new state, not to individual records.
5. Liveness (KRaft's broker sessions): brokers heartbeat to the leader, which keeps the times in
   memory only. An ACTIVE broker silent for `session_timeout_ms` is FENCED through the log; its
   next heartbeat unfences it. A newly elected leader starts every broker's session afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import trio

from broker.config import ConfigBase, LogConfig, check_range
from broker.controller import reassignment
from broker.controller.cache import MetadataCache
from broker.controller.records import (
    BrokerState,
    Endpoint,
    MetadataRecord,
    MetadataRecordError,
    decode_record,
    encode_record,
)
from broker.controller.scram_users import prepare_alter
from broker.controller.state import ControllerConfig, ControllerStateMachine, TopicInfo
from broker.kvstore import KeySpace, KvStore
from broker.log.manager import LogManager
from broker.raft.config import RaftConfig
from broker.raft.driver import RaftDriver, RaftDriverConfig, RaftTicker
from broker.raft.errors import NotLeaderError
from broker.raft.log_storage import LogRaftStorage
from broker.raft.messages import Configuration, Entry, EntryKind, Snapshot
from broker.raft.ready import Role
from broker.raft.transport import RaftTransport
from broker.security.state import SecurityState
from wire import batch as batch_codec
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

METADATA_TOPIC: Final = "__cluster_metadata"
METADATA_PARTITION: Final = 0
# The group name follows the data partitions' `<topic>-<partition>` rule.
METADATA_GROUP: Final = f"{METADATA_TOPIC}-{METADATA_PARTITION}"
# The LMDB key (KeySpace.CONTROLLER) of the latest state snapshot.
SNAPSHOT_KEY: Final = b"state"


@dataclasses.dataclass(frozen=True, slots=True)
class ControllerServiceConfig(ConfigBase):
    """Limits and timings of the controller shell (the state machine's own limits are
    `ControllerConfig`; the group's Raft timings are the node's driver config)."""

    # Records applied between two LMDB snapshots of the state: bounds the replay after a restart.
    snapshot_interval_records: int = 1000
    # How long a command waits for its entry to commit and apply before REQUEST_TIMED_OUT.
    command_timeout_ms: int = 10_000
    # Wait between broker-registration attempts while no controller leader answers.
    registration_retry_ms: int = 200
    # How often a broker heartbeats to the controller leader (Kafka: broker.heartbeat.interval.ms).
    heartbeat_interval_ms: int = 1_000
    # How often the controller leader re-checks membership (metadata-group configuration,
    # decommissions) when no change wakes it (broker/cluster/membership.py).
    membership_check_interval_ms: int = 500
    # An ACTIVE broker whose heartbeats stop for this long is fenced: it no longer counts as a
    # leader or an in-sync replica in Metadata, nor as live for placement
    # (Kafka: broker.session.timeout.ms).
    session_timeout_ms: int = 6_000

    def validate(self) -> None:
        check_range("snapshot_interval_records", self.snapshot_interval_records, 1)
        check_range("command_timeout_ms", self.command_timeout_ms, 1)
        check_range("registration_retry_ms", self.registration_retry_ms, 1)
        check_range("heartbeat_interval_ms", self.heartbeat_interval_ms, 1)
        check_range("membership_check_interval_ms", self.membership_check_interval_ms, 1)
        # Fencing after fewer than two missed heartbeats would fence healthy brokers.
        check_range("session_timeout_ms", self.session_timeout_ms, 2 * self.heartbeat_interval_ms)


# Leader reports proposed as one metadata entry at most (each record is ~100 bytes).
LEADER_REPORT_BATCH_MAX: Final = 500


@dataclasses.dataclass(slots=True)
class _LeaderReport:
    """One queued `report_leader` call and, once `done`, its outcome (`error` None: applied)."""

    topic: str
    partition: int
    leader: int
    leader_epoch: int
    in_sync_replicas: tuple[int, ...]
    done: bool = False
    error: BrokerError | None = None

    def settle(self, error: BrokerError | None) -> None:
        """Record the outcome; the first one settled stands."""
        if not self.done:
            self.done, self.error = True, error


class NotControllerError(BrokerError):
    """Not the controller leader here; `leader_hint` is the leader known (0: none)."""

    def __init__(self, node_id: int, leader_hint: int) -> None:
        super().__init__(
            ErrorCode.NOT_CONTROLLER,
            f"broker {node_id} is not the controller; the controller is "
            f"{leader_hint or 'not elected yet'}: send the request there",
        )
        self.leader_hint = leader_hint


class ChangeNotifier:
    """A version counter with a wake-up: read `version` before checking a condition, then
    `await wait(version)`; a change in between is never missed (as `RaftDriver.wait_changed`)."""

    def __init__(self) -> None:
        self.version = 0
        self._event = trio.Event()

    def notify(self) -> None:
        self.version += 1
        self._event.set()
        self._event = trio.Event()

    async def wait(self, since_version: int) -> None:
        if since_version != self.version:
            return
        await self._event.wait()


MetadataListener = Callable[[ControllerStateMachine], None]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ControllerService:
    """The metadata log of one broker. See the module docstring for the rules."""

    def __init__(
        self,
        *,
        node_id: int,
        voters: Sequence[int],
        learners: Sequence[int] = (),
        store: KvStore,
        logs: LogManager,
        transport: RaftTransport,
        log_defaults: LogConfig,
        metadata_log_config: LogConfig,
        limits: ControllerConfig,
        raft_config: RaftConfig,
        driver_config: RaftDriverConfig,
        config: ControllerServiceConfig,
        rng: random.Random,
        ticker: RaftTicker | None = None,
    ) -> None:
        config.validate()
        self.node_id = node_id
        self.config = config
        self._store = store
        self._limits = limits
        self._log_defaults = log_defaults
        log = logs.get(METADATA_TOPIC, METADATA_PARTITION) or logs.create(
            METADATA_TOPIC, METADATA_PARTITION, metadata_log_config
        )
        # No time or size retention on the metadata log: compaction (rule 2) deletes the whole
        # segments below a snapshot, through `apply_retention` with retention_bytes 0.
        log.config = dataclasses.replace(log.config, retention_ms=-1, retention_bytes=0)
        # The initial configuration of a new metadata log: the controller voters, and every
        # other broker known at start-up as a learner (rule 6). A log that exists keeps its own.
        storage = LogRaftStorage(
            log,
            store,
            METADATA_GROUP,
            Configuration.of(list(voters), [node for node in learners if node not in voters]),
        )
        self.machine = self._restore(storage.snapshot())
        # The applied index the LMDB snapshot held at start-up (0: none), for status and tests.
        self.restored_index = self.machine.applied_index
        self._cache = MetadataCache(self.machine)
        self._listeners: list[MetadataListener] = []
        self._records_since_snapshot = 0
        # Records of the log as it was at start-up handed to `on_apply` (applied, or skipped as
        # already in the snapshot): what a restart replays (tests bound it by one interval).
        self.replayed_record_count = 0
        self._log_end_at_start = storage.last_index()
        # Metadata-log compactions since start-up (rule 2).
        self.compaction_count = 0
        self._command_lock = trio.Lock()
        # Leader reports waiting to be proposed together (report_leader).
        self._leader_reports: list[_LeaderReport] = []
        self.changes = ChangeNotifier()
        # On the leader: when each broker last heartbeated (trio clock, seconds). Not in the log:
        # a new leader gives every broker a full session timeout (rule 5).
        self._heartbeats: dict[int, float] = {}
        self.driver = RaftDriver(
            group=METADATA_GROUP,
            node_id=node_id,
            storage=storage,
            transport=transport,
            raft_config=raft_config,
            config=driver_config,
            rng=rng,
            applied_index=self.machine.applied_index,
            on_apply=self._apply_entries,
            on_snapshot=self._install_snapshot,
            ticker=ticker,
        )

    # --- state -----------------------------------------------------------------------------------

    @property
    def cache(self) -> MetadataCache:
        """The live metadata view. Re-read it after awaiting: an installed snapshot replaces it."""
        return self._cache

    @property
    def leader_id(self) -> int:
        """The controller leader this broker knows of (0: none)."""
        return self.driver.leader_id

    @property
    def is_leader(self) -> bool:
        return self.driver.role is Role.LEADER

    async def wait_changed(self, driver_version: int, applied_version: int) -> None:
        """Return at the next change of the metadata group (leader, role, commit) or of the
        applied metadata since `driver.change_version` and `changes.version`."""
        async with trio.open_nursery() as nursery:

            async def driver_changed() -> None:
                # A stopped driver raises its stop error: a change too (the node is stopping, or
                # the controller's own task reports the failure).
                with contextlib.suppress(BrokerError):
                    await self.driver.wait_changed(driver_version)
                nursery.cancel_scope.cancel()

            async def applied() -> None:
                await self.changes.wait(applied_version)
                nursery.cancel_scope.cancel()

            nursery.start_soon(driver_changed)
            nursery.start_soon(applied)

    def add_listener(self, listener: MetadataListener) -> None:
        """Call `listener(machine)` after every applied entry (and once now, for restored state)."""
        self._listeners.append(listener)
        listener(self.machine)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the metadata group's driver (and, while leading, the fencing check) until
        cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.driver.run)
            nursery.start_soon(self._fence_expired_sessions)
            task_status.started()

    def save_snapshot(self) -> None:
        """Write the state to LMDB now (durably): a clean stop, or tests."""
        self._store.put(KeySpace.CONTROLLER, SNAPSHOT_KEY, self.machine.to_bytes(), durable=True)
        self._records_since_snapshot = 0

    # --- applying the log ------------------------------------------------------------------------

    def _restore(self, raft_snapshot: Snapshot) -> ControllerStateMachine:
        # The newer of the two copies of the state: the LMDB snapshot, and the one the metadata
        # log was compacted to (or installed from the leader), which the log no longer holds.
        machine = ControllerStateMachine(self._limits, log_defaults=self._log_defaults)
        for data in (self._store.get(KeySpace.CONTROLLER, SNAPSHOT_KEY), raft_snapshot.data):
            if not data:
                continue
            # A corrupt snapshot raises ControllerSnapshotError: the broker must not start on it.
            restored = ControllerStateMachine.from_bytes(
                data, self._limits, log_defaults=self._log_defaults
            )
            if restored.applied_index > machine.applied_index:
                machine = restored
        return machine

    def _apply_entries(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            if entry.kind is not EntryKind.NORMAL:
                continue  # leader no-ops and configuration changes carry no metadata
            applied = 0
            for record in batch_codec.decode_records(entry.data):
                if record.offset <= self._log_end_at_start:
                    self.replayed_record_count += 1
                # Already in the LMDB snapshot (rule 1). Offset 0 is never a record: a new
                # metadata log starts with the first leader's no-op, so index 0 is free as
                # the machine's "nothing applied" value.
                if record.offset <= self.machine.applied_index:
                    continue
                try:
                    decoded = decode_record(record.value or b"")
                except MetadataRecordError:
                    logger.critical(
                        "node %d: metadata record at index %d is corrupt; stopping",
                        self.node_id,
                        record.offset,
                    )
                    raise
                self.machine.apply(decoded, record.offset)
                applied += 1
            if not applied:
                continue
            self._records_since_snapshot += applied
            if self._records_since_snapshot >= self.config.snapshot_interval_records:
                self._snapshot_and_compact(entry)
            self._notify_listeners()

    def _snapshot_and_compact(self, entry: Entry) -> None:
        """Rule 2: snapshot the state as of `entry` (just applied, so between entries) and
        compact the metadata log to it: Raft's snapshot point moves to the entry (a follower
        behind it gets an InstallSnapshot carrying these bytes) and every whole segment below
        it is deleted, so a restart replays the snapshot plus a short tail."""
        data = self.machine.to_bytes()
        # Not durable by itself; the compaction's durable LMDB write below syncs it too, before
        # any segment is deleted (LMDB commits in order).
        self._store.put(KeySpace.CONTROLLER, SNAPSHOT_KEY, data, durable=False)
        self._records_since_snapshot = 0
        storage = self.driver.storage
        if entry.index <= storage.first_index() - 1:
            return  # a snapshot installed from the leader already covers it
        storage.compact_to(entry.index, entry.term, data)
        # retention_bytes 0 (set at open): every whole segment below the snapshot goes.
        deleted = storage.log.apply_retention(max_offset=entry.index + 1)
        self.compaction_count += 1
        logger.info(
            "node %d: metadata snapshot at index %d (%d bytes); %d segment(s) deleted, the log "
            "starts at %d",
            self.node_id,
            entry.index,
            len(data),
            deleted,
            storage.log.log_start_offset,
        )

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        # A leader sends the state bytes when this broker is behind its log start.
        if not snapshot.data:
            return
        self.machine = ControllerStateMachine.from_bytes(
            snapshot.data, self._limits, log_defaults=self._log_defaults
        )
        self._cache = MetadataCache(self.machine)
        self.save_snapshot()
        self._notify_listeners()

    def _notify_listeners(self) -> None:
        for listener in self._listeners:
            listener(self.machine)
        self.changes.notify()

    # --- commands (controller leader only) -------------------------------------------------------

    def _require_leader(self) -> ControllerStateMachine:
        if self.driver.role is not Role.LEADER:
            raise NotControllerError(self.node_id, self.driver.leader_id)
        return self.machine

    async def _propose(self, records: Sequence[MetadataRecord]) -> None:
        """Propose `records` as one batch; return once its entry is applied here."""
        if not records:
            return
        now = _now_ms()
        batch = batch_codec.build_batch(
            [(now, None, encode_record(record), None) for record in records]
        )
        try:
            # The driver applies (on_apply) before it settles the proposal: on return the
            # records are in self.machine.
            await self.driver.propose(batch, timeout_ms=self.config.command_timeout_ms)
        except NotLeaderError as exc:
            raise NotControllerError(self.node_id, exc.leader_hint) from None

    async def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        configs: Mapping[str, Any] | None = None,
    ) -> TopicInfo:
        """Create a topic with its replicas placed on ACTIVE brokers; its applied `TopicInfo`.

        Raises NotControllerError, the BrokerError of `prepare_create_topic`, INVALID_TOPIC for the
        metadata log's own name, or TOPIC_ALREADY_EXISTS if a racing create won.
        """
        if name == METADATA_TOPIC:
            raise BrokerError(
                ErrorCode.INVALID_TOPIC, f"topic name {name!r} is reserved for the metadata log"
            )
        async with self._command_lock:
            machine = self._require_leader()
            topic_id = uuid.uuid4().hex
            records = machine.prepare_create_topic(
                name, partitions, replication_factor, configs, topic_id=topic_id
            )
            await self._propose(records)
        topic = self.machine.topic(name)
        if topic is None or topic.topic_id != topic_id:
            raise BrokerError(
                ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} was created concurrently"
            )
        return topic

    async def delete_topic(self, name: str) -> None:
        """Delete a topic; raises NotControllerError or BrokerError(UNKNOWN_TOPIC)."""
        async with self._command_lock:
            records = self._require_leader().prepare_delete_topic(name)
            await self._propose(records)

    async def alter_topic_configs(
        self, name: str, configs: Mapping[str, Any], reset: Sequence[str] = ()
    ) -> TopicInfo:
        """Set and reset config overrides of a topic (prepare_alter_configs); its applied
        `TopicInfo`. Every broker hosting a replica applies the new configs to its log when it
        applies the records. Raises NotControllerError or BrokerError (UNKNOWN_TOPIC,
        INVALID_CONFIG)."""
        async with self._command_lock:
            records = self._require_leader().prepare_alter_configs(name, configs, reset)
            await self._propose(records)
        topic = self.machine.topic(name)
        if topic is None:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {name!r} was deleted concurrently")
        return topic

    async def create_partitions(self, name: str, partition_count: int) -> TopicInfo:
        """Raise a topic to `partition_count` partitions (prepare_create_partitions); its applied
        `TopicInfo`. The brokers placed on the new partitions start their replicas when they
        apply the records, as for a new topic. Raises NotControllerError or BrokerError
        (UNKNOWN_TOPIC, INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR, POLICY_VIOLATION)."""
        async with self._command_lock:
            records = self._require_leader().prepare_create_partitions(name, partition_count)
            await self._propose(records)
        topic = self.machine.topic(name)
        if topic is None:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {name!r} was deleted concurrently")
        return topic

    async def alter_scram_credentials(
        self,
        upsertions: Sequence[codec.ScramCredentialUpsertion],
        deletions: Sequence[codec.ScramCredentialDeletion],
    ) -> list[codec.UserScramResult]:
        """Create, replace or delete users' SCRAM credentials (one batch); a result per user
        (`scram_users.prepare_alter`). Raises NotControllerError elsewhere."""
        async with self._command_lock:
            records, results = prepare_alter(
                self._require_leader().scram_users, upsertions, deletions
            )
            await self._propose(records)
        return results

    async def alter_security(
        self, prepare: Callable[[SecurityState], Sequence[MetadataRecord]]
    ) -> SecurityState:
        """Commit the ACL or quota records `prepare(current security state)` returns (create,
        delete or alter: broker/security/state.py); the applied state. Raises
        NotControllerError, or what `prepare` raises."""
        async with self._command_lock:
            records = prepare(self._require_leader().security)
            await self._propose(records)
        return self.machine.security

    async def register_broker(
        self,
        node_id: int,
        host: str,
        port: int,
        incarnation: int,
        endpoints: tuple[Endpoint, ...] = (),
    ) -> int:
        """Register (or re-register) a broker and its listeners' `endpoints`; returns its broker
        epoch. NotControllerError elsewhere; BrokerError(INVALID_REQUEST) for a bad or
        conflicting address."""
        async with self._command_lock:
            records = self._require_leader().prepare_register_broker(
                node_id, host, port, incarnation, endpoints
            )
            await self._propose(records)
        info = self.machine.broker(node_id)
        if info is None or info.incarnation != incarnation:
            raise BrokerError(
                ErrorCode.REQUEST_TIMED_OUT, f"registration of broker {node_id} was superseded"
            )
        return info.broker_epoch

    async def set_broker_state(self, node_id: int, state: BrokerState, broker_epoch: int) -> None:
        """Fence, unfence (ACTIVE) or shut down a broker for `broker_epoch`."""
        async with self._command_lock:
            records = self._require_leader().prepare_set_broker_state(
                node_id, state, broker_epoch=broker_epoch
            )
            await self._propose(records)

    async def decommission_broker(self, node_id: int) -> None:
        """Mark `node_id` DECOMMISSIONING (`BrokerDecommissioning`); the `MembershipService`
        on the leader then moves its replicas and its vote away and removes it. NotControllerError
        elsewhere; BrokerError(INVALID_REQUEST) for an unknown broker or the last active one."""
        async with self._command_lock:
            records = self._require_leader().prepare_decommission_broker(node_id)
            await self._propose(records)

    async def unregister_broker(self, node_id: int) -> None:
        """Remove a decommissioned broker that hosts nothing (`BrokerUnregistered`)."""
        async with self._command_lock:
            records = self._require_leader().prepare_unregister_broker(node_id)
            await self._propose(records)

    @property
    def configuration(self) -> Configuration:
        """The metadata group's configuration in force here (the last one in its log)."""
        return self.driver.core.configuration

    async def heartbeat(
        self, node_id: int, broker_epoch: int, *, want_active: bool, shutting_down: bool = False
    ) -> BrokerState:
        """A broker's heartbeat (rule 5): note it, mark it SHUTTING_DOWN if it is stopping, else
        unfence it if it asks (it has caught up with its own registration), and return its
        state. BrokerError(STALE_BROKER_EPOCH) if the epoch is not the broker's current
        registration: it must register again."""
        info = self._require_leader().broker(node_id)
        if info is None or info.broker_epoch != broker_epoch:
            raise BrokerError(
                ErrorCode.STALE_BROKER_EPOCH,
                f"broker {node_id} epoch {broker_epoch} is not its current registration; "
                "register again",
            )
        self._heartbeats[node_id] = trio.current_time()
        if shutting_down and info.state is not BrokerState.SHUTTING_DOWN:
            await self.set_broker_state(node_id, BrokerState.SHUTTING_DOWN, broker_epoch)
        elif want_active and not shutting_down and info.state is BrokerState.FENCED:
            await self.set_broker_state(node_id, BrokerState.ACTIVE, broker_epoch)
        current = self.machine.broker(node_id)
        return current.state if current is not None else BrokerState.FENCED

    async def _fence_expired_sessions(self) -> None:
        """On the leader: fence every ACTIVE broker whose heartbeats stopped (rule 5)."""
        interval_s = self.config.heartbeat_interval_ms / 1000
        timeout_s = self.config.session_timeout_ms / 1000
        led_term = 0
        while True:
            await trio.sleep(interval_s)
            if not self.is_leader:
                led_term = 0
                continue
            now = trio.current_time()
            if led_term != self.driver.term:
                # Newly elected: nobody has had a chance to heartbeat to us yet.
                led_term = self.driver.term
                self._heartbeats = {info.node_id: now for info in self.machine.brokers()}
                continue
            for info in self.machine.brokers():
                last = self._heartbeats.setdefault(info.node_id, now)
                if info.state is not BrokerState.ACTIVE or now - last < timeout_s:
                    continue
                try:
                    await self._fence_if_silent(info.node_id, info.broker_epoch, timeout_s)
                except BrokerError as exc:  # deposed, or the broker re-registered meanwhile
                    logger.info("node %d: fencing broker %d: %s", self.node_id, info.node_id, exc)

    async def _fence_if_silent(self, node_id: int, broker_epoch: int, timeout_s: float) -> None:
        """Fence `node_id` unless it heartbeated while this waited for the command lock."""
        async with self._command_lock:
            silent_s = trio.current_time() - self._heartbeats.get(node_id, trio.current_time())
            if silent_s < timeout_s:
                return
            logger.warning(
                "node %d: fencing broker %d: no heartbeat for %.1f s",
                self.node_id,
                node_id,
                silent_s,
            )
            records = self._require_leader().prepare_set_broker_state(
                node_id, BrokerState.FENCED, broker_epoch=broker_epoch
            )
            await self._propose(records)

    async def report_leader(
        self,
        topic: str,
        partition: int,
        leader: int,
        leader_epoch: int,
        in_sync_replicas: Sequence[int],
    ) -> None:
        """Publish a partition group's leader (prepare_leader_change); NOT_LEADER when stale.

        Reports are group-committed: while one batch of them is being proposed, the reports
        that arrive queue, and the first of them to get the command lock proposes every queued
        report (up to `LEADER_REPORT_BATCH_MAX`) as one metadata entry. A thousand new
        partitions electing at once cost a few metadata commits, not a thousand in a row.
        """
        report = _LeaderReport(topic, partition, leader, leader_epoch, tuple(in_sync_replicas))
        self._leader_reports.append(report)
        async with self._command_lock:
            if not report.done:
                batch = self._leader_reports[:LEADER_REPORT_BATCH_MAX]
                del self._leader_reports[:LEADER_REPORT_BATCH_MAX]
                await self._publish_leader_reports(batch)
        if report.error is not None:
            raise report.error

    async def _publish_leader_reports(self, batch: list[_LeaderReport]) -> None:
        """Propose `batch` as one entry (the command lock held); each report gets its outcome:
        its own refusal, the proposal's failure, or None once applied."""
        # What the reports not refused one by one get if the proposal never returns (cancelled):
        # a retriable error, so their waiters report again.
        outcome: BrokerError | None = BrokerError(
            ErrorCode.REQUEST_TIMED_OUT, "the leader report was not published; report it again"
        )
        try:
            machine = self._require_leader()
            records: list[MetadataRecord] = []
            for report in batch:
                try:
                    records += machine.prepare_leader_change(
                        report.topic,
                        report.partition,
                        report.leader,
                        report.leader_epoch,
                        report.in_sync_replicas,
                    )
                except BrokerError as exc:
                    report.settle(exc)
            await self._propose(records)
            outcome = None
        except BrokerError as exc:
            outcome = exc
        finally:
            for report in batch:
                report.settle(outcome)

    # --- partition reassignment (broker/controller/reassignment.py, docs/reassignment.md) ------

    async def alter_partition_reassignments(
        self,
        moves: Sequence[tuple[str, int, Sequence[int] | None]],
        *,
        throttle_bytes_per_s: int = 0,
    ) -> list[BrokerError | None]:
        """Start (or with replicas None, cancel) the reassignment of each (topic, partition,
        replicas); every accepted one is proposed in ONE batch. Returns, per move, None or the
        BrokerError that refused it. NotControllerError off the leader; a proposal timeout
        raises REQUEST_TIMED_OUT (retrying is safe: a repeated move is a no-op)."""
        outcomes: list[BrokerError | None] = []
        async with self._command_lock:
            machine = self._require_leader()
            records: list[MetadataRecord] = []
            for topic, partition, replicas in moves:
                try:
                    records += reassignment.prepare_reassignment(
                        machine,
                        topic,
                        partition,
                        replicas,
                        throttle_bytes_per_s=throttle_bytes_per_s,
                    )
                except BrokerError as exc:
                    outcomes.append(exc)
                    continue
                outcomes.append(None)
            await self._propose(records)
        return outcomes

    async def complete_reassignment(
        self, topic: str, partition: int, replicas: Sequence[int]
    ) -> None:
        """A partition leader's report that its group's voters are exactly `replicas`: record
        the reassignment's completion (reassignment.prepare_completion's errors otherwise)."""
        async with self._command_lock:
            records = reassignment.prepare_completion(
                self._require_leader(), topic, partition, replicas
            )
            await self._propose(records)

    async def rebalance(
        self, *, dry_run: bool, throttle_bytes_per_s: int = 0, move_count_max: int
    ) -> list[tuple[reassignment.Move, BrokerError | None]]:
        """Plan (`reassignment.plan_rebalance` over the ACTIVE brokers; partitions already
        moving are left alone) and, unless `dry_run`, submit the moves."""
        machine = self._require_leader()
        partitions = [
            (topic.name, info.partition, info.replicas)
            for topic in machine.topics()
            for info in topic.partitions
            if info.replicas and not info.target_replicas
        ]
        moves = reassignment.plan_rebalance(
            partitions, machine.active_broker_ids(), move_count_max=move_count_max
        )
        if dry_run or not moves:
            return [(move, None) for move in moves]
        outcomes = await self.alter_partition_reassignments(
            [(move.topic, move.partition, move.target_replicas) for move in moves],
            throttle_bytes_per_s=throttle_bytes_per_s,
        )
        return list(zip(moves, outcomes, strict=True))
