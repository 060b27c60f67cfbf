"""SyncThreads: results and exceptions come back to the waiting task, jobs of different callers
run in parallel (up to the limit), threads are reused and stopped by close()."""

from __future__ import annotations

import threading

import pytest
import trio

from broker.log.sync_threads import SyncThreads


async def test_returns_the_result_and_raises_the_exception_in_the_caller() -> None:
    def fail() -> None:
        raise OSError(5, "Input/output error")

    with SyncThreads(name="test-sync") as threads:
        assert await threads.run(lambda: threading.current_thread().name) == "test-sync-0"
        with pytest.raises(OSError) as failed:
            await threads.run(fail)
        assert failed.value.errno == 5
        # One thread served both jobs: none is started while one is idle.
        assert len(threads.threads) == 1


async def test_jobs_run_in_parallel_up_to_the_limit_and_close_stops_the_threads() -> None:
    release = threading.Event()
    running: list[str] = []
    lock = threading.Lock()

    def blocking() -> str:
        with lock:
            running.append(threading.current_thread().name)
        assert release.wait(timeout=10)
        return threading.current_thread().name

    names: list[str] = []

    async def submit(threads: SyncThreads) -> None:
        names.append(await threads.run(blocking))

    with SyncThreads(max_threads=2, name="test-sync") as threads:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(submit, threads)
            with trio.fail_after(5):
                while len(running) < 2:
                    await trio.sleep(0.001)
            assert len(threads.threads) == 2  # the third job waits in the queue
            assert len(running) == 2
            release.set()
        assert sorted(set(names)) == ["test-sync-0", "test-sync-1"] and len(names) == 3
        started = threads.threads
    assert not threads.threads
    assert not any(thread.is_alive() for thread in started)
