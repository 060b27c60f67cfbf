"""Named, validated configuration: every limit and policy of the broker has a field here.

Each config is a frozen dataclass whose defaults are the sane production values; `validate()`
raises `ConfigError` naming the offending key. Kafka-style dotted keys (`segment.bytes`) are mapped
to field names once, here, by `from_mapping`; code everywhere else uses the field names.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, Self


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"invalid config {key!r}: {message}")
        self.key = key


class FlushPolicy(enum.Enum):
    """When appended bytes are fsynced.

    ALWAYS: before an append is acknowledged, with group commit (one fsync covers every append that
    arrived while the previous fsync ran). INTERVAL: every `flush_interval_ms`. NEVER: leave it to the
    page cache and rely on replication, as Kafka does by default.
    """

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
DAY_MS = 24 * 60 * 60 * 1000


def _check_range(key: str, value: Any, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(key, f"must be {bound}, got {value}")


def _coerce(field: dataclasses.Field[Any], key: str, value: Any) -> Any:
    """Turn a value from a TOML file, an env var or a CLI flag into the field's type."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if kind == "int" and isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError as exc:
            raise ConfigError(key, f"expected an integer, got {value!r}") from exc
    if kind == "bool" and isinstance(value, str):
        lowered = value.lower()
        if lowered in {"true", "1", "yes", "on"}:
            return True
        if lowered in {"false", "0", "no", "off"}:
            return False
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if kind == "FlushPolicy" and isinstance(value, str):
        try:
            return FlushPolicy(value.lower())
        except ValueError as exc:
            choices = ", ".join(policy.value for policy in FlushPolicy)
            raise ConfigError(key, f"expected one of {choices}, got {value!r}") from exc
    return value


class _Config(abc.ABC):
    """Shared loading logic: field names or dotted Kafka-style aliases, type coercion, validation."""

    ALIASES: Mapping[str, str] = {}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, base: Self | None = None) -> Self:
        fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        changes: dict[str, Any] = {}
        for key, value in values.items():
            name = cls.ALIASES.get(key, key.replace(".", "_").replace("-", "_"))
            if name not in fields:
                known = ", ".join(sorted(set(fields) | set(cls.ALIASES)))
                raise ConfigError(key, f"unknown key; known keys: {known}")
            changes[name] = _coerce(fields[name], key, value)
        config = dataclasses.replace(base if base is not None else cls(), **changes)  # type: ignore[type-var]
        config.validate()
        return config

    @abc.abstractmethod
    def validate(self) -> None:
        """Raise `ConfigError` naming the first key whose value is out of range."""


@dataclasses.dataclass(frozen=True, slots=True)
class LogConfig(_Config):
    """How one partition log stores, indexes, flushes and retains its data."""

    # A segment rolls when its .log file would exceed this many bytes...
    segment_bytes: int = 1 * GIB
    # ...or when its first batch is older than this.
    segment_ms: int = 7 * DAY_MS
    # One .index entry per this many bytes of batches: bounds the scan after an index lookup.
    index_interval_bytes: int = 4 * KIB
    # Preallocated size of each .index/.timeindex file; a segment also rolls when one is full.
    index_bytes_max: int = 10 * MIB
    # Delete whole segments whose newest record is older than this; -1 keeps them forever.
    retention_ms: int = 7 * DAY_MS
    # Delete the oldest segments while the partition is larger than this; -1 means no limit.
    retention_bytes: int = -1
    # Largest batch (header included) a producer may send or the log will store.
    max_batch_bytes: int = 1 * MIB
    flush_policy: FlushPolicy = FlushPolicy.ALWAYS
    # With flush_policy=interval: the longest an append stays unsynced.
    flush_interval_ms: int = 1000

    ALIASES = {  # noqa: RUF012 - class-level constant, not a field
        "segment.bytes": "segment_bytes",
        "segment.ms": "segment_ms",
        "index.interval.bytes": "index_interval_bytes",
        "segment.index.bytes": "index_bytes_max",
        "retention.ms": "retention_ms",
        "retention.bytes": "retention_bytes",
        "max.message.bytes": "max_batch_bytes",
        "flush.policy": "flush_policy",
        "flush.ms": "flush_interval_ms",
    }

    def validate(self) -> None:
        _check_range("segment_bytes", self.segment_bytes, 1 * KIB, 2**31 - 1)
        _check_range("segment_ms", self.segment_ms, 1)
        _check_range("index_interval_bytes", self.index_interval_bytes, 0, 2**31 - 1)
        _check_range("index_bytes_max", self.index_bytes_max, 4 * KIB, 2**31 - 1)
        _check_range("retention_ms", self.retention_ms, -1)
        _check_range("retention_bytes", self.retention_bytes, -1)
        _check_range("max_batch_bytes", self.max_batch_bytes, 64, self.segment_bytes)
        _check_range("flush_interval_ms", self.flush_interval_ms, 1)
        if not isinstance(self.flush_policy, FlushPolicy):
            raise ConfigError("flush_policy", f"expected a FlushPolicy, got {self.flush_policy!r}")
