"""Safety and liveness checks the simulator runs after every event (Raft paper Figure 3, thesis).

Every check is written here from the paper, never by calling the code it checks: the majority
arithmetic, the membership rule and the state-machine digest are this module's own, and the core is
only read (its term, vote, role, commit index, log and progress), never asked to judge itself.
Each failure names its invariant (`SimulationFailure.invariant`), which the self-test of
test_simulation.py uses to prove that each broken core trips the invariant meant to catch it.

- election safety: at most one leader per term.
- one vote per term: a node grants one candidate per term, across restarts; terms never go back,
  also across restarts; a term rises only on a newer term a peer sent, or by one for a campaign
  that (with pre-vote) won a pre-vote majority first (thesis §9.6).
- durability order: no message outruns the disk: its term, a granted vote or a candidacy, and an
  append acknowledgement are durable on the sender when it leaves (Figure 2).
- stale term: a message of an older term changes nothing on its receiver (§5.1).
- log matching: an (index, term) pair names one batch with one predecessor, on every node, forever
  (checked when entries are written, which by induction gives identical prefixes).
- commit clamp: a node's commit index always names an entry that is committed (§5.3, etcd's
  commitTo(min(committed, lastnewi))).
- leader completeness / state machine safety: a committed entry never changes, every new leader
  holds every committed entry, and every node that applies through an index has applied the same
  history (a digest of the applied prefix).
- electoral safety: no node lacking the newest committed entry has a log at least as up to date as
  a majority of the voters that committed it (so no election can overwrite it).
- durable majority: a committed (and so acknowledged) entry is durable on a majority of the voters
  it committed with, when committed and at every later step.
- snapshots: a snapshot's index, term, configuration and state are those of the committed prefix.
- membership (thesis §4.1): each configuration in a log differs from the one before it by one node
  and keeps a voter, and a log holds at most one configuration beyond the committed prefix.
- check-quorum (thesis §6.2): a leader that has not heard from a majority for two election
  timeouts of its own ticks has stepped down.
- liveness once healed, and pre-vote stability: an isolated follower raises no term and rejoins
  without deposing a healthy leader ("healthy": the timing requirement of §5.6 held between the
  leader and the other voters, which the checker measures rather than assumes, blaming the
  network only for silences the leader did not cause).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

from broker.raft.core import RaftCore, Role
from broker.raft.messages import (
    AppendRequest,
    AppendResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    InstallSnapshot,
    Message,
    Snapshot,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    describe,
)
from broker.raft.storage import CompactedError, MemoryStorage, StorageError

if TYPE_CHECKING:
    from tests.sim.simulator import SimNode, Simulation

# What a node's state looks like to a message of an older term: none of it may change (§5.1).
Observation = tuple[object, ...]


class SimulationFailure(AssertionError):
    def __init__(self, seed: int, message: str, *, invariant: str) -> None:
        super().__init__(
            f"simulation seed {seed} failed [{invariant}]: {message}\n"
            f"reproduce with: pytest tests/sim --seed {seed}"
        )
        self.seed = seed
        self.invariant = invariant


def majority(voter_count: int) -> int:
    """More than half of `voter_count` voters: the checker's own arithmetic, not quorum.py's."""
    return voter_count // 2 + 1


def apply_digest(state: bytes, entry: Entry) -> bytes:
    """The simulated state machine: a digest chained over the applied entries and their offsets."""
    return hashlib.blake2b(
        state + entry.index.to_bytes(8, "big") + entry.data, digest_size=16
    ).digest()


def changed_nodes(old: Configuration, new: Configuration) -> list[int]:
    """Nodes whose role (voter, learner or absent) differs: written here from thesis §4.1."""

    def role(configuration: Configuration, node: int) -> int:
        return 2 if node in configuration.voters else int(node in configuration.learners)

    members = sorted(set(old.voters + old.learners + new.voters + new.learners))
    return [node for node in members if role(old, node) != role(new, node)]


def is_pre_vote(message: Message) -> bool:
    return isinstance(message, VoteRequest | VoteResponse) and message.pre_vote


# What a leader sends that a follower hears as its leader (it resets the election timer) and
# answers: the messages whose delivery, or absence, the stability watch accounts for.
LEADER_MESSAGES = (AppendRequest, Heartbeat, InstallSnapshot)


@dataclasses.dataclass
class StabilityWatch:
    """The premise of the pre-vote stability claim, watched through the stability phase.

    The claim (the leader keeps its term and leadership, no term rises) holds only while Raft's
    timing requirement holds between the leader and the voters that are not isolated (§5.6:
    broadcast time well below the election timeout): each hears from the other at least once
    per election timeout. The simulator does not guarantee it (a healed link delivers in order
    with a delay up to `delay_max`, 400 ms against an election timeout of 5 ticks of 80-120 ms
    for some seeds), so the checker measures it, from the sends and deliveries and in each
    node's own ticks, never from the cores' timers. A silence excuses an election only when it
    is the network's doing, never when the leader stopped talking: a core whose leader stops
    heartbeating a follower (`UnreachableEndsHeartbeatsCore`) would otherwise have every
    election it causes excused. Each silence is judged once, when it reaches `T` ticks:

    - `lapsed`: followers that went an election timeout (`T` of their ticks) without a message
      of the leader's term from it (AppendRequest, Heartbeat, InstallSnapshot: the ones that
      reset its timer) while the leader was talking to them: a message it sent them was still in
      flight (`in_flight`, kept from the sends and deliveries; the network failed to deliver it
      within the election timeout), or it was legitimately quiet to them (`quiet_to`); or that
      had the leader reported dead by their link liveness. Only then may a follower time out,
      and only then does its lease lapse so that it may grant another node's pre-vote (thesis
      §4.2.3; etcd's `inLease`). A correct leader that is awake heartbeats every follower every
      `heartbeat_ticks` (at most 2 of its ticks, 240 ms, plus at most 40 ms of its own fsync)
      and a silence of an election timeout (5 follower ticks or more) lasts at least 320 ms
      since the last delivery, so a silence with nothing in flight is the leader's doing. A
      correct leader sends nothing only while quiescent (`RaftCore._can_quiesce`): it went
      quiet when every follower its link liveness did not hold dead had its whole log, and
      stays quiet through late answers from followers that still do (`RaftCore._keeps_quiet`).
      So a quiet leader counts as talking to the followers whose match index is its last index
      and to those its liveness holds dead, and to no one else; its state changes only in its
      own steps, so what the checker sees after one step holds until the next.
    - `unheard`: followers the leader went `T` of its ticks without hearing from although it had
      sent them something they answer since it last heard them (`prompted`; they answer every
      AppendRequest, Heartbeat and InstallSnapshot but a quiesce heartbeat, and a leader is
      quiet after that one), or that it had reported dead. A correct leader's check-quorum
      window is `T` of its ticks and starts at a reset at or before tick `c - T` for the check
      at tick `c`, so a delivery at tick `c - T + 1` or later is surely inside it; a follower
      heard at most `T - 1` ticks ago at every tick is surely active at every check. A quiet
      leader runs no check-quorum: its silence from a follower restarts at each of its quiet
      ticks.

    Silences that were not excused are kept in `unexcused`, for the failure report.
    """

    leader: int
    term: int
    followers: tuple[int, ...]  # the leader's voters but the leader and the isolated follower
    voter_count: int
    check_quorum: bool
    follower_heard: dict[int, int]  # follower -> its tick count when it last heard the leader
    leader_heard: dict[int, int]  # follower -> the leader's tick count when it last heard it
    lapsed: dict[int, str] = dataclasses.field(default_factory=dict)
    unheard: dict[int, str] = dataclasses.field(default_factory=dict)
    # follower -> the leader's messages to it not yet delivered: (id of the message object, the
    # leader's tick count when it left; -1 if it left before the stability phase).
    in_flight: dict[int, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    # Followers the leader was quiet to (see above) since they last heard it.
    quiet_to: set[int] = dataclasses.field(default_factory=set)
    # The followers the leader was quiet to at its latest observation (empty: it was awake).
    leader_quiet_to: frozenset[int] = frozenset()
    # Followers the leader sent something they answer since it last heard them.
    prompted: set[int] = dataclasses.field(default_factory=set)
    # (follower, True for the follower's silence / False for the leader's) -> the tick count its
    # latest judged silence started at: each silence is judged once, when it reaches `T`.
    judged: dict[tuple[int, bool], int] = dataclasses.field(default_factory=dict)
    unexcused: list[str] = dataclasses.field(default_factory=list)
    # Set when the leader lost its leadership or a term rose: what follows (followers no longer
    # hearing a leader that is gone) is the consequence, and must not excuse the cause.
    frozen: bool = False

    def sent(self, follower: int, message_id: int, leader_ticks: int) -> None:
        """The leader sent `follower` a message of its term that resets the follower's election
        timer (`LEADER_MESSAGES`), on a link that delivers it (the stability phase neither drops
        nor duplicates); `message_id` names the message object until its delivery."""
        self.in_flight.setdefault(follower, []).append((message_id, leader_ticks))
        self.prompted.add(follower)

    def delivered(self, follower: int, message_id: int) -> None:
        """`follower` received a message of `sent`: it heard the leader, a new silence starts."""
        pending = self.in_flight.get(follower, [])
        for position, (pending_id, _) in enumerate(pending):
            if pending_id == message_id:
                del pending[position]
                break
        self.quiet_to.discard(follower)

    def answered(self, follower: int) -> None:
        """The leader heard `follower` (a message of its term): a new silence starts."""
        self.prompted.discard(follower)

    def leader_observed(self, quiet_to: frozenset[int]) -> None:
        """The leader after one of its steps, quiet to `quiet_to` (empty: awake). It was quiet to
        the followers of the previous observation until this step, and to these from now on."""
        self.quiet_to |= self.leader_quiet_to | quiet_to
        self.leader_quiet_to = quiet_to

    def judge_follower(self, follower: int, ticks: int, since: int, timeout: int) -> None:
        """`follower`, at its tick `ticks`, last heard the leader at its tick `since`."""
        if not self._silence_to_judge((follower, True), self.lapsed, ticks, since, timeout):
            return
        silence = (
            f"follower {follower} heard nothing from leader {self.leader} for {ticks - since} "
            f"of its ticks (election timeout {timeout})"
        )
        pending = self.in_flight.get(follower)
        if pending:
            sent_at = pending[0][1]
            when = "before the stability phase" if sent_at < 0 else f"at its tick {sent_at}"
            self.lapsed[follower] = f"{silence}, a message it sent {when} still in flight"
        elif follower in self.quiet_to:
            self.lapsed[follower] = f"{silence}, which was quiet to it"
        else:
            self.unexcused.append(f"{silence} with nothing of it in flight")

    def judge_leader(self, follower: int, ticks: int, since: int, timeout: int) -> None:
        """The leader, at its tick `ticks`, last heard `follower` at its tick `since`."""
        if not self._silence_to_judge((follower, False), self.unheard, ticks, since, timeout):
            return
        silence = (
            f"leader {self.leader} heard nothing from follower {follower} for {ticks - since} "
            f"of its ticks (election timeout {timeout})"
        )
        if follower in self.prompted:
            self.unheard[follower] = f"{silence} though it sent it something to answer"
        else:
            self.unexcused.append(f"{silence} without sending it anything to answer")

    def _silence_to_judge(
        self, key: tuple[int, bool], excused: dict[int, str], ticks: int, since: int, timeout: int
    ) -> bool:
        """Whether the silence of `key` (follower, its side) that started at `since` reached the
        timeout and is judged now: once per silence, never after one of that follower's was
        excused."""
        if ticks - since < timeout or key[0] in excused or self.judged.get(key) == since:
            return False
        self.judged[key] = since
        return True

    def broken(self) -> str | None:
        """Why the premise failed (None: it held, so the claim must hold).

        With check-quorum, no term can rise while the leader and the followers whose lease
        never lapsed are a majority: a pre-candidate needs a majority of grants and those all
        refuse (the leader is in its own lease); nor does the leader step down while it heard
        from a majority in every window. Without check-quorum there is no lease: a follower that
        timed out wins a pre-vote on its log alone (the leader grants it too), so every follower
        must have kept hearing the leader."""
        why = "; ".join([*self.lapsed.values(), *self.unheard.values()])
        if not self.check_quorum:
            return why if self.lapsed else None
        majority_count = majority(self.voter_count)
        if 1 + len(self.followers) - len(self.lapsed) < majority_count:
            return why
        if 1 + len(self.followers) - len(self.unheard) < majority_count:
            return why
        return None


class Checker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leaders_by_term: dict[int, int] = {}
        self.checked_leaders: dict[tuple[int, int], bool] = {}
        # (index, term) -> (batch bytes, previous index, previous term)
        self.registry: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.committed_configurations: dict[int, Configuration] = {}
        self.commit_terms: dict[int, int] = {}  # index -> term of the leader that committed it
        self.committed_max = -1
        # (index, term) -> the voters it was durable on a majority of when committed
        self.commit_voters: dict[tuple[int, int], tuple[int, ...]] = {}
        # voters -> the newest entry committed with them; durable holding is prefix-closed for
        # committed entries (log matching), so checking the newest one checks them all.
        self.newest_committed: dict[tuple[int, ...], tuple[int, int]] = {}
        self.durable_version_total = 0
        self.acknowledged: dict[tuple[int, int], bool] = {}
        self.commit_seen: dict[int, int] = {}
        self.term_seen: dict[int, int] = {}
        # The highest term a node ever sent (outside pre-vote): a restart must not go below it.
        self.term_floor: dict[int, int] = {}
        self.votes: dict[tuple[int, int], int] = {}  # (voter, term) -> the candidate granted
        self.pre_votes: dict[int, dict[int, dict[int, bool]]] = {}  # node -> term -> granters
        self.leader_commit_seen: dict[tuple[int, int], int] = {}
        self.leader_since: dict[int, int] = {}  # leader -> its tick count when elected
        # leader -> its voters and its tick count when they took effect (a configuration change
        # takes effect on append, in the middle of a check-quorum window).
        self.voters_since: dict[int, tuple[tuple[int, ...], int]] = {}
        self.heard: dict[int, dict[int, int]] = {}  # leader -> peer -> tick count last heard
        # (node, leader, term) -> the node's tick count when a message of that leader and term
        # that resets a follower's election timer (append, heartbeat, snapshot) last arrived.
        self.heard_leader: dict[tuple[int, int, int], int] = {}
        # (leader, term, follower): the leader sent the follower something it answers (of
        # LEADER_MESSAGES) since it last heard it; the stability watch starts from it.
        self.prompting: set[tuple[int, int, int]] = set()
        self.stability: StabilityWatch | None = None  # during the stability phase
        # Why the stability phase's leadership claim was not judged (its timing premise failed).
        self.stability_excused: str | None = None
        # The applied-prefix digest through each entry index, from the first node that applied it.
        self.digests: dict[int, bytes] = {}
        self.healed_payload_target = -1
        self.steps = 0
        # The node the current event can change (None: any); set by the simulator.
        self.touched: int | None = None
        self.step_message: Message | None = None
        # The newest entry a leader committed, with the voters it committed with; checked for
        # electoral safety whenever a log changed (a write, a crash, a compaction).
        self.newest_commit: tuple[int, int, tuple[int, ...]] | None = None
        self.logs_changed = False

    def fail(self, invariant: str, message: str) -> None:
        raise SimulationFailure(
            self.sim.seed, f"{message}\n{self.sim.failure_report()}", invariant=invariant
        )

    # --- notifications -------------------------------------------------------------------------

    def on_append(self, node: SimNode, view: MemoryStorage, entries: list[Entry]) -> None:
        self.logs_changed = True
        configuration_written = False
        for entry in entries:
            previous_index = entry.base_index - 1
            value = (entry.data, previous_index, view.term(previous_index))
            known = self.registry.setdefault((entry.index, entry.term), value)
            if known != value:
                self.fail(
                    "log matching",
                    f"node {node.node_id} wrote {entry.index}@{entry.term} after "
                    f"{previous_index}@{value[2]} (or with other bytes) but another node holds it "
                    f"after {known[1]}@{known[2]}",
                )
            configuration_written |= entry.kind is EntryKind.CONFIGURATION
        if configuration_written:
            self._check_membership(node.node_id, view)

    def on_apply(self, node: SimNode, entry: Entry) -> None:
        """`node` applied `entry`; its state (`node.state`) already includes it."""
        if entry.base_index != node.applied_index + 1:
            self.fail(
                "state machine safety",
                f"node {node.node_id} applied {entry.base_index}..{entry.index} right after "
                f"{node.applied_index}: applied entries must be contiguous",
            )
        self._record_committed(node.node_id, entry)
        known = self.digests.setdefault(entry.index, node.state)
        if known != node.state:
            self.fail(
                "state machine safety",
                f"node {node.node_id} applied through {entry.index} a history other nodes did not",
            )
        key = (entry.index, entry.term)
        payload = self.sim.proposal_owner.get(key)
        if payload is not None:
            payload.committed = True
        core = node.core
        if payload is not None and core is not None and core.role is Role.LEADER:
            # The leader applying its client's entry is the acknowledgement.
            self.acknowledged[key] = True
            self._check_on_majority(entry.index, entry.term, self.commit_voters.get(key))

    def on_send(self, node: SimNode, message: Message) -> None:
        """A message leaves `node`: what it claims must already be on the node's disk."""
        if is_pre_vote(message):
            return  # a pre-vote neither records a vote nor changes a term (thesis §9.6)
        durable = node.disk.durable.hard_state
        if message.term > durable.term:
            self.fail(
                "durability order",
                f"node {node.node_id} sent {describe(message)} before its term was durable "
                f"(durable {durable})",
            )
        if isinstance(message, VoteResponse) and message.granted:
            self._check_vote(node.node_id, message.term, message.target, durable)
        elif isinstance(message, VoteRequest):
            self._check_vote(node.node_id, message.term, node.node_id, durable)
        elif isinstance(message, AppendResponse) and message.success:
            durable_last = node.disk.durable.last_index()
            if message.match_index > durable_last:
                self.fail(
                    "durability order",
                    f"node {node.node_id} acknowledged {message.match_index} holding only "
                    f"{durable_last} durably: {describe(message)}",
                )
        self.term_floor[node.node_id] = max(self.term_floor.get(node.node_id, 0), message.term)
        if isinstance(message, LEADER_MESSAGES):
            self.prompting.add((node.node_id, message.term, message.target))
            watch = self.stability
            if (
                watch is not None
                and self._watched(node.node_id, message)
                and (node.node_id, message.target) not in self.sim.blocked
            ):
                watch.sent(message.target, id(message), node.ticks)

    def _check_vote(self, node_id: int, term: int, candidate: int, durable: HardState) -> None:
        if durable.term == term and durable.vote != candidate:
            self.fail(
                "durability order",
                f"node {node_id} voted for {candidate} in term {term} before that vote was "
                f"durable (durable {durable})",
            )
        known = self.votes.setdefault((node_id, term), candidate)
        if known != candidate:
            self.fail(
                "one vote per term",
                f"node {node_id} voted for {known} and then for {candidate} in term {term}",
            )

    def before_deliver(self, node: SimNode, core: RaftCore, message: Message) -> Observation | None:
        """Note what the delivery may change; returns the receiver's state if `message` is stale."""
        self.step_message = message
        if isinstance(message, VoteResponse) and message.pre_vote and message.granted:
            terms = self.pre_votes.setdefault(node.node_id, {})
            terms.setdefault(message.term, {})[message.source] = True
        if (
            core.role is Role.LEADER
            and message.term == core.term
            and not isinstance(message, VoteRequest)  # a rival's request is no answer
        ):
            self.heard.setdefault(node.node_id, {})[message.source] = node.ticks
            self.prompting.discard((node.node_id, message.term, message.source))
            if self.stability is not None and self._watched(node.node_id, message):
                self.stability.answered(message.source)
        if isinstance(message, LEADER_MESSAGES) and message.term >= core.term:
            self.heard_leader[(node.node_id, message.source, message.term)] = node.ticks
            if self.stability is not None and self._watched(message.source, message):
                self.stability.delivered(node.node_id, id(message))
        if message.term < core.term:
            return self._observe(core)
        return None

    def _watched(self, leader: int, message: Message) -> bool:
        """Whether `message` passes between the watched leader (`leader` is its sender or its
        receiver) and one of the watched followers, in the watched term."""
        watch = self.stability
        follower = message.target if message.source == leader else message.source
        return (
            watch is not None
            and (leader, message.term) == (watch.leader, watch.term)
            and follower in watch.followers
        )

    def check_stale_ignored(self, node: SimNode, message: Message, before: Observation) -> None:
        core = node.core
        assert core is not None, "a delivery does not crash its receiver"
        after = self._observe(core)
        if after != before:
            self.fail(
                "stale term",
                f"node {node.node_id} in term {before[0]} acted on {describe(message)} from an "
                f"older term: (term, vote, role, leader, commit, last index, last term, progress) "
                f"went from {before} to {after}",
            )

    @staticmethod
    def _observe(core: RaftCore) -> Observation:
        progress = tuple(
            (peer, state.match_index, state.next_index, state.state)
            for peer, state in core.progress.items()
        )
        return (
            core.term,
            core.vote,
            core.role,
            core.leader_id,
            core.commit_index,
            core.log.last_index(),
            core.log.last_term(),
            progress,
        )

    def on_start(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        floor = self.term_floor.get(node.node_id, 0)
        if core.term < floor:
            self.fail(
                "one vote per term",
                f"node {node.node_id} restarted in term {core.term}, below term {floor} it had "
                "already sent messages in: its term went back",
            )
        self.term_seen[node.node_id] = core.term

    def on_crash(self, node: SimNode) -> None:
        self.logs_changed = True
        self.commit_seen.pop(node.node_id, None)
        self.term_seen.pop(node.node_id, None)
        self.pre_votes.pop(node.node_id, None)

    def on_heal(self) -> None:
        self.healed_payload_target = len(self.sim.payloads) + 2

    # --- state machine and snapshots -----------------------------------------------------------

    def digest_at(self, index: int) -> bytes:
        """The state after applying the committed prefix through entry `index`."""
        if index < 0:
            return b""
        digest = self.digests.get(index)
        if digest is None:
            self.fail("snapshot", f"no node applied through {index}, yet a snapshot is there")
        assert digest is not None
        return digest

    def state_at(self, snapshot: Snapshot, node_id: int) -> bytes:
        """The state a node restores from `snapshot` (its bytes, or for a data partition the
        prefix the log reset stands for)."""
        if self.sim.options.snapshot_data and snapshot.index >= 0:
            self.check_snapshot(node_id, snapshot, "restored")
            return snapshot.data
        return self.digest_at(snapshot.index)

    def check_snapshot(self, node_id: int, snapshot: Snapshot, how: str) -> None:
        index = snapshot.index
        known = self.committed.get(index)
        expected_data = self.digest_at(index) if self.sim.options.snapshot_data else b""
        expected = (
            None if known is None else known[0],
            self.configuration_at(index),
            expected_data,
        )
        actual = (snapshot.term, snapshot.configuration, snapshot.data)
        if actual != expected:
            self.fail(
                "snapshot",
                f"node {node_id} {how} a snapshot at {index} with (term, configuration, state) "
                f"{actual}; the committed prefix through {index} has {expected}",
            )

    def configuration_at(self, index: int) -> Configuration:
        """The configuration of the committed prefix through `index`."""
        found_index, found = -1, self.sim.bootstrap
        for configuration_index, configuration in self.committed_configurations.items():
            if found_index < configuration_index <= index:
                found_index, found = configuration_index, configuration
        return found

    # --- membership (thesis §4.1) --------------------------------------------------------------

    def _check_membership(self, node_id: int, view: MemoryStorage) -> None:
        previous = view.snapshot().configuration
        uncommitted: list[int] = []
        for entry in view.all_entries:
            configuration = entry.configuration
            if configuration is None:
                continue
            changed = changed_nodes(previous, configuration)
            if len(changed) != 1 or not configuration.voters:
                self.fail(
                    "membership",
                    f"node {node_id} holds configuration {configuration} at {entry.index}@"
                    f"{entry.term}, changing nodes {changed} of {previous}: one node at a time",
                )
            if entry.index > self.committed_max:
                uncommitted.append(entry.index)
            previous = configuration
        if len(uncommitted) > 1:
            self.fail(
                "membership",
                f"node {node_id} holds {len(uncommitted)} uncommitted configuration changes "
                f"(at {uncommitted}; committed through {self.committed_max}): at most one",
            )

    # --- after every step ----------------------------------------------------------------------

    def after_step(self) -> None:
        self.steps += 1
        nodes = self.sim.nodes
        for node_id in nodes if self.touched is None else (self.touched,):
            node = nodes[node_id]
            if node.core is not None:
                self._check_node(node, node.core)
        self.step_message = None
        if self.logs_changed and self.newest_commit is not None:
            self.logs_changed = False
            self._check_electorally_safe(*self.newest_commit)
        version_total = sum(node.disk.durable_version for node in nodes.values())
        if version_total != self.durable_version_total:
            self.durable_version_total = version_total
            for voters, (index, term) in self.newest_committed.items():
                self._check_on_majority(index, term, voters)

    def _check_node(self, node: SimNode, core: RaftCore) -> None:
        node_id = node.node_id
        core.validate()
        if core.role is Role.LEADER:
            self._check_leader(core)
            if self.sim.options.check_quorum:
                self._check_quorum_deadline(node, core)
        elif (core.term, node_id) in self.leader_commit_seen:
            # A leader that removed itself steps down in the very step its removal commits
            # (thesis §4.2.2): that commit is still a leader's, with the new voters.
            self._record_leader_commits(core)
        if self.stability is not None:
            self._watch_stability(node, core, self.stability)
        previous = self.commit_seen.get(node_id, -1)
        if core.commit_index < previous:
            self.fail(
                "commit monotonic",
                f"node {node_id} commit index went back from {previous} to "
                f"{core.commit_index} without a crash",
            )
        if core.commit_index != previous:
            self._check_commit_is_committed(node, core)
        self.commit_seen[node_id] = core.commit_index
        term_before = self.term_seen.get(node_id, core.term)
        if core.term < term_before:
            self.fail("one vote per term", f"node {node_id} term went back to {core.term}")
        if core.term > term_before:
            self._check_term_raise(node, core, term_before)
        self.term_seen[node_id] = core.term

    def _check_commit_is_committed(self, node: SimNode, core: RaftCore) -> None:
        # A follower commits min(leader commit, last entry this request proved shared); beyond
        # that its log may be a stale divergent tail, and "committing" it would apply wrong data.
        index = core.commit_index
        view = node.disk.view
        if index <= view.snapshot().index:
            return  # inside a snapshot, which check_snapshot compares with the committed prefix
        held = view.term(index)
        known = self.committed.get(index)
        if known is None or known[0] != held:
            self.fail(
                "commit clamp",
                f"node {node.node_id} commit index {index} names its entry {index}@{held}, which "
                f"is not committed (committed there: {None if known is None else known[0]})",
            )

    def _check_term_raise(self, node: SimNode, core: RaftCore, before: int) -> None:
        message = self.step_message
        if message is not None and message.target != node.node_id:
            message = None
        adopted = before
        if message is not None and not (is_pre_vote(message) and getattr(message, "granted", 1)):
            adopted = max(before, message.term)  # §5.1: a newer term a peer sent
        if core.term <= adopted:
            return
        campaigning = core.role in (Role.CANDIDATE, Role.LEADER) and core.vote == node.node_id
        if core.term != adopted + 1 or not campaigning:
            self.fail(
                "term cause",
                f"node {node.node_id} ({core.role.value}) raised its term {before} -> {core.term} "
                "without a newer-term message or a campaign",
            )
        if self.sim.options.pre_vote and not isinstance(message, TimeoutNow):
            granters = self.pre_votes.get(node.node_id, {}).get(core.term, {})
            voters = core.configuration.voters
            granted = sum(1 for voter in voters if voter == node.node_id or voter in granters)
            if granted < majority(len(voters)):
                self.fail(
                    "term cause",
                    f"node {node.node_id} campaigned in term {core.term} with pre-vote grants of "
                    f"only {granted} of voters {voters} (thesis §9.6)",
                )
        terms = self.pre_votes.get(node.node_id, {})
        for term in [term for term in terms if term <= core.term]:
            del terms[term]

    def _check_quorum_deadline(self, node: SimNode, core: RaftCore) -> None:
        """Thesis §6.2: flags of who was heard reset every election timeout, so a leader that last
        heard from a majority at tick t has failed a check, and stepped down, by t + 2 timeouts.

        A quiet leader does not tick: the link liveness watches its followers instead, and wakes
        it when one is lost. The deadline therefore counts from the last tick it was quiet."""
        voters = core.configuration.voters
        if core.quiescent:
            heard = self.heard.setdefault(node.node_id, {})
            for voter in voters:
                heard[voter] = node.ticks
            return
        needed = majority(len(voters)) - (1 if node.node_id in voters else 0)
        if needed <= 0:
            return
        elected = self.leader_since[node.node_id]
        heard = self.heard.get(node.node_id, {})
        latest = sorted(
            (heard.get(voter, elected) for voter in voters if voter != node.node_id), reverse=True
        )
        # The deadline runs from the change of voters at the earliest: the silence of a majority
        # of the new voters before it is no fault of a core that counted the old ones. (Seed
        # 1465654144: leader 5, heard by 1 and 2 behind a partition, removed itself; the new
        # voters 1-4 made 1 and 2 a minority at once, and the core rightly stepped down only at
        # its next check. Judging the ticks before the change by the new voters failed it.)
        since = self.voters_since.get(node.node_id)
        if since is None or since[0] != voters:
            since = self.voters_since[node.node_id] = (voters, node.ticks)
        silent_ticks = node.ticks - max(latest[needed - 1], since[1])
        window = 2 * self.sim.options.election_timeout_ticks
        if silent_ticks > window:
            self.fail(
                "check-quorum",
                f"node {node.node_id} still leads term {core.term} though it heard from a "
                f"majority of voters {voters} last {silent_ticks} ticks ago (window {window})",
            )

    def _check_leader(self, core: RaftCore) -> None:
        leader = self.leaders_by_term.setdefault(core.term, core.node_id)
        if leader != core.node_id:
            self.fail(
                "election safety",
                f"two leaders in term {core.term}: nodes {leader} and {core.node_id}",
            )
        key = (core.term, core.node_id)
        if key not in self.checked_leaders:
            self.checked_leaders[key] = True
            self.leader_since[core.node_id] = self.sim.nodes[core.node_id].ticks
            self.voters_since[core.node_id] = (
                core.configuration.voters,
                self.leader_since[core.node_id],
            )
            self.heard[core.node_id] = {}
            self._check_completeness(core)
            self.sim.on_new_leader(core)
            self.leader_commit_seen[key] = core.commit_index
        self._record_leader_commits(core)

    def _record_leader_commits(self, core: RaftCore) -> None:
        key = (core.term, core.node_id)
        seen = self.leader_commit_seen[key]
        if core.commit_index > seen:
            self.leader_commit_seen[key] = core.commit_index
            voters = core.configuration.voters
            self.sim.on_leader_commit(core)
            for entry in core.log.entries(seen + 1, core.commit_index + 1, 1 << 62):
                self._record_committed(core.node_id, entry)
                self.commit_terms.setdefault(entry.index, core.term)
                self.commit_voters[(entry.index, entry.term)] = voters
                self._check_on_majority(entry.index, entry.term, voters)
            self.newest_committed[voters] = (core.commit_index, core.log.term(core.commit_index))
            self.newest_commit = (core.commit_index, core.log.term(core.commit_index), voters)
            self.logs_changed = True

    def _check_completeness(self, core: RaftCore) -> None:
        # Log matching (checked on every write) makes the newest committed entry enough: holding it
        # means holding the whole committed prefix. Acknowledged entries are checked one by one.
        indexes = sorted(self.committed)[-20:] + sorted(i for i, _ in self.acknowledged)
        for index in indexes:
            term = self.committed[index][0] if index in self.committed else None
            if term is None or self.commit_terms.get(index, 0) >= core.term:
                # Completeness binds leaders of LATER terms than the commit: a candidate of an
                # older term can still win with votes granted before that commit happened.
                continue
            if index < core.log.first_index():
                continue  # inside the leader's snapshot, which only ever covers committed entries
            try:
                held = core.log.term(index)
            except StorageError:
                held = None
            if held != term:
                self.fail(
                    "leader completeness",
                    f"node {core.node_id} leads term {core.term} without "
                    f"committed entry {index}@{term} (it holds {held})",
                )

    def _record_committed(self, node_id: int, entry: Entry) -> None:
        known = self.committed.setdefault(entry.index, (entry.term, entry.data))
        if known != (entry.term, entry.data):
            self.fail(
                "state machine safety",
                f"committed entry changed: node {node_id} has {entry.index}@{entry.term} where "
                f"{entry.index}@{known[0]} was committed",
            )
        if entry.configuration is not None:
            self.committed_configurations[entry.index] = entry.configuration
        self.committed_max = max(self.committed_max, entry.index)

    def _check_on_majority(self, index: int, term: int, voters: tuple[int, ...] | None) -> None:
        if voters is None:
            return
        holders = [voter for voter in voters if self._durable_has(voter, index, term)]
        if len(holders) < majority(len(voters)):
            self.fail(
                "durable majority",
                f"entry {index}@{term} committed but durable only on {holders} of voters {voters}",
            )

    def _check_electorally_safe(self, index: int, term: int, voters: tuple[int, ...]) -> None:
        """No node lacking a committed entry could win an election (§5.4.1, §5.4.3).

        In Raft a log without a committed entry is strictly less up to date than every log that
        has it, so only the (minority of) voters lacking it could ever vote for such a node. Finding
        a node whose log is at least as up to date as a majority's, and yet lacks the entry, shows a
        committed entry that a reachable election would overwrite, without waiting for that
        election to happen (it takes two well-timed crashes in Figure 8).
        """
        voter_logs = []
        for voter in voters:
            node = self.sim.nodes[voter]
            log = node.disk.view if node.core is not None else node.disk.durable
            voter_logs.append(self._last_position(log))
        needed = majority(len(voters))
        for node_id, node in self.sim.nodes.items():
            for log in (node.disk.view, node.disk.durable):
                if self._storage_has(log, index, term):
                    continue
                position = self._last_position(log)
                supporters = sum(1 for other in voter_logs if position >= other)
                if supporters >= needed:
                    self.fail(
                        "electoral safety",
                        f"committed entry {index}@{term} is missing on node {node_id}, whose log "
                        f"ending at {position[1]}@{position[0]} could win the votes of "
                        f"{supporters} of voters {voters}",
                    )

    @staticmethod
    def _last_position(log: MemoryStorage) -> tuple[int, int]:
        last_index = log.last_index()
        return (log.term(last_index), last_index)

    @staticmethod
    def _storage_has(log: MemoryStorage, index: int, term: int) -> bool:
        if index <= log.snapshot().index:
            return True
        try:
            return log.term(index) == term
        except StorageError:
            return False

    def _durable_has(self, node_id: int, index: int, term: int) -> bool:
        durable = self.sim.nodes[node_id].disk.durable
        if index <= durable.snapshot().index:
            return True
        try:
            return durable.term(index) == term
        except (CompactedError, StorageError):
            return False

    # --- liveness ------------------------------------------------------------------------------

    def is_live(self) -> bool:
        return not self._liveness_problems()

    def check_liveness(self) -> None:
        problems = self._liveness_problems()
        if problems:
            self.fail("liveness", "after healing, within the tick bound: " + "; ".join(problems))

    def _liveness_problems(self) -> list[str]:
        problems = []
        cores = {n: node.core for n, node in self.sim.nodes.items() if node.core is not None}
        # A live leader: every voter of its configuration follows it in its term and has caught up
        # with its commit index. (A removed node that never learned of its removal may campaign
        # forever; the lease makes voters ignore it, check_quorum or not: RaftCore._step_term.)
        if not any(
            core.role is Role.LEADER
            and all(
                voter in cores
                and cores[voter].term == core.term
                and cores[voter].leader_id == core.node_id
                and cores[voter].commit_index == core.commit_index
                for voter in core.configuration.voters
            )
            for core in cores.values()
        ):
            problems.append("no leader followed and caught up with by all voters")
        pending = [p.payload_id for p in self.sim.payloads if not p.committed]
        if pending:
            problems.append(f"payloads {pending[:10]} not committed")
        if len(self.sim.payloads) < self.healed_payload_target:
            problems.append("the proposals made after healing are not all in yet")
        return problems

    def _quiet_members(self) -> bool:
        cores = [node.core for node in self.sim.nodes.values() if node.core is not None]
        leaders = [core for core in cores if core.role is Role.LEADER]
        if len(leaders) != 1:
            return False
        members = leaders[0].configuration.members
        return all(core.quiescent for core in cores if core.node_id in members)

    def is_quiet(self) -> bool:
        return self.is_live() and self._quiet_members()

    def check_quiet(self) -> None:
        """Quiescence's own liveness: a healed, caught-up group with no writes goes quiet."""
        if not self.is_quiet():
            problems = self._liveness_problems() or ["some members are not quiescent"]
            self.fail(
                "quiescence", "after healing, the group did not go quiet: " + "; ".join(problems)
            )

    def has_new_leader(self, old: int) -> bool:
        """A leader other than `old` that every other live voter of its configuration follows."""
        nodes = self.sim.nodes
        cores = {n: node.core for n, node in nodes.items() if node.core is not None}
        for core in cores.values():
            if core.role is not Role.LEADER or core.node_id == old:
                continue
            if all(
                voter == old
                or voter not in cores
                or (cores[voter].term == core.term and cores[voter].leader_id == core.node_id)
                for voter in core.configuration.voters
            ):
                return True
        return False

    def check_new_leader(self, old: int) -> None:
        if not self.has_new_leader(old):
            self.fail(
                "quiet failover",
                f"the quiet group did not elect a leader in place of node {old} within the bound",
            )

    def start_stability(self, leader: RaftCore, isolated: int) -> None:
        """The stability phase begins: watch its timing premise (see StabilityWatch)."""
        nodes = self.sim.nodes
        leader_id = leader.node_id
        voters = leader.configuration.voters
        followers = tuple(v for v in voters if v not in (leader_id, isolated))
        heard = self.heard.get(leader_id, {})
        elected = self.leader_since[leader_id]
        self.stability = watch = StabilityWatch(
            leader=leader_id,
            term=leader.term,
            followers=followers,
            voter_count=len(voters),
            check_quorum=self.sim.options.check_quorum,
            # The last arrival from this leader in this term; a later reset of the follower's
            # timer only shortens its silence, so counting from here errs towards "lapsed".
            follower_heard={
                f: self.heard_leader.get((f, leader_id, leader.term), -1) for f in followers
            },
            leader_heard={f: heard.get(f, elected) for f in followers},
            prompted={f for f in followers if (leader_id, leader.term, f) in self.prompting},
        )
        for _, _, kind, message in self.sim.events:  # what the leader sent before the phase
            if (
                kind == "deliver"
                and isinstance(message, LEADER_MESSAGES)
                and message.source == leader_id
                and self._watched(leader_id, message)
            ):
                watch.in_flight.setdefault(message.target, []).append((id(message), -1))
        # The leader first: a quiet leader covers its followers' silences from the start.
        self._watch_stability(nodes[leader_id], leader, watch)
        for follower in followers:
            self._watch_stability(nodes[follower], nodes[follower].core, watch)

    def end_stability(self) -> None:
        self.stability = None

    def on_peer_dead(self, node_id: int, peer: int) -> None:
        """The simulated link liveness reported `peer` dead to `node_id` (quiescence): a follower
        forgets a dead leader (no lease, and it campaigns at once), a leader marks the follower
        inactive for its next check-quorum."""
        watch = self.stability
        if watch is None:
            return
        if node_id in watch.followers and peer == watch.leader:
            watch.lapsed.setdefault(node_id, f"follower {node_id} was told leader {peer} died")
        elif node_id == watch.leader and peer in watch.followers:
            watch.unheard.setdefault(peer, f"leader {node_id} was told follower {peer} died")

    def _watch_stability(self, node: SimNode, core: RaftCore | None, watch: StabilityWatch) -> None:
        if watch.frozen or core is None:
            return
        timeout = self.sim.options.election_timeout_ticks
        node_id = node.node_id
        if node_id in watch.followers:
            if core.quiescent:  # its election timer is stopped: as good as hearing the leader
                watch.follower_heard[node_id] = node.ticks
                watch.quiet_to.discard(node_id)
            last = max(
                watch.follower_heard[node_id],
                self.heard_leader.get((node_id, watch.leader, watch.term), -1),
            )
            watch.judge_follower(node_id, node.ticks, last, timeout)
        elif node_id == watch.leader:
            watch.leader_observed(self._quiet_to(node, core, watch.followers))
            # Also in the step in which it stepped down: a correct check-quorum step-down at
            # tick c shows here, at c, as a majority unheard since tick c - T or earlier.
            heard = self.heard.get(node_id, {})
            for follower in watch.followers:
                if core.quiescent:  # no check-quorum while quiet; a wake restarts the window
                    watch.leader_heard[follower] = node.ticks
                    watch.prompted.discard(follower)
                last = max(watch.leader_heard[follower], heard.get(follower, -1))
                watch.judge_leader(follower, node.ticks, last, timeout)
        deposed = node_id == watch.leader and not (
            core.role is Role.LEADER and core.term == watch.term
        )
        if deposed or core.term > watch.term:
            watch.frozen = True

    @staticmethod
    def _quiet_to(node: SimNode, core: RaftCore, followers: tuple[int, ...]) -> frozenset[int]:
        """The followers a quiet leader legitimately sends nothing (empty when it is awake or no
        longer leads): those holding its whole log, and those its link liveness holds dead, which
        it may have quiesced without (RaftCore._can_quiesce, _keeps_quiet)."""
        if not core.quiescent or core.role is not Role.LEADER:
            return frozenset()
        last_index = core.log.last_index()
        liveness = node.liveness
        return frozenset(
            follower
            for follower in followers
            if (
                (progress := core.progress.get(follower)) is not None
                and progress.match_index == last_index
            )
            or (liveness is not None and not liveness.is_alive(follower))
        )

    def check_stable(
        self, leader: RaftCore, terms: dict[int, int], *, isolated: int, rejoined: bool
    ) -> None:
        """Pre-vote (thesis §9.6): the isolated follower never raises its term (its pre-votes
        cannot win). And while `leader` stays healthy, terms do not inflate: the leader keeps its
        term and leadership and no node goes beyond it, neither the isolated follower nor, once
        it rejoined, anyone. (A node behind, such as a removed node that never learned of its
        removal, may still catch up to the leader's term.)

        "Healthy" is Raft's timing requirement between the leader and the other voters, which
        the checker watches (StabilityWatch) instead of assuming, as it once did: seed
        2462318666 (3 voters, election timeout 5 ticks, links of up to 400 ms one way) had
        leader 1 hear nothing from its one reachable follower for a whole check-quorum window
        (a heartbeat round trip of 668 ms against a window of 475 ms), so it stepped down as
        thesis §6.2 (and etcd) require; that follower had timed out too. When the premise
        fails, a new election is legitimate and every safety invariant still judges it; only
        the isolated follower's term is judged regardless."""
        moment = "after rejoining" if rejoined else "while isolated"
        node = self.sim.nodes[isolated]
        if not rejoined and node.core is not None and node.core.term > terms[isolated]:
            self.fail(
                "pre-vote stability",
                f"isolated follower {isolated} went from term {terms[isolated]} to "
                f"{node.core.term} {moment}",
            )
        watch = self.stability
        assert watch is not None and watch.leader == leader.node_id, "start_stability first"
        broken = watch.broken()
        if broken is not None:
            self.stability_excused = broken
            self.sim.trace(f"stability: timing premise failed ({broken}): leadership not judged")
            return
        # Silences the leader caused: not the network's, so they excuse nothing.
        caused = "".join(f"; {silence}" for silence in watch.unexcused)
        if leader.role is not Role.LEADER or self.sim.nodes[leader.node_id].core is not leader:
            self.fail(
                "pre-vote stability",
                f"leader {leader.node_id} of term {terms[leader.node_id]} lost leadership {moment} "
                f"by follower {isolated}{caused}",
            )
        for node_id, node in self.sim.nodes.items():
            # Beyond the leader's term AND beyond its own when the phase began: seed 2660041562
            # had removed node 4 at term 26, ahead of leader 1's 25 from an election it held
            # before the phase (it no longer hears the leader, nor the leader it): no term rose.
            start = max(terms[leader.node_id], terms.get(node_id, 0))
            if node.core is not None and node.core.term > start:
                self.fail(
                    "pre-vote stability",
                    f"node {node_id} went from term {terms.get(node_id)} to {node.core.term} "
                    f"with follower {isolated} {moment} and leader {leader.node_id} healthy"
                    f"{caused}",
                )
