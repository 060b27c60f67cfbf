"""Waiting for a producer batch from trio: the one bridge from the thread-safe accumulator to trio.

Batches complete in the trio thread of their producer. A waiter in *that* thread gets a
`trio.Event` set directly; a waiter in another trio loop (or thread) is woken through its own
loop's token, so awaiting a `RecordFuture` is safe from any trio loop.
"""

from __future__ import annotations

import trio

from client.accumulator import ProducerBatch


async def wait_batch(batch: ProducerBatch) -> None:
    """Return once `batch` is complete (successfully or not)."""
    if batch.done:
        await trio.lowlevel.checkpoint()
        return
    event = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def wake() -> None:
        # Completion runs in the producer's trio thread; run_sync_soon is thread-safe and also
        # correct when that thread is this one.
        token.run_sync_soon(event.set)

    if batch.add_waker(wake):
        await event.wait()
    else:
        await trio.lowlevel.checkpoint()
