"""`Appended`: one batch a partition took, and how to wait until it is acknowledged.

Shared by the produce handler and the group service, which both append through a partition's
`PartitionState.append` (a local log on a single node, a Raft proposal in a cluster) and wait
for acks=all through the object it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable


@dataclasses.dataclass(frozen=True, slots=True)
class Appended:
    """One batch appended now. `wait_acked()` returns once acks=all is satisfied (durable here,
    or committed by the partition's Raft group), or raises the BrokerError that prevents it."""

    base_offset: int
    last_offset: int
    size_bytes: int
    wait_acked: Callable[[], Awaitable[None]]
