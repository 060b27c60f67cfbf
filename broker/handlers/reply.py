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
