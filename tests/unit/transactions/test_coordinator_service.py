"""Goal: the trio shell carries out the core's contract over a partition: it loads what the
partition holds, persists before answering, delivers markers and retries them until written,
answers NOT_COORDINATOR where it does not lead, and a successor loaded from the same partition
completes a transaction whose markers the first never wrote. Runs on an in-memory partition and
trio's autojump clock."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import trio
import trio.testing

from broker.appended import Appended
from broker.consumer_groups.group import TopicPartition
from broker.transactions.service import (
    TRANSACTION_STATE_TOPIC,
    TRANSACTION_STATE_TOPIC_CONFIGS,
    TransactionService,
    ensure_transaction_state_topic,
)
from broker.transactions.txn_actions import WriteMarkers
from broker.transactions.txn_config import TransactionConfig
from broker.transactions.txn_records import TransactionState
from wire.error_codes import ErrorCode

A0 = TopicPartition("a", 0)
B1 = TopicPartition("b", 1)


@dataclasses.dataclass
class _Read:
    data: bytes
    next_offset: int


@dataclasses.dataclass
class _LogConfig:
    max_batch_bytes: int = 1 << 20


class MemoryLog:
    """Batches in memory, offsets assigned on append: what `read_records` needs of a log."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self.log_start_offset = 0
        self.log_end_offset = 0
        self.config = _LogConfig()

    def append(self, batch: bytes) -> tuple[int, int]:
        count = struct.unpack_from(">i", batch, 57)[0]
        base = self.log_end_offset
        self.batches.append(struct.pack(">q", base) + bytes(batch[8:]))
        self.log_end_offset += count
        return base, base + count - 1

    def read(self, offset: int, max_bytes: int) -> _Read:
        return _Read(b"".join(self.batches), self.log_end_offset)


class MemoryPartition:
    """A PartitionState-like partition that this broker leads; appends are acked a millisecond
    later."""

    def __init__(self) -> None:
        self.log = MemoryLog()
        self.is_leader = True
        self.removed = False
        self.leader_epoch = 0
        self.waiters: set[trio.Event] = set()

    @property
    def high_watermark(self) -> int:
        return self.log.log_end_offset

    def append(self, batch: bytes) -> Appended:
        base, last = self.log.append(batch)

        async def acked() -> None:
            await trio.sleep(0.001)

        return Appended(base, last, len(batch), acked)

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, set()
        for event in waiters:
            event.set()


@dataclasses.dataclass
class _TopicRecord:
    partition_count: int


class MemoryTopics:
    def __init__(self) -> None:
        self.created: dict[str, tuple[int, dict[str, Any]]] = {}

    def get(self, name: str) -> _TopicRecord | None:
        found = self.created.get(name)
        return None if found is None else _TopicRecord(found[0])

    def create(self, name: str, *, partitions: int, configs: dict[str, Any]) -> None:
        self.created[name] = (partitions, configs)


@dataclasses.dataclass
class FakeContext:
    topics: MemoryTopics
    partitions: dict[tuple[str, int], Any]
    cluster: Any = None


class MarkerWriter:
    """The `write_markers` seam: records each call, fails the first `failures` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[WriteMarkers] = []
        self.failures = failures

    async def __call__(self, markers: WriteMarkers) -> dict[TopicPartition, ErrorCode]:
        self.calls.append(markers)
        await trio.sleep(0.01)
        if self.failures:
            self.failures -= 1
            return {tp: ErrorCode.NOT_LEADER for tp in markers.partitions}
        return dict.fromkeys(markers.partitions, ErrorCode.NONE)


def make_context(partition_count: int = 2, *, led: tuple[int, ...] = (0, 1)) -> FakeContext:
    topics = MemoryTopics()
    ensure_transaction_state_topic(topics, partition_count)
    ensure_transaction_state_topic(topics, partition_count + 5)  # fixed once created
    assert topics.created[TRANSACTION_STATE_TOPIC] == (
        partition_count,
        TRANSACTION_STATE_TOPIC_CONFIGS,
    )
    partitions = {(TRANSACTION_STATE_TOPIC, p): MemoryPartition() for p in led}
    return FakeContext(topics, partitions)


def make_service(context: FakeContext, writer: MarkerWriter) -> TransactionService:
    ids = iter(range(5000, 6000))
    return TransactionService(
        context,
        config=TransactionConfig(marker_retry_backoff_ms=200, timeout_check_interval_ms=100),
        allocate_producer_id=lambda: next(ids),
        write_markers=writer,
        clock_ms=lambda: int(trio.current_time() * 1000),
    )


async def wait_for_state(service: TransactionService, tid: str, state: TransactionState) -> None:
    with trio.fail_after(30):
        while service.describe_transactions([tid]).transactions[0].state is not state:
            await trio.sleep(0.05)


async def test_a_transaction_commits_through_the_shell(
    autojump_clock: trio.testing.MockClock,
) -> None:
    context = make_context()
    writer = MarkerWriter(failures=1)
    service = make_service(context, writer)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        init = await service.wait(service.submit_init_producer_id("tx", 60_000), 5)
        assert (init.error, init.producer_id, init.producer_epoch) == (ErrorCode.NONE, 5000, 0)
        added = await service.wait(service.submit_add_partitions("tx", 5000, 0, [A0, B1]), 5)
        assert added.error is ErrorCode.NONE
        offsets = await service.wait(service.submit_add_offsets("tx", 5000, 0, "g", 2), 5)
        assert offsets.error is ErrorCode.NONE
        assert service.statistics().ongoing_count == 1
        ended = await service.wait(service.submit_end_txn("tx", 5000, 0, True), 5)
        assert (ended.error, ended.producer_epoch) == (ErrorCode.NONE, 1)
        await wait_for_state(service, "tx", TransactionState.COMPLETE_COMMIT)
        assert len(writer.calls) == 2, "the failed delivery was retried"
        assert writer.calls[0].partitions == (TopicPartition("__consumer_offsets", 2), A0, B1)
        listed = service.list_transactions((TransactionState.COMPLETE_COMMIT,))
        assert [d.transactional_id for d in listed.transactions] == ["tx"]
        assert service.statistics().commit_count == 1
        nursery.cancel_scope.cancel()


async def test_a_successor_completes_what_its_predecessor_prepared(
    autojump_clock: trio.testing.MockClock,
) -> None:
    context = make_context()
    stuck = MarkerWriter(failures=10_000)
    first = make_service(context, stuck)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        init = await first.wait(first.submit_init_producer_id("tx", 60_000), 5)
        await first.wait(first.submit_add_partitions("tx", init.producer_id, 0, [A0]), 5)
        ended = await first.wait(first.submit_end_txn("tx", init.producer_id, 0, False), 5)
        assert ended.error is ErrorCode.NONE
        with trio.fail_after(30):  # its markers fail, and are asked for again, and fail
            while len(stuck.calls) < 3:
                await trio.sleep(0.01)
        assert first.describe_transactions(["tx"]).transactions[0].state is (
            TransactionState.PREPARE_ABORT
        )
        first.unload_all()
        late = await first.wait(first.submit_init_producer_id("tx", 60_000), 5)
        assert late.error is ErrorCode.NOT_COORDINATOR
        nursery.cancel_scope.cancel()
    writer = MarkerWriter()
    successor = make_service(context, writer)
    async with trio.open_nursery() as nursery:
        await nursery.start(successor.run)
        await wait_for_state(successor, "tx", TransactionState.COMPLETE_ABORT)
        (markers,) = writer.calls
        assert (markers.commit, markers.producer_epoch, markers.partitions) == (False, 1, (A0,))
        nursery.cancel_scope.cancel()


async def test_partitions_not_led_here_answer_not_coordinator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    context = make_context(led=(0,))
    service = make_service(context, MarkerWriter())
    tid = next(t for t in (f"id-{n}" for n in range(100)) if service.partition_of(t) == 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        answer = await service.wait(service.submit_init_producer_id(tid, 60_000), 5)
        assert answer.error is ErrorCode.NOT_COORDINATOR
        (described,) = service.describe_transactions([tid]).transactions
        assert described.error is ErrorCode.NOT_COORDINATOR
        nursery.cancel_scope.cancel()


async def test_leadership_loss_unloads_and_later_requests_get_not_coordinator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    context = make_context(partition_count=1, led=(0,))
    service = make_service(context, MarkerWriter())
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        init = await service.wait(service.submit_init_producer_id("tx", 60_000), 5)
        assert init.error is ErrorCode.NONE
        partition = context.partitions[(TRANSACTION_STATE_TOPIC, 0)]
        partition.is_leader = False
        partition.notify()
        with trio.fail_after(5):
            while service.shell.loaded_partitions():
                await trio.sleep(0.01)
        answer = await service.wait(service.submit_add_partitions("tx", 5000, 0, [A0]), 5)
        assert answer.error is ErrorCode.NOT_COORDINATOR
        nursery.cancel_scope.cancel()
