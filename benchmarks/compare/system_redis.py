"""Redis Streams, one `redis-server` (when on PATH), driven by redis-py's asyncio client.

The client follows redis-py's documentation (hiredis parser when installed):
- produce: XADD in pipelines of `PIPELINE_RECORDS` commands (`transaction=False`: one round trip
  per pipeline, no MULTI/EXEC);
- consume: XREAD of `READ_BATCH` entries at a time from the last id read (a plain reader, like
  pybroker's consumer: XREADGROUP would add a pending-entries list and per-entry XACKs);
- latency: each burst is one pipeline, its replies awaited in the background (at most
  `PIPELINES_IN_FLIGHT` pipelines outstanding, each on a pooled connection); a second client
  follows with XREAD BLOCK.
Each entry has one field, `v`, holding the record's value.
Durability: the append-only file is on (`appendonly yes`) and RDB snapshots off (`save ""`, so no
fork lands inside a run); `appendfsync everysec` (Redis' default: an fsync per second) or, with
`--peer-fsync always`, `appendfsync always` (an fsync before each reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

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
from benchmarks.compare.servers import HOST, ServerProcess, free_ports
from benchmarks.throughput import _progress

PIPELINE_RECORDS = 1000
READ_BATCH = 10_000
# Latency phase: pipelines (bursts) awaiting their replies at once, at most.
PIPELINES_IN_FLIGHT = 8
# The latency reader's XREAD BLOCK, in ms; it returns as soon as an entry arrives.
BLOCK_MS = 1000
FIELD = b"v"
INSTALL_HINT = "pip install -e '.[bench]'"


class RedisSession(Session):
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.server_pids = [server.pid]
        self.key = ""

    def _connect(self) -> Any:
        import redis.asyncio

        return redis.asyncio.Redis(host=HOST, port=self.server.port)

    def prepare_produce(self) -> None:
        self.key = f"bench-{uuid.uuid4().hex[:8]}"

    def produce(self, workload: Workload) -> dict[str, Any]:
        with _progress() as progress:
            task = progress.add_task("produce", total=workload.records)
            report = lambda done: progress.update(task, completed=done)  # noqa: E731
            wall, cpu = asyncio.run(self._produce(workload, report))
        return throughput_result("produce", workload.records, workload.record_bytes, wall, cpu)

    async def _produce(self, workload: Workload, report: Any) -> tuple[float, float]:
        value, key = workload.value(), self.key
        async with self._connect() as client:
            await client.ping()
            clock = ClientClock()
            done = 0
            while done < workload.records:
                count = min(PIPELINE_RECORDS, workload.records - done)
                pipe = client.pipeline(transaction=False)
                for _ in range(count):
                    pipe.xadd(key, {FIELD: value})
                await pipe.execute()
                done += count
                report(done)
            return clock.elapsed()

    def consume(self, workload: Workload) -> dict[str, Any]:
        with _progress() as progress:
            task = progress.add_task("consume", total=workload.records)
            report = lambda done: progress.update(task, completed=done)  # noqa: E731
            wall, cpu = asyncio.run(self._consume(workload.records, report))
        return throughput_result("consume", workload.records, workload.record_bytes, wall, cpu)

    async def _consume(self, total: int, report: Any) -> tuple[float, float]:
        async with self._connect() as client:
            await client.ping()
            clock, seen, last = ClientClock(), 0, b"0-0"
            while seen < total:
                ((_, entries),) = await client.xread({self.key: last}, count=READ_BATCH)
                seen += len(entries)
                last = entries[-1][0]
                report(seen)
            return clock.elapsed()

    def prepare_latency(self) -> None:
        self.key = f"bench-{uuid.uuid4().hex[:8]}"

    def latency(self, workload: Workload) -> dict[str, Any]:
        return asyncio.run(self._latency(workload))

    async def _latency(self, workload: Workload) -> dict[str, Any]:
        recorder, total = LatencyRecorder(workload.record_bytes), workload.latency_records
        async with self._connect() as reader, self._connect() as writer:
            await reader.ping()
            await writer.ping()
            clock = ClientClock()
            sender = asyncio.create_task(self._paced_send(writer, recorder, workload))
            last = b"0-0"  # the stream is new: everything in it is ours
            async with asyncio.timeout(workload.latency_seconds * 4 + 30):
                while len(recorder.latencies_ns) < total:
                    answer = await reader.xread({self.key: last}, count=READ_BATCH, block=BLOCK_MS)
                    for _, entries in answer:
                        recorder.received([fields[FIELD] for _, fields in entries])
                        last = entries[-1][0]
            await sender
            wall, cpu = clock.elapsed()
        return recorder.result(workload.rate, wall, cpu)

    async def _paced_send(self, client: Any, recorder: LatencyRecorder, workload: Workload) -> None:
        loop, interval, key = asyncio.get_running_loop(), pacing(workload.rate), self.key
        # Bursts' replies are awaited in the background (each pipeline on a pooled connection),
        # as NATS's publish_async and pybroker's send do: a slow reply does not hold up the
        # schedule, up to PIPELINES_IN_FLIGHT outstanding.
        in_flight: set[asyncio.Task[Any]] = set()
        start = loop.time()
        for tick in range(workload.latency_records // LATENCY_BURST):
            await asyncio.sleep(max(start + tick * interval - loop.time(), 0))
            if len(in_flight) >= PIPELINES_IN_FLIGHT:
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            pipe = client.pipeline(transaction=False)
            for _ in range(LATENCY_BURST):
                pipe.xadd(key, {FIELD: recorder.stamped()})
            in_flight.add(asyncio.create_task(pipe.execute()))
        for task in in_flight:
            await task  # raises what a pipeline raised


class Redis(System):
    """One redis-server with the append-only file on."""

    name = "redis"
    compared_with: str | None = "pybroker"

    def __init__(self, *, fsync_always: bool) -> None:
        self.appendfsync = "always" if fsync_always else "everysec"
        self.durability = (
            "acknowledged once fsynced (appendfsync always, an fsync before each reply)"
            if fsync_always
            else "acknowledged once written (page cache); fsync per interval (1 s, appendfsync "
            "everysec)"
        )

    def missing(self) -> str | None:
        try:
            import redis  # noqa: F401
        except ImportError:
            return f"redis-py is not installed ({INSTALL_HINT})"
        if shutil.which("redis-server") is None:
            return "redis-server is not on PATH (e.g. apt-get install redis-server)"
        return None

    @contextlib.contextmanager
    def running(self) -> Iterator[Session]:
        binary = shutil.which("redis-server")
        assert binary is not None, "missing() said redis-server is on PATH"
        (port,) = free_ports(1)
        server = ServerProcess(
            "redis",
            [
                binary, "--bind", HOST, "--port", str(port), "--dir", "{dir}", "--save", "",
                "--appendonly", "yes", "--appendfsync", self.appendfsync,
                "--protected-mode", "no", "--daemonize", "no",
            ],
            port,
        )  # fmt: skip
        try:
            server.start()
            yield RedisSession(server)
        finally:
            server.close()


def systems(*, fsync_always: bool) -> list[System]:
    return [Redis(fsync_always=fsync_always)]
