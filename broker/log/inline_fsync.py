"""`InlineBudget`: how much of its event loop's time a broker may spend in fsyncs run inline.

Why inline at all: handing a small `fdatasync` to the helper process (broker/log/fsync_process.py)
costs two process wake-ups, the helper's and then the broker's for the answer. On two busy cores
(client, broker, helper) each wake-up waits for a core: measured at 10 k records/s, the hand-off
round trip took 0.36 ms at p50 and 1.6 ms at p99 where the `fdatasync` itself (over a
preallocated segment's zeros) takes 0.12 / 0.23 ms. Run on the event loop, the same fsync blocks
the loop for those 0.12 ms and needs no wake-up at all; meanwhile new requests wait in their
socket buffers and the next fsync covers them (group commit as before). It runs at the loop's
next turn, not inside the task that asked for it, so that task finishes its step first (writes
its produce response, hands a Raft append to the transport); `SyncThreads`'s inline runner, a
task of its own, does that.

Why a budget: every inline fsync stops the loop (every connection, every Raft timer) for as long
as it takes, and whatever arrives meanwhile waits: at a high rate that is every request (an acks=1
producer, one request in flight per partition, would wait an fsync per round trip). So inline
fsyncs may take at most `share` of the loop's time, a token bucket of `burst_s`, and a loop that
spends it all is busy: every fsync goes to the helper for the next `busy_cooldown_s`, then it
tries again. At a low rate (one small fsync every millisecond, 15 % of the loop) they all run
inline; at a high rate, or when the disk slows down, nearly all go to the helper as before, and
the loop keeps serving. A share bounds the average, not one pause: an
fdatasync on ext4 can wait for a journal commit full of other dirty data (hundreds of ms), so
one inline fsync slower than `stall_s` stops inline fsyncs for `cooldown_s` (the loop must keep
its Raft heartbeats and election timers). The first such stall still holds the loop for as long
as the disk takes (a disk that hangs outright hangs it).

The budget is the event loop's, shared by every `SyncThreads` of the trio run (a cluster broker
has one for its logs and one for its replicas): `loop_budget()`, which a broker sets up at start
with its `fsync_inline_share` (`use_loop_budget`). Pure: the caller passes the time.
"""

from __future__ import annotations

import trio

# The most of the event loop's time inline fsyncs may take, on average.
INLINE_SHARE_DEFAULT = 0.3
# How much inline fsync time may be spent at once from a full bucket: as much as one fsync the
# stall rule lets by (`INLINE_STALL_S_DEFAULT`), so that the disk's ordinary tail alone never
# makes a loop busy. At 3 ms (the first value) it did: at 10 k records/s, where fsyncs take about
# 15 % of the loop, one 1-4 ms fsync (this disk's p99 and a little more) emptied the bucket every
# few seconds and sent every fsync to the helper for a second each time (docs/performance.md,
# "Inline fsyncs"). A loop really over its share still runs dry, after burst / (its share - share).
INLINE_BURST_S_DEFAULT = 0.05
# After the bucket runs dry (a high rate): every fsync to the helper for this long.
INLINE_BUSY_COOLDOWN_S_DEFAULT = 1.0
# An inline fsync slower than this (half a heartbeat tick at the default `raft_tick_ms`, 100)
# sends every fsync to the helper for the cooldown.
INLINE_STALL_S_DEFAULT = 0.05
INLINE_COOLDOWN_S_DEFAULT = 10.0


class InlineBudget:
    """A token bucket of event-loop seconds: refilled at `share` seconds per second, holding at
    most `burst_s`; an inline fsync may start while it holds any, and its duration is taken from
    it after (so it can go below zero: a slow fsync pays for itself before the next one). A
    share of 0 allows none; spending all of it allows none for `busy_cooldown_s`; an fsync
    slower than `stall_s` allows none for `cooldown_s`."""

    __slots__ = (
        "_burst_s",
        "_busy_cooldown_s",
        "_cooldown_s",
        "_last",
        "_quiet_until",
        "_share",
        "_stall_s",
        "_tokens",
        "busy_spells",
        "stalls",
    )

    def __init__(
        self,
        share: float = INLINE_SHARE_DEFAULT,
        burst_s: float = INLINE_BURST_S_DEFAULT,
        *,
        busy_cooldown_s: float = INLINE_BUSY_COOLDOWN_S_DEFAULT,
        stall_s: float = INLINE_STALL_S_DEFAULT,
        cooldown_s: float = INLINE_COOLDOWN_S_DEFAULT,
    ) -> None:
        assert 0.0 <= share <= 1.0 and burst_s >= 0.0 and busy_cooldown_s >= 0.0
        assert stall_s > 0.0 and cooldown_s >= 0.0
        self._share = share
        self._burst_s = burst_s
        self._busy_cooldown_s = busy_cooldown_s
        self._stall_s = stall_s
        self._cooldown_s = cooldown_s
        self._tokens = burst_s if share > 0 else 0.0
        self._last: float | None = None
        self._quiet_until = float("-inf")
        self.busy_spells = 0  # times the bucket ran dry so far
        self.stalls = 0  # inline fsyncs slower than `stall_s` so far

    def allows(self, now: float) -> bool:
        """Whether an fsync may run inline at `now` (seconds, any monotonic clock)."""
        if self._last is not None:
            self._tokens = min(self._burst_s, self._tokens + (now - self._last) * self._share)
        self._last = now
        return self._tokens > 0.0 and now >= self._quiet_until

    def spend(self, seconds: float, now: float) -> bool:
        """An inline fsync took `seconds` of the loop's time, ending at `now`; True if that was
        a stall (the caller says so in the log)."""
        self._tokens -= seconds
        if seconds > self._stall_s:
            self.stalls += 1
            self._quiet_until = now + self._cooldown_s
            return True
        if self._tokens <= 0.0:
            self.busy_spells += 1
            self._quiet_until = max(self._quiet_until, now + self._busy_cooldown_s)
        return False

    @property
    def cooldown_s(self) -> float:
        return self._cooldown_s

    @property
    def tokens_s(self) -> float:
        """What is left, in seconds (negative: in debt after a slow fsync)."""
        return self._tokens


_LOOP_BUDGET: trio.lowlevel.RunVar[InlineBudget] = trio.lowlevel.RunVar("inline_fsync_budget")


def use_loop_budget(budget: InlineBudget) -> None:
    """Make `budget` the current trio run's (a broker's, with its configured share). Brokers
    run in one trio run (tests) share its loop, so its one budget: the last one set counts."""
    _LOOP_BUDGET.set(budget)


def loop_budget() -> InlineBudget:
    """The current trio run's budget (made with the default share at first use, unless
    `use_loop_budget` set one): one per event loop."""
    try:
        return _LOOP_BUDGET.get()
    except LookupError:
        budget = InlineBudget()
        _LOOP_BUDGET.set(budget)
        return budget
