"""Goal: GroupConfig validates like the broker's configs (purity: tests/unit/test_purity.py)."""

from __future__ import annotations

import pytest

from broker.consumer_groups.config import GroupConfig
from wire.config_error import ConfigError


def test_defaults_are_valid_and_kafka_keys_map() -> None:
    GroupConfig().validate()
    config = GroupConfig.from_mapping({"group.max.size": "10", "offsets.retention.ms": -1})
    assert config.group_size_max == 10 and config.offsets_retention_ms == -1


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"session_timeout_ms_min": 0}, "session_timeout_ms_min"),
        ({"session_timeout_ms_max": 5, "session_timeout_ms_min": 6}, "session_timeout_ms_max"),
        ({"group_size_max": 0}, "group_size_max"),
        ({"offsets_retention_ms": 0}, "offsets_retention_ms"),
        ({"initial_rebalance_delay_ms": -1}, "initial_rebalance_delay_ms"),
        ({"pending_commit_writes_max": 0}, "pending_commit_writes_max"),
        ({"rebalance_timeout_ms_default": "x"}, "rebalance_timeout_ms_default"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_bad_values_name_their_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        GroupConfig.from_mapping(changes)
    assert info.value.key == key
