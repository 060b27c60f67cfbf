"""`SendThrottle`: a leader's replication byte budget per follower, refilled every tick. Pure.

Partition reassignment (docs/reassignment.md) copies a whole log to a new replica; unthrottled,
that copy competes with produce traffic for disks and links (Kafka's
`leader.replication.throttled.rate`). A throttled follower gets AppendRequests only while its
budget is positive; each tick adds `bytes_per_tick`, capped at one tick's worth, so the long-run
rate is `bytes_per_tick` per tick. A request is cut to the budget left, but one entry (one batch)
always goes, so a large batch may overdraw the budget; later ticks pay the debt back, so the
average holds. Followers without a throttle are never limited.
"""

from __future__ import annotations


class SendThrottle:
    """Per-follower byte budgets (see the module docstring). Not thread-safe, like the core."""

    def __init__(self) -> None:
        self._rates: dict[int, int] = {}
        self._budgets: dict[int, int] = {}

    def set_rate(self, node: int, bytes_per_tick: int) -> None:
        """Limit sends to `node` to `bytes_per_tick` per tick; 0 removes the limit."""
        assert bytes_per_tick >= 0, bytes_per_tick
        if bytes_per_tick == 0:
            self._rates.pop(node, None)
            self._budgets.pop(node, None)
            return
        if self._rates.get(node) != bytes_per_tick:
            self._rates[node] = bytes_per_tick
            self._budgets[node] = min(self._budgets.get(node, bytes_per_tick), bytes_per_tick)

    def rate(self, node: int) -> int:
        """The limit on `node` in bytes per tick (0: none)."""
        return self._rates.get(node, 0)

    def allowance(self, node: int, size_max: int) -> int:
        """How many bytes of entries to put in the next request to `node`, at most `size_max`
        (at least 1: the log hands out at least one entry whatever the bound)."""
        if node not in self._budgets:
            return size_max
        return max(1, min(size_max, self._budgets[node]))

    def may_send(self, node: int) -> bool:
        """Whether entries may go to `node` now."""
        return self._budgets.get(node, 1) > 0

    def spent(self, node: int, size_bytes: int) -> None:
        """`size_bytes` of entries went to `node`."""
        if node in self._budgets:
            self._budgets[node] -= size_bytes

    def refill(self) -> list[int]:
        """One tick passed: add each rate to its budget. Returns the nodes whose budget just
        turned positive (the leader resumes sending to them), sorted."""
        resumed = []
        for node in sorted(self._rates):
            rate = self._rates[node]
            before = self._budgets[node]
            self._budgets[node] = min(before + rate, rate)
            if before <= 0 < self._budgets[node]:
                resumed.append(node)
        return resumed
