"""GroupConfig: every limit and timing knob of the group coordinator, named, defaulted, validated.

Times are milliseconds of the `now_ms` the shell passes in events; the core never reads a clock.
Kafka's dotted keys (`group.min.session.timeout.ms`) map to field names once, here, through
`ALIASES`, exactly like broker/config.py's configs; `validate()` raises `ConfigError` naming
the key.
"""

from __future__ import annotations

import dataclasses

from broker.config import DAY_MS, KIB, ConfigBase, ConfigError, check_range


@dataclasses.dataclass(frozen=True, slots=True)
class GroupConfig(ConfigBase):
    """Bounds and timers of one coordinator partition's groups (Kafka's group.* and offsets.*)."""

    # A JoinGroup's session timeout must lie in [min, max]: too short and a GC pause evicts a
    # healthy member; too long and a dead member holds its partitions for that long.
    session_timeout_ms_min: int = 6_000
    session_timeout_ms_max: int = 1_800_000
    # Used when a JoinGroup carries no rebalance timeout (<= 0): how long the coordinator waits for
    # every known member to rejoin before it evicts the stragglers.
    rebalance_timeout_ms_default: int = 300_000
    # Members per group; a further new member is refused (principle 5: everything is bounded).
    group_size_max: int = 1_000
    # Offsets of an Empty group expire this long after the group became empty or after the commit,
    # whichever is later; -1 keeps them forever.
    offsets_retention_ms: int = 7 * DAY_MS
    # How often a Tick scans for expired offsets and empty groups (the scan walks every group).
    offsets_retention_check_interval_ms: int = 600_000
    # The first rebalance of an Empty group waits this long (extended by each new joiner, up to the
    # rebalance timeout) so that a fleet of consumers starting together yields one rebalance, not N.
    initial_rebalance_delay_ms: int = 3_000
    # Largest metadata string stored with one committed offset.
    offset_metadata_bytes_max: int = 4 * KIB
    # Offset-commit writes awaiting replication; further commits are answered THROTTLED so that a
    # slow __consumer_offsets partition cannot grow the coordinator's memory without bound.
    pending_commit_writes_max: int = 1_024

    ALIASES = {  # noqa: RUF012 - class-level constant, not a field
        "group.min.session.timeout.ms": "session_timeout_ms_min",
        "group.max.session.timeout.ms": "session_timeout_ms_max",
        "group.max.size": "group_size_max",
        "offsets.retention.ms": "offsets_retention_ms",
        "offsets.retention.check.interval.ms": "offsets_retention_check_interval_ms",
        "group.initial.rebalance.delay.ms": "initial_rebalance_delay_ms",
        "offset.metadata.max.bytes": "offset_metadata_bytes_max",
    }

    def validate(self) -> None:
        check_range("session_timeout_ms_min", self.session_timeout_ms_min, 1)
        check_range(
            "session_timeout_ms_max", self.session_timeout_ms_max, self.session_timeout_ms_min
        )
        check_range("rebalance_timeout_ms_default", self.rebalance_timeout_ms_default, 1)
        check_range("group_size_max", self.group_size_max, 1, 1_000_000)
        check_range("offsets_retention_ms", self.offsets_retention_ms, -1)
        if self.offsets_retention_ms == 0:
            raise ConfigError("offsets_retention_ms", "must be -1 (forever) or positive, got 0")
        check_range(
            "offsets_retention_check_interval_ms", self.offsets_retention_check_interval_ms, 1
        )
        check_range("initial_rebalance_delay_ms", self.initial_rebalance_delay_ms, 0)
        check_range("offset_metadata_bytes_max", self.offset_metadata_bytes_max, 0)
        check_range("pending_commit_writes_max", self.pending_commit_writes_max, 1)
