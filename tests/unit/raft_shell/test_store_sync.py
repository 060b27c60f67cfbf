"""Goal: `StoreSyncer` group-commits LMDB syncs across Raft groups (broker/raft/store_sync.py): a
caller is covered only by a sync that began after its call, everyone who queued while one ran
shares the next one, and after a failed sync every later call fails (fsyncgate)."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from broker.raft.store_sync import StoreSyncer


class GatedStore:
    """A store whose sync (run in the worker thread) waits for `gate`; counts its calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.fail = False

    def sync(self) -> None:
        self.calls += 1
        self.entered.set()
        if not self.gate.wait(10):
            raise AssertionError("the test never opened the gate")
        if self.fail:
            raise OSError(5, "Input/output error")


async def test_callers_during_a_sync_share_the_next_one() -> None:
    store = GatedStore()
    syncer = StoreSyncer(store)  # type: ignore[arg-type]
    finished: list[str] = []

    async def sync(name: str) -> None:
        await syncer.sync()
        finished.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync, "first")
        await trio.to_thread.run_sync(store.entered.wait, 10)
        for number in range(20):
            nursery.start_soon(sync, f"queued-{number}")
        await trio.testing.wait_all_tasks_blocked()
        assert store.calls == 1 and finished == []
        store.gate.set()
    # The first sync began before the queued calls: it covers only "first"; one more covers
    # all twenty.
    assert store.calls == 2 == syncer.sync_count
    assert finished[0] == "first" and len(finished) == 21


async def test_after_a_failed_sync_every_call_fails() -> None:
    store = GatedStore()
    store.fail = True
    store.gate.set()
    syncer = StoreSyncer(store)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="Input/output error"):
        await syncer.sync()
    store.fail = False
    with pytest.raises(OSError, match="an earlier LMDB sync failed"):
        await syncer.sync()
    assert store.calls == 1
