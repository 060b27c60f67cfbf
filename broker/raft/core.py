"""RaftCore: one Raft group member as a pure state machine (etcd's RawNode, in Python).

Inputs are `tick()`, `step(message)`, `propose(batch)`, the membership and transfer requests, and
notifications from the driver (`persisted`, `report_unreachable`, `report_snapshot`). Outputs pile
up inside the core until the driver drains them with `ready()`, handles them, then calls
`advance()`.
No I/O, clock or randomness lives here: time is ticks (plus a `now_ms` the driver passes for batch
timestamps) and randomness is an injected `random.Random`, so a seed replays a run exactly.

Quiescence (CockroachDB's, `RaftConfig.quiesce`): a leader with nothing to replicate sends one
last heartbeat flagged `quiesce` and stops ticking; its followers stop their election timers. A
proposal, any message of the current term that says something new (not a late answer from a
caught-up follower), a vote, a campaign, or `report_peer_dead` (the broker's link liveness) wakes
the group. It changes only WHEN things happen, never what a message or a
vote may do, so safety is untouched; the simulator checks that a quiet group still elects.

Section numbers cite the Raft paper (Ongaro & Ousterhout 2014, "§5.2") and Ongaro's thesis (2014,
"thesis §9.6") for pre-vote, check-quorum, leadership transfer and membership changes.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from broker.raft import membership, quorum
from broker.raft.config import RaftConfig
from broker.raft.errors import ConfigurationChangeError, NotLeaderError, ProposalDroppedError
from broker.raft.messages import (
    NODE_NONE,
    AppendRequest,
    AppendResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    assign_entry,
)
from broker.raft.progress import Progress, ProgressState
from broker.raft.raft_log import RaftLog
from broker.raft.ready import RaftStatistics, RandomSource, Ready, Role
from broker.raft.storage import CompactedError, RaftStorage
from broker.raft.throttle import SendThrottle
from wire import batch as batch_codec

# Bytes of committed entries handed to the driver per Ready: bounds apply batches (principle 5).
APPLY_BYTES_MAX = 8 * 1024 * 1024

__all__ = ["RaftCore", "RaftStatistics", "RandomSource", "Ready", "Role"]


class RaftCore:
    """A Raft node. Not thread-safe; the driver serializes every call.

    Contract (etcd's RawNode): between `ready()` and `advance()` the driver makes no other call.
    """

    def __init__(
        self,
        *,
        node_id: int,
        storage: RaftStorage,
        config: RaftConfig,
        rng: RandomSource,
        applied_index: int | None = None,
    ) -> None:
        """Restore a node from `storage` (its hard state, log and configuration history).

        `applied_index` is what the driver's state machine has already applied durably (for a
        data partition, nothing needs re-applying beyond the high watermark it keeps); committed
        entries after it are handed out again. By default everything after the snapshot is.
        """
        config.validate()
        assert node_id > 0
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self.log = RaftLog(storage)
        initial = storage.initial_state()
        self.term = initial.hard_state.term
        self.vote = initial.hard_state.vote
        # The configuration in force is the LAST one in the log, committed or not (thesis §4.1).
        self._configurations: list[tuple[int, Configuration]] = list(initial.configurations)
        assert self._configurations, "storage must know at least the initial configuration"
        # A torn write can lose entries a stale hard state still counts as committed; commit
        # knowledge is only a cache, so clamp it rather than trust it (it will be re-learned).
        self.commit_index = max(
            min(initial.hard_state.commit_index, self.log.last_index()), self.log.first_index() - 1
        )
        self.applied_index = self.log.first_index() - 1
        if applied_index is not None:
            self.applied_index = max(self.applied_index, min(applied_index, self.commit_index))
        # Highest index known to be fsynced here (reported by `persisted`); the leader's own copy
        # counts toward commit only once durable, or a crash could lose a "committed" entry.
        self.durable_index = self.log.last_index()
        self.now_ms = 0
        self.role = Role.FOLLOWER
        self.leader_id = NODE_NONE
        self._step_role: Callable[[Message], None] = self._step_follower
        self._votes: dict[int, bool] = {}
        self.progress: dict[int, Progress] = {}
        self._messages: list[Message] = []
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self.config.election_timeout_ticks
        self._transfer_target = NODE_NONE
        self._transfer_elapsed = 0
        self._pending_configuration_index = -1
        self._uncommitted: collections.deque[tuple[int, int]] = collections.deque()
        self._uncommitted_bytes = 0
        self._replication_pending = False
        self._commit_broadcast_pending = False
        self._ready_in_flight: Ready | None = None
        # Replication byte budgets of throttled followers (reassignment's new replicas).
        self._send_throttle = SendThrottle()
        # Quiet group: tick() does nothing until something wakes it (see the module docstring).
        self._quiescent = False
        # Peers the broker-to-broker liveness reports down (until it, or a message, says they
        # are back): a leader may go quiet without them (CockroachDB quiesces ignoring non-live
        # followers), so a dead broker does not keep thousands of its groups heartbeating.
        self._dead_peers: set[int] = set()
        self._persisted_hard_state = initial.hard_state
        self._counters: collections.Counter[str] = collections.Counter()
        self._reset_election_timeout()

    # --- public surface ------------------------------------------------------------------------

    @property
    def configuration(self) -> Configuration:
        return self._configurations[-1][1]

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def quiescent(self) -> bool:
        """The group is quiet here: ticks do nothing (the driver may stop ticking it at all)."""
        return self._quiescent

    @property
    def configuration_change_pending(self) -> bool:
        """A membership change (or this leader's first entry) is not committed yet, so
        `propose_configuration` would be refused (thesis §4.1's one-change-at-a-time rule)."""
        return self._pending_configuration_index > self.commit_index

    @property
    def transfer_target(self) -> int:
        """The voter a leadership transfer under way goes to (NODE_NONE: none)."""
        return self._transfer_target

    def tick(self, *, now_ms: int | None = None) -> None:
        """Advance logical time by one tick; `now_ms` (if given) stamps control batches."""
        self._check_not_in_ready()
        if now_ms is not None:
            self.now_ms = now_ms
        if self._quiescent:
            return
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, message: Message) -> None:
        """Handle one message from a peer (already decoded and addressed to this node)."""
        self._check_not_in_ready()
        assert message.target == self.node_id, message
        held_dead = message.source in self._dead_peers
        if held_dead:
            self._dead_peers.discard(message.source)  # evidently back
        if (
            self._quiescent
            and message.term >= self.term
            and not self._keeps_quiet(message, held_dead=held_dead)
        ):
            # Anything of the current term or newer means the group has work (a new leader, a
            # vote, an answer a quiet leader did not expect). A stale message wakes nothing: an
            # older term must change nothing here.
            self._wake()
        if not self._step_term(message):
            return
        if isinstance(message, VoteRequest):
            self._handle_vote_request(message)
        else:
            self._step_role(message)

    def campaign(self) -> None:
        """Start an election now (pre-vote first when configured), as if the timer had fired."""
        self._check_not_in_ready()
        if self.role is not Role.LEADER:
            self._hup(transfer=False)

    def propose(self, batch: bytes | bytearray) -> Entry:
        """Append a client batch (validated by the caller) to the leader's log.

        Returns the entry it became: its offsets and term are assigned here by rewriting the
        batch's base offset and leader epoch in place (both outside the CRC). The client's write is
        committed once a later Ready lists this entry (same index AND term) in committed_entries.
        Raises NotLeaderError on a non-leader and ProposalDroppedError during a leadership transfer
        or when `uncommitted_bytes_max` would be exceeded.
        """
        self._check_not_in_ready()
        self._check_can_propose(len(batch))
        self._wake()
        entry = assign_entry(batch, base_index=self.log.last_index() + 1, term=self.term)
        assert entry.kind is EntryKind.NORMAL, "clients cannot propose Raft control batches"
        self._append_as_leader(entry)
        self._counters["proposals_accepted"] += 1
        return entry

    def propose_configuration(self, configuration: Configuration) -> Entry:
        """Change membership by one node (thesis §4.1): add or remove a learner, promote a learner
        that has caught up to a voter, or remove/demote a voter.

        The new configuration takes effect on every node as soon as its entry is appended. Only one
        change may be uncommitted at a time, and not before this leader committed an entry of its
        own term (the thesis's fix to single-server changes). Raises ConfigurationChangeError.
        """
        self._check_not_in_ready()
        self._check_can_propose(0)
        self._check_configuration_change(configuration)
        self._wake()
        batch = batch_codec.build_control_batch(
            batch_codec.ControlType.RAFT_CONFIGURATION,
            configuration.encode(),
            timestamp_ms=self.now_ms,
        )
        entry = assign_entry(batch, base_index=self.log.last_index() + 1, term=self.term)
        self._append_as_leader(entry)
        return entry

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to voter `target` (thesis §3.10).

        Proposals are refused until the transfer ends. Once `target` has the leader's whole log it
        gets TimeoutNow and campaigns at once; after `transfer_timeout_ticks` the attempt is
        dropped.
        """
        self._check_not_in_ready()
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if target == self.node_id or target not in self.configuration.voters:
            raise ConfigurationChangeError(f"node {target} is not another voter of this group")
        self._wake()
        self._transfer_target = target
        self._transfer_elapsed = 0
        if self.progress[target].match_index == self.log.last_index():
            self._send(TimeoutNow(self.node_id, target, self.term))
        else:
            self._send_append(target)

    def persisted(self, last_index: int, last_term: int) -> None:
        """The driver fsynced the log through `last_index` (of `last_term`, from a Ready).

        A notification for a log that has since been truncated is ignored (the term check).
        """
        self._check_not_in_ready()
        if last_index <= self.durable_index or not self.log.match_term(last_index, last_term):
            return
        self.durable_index = min(last_index, self.log.last_index())
        if self.role is Role.LEADER and self.node_id in self.progress:
            self.progress[self.node_id].maybe_update(self.durable_index)
            if self._maybe_commit() and self.config.commit_broadcast:
                self._commit_broadcast_pending = True

    def report_unreachable(self, peer: int) -> None:
        """A send to `peer` failed or its queue is full: stop pipelining blindly (etcd)."""
        progress = self.progress.get(peer)
        if self.role is Role.LEADER and progress and progress.state is ProgressState.REPLICATE:
            progress.become_probe()

    def report_peer_dead(self, peer: int) -> None:
        """The broker-to-broker liveness says `peer` is down (its link broke, or it was silent for
        an election timeout). A quiet group must not wait for heartbeats that will not come:
        - a follower whose leader is `peer` wakes and forgets that leader, so its lease no longer
          holds off the other voters' campaigns (a vote still needs a majority: liveness only);
        - a leader with `peer` among its followers wakes, so check-quorum runs again (it steps
          down if a majority is gone) and it stays awake until every follower answers again.
        """
        self._check_not_in_ready()
        if peer != self.node_id:
            self._dead_peers.add(peer)
        if self.role is Role.LEADER:
            progress = self.progress.get(peer)
            if progress is not None and peer != self.node_id:
                self._wake()
                # Not heard from until it answers: no quiescing without it, and it counts against
                # the next check-quorum.
                progress.recent_active = False
        elif self.leader_id == peer:
            self._wake()
            self.leader_id = NODE_NONE
            self._campaign_after_leader_loss(peer)

    def _campaign_after_leader_loss(self, leader: int) -> None:
        """The leader is reported dead: elect its successor now, not after an election timeout.

        The randomized timeout exists to keep voters from campaigning at once, but a broken link
        tells every follower at the same instant, so all campaigning at once would split the
        vote. Instead the live voters take turns, in an order every follower of this term
        computes alike: sorted voters rotated by the term (so the successors of a dead broker's
        many groups spread over the survivors). The first campaigns at once (pre-vote first, so
        a false report disturbs no live leader: the others still hold its lease) and again at
        its next tick if that round is still open, the next in turn at its second tick, and so
        on; a vote for the first resets the others' timers, and a normal randomized timeout
        follows any outcome. Liveness only: votes decide, as always.
        """
        if not self._is_voter():
            return
        live = sorted(
            voter
            for voter in self.configuration.voters
            if voter != leader and voter not in self._dead_peers
        )
        if self.node_id not in live:
            return
        start = self.term % len(live)
        rank = (live[start:] + live[:start]).index(self.node_id)
        if rank == 0:
            self._hup(transfer=False)
            if self.role is Role.PRE_CANDIDATE:
                # A follower that has not yet heard of the death ignores the pre-vote (its lease
                # holds): ask again at the next tick, before the next in turn campaigns.
                self._randomized_election_timeout = 1
        else:
            self._election_elapsed = 0
            # Fires at the (rank + 1)th tick: the earlier ranks had at least a whole tick.
            self._randomized_election_timeout = rank + 1

    def report_peer_alive(self, peer: int) -> None:
        """The liveness hears from `peer` again (it restarted, or the partition healed). A quiet
        leader that went quiet without it wakes to catch it up, and goes quiet again once it
        holds the whole log. (A message from `peer` says the same; this needs no message.)"""
        self._check_not_in_ready()
        if peer not in self._dead_peers:
            return
        self._dead_peers.discard(peer)
        if self.role is Role.LEADER and peer in self.progress:
            self._wake()

    def report_snapshot(self, peer: int, *, success: bool) -> None:
        """The driver finished (or failed) streaming a snapshot to `peer`."""
        progress = self.progress.get(peer)
        if self.role is not Role.LEADER or progress is None:
            return
        if progress.state is ProgressState.SNAPSHOT:
            if not success:
                progress.pending_snapshot_index = -1
            progress.become_probe()
            progress.probe_sent = success  # wait for the follower's answer after a success

    def set_replication_throttle(self, node: int, bytes_per_tick: int) -> None:
        """Limit what this node, while leading, sends `node` to `bytes_per_tick` of entries per
        tick on average (0: no limit). Used to throttle a new replica's catch-up (throttle.py)."""
        self._send_throttle.set_rate(node, bytes_per_tick)

    def has_ready(self) -> bool:
        unstable_entries, unstable_snapshot = self.log.unstable()
        return bool(
            self._messages
            or unstable_entries
            or unstable_snapshot
            or self._replication_pending
            or self._commit_broadcast_pending
            or self.commit_index > self.applied_index
            or self._hard_state() != self._persisted_hard_state
        )

    def ready(self) -> Ready:
        """Drain pending work as one Ready; see the Ready docstring for the driver's duties."""
        self._check_not_in_ready()
        if self._replication_pending or self._commit_broadcast_pending:
            # New entries, or a new commit index the followers should learn without waiting for
            # the next heartbeat (they apply sooner and their reads see it sooner).
            self._broadcast_append(send_if_empty=self._commit_broadcast_pending)
            self._replication_pending = False
            self._commit_broadcast_pending = False
        hard_state = self._hard_state()
        changed = hard_state != self._persisted_hard_state
        unstable_entries, unstable_snapshot = self.log.unstable()
        committed: list[Entry] = []
        if self.commit_index > self.applied_index and unstable_snapshot is None:
            committed = self.log.entries(
                self.applied_index + 1, self.commit_index + 1, APPLY_BYTES_MAX
            )
        previous = self._persisted_hard_state
        ready = Ready(
            hard_state=hard_state if changed else None,
            entries=tuple(unstable_entries),
            snapshot=unstable_snapshot,
            messages=tuple(self._messages),
            committed_entries=tuple(committed),
            must_sync=bool(
                unstable_entries
                or unstable_snapshot
                or hard_state.term != previous.term
                or hard_state.vote != previous.vote
            ),
            last_index=self.log.last_index(),
            last_term=self.log.last_term(),
        )
        self._messages = []
        self._ready_in_flight = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver has handled `ready` (written, sent, applied): forget it."""
        assert ready is self._ready_in_flight, "advance() takes the Ready returned by ready()"
        self._ready_in_flight = None
        self.log.stable_to(len(ready.entries), ready.snapshot)
        if ready.snapshot is not None:
            self.applied_index = max(self.applied_index, ready.snapshot.index)
            self._counters["snapshots_installed"] += 1
        if ready.committed_entries:
            self.applied_index = ready.committed_entries[-1].index
            self._counters["entries_committed"] += len(ready.committed_entries)
        self.log.applied_to(self.applied_index)
        if ready.hard_state is not None:
            self._persisted_hard_state = ready.hard_state

    def statistics(self) -> RaftStatistics:
        counters = self._counters
        return RaftStatistics(
            node_id=self.node_id,
            role=self.role,
            term=self.term,
            leader_id=self.leader_id,
            commit_index=self.commit_index,
            applied_index=self.applied_index,
            first_index=self.log.first_index(),
            last_index=self.log.last_index(),
            elections_started=counters["elections_started"],
            elections_won=counters["elections_won"],
            proposals_accepted=counters["proposals_accepted"],
            proposals_dropped=counters["proposals_dropped"],
            entries_committed=counters["entries_committed"],
            messages_sent=counters["messages_sent"],
            snapshots_sent=counters["snapshots_sent"],
            snapshots_installed=counters["snapshots_installed"],
            entries_truncated=counters["entries_truncated"],
            uncommitted_bytes=self._uncommitted_bytes,
            quiescent=self._quiescent,
            quiesced=counters["quiesced"],
            woken=counters["woken"],
        )

    def validate(self) -> None:
        """Assert whole-state invariants (tests and the simulator call this after every step)."""
        last_index = self.log.last_index()
        assert self.applied_index <= self.commit_index <= last_index, (
            self.applied_index,
            self.commit_index,
            last_index,
        )
        assert self.log.first_index() - 1 <= self.commit_index
        assert (self.role is Role.LEADER) == (self.leader_id == self.node_id)
        if self.role is Role.LEADER:
            assert self.vote == self.node_id
            for node, progress in self.progress.items():
                assert progress.match_index < progress.next_index, (node, progress)
                assert progress.match_index <= last_index, (node, progress)
        indexes = [index for index, _ in self._configurations]
        assert indexes == sorted(indexes)
        if self._quiescent:
            assert self.role in (Role.LEADER, Role.FOLLOWER), self.role
            if self.role is Role.LEADER:
                assert self._transfer_target == NODE_NONE
                assert self.commit_index == last_index == self.durable_index, (
                    self.commit_index,
                    last_index,
                    self.durable_index,
                )

    # --- ticks ---------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        # Only voters start elections; learners and removed nodes just wait to be told.
        if self._election_elapsed >= self._randomized_election_timeout and self._is_voter():
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_timeout_ticks:
            self._election_elapsed = 0
            # Check-quorum (thesis §6.2): a leader cut off from a majority steps down, so clients
            # stop writing to it and its lease no longer holds off a legitimate election.
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NODE_NONE)
                return
        for node in self._send_throttle.refill():
            if node in self.progress and node != self.node_id:
                self._send_append(node, send_if_empty=False)  # its budget is positive again
        if self._transfer_target != NODE_NONE:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.transfer_timeout_ticks:
                self._transfer_target = NODE_NONE
        for progress in self.progress.values():
            if progress.state is ProgressState.SNAPSHOT:
                # Nothing reports a lost InstallSnapshot; after a timeout, probe (and so resend).
                progress.snapshot_elapsed_ticks += 1
                if progress.snapshot_elapsed_ticks >= self.config.snapshot_timeout_ticks:
                    progress.pending_snapshot_index = -1
                    progress.become_probe()
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            if self._can_quiesce():
                self._quiesce()
            else:
                self._broadcast_heartbeat()

    # --- quiescence (CockroachDB's replica quiescence) ------------------------------------------

    def _can_quiesce(self) -> bool:
        """Whether this leader may go quiet: nothing left to replicate, commit or tell anyone.

        Every follower the liveness does not report dead holds the whole log durably (match =
        last index) and is active (heard from in this check-quorum window), those and the leader
        are a majority of the voters, the leader's own copy is durable and committed, and no
        transfer or send is pending. Then the quiesce heartbeat's commit index is the last
        index for each live follower (its match index), which it checks against its own commit
        index; a dead follower gets its match index, as in every heartbeat. It is caught up
        when it comes back: `report_peer_alive`, or its first message, wakes the leader.
        """
        if not self.config.quiesce or self._transfer_target != NODE_NONE:
            return False
        if self._replication_pending or self._commit_broadcast_pending:
            return False
        last_index = self.log.last_index()
        if not self.commit_index == self.durable_index == last_index:
            return False
        caught_up = {self.node_id: True}
        for node, progress in self.progress.items():
            if node == self.node_id or node in self._dead_peers:
                continue
            if not (progress.match_index == last_index and progress.recent_active):
                return False
            caught_up[node] = True
        return quorum.has_quorum(self.configuration.voters, caught_up)

    def _keeps_quiet(self, message: Message, *, held_dead: bool) -> bool:
        """Whether a quiet node takes `message` without waking: it says nothing new.

        A repeated quiesce heartbeat (duplicated, delayed) keeps a follower quiet. On a leader, a
        late answer of the current term from a live follower that holds the whole log: the
        HeartbeatResponse to a heartbeat sent before the leader went quiet (heartbeats and their
        answers are coalesced per transport interval, so under load they arrive a round or two
        after the quiesce decision), or a successful AppendResponse that moves no match index (a
        duplicate). Waking on those cost a heartbeat round and a second quiesce per late answer
        on every idle group of a loaded broker.

        Only with pre-vote AND check-quorum (the defaults): an answer may also come from a
        follower that is awake after all (one whose log misses the commit it was told, or one
        that a late commit broadcast woke after its quiesce heartbeat). Left without heartbeats,
        it times out; its pre-vote wakes the leader, which heartbeats it and goes quiet again,
        and the lease (the other voters heard the leader) keeps the term. Without pre-vote or
        without the lease that timeout would start a real election, so there every answer
        wakes the leader, as it always did. A follower held dead wakes it either way.
        """
        if isinstance(message, Heartbeat) and message.quiesce:
            return True
        if not (self.config.pre_vote and self.config.check_quorum):
            return False
        if held_dead or self.role is not Role.LEADER or message.term != self.term:
            return False
        progress = self.progress.get(message.source)
        if progress is None or progress.match_index != self.log.last_index():
            return False
        if isinstance(message, HeartbeatResponse):
            return True
        return (
            isinstance(message, AppendResponse)
            and message.success
            and message.match_index <= progress.match_index
        )

    def _quiesce(self) -> None:
        for node, progress in self.progress.items():
            if node != self.node_id:
                # As every heartbeat: at most the follower's match index. A follower left out as
                # dead may hold a divergent suffix of an older term at those indexes; a commit
                # index beyond its match would commit that suffix there.
                commit = min(progress.match_index, self.commit_index)
                self._send(Heartbeat(self.node_id, node, self.term, commit, quiesce=True))
        self._quiescent = True
        self._counters["quiesced"] += 1

    def _wake(self) -> None:
        if not self._quiescent:
            return
        self._quiescent = False
        self._counters["woken"] += 1
        # A fresh election timeout from now: the quiet period says nothing about a leader's (or
        # a majority's) absence, the liveness layer watched for that meanwhile. A leader keeps
        # its followers' `recent_active` flags for the same reason, but a follower reported dead
        # loses its flag (`report_peer_dead`), so the group stays awake while it is gone.
        self._election_elapsed = 0

    def _quorum_active(self) -> bool:
        active = {node: progress.recent_active for node, progress in self.progress.items()}
        active[self.node_id] = True
        for progress in self.progress.values():
            progress.recent_active = False
        return quorum.has_quorum(self.configuration.voters, active)

    # --- terms, roles and elections (§5.1, §5.2) -----------------------------------------------

    def _step_term(self, message: Message) -> bool:
        """Apply the term rules of §5.1; False if the message must be dropped afterwards."""
        if message.term > self.term:
            if isinstance(message, VoteRequest):
                # Leader lease (thesis §4.2.3, §6.2): while we hear from a live leader, a higher
                # term candidate is a disruptive (partitioned or removed) node; ignore it. A
                # leadership transfer is the one legitimate exception. Between voters the lease
                # comes with check_quorum (etcd), which makes a leader that lost its majority step
                # down: otherwise it would keep the followers it still reaches in the lease, and
                # out of a new election, for good. A candidate outside our voters (removed, and
                # not told) is ignored either way: ignoring a message is always safe, and once no
                # leader is heard from it is heard again.
                hearing_leader = (
                    self.leader_id != NODE_NONE
                    and self._election_elapsed < self.config.election_timeout_ticks
                )
                in_lease = hearing_leader and (
                    self.config.check_quorum or message.source not in self.configuration.voters
                )
                if in_lease and not message.transfer:
                    return False
                if message.pre_vote:
                    return True  # a pre-vote never changes our term (thesis §9.6)
            if isinstance(message, VoteResponse) and message.pre_vote and message.granted:
                # A granted pre-vote carries the term we would campaign in, not a newer leader's.
                return True
            leader = (
                message.source
                if isinstance(message, AppendRequest | Heartbeat | InstallSnapshot)
                else NODE_NONE
            )
            self._become_follower(message.term, leader)
            return True
        if message.term < self.term:
            if isinstance(message, AppendRequest | Heartbeat):
                # A stale leader (e.g. healed from a partition) would never learn of our term with
                # pre-vote/check-quorum on, as we do not campaign against it: tell it (etcd).
                self._send(AppendResponse(self.node_id, message.source, self.term, False, -1))
            elif isinstance(message, VoteRequest) and message.pre_vote:
                self._send(VoteResponse(self.node_id, message.source, self.term, False, True))
            return False
        return True

    def _handle_vote_request(self, message: VoteRequest) -> None:
        # §5.2: one vote per term, first come first served; §5.4.1: only for an up-to-date log.
        # A pre-vote is granted on the same log check for any future term, without recording it.
        can_vote = (
            self.vote == message.source
            or (self.vote == NODE_NONE and self.leader_id == NODE_NONE)
            or (message.pre_vote and message.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(message.last_index, message.last_term):
            term = message.term if message.pre_vote else self.term
            self._send(VoteResponse(self.node_id, message.source, term, True, message.pre_vote))
            if not message.pre_vote:
                self.vote = message.source
                # Granting a vote resets the timer, so we do not compete with our own candidate.
                self._election_elapsed = 0
        else:
            self._send(
                VoteResponse(self.node_id, message.source, self.term, False, message.pre_vote)
            )

    def _hup(self, *, transfer: bool) -> None:
        if not self._is_voter():
            return
        if self.config.pre_vote and not transfer:
            self._campaign(pre_vote=True, transfer=False)
        else:
            self._campaign(pre_vote=False, transfer=transfer)

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        self._counters["elections_started"] += 1
        if pre_vote:
            # Pre-vote: ask at term + 1 without adopting it, so a lost pre-vote costs nothing.
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            self._step_role = self._step_candidate
            term = self.term + 1
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self._step_role = self._step_candidate
            self.vote = self.node_id
            term = self.term
        self._votes = {self.node_id: True}
        if self._poll() is not quorum.VoteResult.PENDING:
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for voter in self.configuration.voters:
            if voter != self.node_id:
                self._send(
                    VoteRequest(
                        self.node_id, voter, term, last_index, last_term, pre_vote, transfer
                    )
                )

    def _poll(self) -> quorum.VoteResult:
        result = quorum.vote_result(self.configuration.voters, self._votes)
        if result is quorum.VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
        elif result is quorum.VoteResult.LOST:
            self._become_follower(self.term, NODE_NONE)
        return result

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NODE_NONE
        self.leader_id = NODE_NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_election_timeout()
        self._quiescent = False
        self._votes = {}
        self.progress = {}
        self._transfer_target = NODE_NONE
        self._uncommitted.clear()
        self._uncommitted_bytes = 0
        self._replication_pending = False
        self._commit_broadcast_pending = False

    def _reset_election_timeout(self) -> None:
        # Randomized timeouts make split votes rare and short (§5.2).
        timeout = self.config.election_timeout_ticks
        self._randomized_election_timeout = timeout + self._rng.randrange(timeout)

    def _become_follower(self, term: int, leader_id: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self._step_role = self._step_follower
        self.leader_id = leader_id

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self._step_role = self._step_leader
        self.leader_id = self.node_id
        self._counters["elections_won"] += 1
        last_index = self.log.last_index()
        for node in self.configuration.members:
            self._add_progress(node, last_index + 1)
        self_progress = self.progress.get(self.node_id)
        if self_progress is not None:
            self_progress.maybe_update(self.durable_index)
            self_progress.become_replicate()
        # No configuration change until this leader commits an entry of its own term (the
        # thesis's single-server fix): everything up to here may hide an uncommitted change.
        self._pending_configuration_index = last_index
        # §8: a leader commits a no-op at the start of its term, because entries of earlier terms
        # are only committed indirectly, through an entry of the current term (§5.4.2).
        noop = batch_codec.build_control_batch(
            batch_codec.ControlType.LEADER_NOOP, b"", timestamp_ms=self.now_ms
        )
        self._append_as_leader(assign_entry(noop, base_index=last_index + 1, term=self.term))

    def _add_progress(self, node: int, next_index: int) -> None:
        self.progress[node] = Progress(
            next_index=next_index,
            messages_max=self.config.inflight_messages_max,
            bytes_max=self.config.inflight_bytes_max,
        )

    def _is_voter(self) -> bool:
        return self.node_id in self.configuration.voters

    # --- per-role message handling -------------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        if isinstance(message, AppendRequest):
            self._election_elapsed = 0
            self.leader_id = message.source
            self._handle_append(message)
        elif isinstance(message, Heartbeat):
            self._election_elapsed = 0
            self.leader_id = message.source
            # The leader sends min(its commit, our match): a prefix we share with it.
            self._commit_to(min(message.commit_index, self.log.last_index()))
            if (
                message.quiesce
                and self.config.quiesce
                and self.commit_index == message.commit_index
            ):
                # The leader went quiet holding this commit as its last index, and so do we: stop
                # the election timer. No answer (the leader expects none); anything else we
                # would have to say, we say by waking it.
                self._quiescent = True
            else:
                self._send(HeartbeatResponse(self.node_id, message.source, self.term))
        elif isinstance(message, InstallSnapshot):
            self._election_elapsed = 0
            self.leader_id = message.source
            self._handle_snapshot(message)
        elif isinstance(message, TimeoutNow):
            # Leadership transfer (thesis §3.10): skip the timer and the pre-vote.
            self._hup(transfer=True)

    def _step_candidate(self, message: Message) -> None:
        if isinstance(message, AppendRequest | Heartbeat | InstallSnapshot):
            # A leader exists in our term (§5.2): concede and handle the message as a follower.
            self._become_follower(self.term, message.source)
            self._step_follower(message)
        elif isinstance(message, VoteResponse):
            if message.pre_vote != (self.role is Role.PRE_CANDIDATE):
                return
            if message.pre_vote and message.granted and message.term != self.term + 1:
                # A grant carries the term it was asked for; one from an earlier round (delayed
                # or duplicated) says nothing about this one and must not win it (thesis §9.6).
                return
            self._votes.setdefault(message.source, message.granted)
            self._poll()

    def _step_leader(self, message: Message) -> None:
        progress = self.progress.get(message.source)
        if progress is None:
            return
        progress.recent_active = True
        if isinstance(message, AppendResponse):
            if message.success:
                self._handle_append_success(message, progress)
            else:
                self._handle_append_rejection(message, progress)
        elif isinstance(message, HeartbeatResponse):
            # A follower in probe state gets its next probe on each heartbeat round trip, and a
            # full pipeline frees one slot: if an AppendRequest was lost, the follower's rejection
            # of the next one is what gets replication going again (etcd).
            progress.probe_sent = False
            if progress.state is ProgressState.REPLICATE and progress.inflights.full():
                progress.inflights.free_first()
            if progress.match_index < self.log.last_index():
                self._send_append(message.source)

    # --- replication, follower side (§5.3) -----------------------------------------------------

    def _handle_append(self, message: AppendRequest) -> None:
        if message.prev_index < self.commit_index:
            # Everything up to our commit index is committed, so it matches the leader: answer with
            # it rather than risk truncating a committed entry on a reordered old message.
            self._send(
                AppendResponse(self.node_id, message.source, self.term, True, self.commit_index)
            )
            return
        if not self.log.match_term(message.prev_index, message.prev_term):
            # Fast backtracking: hint the last index at or before prev_index whose term could be
            # shared with the leader, so one round trip skips a whole divergent term.
            hint_index = self.log.find_conflict_by_term(
                min(message.prev_index, self.log.last_index()), message.prev_term
            )
            hint_term = self.log.term(hint_index)
            self._send(
                AppendResponse(
                    self.node_id,
                    message.source,
                    self.term,
                    False,
                    message.prev_index,
                    hint_index,
                    hint_term,
                )
            )
            return
        self._append_from_leader(message.entries)
        last_new_index = message.entries[-1].index if message.entries else message.prev_index
        # Clamp to the last entry this message proved we share: beyond it our log may diverge.
        self._commit_to(min(message.commit_index, last_new_index))
        self._send(AppendResponse(self.node_id, message.source, self.term, True, last_new_index))

    def _append_from_leader(self, entries: tuple[Entry, ...]) -> None:
        # Skip entries we already have; the first mismatch and everything after it is replaced
        # (§5.3). Same term at the same index means the same batch (one leader per term assigns
        # each offset once), so comparing index and term is enough (log matching property).
        for position, entry in enumerate(entries):
            if self.log.match_term(entry.index, entry.term):
                continue
            if entry.base_index <= self.log.last_index():
                assert entry.base_index > self.commit_index, (
                    f"node {self.node_id}: leader overwrites committed offset {entry.base_index}"
                )
                self._counters["entries_truncated"] += 1
                self.durable_index = min(self.durable_index, entry.base_index - 1)
                self._truncate_configurations(entry.base_index)
            new_entries = entries[position:]
            self.log.append(new_entries)
            self._track_configurations(new_entries)
            return

    def _handle_snapshot(self, message: InstallSnapshot) -> None:
        snapshot = message.snapshot
        if snapshot.index <= self.commit_index:
            answer = self.commit_index
        elif self.log.match_term(snapshot.index, snapshot.term):
            # We already hold the snapshot's last entry: just fast-forward the commit index.
            self._commit_to(snapshot.index)
            answer = snapshot.index
        else:
            # Behind the leader's log start (§7): drop our log and restart it where the snapshot
            # ends. For a data partition `data` is empty and this is a log reset to start offset.
            self.log.restore(snapshot)
            self.commit_index = snapshot.index
            self.durable_index = min(self.durable_index, snapshot.index)
            self._configurations = [(snapshot.index, snapshot.configuration)]
            answer = snapshot.index
        self._send(AppendResponse(self.node_id, message.source, self.term, True, answer))

    def _commit_to(self, index: int) -> None:
        if index > self.commit_index:
            assert index <= self.log.last_index(), (index, self.log.last_index())
            self.commit_index = index

    # --- replication, leader side --------------------------------------------------------------

    def _check_can_propose(self, size_bytes: int) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self._transfer_target != NODE_NONE:
            self._counters["proposals_dropped"] += 1
            raise ProposalDroppedError(
                f"leadership is being transferred to node {self._transfer_target}"
            )
        if self._uncommitted_bytes + size_bytes > self.config.uncommitted_bytes_max:
            self._counters["proposals_dropped"] += 1
            raise ProposalDroppedError(
                f"{self._uncommitted_bytes} bytes are uncommitted; uncommitted_bytes_max is "
                f"{self.config.uncommitted_bytes_max}: wait for replication to catch up"
            )

    def _append_as_leader(self, entry: Entry) -> None:
        self.log.append_one(entry)
        if entry.kind is EntryKind.CONFIGURATION:
            self._track_configurations((entry,))
        self._uncommitted.append((entry.index, entry.size_bytes))
        self._uncommitted_bytes += entry.size_bytes
        # Sending is deferred to ready(): every proposal between two Readys shares one
        # AppendRequest per follower (batching), and the leader's own copy counts once persisted.
        self._replication_pending = True

    def _handle_append_success(self, message: AppendResponse, progress: Progress) -> None:
        if not progress.maybe_update(message.match_index):
            return
        if progress.state is ProgressState.PROBE:
            progress.become_replicate()
        elif progress.state is ProgressState.SNAPSHOT:
            if progress.match_index >= progress.pending_snapshot_index:
                progress.become_probe()
                progress.become_replicate()
        else:
            progress.inflights.free_to(progress.match_index)
        if self._maybe_commit() and self.config.commit_broadcast:
            self._commit_broadcast_pending = True
        if self.role is not Role.LEADER:
            return  # committing our own removal stepped us down
        while self._send_append(message.source, send_if_empty=False):
            pass
        if (
            message.source == self._transfer_target
            and progress.match_index == self.log.last_index()
        ):
            self._send(TimeoutNow(self.node_id, message.source, self.term))

    def _handle_append_rejection(self, message: AppendResponse, progress: Progress) -> None:
        if message.match_index < 0:
            return  # a higher-term notice; the term check already handled it
        probe_index = self.log.find_conflict_by_term(message.hint_index, message.hint_term)
        if not progress.maybe_decrease_to(message.match_index, probe_index + 1):
            return
        if progress.state is ProgressState.REPLICATE:
            progress.become_probe()
        # prev_index of the next probe must be an entry index of OUR log: move next_index back to
        # the start of the batch it falls in (batches of different leaders differ in size).
        progress.next_index = max(
            self.log.batch_start(progress.next_index), progress.match_index + 1
        )
        self._send_append(message.source)

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a majority of voters durably hold (§5.3, §5.4.2)."""
        match = {node: progress.match_index for node, progress in self.progress.items()}
        index = quorum.committed_index(self.configuration.voters, match)
        if index <= self.commit_index or not self._may_commit(index):
            return False
        self.commit_index = index
        while self._uncommitted and self._uncommitted[0][0] <= index:
            self._uncommitted_bytes -= self._uncommitted.popleft()[1]
        self._on_leader_commit()
        return True

    def _may_commit(self, index: int) -> bool:
        # §5.4.2 (Figure 8): a replica count only commits an entry of the current term; earlier
        # terms' entries are committed indirectly by it. Test-only subclasses override this hook.
        return self.log.term(index) == self.term

    def _on_leader_commit(self) -> None:
        # Thesis §4.2.2: a leader that removed itself leads until the change commits, then steps
        # down so the remaining voters elect a leader among themselves.
        if not self._is_voter() and self._configurations[-1][0] <= self.commit_index:
            # Tell the followers the commit first, so they know the new configuration is in force.
            self._broadcast_append(send_if_empty=True)
            self._become_follower(self.term, NODE_NONE)

    def _broadcast_append(self, *, send_if_empty: bool) -> None:
        for node in self.progress:
            if node != self.node_id:
                self._send_append(node, send_if_empty=send_if_empty)

    def _broadcast_heartbeat(self) -> None:
        for node, progress in self.progress.items():
            if node != self.node_id:
                commit = min(progress.match_index, self.commit_index)
                self._send(Heartbeat(self.node_id, node, self.term, commit))

    def _send_append(self, node: int, *, send_if_empty: bool = True) -> bool:
        """Send the next AppendRequest (or snapshot) to `node` if flow control allows."""
        progress = self.progress[node]
        if progress.is_paused():
            return False
        prev_index = progress.next_index - 1
        try:
            prev_term = self.log.term(prev_index)
            # A throttled follower's request is cut to its budget (at least one entry goes).
            size_max = self._send_throttle.allowance(node, self.config.append_bytes_max)
            entries = self.log.entries(progress.next_index, self.log.last_index() + 1, size_max)
        except CompactedError:
            return self._send_snapshot(node, progress)
        if not entries and not send_if_empty:
            return False
        if entries and not self._send_throttle.may_send(node):
            return False  # throttled: the next tick's refill resumes it
        self._send(
            AppendRequest(
                self.node_id,
                node,
                self.term,
                prev_index,
                prev_term,
                tuple(entries),
                self.commit_index,
            )
        )
        if entries:
            size_bytes = sum(entry.size_bytes for entry in entries)
            progress.sent_entries(entries[-1].index, size_bytes)
            self._send_throttle.spent(node, size_bytes)
        elif progress.state is ProgressState.PROBE:
            progress.probe_sent = True
        return bool(entries)

    def _send_snapshot(self, node: int, progress: Progress) -> bool:
        # The follower needs entries below our log start (§7): send the snapshot, or for a data
        # partition an empty one meaning "reset your log to my start offset".
        if not progress.recent_active:
            return False  # do not stream a snapshot to a node that may be down
        snapshot = self.log.storage.snapshot()
        progress.become_snapshot(snapshot.index)
        self._counters["snapshots_sent"] += 1
        self._send(InstallSnapshot(self.node_id, node, self.term, snapshot))
        return False

    # --- membership (thesis §4.1, one server at a time) ----------------------------------------

    def _check_configuration_change(self, new: Configuration) -> None:
        if self._pending_configuration_index > self.commit_index:
            raise ConfigurationChangeError(
                "a configuration change (or this leader's first entry) is not yet committed"
            )
        match_index = {node: progress.match_index for node, progress in self.progress.items()}
        membership.check_change(
            self.configuration, new, match_index=match_index, commit_index=self.commit_index
        )

    def _track_configurations(self, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            if entry.kind is EntryKind.CONFIGURATION:
                assert entry.configuration is not None
                self._configurations.append((entry.index, entry.configuration))
                self._pending_configuration_index = max(
                    self._pending_configuration_index, entry.index
                )
                self._apply_configuration()

    def _truncate_configurations(self, offset: int) -> None:
        # A truncated configuration entry never happened: fall back to the previous one.
        changed = False
        while len(self._configurations) > 1 and self._configurations[-1][0] >= offset:
            self._configurations.pop()
            changed = True
        if changed:
            self._apply_configuration()

    def _apply_configuration(self) -> None:
        if self.role is not Role.LEADER:
            return
        members = self.configuration.members
        for node in members:
            if node not in self.progress:
                self._add_progress(node, self.log.last_index() + 1)
        for node in [node for node in self.progress if node not in members]:
            if node != self.node_id:
                del self.progress[node]

    # --- plumbing ------------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self._counters["messages_sent"] += 1
        self._messages.append(message)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit_index)

    def _check_not_in_ready(self) -> None:
        assert self._ready_in_flight is None, "call advance() before feeding the core again"
