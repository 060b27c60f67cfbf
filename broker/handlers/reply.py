"""What a handler returns: a response now, nothing (acks=0), or a `Deferred` to await.

Handlers are plain functions called in the connection's reader, in arrival order: whatever changes
state (appends, topic changes) happens there, synchronously, so pipelined requests take effect in
order. Waiting (for an fsync, for a long poll) is returned as a `Deferred`, which the server awaits
in a task of its own while it goes on reading requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Deferred:
    """A response that needs waiting for: `await run()` gives the response (or None: no reply)."""

    run: Callable[[], Awaitable[Any]]


def answer_when_ready(
    service: Any,
    waiting: Any,
    convert: Callable[[Any], Any],
    timeout_s: float,
    on_timeout: Any,
) -> Any:
    """The answer to a request submitted to a coordinator core (`waiting`, from the service's
    `submit`): converted now if the core answered at once, else a Deferred that waits for it
    (bounded by `timeout_s`; then `on_timeout`)."""
    if waiting.response is not None:
        return convert(waiting.response)

    async def wait() -> Any:
        response = await service.wait(waiting, timeout_s)
        return on_timeout if response is None else convert(response)

    return Deferred(wait)
