"""Answers to requests handed to callbacks, with one timeout watch instead of a task each.

Why: the producer pipelines its Produce requests, and awaiting each answer in a task of its own
cost a task start and two scheduler passes per request, a sixth of the client's CPU per round
trip at low rates (docs/performance.md). Here the connection's reader calls the request's
callback as the answer comes in (`BrokerConnection.finish_with`), and a single task fails the
requests that reach their timeout.

Rules:
- Every request watched here has the same timeout, so deadlines come in the order requests
  were written: the watch keeps them in that order and sleeps until the oldest one's deadline.
- A callback is called exactly once: with the response frame, with the connection's error
  (it failed or was closed), or with `RequestTimedOutError` (then its response, if it comes
  later, is dropped). It runs in whatever task settled the request and must not block or raise.
- Only requests in flight are held: an answered request leaves at once, so what is kept is
  bounded by the connections' in-flight limits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from wire.connection import BrokerConnection, PendingRequest
from wire.framing import Frame

AnswerCallback = Callable[[Frame | None, BaseException | None], None]


@dataclass(slots=True, eq=False)
class _Waiting:
    deadline: float
    connection: BrokerConnection
    header: dict[str, Any]
    pending: PendingRequest
    on_answer: AnswerCallback


class AnswerWatch:
    """The requests waiting for answers, each given up after `timeout_s`; `run` is its task."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # Insertion order is deadline order (one timeout for all).
        self._waiting: dict[int, _Waiting] = {}
        self._keys = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def watch(
        self,
        connection: BrokerConnection,
        header: dict[str, Any],
        pending: PendingRequest,
        on_answer: AnswerCallback,
    ) -> None:
        """Call `on_answer` once the request `start_request` wrote is answered, fails or times
        out (see the rules)."""
        key = next(self._keys)
        deadline = trio.current_time() + self.timeout_s
        self._waiting[key] = _Waiting(deadline, connection, header, pending, on_answer)

        def answered(frame: Frame | None, error: BaseException | None) -> None:
            if self._waiting.pop(key, None) is not None:
                on_answer(frame, error)

        connection.finish_with(pending, answered)

    async def run(self) -> None:
        """Give up on requests past their deadline, until cancelled."""
        while True:
            now = trio.current_time()
            while self._waiting:
                key, oldest = next(iter(self._waiting.items()))
                if oldest.deadline > now:
                    break
                del self._waiting[key]
                if oldest.connection.abandon(oldest.header, oldest.pending):
                    timeout = oldest.connection.timed_out(oldest.header, self.timeout_s)
                    oldest.on_answer(None, timeout)
            if self._waiting:
                wake_at = next(iter(self._waiting.values())).deadline
            else:
                # A request written while this sleeps has a later deadline than the wake-up.
                wake_at = now + self.timeout_s
            await trio.sleep_until(wake_at)
