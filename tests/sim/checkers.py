"""Safety and liveness checks the simulator runs after every event (Raft paper Figure 3).

- Election safety: at most one leader per term.
- Log matching: an (index, term) pair names one batch with one predecessor, on every node, forever
  (checked when entries are written, which by induction gives identical prefixes).
- Leader completeness / state machine safety: a committed entry is never changed, and every node
  that becomes leader holds every entry committed before.
- Electoral safety of commits: no node lacking the newest committed entry has a log at least as
  up to date as a majority of the voters that committed it (so no election can overwrite it).
- Acknowledged writes: an entry the leader commits (and so acknowledges to its client) is durable on
  a majority of the voters it committed with, and stays so.
- Commit indexes never go backwards on a node that did not crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.raft import quorum
from broker.raft.core import RaftCore, Role
from broker.raft.messages import Entry
from broker.raft.storage import CompactedError, MemoryStorage, StorageError

if TYPE_CHECKING:
    from tests.sim.simulator import SimNode, Simulation


class SimulationFailure(AssertionError):
    def __init__(self, seed: int, message: str) -> None:
        super().__init__(
            f"simulation seed {seed} failed: {message}\n"
            f"reproduce with: pytest tests/sim --seed {seed}"
        )
        self.seed = seed


class Checker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leaders_by_term: dict[int, int] = {}
        self.checked_leaders: dict[tuple[int, int], bool] = {}
        # (index, term) -> (batch bytes, previous index, previous term)
        self.registry: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.committed_max = -1
        # (index, term) -> the voters it was durable on a majority of when committed
        self.commit_voters: dict[tuple[int, int], tuple[int, ...]] = {}
        self.acknowledged: dict[tuple[int, int], bool] = {}
        self.commit_seen: dict[int, int] = {}
        self.leader_commit_seen: dict[tuple[int, int], int] = {}
        self.healed_payload_target = -1
        self.steps = 0
        # The newest entry a leader committed, with the voters it committed with; checked for
        # electoral safety whenever a log changed (a write, a crash, a compaction).
        self.newest_commit: tuple[int, int, tuple[int, ...]] | None = None
        self.logs_changed = False

    def fail(self, message: str) -> None:
        raise SimulationFailure(self.sim.seed, f"{message}\n{self.sim.failure_report()}")

    # --- notifications -------------------------------------------------------------------------

    def on_append(self, node: SimNode, view: MemoryStorage, entries: list[Entry]) -> None:
        self.logs_changed = True
        for entry in entries:
            previous_index = entry.base_index - 1
            value = (entry.data, previous_index, view.term(previous_index))
            known = self.registry.setdefault((entry.index, entry.term), value)
            if known != value:
                self.fail(
                    f"log matching: node {node.node_id} wrote {entry.index}@{entry.term} after "
                    f"{previous_index}@{value[2]} (or with other bytes) but another node holds it "
                    f"after {known[1]}@{known[2]}"
                )

    def on_apply(self, node: SimNode, entry: Entry) -> None:
        if entry.base_index != node.applied_index + 1:
            self.fail(
                f"node {node.node_id} applied {entry.base_index}..{entry.index} right after "
                f"{node.applied_index}: applied entries must be contiguous"
            )
        self._record_committed(node.node_id, entry)
        key = (entry.index, entry.term)
        payload = self.sim.proposal_owner.get(key)
        if payload is not None:
            payload.committed = True
        core = node.core
        if payload is not None and core is not None and core.role is Role.LEADER:
            # The leader applying its client's entry is the acknowledgement.
            self.acknowledged[key] = True
            self._check_on_majority(entry.index, entry.term, self.commit_voters.get(key))

    def on_crash(self, node: SimNode) -> None:
        self.logs_changed = True
        self.commit_seen.pop(node.node_id, None)

    def on_heal(self) -> None:
        self.healed_payload_target = len(self.sim.payloads) + 2

    # --- after every step ----------------------------------------------------------------------

    def after_step(self) -> None:
        self.steps += 1
        for node_id, node in self.sim.nodes.items():
            core = node.core
            if core is None:
                continue
            core.validate()
            previous = self.commit_seen.get(node_id, -1)
            if core.commit_index < previous:
                self.fail(
                    f"node {node_id} commit index went back from {previous} to "
                    f"{core.commit_index} without a crash"
                )
            self.commit_seen[node_id] = core.commit_index
            if core.role is Role.LEADER:
                self._check_leader(core)
        if self.logs_changed and self.newest_commit is not None:
            self.logs_changed = False
            self._check_electorally_safe(*self.newest_commit)

    def _check_leader(self, core: RaftCore) -> None:
        leader = self.leaders_by_term.setdefault(core.term, core.node_id)
        if leader != core.node_id:
            self.fail(f"two leaders in term {core.term}: nodes {leader} and {core.node_id}")
        key = (core.term, core.node_id)
        if key not in self.checked_leaders:
            self.checked_leaders[key] = True
            self._check_completeness(core)
            self.sim.on_new_leader(core)
            self.leader_commit_seen[key] = core.commit_index
        seen = self.leader_commit_seen[key]
        if core.commit_index > seen:
            self.leader_commit_seen[key] = core.commit_index
            voters = core.configuration.voters
            self.sim.on_leader_commit(core)
            for entry in core.log.entries(seen + 1, core.commit_index + 1, 1 << 62):
                self._record_committed(core.node_id, entry)
                self.commit_voters[(entry.index, entry.term)] = voters
                self._check_on_majority(entry.index, entry.term, voters)
            self.newest_commit = (core.commit_index, core.log.term(core.commit_index), voters)
            self.logs_changed = True

    def _check_completeness(self, core: RaftCore) -> None:
        # Log matching (checked on every write) makes the newest committed entry enough: holding it
        # means holding the whole committed prefix. Acknowledged entries are checked one by one.
        indexes = sorted(self.committed)[-20:] + sorted(i for i, _ in self.acknowledged)
        for index in indexes:
            term = self.committed[index][0] if index in self.committed else None
            if term is None:
                continue
            if index < core.log.first_index():
                continue  # inside the leader's snapshot, which only ever covers committed entries
            try:
                held = core.log.term(index)
            except StorageError:
                held = None
            if held != term:
                self.fail(
                    f"leader completeness: node {core.node_id} leads term {core.term} without "
                    f"committed entry {index}@{term} (it holds {held})"
                )

    def _record_committed(self, node_id: int, entry: Entry) -> None:
        known = self.committed.setdefault(entry.index, (entry.term, entry.data))
        if known != (entry.term, entry.data):
            self.fail(
                f"committed entry changed: node {node_id} has {entry.index}@{entry.term} where "
                f"{entry.index}@{known[0]} was committed"
            )
        self.committed_max = max(self.committed_max, entry.index)

    def _check_on_majority(self, index: int, term: int, voters: tuple[int, ...] | None) -> None:
        if voters is None:
            return
        holders = [voter for voter in voters if self._durable_has(voter, index, term)]
        if len(holders) < quorum.majority(len(voters)):
            self.fail(
                f"entry {index}@{term} committed but durable only on {holders} of voters {voters}"
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
        majority = quorum.majority(len(voters))
        for node_id, node in self.sim.nodes.items():
            for log in (node.disk.view, node.disk.durable):
                if self._storage_has(log, index, term):
                    continue
                position = self._last_position(log)
                supporters = sum(1 for other in voter_logs if position >= other)
                if supporters >= majority:
                    self.fail(
                        f"committed entry {index}@{term} is missing on node {node_id}, whose log "
                        f"ending at {position[1]}@{position[0]} could win the votes of "
                        f"{supporters} of voters {voters}"
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
            self.fail("liveness: after healing, within the tick bound: " + "; ".join(problems))

    def _liveness_problems(self) -> list[str]:
        problems = []
        cores = {n: node.core for n, node in self.sim.nodes.items() if node.core is not None}
        # A live leader: every voter of its configuration follows it in its term and has caught up
        # with its commit index. (A removed node that never learned of its removal may campaign
        # forever; the lease makes voters ignore it.)
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
