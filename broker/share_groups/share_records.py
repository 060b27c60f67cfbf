"""What the share coordinator writes to `__share_group_state`, and how a replay reads it back.

Two kinds of record, msgpack key and value (the key makes a later record of the same thing
supersede an earlier one, ready for compaction):

    ["c", group]                      {config name: value}      a group's config overrides
                                      None                      the overrides were removed
    ["p", group, topic, partition]    {"s": SPSO,               a share partition's update:
                                       "c": [[first, last, state, delivery count, reason], ...],
                                       "n": [archived, dead-lettered, redelivered, expired]}

A partition update is a snapshot of the whole in-flight window (every range in its persisted
state, coordinator.py's `_persisted_runs`), its start offset and its counters; a replay applies
the updates in log order, each replacing the window (`SharePartition.apply`). A record this
version cannot read is skipped with a warning by the loader, never deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from broker.consumer_groups.group import TopicPartition
from broker.consumer_groups.offsets import EncodedRecord
from broker.share_groups.share_partition import (
    PERSISTED_STATES,
    Change,
    Counters,
    RecordState,
)

CONFIG_KIND = "c"
PARTITION_KIND = "p"
# The counters a partition update carries (`Counters.as_list`).
COUNTER_COUNT = len(Counters().as_list())


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigRecord:
    group_id: str
    configs: dict[str, Any] | None


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionRecord:
    group_id: str
    topic_partition: TopicPartition
    start_offset: int
    changes: tuple[Change, ...]
    counters: tuple[int, ...]


ShareRecord = ConfigRecord | PartitionRecord


class UnreadableRecord(ValueError):
    """A record of `__share_group_state` this version does not understand."""


def encode(record: ShareRecord) -> EncodedRecord:
    if isinstance(record, ConfigRecord):
        key = [CONFIG_KIND, record.group_id]
        value: Any = record.configs
    else:
        tp = record.topic_partition
        key = [PARTITION_KIND, record.group_id, tp.topic, tp.partition]
        value = {
            "s": record.start_offset,
            "c": [
                [c.first, c.last, int(c.state), c.delivery_count, c.reason] for c in record.changes
            ],
            "n": list(record.counters),
        }
    return EncodedRecord(
        msgpack.packb(key, use_bin_type=True),
        None if value is None else msgpack.packb(value, use_bin_type=True),
    )


def decode(key: bytes, value: bytes | None) -> ShareRecord:
    """The record for a key and value read back; raises `UnreadableRecord`."""
    try:
        fields = msgpack.unpackb(key, raw=False)
        body = None if value is None else msgpack.unpackb(value, raw=False)
        kind = fields[0]
        if kind == CONFIG_KIND:
            if body is not None and not isinstance(body, Mapping):
                raise UnreadableRecord(f"config value is {type(body).__name__}")
            return ConfigRecord(str(fields[1]), None if body is None else dict(body))
        if kind == PARTITION_KIND and body is not None:
            changes = tuple(_change(item) for item in body["c"])
            counters = tuple(int(n) for n in body["n"])
            if len(counters) != COUNTER_COUNT:  # a replay could not apply them
                raise UnreadableRecord(f"{len(counters)} counters, not {COUNTER_COUNT}")
            return PartitionRecord(
                str(fields[1]),
                TopicPartition(str(fields[2]), int(fields[3])),
                int(body["s"]),
                changes,
                counters,
            )
    except (ValueError, TypeError, KeyError, IndexError, msgpack.ExtraData) as exc:
        raise UnreadableRecord(str(exc)) from exc
    if kind == PARTITION_KIND:
        raise UnreadableRecord("a share partition record without a value (tombstone)")
    raise UnreadableRecord(f"unknown record kind {kind!r}")


def _change(item: Iterable[Any]) -> Change:
    first, last, state, count, reason = item
    parsed = RecordState(int(state))
    if parsed not in PERSISTED_STATES or int(first) > int(last):
        raise UnreadableRecord(f"bad range {item!r}")
    return Change(int(first), int(last), parsed, int(count), str(reason))
