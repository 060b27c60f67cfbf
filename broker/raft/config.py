"""RaftConfig: every limit and timing knob of one Raft group, named, defaulted and validated.

Time is counted in ticks (the driver decides how long a tick is, e.g. 100 ms); sizes in bytes.
`validate()` raises `ConfigError` naming the offending field, like broker/config.py's configs.
"""

from __future__ import annotations

import dataclasses

from broker.config import MIB, ConfigError


def _check_int(key: str, value: object, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(key, f"must be {bound}, got {value}")


@dataclasses.dataclass(frozen=True, slots=True)
class RaftConfig:
    """Limits and timings of one Raft group (etcd's raft.Config, renamed to our conventions)."""

    # A follower that hears nothing from a leader for a random number of ticks in
    # [election_timeout_ticks, 2 * election_timeout_ticks) starts an election (Raft paper §5.2).
    election_timeout_ticks: int = 10
    # The leader sends a heartbeat to every follower this often; must be well below the election
    # timeout so that one lost heartbeat does not trigger an election.
    heartbeat_ticks: int = 1
    # Upper bound on the entry bytes of one AppendRequest (at least one entry is always sent, so a
    # single large batch still makes progress).
    append_bytes_max: int = 1 * MIB
    # Pipelining bounds per follower in the replicate state: unacknowledged AppendRequests...
    inflight_messages_max: int = 256
    # ...and their entry bytes. Whichever is hit first pauses sending to that follower.
    inflight_bytes_max: int = 32 * MIB
    # Bytes of proposals the leader accepts beyond its commit index; more raises
    # ProposalDroppedError instead of growing memory without bound.
    uncommitted_bytes_max: int = 64 * MIB
    # Pre-vote (thesis §9.6): a node first asks whether it could win before bumping its term, so a
    # partitioned node rejoining cannot force the cluster into a new election.
    pre_vote: bool = True
    # Check-quorum (thesis §6.2): a leader that has not heard from a majority within an election
    # timeout steps down; voters ignore vote requests while they have a live leader (the lease).
    check_quorum: bool = True
    # A leadership transfer that has not completed after this many ticks is abandoned.
    transfer_timeout_ticks: int = 20
    # A follower that has not acknowledged a snapshot (or log reset) after this many ticks is
    # probed again, which re-sends it: the InstallSnapshot may have been lost.
    snapshot_timeout_ticks: int = 50
    # Quiescence (CockroachDB's): a leader whose followers all hold its whole log, committed,
    # sends one last heartbeat flagged `quiesce` and the group stops ticking: no heartbeats, no
    # election timers. A write, a message, a vote or a peer reported dead by the broker-to-broker
    # liveness (`report_peer_dead`) wakes it. Liveness only: safety does not depend on it. Off,
    # every group heartbeats every `heartbeat_ticks` forever; on, the driver must report dead
    # peers, or a quiet group whose leader died never elects another.
    quiesce: bool = True
    # Tell the followers a new commit index at once: an AppendRequest to each (empty when there
    # is nothing new to send), which each answers. Off, they learn it with the next append or
    # heartbeat (every `heartbeat_ticks`, sent on the transport's own interval, so a tick or two
    # later; and the quiesce heartbeat), and at RF 3 a replicated entry costs four messages
    # instead of eight. Safety never depends on when a follower learns the commit index;
    # partition groups turn it off (their followers apply nothing that anyone waits for; a new
    # leader's lagging high watermark is `RaftDriver.high_watermark_settled`'s business), the
    # metadata group keeps it.
    commit_broadcast: bool = True

    def validate(self) -> None:
        _check_int("election_timeout_ticks", self.election_timeout_ticks, 2)
        _check_int("heartbeat_ticks", self.heartbeat_ticks, 1, self.election_timeout_ticks - 1)
        _check_int("append_bytes_max", self.append_bytes_max, 1)
        _check_int("inflight_messages_max", self.inflight_messages_max, 1)
        _check_int("inflight_bytes_max", self.inflight_bytes_max, 1)
        _check_int("uncommitted_bytes_max", self.uncommitted_bytes_max, 1)
        _check_int("transfer_timeout_ticks", self.transfer_timeout_ticks, 1)
        _check_int("snapshot_timeout_ticks", self.snapshot_timeout_ticks, 1)
        for key in ("pre_vote", "check_quorum", "quiesce", "commit_broadcast"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, f"expected true or false, got {getattr(self, key)!r}")
