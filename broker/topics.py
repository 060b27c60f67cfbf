"""Topics of a single-node broker: names, partition counts, per-topic configs, and their logs.

A topic's record (`TopicRecord`) is persisted in LMDB (`KeySpace.TOPICS`, key = the topic name in
UTF-8, value = a msgpack map); its partitions are `PartitionLog`s of the `LogManager`. Only a
topic's own overrides are stored: its effective `LogConfig` is the broker's log defaults with the
overrides applied, so changing a broker default changes every topic that does not override it.

Rules:
- Order makes crashes harmless, and only what is positively marked is ever removed. Create: write
  the record (durably), then the logs; a record whose logs are missing gets empty logs. Delete:
  mark the record `deleting` (durably), delete the logs, then the record; a marked record found on
  open has its deletion finished.
- A log the records do not know (a "stray": its record was lost or is unreadable) is never
  deleted and never served: it is released (closed, kept on disk), logged with what to do, and
  counted in `stray_logs`. `attach_logs(recover=True)` (`broker serve --recover-topics`)
  re-registers strays as topics (partition count from the directories, default configs). An
  internal topic's strays are adopted by its creation at start-up (its name and configs are the
  broker's own); any other create over a stray directory is refused. See docs/storage.md,
  "Metadata damage".
- Every refusal is a `BrokerError` with a code and a message that names the offending value.
- Synchronous and trio-free: the server calls it from the trio thread.
- This is the seam for replication: `leader_id` is this node until the controller assigns leaders.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import msgpack

from broker.config import BrokerConfig, ConfigError, LogConfig
from broker.internal_topics import is_internal_topic
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

TOPIC_NAME_LENGTH_MAX: Final = 249
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")
# Values a topic config may take on the wire and in the store.
ConfigValue = str | int | bool | float


class LogStore(Protocol):
    """The part of `broker.log.manager.LogManager` this module needs (a fake in unit tests)."""

    def create(self, topic: str, partition: int, config: LogConfig | None = None) -> Any: ...
    def get(self, topic: str, partition: int) -> Any: ...
    def partitions(self) -> list[tuple[str, int]]: ...
    def delete(self, topic: str, partition: int) -> None: ...
    def release(self, topic: str, partition: int) -> Any: ...
    def adopt(self, topic: str, partition: int, config: LogConfig) -> Any: ...
    def update_config(self, topic: str, config: LogConfig) -> None: ...


class MetadataStore(Protocol):
    """The part of `broker.kvstore.KvStore` this module needs."""

    def get_obj(self, space: Any, key: bytes) -> Any: ...
    def put_obj(self, space: Any, key: bytes, value: Any, *, durable: bool = True) -> None: ...
    def delete(self, space: Any, key: bytes, *, durable: bool = True) -> bool: ...
    def items(self, space: Any, prefix: bytes = b"") -> list[tuple[bytes, bytes]]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class TopicRecord:
    """What is persisted about a topic. `configs`: its overrides, as given (dotted keys)."""

    name: str
    partition_count: int
    replication_factor: int
    configs: Mapping[str, ConfigValue]
    log_config: LogConfig

    def to_stored(self, *, deleting: bool = False) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "name": self.name,
            "partition_count": self.partition_count,
            "replication_factor": self.replication_factor,
            "configs": dict(self.configs),
        }
        if deleting:
            stored["deleting"] = True
        return stored


def validate_topic_name(name: str) -> None:
    """Kafka's rules: 1-249 characters of [a-zA-Z0-9._-], and not '.' or '..'."""
    if not name:
        raise BrokerError(ErrorCode.INVALID_TOPIC, "topic name is empty")
    if len(name) > TOPIC_NAME_LENGTH_MAX:
        raise BrokerError(
            ErrorCode.INVALID_TOPIC,
            f"topic name of {len(name)} characters exceeds the limit of {TOPIC_NAME_LENGTH_MAX}",
        )
    if name in (".", ".."):
        raise BrokerError(ErrorCode.INVALID_TOPIC, f"topic name {name!r} is not allowed")
    if not _TOPIC_NAME.fullmatch(name):
        raise BrokerError(
            ErrorCode.INVALID_TOPIC,
            f"topic name {name!r} may only contain ASCII letters, digits, '.', '_' and '-'",
        )


def require_partition(
    record: TopicRecord | None, topic: str, partition: int, *, hint: str
) -> TopicRecord:
    """`record` if it exists and has `partition`; else UNKNOWN_TOPIC (with `hint`) or
    UNKNOWN_PARTITION."""
    if record is None:
        raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {topic!r} does not exist; {hint}")
    if not 0 <= partition < record.partition_count:
        raise BrokerError(
            ErrorCode.UNKNOWN_PARTITION,
            f"topic {topic!r} has partitions 0 to {record.partition_count - 1}, not {partition}",
        )
    return record


def effective_configs(log_config: LogConfig) -> dict[str, ConfigValue]:
    """A `LogConfig` under Kafka's dotted keys (for DescribeTopics)."""
    dotted = {field: alias for alias, field in LogConfig.ALIASES.items()}
    result: dict[str, ConfigValue] = {}
    for field in dataclasses.fields(LogConfig):
        value = getattr(log_config, field.name)
        result[dotted.get(field.name, field.name)] = (
            value.value if isinstance(value, enum.Enum) else value
        )
    return result


class TopicManager:
    """The topics of this broker and their partition logs. See the module docstring."""

    def __init__(self, config: BrokerConfig, store: MetadataStore, space: Any) -> None:
        self.config = config
        self.store = store
        self.space = space
        self.logs: LogStore | None = None
        self.topics: dict[str, TopicRecord] = {}
        # Called with (topic, partition, log) whenever a partition log is opened or created.
        self.on_partition_added: Callable[[str, int, Any], None] | None = None
        # Called with (topic, partition, log) just before a partition log is deleted.
        self.on_partition_removed: Callable[[str, int, Any], None] | None = None
        # Records marked `deleting` (a delete a crash interrupted), finished by attach_logs.
        self._unfinished_deletes: dict[str, TopicRecord] = {}
        # Logs on disk the records do not know: kept, unserved (see the module rules).
        self.stray_logs: dict[tuple[str, int], Any] = {}

    # --- loading ----------------------------------------------------------------------------------

    def load_records(self) -> None:
        """Read every topic record from the store (before the logs are opened: `config_for`)."""
        for key, _ in self.store.items(self.space):
            try:
                stored = self.store.get_obj(self.space, key)
                record = self._record_from_stored(stored)
            except (
                BrokerError,
                ConfigError,
                KeyError,
                TypeError,
                ValueError,
                msgpack.UnpackException,
            ) as exc:
                # UnicodeDecodeError is a ValueError. The topic's logs become strays: kept.
                logger.error(
                    "topic record %r is unreadable and is skipped; its logs are kept on disk "
                    "unserved (start with --recover-topics to re-register them): %s",
                    key,
                    exc,
                )
                continue
            if stored.get("deleting"):
                self._unfinished_deletes[record.name] = record
            else:
                self.topics[record.name] = record

    def config_for(self, topic: str) -> LogConfig | None:
        """A topic's effective log config (for `LogManager.open(config_for=...)`)."""
        record = self.topics.get(topic)
        return record.log_config if record is not None else None

    def attach_logs(self, logs: LogStore, *, recover: bool = False) -> None:
        """Reconcile the opened logs with the records (see the module rules) and announce them."""
        self.logs = logs
        for record in self._unfinished_deletes.values():
            logger.info("finishing the deletion of topic %s", record.name)
            self._delete_logs(record, announce=False)
            self.store.delete(self.space, record.name.encode(), durable=True)
        self._unfinished_deletes.clear()
        strays: dict[str, list[int]] = {}
        for topic, partition in logs.partitions():
            record = self.topics.get(topic)
            if record is None or partition >= record.partition_count:
                strays.setdefault(topic, []).append(partition)
        if recover:
            for topic, partitions in strays.items():
                self._recover(topic, partitions)
        else:
            for topic, partitions in strays.items():
                for partition in partitions:
                    self._release(topic, partition)
        for record in self.topics.values():
            self._open_partitions(record)
        if self.stray_logs:
            logger.warning(
                "%d stray log(s) kept unserved: %s. Start once with `broker serve "
                "--recover-topics` to re-register them as topics (default configs), or move "
                "them out of the data directory (docs/storage.md, 'Metadata damage')",
                len(self.stray_logs),
                ", ".join(str(directory) for directory in self.stray_logs.values()),
            )

    def _release(self, topic: str, partition: int) -> None:
        assert self.logs is not None
        directory = self.logs.release(topic, partition)
        self.stray_logs[(topic, partition)] = directory
        logger.warning(
            "keeping %s unserved: the metadata has no topic partition %s-%d (lost or unreadable "
            "metadata, or a partition beyond the topic's count)",
            directory,
            topic,
            partition,
        )

    def _recover(self, topic: str, partitions: list[int]) -> None:
        """Re-register `topic` from its stray partition logs (`--recover-topics`)."""
        existing = self.topics.get(topic)
        count = max(max(partitions) + 1, existing.partition_count if existing else 0)
        configs = dict(existing.configs) if existing else {}
        record = TopicRecord(topic, count, 1, configs, self._log_config(configs))
        self.store.put_obj(self.space, topic.encode(), record.to_stored(), durable=True)
        self.topics[topic] = record
        logger.warning(
            "recovered topic %s from its log directories: %d partition(s), configs %s",
            topic,
            count,
            configs or "default",
        )

    def _record_from_stored(self, stored: Any) -> TopicRecord:
        configs = dict(stored["configs"])
        return TopicRecord(
            name=str(stored["name"]),
            partition_count=int(stored["partition_count"]),
            replication_factor=int(stored["replication_factor"]),
            configs=configs,
            log_config=self._log_config(configs),
        )

    def _open_partitions(self, record: TopicRecord, *, first: int = 0) -> None:
        assert self.logs is not None, "attach_logs first"
        for partition in range(first, record.partition_count):
            log = self.logs.get(record.name, partition)
            if log is None and (record.name, partition) in self.stray_logs:
                del self.stray_logs[(record.name, partition)]
                log = self.logs.adopt(record.name, partition, record.log_config)
                logger.warning("adopted the stray log of %s-%d", record.name, partition)
            elif log is None:
                log = self.logs.create(record.name, partition, record.log_config)
            if self.on_partition_added is not None:
                self.on_partition_added(record.name, partition, log)

    # --- queries ---------------------------------------------------------------------------------

    def get(self, name: str) -> TopicRecord | None:
        return self.topics.get(name)

    def names(self) -> list[str]:
        return sorted(self.topics)

    def require_partition(self, topic: str, partition: int) -> TopicRecord:
        """The topic of an existing partition, else UNKNOWN_TOPIC / UNKNOWN_PARTITION."""
        return require_partition(
            self.topics.get(topic),
            topic,
            partition,
            hint="create it first (or enable auto_create_topics)",
        )

    # --- changes ---------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        partitions: int = -1,
        replication_factor: int = -1,
        configs: Mapping[str, ConfigValue] | None = None,
        validate_only: bool = False,
    ) -> TopicRecord:
        """Create a topic and its logs, or raise a `BrokerError` saying why not."""
        validate_topic_name(name)
        if name in self.topics:
            raise BrokerError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        overrides = dict(configs or {})
        if "partitions" in overrides and partitions == -1:
            partitions = _config_int("partitions", overrides.pop("partitions"))
        overrides.pop("partitions", None)
        count = self.config.default_partitions if partitions == -1 else partitions
        if not 1 <= count <= self.config.max_partitions_per_topic:
            raise BrokerError(
                ErrorCode.INVALID_PARTITIONS,
                f"partitions must be between 1 and {self.config.max_partitions_per_topic} "
                f"(max_partitions_per_topic), got {partitions}",
            )
        if replication_factor not in (-1, 1):
            raise BrokerError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication factor {replication_factor} is not possible on a single-node "
                "broker; use 1",
            )
        record = TopicRecord(name, count, 1, overrides, self._log_config(overrides))
        if validate_only:
            return record
        assert self.logs is not None, "attach_logs first"
        strays = sorted(p for t, p in self.stray_logs if t == name)
        if strays and not is_internal_topic(name):
            raise BrokerError(
                ErrorCode.TOPIC_ALREADY_EXISTS,
                f"topic {name!r} has log directories on disk the metadata does not know "
                f"(partitions {strays}); restart with --recover-topics to re-register them, or "
                "move them out of the data directory",
            )
        self.store.put_obj(self.space, name.encode(), record.to_stored(), durable=True)
        self.topics[name] = record
        try:
            self._open_partitions(record)
        except BaseException:
            del self.topics[name]
            self.store.put_obj(
                self.space, name.encode(), record.to_stored(deleting=True), durable=True
            )
            for partition in strays:  # adopted: back to strays, kept; only new logs go
                if self.logs.get(name, partition) is not None:
                    self._release(name, partition)
            self._delete_logs(record, announce=True)
            self.store.delete(self.space, name.encode(), durable=True)
            raise
        logger.info("created topic %s with %d partition(s), configs %s", name, count, overrides)
        return record

    def alter_configs(
        self, name: str, configs: Mapping[str, ConfigValue], reset: tuple[str, ...] = ()
    ) -> TopicRecord:
        """Set `configs` and drop the `reset` overrides of topic `name`, validated as a whole
        (INVALID_CONFIG names the key; nothing changes then), persisted, and applied to the
        topic's open logs (a new `cleanup.policy` or retention takes effect at the next sweep).
        """
        record = self.topics.get(name)
        if record is None:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {name!r} does not exist")
        # A key set anew or reset replaces the old override under either spelling.
        replaced = {_field_of(key) for key in (*reset, *configs)}
        overrides = {k: v for k, v in record.configs.items() if _field_of(k) not in replaced}
        overrides.update(configs)
        altered = dataclasses.replace(
            record, configs=overrides, log_config=self._log_config(overrides)
        )
        self.store.put_obj(self.space, name.encode(), altered.to_stored(), durable=True)
        self.topics[name] = altered
        if self.logs is not None:
            self.logs.update_config(name, altered.log_config)
        logger.info("altered configs of topic %s: %s", name, overrides or "default")
        return altered

    def add_partitions(
        self, name: str, partition_count: int, *, validate_only: bool = False
    ) -> TopicRecord:
        """Raise topic `name` to `partition_count` partitions (the new total, as Kafka's
        CreatePartitions): the count is persisted first, then the new logs are created and
        announced. Raises UNKNOWN_TOPIC, or INVALID_PARTITIONS when the count does not grow or
        passes max_partitions_per_topic."""
        record = self.topics.get(name)
        if record is None:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {name!r} does not exist")
        limit = self.config.max_partitions_per_topic
        if not record.partition_count < partition_count <= limit:
            raise BrokerError(
                ErrorCode.INVALID_PARTITIONS,
                f"topic {name!r} has {record.partition_count} partition(s); the new count must "
                f"be larger and at most {limit} (max_partitions_per_topic), got "
                f"{partition_count}: partitions can be added, never removed",
            )
        strays = sorted(p for t, p in self.stray_logs if t == name and p >= record.partition_count)
        if strays:
            raise BrokerError(
                ErrorCode.INVALID_PARTITIONS,
                f"topic {name!r} has log directories on disk for partitions {strays} the "
                "metadata does not know; restart with --recover-topics to re-register them, or "
                "move them out of the data directory",
            )
        grown = dataclasses.replace(record, partition_count=partition_count)
        if validate_only:
            return grown
        # A crash after the put reopens the topic with its new count: attach_logs creates the
        # logs still missing, so the change is whole either way.
        self.store.put_obj(self.space, name.encode(), grown.to_stored(), durable=True)
        self.topics[name] = grown
        self._open_partitions(grown, first=record.partition_count)
        logger.info("topic %s: partitions %d -> %d", name, record.partition_count, partition_count)
        return grown

    def delete(self, name: str) -> None:
        record = self.topics.get(name)
        if record is None:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {name!r} does not exist")
        assert self.logs is not None, "attach_logs first"
        self.store.put_obj(self.space, name.encode(), record.to_stored(deleting=True), durable=True)
        del self.topics[name]
        self._delete_logs(record, announce=True)
        self.store.delete(self.space, name.encode(), durable=True)
        logger.info("deleted topic %s", name)

    def _delete_logs(self, record: TopicRecord, *, announce: bool) -> None:
        """Delete the logs of a topic whose record is marked `deleting`; `announce` tells
        `on_partition_removed` (not for logs never announced as added)."""
        assert self.logs is not None
        for partition in range(record.partition_count):
            log = self.logs.get(record.name, partition)
            if announce and self.on_partition_removed is not None:
                self.on_partition_removed(record.name, partition, log)
            if log is not None:
                self.logs.delete(record.name, partition)

    def _log_config(self, overrides: Mapping[str, ConfigValue]) -> LogConfig:
        try:
            log_config = LogConfig.from_mapping(overrides, base=self.config.log)
            self.config.check_log_config(_key_named(overrides, "max_batch_bytes"), log_config)
        except ConfigError as exc:
            raise BrokerError(ErrorCode.INVALID_CONFIG, str(exc)) from exc
        return log_config


def _config_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise BrokerError(ErrorCode.INVALID_CONFIG, f"invalid config {key!r}: expected an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BrokerError(
            ErrorCode.INVALID_CONFIG, f"invalid config {key!r}: expected an integer, got {value!r}"
        ) from None


def _field_of(key: str) -> str:
    """The LogConfig field a config key names (`retention.ms` and `retention_ms` alike)."""
    return LogConfig.ALIASES.get(key, key.replace(".", "_").replace("-", "_"))


def _key_named(overrides: Mapping[str, Any], field: str) -> str:
    """The key the user wrote for `field` (e.g. `max.message.bytes`), for error messages."""
    for key in overrides:
        if LogConfig.ALIASES.get(key, key.replace(".", "_")) == field:
            return key
    return field
