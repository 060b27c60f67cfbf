"""`PeerLiveness`: which peer brokers this broker hears from, as a pure state machine.

Quiescent Raft groups send no heartbeats of their own (docs/raft.md, "Quiescence"), so something
else must notice that a quiet group's leader died: the broker-to-broker link. Each broker sends
one node-level heartbeat per peer link per interval (an empty `raft_heartbeats` frame when no
group has one to send; CockroachDB's node liveness, Redpanda's coalesced heartbeats), and every
frame received from a peer counts as hearing from it. A peer silent for `timeout_ticks`, or whose
link broke, is dead here; the shell then tells every hosted group (`RaftCore.report_peer_dead`),
which wakes the quiet groups that peer leads (or follows, for a leader here).

Pure: time is `tick()` calls (the transport ticks once per heartbeat interval, the simulator once
per simulated tick). Peers are kept in sorted order, so every answer is deterministic.
"""

from __future__ import annotations


class PeerLiveness:
    """Silence counters per peer. A peer starts alive (it is given a full timeout to be heard)."""

    def __init__(self, peers: list[int] | tuple[int, ...], *, timeout_ticks: int) -> None:
        assert timeout_ticks >= 1, timeout_ticks
        assert all(peer > 0 for peer in peers), peers
        self.timeout_ticks = timeout_ticks
        # Per peer (sorted): ticks since it was last heard, and whether it counts as alive.
        self._silent_ticks: dict[int, int] = dict.fromkeys(sorted(set(peers)), 0)
        self._alive: dict[int, bool] = dict.fromkeys(self._silent_ticks, True)

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(self._silent_ticks)

    def is_alive(self, peer: int) -> bool:
        return self._alive.get(peer, False)

    def add(self, peer: int) -> None:
        """Watch `peer` too (a broker that joined): alive, given a full timeout to be heard."""
        assert peer > 0, peer
        if peer not in self._silent_ticks:
            self._silent_ticks[peer] = 0
            self._alive[peer] = True
            self._silent_ticks = dict(sorted(self._silent_ticks.items()))
            self._alive = dict(sorted(self._alive.items()))

    def remove(self, peer: int) -> None:
        """Stop watching `peer` (a decommissioned broker)."""
        self._silent_ticks.pop(peer, None)
        self._alive.pop(peer, None)

    def heard_from(self, peer: int) -> bool:
        """A frame (any) arrived from `peer`. True if it was dead until now."""
        if peer not in self._silent_ticks:
            return False
        self._silent_ticks[peer] = 0
        revived = not self._alive[peer]
        self._alive[peer] = True
        return revived

    def link_lost(self, peer: int) -> bool:
        """The connection to or from `peer` broke (a crashed process's sockets close at once).

        True if `peer` was alive until now: the caller reports it dead without waiting for the
        timeout. A peer that restarted is heard from again on its next frame.
        """
        if not self._alive.get(peer, False):
            return False
        self._alive[peer] = False
        return True

    def tick(self) -> list[int]:
        """One interval passed. Returns the peers that have just been silent for longer than the
        timeout (so between `timeout_ticks` and `timeout_ticks + 1` intervals)."""
        dead: list[int] = []
        for peer in self._silent_ticks:
            self._silent_ticks[peer] += 1
            # More than the timeout: the tick that follows a frame counts a part of an interval.
            if self._alive[peer] and self._silent_ticks[peer] > self.timeout_ticks:
                self._alive[peer] = False
                dead.append(peer)
        return dead
