"""ShareGroupService: the trio shell around the share coordinator cores, over
`__share_group_state`.

One `ShareCoordinatorCore` per partition of `__share_group_state` this broker leads; a group's
partition is `crc32(group_id) % partition_count`, so one core holds all of a group's share
partitions and its members. Loading, writing, ticking, routing answers and containing a failing
core are the shared `CoordinatorShell`'s (broker/coordinator_shell.py). This module adds:
- ShareFetch: acknowledgements first (answered once persisted), then acquisition. The core never
  reads a log: for each partition of the member's topics, the service asks the core where to
  read (`read_position`), reads whole batches there (broker/share_groups/reader.py), hands their
  offset ranges to the core in `AcquireRequested`, and sends back the batches holding what the
  core acquired, with the acquired ranges. With nothing to hand out it long-polls: it waits for
  a high watermark to move or for the core to say records came back (`RecordsAvailable`), until
  `max_wait_ms`.
- Dead letters: each `WriteDeadLetters` runs as a task (at most `DEAD_LETTER_TASKS_MAX` at once)
  that copies the records to the dead-letter topic (broker/share_groups/dead_letters.py) and
  tells the core `DeadLettered` or `DeadLetterFailed`.
- Describe (with each partition's backlog and oldest waiting record read from the log) and a
  metrics snapshot.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Final

import trio

from broker.consumer_groups.group import TopicPartition
from broker.coordinator_shell import (
    CoordinatorService,
    CoordinatorShell,
    Waiting,
    ensure_internal_topic,
    wall_clock_ms,
)
from broker.internal_topics import SHARE_STATE_TOPIC
from broker.share_groups.coordinator import (
    RESET_EARLIEST,
    RESET_LATEST,
    ShareCoordinatorCore,
)
from broker.share_groups.dead_letters import DeadLetterWriter, ProduceHandler
from broker.share_groups.reader import PartitionReader, batch_runs, batches_between
from broker.share_groups.share_actions import (
    RecordsAvailable,
    RespondAcknowledge,
    RespondAcquire,
    RespondAlterConfigs,
    ShareGroupDescription,
    SharePartitionStatistics,
    WriteDeadLetters,
)
from broker.share_groups.share_config import ShareCoordinatorConfig
from broker.share_groups.share_events import (
    AcknowledgeRequested,
    AcquireRequested,
    AlterConfigsRequested,
    DeadLettered,
    DeadLetterFailed,
    PartitionAcks,
    PartitionRead,
)
from broker.share_groups.share_partition import AckRange, AckType
from wire import codec
from wire.batch import iter_batches, unpack_header
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

# The internal topic's own configs, as __consumer_offsets': acknowledgements must never be
# deleted by retention (the log cleaner keeps the latest record per key), and an acknowledged
# one must be on disk.
SHARE_STATE_TOPIC_CONFIGS: Final = {
    "retention.ms": -1,
    "retention.bytes": -1,
    "flush.policy": "always",
    "cleanup.policy": "compact",
}
# How long an acknowledgement (or config change) waits for its write.
WRITE_TIMEOUT_S: Final = 30.0
# Dead-letter copies running at once (each reads and produces; the rest wait their turn).
DEAD_LETTER_TASKS_MAX: Final = 8


def ensure_share_state_topic(topics: Any, partition_count: int) -> None:
    """Create `__share_group_state` if this data directory has none yet (at start-up)."""
    ensure_internal_topic(topics, SHARE_STATE_TOPIC, partition_count, SHARE_STATE_TOPIC_CONFIGS)


@dataclasses.dataclass(frozen=True, slots=True)
class ShareMetricsSnapshot:
    """Every share group of the loaded cores, described (with backlogs) for /metrics."""

    groups: tuple[ShareGroupDescription, ...] = ()
    now_ms: int = 0


def acks_of(partitions: tuple[codec.ShareAcknowledgePartition, ...]) -> tuple[PartitionAcks, ...]:
    """The wire's acknowledgements as the core's; a bad ack type raises INVALID_REQUEST."""
    out = []
    for item in partitions:
        ranges = []
        for batch in item.batches:
            try:
                ack_type = AckType(batch.ack_type)
            except ValueError:
                raise BrokerError(
                    ErrorCode.INVALID_REQUEST,
                    f"ack_type {batch.ack_type} is not one of 0 (gap), 1 (accept), 2 (release), "
                    "3 (reject), 4 (renew)",
                ) from None
            if batch.delay_ms < 0 or (batch.delay_ms and ack_type is not AckType.RELEASE):
                raise BrokerError(
                    ErrorCode.INVALID_REQUEST, "delay_ms must be >= 0, and only with a release"
                )
            ranges.append(AckRange(batch.first_offset, batch.last_offset, ack_type, batch.delay_ms))
        out.append(PartitionAcks(topic_partition=TopicPartition(item.topic, item.partition),
                                 ranges=tuple(ranges)))  # fmt: skip
    return tuple(out)


class ShareGroupService(CoordinatorService[Any, ShareMetricsSnapshot]):
    """The cores of every `__share_group_state` partition this broker leads (module docstring).

    `produce_here` is the Produce handler (dead-letter writes to partitions led here);
    `leader_of(ctx, topic, partition)` names a partition's leader in a cluster."""

    def __init__(
        self,
        context: Any,
        *,
        config: ShareCoordinatorConfig,
        produce_here: ProduceHandler,
        leader_of: Callable[[Any, str, int], int] | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        config.validate()
        self._context = context
        self._config = config
        self._reader = PartitionReader(context, leader_of)
        self._dead_letters = DeadLetterWriter(context, self._reader, produce_here, leader_of)
        self._dead_letter_slots = trio.Semaphore(DEAD_LETTER_TASKS_MAX)
        # Per group: the event its long-polling fetches wait on (set when records come back).
        self._wakeups: dict[str, trio.Event] = {}
        shell = CoordinatorShell(
            context,
            topic=SHARE_STATE_TOPIC,
            name="share coordinator",
            new_core=lambda _partition: ShareCoordinatorCore(config),
            next_epoch=lambda: 1,  # share cores hand out no ids: no epoch needed
            on_action=self._on_action,
            after_tick=self._after_tick,
            clock_ms=clock_ms,
        )
        super().__init__(shell, ShareMetricsSnapshot())

    @property
    def config(self) -> ShareCoordinatorConfig:
        return self._config

    # --- the shell's hooks ------------------------------------------------------------------------

    def _on_action(self, partition: int, core: Any, action: Any) -> None:
        if isinstance(action, RecordsAvailable):
            wakeup = self._wakeups.pop(action.group_id, None)
            if wakeup is not None:
                wakeup.set()
        else:
            assert isinstance(action, WriteDeadLetters), action
            self.shell.start_soon(self._write_dead_letters, partition, core, action)

    async def _write_dead_letters(
        self, partition: int, core: Any, action: WriteDeadLetters
    ) -> None:
        fields = {
            "group_id": action.group_id,
            "topic_partition": action.topic_partition,
            "first_offset": action.job.first,
            "last_offset": action.job.last,
        }
        try:
            async with self._dead_letter_slots:
                await self._dead_letters.write(action)
        except (BrokerError, OSError, trio.TooSlowError) as exc:
            logger.warning(
                "share group %s: dead-lettering %s-%d [%d, %d] to %s failed, will retry: %s",
                action.group_id,
                action.topic_partition.topic,
                action.topic_partition.partition,
                action.job.first,
                action.job.last,
                action.dead_letter_topic,
                exc,
            )
            event: Any = DeadLetterFailed(now_ms=self.shell.clock_ms(), **fields)
        else:
            event = DeadLettered(now_ms=self.shell.clock_ms(), **fields)
        self.shell.feed_core(partition, core, event)  # an unloaded core ignores it

    # --- requests ---------------------------------------------------------------------------------

    def submit_acknowledge(
        self,
        group_id: str,
        member_id: str,
        acks: tuple[PartitionAcks, ...],
        *,
        leave: bool = False,
        client_id: str = "",
        client_host: str = "",
    ) -> Waiting:
        return self.submit(
            self.partition_of(group_id),
            lambda rid, now: AcknowledgeRequested(
                request_id=rid,
                now_ms=now,
                group_id=group_id,
                member_id=member_id,
                client_id=client_id,
                client_host=client_host,
                acknowledgements=acks,
                leave=leave,
            ),
        )

    async def acknowledge_results(self, waiting: Waiting) -> RespondAcknowledge:
        response = await self.wait(waiting, WRITE_TIMEOUT_S)
        if response is None:
            return RespondAcknowledge(request_id=0, error=ErrorCode.REQUEST_TIMED_OUT)
        assert isinstance(response, RespondAcknowledge)
        return response

    async def share_fetch(
        self, request: codec.ShareFetchRequest, *, client_id: str = "", client_host: str = ""
    ) -> codec.ShareFetchResponse:
        """ShareFetch (module docstring): acknowledge, acquire (long poll), read, answer."""
        group_id = request.group_id
        acknowledging = None
        if request.acknowledgements:
            acknowledging = self.submit_acknowledge(
                group_id,
                request.member_id,
                acks_of(request.acknowledgements),
                client_id=client_id,
                client_host=client_host,
            )
        results: dict[TopicPartition, codec.ShareFetchPartitionResult] = {}
        topic_errors, partitions = self._partitions_of(request.topics)
        deadline = trio.current_time() + request.max_wait_ms / 1000
        chunks: dict[TopicPartition, bytes] = {}
        while True:
            wakeup = self._wakeups.setdefault(group_id, trio.Event())
            states = [s for tp in partitions if (s := self._reader.local(tp)) is not None]
            for state in states:
                state.waiters.add(wakeup)  # a moving high watermark wakes us too
            try:
                chunks.clear()
                reads = await self._reads(
                    group_id, partitions, request.max_records, results, chunks
                )
                acquired = self.submit(
                    self.partition_of(group_id),
                    lambda rid, now, reads=reads: AcquireRequested(
                        request_id=rid,
                        now_ms=now,
                        group_id=group_id,
                        member_id=request.member_id,
                        client_id=client_id,
                        client_host=client_host,
                        topics=request.topics,
                        max_records=request.max_records,
                        reads=reads,
                    ),
                ).response
                assert isinstance(acquired, RespondAcquire), "acquisitions are answered at once"
                if (
                    acquired.error is not ErrorCode.NONE
                    or acquired.acquired
                    or self._context.stopping
                    or trio.current_time() >= deadline
                ):
                    break
                with trio.move_on_at(deadline):
                    await wakeup.wait()
            finally:
                for state in states:
                    state.waiters.discard(wakeup)
        if acquired.error is not ErrorCode.NONE:
            return codec.ShareFetchResponse(
                error=acquired.error, error_message=acquired.error_message
            )
        budget = request.max_bytes
        for tp, ranges in acquired.acquired:
            data = []
            for item in ranges:
                try:
                    chunk = await self._records_of(tp, item, chunks.get(tp, b""), budget)
                except BrokerError as exc:
                    logger.info("share fetch of %s-%d: %s", tp.topic, tp.partition, exc)
                    break  # what is not sent comes back when its lock expires
                data.append(chunk)
                budget = max(budget - len(chunk), 0)
            results[tp] = codec.ShareFetchPartitionResult(
                topic=tp.topic,
                partition=tp.partition,
                records=b"".join(data),
                acquired=tuple(
                    codec.AcquiredRange(
                        first_offset=r.first, last_offset=r.last, delivery_count=r.delivery_count
                    )
                    for r in ranges
                ),
            )
        if acknowledging is not None:
            outcome = await self.acknowledge_results(acknowledging)
            self._merge_ack_results(request.acknowledgements, outcome, results)
        return codec.ShareFetchResponse(
            lock_duration_ms=acquired.lock_duration_ms,
            partitions=topic_errors + tuple(results[tp] for tp in sorted(results)),
        )

    def _partitions_of(
        self, topics: tuple[str, ...]
    ) -> tuple[tuple[codec.ShareFetchPartitionResult, ...], list[TopicPartition]]:
        """Every partition of `topics`; an unknown topic is an error result (partition -1)."""
        errors = []
        partitions = []
        for topic in dict.fromkeys(topics):
            record = self._context.topics.get(topic)
            if record is None:
                errors.append(
                    codec.ShareFetchPartitionResult(
                        topic=topic,
                        partition=-1,
                        error=ErrorCode.UNKNOWN_TOPIC,
                        error_message=f"topic {topic!r} does not exist",
                    )
                )
                continue
            partitions += [TopicPartition(topic, p) for p in range(record.partition_count)]
        return tuple(errors), partitions

    async def _reads(
        self,
        group_id: str,
        partitions: list[TopicPartition],
        max_records: int,
        results: dict[TopicPartition, codec.ShareFetchPartitionResult],
        chunks: dict[TopicPartition, bytes],
    ) -> tuple[PartitionRead, ...]:
        """Read each partition at the position the group's core gives; keep what was read in
        `chunks` (the acquired records are sent from it). A partition that cannot be read gets
        an error result and is left out. The core may move on while a read waits (a remote
        one): it then skips what it already handed out."""
        core = self.shell.cores[self.partition_of(group_id)]
        assert isinstance(core, ShareCoordinatorCore)
        reads = []
        for tp in partitions:
            position = core.read_position(group_id, tp)
            try:
                if position in (RESET_LATEST, RESET_EARLIEST):
                    # A share partition starting: read from its reset point.
                    bounds = await self._reader.read(tp, 0, 1)
                    latest = position == RESET_LATEST
                    position = bounds.high_watermark if latest else bounds.log_start_offset
                chunk = await self._reader.read_records(tp, position, max_records)
            except BrokerError as exc:
                results[tp] = codec.ShareFetchPartitionResult(
                    topic=tp.topic, partition=tp.partition, error=exc.code,
                    error_message=exc.message,
                )  # fmt: skip
                continue
            chunks[tp] = chunk.data
            reads.append(
                PartitionRead(
                    topic_partition=tp,
                    from_offset=max(position, chunk.log_start_offset),
                    log_start_offset=chunk.log_start_offset,
                    high_watermark=chunk.high_watermark,
                    batches=batch_runs(chunk.data, max_records),
                )
            )
        return tuple(reads)

    async def _records_of(
        self, tp: TopicPartition, item: Any, chunk: bytes, max_bytes: int
    ) -> bytes:
        """The batches holding the acquired range `item`: from what was just read when it holds
        all of them (new records), else read again (redeliveries)."""
        data, next_offset = batches_between(chunk, item.first, item.last)
        if data and next_offset > item.last and unpack_header(data).base_offset <= item.first:
            return data
        return await self._reader.read_range(tp, item.first, item.last, max_bytes)

    @staticmethod
    def _merge_ack_results(
        sent: tuple[codec.ShareAcknowledgePartition, ...],
        outcome: RespondAcknowledge,
        results: dict[TopicPartition, codec.ShareFetchPartitionResult],
    ) -> None:
        by_tp = {tp: (code, message) for tp, code, message in outcome.results}
        for item in sent:
            tp = TopicPartition(item.topic, item.partition)
            code, message = by_tp.get(tp, (outcome.error, outcome.error_message))
            result = results.get(tp) or codec.ShareFetchPartitionResult(
                topic=tp.topic, partition=tp.partition
            )
            results[tp] = dataclasses.replace(
                result, acknowledge_error=code, acknowledge_error_message=message
            )

    def submit_alter_configs(
        self, group_id: str, configs: dict[str, Any], reset: tuple[str, ...]
    ) -> Waiting:
        return self.submit(
            self.partition_of(group_id),
            lambda rid, now: AlterConfigsRequested(
                request_id=rid, now_ms=now, group_id=group_id, configs=configs, reset=reset
            ),
        )

    async def alter_configs_result(self, waiting: Waiting) -> RespondAlterConfigs:
        response = await self.wait(waiting, WRITE_TIMEOUT_S)
        if response is None:
            return RespondAlterConfigs(request_id=0, error=ErrorCode.REQUEST_TIMED_OUT)
        assert isinstance(response, RespondAlterConfigs)
        return response

    # --- queries ----------------------------------------------------------------------------------

    def describe(self, group_ids: tuple[str, ...]) -> list[ShareGroupDescription]:
        """Descriptions in the order asked (a group of a partition not led here:
        NOT_COORDINATOR), each partition with its backlog and oldest waiting record."""
        now = self.shell.clock_ms()
        out = []
        for group_id in group_ids:
            core = self.shell.cores[self.partition_of(group_id)]
            assert isinstance(core, ShareCoordinatorCore)
            if not core.loaded:
                out.append(
                    ShareGroupDescription(group_id=group_id, error=ErrorCode.NOT_COORDINATOR)
                )
                continue
            out.append(self._with_backlog(core.describe(group_id, now)))
        return out

    def _with_backlog(self, description: ShareGroupDescription) -> ShareGroupDescription:
        partitions = tuple(self._partition_backlog(p) for p in description.partitions)
        return dataclasses.replace(description, partitions=partitions)

    def _partition_backlog(self, stats: SharePartitionStatistics) -> SharePartitionStatistics:
        """`stats` with the records past SPEO not handed out yet and, if no record of the window
        waits, the append time of the first of them; read from a local replica (backlog -1
        when this broker has none)."""
        state = self._reader.local(stats.topic_partition)
        if state is None:
            return stats
        backlog = max(int(state.high_watermark) - stats.end_offset, 0)
        oldest = stats.oldest_available_ms
        if backlog and oldest < 0:
            chunk = self._reader.read_local(state, stats.end_offset, 1)
            for _, header in iter_batches(chunk.data, validate=False):
                oldest = header.base_timestamp
                break
        return dataclasses.replace(stats, backlog=backlog, oldest_available_ms=oldest)

    def _build_metrics_snapshot(self) -> ShareMetricsSnapshot:
        groups: list[ShareGroupDescription] = []
        for partition in self.shell.loaded_partitions():
            core = self.shell.cores[partition]
            assert isinstance(core, ShareCoordinatorCore)
            groups += self.describe(tuple(core.group_ids()))
        return ShareMetricsSnapshot(tuple(groups), self.shell.clock_ms())
