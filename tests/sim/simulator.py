"""Deterministic simulation of a Raft group: one seed drives the network, the disks, the clocks,
crashes, partitions, membership changes and the clients (TigerBeetle's VOPR, etcd's `network`).

A run is a safety phase with every fault enabled, then a liveness phase with faults healed, then
(with pre-vote) a stability phase that isolates one follower. Half the seeds run without the
broadcast of each new commit index (the partition groups' setting), and half with quiescence
(docs/raft.md): every node then also keeps a `PeerLiveness` fed by node-level heartbeats over the
same faulty network (as the transport's link liveness does), reports dead peers to its core, and
the run ends with a quiet-failover phase: the group goes quiet, then its leader crashes or is cut
off, and the rest must elect a leader (the quiet group must not wait for heartbeats forever).

After EVERY event the `Checker` (checkers.py) verifies Raft's safety properties; a violation raises
`SimulationFailure` with the seed and the command that replays it. Nothing here reads a real clock
or an unseeded random source, and nothing iterates a set or a str-keyed dict to make a decision.

The driver side (`_process_ready`) behaves like `broker/raft/driver.py`: a Ready that `must_sync`
waits for an fsync, but its AppendRequests leave at once (thesis §10.2.1, the real driver's rule);
a Ready that need not sync is sent right away and its writes stay unsynced until a later fsync, so
a crash may lose them. A core that under-reports `must_sync` or counts its own unsynced entry
therefore shows up as a message that outran its disk or a commit that is not on a durable majority.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable
from typing import Any

from broker.raft.config import RaftConfig
from broker.raft.core import RaftCore, Ready, Role
from broker.raft.errors import ConfigurationChangeError, NotLeaderError, ProposalDroppedError
from broker.raft.liveness import PeerLiveness
from broker.raft.messages import AppendRequest, Configuration, Entry, Message, describe
from broker.raft.storage import MemoryStorage
from tests.sim.checkers import Checker, SimulationFailure, apply_digest
from wire import batch as batch_codec

# Virtual time units per tick at the nominal tick rate; nodes tick at 80%-120% of it.
TICK_TIME = 100
# Client payloads proposed but not yet seen committed; no new ones beyond this (a producer's
# bounded in-flight requests). It also bounds the backlog the liveness phase must drain.
CLIENT_PENDING_MAX = 20
# The liveness bound's catch-up allowance (Simulation._run_until_live): checked in windows of
# this fraction of the bound, extended a window at a time up to this many times the bound.
CATCH_UP_WINDOWS = 6
CATCH_UP_CAP = 2
# Events a failure report prints: enough to see the crash, election or message that broke it.
TRACE_LINES_REPORTED = 60
# Quiescence is drawn from its own generator (seeded from the run's seed), so turning it on for
# half the seeds leaves every other option of those seeds as it was.
QUIESCE_SEED_SALT = 0x51E7
# The same for the commit broadcast: half the seeds run the partition groups' setting (followers
# learn a new commit index only with the next append or heartbeat, RaftConfig.commit_broadcast).
COMMIT_BROADCAST_SEED_SALT = 0xC0B7


@dataclasses.dataclass(frozen=True)
class SimOptions:
    """A run's shape, drawn from the seed (TigerBeetle's options_swarm)."""

    voter_count: int
    spare_count: int  # nodes outside the initial configuration, for membership changes
    election_timeout_ticks: int
    heartbeat_ticks: int
    pre_vote: bool
    check_quorum: bool
    drop_probability: float
    duplicate_probability: float
    delay_max: int
    fault_interval: int  # mean virtual time between fault events
    proposal_interval: int
    safety_ticks: int
    liveness_ticks: int
    compaction: bool
    membership_changes: bool
    snapshot_data: bool  # opaque snapshot bytes (state-machine group) vs. empty (log reset)
    inflight_messages_max: int
    append_bytes_max: int
    crash_after_propose_probability: float
    crash_after_commit_probability: float
    crash_after_election_probability: float
    uncommitted_bytes_max: int
    downtime_mean: int  # a crashed node restarts after about this long (virtual time)
    # Quiescence with link liveness (drawn separately, see QUIESCE_SEED_SALT).
    quiesce: bool = False
    # Off: no broadcast of each new commit index (drawn separately, COMMIT_BROADCAST_SEED_SALT).
    commit_broadcast: bool = True

    @classmethod
    def from_seed(cls, rng: random.Random) -> SimOptions:
        election_timeout = rng.choice([5, 10, 10, 20])
        return cls(
            voter_count=rng.choice([3, 3, 5]),
            spare_count=rng.choice([0, 1, 2]),
            election_timeout_ticks=election_timeout,
            heartbeat_ticks=rng.choice([1, 1, 2]),
            pre_vote=rng.random() < 0.75,
            check_quorum=rng.random() < 0.75,
            drop_probability=rng.choice([0.0, 0.02, 0.1, 0.2]),
            duplicate_probability=rng.choice([0.0, 0.02, 0.1]),
            delay_max=rng.choice([20, 60, 150, 400]),
            fault_interval=rng.choice([150, 400, 1500]),
            proposal_interval=rng.choice([30, 100, 300]),
            safety_ticks=rng.choice([300, 500]),
            liveness_ticks=40 * election_timeout + 100,
            compaction=rng.random() < 0.5,
            membership_changes=rng.random() < 0.5,
            snapshot_data=rng.random() < 0.5,
            inflight_messages_max=rng.choice([1, 4, 64]),
            append_bytes_max=rng.choice([1, 200, 4096, 1 << 20]),
            crash_after_propose_probability=rng.choice([0.0, 0.01, 0.05]),
            crash_after_commit_probability=rng.choice([0.0, 0.01, 0.05]),
            crash_after_election_probability=rng.choice([0.0, 0.1, 0.3]),
            uncommitted_bytes_max=rng.choice([2048, 65536, 1 << 26]),
            downtime_mean=rng.choice([200, 1000, 5000]),
        )


class SimDisk:
    """A node's storage: what the core reads (`view`) and what survives a crash (`durable`).

    Writes go to the view at once and are remembered as unsynced operations; `sync` makes them
    durable. A crash keeps the durable state plus, as a real page cache may have flushed some of
    it, a random prefix of the unsynced operations whose last one may be torn (a prefix of its
    batches: recovery truncates a half-written batch at its CRC).
    """

    def __init__(self, configuration: Configuration) -> None:
        self.durable = MemoryStorage(configuration)
        self.view = self.durable.copy()
        self.unsynced: list[tuple[str, Any]] = []
        # Bumped whenever `durable` changes (sync, crash, compaction), so the checker re-verifies
        # that committed entries are still on a durable majority only when that could change.
        self.durable_version = 0

    def write(self, ready: Ready, on_append: Callable[[MemoryStorage, list[Entry]], None]) -> None:
        if ready.snapshot is not None:
            on_append(self.view, [])  # the log changed: let the checker look again
            self._apply(self.view, ("snapshot", ready.snapshot))
            self.unsynced.append(("snapshot", ready.snapshot))
        if ready.entries:
            self._apply(self.view, ("append", list(ready.entries)))
            self.unsynced.append(("append", list(ready.entries)))
            on_append(self.view, list(ready.entries))
        if ready.hard_state is not None:
            self._apply(self.view, ("hard_state", ready.hard_state))
            self.unsynced.append(("hard_state", ready.hard_state))

    def sync(self) -> None:
        for operation in self.unsynced:
            self._apply(self.durable, operation)
        self.unsynced = []
        self.durable_version += 1

    def crash(self, rng: random.Random) -> None:
        survivors = rng.randrange(len(self.unsynced) + 1) if rng.random() < 0.5 else 0
        for operation in self.unsynced[:survivors]:
            self._apply(self.durable, operation)
        if survivors < len(self.unsynced) and rng.random() < 0.5:
            kind, payload = self.unsynced[survivors]
            if kind == "append" and len(payload) > 1:
                self._apply(self.durable, ("append", payload[: rng.randrange(1, len(payload))]))
        self.unsynced = []
        self.view = self.durable.copy()
        self.durable_version += 1

    def holds_unsynced_log_writes(self) -> bool:
        """Whether an append or snapshot awaits an fsync (a lazy hard-state write may linger)."""
        return any(kind != "hard_state" for kind, _ in self.unsynced)

    def compact(self, index: int, data: bytes) -> None:
        # Retention only touches synced data, so the view and the durable state agree on it.
        assert not self.holds_unsynced_log_writes()
        self.durable.compact(index, data)
        self.view.compact(index, data)
        self.durable_version += 1

    @staticmethod
    def _apply(storage: MemoryStorage, operation: tuple[str, Any]) -> None:
        kind, payload = operation
        if kind == "snapshot":
            storage.apply_snapshot(payload)
        elif kind == "append":
            storage.append(payload)
        else:
            storage.set_hard_state(payload)


@dataclasses.dataclass
class SimNode:
    node_id: int
    disk: SimDisk
    tick_period: int
    fsync_latency: int
    core: RaftCore | None = None
    # Readys written but not yet covered by an fsync: their messages, commits and log end wait.
    waiting: list[Ready] = dataclasses.field(default_factory=list)
    fsync_scheduled: bool = False
    applied_index: int = -1
    # The state machine: a digest chained over every applied entry (checkers.apply_digest), so
    # two nodes that applied different prefixes, or a snapshot of the wrong prefix, differ.
    state: bytes = b""
    # Ticks this incarnation of the node has taken: the clock of its check-quorum deadline.
    ticks: int = 0
    # With quiescence: which peers this incarnation hears from (node heartbeats, any message).
    liveness: PeerLiveness | None = None


@dataclasses.dataclass
class Payload:
    """A client write: retried until it is seen committed; acknowledged once committed."""

    payload_id: int
    proposals: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (index, term)
    committed: bool = False


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        core_class: type[RaftCore] = RaftCore,
        trace: bool = False,
        quiesce: bool | None = None,
        commit_broadcast: bool | None = None,
    ) -> None:
        """`quiesce` forces quiescence on or off, `commit_broadcast` the broadcast of each new
        commit index (None: the seed draws it, half the seeds each)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = dataclasses.replace(
            SimOptions.from_seed(self.rng),
            quiesce=random.Random(seed ^ QUIESCE_SEED_SALT).random() < 0.5
            if quiesce is None
            else quiesce,
            commit_broadcast=random.Random(seed ^ COMMIT_BROADCAST_SEED_SALT).random() < 0.5
            if commit_broadcast is None
            else commit_broadcast,
        )
        # How the quiet-failover phase took the leader away ("crash", "isolate"), once it ran.
        self.quiet_failover: str | None = None
        self.core_class = core_class
        self.trace_enabled = trace
        self.trace_lines: list[str] = []
        self.time = 0
        self.sequence = 0
        self.events: list[tuple[int, int, str, Any]] = []
        options = self.options
        self.raft_config = RaftConfig(
            election_timeout_ticks=options.election_timeout_ticks,
            heartbeat_ticks=options.heartbeat_ticks,
            pre_vote=options.pre_vote,
            check_quorum=options.check_quorum,
            inflight_messages_max=options.inflight_messages_max,
            append_bytes_max=options.append_bytes_max,
            transfer_timeout_ticks=2 * options.election_timeout_ticks,
            uncommitted_bytes_max=options.uncommitted_bytes_max,
            quiesce=options.quiesce,
            commit_broadcast=options.commit_broadcast,
        )
        voters = list(range(1, options.voter_count + 1))
        self.node_ids = list(range(1, options.voter_count + options.spare_count + 1))
        self.bootstrap = Configuration.of(voters)
        self.nodes: dict[int, SimNode] = {}
        self.blocked: set[tuple[int, int]] = set()  # directed (source, target) links cut
        self.link_clock: dict[tuple[int, int], int] = {}  # last delivery time per link, healed
        self.payloads: list[Payload] = []
        self.proposal_owner: dict[tuple[int, int], Payload] = {}
        self.faults_enabled = True
        self.drop_probability = options.drop_probability
        self.checker = Checker(self)
        for node_id in self.node_ids:
            node = SimNode(
                node_id=node_id,
                disk=SimDisk(self.bootstrap),
                tick_period=self.rng.randrange(TICK_TIME * 8 // 10, TICK_TIME * 12 // 10),
                fsync_latency=self.rng.choice([1, 5, 20, 60]),
            )
            self.nodes[node_id] = node
            self._start(node)
            self._schedule(self.rng.randrange(node.tick_period), "tick", node_id)
        self._schedule(self._exponential(options.fault_interval), "fault", None)
        self._schedule(self._exponential(options.proposal_interval), "client", None)

    # --- running -------------------------------------------------------------------------------

    def run(self) -> None:
        """Safety phase, heal, liveness phase. Raises SimulationFailure on any violation."""
        try:
            self._run_until(self.options.safety_ticks * TICK_TIME)
            self._heal()
            self._run_until_live()
            if self.options.pre_vote:
                self._stability_phase()
            if self.options.quiesce:
                self._quiet_failover_phase()
        except SimulationFailure:
            raise
        except AssertionError as exc:
            raise SimulationFailure(
                self.seed,
                f"assertion in core or checker: {exc!r}\n{self.failure_report()}",
                invariant="core assertion",
            ) from exc

    def _run_until(
        self,
        end_time: int,
        *,
        stop_when_live: bool = False,
        stop_when: Callable[[], bool] | None = None,
    ) -> None:
        handlers = {
            "tick": self._on_tick,
            "deliver": self._on_deliver,
            "fsync": self._on_fsync,
            "client": self._on_client,
            "fault": self._on_fault,
            "crash": self._on_crash,
            "restart": self._on_restart,
            "alive": self._on_alive,
        }
        checker = self.checker
        while self.events and self.events[0][0] <= end_time:
            self.time, _, kind, payload = heapq.heappop(self.events)
            # Each event names the one node it can change (None: possibly several), so the checks
            # of unchanged nodes are skipped: the state they would check is what they checked.
            if kind in ("tick", "fsync"):
                checker.touched = payload
            elif kind == "alive":
                checker.touched = payload[1]
            else:
                checker.touched = payload.target if kind == "deliver" else None
            handlers[kind](payload)
            checker.after_step()
            if stop_when_live and checker.is_live():
                return
            if stop_when is not None and stop_when():
                return

    def _run_until_live(self) -> None:
        """Run until the group is live (`Checker.is_live`), within `liveness_ticks`, plus a
        catch-up allowance: a window at a time, up to `CATCH_UP_CAP` times the bound, for as long
        as one leader, in one term, keeps raising the lowest match index among its voters.

        A follower that diverged long ago catches up one entry per round trip when a message
        carries one entry and one is in flight (`append_bytes_max=1`, `inflight_messages_max=1`);
        over a healed network still near its 400 ms delay maximum, a correct core can need more
        than the bound for that alone (seeds 442155533 and 911465610, docs/raft.md). Elections
        that keep failing, or a leader that stops making progress, get no allowance, and the cap
        keeps the bound a bound.
        """
        bound = self.options.liveness_ticks * TICK_TIME
        window = max(bound // CATCH_UP_WINDOWS, TICK_TIME)
        end, cap = self.time + bound, self.time + CATCH_UP_CAP * bound
        reached = self.time
        while reached < end:
            mark = self._catch_up_mark()
            reached = min(reached + window, end)
            self._run_until(reached, stop_when_live=True)
            if self.checker.is_live():
                return
            if reached == end and end < cap and self._caught_up_since(mark):
                end = min(end + window, cap)
                self.trace(f"liveness: a follower is still catching up; bound extended to {end}")
        self.checker.check_liveness()

    def _catch_up_mark(self) -> tuple[int, int, int] | None:
        """(leader, term, lowest match index among its voters), or None without a leader."""
        leader = self._current_leader()
        if leader is None:
            return None
        lowest = min(
            leader.progress[voter].match_index if voter in leader.progress else -1
            for voter in leader.configuration.voters
        )
        return leader.node_id, leader.term, lowest

    def _caught_up_since(self, mark: tuple[int, int, int] | None) -> bool:
        now = self._catch_up_mark()
        return mark is not None and now is not None and now[:2] == mark[:2] and now[2] > mark[2]

    def _stability_phase(self) -> None:
        """Pre-vote (thesis §9.6): a follower cut off from a healthy leader must not raise its term
        while isolated and, with check-quorum, must rejoin without deposing the leader."""
        leader = self._current_leader()
        assert leader is not None, "the liveness phase ended with a live leader"
        followers = [voter for voter in leader.configuration.voters if voter != leader.node_id]
        if not followers:
            return
        isolated = self.rng.choice(followers)
        terms = {n: node.core.term for n, node in self.nodes.items() if node.core is not None}
        self.blocked = {(isolated, n) for n in self.node_ids} | {
            (n, isolated) for n in self.node_ids
        }
        self.trace(f"stability: isolate {isolated} from leader {leader.node_id}")
        self.checker.start_stability(leader, isolated)
        window = 3 * self.options.election_timeout_ticks * TICK_TIME
        self._run_until(self.time + window)
        self.checker.check_stable(leader, terms, isolated=isolated, rejoined=False)
        if not self.options.check_quorum:
            self.checker.end_stability()
            return  # without the lease, a rejoining node's pre-vote may legitimately win
        self.blocked = set()
        self.trace(f"stability: {isolated} rejoins")
        self._run_until_live()
        self.checker.check_stable(leader, terms, isolated=isolated, rejoined=True)
        self.checker.end_stability()

    def _quiet_failover_phase(self) -> None:
        """Quiescence with faults: once the healed group is quiet (no ticks, no heartbeats), its
        leader crashes or is cut off from everyone. The others hear of it only through their
        link liveness, and must still elect a leader all live voters follow; then the old leader
        comes back and the group must be live (and may go quiet) again."""
        bound = self.options.liveness_ticks * TICK_TIME
        self.blocked = set()  # the stability phase may leave its follower isolated
        self._run_until(self.time + bound, stop_when=self.checker.is_quiet)
        self.checker.check_quiet()
        leader = self._current_leader()
        assert leader is not None
        old = leader.node_id
        if len(leader.configuration.voters) < 3:
            return  # no majority survives the loss of the leader
        how = self.rng.choice(["crash", "isolate"])
        self.quiet_failover = how
        self.trace(f"quiet failover: {how} leader {old} of term {leader.term}")
        if how == "crash":
            self._crash(self.nodes[old], "quiet leader")
            self.events = [e for e in self.events if not (e[2] == "restart" and e[3] == old)]
            heapq.heapify(self.events)
        else:
            self.blocked = {(old, n) for n in self.node_ids} | {(n, old) for n in self.node_ids}
        self._run_until(self.time + bound, stop_when=lambda: self.checker.has_new_leader(old))
        self.checker.check_new_leader(old)
        self.blocked = set()
        if self.nodes[old].core is None:
            self._start(self.nodes[old])
        self.trace(f"quiet failover: {old} is back")
        self._run_until_live()

    def _schedule(self, delay: int, kind: str, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (self.time + max(0, delay), self.sequence, kind, payload))

    def _exponential(self, mean: int) -> int:
        return int(self.rng.expovariate(1.0 / mean)) + 1

    def trace(self, line: str) -> None:
        # Callers format lines only under `if self.trace_enabled` where that is costly (every
        # delivery); tracing is off for CI runs and on for the replay of a failing seed.
        if self.trace_enabled:
            self.trace_lines.append(f"{self.time:>8} {line}")

    # --- nodes ---------------------------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        node.core = self.core_class(
            node_id=node.node_id,
            storage=node.disk.view,
            config=self.raft_config,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        node.core.now_ms = self.time
        node.applied_index = node.core.applied_index
        node.state = self.checker.state_at(node.disk.view.snapshot(), node.node_id)
        node.ticks = 0
        node.waiting = []
        if self.options.quiesce:
            peers = [peer for peer in self.node_ids if peer != node.node_id]
            timeout = self.options.election_timeout_ticks
            node.liveness = PeerLiveness(peers, timeout_ticks=timeout)
        self.checker.on_start(node)
        self._process_ready(node)

    def _process_ready(self, node: SimNode) -> None:
        """The driver loop of RaftDriver._commit_round: write each Ready, then either send it at
        once (nothing to sync, nothing queued before it) or queue it behind one fsync, sending its
        AppendRequests now (a leader replicates while its own fsync runs, thesis §10.2.1)."""
        core = node.core
        assert core is not None
        on_append = self._on_append_for(node)
        while core.has_ready():
            ready = core.ready()
            if ready.snapshot is not None:
                self.checker.check_snapshot(node.node_id, ready.snapshot, "installed")
            node.disk.write(ready, on_append)
            core.advance(ready)
            if not (ready.must_sync or node.waiting):
                self._complete(node, ready, appends_sent=False)
                continue
            node.waiting.append(ready)
            for message in ready.messages:
                if isinstance(message, AppendRequest):
                    self._send(message)
            if not node.fsync_scheduled:
                node.fsync_scheduled = True
                latency = self.rng.randrange(1, 2 * node.fsync_latency + 1)
                self._schedule(latency, "fsync", node.node_id)

    def _on_append_for(self, node: SimNode) -> Callable[[MemoryStorage, list[Entry]], None]:
        checker = self.checker

        def on_append(view: MemoryStorage, entries: list[Entry]) -> None:
            checker.on_append(node, view, entries)

        return on_append

    def _complete(self, node: SimNode, ready: Ready, *, appends_sent: bool) -> None:
        """After the fsync covering `ready`: send its messages (but the AppendRequests that left
        before the fsync), apply its commits, and report the log end durable."""
        assert node.core is not None
        term = node.core.term
        for message in ready.messages:
            if appends_sent and isinstance(message, AppendRequest):
                continue
            if message.term < term:
                # Stale by now (docs/raft.md, the Ready contract): while this Ready waited for
                # its fsync the node took a newer term, whose leader's append may have replaced
                # the entries an acknowledgement here names (seeds 331505385, 1175484141).
                if self.trace_enabled:
                    self.trace(f"{node.node_id}: stale, not sent: {describe(message)}")
                continue
            self._send(message)
        if ready.snapshot is not None:
            node.applied_index = max(node.applied_index, ready.snapshot.index)
            node.state = self.checker.state_at(ready.snapshot, node.node_id)
        for entry in ready.committed_entries:
            node.state = apply_digest(node.state, entry)
            self.checker.on_apply(node, entry)
            node.applied_index = entry.index
        node.core.persisted(ready.last_index, ready.last_term)

    def _on_fsync(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.fsync_scheduled = False
        if node.core is None:
            return
        node.disk.sync()
        waiting, node.waiting = node.waiting, []
        for ready in waiting:
            self._complete(node, ready, appends_sent=True)
        self._process_ready(node)

    def _on_tick(self, node_id: int) -> None:
        node = self.nodes[node_id]
        self._schedule(node.tick_period, "tick", node_id)
        if node.core is None:
            return
        node.ticks += 1
        node.core.tick(now_ms=self.time)
        self._process_ready(node)
        if node.liveness is not None:
            self._tick_liveness(node)

    def _tick_liveness(self, node: SimNode) -> None:
        """The transport's side of quiescence: one node heartbeat per peer per tick over the
        faulty network, and dead peers reported to the core."""
        for peer in node.liveness.peers if node.liveness is not None else ():
            self._send_alive(node.node_id, peer)
        assert node.liveness is not None and node.core is not None
        for peer in node.liveness.tick():
            self._report_peer_dead(node, peer, "silent")

    def _report_peer_dead(self, node: SimNode, peer: int, why: str) -> None:
        assert node.core is not None
        self.trace(f"{node.node_id}: peer {peer} dead ({why})")
        self.checker.on_peer_dead(node.node_id, peer)
        node.core.report_peer_dead(peer)
        self._process_ready(node)

    def _heard_from(self, node: SimNode, peer: int) -> None:
        """The liveness hears `peer`; back from the dead, it is reported alive to the core."""
        assert node.liveness is not None and node.core is not None
        if node.liveness.heard_from(peer):
            self.trace(f"{node.node_id}: peer {peer} alive again")
            node.core.report_peer_alive(peer)
            self._process_ready(node)

    def _send_alive(self, source: int, target: int) -> None:
        if (source, target) in self.blocked:
            return
        if self.faults_enabled and self.rng.random() < self.drop_probability:
            return
        self._schedule(self.rng.randrange(1, self.options.delay_max + 1), "alive", (source, target))

    def _on_alive(self, link: tuple[int, int]) -> None:
        source, target = link
        node = self.nodes[target]
        if node.core is not None and node.liveness is not None:
            self._heard_from(node, source)

    def _on_deliver(self, message: Message) -> None:
        node = self.nodes[message.target]
        core = node.core
        if core is None:
            return
        if self.trace_enabled:
            self.trace(describe(message))
        checker = self.checker
        checker.touched = node.node_id
        if node.liveness is not None:
            self._heard_from(node, message.source)  # any frame on the link counts
        stale = checker.before_deliver(node, core, message)
        core.step(message)
        if stale is not None:
            # Judged on the step alone: sending its answer may meet a blocked link, whose
            # unreachable notice (progress to probe) is the transport's doing, not the stale
            # message's (seed 1717396407).
            checker.check_stale_ignored(node, message, stale)
        self._process_ready(node)

    def _send(self, message: Message) -> None:
        self.checker.on_send(self.nodes[message.source], message)
        if (message.source, message.target) in self.blocked:
            source = self.nodes[message.source].core
            if source is not None and self.rng.random() < 0.5:
                # Half the time the transport notices (connection refused, queue full) and says so.
                source.report_unreachable(message.target)
            return
        if self.faults_enabled and self.rng.random() < self.drop_probability:
            return
        copies = 1
        if self.faults_enabled and self.rng.random() < self.options.duplicate_probability:
            copies = 2
        for _ in range(copies):
            # Occasional long delays reorder messages well beyond the usual jitter.
            delay = self.rng.randrange(1, self.options.delay_max + 1)
            if self.faults_enabled and self.rng.random() < 0.02:
                delay *= 10
            if not self.faults_enabled:
                # Healed: each link is a TCP-like stream again, delivering in order.
                link = (message.source, message.target)
                delay = max(delay, self.link_clock.get(link, 0) - self.time)
                self.link_clock[link] = self.time + delay
            self._schedule(delay, "deliver", message)

    # --- clients -------------------------------------------------------------------------------

    def _on_client(self, _: Any) -> None:
        self._schedule(self._exponential(self.options.proposal_interval), "client", None)
        leader = self._any_leader() if self.faults_enabled else self._current_leader()
        if leader is None:
            return
        pending = [payload for payload in self.payloads if not payload.committed]
        # Retry a payload whose last proposal went to a term that has since ended (outcome unknown).
        retry = [
            payload
            for payload in pending
            if not payload.proposals or payload.proposals[-1][1] < leader.term
        ]
        if retry:
            payload = retry[0]
        elif len(pending) >= CLIENT_PENDING_MAX:
            return  # clients bound their in-flight writes, as producers do
        elif self.faults_enabled or len(self.payloads) < self.checker.healed_payload_target:
            payload = Payload(len(self.payloads))
            self.payloads.append(payload)
        else:
            return
        self._propose(leader, payload)

    def _propose(self, leader: RaftCore, payload: Payload) -> None:
        node = self.nodes[leader.node_id]
        self.checker.touched = leader.node_id
        value = f"payload-{payload.payload_id}".encode()
        record_count = 1 + payload.payload_id % 3
        batch = batch_codec.build_batch([(self.time, None, value, None)] * record_count)
        try:
            entry = leader.propose(batch)
        except (NotLeaderError, ProposalDroppedError):
            return
        payload.proposals.append((entry.index, entry.term))
        self.proposal_owner[(entry.index, entry.term)] = payload
        if self.trace_enabled:
            self.trace(
                f"propose {leader.node_id} {entry.index}@{entry.term} payload={payload.payload_id}"
            )
        self._process_ready(node)
        if self.faults_enabled and self.rng.random() < self.options.crash_after_propose_probability:
            # Crash a leader while its newest entries are on a minority: Figure 8's opening move.
            self._schedule(self.rng.randrange(1, 3 * self.options.delay_max), "crash", node.node_id)

    def _any_leader(self) -> RaftCore | None:
        # Clients also reach stale leaders cut off from the majority: their appends become the
        # divergent tails that later leaders must truncate.
        leaders = [
            node.core
            for node in self.nodes.values()
            if node.core is not None and node.core.role is Role.LEADER
        ]
        return self.rng.choice(leaders) if leaders else None

    def _current_leader(self) -> RaftCore | None:
        leaders = [
            node.core
            for node in self.nodes.values()
            if node.core is not None and node.core.role is Role.LEADER
        ]
        if not leaders:
            return None
        return max(leaders, key=lambda core: core.term)

    # --- faults --------------------------------------------------------------------------------

    def _on_fault(self, _: Any) -> None:
        if not self.faults_enabled:
            return
        self._schedule(self._exponential(self.options.fault_interval), "fault", None)
        choices = [
            "partition",
            "cut",
            "heal",
            "heal",
            "crash",
            "crash_leader",
            "restart",
            "restart",
            "restart",
            "transfer",
            "slow",
        ]
        if self.options.compaction:
            choices += ["compact", "compact"]
        if self.options.membership_changes:
            choices += ["membership", "membership"]
        getattr(self, f"_fault_{self.rng.choice(choices)}")()

    def _fault_partition(self) -> None:
        # Split the nodes in two, symmetrically.
        side = [node_id for node_id in self.node_ids if self.rng.random() < 0.5]
        self.blocked = {
            (a, b) for a in self.node_ids for b in self.node_ids if (a in side) != (b in side)
        }
        self.trace(f"partition {side} | rest")

    def _fault_cut(self) -> None:
        # An asymmetric fault: source can no longer reach target, the reverse still works.
        source, target = self.rng.sample(self.node_ids, 2)
        self.blocked.add((source, target))
        self.trace(f"cut {source}->{target}")

    def _fault_heal(self) -> None:
        self.blocked = set()
        self.trace("heal network")

    def _fault_crash(self) -> None:
        alive = [node for node in self.nodes.values() if node.core is not None]
        if alive:
            self._crash(self.rng.choice(alive), "random")

    def _on_crash(self, node_id: int) -> None:
        if self.faults_enabled:
            self._crash(self.nodes[node_id], "scheduled")

    def _on_restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.core is None:
            self.trace(f"restart {node_id}")
            self._start(node)

    def _crash(self, node: SimNode, reason: str) -> None:
        """Kill a node: unsynced writes are lost or torn, held messages never leave."""
        if node.core is None:
            return
        self.trace(f"crash {node.node_id} ({reason})")
        node.core = None
        node.waiting = []
        node.disk.crash(self.rng)
        self.checker.on_crash(node)
        if self.options.quiesce:
            # Half the time the peers' links break at once (the process's sockets close);
            # otherwise they find out from its silence.
            for other in self.nodes.values():
                if other.core is None or other.liveness is None or self.rng.random() < 0.5:
                    continue
                link_up = (node.node_id, other.node_id) not in self.blocked
                if link_up and other.liveness.link_lost(node.node_id):
                    self._report_peer_dead(other, node.node_id, "link lost")
        self._schedule(self._exponential(self.options.downtime_mean), "restart", node.node_id)

    def on_new_leader(self, core: RaftCore) -> None:
        """Called by the checker when a node is first seen leading a term."""
        if (
            self.faults_enabled
            and self.rng.random() < self.options.crash_after_election_probability
        ):
            # A leader dying before its no-op spreads leaves a minority holding entries of a term
            # no one else saw: the rival log of Figure 8 (d).
            delay = self.rng.randrange(self.options.delay_max)
            self._schedule(delay, "crash", core.node_id)

    def on_leader_commit(self, core: RaftCore) -> None:
        """Called by the checker when a leader's commit index advanced."""
        if self.faults_enabled and self.rng.random() < self.options.crash_after_commit_probability:
            # A leader dying just after it committed, before followers learn of it, is the moment
            # a wrong commit rule turns into lost data.
            delay = self.rng.randrange(self.options.delay_max)
            self._schedule(delay, "crash", core.node_id)

    def _fault_crash_leader(self) -> None:
        # Leaders crashing right after they appended (Figure 8's scenario) find commit-rule bugs.
        leader = self._current_leader()
        if leader is not None:
            self._crash(self.nodes[leader.node_id], "leader")

    def _fault_restart(self) -> None:
        down = [node for node in self.nodes.values() if node.core is None]
        if down:
            self._on_restart(self.rng.choice(down).node_id)

    def _fault_transfer(self) -> None:
        leader = self._current_leader()
        if leader is None:
            return
        target = self.rng.choice(self.node_ids)
        try:
            leader.transfer_leadership(target)
        except (ConfigurationChangeError, NotLeaderError):
            return
        self.trace(f"transfer {leader.node_id} -> {target}")
        self._process_ready(self.nodes[leader.node_id])

    def _fault_slow(self) -> None:
        node = self.nodes[self.rng.choice(self.node_ids)]
        node.fsync_latency = self.rng.choice([1, 5, 20, 60, 300, 1000])

    def _fault_compact(self) -> None:
        node = self.nodes[self.rng.choice(self.node_ids)]
        if node.core is None or node.disk.holds_unsynced_log_writes() or node.waiting:
            return
        view = node.disk.view
        candidates = [e.index for e in view.all_entries if e.index <= node.applied_index]
        if len(candidates) < 2:
            return
        index = candidates[self.rng.randrange(len(candidates) - 1)]
        # A state-machine group snapshots its state (here the digest of what it applied); a data
        # partition's snapshot carries no bytes and means "the log starts after index".
        data = self.checker.digest_at(index) if self.options.snapshot_data else b""
        self.trace(f"compact {node.node_id} through {index}")
        node.disk.compact(index, data)
        self.checker.check_snapshot(node.node_id, node.disk.durable.snapshot(), "compacted")

    def _fault_membership(self) -> None:
        """Propose membership changes: mostly one permitted one-node step, sometimes changes the
        core must refuse (two nodes at once, no change at all, a second change while the first is
        uncommitted). The checker's membership invariant judges whatever the core accepted."""
        leader = self._current_leader()
        if leader is None:
            return
        current = leader.configuration
        first = self._one_node_step(current)
        action = self.rng.choice(["step", "step", "two-in-a-row", "two-at-once", "unchanged"])
        if first is None:
            return
        if action == "step":
            proposals = [first]
        elif action == "two-in-a-row":
            second = self._one_node_step(first)
            proposals = [first] if second is None else [first, second]
        elif action == "two-at-once":
            second = self._one_node_step(first)
            proposals = [second if second is not None else current]
        else:
            proposals = [current]
        for configuration in proposals:
            try:
                entry = leader.propose_configuration(configuration)
            except (ConfigurationChangeError, NotLeaderError, ProposalDroppedError):
                self.trace(f"configuration {configuration} refused ({action})")
                continue
            self.trace(
                f"configuration {entry.index}@{entry.term}: {entry.configuration} ({action})"
            )
        self._process_ready(self.nodes[leader.node_id])

    def _one_node_step(self, configuration: Configuration) -> Configuration | None:
        # A permitted change (thesis §4.1): add a learner, promote one, or remove a node, never
        # going below 3 voters so that the liveness phase keeps a fault-tolerant group.
        voters, learners = list(configuration.voters), list(configuration.learners)
        outsiders = [n for n in self.node_ids if n not in voters and n not in learners]
        action = self.rng.choice(["add-learner", "promote", "remove"])
        if action == "add-learner" and outsiders:
            learners.append(self.rng.choice(outsiders))
        elif action == "promote" and learners:
            node = self.rng.choice(learners)
            learners.remove(node)
            voters.append(node)
        elif action == "remove" and len(voters) > 3:
            voters.remove(self.rng.choice(voters))
        elif action == "remove" and learners:
            learners.remove(self.rng.choice(learners))
        else:
            return None
        return Configuration.of(voters, learners)

    def _heal(self) -> None:
        """End of the safety phase: no new faults, network whole, every node up, disks quick."""
        self.faults_enabled = False
        self.blocked = set()
        for node in self.nodes.values():
            node.fsync_latency = min(node.fsync_latency, 20)
            if node.core is None:
                self._start(node)
        self.checker.on_heal()
        self.trace("healed: liveness phase")

    def failure_report(self) -> str:
        if not self.trace_enabled:
            return f"{self.options}\n(tracing was off: the replay of this seed prints the events)"
        tail = "\n".join(self.trace_lines[-TRACE_LINES_REPORTED:])
        return f"{self.options}\nlast {TRACE_LINES_REPORTED} events:\n{tail}"
