"""The plan of `broker-cli groups reset-offsets`, as `kafka-consumer-groups.sh --reset-offsets`
makes it: which partitions (`--topic T[:P,...]` or `--all-topics`) and, per partition, the new
offset from one of `--to-earliest`, `--to-latest`, `--to-offset N`, `--shift-by N`,
`--to-datetime ISO`.

Pure: the command (cli/groups.py) reads the group's committed offsets and the partitions' log
start and end offsets from the cluster, and this module turns them into the plan, so every rule
below is tested without a broker.

Rules (Kafka's): a new offset is clamped into [log start, log end] (`--to-offset` past the end
reads from the end, `--shift-by` never leaves the log); `--to-datetime` takes the first offset
whose timestamp is at or after the time, or the log end when no record is that recent;
`--shift-by` moves the committed offset, so a partition without one is an error naming it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping

from client.types import TopicPartition


class ResetError(ValueError):
    """The reset cannot be planned as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class ResetSpec:
    """Exactly one of the ways to choose the new offsets (`kind`), with its argument: an offset
    (`to-offset`), a delta (`shift-by`) or milliseconds since the epoch (`to-datetime`)."""

    kind: str  # "to-earliest", "to-latest", "to-offset", "shift-by", "to-datetime"
    value: int = 0


@dataclasses.dataclass(frozen=True)
class PlannedReset:
    """One row of the plan: the partition, its committed offset now (None: no commit), and the
    offset it gets."""

    partition: TopicPartition
    current: int | None
    new: int


def choose_spec(
    *,
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    shift_by: int | None,
    to_datetime: str | None,
) -> ResetSpec:
    """The one reset option given on the command line (ResetError unless exactly one is)."""
    given = [
        ResetSpec("to-earliest") if to_earliest else None,
        ResetSpec("to-latest") if to_latest else None,
        ResetSpec("to-offset", to_offset) if to_offset is not None else None,
        ResetSpec("shift-by", shift_by) if shift_by is not None else None,
        ResetSpec("to-datetime", parse_datetime_ms(to_datetime))
        if to_datetime is not None
        else None,
    ]
    chosen = [spec for spec in given if spec is not None]
    if len(chosen) != 1:
        raise ResetError(
            "give exactly one of --to-earliest, --to-latest, --to-offset, --shift-by, --to-datetime"
        )
    return chosen[0]


def parse_datetime_ms(text: str) -> int:
    """An ISO 8601 date-time (`2026-01-31T12:00:00`, `...Z`, `...+02:00`; UTC if it names no
    zone) as milliseconds since the epoch."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ResetError(
            f"--to-datetime {text!r} is not an ISO 8601 date-time "
            "(e.g. 2026-01-31T12:00:00, UTC unless it ends with Z or an offset like +02:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def parse_topic_specs(specs: Iterable[str]) -> dict[str, tuple[int, ...] | None]:
    """`--topic` values, `T` (every partition: None) or `T:P,P,...` (those partitions), by
    topic; a topic given twice gets the union of its partitions."""
    topics: dict[str, tuple[int, ...] | None] = {}
    for spec in specs:
        name, sep, listed = spec.partition(":")
        if not name:
            raise ResetError(f"--topic {spec!r} names no topic (expected TOPIC or TOPIC:P,P,...)")
        if not sep:
            topics[name] = None
            continue
        try:
            partitions = tuple(int(p) for p in listed.split(","))
        except ValueError:
            raise ResetError(
                f"--topic {spec!r}: partitions must be numbers separated by commas "
                "(e.g. events:0,2)"
            ) from None
        if name in topics and topics[name] is None:
            continue  # every partition already
        topics[name] = tuple(sorted(set(topics.get(name) or ()) | set(partitions)))
    return topics


def select_partitions(
    topics: Mapping[str, tuple[int, ...] | None], partition_counts: Mapping[str, int]
) -> list[TopicPartition]:
    """The partitions the `--topic` values name, checked against each topic's partition count."""
    selected: list[TopicPartition] = []
    for name, partitions in topics.items():
        count = partition_counts[name]
        wanted = range(count) if partitions is None else partitions
        missing = [p for p in wanted if not 0 <= p < count]
        if missing:
            raise ResetError(
                f"topic {name!r} has {count} partition(s) (0 to {count - 1}); "
                f"no partition {', '.join(map(str, missing))}"
            )
        selected.extend(TopicPartition(name, p) for p in wanted)
    return sorted(selected)


def plan_reset(
    spec: ResetSpec,
    partitions: Iterable[TopicPartition],
    *,
    current: Mapping[TopicPartition, int],
    earliest: Mapping[TopicPartition, int],
    latest: Mapping[TopicPartition, int],
    at_time: Mapping[TopicPartition, int] | None = None,
) -> list[PlannedReset]:
    """Per partition, sorted: its committed offset (`current`, absent if none) and the new one.
    `earliest`/`latest` are the log start and end offsets; `at_time` the first offset at or
    after `spec`'s time (-1: none), needed only for `to-datetime`."""
    wanted = sorted(partitions)
    if spec.kind == "shift-by":
        uncommitted = [tp for tp in wanted if tp not in current]
        if uncommitted:
            names = ", ".join(f"{tp.topic}:{tp.partition}" for tp in uncommitted)
            raise ResetError(
                f"--shift-by moves a committed offset, and the group has none for {names}; "
                "reset those with --to-earliest, --to-latest or --to-offset"
            )
    plan = []
    for tp in wanted:
        low, high = earliest[tp], latest[tp]
        if spec.kind == "to-earliest":
            target = low
        elif spec.kind == "to-latest":
            target = high
        elif spec.kind == "to-offset":
            target = spec.value
        elif spec.kind == "shift-by":
            target = current[tp] + spec.value
        elif spec.kind == "to-datetime":
            assert at_time is not None, "to-datetime needs the offsets for the time"
            target = high if at_time[tp] < 0 else at_time[tp]
        else:
            raise AssertionError(f"unknown reset kind {spec.kind!r}")
        plan.append(PlannedReset(tp, current.get(tp), min(max(target, low), high)))
    return plan
