"""Deliberately broken Raft cores: the self-test of the simulator's checker.

Each class is a realistic bug, one rule wrong, as a tiny subclass of `RaftCore` overriding one
hook. `test_simulation.py` runs each through the fixed CI seeds and requires that the simulator
rejects it, and that the invariant named in `BROKEN_CORES` is the one that trips: a checker change
that stops catching a class of bugs fails CI instead of going unnoticed. The count of seeds each
needs is printed in docs/raft.md; keep them small, the self-test runs on every CI run.
"""

from __future__ import annotations

import dataclasses

from broker.raft.core import RaftCore, Ready
from broker.raft.errors import ConfigurationChangeError
from broker.raft.messages import (
    NODE_NONE,
    AppendRequest,
    AppendResponse,
    Configuration,
    Entry,
    Heartbeat,
    Message,
    VoteRequest,
)
from broker.raft.progress import Progress


class VoteWithoutLogCheckCore(RaftCore):
    """Elections: votes granted without the §5.4.1 "candidate's log is up to date" check."""

    def _handle_vote_request(self, message: VoteRequest) -> None:
        pretend = dataclasses.replace(
            message, last_index=self.log.last_index(), last_term=self.log.last_term()
        )
        super()._handle_vote_request(pretend)


class CountReplicasCore(RaftCore):
    """Commit rule (Figure 8, §5.4.2): commit whatever a majority holds, whatever its term."""

    def _may_commit(self, index: int) -> bool:
        return True


class StaleAppendRequestCore(RaftCore):
    """Stale term: an AppendRequest of an older term is handled as if it came from our leader."""

    def _step_term(self, message: Message) -> bool:
        if isinstance(message, AppendRequest) and message.term < self.term:
            return True
        return super()._step_term(message)


class StaleAppendResponseCore(RaftCore):
    """Stale term: a leader counts an AppendResponse sent in an older term (of its own earlier
    leadership) as an answer to its current AppendRequests."""

    def _step_term(self, message: Message) -> bool:
        if isinstance(message, AppendResponse) and message.term < self.term:
            return True
        return super()._step_term(message)


class SlowBacktrackingCore(RaftCore):
    """NOT broken: a leader that, after a rejection, probes again right after the follower's last
    acknowledged index instead of following the fast-backtracking hint. The Raft paper allows any
    lower probe; this one resends a shared prefix in small requests, which is what lets a stale
    divergent tail survive beyond a matching request. The production core's exact hints land the
    first matching probe on the divergence point, so there its follower clamp is unreachable."""

    def _handle_append_rejection(self, message: AppendResponse, progress: Progress) -> None:
        if message.match_index >= 0:
            floor = max(progress.match_index, self.log.first_index() - 1)
            message = dataclasses.replace(message, hint_index=floor, hint_term=self.term)
        super()._handle_append_rejection(message, progress)


class NoCommitClampCore(SlowBacktrackingCore):
    """Commit clamp: a follower commits min(leader commit, ITS last index) instead of the last
    entry the request proved shared, so a stale divergent tail beyond it becomes "committed"."""

    _leader_commit: int | None = None

    def _handle_append(self, message: AppendRequest) -> None:
        self._leader_commit = message.commit_index
        try:
            super()._handle_append(message)
        finally:
            self._leader_commit = None

    def _commit_to(self, index: int) -> None:
        # Inside _handle_append, _commit_to is only the clamp's call: widen it to the log end.
        if self._leader_commit is not None:
            index = max(index, min(self._leader_commit, self.log.last_index()))
        super()._commit_to(index)


class PreVoteRaisesTermCore(RaftCore):
    """Pre-vote: the pre-candidate adopts the term it asks for, as a real candidate would."""

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self.term += 1
            self.vote = NODE_NONE
        super()._campaign(pre_vote=pre_vote, transfer=transfer)


class NoCheckQuorumCore(RaftCore):
    """Check-quorum: the leader believes a quorum is always active, so a cut-off leader leads on."""

    def _quorum_active(self) -> bool:
        return True


class NoLeaseCore(RaftCore):
    """Leader lease (thesis §4.2.3): a node that hears from a live leader still answers a higher
    term's (pre-)vote request, as if every request were a leadership transfer's, so a follower
    rejoining from a partition deposes a healthy leader."""

    def _step_term(self, message: Message) -> bool:
        if isinstance(message, VoteRequest) and message.term > self.term:
            message = dataclasses.replace(message, transfer=True)
        return super()._step_term(message)


class AllVotersCheckQuorumCore(RaftCore):
    """Check-quorum: the leader requires every voter active in a window, not a majority, so one
    unreachable follower makes a healthy leader step down."""

    def _quorum_active(self) -> bool:
        active = {node: progress.recent_active for node, progress in self.progress.items()}
        active[self.node_id] = True
        for progress in self.progress.values():
            progress.recent_active = False
        return all(active.get(voter, False) for voter in self.configuration.voters)


class UnreachableEndsHeartbeatsCore(RaftCore):
    """Heartbeats: the leader heartbeats only the followers it heard from since its election
    timer last turned (the check-quorum window, kept whether check-quorum is on or not), as if
    the others were unreachable and not worth writing to. A follower whose answers all came in
    before the turn is never heartbeated again: it times out although the network delivers
    everything, and its election (or the leader's check-quorum step-down) deposes a healthy
    leader. The watch of the timing premise must not excuse that silence as the network's."""

    _answered: set[int] | None = None  # followers heard from in the current window

    def _become_leader(self) -> None:
        self._answered = set()
        super()._become_leader()

    def _tick_leader(self) -> None:
        if self._election_elapsed + 1 >= self.config.election_timeout_ticks:
            self._answered = set()  # the window turns in this tick, before its heartbeat
        super()._tick_leader()

    def _step_leader(self, message: Message) -> None:
        if self._answered is not None:
            self._answered.add(message.source)
        super()._step_leader(message)

    def _broadcast_heartbeat(self) -> None:
        answered = self._answered or set()
        for node, progress in self.progress.items():
            if node != self.node_id and node in answered:
                commit = min(progress.match_index, self.commit_index)
                self._send(Heartbeat(self.node_id, node, self.term, commit))


class ConcurrentChangesCore(RaftCore):
    """Membership: a new change is accepted while the previous one is still uncommitted."""

    def _check_configuration_change(self, new: Configuration) -> None:
        pending = self._pending_configuration_index
        self._pending_configuration_index = -1
        try:
            super()._check_configuration_change(new)
        finally:
            self._pending_configuration_index = pending


class MultiNodeChangeCore(RaftCore):
    """Membership: any change is accepted (several nodes at once, or none), as long as nothing
    else is pending; the single-server rule of thesis §4.1 is gone."""

    def _check_configuration_change(self, new: Configuration) -> None:
        if self._pending_configuration_index > self.commit_index:
            raise ConfigurationChangeError("a configuration change is not yet committed")


class CountOwnUnsyncedEntryCore(RaftCore):
    """Durability: the leader counts its own entry toward the commit quorum as soon as it is
    appended, before the driver's fsync reports it `persisted`."""

    def _append_as_leader(self, entry: Entry) -> None:
        super()._append_as_leader(entry)
        own = self.progress.get(self.node_id)
        if own is not None:
            own.maybe_update(entry.index)
            self.durable_index = entry.index


class SyncOnlyEntriesCore(RaftCore):
    """Durability: `must_sync` covers new entries and snapshots but forgets term and vote, so a
    vote can leave before it is on disk and a restart may vote again in the same term."""

    def ready(self) -> Ready:
        ready = super().ready()
        forgetful = dataclasses.replace(
            ready, must_sync=bool(ready.entries or ready.snapshot is not None)
        )
        self._ready_in_flight = forgetful
        return forgetful


@dataclasses.dataclass(frozen=True)
class BrokenCore:
    """A broken core and the invariants allowed to catch it (the class of bug it belongs to)."""

    core_class: type[RaftCore]
    invariants: tuple[str, ...]


BROKEN_CORES = (
    BrokenCore(VoteWithoutLogCheckCore, ("leader completeness", "electoral safety")),
    BrokenCore(StaleAppendRequestCore, ("stale term",)),
    BrokenCore(StaleAppendResponseCore, ("stale term",)),
    # The clamp's damage shows first when the follower applies its "committed" stale entry.
    BrokenCore(NoCommitClampCore, ("commit clamp", "state machine safety")),
    BrokenCore(PreVoteRaisesTermCore, ("term cause",)),
    BrokenCore(NoCheckQuorumCore, ("check-quorum",)),
    BrokenCore(NoLeaseCore, ("pre-vote stability",)),
    BrokenCore(AllVotersCheckQuorumCore, ("pre-vote stability",)),
    BrokenCore(UnreachableEndsHeartbeatsCore, ("pre-vote stability",)),
    BrokenCore(ConcurrentChangesCore, ("membership",)),
    BrokenCore(MultiNodeChangeCore, ("membership",)),
    BrokenCore(CountOwnUnsyncedEntryCore, ("durable majority",)),
    BrokenCore(SyncOnlyEntriesCore, ("durability order",)),
)
