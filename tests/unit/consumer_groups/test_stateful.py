"""Goal: under any interleaving of joins, syncs, heartbeats, leaves, crashes, commits, timeouts,
write outcomes and coordinator failovers, the group core keeps its promises:
- once Stable, every partition is assigned to exactly one member of the current generation;
- a request carrying a stale generation is refused at once;
- an acknowledged commit is never lost: the coordinator's offsets, a replay of the partition and
  the model of acknowledged commits agree after every step, across failovers;
- a transaction's offsets (TxnOffsetCommit, then its marker through the core) become committed
  offsets only once its COMMIT marker is acknowledged, never after an ABORT, and until then are
  exactly the pending offsets of the store (and of its replay).
Clients behave like real consumers (a leader runs the sticky/range assignor on its JoinGroup
answer); the shell is `Harness` with writes persisted or failed by explicit rules.
"""

from __future__ import annotations

import copy
import dataclasses

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.consumer_groups.actions import (
    RespondDeleteGroups,
    RespondJoin,
    RespondOffsetCommit,
    RespondSync,
    RespondTxnMarker,
    RespondTxnOffsetCommit,
    Response,
)
from broker.consumer_groups.events import (
    DeleteGroupsRequested,
    DescribeGroupsRequested,
    HeartbeatReceived,
    LeaveGroupRequested,
    LeavingMember,
    UnloadPartition,
)
from broker.consumer_groups.group import GroupState
from broker.consumer_groups.offsets import replay
from wire.assignors import Assignment, assign_encoded
from wire.error_codes import ErrorCode

from .harness import REBALANCE_MS, SESSION_MS, THOROUGH, Harness, fast_config, tp

GROUP = "g"
SIMPLE = "s"
PARTITION_COUNTS = {"t": 6}
CLIENTS = 5
STATIC = {0: "i0", 1: "i1"}  # clients 0 and 1 are static members
HEARTBEAT_MS = 3_000  # a well-behaved client heartbeats at a third of its session timeout
RESET_ON = (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.FENCED_INSTANCE_ID)
REJOIN_ON = (ErrorCode.REBALANCE_IN_PROGRESS, ErrorCode.ILLEGAL_GENERATION)
PRODUCERS = (100, 101)
TXN_OFFSETS = 2_000  # transactional offsets are >= this, plain ones below: never confused


@dataclasses.dataclass
class Client:
    """One consumer process, as far as the group protocol goes."""

    index: int
    incarnation: int = 0
    member_id: str = ""
    generation: int = -1
    members: tuple = ()  # the leader's JoinGroup member list
    protocol: str = ""
    join_pending: bool = False
    sync_pending: bool = False
    synced: bool = False
    rejoin_needed: bool = False

    @property
    def instance_id(self) -> str | None:
        return STATIC.get(self.index)

    def reset(self) -> None:
        self.member_id, self.generation, self.members, self.synced = "", -1, (), False
        self.rejoin_needed = False

    def restart(self) -> None:
        """A new process: answers to the old one's requests go nowhere."""
        self.reset()
        self.incarnation += 1
        self.join_pending = self.sync_pending = False


class GroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.config = fast_config()
        self.h = Harness(self.config)
        self.h.auto_persist = False
        self.epoch = 1
        self.seen = 0
        self.clients = [Client(i) for i in range(CLIENTS)]
        # request id -> (client index, incarnation, kind, extra)
        self.requests: dict[int, tuple[int, int, str, object]] = {}
        # The model of acknowledged commits: (group, partition) -> (offset, commit request time).
        self.acked: dict[tuple[str, object], tuple[int, int]] = {}
        # commit request id -> (offset, now_ms): what an acknowledgement of it promises
        self.offsets: dict[int, tuple[int, int]] = {}
        self.answered: set[int] = set()  # request ids that got their response
        # Acknowledged transactional commits whose marker is not acknowledged yet:
        # producer -> (group, partition) -> [offset, commit request time, overtaken by a later
        # acknowledged plain commit].
        self.txn_pending: dict[int, dict[tuple[str, object], list]] = {}

    # --- plumbing ---------------------------------------------------------------------------------

    def send(self, client: Client | None, kind: str, extra: object, call) -> int:
        rid = self.h.next_request_id
        index = -1 if client is None else client.index
        incarnation = -1 if client is None else client.incarnation
        self.requests[rid] = (index, incarnation, kind, extra)
        assert call() == rid
        self.absorb()
        return rid

    def absorb(self) -> None:
        """Let clients (and the commit model) see every response the core emitted so far."""
        while self.seen < len(self.h.arrivals):
            response = self.h.arrivals[self.seen]
            self.seen += 1
            self.deliver(response)

    def deliver(self, response: Response) -> None:
        index, incarnation, _kind, extra = self.requests[response.request_id]
        self.answered.add(response.request_id)
        if isinstance(response, RespondOffsetCommit):
            for result in response.partitions:
                if response.error is ErrorCode.NONE and result.error is ErrorCode.NONE:
                    self.acknowledged_commit(response, extra, result.topic_partition)
        if isinstance(response, RespondTxnMarker) and response.error is ErrorCode.NONE:
            producer_id, commit = extra
            for key, (offset, committed_ms, overtaken) in self.txn_pending.pop(
                producer_id, {}
            ).items():
                if commit and not overtaken:  # a later plain commit wins (Kafka's rule)
                    self.acked[key] = (offset, committed_ms)
        if isinstance(response, RespondDeleteGroups):
            deleted = {r.group_id for r in response.groups if r.error is ErrorCode.NONE}
            self.acked = {key: v for key, v in self.acked.items() if key[0] not in deleted}
            open_in_deleted = [
                key for keys in self.txn_pending.values() for key in keys if key[0] in deleted
            ]
            assert not open_in_deleted, f"deleted under an open transaction: {open_in_deleted}"
        if index < 0 or self.clients[index].incarnation != incarnation:
            return  # a crashed incarnation's answer: nobody is listening
        client = self.clients[index]
        if isinstance(response, RespondJoin):
            # Clients never retry a join while one is waiting, so no join is ever superseded.
            assert response.error is not ErrorCode.REBALANCE_IN_PROGRESS, response
            client.join_pending = False
            if response.error is ErrorCode.NONE:
                client.member_id, client.generation = response.member_id, response.generation
                client.members, client.protocol = response.members, response.protocol_name
                client.synced = client.rejoin_needed = False
        elif isinstance(response, RespondSync):
            client.sync_pending = False
            client.synced = response.error is ErrorCode.NONE
        if response.error in REJOIN_ON:
            client.rejoin_needed = True
        if response.error in RESET_ON:
            client.reset()

    def acknowledged_commit(self, response: RespondOffsetCommit, extra: object, part) -> None:
        if isinstance(response, RespondTxnOffsetCommit):
            producer_id, group = extra
            offset, committed_ms = self.offsets[response.request_id]
            pending = self.txn_pending.setdefault(producer_id, {})
            pending[(group, part)] = [offset, committed_ms, False]
            return
        key = (extra, part)
        self.acked[key] = self.offsets[response.request_id]
        for pending in self.txn_pending.values():
            if key in pending:
                pending[key][2] = True

    def group_generation(self) -> int | None:
        description = self.describe()
        return None if description.error is not ErrorCode.NONE else description.generation

    def describe(self):
        rid = self.h.request(DescribeGroupsRequested, group_ids=(GROUP,))
        self.requests[rid] = (-1, -1, "describe", None)
        self.absorb()
        return self.h.response(rid).groups[0]

    # --- client rules -----------------------------------------------------------------------------

    @rule(index=st.integers(0, CLIENTS - 1))
    def join(self, index: int) -> None:
        client = self.clients[index]
        if client.join_pending:
            return
        client.join_pending = True
        self.send(
            client,
            "join",
            None,
            lambda: self.h.join(
                GROUP,
                client.member_id,
                instance_id=client.instance_id,
                names=("sticky", "range"),
                client_id=f"c{index}",
            ),
        )

    @rule(index=st.integers(0, CLIENTS - 1))
    def sync(self, index: int) -> None:
        client = self.clients[index]
        if not client.member_id or client.generation < 0 or client.sync_pending or client.synced:
            return
        assignments = None
        if client.members:
            members = [(m.member_id, m.metadata) for m in client.members]
            assignments = assign_encoded(client.protocol, members, PARTITION_COUNTS)
        stale = self.group_generation() != client.generation
        client.sync_pending = True
        rid = self.send(
            client,
            "sync",
            None,
            lambda: self.h.sync(
                client.member_id,
                client.generation,
                instance_id=client.instance_id,
                assignments=assignments,
            ),
        )
        if stale:
            assert self.h.response(rid).error is not ErrorCode.NONE, "stale sync accepted"

    @rule(index=st.integers(0, CLIENTS - 1), lag=st.sampled_from([0, 0, 0, 1]))
    def heartbeat(self, index: int, lag: int) -> None:
        client = self.clients[index]
        if not client.member_id:
            return
        generation = client.generation - lag
        stale = self.group_generation() != generation
        rid = self.send(
            client,
            "heartbeat",
            None,
            lambda: self.h.request(
                HeartbeatReceived,
                group_id=GROUP,
                generation=generation,
                member_id=client.member_id,
                group_instance_id=client.instance_id,
            ),
        )
        if stale:
            assert self.h.response(rid).error is not ErrorCode.NONE, "stale heartbeat accepted"

    @rule(
        index=st.integers(0, CLIENTS - 1),
        partition=st.integers(0, 5),
        offset=st.integers(0, 1_000),
        lag=st.sampled_from([0, 0, 0, 1]),
    )
    def commit(self, index: int, partition: int, offset: int, lag: int) -> None:
        client = self.clients[index]
        if not client.member_id or client.generation < 0:
            return
        generation = client.generation - lag
        stale = self.group_generation() != generation
        rid = self.h.next_request_id
        self.offsets[rid] = (offset, self.h.now_ms)
        self.send(
            client,
            "commit",
            GROUP,
            lambda: self.h.commit(
                {tp("t", partition): offset},
                member_id=client.member_id,
                generation=generation,
                instance_id=client.instance_id,
            ),
        )
        if stale:
            answer = self.h.response(rid)
            assert answer is not None and answer.error is not ErrorCode.NONE, "stale commit"

    @rule(
        group=st.sampled_from([GROUP, SIMPLE]),
        partition=st.integers(0, 5),
        offset=st.integers(0, 1_000),
    )
    def admin_commit(self, group: str, partition: int, offset: int) -> None:
        rid = self.h.next_request_id
        self.offsets[rid] = (offset, self.h.now_ms)
        self.send(
            None,
            "commit",
            group,
            lambda: self.h.commit({tp("t", partition): offset}, group_id=group),
        )

    @rule(
        producer_id=st.sampled_from(PRODUCERS),
        group=st.sampled_from([GROUP, SIMPLE]),
        partition=st.integers(0, 5),
        offset=st.integers(TXN_OFFSETS, TXN_OFFSETS + 1_000),
        member=st.one_of(st.none(), st.integers(0, CLIENTS - 1)),
        lag=st.sampled_from([0, 0, 0, 1]),
    )
    def txn_commit(
        self, producer_id: int, group: str, partition: int, offset: int, member, lag: int
    ) -> None:
        """A consume-transform-produce step commits its input offsets in its transaction: as a
        member of the group (KIP-447 fencing, maybe with a stale generation) or from outside."""
        client = None if member is None else self.clients[member]
        member_id, generation, instance_id = "", -1, None
        if client is not None and client.member_id and group == GROUP:
            member_id, generation = client.member_id, client.generation - lag
            instance_id = client.instance_id
        stale = member_id and self.group_generation() != generation
        rid = self.h.next_request_id
        self.offsets[rid] = (offset, self.h.now_ms)
        self.send(
            None,
            "commit",
            (producer_id, group),
            lambda: self.h.txn_commit(
                {tp("t", partition): offset},
                producer_id=producer_id,
                group_id=group,
                member_id=member_id,
                generation=generation,
                instance_id=instance_id,
            ),
        )
        if stale:
            answer = self.h.response(rid)
            assert answer is not None and answer.error is not ErrorCode.NONE, "stale txn commit"

    @rule(producer_id=st.sampled_from(PRODUCERS), commit=st.booleans())
    def end_transaction(self, producer_id: int, commit: bool) -> None:
        """The transaction coordinator's marker for this partition (maybe with nothing here)."""
        self.send(
            None,
            "marker",
            (producer_id, commit),
            lambda: self.h.marker(producer_id, commit=commit),
        )

    @precondition(lambda self: any(self.txn_pending.values()))
    @rule(which=st.integers(0, len(PRODUCERS) - 1), commit=st.booleans())
    def end_open_transaction(self, which: int, commit: bool) -> None:
        """As `end_transaction`, for a producer with acknowledged offsets pending (so that the
        interesting markers are not left to chance)."""
        open_ = sorted(producer_id for producer_id, keys in self.txn_pending.items() if keys)
        self.end_transaction(open_[which % len(open_)], commit)

    @rule(index=st.integers(0, CLIENTS - 1))
    def leave(self, index: int) -> None:
        client = self.clients[index]
        if not client.member_id:
            return
        leaving = LeavingMember(client.member_id, client.instance_id)
        self.send(
            client,
            "leave",
            None,
            lambda: self.h.request(
                LeaveGroupRequested,
                group_id=GROUP,
                members=(leaving,),
            ),
        )
        client.restart()

    @rule(index=st.integers(0, CLIENTS - 1))
    def crash(self, index: int) -> None:
        """The process dies silently; a static member will come back with its instance id."""
        self.clients[index].restart()

    # --- the shell's rules ------------------------------------------------------------------------

    @rule(group=st.sampled_from([GROUP, SIMPLE]))
    def delete(self, group: str) -> None:
        self.send(
            None, "delete", None, lambda: self.h.request(DeleteGroupsRequested, group_ids=(group,))
        )

    @rule(roll=st.integers(0, 3))
    def long_pause(self, roll: int) -> None:
        """Forty minutes pass: every session ends, and offsets of empty groups near expiry."""
        if not roll:
            self.tick(self.config.offsets_retention_ms * 2 // 3)

    @rule(advance_ms=st.sampled_from([0, 100, 1_000, 4_000, 11_000, 31_000]))
    def tick(self, advance_ms: int) -> None:
        self.h.tick(advance_ms)
        self.absorb()

    @precondition(lambda self: self.h.pending)
    @rule()
    def persist(self) -> None:
        self.h.persist_next()
        self.absorb()

    @precondition(lambda self: self.h.pending)
    @rule(error=st.sampled_from([ErrorCode.COORDINATOR_NOT_AVAILABLE, ErrorCode.NOT_COORDINATOR]))
    def fail(self, error: ErrorCode) -> None:
        self.h.fail_next(error)
        self.absorb()

    @rule()
    def stabilize(self) -> None:
        """Every consumer runs and behaves (rejoins when told, syncs, heartbeats) while every
        write succeeds: the group must then become Stable with all of them (liveness), at the
        latest once the members of crashed processes are evicted (rebalance + session timeout)."""
        for _ in range(2 * (REBALANCE_MS + SESSION_MS) // HEARTBEAT_MS):
            for client in self.clients:
                if not client.join_pending and (not client.member_id or client.rejoin_needed):
                    self.join(client.index)
            self.tick(HEARTBEAT_MS)
            self.persist_everything()
            for client in self.clients:
                self.sync(client.index)
            self.persist_everything()
            for client in self.clients:
                self.heartbeat(client.index, 0)
            # Settled: every consumer synced, and the members of crashed processes (which may
            # have rejoined before dying) are gone.
            settled = all(c.synced and not c.rejoin_needed for c in self.clients)
            description = self.describe()
            if settled and len(description.members) == CLIENTS:
                break
        assert description.state is GroupState.STABLE, description
        assert sorted(m.member_id for m in description.members) == sorted(
            c.member_id for c in self.clients
        )
        assert {c.generation for c in self.clients} == {description.generation}

    def persist_everything(self) -> None:
        self.h.persist_all()
        self.absorb()

    @rule(roll=st.integers(0, 3))
    def failover(self, roll: int) -> None:
        """Leadership of the partition moves; unreplicated writes are lost with the old leader.
        (One draw in four, so that groups get somewhere between failovers.)"""
        if roll:
            return
        old = self.h
        before = copy.deepcopy(old.core._state.store)
        old.handle(UnloadPartition(now_ms=old.now_ms))
        self.absorb()
        self.epoch += 1
        self.h = Harness(self.config, records=tuple(old.log), now_ms=old.now_ms, epoch=self.epoch)
        self.h.auto_persist = False
        self.h.next_request_id = old.next_request_id
        self.seen = 0
        assert self.h.core._state.store == before, "replay lost or invented data"

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def committed_offsets_are_never_lost(self) -> None:
        store = self.h.core._state.store
        assert replay(self.h.log) == store
        flat = {(g, p): v.offset for g, parts in store.offsets.items() for p, v in parts.items()}
        for key, (offset, committed_ms) in self.acked.items():
            if key in flat:
                assert flat[key] == offset, (key, flat[key], offset)
            else:  # only retention may remove an acknowledged offset, and only once it is due
                retention_ms = self.config.offsets_retention_ms
                assert committed_ms + retention_ms <= self.h.now_ms, f"lost {key}"
        assert set(flat) <= set(self.acked), "an offset nobody was told about"

    @invariant()
    def transactional_offsets_wait_for_their_marker(self) -> None:
        """The store's pending offsets are exactly the acknowledged transactional commits whose
        marker is not acknowledged yet (so nothing of a transaction is committed before its
        COMMIT marker, and an ABORT leaves nothing behind: `acked` never gets its offsets)."""
        store = self.h.core._state.store
        pending = {
            producer_id: {
                (group, part): [
                    value.value.offset,
                    value.value.commit_timestamp_ms,
                    value.overtaken,
                ]
                for group, parts in groups.items()
                for part, value in parts.items()
            }
            for producer_id, groups in store.pending.items()
        }
        model = {producer_id: keys for producer_id, keys in self.txn_pending.items() if keys}
        assert pending == model, (pending, model)

    @invariant()
    def every_commit_and_delete_is_answered_or_waits_for_its_write(self) -> None:
        """No write is left unanswered (issue 17: a delete racing commits and retention)."""
        waiting = {w.request_id for w in self.h.core._state.writes.values()}
        unanswered = {
            rid
            for rid, (_, _, kind, _) in self.requests.items()
            if kind in ("commit", "delete", "marker") and rid not in self.answered
        }
        assert unanswered <= waiting, sorted(unanswered - waiting)

    @invariant()
    def timers_never_ask_for_a_tick_in_the_past(self) -> None:
        """A shell that sleeps until next_deadline_ms() must never spin."""
        deadline = self.h.core.next_deadline_ms()
        assert deadline is not None and deadline > self.h.now_ms, (deadline, self.h.now_ms)

    @invariant()
    def stable_means_every_partition_has_exactly_one_owner(self) -> None:
        description = self.describe()
        if description.error is not ErrorCode.NONE or description.state is not GroupState.STABLE:
            return
        owners: dict = {}
        for member in description.members:
            for part in Assignment.decode(member.assignment).partitions:
                owners.setdefault(part, []).append(member.member_id)
        expected = [tp("t", p) for p in range(PARTITION_COUNTS["t"])]
        assert sorted(owners) == expected, owners
        assert all(len(holders) == 1 for holders in owners.values()), owners

    def teardown(self) -> None:
        self.h.core.validate()


def test_issue17_delete_while_retention_tombstones_are_in_flight() -> None:
    """The shortest failing sequence Hypothesis printed for issue 17, replayed rule by rule.

    The second long pause expires the older offset of the simple group "s" only, so retention
    orders tombstones for it while "s" stays Empty; the delete then orders its own tombstones.
    The retention write completing first used to remove "s" (AssertionError: its deletion write
    still pending). Now "s" stays Dead until its deletion is replicated, then it is gone."""
    machine = GroupMachine()
    machine.admin_commit(group=SIMPLE, partition=1, offset=0)
    machine.long_pause(roll=0)
    machine.admin_commit(group=SIMPLE, partition=0, offset=0)
    machine.stabilize()
    machine.long_pause(roll=0)
    machine.persist()
    rid = machine.h.next_request_id
    machine.delete(group=SIMPLE)
    machine.persist()
    machine.committed_offsets_are_never_lost()
    assert machine.h.response(rid) is None, "the deletion's own write is still in flight"
    machine.persist_everything()
    machine.committed_offsets_are_never_lost()
    assert [(r.group_id, r.error) for r in machine.h.response(rid).groups] == [
        (SIMPLE, ErrorCode.NONE)
    ]
    assert SIMPLE not in machine.h.core._state.groups
    assert SIMPLE not in replay(machine.h.log).group_ids()
    machine.every_commit_and_delete_is_answered_or_waits_for_its_write()
    machine.teardown()


TestGroupMachine = GroupMachine.TestCase
TestGroupMachine.settings = settings(
    max_examples=1_000 if THOROUGH else 100,
    stateful_step_count=100 if THOROUGH else 50,
    deadline=None,
)
