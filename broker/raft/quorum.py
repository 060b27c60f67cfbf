"""Majority arithmetic over a voter set: the commit index a quorum has reached and election results.

Pure functions over plain mappings (etcd's quorum/ package). A voter missing from a mapping counts
as "has nothing" (index -1) or "has not answered". Learners are never passed in: they do not vote.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voter_count: int) -> int:
    """The smallest number of voters that is more than half of them."""
    assert voter_count > 0
    return voter_count // 2 + 1


def committed_index(voters: Sequence[int], match_index: Mapping[int, int]) -> int:
    """The largest index that a majority of voters have durably stored (Raft paper §5.3).

    Sorting the voters' match indexes in descending order, the majority-th one is held by at least a
    majority. The caller still has to check that the entry there is of its current term (§5.4.2).
    """
    matches = sorted((match_index.get(voter, -1) for voter in voters), reverse=True)
    return matches[majority(len(voters)) - 1]


def vote_result(voters: Sequence[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant, else PENDING."""
    granted = sum(1 for voter in voters if votes.get(voter) is True)
    rejected = sum(1 for voter in voters if votes.get(voter) is False)
    needed = majority(len(voters))
    if granted >= needed:
        return VoteResult.WON
    if len(voters) - rejected < needed:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Sequence[int], active: Mapping[int, bool]) -> bool:
    """Whether a majority of voters are marked active (check-quorum, thesis §6.2)."""
    return sum(1 for voter in voters if active.get(voter, False)) >= majority(len(voters))
