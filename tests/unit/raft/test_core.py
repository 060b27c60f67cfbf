"""Goal: RaftCore's contract details that the scripts and the simulator do not pin down directly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.raft.config import RaftConfig
from broker.raft.core import RaftCore, Role
from broker.raft.errors import NotLeaderError, ProposalDroppedError
from broker.raft.messages import (
    AppendRequest,
    AppendResponse,
    Configuration,
    Heartbeat,
    VoteRequest,
    VoteResponse,
    assign_entry,
    entry_from_batch,
)
from broker.raft.raft_log import RaftLog
from broker.raft.storage import CompactedError, MemoryStorage
from tests.sim.broken_cores import NoCommitClampCore
from tests.unit.raft.interaction import InteractionEnv, parse_script
from tests.unit.raft.test_interaction import TESTDATA
from wire import batch as batch_codec
from wire.config_error import ConfigError


def make_core(node_id: int = 1, voters: tuple[int, ...] = (1,), **config: object) -> RaftCore:
    return RaftCore(
        node_id=node_id,
        storage=MemoryStorage(Configuration.of(voters)),
        config=RaftConfig(**config),  # type: ignore[arg-type]
        rng=random.Random(node_id),
    )


def drain(core: RaftCore, storage: MemoryStorage | None = None) -> list:
    """Handle every Ready synchronously (persist, then report) and return the messages."""
    messages = []
    storage = storage if storage is not None else core.log.storage  # type: ignore[assignment]
    while core.has_ready():
        ready = core.ready()
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)
        messages += ready.messages
        core.advance(ready)
        core.persisted(ready.last_index, ready.last_term)
    return messages


def batch(value: bytes = b"v", records: int = 1) -> bytes:
    return batch_codec.build_batch([(0, None, value, None)] * records)


def test_config_validate_names_the_bad_field() -> None:
    RaftConfig().validate()
    with pytest.raises(ConfigError) as error:
        RaftConfig(heartbeat_ticks=10, election_timeout_ticks=10).validate()
    assert error.value.key == "heartbeat_ticks"
    with pytest.raises(ConfigError) as error:
        RaftConfig(inflight_messages_max=0).validate()
    assert error.value.key == "inflight_messages_max"
    with pytest.raises(ConfigError):
        make_core(election_timeout_ticks=1)


def test_propose_assigns_offsets_and_term_outside_the_crc() -> None:
    core = make_core()
    core.campaign()
    drain(core)
    assert core.role is Role.LEADER
    entry = core.propose(batch(records=3))
    header = batch_codec.validate_batch(entry.data)  # the CRC still holds
    assert header.base_offset == 1  # after the leader's no-op at 0
    assert header.leader_epoch == core.term
    assert (entry.base_index, entry.index, entry.term) == (1, 3, core.term)
    assert core.propose(batch()).base_index == 4


def test_leader_counts_its_own_entry_only_once_persisted() -> None:
    core = make_core()
    core.campaign()
    drain(core)
    entry = core.propose(batch())
    ready = core.ready()
    assert ready.entries == (entry,)
    assert ready.must_sync
    core.log.storage.append(ready.entries)  # type: ignore[attr-defined]
    core.advance(ready)
    assert core.commit_index < entry.index, "written but not yet fsynced: not committed"
    core.persisted(ready.last_index, ready.last_term)
    assert core.commit_index == entry.index


def test_vote_is_persisted_with_the_response() -> None:
    core = make_core(node_id=2, voters=(1, 2, 3))
    core.step(VoteRequest(source=1, target=2, term=5, last_index=-1, last_term=0))
    ready = core.ready()
    assert ready.hard_state is not None
    assert (ready.hard_state.term, ready.hard_state.vote) == (5, 1)
    assert ready.must_sync
    assert ready.messages == (VoteResponse(2, 1, 5, True, False),)
    core.advance(ready)


def follower_with_a_stale_tail(core_class: type[RaftCore]) -> RaftCore:
    """Node 2 holds 0@1 1@1 (shared with the next leader) and a stale tail 2@1, commit 0; node 3
    then leads term 2 and resends only 1@1, announcing commit 2 (its own entry 2@2)."""
    core = core_class(
        node_id=2,
        storage=MemoryStorage(Configuration.of((1, 2, 3))),
        config=RaftConfig(check_quorum=False),
        rng=random.Random(2),
    )
    shared = (
        assign_entry(batch(), base_index=0, term=1),
        assign_entry(batch(), base_index=1, term=1),
    )
    stale = assign_entry(batch(b"stale"), base_index=2, term=1)
    core.step(AppendRequest(1, 2, 1, -1, 0, (*shared, stale), commit_index=0))
    drain(core)
    assert core.commit_index == 0
    # prev_index 0 is not below the commit index 0: this takes the clamp's path, not the early
    # return for old messages.
    core.step(AppendRequest(3, 2, 2, 0, 1, shared[1:], commit_index=2))
    drain(core)
    assert core.log.last_index() == 2, "the request matched, so the stale tail is still there"
    return core


def test_follower_clamps_the_leader_commit_to_its_last_new_entry() -> None:
    """STYLE §7.4 / etcd commitTo(min(committed, lastnewi)): entries beyond the last one this
    request proved shared may be a stale divergent tail; committing 2@1 would apply data the
    leader (which committed 2@2) never wrote."""
    assert follower_with_a_stale_tail(RaftCore).commit_index == 1
    # The scenario really reaches the clamp: the simulator's broken core commits the tail.
    assert follower_with_a_stale_tail(NoCommitClampCore).commit_index == 2


def test_a_stale_pre_vote_grant_does_not_win_a_later_round() -> None:
    """Regression (found by the simulator's term-cause invariant, seed 67): a granted pre-vote
    answer carries the term it was asked for. A delayed grant from an earlier round used to count
    toward the current one, so a node raised its term without a pre-vote majority (thesis §9.6)."""
    core = make_core(node_id=1, voters=(1, 2, 3), pre_vote=True)
    core.campaign()  # pre-vote for term 1
    drain(core)
    core.step(VoteResponse(2, 1, 1, True, True))
    drain(core)
    assert (core.role, core.term) == (Role.CANDIDATE, 1)
    core.campaign()  # the term-1 election stalls; pre-vote for term 2
    drain(core)
    assert (core.role, core.term) == (Role.PRE_CANDIDATE, 1)
    core.step(VoteResponse(2, 1, 1, True, True))  # the round-1 grant, duplicated and delayed
    drain(core)
    assert (core.role, core.term) == (Role.PRE_CANDIDATE, 1)
    core.step(VoteResponse(3, 1, 2, True, True))  # a grant for this round wins it
    drain(core)
    assert (core.role, core.term) == (Role.CANDIDATE, 2)


def test_a_removed_node_cannot_depose_a_live_leader_even_without_check_quorum() -> None:
    """Regression (simulator seed 742598957, pre-vote and check-quorum both off): node 4, removed
    before it learned so, campaigned again and again; its higher-term VoteRequest made every
    voter, the leader too, step down each time, so the group never settled. A candidate that is
    not a voter here is ignored while we hear from a leader; between voters nothing changed."""
    core = make_core(node_id=2, voters=(1, 2, 3), check_quorum=False, pre_vote=False)
    core.step(AppendRequest(1, 2, 1, -1, 0, (), commit_index=-1))  # leader 1 of term 1
    drain(core)
    core.step(VoteRequest(source=4, target=2, term=5, last_index=-1, last_term=0))
    assert drain(core) == []  # dropped: no answer, no new term
    assert (core.term, core.leader_id) == (1, 1)
    # A voter's request still moves the term (the lease needs check_quorum among voters).
    core.step(VoteRequest(source=3, target=2, term=6, last_index=-1, last_term=0))
    drain(core)
    assert core.term == 6
    # Once no leader is heard from, the outsider is heard too (it may be a voter we do not know).
    follower = make_core(node_id=2, voters=(1, 2, 3), check_quorum=False, pre_vote=False)
    follower.step(AppendRequest(1, 2, 1, -1, 0, (), commit_index=-1))
    drain(follower)
    for _ in range(follower.config.election_timeout_ticks):
        follower.tick()
    drain(follower)
    follower.step(VoteRequest(source=4, target=2, term=9, last_index=-1, last_term=0))
    drain(follower)
    assert follower.term == 9


def test_rejection_carries_the_fast_backtracking_hint() -> None:
    core = make_core(node_id=2, voters=(1, 2, 3), check_quorum=False)
    entries = (
        assign_entry(batch(records=3), base_index=0, term=1),
        assign_entry(batch(records=2), base_index=3, term=2),
        assign_entry(batch(), base_index=5, term=2),
    )
    core.step(AppendRequest(1, 2, 2, -1, 0, entries, commit_index=-1))
    drain(core)
    core.step(AppendRequest(1, 2, 4, 9, 3, (), commit_index=-1))
    (response,) = drain(core)
    assert isinstance(response, AppendResponse)
    assert not response.success
    # Largest index <= min(9, last 5) with term <= 3 is 5; the leader maps it onto its log.
    assert (response.match_index, response.hint_index, response.hint_term) == (9, 5, 2)
    # The leader holds 5@1: the follower's whole term-2 suffix is skipped in one round trip.
    core.step(AppendRequest(1, 2, 4, 5, 1, (), commit_index=-1))
    (response,) = drain(core)
    assert (response.hint_index, response.hint_term) == (2, 1)


def test_proposals_are_bounded_and_refused_off_the_leader() -> None:
    follower = make_core(node_id=2, voters=(1, 2))
    with pytest.raises(NotLeaderError):
        follower.propose(batch())
    core = make_core(voters=(1, 2), uncommitted_bytes_max=300)
    core.campaign()
    drain(core)
    core.step(VoteResponse(2, 1, core.term + 1, True, True))  # a grant carries the asked term
    drain(core)
    core.step(VoteResponse(2, 1, core.term, True, False))
    drain(core)
    assert core.role is Role.LEADER
    with pytest.raises(ProposalDroppedError):
        for _ in range(10):
            core.propose(batch(b"x" * 40))
    assert core.statistics().proposals_dropped == 1
    assert core.statistics().uncommitted_bytes <= 300


def test_ready_advance_contract_is_asserted() -> None:
    """Asserts are live (never run with python -O): misuse crashes instead of corrupting state."""
    core = make_core()
    core.campaign()
    core.ready()
    with pytest.raises(AssertionError):
        core.tick()


def test_statistics_snapshot() -> None:
    core = make_core()
    core.campaign()
    drain(core)
    core.propose(batch())
    drain(core)
    stats = core.statistics()
    assert stats.role is Role.LEADER
    assert stats.elections_won == 1
    assert stats.proposals_accepted == 1
    assert stats.commit_index == stats.last_index == 1
    assert stats.entries_committed == 2


def run_script(core_class: type[RaftCore], name: str) -> list[list[str]]:
    env = InteractionEnv(core_class)
    return [env.run(block) for block in parse_script((TESTDATA / name).read_text())]


class CountReplicasCore(RaftCore):
    """Figure 8's wrong rule: commit whatever a majority holds, whatever its term."""

    def _may_commit(self, index: int) -> bool:
        return True


def test_figure8_counting_replicas_would_lose_a_committed_entry() -> None:
    """Goal: the figure8 script is a real test of §5.4.2: the wrong rule commits 1@1, which the
    next leader then overwrites; the right rule never commits it."""
    right = run_script(RaftCore, "figure8.txt")
    wrong = run_script(CountReplicasCore, "figure8.txt")
    status_right = next(o for o in right if o[0].startswith("1: leader term=3"))
    status_wrong = next(o for o in wrong if o[0].startswith("1: leader term=3"))
    assert "commit=0" in status_right[0]
    assert "commit=1" in status_wrong[0]  # 1@1 "committed" by counting replicas...
    assert wrong[-1] == ["3: start=0", "  0@1 noop", "  1@2 noop", "  2@4 noop"]  # ...then lost


# --- storage and the log view ---------------------------------------------------------------------

terms_and_sizes = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=12)


def build_storage(layout: list[tuple[int, int]], start: int) -> tuple[MemoryStorage, list]:
    storage = MemoryStorage(Configuration.of([1]), start_index=start)
    term, offset, entries = 1, start, []
    for term_step, records in layout:
        term += term_step
        entry = assign_entry(batch(records=records), base_index=offset, term=term)
        entries.append(entry)
        offset = entry.index + 1
    storage.append(entries)
    return storage, entries


@given(terms_and_sizes, st.integers(0, 20), st.data())
def test_storage_term_and_entries_match_a_list_model(layout, start, data) -> None:
    storage, entries = build_storage(layout, start)
    term_at = {}
    for entry in entries:
        for offset in range(entry.base_index, entry.index + 1):
            term_at[offset] = entry.term
    assert storage.first_index() == start
    assert storage.last_index() == entries[-1].index
    for offset, term in term_at.items():
        assert storage.term(offset) == term
    low = data.draw(st.integers(start, entries[-1].index))
    high = data.draw(st.integers(low + 1, entries[-1].index + 2))
    got = storage.entries(low, high, 1 << 30)
    assert got == [e for e in entries if e.index >= low and e.base_index < high]
    assert storage.entries(low, high, 1) == got[:1]


@given(terms_and_sizes, st.data())
def test_find_conflict_by_term_matches_a_linear_scan(layout, data) -> None:
    storage, entries = build_storage(layout, 5)
    log = RaftLog(storage)
    index = data.draw(st.integers(4, entries[-1].index + 3))
    term = data.draw(st.integers(0, 12))
    expected = 4
    for offset in range(5, min(index, log.last_index()) + 1):
        if log.term(offset) <= term:
            expected = offset
    assert log.find_conflict_by_term(index, term) == expected


@given(terms_and_sizes, st.data())
def test_truncate_and_compact_keep_the_log_consistent(layout, data) -> None:
    storage, entries = build_storage(layout, 0)
    keep = data.draw(st.integers(0, len(entries) - 1))
    storage.truncate(entries[keep].base_index)
    assert storage.last_index() == (entries[keep - 1].index if keep else -1)
    if keep:
        cut = data.draw(st.integers(0, keep - 1))
        storage.compact(entries[cut].index)
        assert storage.first_index() == entries[cut].index + 1
        assert storage.snapshot().term == entries[cut].term
        with pytest.raises(CompactedError):
            storage.entries(entries[cut].index, entries[cut].index + 1, 1)


def test_control_batches_are_recognised() -> None:
    configuration = Configuration.of([1, 2, 3], [4])
    data = batch_codec.build_control_batch(
        batch_codec.ControlType.RAFT_CONFIGURATION, configuration.encode(), timestamp_ms=7
    )
    entry = entry_from_batch(data)
    assert entry.configuration == configuration


def test_restart_restores_state_and_replays_only_what_was_not_applied() -> None:
    """Goal: a restarted node keeps term, vote, log and commit; applied_index skips replays."""
    core = make_core()
    core.campaign()
    drain(core)
    for value in (b"a", b"b", b"c"):
        core.propose(batch(value))
    drain(core)
    storage = core.log.storage
    restarted = RaftCore(
        node_id=1, storage=storage, config=RaftConfig(), rng=random.Random(1), applied_index=1
    )
    assert (restarted.term, restarted.vote, restarted.commit_index) == (core.term, 1, 3)
    assert restarted.role is Role.FOLLOWER
    ready = restarted.ready()
    assert [entry.index for entry in ready.committed_entries] == [2, 3]
    restarted.advance(ready)


@pytest.mark.parametrize("last_to_hold_it", ["follower", "leader"])
@pytest.mark.parametrize("broadcast", [True, False])
def test_a_commit_is_broadcast_only_with_commit_broadcast(
    broadcast: bool, last_to_hold_it: str
) -> None:
    """With it (the metadata group), a new commit index goes to the followers at once, in an
    empty AppendRequest; without it (partition groups), they learn it from the next heartbeat,
    and the commit costs no message. The commit comes from a follower's answer, or from the
    leader's own fsync when a follower answered first."""
    core = make_core(
        voters=(1, 2, 3), commit_broadcast=broadcast, check_quorum=False, pre_vote=False
    )
    core.campaign()
    drain(core)
    for voter in (2, 3):
        core.step(VoteResponse(voter, 1, core.term, True, False))
    drain(core)
    assert core.role is Role.LEADER
    for voter in (2, 3):  # both hold the leader's no-op: they replicate without probing
        core.step(AppendResponse(voter, 1, core.term, True, core.log.last_index()))
    drain(core)
    entry = core.propose(batch())
    ready = core.ready()
    sent = [m for m in ready.messages if isinstance(m, AppendRequest)]
    assert {(m.target, m.entries[-1].index) for m in sent} == {(2, entry.index), (3, entry.index)}
    core.log.storage.append(ready.entries)  # type: ignore[attr-defined]
    core.advance(ready)
    if last_to_hold_it == "follower":
        core.persisted(ready.last_index, ready.last_term)
        assert core.commit_index < entry.index
        core.step(AppendResponse(2, 1, core.term, True, entry.index))
    else:
        core.step(AppendResponse(2, 1, core.term, True, entry.index))
        assert core.commit_index < entry.index, "the leader's own copy is not durable yet"
        assert drain(core) == []
        core.persisted(ready.last_index, ready.last_term)
    assert core.commit_index == entry.index  # the leader's copy and node 2's: a majority
    after_commit = drain(core)
    commit_only = [m for m in after_commit if isinstance(m, AppendRequest) and not m.entries]
    if broadcast:
        assert sorted(m.target for m in commit_only) == [2, 3]
        assert all(m.commit_index == entry.index for m in commit_only)
    else:
        assert after_commit == [], after_commit
        core.tick(now_ms=0)  # heartbeat_ticks=1: the next tick's heartbeats carry the commit
        beats = {m.target: m.commit_index for m in drain(core) if isinstance(m, Heartbeat)}
        assert beats[2] == entry.index
