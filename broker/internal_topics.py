"""The broker's own topics: only the broker writes them, clients may read them.

- `__consumer_offsets`: group metadata and committed offsets (broker/consumer_groups/);
- `__transaction_state`: the transaction coordinators' state (broker/transactions/);
- `__share_group_state`: share groups' in-flight windows and configs (broker/share_groups/).
All are replicated like any topic (Raft in a cluster) and hidden from topic listings.
"""

from __future__ import annotations

from typing import Final

OFFSETS_TOPIC: Final = "__consumer_offsets"
TRANSACTION_STATE_TOPIC: Final = "__transaction_state"
SHARE_STATE_TOPIC: Final = "__share_group_state"
INTERNAL_TOPICS: Final = frozenset({OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC, SHARE_STATE_TOPIC})


def is_internal_topic(name: str) -> bool:
    """Topics only the broker writes (clients may read them)."""
    return name in INTERNAL_TOPICS
