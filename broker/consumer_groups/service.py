"""GroupService: the trio shell around the pure group cores, over the __consumer_offsets topic.

One `GroupCoordinatorCore` per partition of `__consumer_offsets` this broker leads (on a single
broker: every partition). Loading, writing (offset commits, transactional ones with the producer's
id and epoch, and transaction markers), ticking, routing answers, shutdown and containing a
failing core are the shared `CoordinatorShell`'s (broker/coordinator_shell.py, whose module
docstring states the rules), exactly as for the transaction coordinator. This module adds what is
the group coordinator's own:
- Epoch and member ids: the coordinator epoch grows with every leadership, so member ids handed
  out by a later coordinator never collide with persisted ones: on a single node it is a start
  counter kept in LMDB (`KeySpace.GROUPS`); in a cluster, the partition's Raft term. A core
  reloaded in the same epoch (after the one before it raised) continues its predecessor's member
  id sequence (`on_retire`), so ids handed out but never written are not handed out again.
- Markers: the WriteTxnMarkers path (broker/transactions/markers.py) hands a marker for one of
  these partitions to `write_marker`, which feeds it to the core as `TxnMarkerRequested`: the core
  orders its write behind every write before it, so the store applies it in log order.
- Queries across the loaded cores (`list_groups`, `describe_groups`) and a lag and statistics
  snapshot for /metrics, rebuilt after the ticks every `METRICS_REFRESH_MS`.
Handlers await answers bounded by a timeout they choose (the rebalance timeout for JoinGroup).

`coordinator_partition(group_id, N)` picks the core; a broker that does not lead that partition
answers NOT_COORDINATOR (FindCoordinator names the leader).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Final

from broker.appended import Appended
from broker.consumer_groups.actions import RespondDescribeGroups, RespondListGroups, Response
from broker.consumer_groups.config import GroupConfig
from broker.consumer_groups.coordinator import GroupCoordinatorCore, GroupCoordinatorStatistics
from broker.consumer_groups.events import (
    DescribeGroupsRequested,
    ListGroupsRequested,
    TxnMarkerRequested,
)
from broker.consumer_groups.group import TopicPartition
from broker.coordinator_shell import (
    CoordinatorService,
    CoordinatorShell,
    ensure_internal_topic,
    next_coordinator_epoch,
    wall_clock_ms,
)
from broker.internal_topics import OFFSETS_TOPIC
from wire.assignors import Assignment
from wire.error_codes import BrokerError, ErrorCode

__all__ = [
    "OFFSETS_TOPIC",
    "OFFSETS_TOPIC_CONFIGS",
    "GroupMetricsSnapshot",
    "GroupService",
    "LagSample",
    "ensure_offsets_topic",
    "group_config_of",
]

# The internal topic's own configs: commits are never deleted by time or size retention, the log
# cleaner keeps the latest record per key (docs/storage.md), and an acknowledged commit must be
# on disk.
OFFSETS_TOPIC_CONFIGS: Final = {
    "retention.ms": -1,
    "retention.bytes": -1,
    "flush.policy": "always",
    "cleanup.policy": "compact",
}
EPOCH_KEY: Final = b"coordinator_epoch"


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
    ensure_internal_topic(topics, OFFSETS_TOPIC, partition_count, OFFSETS_TOPIC_CONFIGS)


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


class GroupService(CoordinatorService[Response, GroupMetricsSnapshot]):
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
        # Per partition: the next member id sequence (a reload in the same epoch continues it).
        self._member_sequences: dict[int, int] = {}
        shell = CoordinatorShell(
            context,
            topic=OFFSETS_TOPIC,
            name="group coordinator",
            new_core=self._new_core,
            next_epoch=self._next_epoch,
            on_retire=self._retired,
            after_tick=self._after_tick,
            clock_ms=clock_ms,
        )
        super().__init__(shell, GroupMetricsSnapshot())

    @property
    def config(self) -> GroupConfig:
        return self._config

    # --- the shell's hooks ------------------------------------------------------------------------

    def _next_epoch(self) -> int:
        from broker.kvstore import KeySpace

        return next_coordinator_epoch(self._store, KeySpace.GROUPS, EPOCH_KEY)

    def _new_core(self, partition: int) -> GroupCoordinatorCore:
        """A core continuing the member id sequence of the partition's earlier cores (it may be
        loaded with the same epoch)."""
        return GroupCoordinatorCore(
            self._config, first_member_sequence=self._member_sequences.get(partition, 1)
        )

    def _retired(self, partition: int, core: Any) -> None:
        """Keep `core`'s member id sequence for the partition's next core: a reload in the same
        epoch must not hand out again ids `core` handed out but never wrote."""
        assert isinstance(core, GroupCoordinatorCore)
        self._member_sequences[partition] = max(
            self._member_sequences.get(partition, 1), core.next_member_sequence
        )

    # --- requests (called from handlers, in the trio thread; the rest is CoordinatorService's) ---

    def write_marker(
        self,
        partition: int,
        producer_id: int,
        producer_epoch: int,
        *,
        commit: bool,
        coordinator_epoch: int,
    ) -> Appended:
        """Write a transaction marker on `__consumer_offsets-<partition>` through its core: it is
        appended now, behind every write the core ordered before it, and `wait_acked()` returns
        once it is replicated and the producer's pending offsets are committed or dropped (or
        raises the BrokerError that prevents it). The offsets are not known to the caller (-1):
        the marker is the core's write, appended when the core orders it."""
        waiting = self.submit(
            partition,
            lambda rid, now: TxnMarkerRequested(
                request_id=rid,
                now_ms=now,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                commit=commit,
                coordinator_epoch=coordinator_epoch,
            ),
        )

        async def wait_acked() -> None:
            await waiting.event.wait()
            response = waiting.response
            assert response is not None
            if response.error is not ErrorCode.NONE:
                raise BrokerError(
                    response.error,
                    f"the marker for producer {producer_id} on {OFFSETS_TOPIC}-{partition} "
                    "was not written",
                )

        return Appended(-1, -1, 0, wait_acked)

    # --- queries the handlers and metrics share ---------------------------------------------------

    def list_groups(self, states: tuple[Any, ...] = ()) -> RespondListGroups:
        """Every group of every loaded core, i.e. of the partitions this broker leads (answered at
        once; a cluster-wide list asks every broker)."""
        groups = []
        error = ErrorCode.NONE
        for partition in self.shell.loaded_partitions():
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
        statistics = tuple((p, core.statistics()) for p, core in sorted(self.shell.cores.items()))
        return GroupMetricsSnapshot(tuple(samples), statistics)
