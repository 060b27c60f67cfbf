"""A dedicated thread that runs one trio loop for one blocking client.

Why a thread with `trio.run` plus `trio.from_thread.run`, rather than `trio.lowlevel.
start_guest_run`: guest mode needs a host event loop to drive trio, and plain scripts and worker
threads have none. A thread of our own works everywhere, and the hot paths do not cross into it
anyway: `Producer.send` appends to the thread-safe accumulator and `Consumer.poll` takes from the
thread-safe fetch buffer; only slow-path calls (metadata, flush, waiting polls, admin requests)
go through `trio.from_thread.run`.

Rule: the client's `start()` and `aclose()` run in the loop's main task (its nursery lives there);
`LoopThread.run` executes other coroutines in tasks of their own. Never call a blocking method
from inside the loop thread (a delivery callback): it would wait for itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

from client.errors import ClientClosedError

T = TypeVar("T")
# How long close() waits for the loop thread to finish flushing before giving up on it.
CLOSE_JOIN_TIMEOUT_S = 120.0


class _AsyncClient(Protocol):
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


class LoopThread:
    """Start with `start()` (raises what the client's start raised); stop with `stop()`."""

    def __init__(self, client: _AsyncClient, name: str) -> None:
        self._client = client
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_event: trio.Event | None = None
        self._start_error: BaseException | None = None
        self._close_error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def _main(self) -> None:
        try:
            trio.run(self._amain)
        except BaseException as exc:  # surfaced by start() or stop(), never lost in the thread
            if self._start_error is None and self._ready.is_set():
                self._close_error = exc
            elif self._start_error is None:
                self._start_error = exc
        finally:
            self._ready.set()

    async def _amain(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop_event = trio.Event()
        try:
            await self._client.start()
        except BaseException as exc:
            self._start_error = exc
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._client.aclose()

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `afn(*args)` in the loop and return its result (blocking the calling thread)."""
        if self._stopped or self._token is None:
            raise ClientClosedError("the client is closed; create a new one")
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Schedule `fn()` in the loop thread without waiting (thread-safe)."""
        if self._token is not None and not self._stopped:
            self._token.run_sync_soon(fn)

    def stop(self, timeout_s: float = CLOSE_JOIN_TIMEOUT_S) -> None:
        """Close the client in its loop (a producer flushes first) and end the thread."""
        if self._stopped:
            return
        self._stopped = True
        if self._token is not None and self._stop_event is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._stop_event.set)
        self._thread.join(timeout_s)
        if self._close_error is not None:
            raise self._close_error
