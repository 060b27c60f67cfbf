"""A batch's completion reaches every kind of waiter: trio tasks in the completing thread (woken
directly), trio tasks in another thread's loop (through that loop's token), and blocking
threads (one `threading.Event`, made only when a thread blocks)."""

from __future__ import annotations

import threading

import trio
import trio.testing

from client.accumulator import ProducerBatch, RecordFuture


def batch_of_one() -> tuple[ProducerBatch, RecordFuture]:
    batch = ProducerBatch("t", 0, created_at=0.0, base_timestamp=1_000)
    batch.append(1_000, None, b"v", None)
    return batch, RecordFuture((batch, 0))


async def test_a_waiter_in_the_completing_loop_is_woken_without_the_token(
    nursery: trio.Nursery,
) -> None:
    batch, future = batch_of_one()
    got = []

    async def waiter() -> None:
        got.append(await future)

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    batch.complete(41, None)  # from this task: the completing thread runs the waiter's loop
    # Woken directly: nothing was queued through the loop's token (a wake-up of the loop: two
    # system calls and a scheduler pass), which the old waker always did.
    assert trio.lowlevel.current_statistics().run_sync_soon_queue_size == 0
    await trio.testing.wait_all_tasks_blocked()
    assert [(m.offset, m.timestamp) for m in got] == [(41, 1_000)]
    assert batch._blocking_waiters is None  # no thread blocked: no threading.Event made


def test_waiters_in_another_threads_loop_and_blocking_threads_are_woken() -> None:
    batch, future = batch_of_one()
    results: dict[str, object] = {}

    def trio_thread() -> None:
        async def wait() -> None:
            results["trio"] = (await future).offset

        trio.run(wait)

    def blocking_thread() -> None:
        results["blocking"] = future.result(timeout=10).offset

    threads = [threading.Thread(target=trio_thread), threading.Thread(target=blocking_thread)]
    for thread in threads:
        thread.start()
    # Both are waiting once the batch holds a waker and a threading.Event for them.
    for _ in range(1000):
        if batch.wakers and batch._blocking_waiters is not None:
            break
        threading.Event().wait(0.01)
    assert batch.wakers and batch._blocking_waiters is not None
    assert not future.done()
    batch.complete(7, None)  # this (non-trio) thread completes it
    for thread in threads:
        thread.join(10)
    assert results == {"trio": 7, "blocking": 7}
    assert future.done() and future.result(0).offset == 7


def test_a_blocking_wait_times_out_on_an_incomplete_batch() -> None:
    batch, future = batch_of_one()
    assert not batch.wait_blocking(0.01)
    try:
        future.result(timeout=0.01)
    except TimeoutError as exc:
        assert "not acknowledged within" in str(exc)
    else:
        raise AssertionError("result() returned for an incomplete batch")
