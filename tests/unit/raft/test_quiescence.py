"""Goal: the core's quiescence transitions (docs/raft.md, "Quiescence"): when a leader goes quiet,
what its last heartbeat says, what a quiet follower accepts, and everything that wakes a group.

A tiny synchronous network of three cores: `Group.stabilize()` delivers every message until none
is left, handling each Ready as a driver would (persist, then report persisted).
"""

from __future__ import annotations

import random

from broker.raft.config import RaftConfig
from broker.raft.core import RaftCore, Role
from broker.raft.messages import (
    AppendResponse,
    Configuration,
    Heartbeat,
    HeartbeatResponse,
    Message,
    VoteRequest,
)
from broker.raft.storage import MemoryStorage
from wire import batch as batch_codec

ELECTION_TICKS = 10


class Group:
    """Three (or `size`) cores over MemoryStorage with a lossless, in-order message queue."""

    def __init__(self, size: int = 3, **config: object) -> None:
        voters = tuple(range(1, size + 1))
        options = {"election_timeout_ticks": ELECTION_TICKS, **config}
        self.config = RaftConfig(**options)  # type: ignore[arg-type]
        self.cores = {
            node: RaftCore(
                node_id=node,
                storage=MemoryStorage(Configuration.of(voters)),
                config=self.config,
                rng=random.Random(node),
            )
            for node in voters
        }
        self.down: set[int] = set()
        self.sent: list[Message] = []

    def drain(self, node: int) -> list[Message]:
        core = self.cores[node]
        messages: list[Message] = []
        while core.has_ready():
            ready = core.ready()
            storage = core.log.storage
            if ready.snapshot is not None:
                storage.apply_snapshot(ready.snapshot)  # type: ignore[attr-defined]
            storage.append(ready.entries)  # type: ignore[attr-defined]
            if ready.hard_state is not None:
                storage.set_hard_state(ready.hard_state)  # type: ignore[attr-defined]
            messages += ready.messages
            core.advance(ready)
            core.persisted(ready.last_index, ready.last_term)
        return messages

    def stabilize(self) -> None:
        queue = [message for node in self.cores for message in self.drain(node)]
        while queue:
            message = queue.pop(0)
            self.sent.append(message)
            if message.target in self.down or message.source in self.down:
                continue
            self.cores[message.target].step(message)
            self.cores[message.target].validate()
            queue += self.drain(message.target)
            queue += self.drain(message.source)

    def tick(self, node: int, count: int = 1) -> None:
        for _ in range(count):
            self.cores[node].tick()
            self.cores[node].validate()
            self.stabilize()

    def tick_all(self, count: int = 1) -> None:
        for _ in range(count):
            for node, core in self.cores.items():
                if node not in self.down:
                    core.tick()
                    core.validate()
            self.stabilize()

    def elect(self, node: int = 1) -> RaftCore:
        self.cores[node].campaign()
        self.stabilize()
        assert self.cores[node].role is Role.LEADER
        return self.cores[node]

    def quiet(self, node: int = 1) -> RaftCore:
        """Elect `node` and tick everyone until the group is quiet."""
        leader = self.elect(node)
        for _ in range(5):
            self.tick_all()
            if all(core.quiescent for core in self.cores.values()):
                return leader
        raise AssertionError("the group did not go quiet")


def batch(value: bytes = b"v") -> bytes:
    return batch_codec.build_batch([(0, None, value, None)])


def test_a_caught_up_group_goes_quiet_with_one_flagged_heartbeat_and_then_sends_nothing() -> None:
    group = Group()
    leader = group.quiet()
    quiesce = [m for m in group.sent if isinstance(m, Heartbeat) and m.quiesce]
    # One quiesce heartbeat per follower, carrying the commit = the leader's last index.
    assert sorted(m.target for m in quiesce) == [2, 3]
    assert {m.commit_index for m in quiesce} == {leader.log.last_index()} == {leader.commit_index}
    # Nobody answers it, and from here on no tick produces anything, however long.
    answered = group.sent.index(quiesce[-1])
    assert not any(isinstance(m, HeartbeatResponse) for m in group.sent[answered:])
    group.sent.clear()
    group.tick_all(5 * ELECTION_TICKS)
    assert group.sent == []
    assert all(core.quiescent for core in group.cores.values())
    assert leader.role is Role.LEADER and all(c.leader_id == 1 for c in group.cores.values())
    assert leader.statistics().quiescent and leader.statistics().quiesced == 1


def test_a_leader_with_unreplicated_or_uncommitted_entries_keeps_heartbeating() -> None:
    group = Group()
    leader = group.elect()
    group.down.add(3)  # node 3 misses the next entry: its match stays behind
    leader.propose(batch())
    group.stabilize()
    group.sent.clear()
    group.tick(1, 3 * ELECTION_TICKS // 2)
    assert not leader.quiescent
    assert any(isinstance(m, Heartbeat) and not m.quiesce for m in group.sent)
    assert not any(isinstance(m, Heartbeat) and m.quiesce for m in group.sent)


def test_a_follower_that_does_not_go_quiet_answers_and_its_pre_vote_wakes_the_leader() -> None:
    """A follower whose log misses the commit a quiesce heartbeat tells it stays awake and
    answers. The leader holds it caught up, so the answer reads as a late one and wakes nothing;
    the follower's election timer runs out, its pre-vote wakes the leader, which heartbeats it,
    and the group goes quiet again under the same leader and term."""
    group = Group()
    leader = group.quiet()
    term = leader.term
    follower = group.cores[2]
    follower._wake()  # as if it had missed the quiesce heartbeat
    # A quiesce heartbeat whose commit it cannot reach (beyond its log): it answers instead...
    follower.step(Heartbeat(1, 2, leader.term, follower.log.last_index() + 5, quiesce=True))
    answer = group.drain(2)
    assert answer == [HeartbeatResponse(2, 1, leader.term)]
    assert not follower.quiescent
    leader.step(answer[0])
    assert leader.quiescent
    group.sent.clear()
    for _ in range(4 * ELECTION_TICKS):
        group.tick_all()
        if all(core.quiescent for core in group.cores.values()):
            break
    assert all(core.quiescent for core in group.cores.values())
    assert any(isinstance(m, VoteRequest) and m.pre_vote and m.source == 2 for m in group.sent)
    assert leader.role is Role.LEADER and leader.term == term
    assert all(core.leader_id == 1 for core in group.cores.values())


def test_late_answers_of_caught_up_followers_keep_a_quiet_leader_quiet() -> None:
    """Under load the answers to heartbeats (coalesced per transport interval) and appends sent
    before the leader went quiet arrive after it: they say nothing new and wake nothing. A
    rejection does wake it."""
    group = Group()
    leader = group.quiet()
    last = leader.log.last_index()
    leader.step(HeartbeatResponse(2, 1, leader.term))
    leader.step(AppendResponse(3, 1, leader.term, True, last))  # a duplicate: no match moves
    assert leader.quiescent and group.drain(1) == []
    assert leader.statistics().woken == 0
    leader.step(AppendResponse(3, 1, leader.term, False, last, hint_index=last, hint_term=1))
    assert not leader.quiescent
    group.stabilize()
    group.tick_all(3)
    assert all(core.quiescent for core in group.cores.values())


def test_without_pre_vote_or_the_lease_an_awake_follower_is_heartbeated_not_elected() -> None:
    """Without pre-vote (or without check-quorum's lease) a follower left awake would start a
    real election when its timer ran out: there every answer wakes the quiet leader, as before,
    and a follower woken after its quiesce heartbeat (a late commit broadcast) goes quiet again
    under the same leader and term."""
    for options in ({"pre_vote": False}, {"check_quorum": False}):
        group = Group(**options)
        leader = group.quiet()
        term = leader.term
        follower = group.cores[2]
        follower.step(Heartbeat(1, 2, term, leader.commit_index))  # late, not flagged quiesce
        assert not follower.quiescent
        answer = group.drain(2)
        assert answer == [HeartbeatResponse(2, 1, term)]
        leader.step(answer[0])
        assert not leader.quiescent, options
        group.tick_all(4 * ELECTION_TICKS)
        assert all(core.quiescent for core in group.cores.values()), options
        assert leader.role is Role.LEADER and leader.term == term, options


def test_an_answer_from_a_follower_held_dead_wakes_the_quiet_leader() -> None:
    """A leader that went quiet without a follower reported dead wakes on its first message,
    even a plain heartbeat answer: the follower is back and may have missed entries."""
    group = Group()
    leader = group.quiet()
    group.down.add(2)
    leader.report_peer_dead(2)
    group.tick_all(3)
    assert leader.quiescent
    leader.step(HeartbeatResponse(2, 1, leader.term))
    assert not leader.quiescent


def test_a_proposal_wakes_the_leader_and_its_appends_wake_the_followers() -> None:
    group = Group()
    leader = group.quiet()
    entry = leader.propose(batch())
    assert not leader.quiescent
    group.stabilize()
    assert all(not core.quiescent for core in group.cores.values())
    assert all(core.commit_index == entry.index for core in group.cores.values())
    # Once everyone answered after the wake, the group goes quiet again.
    group.tick_all(3)
    assert all(core.quiescent for core in group.cores.values())
    assert leader.statistics().woken == 1 and leader.statistics().quiesced == 2


def test_quiet_followers_run_no_election_timer() -> None:
    group = Group()
    group.quiet()
    group.down.add(1)  # the leader dies, and nothing tells the followers
    group.tick_all(10 * ELECTION_TICKS)
    assert all(group.cores[node].leader_id == 1 for node in (2, 3))
    assert all(group.cores[node].role is Role.FOLLOWER for node in (2, 3))


def test_a_dead_leader_reported_by_the_link_liveness_wakes_followers_and_they_elect() -> None:
    group = Group()
    old = group.quiet()
    group.down.add(1)
    for node in (2, 3):
        group.cores[node].report_peer_dead(1)
        assert not group.cores[node].quiescent
        assert group.cores[node].leader_id == 0  # forgotten: its lease no longer holds
    group.tick_all(3 * ELECTION_TICKS)
    leaders = [core for core in group.cores.values() if core.role is Role.LEADER]
    assert [core.node_id for core in leaders if core.term > old.term] in ([2], [3])


def test_a_dead_leader_is_succeeded_at_once_by_the_first_live_voter_in_turn() -> None:
    """The first live voter (sorted voters rotated by the term) campaigns the moment it learns
    of the death: no tick, no election timeout, and no split vote with the other follower."""
    group = Group()
    old = group.quiet()
    group.down.add(1)
    live = [2, 3]
    first = live[old.term % 2]
    for node in (2, 3):
        group.cores[node].report_peer_dead(1)
    group.stabilize()
    assert group.cores[first].role is Role.LEADER
    assert group.cores[first].term == old.term + 1
    assert all(group.cores[node].leader_id == first for node in live)


def test_the_first_in_turn_asks_again_at_its_next_tick_if_a_follower_still_held_the_lease() -> None:
    group = Group()
    old = group.quiet()
    group.down.add(1)
    live = [2, 3]
    first, other = live[old.term % 2], live[(old.term + 1) % 2]
    group.cores[first].report_peer_dead(1)
    group.stabilize()  # `other` has not heard of the death: it ignores the pre-vote
    assert group.cores[first].role is Role.PRE_CANDIDATE
    group.cores[other].report_peer_dead(1)
    group.tick(first)
    assert group.cores[first].role is Role.LEADER
    assert group.cores[other].leader_id == first


def test_the_next_voter_in_turn_campaigns_one_tick_later_if_the_first_is_gone_too() -> None:
    group = Group(size=5)
    old = group.quiet()
    live = [2, 3, 4, 5]
    first, second = live[old.term % 4], live[(old.term + 1) % 4]
    group.down |= {1, first}
    for node in live:
        if node != first:
            group.cores[node].report_peer_dead(1)
    group.stabilize()
    assert not any(group.cores[node].role is Role.LEADER for node in live if node != first)
    group.tick_all(2)
    assert group.cores[second].role is Role.LEADER


def test_a_peer_that_is_neither_leader_nor_follower_here_wakes_nothing() -> None:
    group = Group()
    leader = group.quiet()
    group.cores[2].report_peer_dead(3)  # a fellow follower: not what node 2 depends on
    assert group.cores[2].quiescent and group.cores[2].leader_id == 1
    leader.report_peer_dead(7)  # not a member
    assert leader.quiescent


def test_a_leader_goes_quiet_without_a_dead_follower_and_steps_down_without_a_majority() -> None:
    """A dead follower wakes the leader (check-quorum runs again), which goes quiet once more
    with the followers still alive as long as they and it are a majority: a dead broker does
    not keep its thousands of groups heartbeating. Losing the majority keeps it awake, and
    check-quorum deposes it."""
    group = Group()
    leader = group.quiet()
    group.down.add(2)
    leader.report_peer_dead(2)
    assert not leader.quiescent
    leader.propose(batch())  # an entry node 2 misses
    group.tick_all(3 * ELECTION_TICKS)
    assert leader.role is Role.LEADER and leader.quiescent
    assert group.cores[3].quiescent and group.cores[3].commit_index == leader.log.last_index()
    assert group.cores[2].log.last_index() < leader.log.last_index()
    group.down.add(3)
    leader.report_peer_dead(3)
    assert not leader.quiescent
    group.tick_all(3 * ELECTION_TICKS)
    assert leader.role is not Role.LEADER  # check-quorum runs again once awake


def test_a_dead_follower_reported_alive_is_caught_up_and_the_group_goes_quiet_again() -> None:
    """The liveness hears a dead follower again: the quiet leader wakes, sends it what it
    missed, and goes quiet once it holds the whole log."""
    group = Group()
    leader = group.quiet()
    group.down.add(2)
    leader.report_peer_dead(2)
    leader.propose(batch())
    group.tick_all(3 * ELECTION_TICKS)
    assert leader.quiescent and group.cores[2].log.last_index() < leader.log.last_index()
    group.down.discard(2)
    group.sent.clear()
    leader.report_peer_alive(2)
    assert not leader.quiescent
    for _ in range(3 * ELECTION_TICKS):
        group.tick_all()
        if all(core.quiescent for core in group.cores.values()):
            break
    assert all(core.quiescent for core in group.cores.values())
    assert group.cores[2].log.last_index() == leader.log.last_index() == leader.commit_index
    assert any(m.target == 2 for m in group.sent)
    leader.report_peer_alive(2)  # not dead here (any more): nothing to do
    assert leader.quiescent


def test_a_vote_request_of_a_newer_term_wakes_a_quiet_node_a_stale_message_does_not() -> None:
    group = Group()
    leader = group.quiet()
    follower = group.cores[3]
    follower.step(HeartbeatResponse(2, 3, leader.term - 1))  # older term: changes nothing
    assert follower.quiescent
    last = follower.log.last_index()
    follower.step(VoteRequest(2, 3, leader.term + 1, last, follower.log.last_term(), pre_vote=True))
    assert not follower.quiescent
    # The lease still holds: a live leader was heard from, so the pre-vote is not granted.
    assert group.drain(3) == []


def test_a_restarted_follower_rejoins_a_quiet_group() -> None:
    """A follower restarted from its storage starts awake with no leader: its pre-vote wakes the
    quiet leader, which heartbeats it, and the group goes quiet again."""
    group = Group()
    leader = group.quiet()
    storage = group.cores[3].log.storage
    group.cores[3] = RaftCore(node_id=3, storage=storage, config=group.config, rng=random.Random(9))
    for _ in range(4 * ELECTION_TICKS):
        group.tick_all()
        if all(core.quiescent for core in group.cores.values()):
            break
    assert all(core.quiescent for core in group.cores.values())
    assert group.cores[3].leader_id == 1 and leader.role is Role.LEADER


def test_transfer_and_campaign_wake_the_group() -> None:
    group = Group()
    leader = group.quiet()
    leader.transfer_leadership(2)
    assert not leader.quiescent
    group.stabilize()
    assert group.cores[2].role is Role.LEADER
    group.tick_all(3)
    assert all(core.quiescent for core in group.cores.values())
    group.cores[3].campaign()
    assert not group.cores[3].quiescent


def test_a_single_voter_goes_quiet_and_a_proposal_wakes_it() -> None:
    group = Group(size=1)
    leader = group.quiet()
    entry = leader.propose(batch())
    group.stabilize()
    assert leader.commit_index == entry.index
    group.tick_all()
    assert leader.quiescent


def test_quiescence_off_keeps_heartbeating() -> None:
    group = Group(quiesce=False)
    group.elect()
    group.sent.clear()
    group.tick_all(2 * ELECTION_TICKS)
    assert not any(core.quiescent for core in group.cores.values())
    assert sum(isinstance(m, Heartbeat) for m in group.sent) == 2 * 2 * ELECTION_TICKS
