"""Goal: the majority arithmetic and the per-follower flow control match simple models."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from broker.raft import quorum
from broker.raft.progress import Inflights, Progress, ProgressState

voter_sets = st.lists(st.integers(1, 9), min_size=1, max_size=7, unique=True)


@given(voter_sets, st.data())
def test_committed_index_is_the_largest_index_a_majority_holds(voters: list[int], data) -> None:
    match = {v: data.draw(st.integers(-1, 50)) for v in voters if data.draw(st.booleans())}
    result = quorum.committed_index(voters, match)
    holders = lambda index: sum(1 for v in voters if match.get(v, -1) >= index)  # noqa: E731
    # A majority holds the result, and no larger index is held by a majority.
    assert holders(result) >= quorum.majority(len(voters))
    assert holders(result + 1) < quorum.majority(len(voters))


@given(voter_sets, st.data())
def test_vote_result_matches_counting(voters: list[int], data) -> None:
    votes = {v: data.draw(st.booleans()) for v in voters if data.draw(st.booleans())}
    granted = sum(1 for v in votes.values() if v)
    rejected = sum(1 for v in votes.values() if not v)
    result = quorum.vote_result(voters, votes)
    needed = len(voters) // 2 + 1
    if granted >= needed:
        assert result is quorum.VoteResult.WON
    elif len(voters) - rejected < needed:
        assert result is quorum.VoteResult.LOST
    else:
        assert result is quorum.VoteResult.PENDING


def test_majorities_of_configurations_one_voter_apart_overlap() -> None:
    """The reason membership changes go one voter at a time (thesis §4.1)."""
    old = [1, 2, 3, 4]
    for new in ([1, 2, 3, 4, 5], [1, 2, 3]):
        for a in itertools.combinations(old, quorum.majority(len(old))):
            for b in itertools.combinations(new, quorum.majority(len(new))):
                assert set(a) & set(b)


def test_votes_from_non_voters_do_not_count() -> None:
    assert quorum.vote_result([1, 2, 3], {1: True, 7: True, 8: True}) is quorum.VoteResult.PENDING
    assert quorum.has_quorum([1, 2, 3], {1: True, 9: True}) is False


@given(st.lists(st.tuples(st.sampled_from(["add", "free", "reset"]), st.integers(1, 500))))
def test_inflights_bounded_by_count_and_bytes(operations) -> None:
    inflights = Inflights(messages_max=4, bytes_max=1000)
    model: list[tuple[int, int]] = []
    next_index = 0
    for operation, value in operations:
        if operation == "add" and not inflights.full():
            next_index += 1 + value % 5
            inflights.add(next_index, value)
            model.append((next_index, value))
        elif operation == "free":
            inflights.free_to(value % (next_index + 1))
            model = [m for m in model if m[0] > value % (next_index + 1)]
        elif operation == "reset":
            inflights.reset()
            model = []
        assert inflights.count == len(model)
        assert inflights.bytes_total == sum(size for _, size in model)
        assert inflights.full() == (len(model) >= 4 or sum(s for _, s in model) >= 1000)


def make_progress() -> Progress:
    return Progress(next_index=10, messages_max=2, bytes_max=1 << 20)


def test_probe_sends_one_message_until_answered() -> None:
    progress = make_progress()
    assert not progress.is_paused()
    progress.sent_entries(12, 100)
    assert progress.is_paused()
    assert progress.maybe_update(12)
    assert not progress.is_paused()


def test_replicate_pipelines_up_to_the_inflight_limit() -> None:
    progress = make_progress()
    progress.maybe_update(9)
    progress.become_replicate()
    progress.sent_entries(12, 100)
    progress.sent_entries(15, 100)
    assert progress.next_index == 16
    assert progress.is_paused()
    progress.maybe_update(12)
    progress.inflights.free_to(12)
    assert not progress.is_paused()


def test_rejections_back_off_but_never_below_match_and_ignore_stale_ones() -> None:
    progress = make_progress()
    progress.maybe_update(3)
    progress.sent_entries(12, 10)
    # A stale rejection (not of the outstanding probe at next - 1 = 9) is ignored.
    assert not progress.maybe_decrease_to(7, 5)
    assert progress.maybe_decrease_to(9, 6)
    assert progress.next_index == 6
    assert progress.maybe_decrease_to(5, 0)
    assert progress.next_index == 4  # match + 1


def test_snapshot_state_waits_then_probes_after_the_snapshot() -> None:
    progress = make_progress()
    progress.become_snapshot(40)
    assert progress.is_paused()
    progress.maybe_update(40)
    progress.become_probe()
    assert progress.state is ProgressState.PROBE
    assert progress.next_index == 41
