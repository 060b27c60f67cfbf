"""Membership changes, one server at a time (Ongaro's thesis §4.1, §4.2.1). Pure.

Any majority of a voter set and any majority of that set plus or minus one voter overlap, so a
change of ONE voter can take effect as soon as its entry is appended, without joint consensus. New
servers join as non-voting learners and are promoted only once caught up (thesis §4.2.1), so that
adding a voter never stalls commits while it copies the log.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.raft.errors import ConfigurationChangeError
from broker.raft.messages import Configuration


def changed_nodes(old: Configuration, new: Configuration) -> list[int]:
    """Nodes whose role (voter, learner, absent) differs between the two configurations."""

    def role(configuration: Configuration, node: int) -> str:
        if node in configuration.voters:
            return "voter"
        return "learner" if node in configuration.learners else "absent"

    members = sorted(set(old.members) | set(new.members))
    return [node for node in members if role(old, node) != role(new, node)]


def check_change(
    old: Configuration,
    new: Configuration,
    *,
    match_index: Mapping[int, int],
    commit_index: int,
) -> None:
    """Raise ConfigurationChangeError unless `new` is a permitted single-node step from `old`.

    Permitted: add or remove a learner; promote a learner whose log has reached the commit index;
    remove or demote a voter (keeping at least one). Adding a voter directly is refused.
    """
    if not new.voters:
        raise ConfigurationChangeError("a configuration needs at least one voter")
    changed = changed_nodes(old, new)
    if len(changed) != 1:
        raise ConfigurationChangeError(
            f"change exactly one node at a time; {old} -> {new} changes nodes {changed}"
        )
    node = changed[0]
    if node in new.voters and node not in old.voters:
        if node not in old.learners:
            raise ConfigurationChangeError(f"add node {node} as a learner first")
        match = match_index.get(node, -1)
        if match < commit_index:
            raise ConfigurationChangeError(
                f"learner {node} has not caught up (match {match} < commit {commit_index})"
            )
