"""Fakes for the shell tests: a transport that records sends, and a log syncer that can be held."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import trio

from broker.config import KIB, LogConfig
from broker.kvstore import KvStore
from broker.log.log import PartitionLog
from broker.raft.config import RaftConfig
from broker.raft.driver import LogSyncer, RaftDriver, RaftDriverConfig, RaftTicker
from broker.raft.log_storage import LogRaftStorage
from broker.raft.messages import Configuration, Message
from broker.raft.store_sync import StoreSyncer
from wire import batch as batch_codec

GROUP = "t-0"
LOG_CONFIG = LogConfig(segment_bytes=64 * KIB, index_bytes_max=4 * KIB)
# Ticks only when a test moves the clock far: elections here are driven by the test itself.
SLOW_TICKS = RaftDriverConfig(tick_interval_ms=60_000)


def record_batch(payload: bytes) -> bytes:
    return batch_codec.build_batch([(1_000, None, payload, None)])


class FakeTransport:
    """Records `(event, message)` in `events` (shared with the syncer, to check the order)."""

    def __init__(self, events: list[tuple[str, object]] | None = None) -> None:
        self.events = events if events is not None else []
        self.sent: list[Message] = []
        self.accept = True
        self.endpoints: dict[str, RaftDriver] = {}
        self._changed = trio.Event()

    def register(self, group: str, endpoint: RaftDriver) -> None:
        self.endpoints[group] = endpoint

    def unregister(self, group: str, endpoint: RaftDriver) -> None:
        self.endpoints.pop(group, None)

    def send(self, group: str, message: Message) -> bool:
        self._changed.set()
        self._changed = trio.Event()
        if not self.accept:
            self.events.append(("refused", message))
            return False
        self.sent.append(message)
        self.events.append(("send", message))
        return True

    def of_type(self, kind: type) -> list[Message]:
        return [message for message in self.sent if isinstance(message, kind)]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()


class RecordingStoreSyncer(StoreSyncer):
    """The LMDB sync of terms and votes, inline (safe under the autojump clock), recorded as
    ("store-sync", None) in `events` once done (to check it precedes the messages)."""

    def __init__(self, store: KvStore, events: list[tuple[str, object]]) -> None:
        super().__init__(store, in_thread=False)
        self.events = events

    async def sync(self) -> None:
        await super().sync()
        self.events.append(("store-sync", None))


class GatedSyncer:
    """A `LogSyncer` that flushes inline (no thread: safe under the autojump clock), counts its
    calls, and can be held open with `hold()` until `release()`."""

    def __init__(self, events: list[tuple[str, object]]) -> None:
        self.events = events
        self.calls = 0
        self._gate: trio.Event | None = None
        self.started = trio.Event()

    def hold(self) -> None:
        self._gate = trio.Event()
        self.started = trio.Event()

    def release(self) -> None:
        assert self._gate is not None
        self._gate.set()
        self._gate = None

    async def __call__(self, log: PartitionLog) -> None:
        self.calls += 1
        self.events.append(("fsync-start", log.log_end_offset))
        self.started.set()
        if self._gate is not None:
            await self._gate.wait()
        log.flush()
        self.events.append(("fsync-done", log.flushed_offset))


class Node:
    """One driver on real storage (tmp_path), with fake peers played by the test."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        voters: tuple[int, ...] = (1, 2, 3),
        config: RaftDriverConfig = SLOW_TICKS,
        raft_config: RaftConfig | None = None,
        syncer: LogSyncer | None = None,
        on_apply: Callable[..., None] | None = None,
        on_commit: Callable[..., None] | None = None,
        ticker: RaftTicker | None = None,
    ) -> None:
        self.events: list[tuple[str, object]] = []
        self.transport = FakeTransport(self.events)
        self.syncer = GatedSyncer(self.events)
        self.store = KvStore.open(tmp_path / "meta")
        self.log = PartitionLog.open(tmp_path / "log", LOG_CONFIG)
        self.storage = LogRaftStorage(self.log, self.store, GROUP, Configuration.of(voters))
        self.driver = RaftDriver(
            group=GROUP,
            node_id=1,
            storage=self.storage,
            transport=self.transport,
            raft_config=raft_config or RaftConfig(election_timeout_ticks=10),
            config=config,
            rng=random.Random(1),
            log_syncer=syncer or self.syncer,
            on_apply=on_apply,
            on_commit=on_commit,
            ticker=ticker,
            store_syncer=RecordingStoreSyncer(self.store, self.events),
        )

    def close(self) -> None:
        self.log.close(clean=False)
        self.store.close()
