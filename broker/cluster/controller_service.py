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

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import trio

from broker.config import ConfigBase, LogConfig, check_range
from broker.controller.cache import MetadataCache
from broker.controller.records import (
    BrokerState,
    MetadataRecord,
    MetadataRecordError,
    decode_record,
    encode_record,
)
from broker.controller.state import ControllerConfig, ControllerStateMachine, TopicInfo
from broker.errors import BrokerError, ErrorCode
from broker.kvstore import KeySpace, KvStore
from broker.log import batch as batch_codec
from broker.log.manager import LogManager
from broker.raft.config import RaftConfig
from broker.raft.driver import RaftDriver, RaftDriverConfig, RaftTicker
from broker.raft.errors import NotLeaderError
from broker.raft.log_storage import LogRaftStorage
from broker.raft.messages import Configuration, Entry, EntryKind, Snapshot
from broker.raft.ready import Role
from broker.raft.transport import RaftTransport

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
    # An ACTIVE broker whose heartbeats stop for this long is fenced: it no longer counts as a
    # leader or an in-sync replica in Metadata, nor as live for placement
    # (Kafka: broker.session.timeout.ms).
    session_timeout_ms: int = 6_000

    def validate(self) -> None:
        check_range("snapshot_interval_records", self.snapshot_interval_records, 1)
        check_range("command_timeout_ms", self.command_timeout_ms, 1)
        check_range("registration_retry_ms", self.registration_retry_ms, 1)
        check_range("heartbeat_interval_ms", self.heartbeat_interval_ms, 1)
        # Fencing after fewer than two missed heartbeats would fence healthy brokers.
        check_range("session_timeout_ms", self.session_timeout_ms, 2 * self.heartbeat_interval_ms)


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
        self.machine = self._restore()
        # The applied index the LMDB snapshot held at start-up (0: none), for status and tests.
        self.restored_index = self.machine.applied_index
        self._cache = MetadataCache(self.machine)
        self._listeners: list[MetadataListener] = []
        self._records_since_snapshot = 0
        self._command_lock = trio.Lock()
        self.changes = ChangeNotifier()
        # On the leader: when each broker last heartbeated (trio clock, seconds). Not in the log:
        # a new leader gives every broker a full session timeout (rule 5).
        self._heartbeats: dict[int, float] = {}
        log = logs.get(METADATA_TOPIC, METADATA_PARTITION) or logs.create(
            METADATA_TOPIC, METADATA_PARTITION, metadata_log_config
        )
        storage = LogRaftStorage(log, store, METADATA_GROUP, Configuration.of(list(voters)))
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

    def _restore(self) -> ControllerStateMachine:
        data = self._store.get(KeySpace.CONTROLLER, SNAPSHOT_KEY)
        if data is None:
            return ControllerStateMachine(self._limits, log_defaults=self._log_defaults)
        # A corrupt snapshot raises ControllerSnapshotError: the broker must not start on it.
        return ControllerStateMachine.from_bytes(
            data, self._limits, log_defaults=self._log_defaults
        )

    def _apply_entries(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            if entry.kind is not EntryKind.NORMAL:
                continue  # leader no-ops and configuration changes carry no metadata
            applied = 0
            for record in batch_codec.decode_records(entry.data):
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
                # Between entries, as the state machine requires; not durable by itself: a lost
                # snapshot only means a longer replay.
                self._store.put(
                    KeySpace.CONTROLLER, SNAPSHOT_KEY, self.machine.to_bytes(), durable=False
                )
                self._records_since_snapshot = 0
            self._notify_listeners()

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

    async def register_broker(self, node_id: int, host: str, port: int, incarnation: int) -> int:
        """Register (or re-register) a broker; returns its broker epoch. NotControllerError
        elsewhere; BrokerError(INVALID_REQUEST) for a bad or conflicting address."""
        async with self._command_lock:
            records = self._require_leader().prepare_register_broker(
                node_id, host, port, incarnation
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
        """Publish a partition group's leader (prepare_leader_change); NOT_LEADER when stale."""
        async with self._command_lock:
            records = self._require_leader().prepare_leader_change(
                topic, partition, leader, leader_epoch, in_sync_replicas
            )
            await self._propose(records)
