"""This broker, driven through its SDK (`client.aio`), with the SDK's default settings but acks.

`pybroker`: one `broker serve` process, producing with acks=1 (issue 15's single-node target),
one `await producer.send(topic, value)` per record.
`pybroker-send-many`: the same broker and acks, producing with the bulk API instead
(`producer.send_many(topic, values)`, `SEND_MANY_RECORDS` records a call, one future per call);
it runs only the produce workload, the others being `pybroker`'s.
`pybroker-rf3`: three brokers, a topic of replication factor 3, acks=all. All keep the default
`flush.policy=always`: a record is readable (and, with acks=all, acknowledged) only once fsynced
by the group commit. Starting brokers, topics, the produce loop and the consumer are those of
benchmarks/throughput.py; only the latency phase is this module's own, because throughput.py's
forces `linger_ms=0` while the issue's latency target is for the SDK's defaults.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import trio

from benchmarks import throughput
from benchmarks.compare.measure import (
    LATENCY_BURST,
    ClientClock,
    LatencyRecorder,
    Session,
    System,
    Workload,
    pacing,
    throughput_result,
)
from client import aio
from client.types import TopicPartition

# The consumer's poll timeout in the latency phase; a poll returns as soon as records arrive.
POLL_TIMEOUT_MS = 1000
# Records per send_many call in `pybroker-send-many` (as benchmarks.throughput's default).
SEND_MANY_RECORDS = throughput.SEND_MANY_RECORDS_DEFAULT


class _StartGate:
    """What throughput's produce loop waits on before its clock starts (a barrier of producer
    processes there); here one producer, so it opens at once."""

    def wait(self) -> None:
        return None


class PyBrokerSession(Session):
    def __init__(self, bootstrap: str, pids: list[int], system: PyBroker) -> None:
        self.bootstrap = bootstrap
        self.server_pids = pids
        self.system = system
        self.topic = ""
        self.start: dict[int, int] | None = None
        self.latency_topic = ""

    def _new_topic(self) -> tuple[str, dict[int, int] | None]:
        rf = self.system.replication_factor
        topic = throughput._create_topic(self.bootstrap, 1, {}, rf)
        # In a cluster: preferred leaders elected and the start offsets past the Raft no-ops.
        start = throughput._settle(self.bootstrap, topic, 1) if self.system.brokers > 1 else None
        return topic, start

    def prepare_produce(self) -> None:
        self.topic, self.start = self._new_topic()

    def produce(self, workload: Workload) -> dict[str, Any]:
        options = {"acks": self.system.acks}
        with throughput._progress() as progress:
            task = progress.add_task("produce", total=workload.records)
            wall, cpu = trio.run(
                throughput._produce_aio, self.bootstrap, self.topic, workload.records,
                workload.record_bytes, options, 0, _StartGate(),
                lambda done: progress.update(task, completed=done), throughput._Commits(),
                self.system.send_many_records,
            )  # fmt: skip
        return throughput_result("produce", workload.records, workload.record_bytes, wall, cpu)

    def consume(self, workload: Workload) -> dict[str, Any]:
        return trio.run(
            throughput._consume, self.bootstrap, self.topic, 1, workload.records,
            workload.record_bytes, self.start,
        )  # fmt: skip

    def prepare_latency(self) -> None:
        self.latency_topic, _ = self._new_topic()

    def latency(self, workload: Workload) -> dict[str, Any]:
        return trio.run(self._latency, workload)

    async def _latency(self, workload: Workload) -> dict[str, Any]:
        recorder = LatencyRecorder(workload.record_bytes)
        total = workload.latency_records
        tp = TopicPartition(self.latency_topic, 0)
        async with (
            aio.Consumer(self.bootstrap, auto_offset_reset="latest") as consumer,
            aio.Producer(self.bootstrap, acks=self.system.acks) as producer,
        ):
            consumer.assign([tp])
            await consumer.position(tp)  # pin "latest" before the first send
            await producer.load_topic(self.latency_topic)
            clock = ClientClock()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._paced_send, producer, recorder, workload)
                with trio.fail_after(workload.latency_seconds * 4 + 30):
                    while len(recorder.latencies_ns) < total:
                        records = await consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
                        recorder.received([record.value for record in records])
            wall, cpu = clock.elapsed()
        return recorder.result(workload.rate, wall, cpu)

    async def _paced_send(
        self, producer: aio.Producer, recorder: LatencyRecorder, workload: Workload
    ) -> None:
        interval, topic, send = pacing(workload.rate), self.latency_topic, producer.send
        start = trio.current_time()
        for tick in range(workload.latency_records // LATENCY_BURST):
            await trio.sleep_until(start + tick * interval)
            for _ in range(LATENCY_BURST):
                await send(topic, recorder.stamped())
        await producer.flush()


class PyBroker(System):
    """`brokers` broker processes, topics of `replication_factor`, producing with `acks`."""

    def __init__(
        self,
        name: str,
        *,
        brokers: int,
        replication_factor: int,
        acks: int | str,
        send_many_records: int = 0,
    ):
        """`send_many_records` > 0: produce with `send_many` calls of that many records (and
        run only the produce workload); 0: one `send` per record."""
        self.name = name
        self.brokers = brokers
        self.replication_factor = replication_factor
        self.acks = acks
        self.send_many_records = send_many_records
        if send_many_records:
            self.workloads = ("produce",)
        if brokers == 1:
            self.durability = (
                "acks=1: acknowledged once written (page cache); fsync per batch (group commit, "
                "flush.policy=always) before a record is readable"
            )
            if send_many_records:
                self.durability += (
                    f"; produced with send_many, {send_many_records:,} records a call"
                )
        else:
            self.durability = (
                f"acks=all, RF {replication_factor}: acknowledged once fsynced on a majority "
                "(group commit per batch, flush.policy=always)"
            )

    def missing(self) -> str | None:
        return None

    @contextlib.contextmanager
    def running(self) -> Iterator[Session]:
        # throughput's broker starter reads only `bootstrap` (None: start our own).
        args = types.SimpleNamespace(bootstrap=None)
        with throughput._brokers(args, self.brokers) as (bootstrap, pids):  # type: ignore[arg-type]
            yield PyBrokerSession(bootstrap, pids, self)


def systems() -> list[System]:
    return [
        PyBroker("pybroker", brokers=1, replication_factor=1, acks=1),
        PyBroker(
            "pybroker-send-many",
            brokers=1,
            replication_factor=1,
            acks=1,
            send_many_records=SEND_MANY_RECORDS,
        ),
        PyBroker("pybroker-rf3", brokers=3, replication_factor=3, acks="all"),
    ]
