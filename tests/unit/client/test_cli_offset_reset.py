"""Goal: the plan of `broker-cli groups reset-offsets` (cli/offset_reset.py) follows
kafka-consumer-groups.sh: one reset option, topics with optional partition lists, new offsets
clamped into the log, --to-datetime falling back to the log end, --shift-by needing a commit."""

from __future__ import annotations

import pytest

from cli.offset_reset import (
    PlannedReset,
    ResetError,
    ResetSpec,
    choose_spec,
    parse_datetime_ms,
    parse_topic_specs,
    plan_reset,
    select_partitions,
)
from client.types import TopicPartition

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)
EARLIEST = {T0: 10, T1: 0}
LATEST = {T0: 20, T1: 5}


def options(**given: object) -> dict[str, object]:
    chosen: dict[str, object] = {
        "to_earliest": False,
        "to_latest": False,
        "to_offset": None,
        "shift_by": None,
        "to_datetime": None,
    }
    chosen.update(given)
    return chosen


def test_exactly_one_reset_option() -> None:
    assert choose_spec(**options(shift_by=-3)) == ResetSpec("shift-by", -3)  # type: ignore[arg-type]
    assert choose_spec(**options(to_offset=0)) == ResetSpec("to-offset", 0)  # type: ignore[arg-type]
    with pytest.raises(ResetError, match="exactly one"):
        choose_spec(**options())  # type: ignore[arg-type]
    with pytest.raises(ResetError, match="exactly one"):
        choose_spec(**options(to_earliest=True, to_latest=True))  # type: ignore[arg-type]


def test_datetimes_are_utc_unless_they_name_a_zone() -> None:
    assert parse_datetime_ms("1970-01-01T00:00:01") == 1000
    assert parse_datetime_ms("1970-01-01T00:00:01Z") == 1000
    assert parse_datetime_ms("1970-01-01T01:00:01+01:00") == 1000
    with pytest.raises(ResetError, match="ISO 8601"):
        parse_datetime_ms("yesterday")


def test_topic_specs_with_and_without_partitions() -> None:
    assert parse_topic_specs(["a", "b:2,0", "b:1", "c:0", "c"]) == {
        "a": None,
        "b": (0, 1, 2),
        "c": None,
    }
    with pytest.raises(ResetError, match="numbers"):
        parse_topic_specs(["a:x"])
    with pytest.raises(ResetError, match="names no topic"):
        parse_topic_specs([":0"])
    assert select_partitions({"t": None, "u": (1,)}, {"t": 2, "u": 3}) == [
        T0,
        T1,
        TopicPartition("u", 1),
    ]
    with pytest.raises(ResetError, match=r"has 2 partition\(s\) \(0 to 1\); no partition 2"):
        select_partitions({"t": (0, 2)}, {"t": 2})


def plan(spec: ResetSpec, current: dict[TopicPartition, int], **extra: object) -> list[int]:
    rows = plan_reset(spec, [T1, T0], current=current, earliest=EARLIEST, latest=LATEST, **extra)  # type: ignore[arg-type]
    assert [row.partition for row in rows] == [T0, T1]
    return [row.new for row in rows]


def test_new_offsets_are_clamped_into_the_log() -> None:
    assert plan(ResetSpec("to-earliest"), {}) == [10, 0]
    assert plan(ResetSpec("to-latest"), {}) == [20, 5]
    assert plan(ResetSpec("to-offset", 3), {}) == [10, 3]
    assert plan(ResetSpec("to-offset", 99), {}) == [20, 5]
    assert plan(ResetSpec("shift-by", -4), {T0: 12, T1: 5}) == [10, 1]
    assert plan(ResetSpec("shift-by", 4), {T0: 12, T1: 5}) == [16, 5]


def test_shift_by_needs_a_committed_offset() -> None:
    with pytest.raises(ResetError, match="none for t:1"):
        plan(ResetSpec("shift-by", 1), {T0: 12})


def test_to_datetime_falls_back_to_the_log_end() -> None:
    assert plan(ResetSpec("to-datetime", 5), {}, at_time={T0: 15, T1: -1}) == [15, 5]


def test_the_plan_keeps_the_current_offset() -> None:
    rows = plan_reset(
        ResetSpec("to-earliest"), [T0, T1], current={T0: 12}, earliest=EARLIEST, latest=LATEST
    )
    assert rows == [PlannedReset(T0, 12, 10), PlannedReset(T1, None, 0)]
