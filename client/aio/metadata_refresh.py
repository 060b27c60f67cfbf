"""When a consumer looks again at the cluster for the topics it subscribed to, and what it finds.

A subscription (topic names or a pattern) is a promise about the future: topics created and
partitions added after `subscribe()` must be read too. As in Kafka, the consumer refreshes its
metadata every `metadata_max_age_ms` (default 5 minutes) and sooner on demand: while a named topic
does not exist yet, or a pattern matches none, it looks again after `retry_backoff_ms`, doubling
up to `UNKNOWN_TOPIC_REFRESH_MAX_MS`, so a consumer started before its producer's topic exists
gets its first record within seconds of the topic's creation.

Used by the plain consumer (`client/aio/consumer.py`, which reads every partition itself) and by
the group member (`client/aio/group.py`, whose leader rejoins the group when a partition count
changes, so the assignor hands the new partitions out).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from wire.config_error import ConfigError
from wire.error_codes import ErrorCode

if TYPE_CHECKING:
    from client.aio.cluster import Cluster

METADATA_MAX_AGE_MS_DEFAULT: Final = 300_000
# The longest wait between looks for a subscribed topic that does not exist yet.
UNKNOWN_TOPIC_REFRESH_MAX_MS: Final = 5_000


class RefreshSchedule:
    """The time of the next subscription refresh, on the `time.monotonic()` clock.

    Pure bookkeeping (the caller passes `now`): `done(now, complete=...)` after each refresh,
    `request()` to refresh at the next chance (a new subscription).
    """

    def __init__(self, *, max_age_ms: int, backoff_ms: int) -> None:
        if max_age_ms < 1:
            raise ConfigError("metadata_max_age_ms", f"must be positive, got {max_age_ms}")
        self.max_age_s = max_age_ms / 1000
        self.backoff_min_s = max(backoff_ms, 1) / 1000
        self.backoff_max_s = max(UNKNOWN_TOPIC_REFRESH_MAX_MS / 1000, self.backoff_min_s)
        self._backoff_s = self.backoff_min_s
        self.next_at = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def request(self) -> None:
        """Refresh at the next chance, and start the unknown-topic backoff afresh."""
        self.next_at = 0.0
        self._backoff_s = self.backoff_min_s

    def done(self, now: float, *, complete: bool) -> None:
        """A refresh finished; `complete` is False while a subscribed topic is missing."""
        if complete:
            self._backoff_s = self.backoff_min_s
            self.next_at = now + self.max_age_s
        else:
            self.next_at = now + min(self._backoff_s, self.max_age_s)
            self._backoff_s = min(self._backoff_s * 2, self.backoff_max_s)


def compile_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """`subscribe(pattern=...)` takes a regular expression as text (kafka-python) or compiled."""
    if isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError("pattern", f"{pattern!r} is not a regular expression: {exc}") from None


async def subscribed_partition_counts(
    cluster: Cluster, topics: Sequence[str], pattern: re.Pattern[str] | None = None
) -> dict[str, int]:
    """The partition count of each subscribed topic that exists, from one fresh metadata request.

    With a `pattern`, the topics are those whose whole name matches it (internal topics, named
    `__*`, never match); else `topics`. A missing topic is simply absent from the answer.
    """
    if pattern is None and not topics:
        return {}
    response = await cluster.refresh_metadata(None if pattern is not None else list(topics))
    return {
        meta.name: len(meta.partitions)
        for meta in response.topics
        if meta.error is ErrorCode.NONE
        and meta.partitions
        and (
            meta.name in topics
            if pattern is None
            else not meta.name.startswith("__") and pattern.fullmatch(meta.name) is not None
        )
    }
