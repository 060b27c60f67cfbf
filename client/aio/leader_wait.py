"""Batches waiting for their partition's new leader: retried the moment one is known.

A batch that failed because its leader moved (NOT_LEADER, a dead connection, no leader known)
goes back to its queue with the retry backoff as a fallback. It should not sit out that backoff
once the client knows where to send it: a failover takes an election (a few hundred ms, see
docs/raft.md "Dead leaders") and the metadata names the new leader as soon as it is elected. So
the producer records here which leader each such batch failed on, and every metadata refresh (or
leader hint in a NOT_LEADER answer) releases, i.e. makes due now, the batches whose partition
now has another leader. Only while no other leader is known does the producer keep polling the
metadata, with exponential backoff (`LeaderPoll`); a new leader is never waited for on a timer.

Pure bookkeeping: no trio, no I/O; the producer drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from client.accumulator import ProducerBatch

# The first metadata poll while a partition has no new leader comes this soon after the last;
# then doubling up to the producer's retry backoff cap. An election after a crash takes about
# one Raft tick (100 ms by default), so the first polls are short.
LEADER_POLL_INITIAL_S: Final = 0.02


class LeaderWait:
    """Per topic, the batches waiting for a new leader and the leader each one failed on."""

    def __init__(self) -> None:
        self._waiting: dict[str, dict[ProducerBatch, int | None]] = {}

    def add(self, batch: ProducerBatch, failed_leader: int | None) -> None:
        """`batch` failed on `failed_leader` (None: no leader was known) and was requeued."""
        self._waiting.setdefault(batch.topic, {})[batch] = failed_leader

    def waiting(self, topic: str) -> bool:
        return bool(self._waiting.get(topic))

    def release(self, topic: str, leader_of: Callable[[str, int], int | None]) -> int:
        """Make every waiting batch of `topic` whose partition now has another leader due now
        (or that completed meanwhile: forgotten). Returns how many were released."""
        waiting = self._waiting.get(topic)
        if not waiting:
            return 0
        released = 0
        for batch, failed in list(waiting.items()):
            leader = leader_of(topic, batch.partition)
            if batch.done or (leader is not None and leader != failed):
                del waiting[batch]
                if not batch.done:
                    batch.retry_at = 0.0
                    released += 1
        if not waiting:
            del self._waiting[topic]
        return released


class LeaderPoll:
    """Exponential backoff between metadata polls while no new leader is known."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max(max_s, LEADER_POLL_INITIAL_S)
        self._next_s = LEADER_POLL_INITIAL_S

    def next_delay(self) -> float:
        delay, self._next_s = self._next_s, min(self._next_s * 2, self.max_s)
        return delay
