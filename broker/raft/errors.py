"""Named, expected failures of Raft's public API (STYLE §7.4): the caller can act on each one.

Programmer errors (calling the core out of contract) are asserts instead and crash.
"""

from __future__ import annotations

from wire.error_codes import BrokerError, ErrorCode


class NotLeaderError(BrokerError):
    """Only the leader accepts proposals; `leader_hint` is the leader known here (0: none)."""

    def __init__(self, leader_hint: int) -> None:
        super().__init__(
            ErrorCode.NOT_LEADER, f"this node is not the leader; leader is {leader_hint}"
        )
        self.leader_hint = leader_hint


class ProposalDroppedError(BrokerError):
    """The leader cannot take a proposal now (transfer under way, uncommitted bytes at limit)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NOT_ENOUGH_REPLICAS, message)


class ConfigurationChangeError(BrokerError):
    """A membership change that is not allowed now, or never (more than one voter at a time)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_REQUEST, message)
