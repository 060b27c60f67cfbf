"""Share group configuration: the broker's limits (`ShareCoordinatorConfig`) and each group's own
configs (`ShareGroupConfig`, set with AlterGroupConfigs), named, defaulted, validated.

Group configs use Kafka's names (KIP-932) plus the dead-letter topic and the release delay cap:

    share.record.lock.duration.ms   30000    how long a member holds a record it acquired
    share.delivery.count.limit      5        deliveries before a record is archived
    share.auto.offset.reset         latest   where a new share partition starts (or earliest)
    share.dead.letter.topic         ""       where archived-by-failure records are written first
    share.release.delay.max.ms      300000   the longest RELEASE delay a consumer may ask for

A group's configs are validated as a whole against the broker's bounds (`validate_group_configs`);
an unknown name or a bad value raises `ConfigError` naming it, and nothing changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from broker.config import ConfigBase, ConfigError, check_range

LOCK_DURATION: Final = "share.record.lock.duration.ms"
DELIVERY_COUNT_LIMIT: Final = "share.delivery.count.limit"
AUTO_OFFSET_RESET: Final = "share.auto.offset.reset"
DEAD_LETTER_TOPIC: Final = "share.dead.letter.topic"
RELEASE_DELAY_MAX: Final = "share.release.delay.max.ms"
GROUP_CONFIG_NAMES: Final = (
    LOCK_DURATION,
    DELIVERY_COUNT_LIMIT,
    AUTO_OFFSET_RESET,
    DEAD_LETTER_TOPIC,
    RELEASE_DELAY_MAX,
)
AUTO_OFFSET_RESET_VALUES: Final = ("earliest", "latest")
# Longest topic name (as broker/topics.py allows).
_TOPIC_NAME_MAX: Final = 249


@dataclasses.dataclass(frozen=True, slots=True)
class ShareCoordinatorConfig(ConfigBase):
    """The broker's share group limits and the defaults of every group config."""

    # Defaults of the group configs (module docstring).
    record_lock_duration_ms: int = 30_000
    delivery_count_limit: int = 5
    auto_offset_reset: str = "latest"
    release_delay_max_ms: int = 300_000
    # Bounds a group's configs must lie in (Kafka's group.share.min/max.*).
    record_lock_duration_ms_min: int = 1_000
    record_lock_duration_ms_max: int = 3_600_000
    delivery_count_limit_min: int = 2
    delivery_count_limit_max: int = 10
    # In-flight records (acquired, or waiting to be acknowledged past the start offset) per share
    # partition (group.share.partition.max.record.locks): past it, nothing more is handed out
    # until the start offset moves. Bounds the coordinator's memory per partition.
    partition_max_record_locks: int = 20_000
    # A member that sends nothing for this long is removed and its records released.
    session_timeout_ms: int = 45_000
    # Members per share group.
    group_max_size: int = 1_000
    # A failed dead-letter write is retried after this long.
    dead_letter_retry_backoff_ms: int = 1_000

    ALIASES = {  # noqa: RUF012 - class-level constant, not a field
        "group.share.record.lock.duration.ms": "record_lock_duration_ms",
        "group.share.delivery.count.limit": "delivery_count_limit",
        "group.share.partition.max.record.locks": "partition_max_record_locks",
        "group.share.session.timeout.ms": "session_timeout_ms",
        "group.share.max.size": "group_max_size",
    }

    def validate(self) -> None:
        check_range("record_lock_duration_ms_min", self.record_lock_duration_ms_min, 1)
        check_range(
            "record_lock_duration_ms_max",
            self.record_lock_duration_ms_max,
            self.record_lock_duration_ms_min,
        )
        check_range(
            "record_lock_duration_ms",
            self.record_lock_duration_ms,
            self.record_lock_duration_ms_min,
            self.record_lock_duration_ms_max,
        )
        check_range("delivery_count_limit_min", self.delivery_count_limit_min, 1)
        check_range(
            "delivery_count_limit_max", self.delivery_count_limit_max, self.delivery_count_limit_min
        )
        check_range(
            "delivery_count_limit",
            self.delivery_count_limit,
            self.delivery_count_limit_min,
            self.delivery_count_limit_max,
        )
        if self.auto_offset_reset not in AUTO_OFFSET_RESET_VALUES:
            raise ConfigError(
                "auto_offset_reset", f"must be earliest or latest, got {self.auto_offset_reset!r}"
            )
        check_range("release_delay_max_ms", self.release_delay_max_ms, 0)
        check_range("partition_max_record_locks", self.partition_max_record_locks, 1, 1_000_000)
        check_range("session_timeout_ms", self.session_timeout_ms, 1)
        check_range("group_max_size", self.group_max_size, 1, 1_000_000)
        check_range("dead_letter_retry_backoff_ms", self.dead_letter_retry_backoff_ms, 1)

    def defaults(self) -> dict[str, Any]:
        """Every group config at its broker default."""
        return {
            LOCK_DURATION: self.record_lock_duration_ms,
            DELIVERY_COUNT_LIMIT: self.delivery_count_limit,
            AUTO_OFFSET_RESET: self.auto_offset_reset,
            DEAD_LETTER_TOPIC: "",
            RELEASE_DELAY_MAX: self.release_delay_max_ms,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ShareGroupConfig:
    """One group's effective configs (its own values over the broker's defaults)."""

    lock_duration_ms: int
    delivery_count_limit: int
    auto_offset_reset: str
    dead_letter_topic: str
    release_delay_max_ms: int

    @classmethod
    def of(cls, overrides: Mapping[str, Any], broker: ShareCoordinatorConfig) -> ShareGroupConfig:
        values = {**broker.defaults(), **overrides}
        return cls(
            lock_duration_ms=values[LOCK_DURATION],
            delivery_count_limit=values[DELIVERY_COUNT_LIMIT],
            auto_offset_reset=values[AUTO_OFFSET_RESET],
            dead_letter_topic=values[DEAD_LETTER_TOPIC],
            release_delay_max_ms=values[RELEASE_DELAY_MAX],
        )


def validate_group_configs(
    configs: Mapping[str, Any], broker: ShareCoordinatorConfig
) -> dict[str, Any]:
    """The overrides `configs` names, coerced to their types; raises `ConfigError` naming the
    first unknown name or bad value (a string of digits is taken for an integer)."""
    out: dict[str, Any] = {}
    for name, value in configs.items():
        if name in (LOCK_DURATION, DELIVERY_COUNT_LIMIT, RELEASE_DELAY_MAX):
            number = _integer(name, value)
            if name == LOCK_DURATION:
                check_range(
                    name,
                    number,
                    broker.record_lock_duration_ms_min,
                    broker.record_lock_duration_ms_max,
                )
            elif name == DELIVERY_COUNT_LIMIT:
                check_range(
                    name, number, broker.delivery_count_limit_min, broker.delivery_count_limit_max
                )
            else:
                check_range(name, number, 0, broker.record_lock_duration_ms_max * 24)
            out[name] = number
        elif name == AUTO_OFFSET_RESET:
            if value not in AUTO_OFFSET_RESET_VALUES:
                raise ConfigError(name, f"must be earliest or latest, got {value!r}")
            out[name] = value
        elif name == DEAD_LETTER_TOPIC:
            if not isinstance(value, str) or len(value) > _TOPIC_NAME_MAX:
                raise ConfigError(name, f"must be a topic name (or empty for none), got {value!r}")
            out[name] = value
        else:
            raise ConfigError(name, f"unknown group config; known: {', '.join(GROUP_CONFIG_NAMES)}")
    return out


def _integer(name: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(name, f"expected an integer, got {value!r}")
    return value


def share_config_of(broker_config: Any) -> ShareCoordinatorConfig:
    """The `ShareCoordinatorConfig` named by a `BrokerConfig`'s share_* fields."""
    return ShareCoordinatorConfig(
        record_lock_duration_ms=broker_config.share_record_lock_duration_ms,
        delivery_count_limit=broker_config.share_delivery_count_limit,
        release_delay_max_ms=broker_config.share_release_delay_max_ms,
        partition_max_record_locks=broker_config.share_partition_max_record_locks,
        session_timeout_ms=broker_config.share_session_timeout_ms,
        group_max_size=broker_config.share_group_max_size,
    )
