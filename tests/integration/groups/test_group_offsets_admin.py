"""Goal (issue 14): a consumer group's committed offsets administered as a Kafka user expects,
against a real `broker serve`: `AdminClient.list_consumer_group_offsets` and
`alter_consumer_group_offsets` (with `OffsetAndMetadata`, refused while the group has members),
and `broker-cli groups reset-offsets`, run as the installed command in a subprocess, planning by
default and committing only with `--execute`, like kafka-consumer-groups.sh."""

from __future__ import annotations

import datetime
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import AdminClient, Consumer, OffsetAndMetadata, Producer, TopicPartition
from client.embedded import EmbeddedBroker
from tests.integration.groups.conftest import wait_for
from wire.error_codes import BrokerError, ErrorCode

BROKER_CLI = str(Path(sys.executable).with_name("broker-cli"))
FAST = {"auto_offset_reset": "earliest", "session_timeout_ms": 2_000,
        "heartbeat_interval_ms": 200}  # fmt: skip
# Record timestamps of `fill`: one a second, starting a minute ago (inside any retention).
STEP_MS = 1_000


def cli(broker: EmbeddedBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BROKER_CLI, "--bootstrap", broker.bootstrap, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def fill(broker: EmbeddedBroker, topic: str, partitions: int, per_partition: int) -> int:
    """Create `topic` and give each partition `per_partition` records, record i stamped
    `first + i * STEP_MS`; returns `first`."""
    with AdminClient(broker.bootstrap) as admin:
        admin.create_topic(topic, partitions)
    first = int(time.time() * 1000) - 60_000
    with Producer(broker.bootstrap) as producer:
        for i in range(per_partition):
            for p in range(partitions):
                producer.send(topic, b"%d" % i, partition=p, timestamp_ms=first + i * STEP_MS)
        producer.flush()
    return first


def committed(broker: EmbeddedBroker, group: str) -> dict[TopicPartition, int]:
    with AdminClient(broker.bootstrap) as admin:
        listed = admin.list_consumer_group_offsets(group)
    return {tp: o.offset for tp, o in listed.items()}


def test_list_and_alter_group_offsets_through_the_sdk(group_broker: EmbeddedBroker) -> None:
    fill(group_broker, "sdk-offsets", 2, 5)
    t0, t1 = TopicPartition("sdk-offsets", 0), TopicPartition("sdk-offsets", 1)
    with AdminClient(group_broker.bootstrap) as admin:
        assert admin.list_consumer_group_offsets("sdk-g") == {}  # no such group: no offsets
        admin.alter_consumer_group_offsets("sdk-g", {t0: OffsetAndMetadata(3, "replayed"), t1: 4})
        assert admin.list_consumer_group_offsets("sdk-g") == {
            t0: OffsetAndMetadata(3, "replayed"),
            t1: OffsetAndMetadata(4, ""),
        }
        assert admin.list_consumer_group_offsets("sdk-g", [t1]) == {t1: OffsetAndMetadata(4)}
        with pytest.raises(BrokerError) as too_large:
            admin.alter_consumer_group_offsets("sdk-g", {t0: OffsetAndMetadata(1, "x" * 100_000)})
        assert "sdk-offsets/0" in too_large.value.message
        assert admin.list_consumer_group_offsets("sdk-g", [t0]) == {
            t0: OffsetAndMetadata(3, "replayed")
        }

    # A consumer of the group starts where the admin put it.
    with Consumer(group_broker.bootstrap, group_id="sdk-g", **FAST) as consumer:
        consumer.subscribe(["sdk-offsets"])
        records: list[tuple[int, int]] = []
        wait_for(
            lambda: (
                records.extend((r.partition, r.offset) for r in consumer.poll(timeout_ms=100))
                or len(records) >= 3
            ),
            20,
            "the records after the altered offsets",
        )
        assert sorted(records) == [(0, 3), (0, 4), (1, 4)]
        # While it is a member, the admin may not move the group's offsets.
        with AdminClient(group_broker.bootstrap) as admin, pytest.raises(BrokerError) as refused:
            admin.alter_consumer_group_offsets("sdk-g", {t0: 0})
        assert refused.value.code is ErrorCode.GROUP_NOT_EMPTY
        assert "active members" in refused.value.message


def test_reset_offsets_plans_by_default_and_commits_with_execute(
    group_broker: EmbeddedBroker,
) -> None:
    fill(group_broker, "plan", 2, 10)
    t0, t1 = TopicPartition("plan", 0), TopicPartition("plan", 1)
    with AdminClient(group_broker.bootstrap) as admin:
        admin.alter_consumer_group_offsets("plan-g", {t0: 6})

    # No --execute: the plan, a note, and nothing changed.
    planned = cli(group_broker, "groups", "reset-offsets", "plan-g", "--topic", "plan",
                  "--to-earliest")  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    assert lines[0].split() == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"]
    assert [line.split() for line in lines[1:]] == [
        ["plan-g", "plan", "0", "6", "0"],
        ["plan-g", "plan", "1", "-", "0"],
    ]
    assert "nothing changed: add --execute" in planned.stderr
    dry = cli(group_broker, "groups", "reset-offsets", "plan-g", "-t", "plan", "--to-latest",
              "--dry-run", "--json")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {
        "group": "plan-g",
        "executed": False,
        "partitions": [
            {"topic": "plan", "partition": 0, "current_offset": 6, "new_offset": 10},
            {"topic": "plan", "partition": 1, "current_offset": None, "new_offset": 10},
        ],
    }
    assert committed(group_broker, "plan-g") == {t0: 6}

    # --execute on chosen partitions only; --to-offset is clamped into the log.
    done = cli(group_broker, "groups", "reset-offsets", "plan-g", "--topic", "plan:1",
               "--to-offset", "99", "--execute")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line.split() for line in done.stdout.splitlines()[1:]] == [
        ["plan-g", "plan", "1", "-", "10"]
    ]
    assert "reset 1 partition(s) of group 'plan-g'" in done.stderr
    assert committed(group_broker, "plan-g") == {t0: 6, t1: 10}

    # --shift-by over every topic the group has committed, clamped at the log start.
    shifted = cli(group_broker, "groups", "reset-offsets", "plan-g", "--all-topics",
                  "--shift-by", "-8", "--execute")  # fmt: skip
    assert shifted.returncode == 0, shifted.stderr
    assert committed(group_broker, "plan-g") == {t0: 0, t1: 2}


def test_reset_offsets_to_a_datetime(group_broker: EmbeddedBroker) -> None:
    first = fill(group_broker, "when", 1, 10)
    moment = datetime.datetime.fromtimestamp((first + 4 * STEP_MS) / 1000, datetime.UTC)
    at = cli(group_broker, "groups", "reset-offsets", "when-g", "--topic", "when",
             "--to-datetime", moment.isoformat(timespec="milliseconds"), "--execute")  # fmt: skip
    assert at.returncode == 0, at.stderr
    assert committed(group_broker, "when-g") == {TopicPartition("when", 0): 4}
    # Later than every record: the log end, as Kafka does.
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    after = cli(group_broker, "groups", "reset-offsets", "when-g", "--topic", "when",
                "--to-datetime", future.strftime("%Y-%m-%dT%H:%M:%SZ"), "--execute")  # fmt: skip
    assert after.returncode == 0, after.stderr
    assert committed(group_broker, "when-g") == {TopicPartition("when", 0): 10}


def test_reset_offsets_mistakes_are_one_clear_line(group_broker: EmbeddedBroker) -> None:
    fill(group_broker, "oops", 2, 3)

    def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
        assert result.returncode == code, (result.stdout, result.stderr)
        assert text in result.stderr, result.stderr
        assert result.stdout == ""

    reset = ["groups", "reset-offsets", "oops-g"]
    one_line_error(cli(group_broker, *reset, "--topic", "oops"), 2, "exactly one of")
    one_line_error(cli(group_broker, *reset, "--to-earliest"), 2, "--all-topics")
    one_line_error(cli(group_broker, *reset, "-t", "oops", "--to-latest", "--dry-run",
                       "--execute"), 2, "not both")  # fmt: skip
    one_line_error(cli(group_broker, *reset, "-t", "oops", "--to-datetime", "noon"), 2,
                   "ISO 8601")  # fmt: skip
    one_line_error(cli(group_broker, *reset, "-t", "oops:0,5", "--to-latest"), 1,
                   "no partition 5")  # fmt: skip
    one_line_error(cli(group_broker, *reset, "-t", "nope", "--to-latest"), 1, "UNKNOWN_TOPIC")
    one_line_error(cli(group_broker, *reset, "--all-topics", "--to-latest"), 1,
                   "has no committed offsets")  # fmt: skip
    one_line_error(cli(group_broker, *reset, "-t", "oops", "--shift-by", "1"), 1,
                   "none for oops:0, oops:1")  # fmt: skip
    assert committed(group_broker, "oops-g") == {}


def test_reset_offsets_of_an_active_group(group_broker: EmbeddedBroker) -> None:
    fill(group_broker, "busy", 1, 3)
    with Consumer(group_broker.bootstrap, group_id="busy-g", **FAST) as consumer:
        consumer.subscribe(["busy"])
        wait_for(lambda: consumer.poll(timeout_ms=100) or consumer.assignment(), 20,
                 "the consumer to join")  # fmt: skip
        consumer.commit({TopicPartition("busy", 0): 3})
        refused = cli(group_broker, "groups", "reset-offsets", "busy-g", "-t", "busy",
                      "--to-earliest", "--execute")  # fmt: skip
        assert refused.returncode == 1
        assert "is active (state Stable)" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        # The plan can still be looked at; it says why it could not be executed now.
        planned = cli(group_broker, "groups", "reset-offsets", "busy-g", "-t", "busy",
                      "--to-earliest")  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        assert planned.stdout.splitlines()[1].split() == ["busy-g", "busy", "0", "3", "0"]
        assert "the group is Stable: stop its consumers first" in planned.stderr
    assert committed(group_broker, "busy-g") == {TopicPartition("busy", 0): 3}


def test_reset_offsets_shows_its_steps_on_a_terminal(group_broker: EmbeddedBroker) -> None:
    # Goal: on a terminal the user sees which step runs (a cluster may take seconds per step);
    # stdout still carries the plan only.
    fill(group_broker, "tty", 2, 2)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [BROKER_CLI, "--bootstrap", group_broker.bootstrap, "groups", "reset-offsets", "tty-g",
         "-t", "tty", "--to-latest", "--execute"],
        stdout=subprocess.PIPE, stderr=terminal, text=True,
    )  # fmt: skip
    os.close(terminal)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, "the command went quiet for 30 s"
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        stdout, _ = process.communicate(timeout=30)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, shown.decode(errors="replace")
    assert b"committing 2 offset(s) for group 'tty-g'" in shown
    assert b"reset 2 partition(s)" in shown
    assert [line.split()[-1] for line in stdout.splitlines()[1:]] == ["2", "2"]
