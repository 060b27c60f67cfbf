"""`LogManager`: every partition log of one data directory.

Layout: `<data_dir>/logs/<topic>-<partition>/` holds one `PartitionLog`. The partition number is
what follows the last `-`, so topic names may contain dashes. A deleted partition's directory is
first renamed to `<topic>-<partition>.<n>.deleting` (one atomic step), then removed; a restart
finishes any removal a crash interrupted. Only directories so marked are ever removed on open: a
directory the metadata does not know (a "stray" log, after a lost or damaged metadata store) is
the metadata owner's to judge, which `release`s it (closed, kept on disk, not served) or
`adopt`s it again. `create` never reuses a directory that is already on disk. Topic names are
checked here as well as by the server, because they become path components.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from broker.config import LogConfig
from broker.log.durability import fsync_directory
from broker.log.log import PartitionLog, wall_clock_ms
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

LOGS_DIRECTORY = "logs"
DELETING_SUFFIX = ".deleting"
TOPIC_NAME_MAX_LENGTH = 249
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

TopicPartition = tuple[str, int]


def check_topic_name(topic: str) -> None:
    """Kafka's rules: 1-249 of `[A-Za-z0-9._-]`, and neither `.` nor `..`."""
    if (
        not isinstance(topic, str)
        or not _TOPIC_NAME.fullmatch(topic)
        or topic in {".", ".."}
        or len(topic) > TOPIC_NAME_MAX_LENGTH
    ):
        raise BrokerError(
            ErrorCode.INVALID_TOPIC,
            f"invalid topic name {topic!r}: use 1-{TOPIC_NAME_MAX_LENGTH} characters of "
            "letters, digits, '.', '_' and '-' (not '.' or '..')",
        )


def partition_directory_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def parse_partition_directory(name: str) -> TopicPartition | None:
    topic, dash, number = name.rpartition("-")
    if not dash or not topic or not number.isdigit():
        return None
    return topic, int(number)


class LogManager:
    """Creates, opens, lists and deletes the partition logs of a data directory."""

    def __init__(
        self,
        data_dir: Path,
        default_config: LogConfig,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        config_for: Callable[[str], LogConfig | None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.logs_dir = data_dir / LOGS_DIRECTORY
        self.default_config = default_config
        self.clock_ms = clock_ms
        self._config_for = config_for
        self._logs: dict[TopicPartition, PartitionLog] = {}
        self._deletions = 0

    @classmethod
    def open(
        cls,
        data_dir: Path,
        default_config: LogConfig,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        config_for: Callable[[str], LogConfig | None] | None = None,
    ) -> LogManager:
        """Open (recovering where needed) every partition log under `data_dir`.

        `config_for(topic)` gives a topic's own config; None (or no callback) means the default.
        """
        manager = cls(data_dir, default_config, clock_ms=clock_ms, config_for=config_for)
        manager.logs_dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(manager.logs_dir.iterdir()):
            if not entry.is_dir():
                continue
            if entry.name.endswith(DELETING_SUFFIX):
                logger.info("finishing the deletion of %s", entry)
                shutil.rmtree(entry, ignore_errors=True)
                continue
            parsed = parse_partition_directory(entry.name)
            if parsed is None:
                logger.warning("ignoring %s: not a <topic>-<partition> directory", entry)
                continue
            log = PartitionLog.open(entry, manager._config(parsed[0]), clock_ms=clock_ms)
            manager._logs[parsed] = log
        return manager

    def _config(self, topic: str) -> LogConfig:
        own = self._config_for(topic) if self._config_for is not None else None
        return own if own is not None else self.default_config

    def create(
        self,
        topic: str,
        partition: int,
        config: LogConfig | None = None,
        *,
        initial_offset: int = 0,
    ) -> PartitionLog:
        """Create an empty partition log; raises TOPIC_ALREADY_EXISTS if it exists."""
        check_topic_name(topic)
        if partition < 0:
            raise BrokerError(ErrorCode.INVALID_PARTITIONS, f"partition {partition} is negative")
        key = (topic, partition)
        if key in self._logs:
            raise BrokerError(
                ErrorCode.TOPIC_ALREADY_EXISTS, f"partition {topic}-{partition} already exists"
            )
        directory = self.logs_dir / partition_directory_name(topic, partition)
        if directory.exists():
            raise BrokerError(
                ErrorCode.TOPIC_ALREADY_EXISTS,
                f"cannot create partition {topic}-{partition}: {directory} is already on disk "
                "(a stray log the metadata does not know; see docs/storage.md, 'Metadata damage')",
            )
        log = PartitionLog.open(
            directory,
            config if config is not None else self._config(topic),
            clock_ms=self.clock_ms,
            initial_offset=initial_offset,
        )
        fsync_directory(self.logs_dir)
        self._logs[key] = log
        return log

    def release(self, topic: str, partition: int) -> Path:
        """Close a log and forget it, keeping its directory on disk; returns the directory."""
        log = self._logs.pop((topic, partition))
        log.close(clean=True)
        return log.directory

    def adopt(self, topic: str, partition: int, config: LogConfig) -> PartitionLog:
        """Open a released log's directory again, as the log of `topic`-`partition`."""
        directory = self.logs_dir / partition_directory_name(topic, partition)
        log = PartitionLog.open(directory, config, clock_ms=self.clock_ms)
        self._logs[(topic, partition)] = log
        return log

    def get(self, topic: str, partition: int) -> PartitionLog | None:
        return self._logs.get((topic, partition))

    def partitions(self) -> list[TopicPartition]:
        return sorted(self._logs)

    def logs(self) -> list[PartitionLog]:
        return [self._logs[key] for key in sorted(self._logs)]

    def update_config(self, topic: str, config: LogConfig) -> None:
        """Apply a topic's new config to its open logs (takes effect on the next append/sweep)."""
        for (name, _), log in self._logs.items():
            if name == topic:
                log.config = config

    def delete(self, topic: str, partition: int) -> None:
        """Close and remove a partition log; crash-safe via an atomic rename first."""
        log = self._logs.pop((topic, partition), None)
        if log is None:
            raise BrokerError(
                ErrorCode.UNKNOWN_PARTITION, f"partition {topic}-{partition} does not exist"
            )
        log.close(clean=False)
        self._deletions += 1
        doomed = log.directory.with_name(f"{log.directory.name}.{self._deletions}{DELETING_SUFFIX}")
        os.replace(log.directory, doomed)
        fsync_directory(self.logs_dir)
        shutil.rmtree(doomed, ignore_errors=True)

    def flush_recovered(self) -> None:
        """Make what survived an unclean stop durable before it is served or counted.

        After a crash a log's flushed offset is only its recovery checkpoint, and the tail above
        it may be in the page cache only. A single node would hide acknowledged records until
        the next fsync (its high watermark is the flushed offset); a Raft replica would count the
        tail as its durable copy and could help commit entries a power loss then takes. One fsync
        per such log at start-up settles both.
        """
        for log in self.logs():
            if log.flushed_offset < log.log_end_offset:
                log.flush()

    def apply_retention(self, now_ms: int | None = None) -> int:
        """Run retention over every log; returns the number of segments deleted."""
        now_ms = self.clock_ms() if now_ms is None else now_ms
        return sum(log.apply_retention(now_ms) for log in self._logs.values())

    def close(self, *, clean: bool = True) -> None:
        """Close every log; `clean` flushes them and writes their clean-shutdown markers."""
        for log in self._logs.values():
            log.close(clean=clean)
        self._logs.clear()
