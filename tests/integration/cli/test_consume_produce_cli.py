"""`broker-cli produce` and `broker-cli consume` options, as a user runs them: the installed
command in a subprocess against a real broker, asserting exit status, stdout and stderr."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from typing import Any

import pytest

from client.embedded import EmbeddedBroker
from tests.cli_process import CLI, CLI_TIMEOUT_S, cli

# How long a bounded consume waits for records that are already in the log.
READ_TIMEOUT = "10"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def create(broker: EmbeddedBroker, topic: str, partitions: int = 1) -> None:
    ok(cli(broker, "topics", "create", topic, "--partitions", str(partitions)))


def consume_json(broker: EmbeddedBroker, topic: str, count: int, *args: str) -> list[Any]:
    """Exactly `count` records of `topic` as consume --format json prints them."""
    result = ok(cli(broker, "consume", topic, "-n", str(count), "--timeout", READ_TIMEOUT,
                    "--format", "json", *args))  # fmt: skip
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == count, result.stderr
    return records


def json_lines(*objects: dict[str, Any]) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


# --- a topic that does not exist ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [[], ["--group", "g"], ["--share-group", "s"]])
def test_consume_of_a_missing_topic_is_one_error(
    session_broker: EmbeddedBroker, unique_topic: str, mode: list[str]
) -> None:
    result = cli(session_broker, "consume", unique_topic, *mode)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: topic {unique_topic!r} does not exist; see 'broker-cli topics list', or "
        f"create it with 'broker-cli topics create {unique_topic} --partitions N'"
    ]


# --- produce --------------------------------------------------------------------------------------


def test_produce_headers_and_partition(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    create(session_broker, unique_topic, partitions=3)
    produced = ok(cli(session_broker, "produce", unique_topic, "--partition", "2",
                      "--header", "source=cli", "-H", "trace=a=b", "--key-separator", ":",
                      stdin="k1:one\nk2:two\n"))  # fmt: skip
    assert "produced 2 record(s)" in produced.stderr
    records = consume_json(session_broker, unique_topic, 2, "--from-beginning")
    assert [(r["partition"], r["offset"], r["key"], r["value"]) for r in records] == [
        (2, 0, "k1", "one"),
        (2, 1, "k2", "two"),
    ]
    # The first `=` splits a header: its value may hold more.
    assert all(r["headers"] == {"source": "cli", "trace": "a=b"} for r in records)


def test_produce_json_lines_round_trip(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    create(session_broker, unique_topic, partitions=2)
    lines = json_lines(
        {"key": "k", "value": "text", "headers": {"h": "1"}, "partition": 1, "timestamp": 1000},
        {"value": {"base64": "AP8="}, "headers": [["dup", "a"], ["dup", "b"]], "partition": 0},
        {"key": "gone", "value": None, "partition": 0},
    )
    ok(cli(session_broker, "produce", unique_topic, "--format", "json", stdin=lines + "\n"))
    records = consume_json(session_broker, unique_topic, 3, "--from-beginning")
    by_key = {r["key"]: r for r in records}
    assert by_key["k"]["value"] == "text" and by_key["k"]["partition"] == 1
    assert by_key["k"]["timestamp"] == 1000 and by_key["k"]["headers"] == {"h": "1"}
    assert by_key[None]["value"] == {"base64": "AP8="}  # bytes that are not UTF-8, unchanged
    assert by_key["gone"]["value"] is None  # a tombstone
    # consume's JSON output is produce's JSON input: copy the topic through a pipe.
    copy = f"{unique_topic}-copy"
    create(session_broker, copy, partitions=2)
    output = "".join(json.dumps(r) + "\n" for r in records)
    ok(cli(session_broker, "produce", copy, "--format", "json", stdin=output))
    copied = consume_json(session_broker, copy, 3, "--from-beginning")

    def content(rs: list[Any]) -> list[Any]:
        return sorted((r["partition"], str(r["key"]), json.dumps(r["value"])) for r in rs)

    assert content(copied) == content(records)


def test_produce_json_stops_at_a_bad_line(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    create(session_broker, unique_topic)
    stdin = json_lines({"value": "first"}) + '{"value": "second", "colour": "red"}\n'
    result = cli(session_broker, "produce", unique_topic, "--format", "json", stdin=stdin)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: stdin line 2: unknown field(s) colour")
    assert "the 1 record(s) before it were sent" in line
    assert [
        r["value"] for r in consume_json(session_broker, unique_topic, 1, "--from-beginning")
    ] == ["first"]


# --- consume: where to start ----------------------------------------------------------------------


def test_consume_partition_and_offset(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    create(session_broker, unique_topic, partitions=2)
    ok(cli(session_broker, "produce", unique_topic, "-p", "0",
           stdin="".join(f"v{i}\n" for i in range(10))))  # fmt: skip
    ok(cli(session_broker, "produce", unique_topic, "-p", "1", stdin="other\n"))
    from_seven = ok(cli(session_broker, "consume", unique_topic, "-p", "0", "--offset", "7",
                        "-n", "3", "--timeout", READ_TIMEOUT))  # fmt: skip
    assert from_seven.stdout.splitlines() == ["v7", "v8", "v9"]
    earliest = ok(cli(session_broker, "consume", unique_topic, "-p", "0", "-p", "1",
                      "--offset", "earliest", "-n", "11", "--timeout", READ_TIMEOUT))  # fmt: skip
    assert sorted(earliest.stdout.splitlines()) == sorted([f"v{i}" for i in range(10)] + ["other"])
    latest = ok(cli(session_broker, "consume", unique_topic, "-p", "0", "--offset", "latest",
                    "--timeout", "0.5"))  # fmt: skip
    assert latest.stdout == "" and "consumed 0 record(s)" in latest.stderr


def test_consume_from_timestamp(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    create(session_broker, unique_topic, partitions=2)
    stamped = [{"value": f"at{t}", "timestamp": t, "partition": t % 2} for t in (1000, 2001, 3000)]
    ok(cli(session_broker, "produce", unique_topic, "--format", "json", stdin=json_lines(*stamped)))
    later = ok(cli(session_broker, "consume", unique_topic, "--from-timestamp", "2000",
                   "-n", "2", "--timeout", READ_TIMEOUT))  # fmt: skip
    assert sorted(later.stdout.splitlines()) == ["at2001", "at3000"]
    one_partition = ok(cli(session_broker, "consume", unique_topic, "--from-timestamp", "2000",
                           "-p", "0", "-n", "1", "--timeout", READ_TIMEOUT))  # fmt: skip
    assert one_partition.stdout.splitlines() == ["at3000"]
    # No record that late: nothing old is printed.
    future = ok(cli(session_broker, "consume", unique_topic, "--from-timestamp", "4000",
                    "--timeout", "0.5"))  # fmt: skip
    assert future.stdout == ""


def test_consume_as_a_group_commits_what_it_printed(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    create(session_broker, unique_topic)
    ok(cli(session_broker, "produce", unique_topic, stdin="".join(f"r{i}\n" for i in range(5))))
    group = f"{unique_topic}-group"
    args = ("consume", unique_topic, "--group", group, "--from-beginning", "--timeout",
            READ_TIMEOUT)  # fmt: skip
    first = ok(cli(session_broker, *args, "-n", "3"))
    assert first.stdout.splitlines() == ["r0", "r1", "r2"]
    described = json.loads(ok(cli(session_broker, "groups", "describe", group, "--json")).stdout)
    assert [o["committed_offset"] for o in described["offsets"]] == [3]
    # The next member of the group goes on where the last one stopped.
    second = ok(cli(session_broker, *args, "-n", "2"))
    assert second.stdout.splitlines() == ["r3", "r4"]


# --- consume: output ------------------------------------------------------------------------------


def test_consume_formats(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    create(session_broker, unique_topic)
    ok(cli(session_broker, "produce", unique_topic, "--key-separator", ":", "-H", "h=1",
           stdin="k1:one\n"))  # fmt: skip
    ok(cli(session_broker, "produce", unique_topic, stdin="bare\n"))
    read = ("consume", unique_topic, "--from-beginning", "-n", "2", "--timeout", READ_TIMEOUT)
    template = ok(cli(session_broker, *read, "--format", "%k=%s %t/%p:%o [%h] 100%%\\n"))
    assert template.stdout.splitlines() == [
        f"k1=one {unique_topic}/0:0 [h=1] 100%",
        f"=bare {unique_topic}/0:1 [] 100%",
    ]
    headers = ok(cli(session_broker, *read, "--print-headers", "--key-separator", "|"))
    assert headers.stdout.splitlines() == ["h:1\tk1|one", "NO_HEADERS\t|bare"]
    as_json = ok(cli(session_broker, *read, "--json"))
    first = json.loads(as_json.stdout.splitlines()[0])
    assert set(first) == {"topic", "partition", "offset", "timestamp", "key", "value", "headers"}
    assert (first["key"], first["value"], first["headers"]) == ("k1", "one", {"h": "1"})


# --- consume: arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--offset", "5"], "needs --partition"),
        (["-p", "0", "--offset", "soon"], "give N >= 0, earliest or latest"),
        (["-p", "0", "--offset", "1", "--from-beginning"], "give one"),
        (["--group", "g", "-p", "0"], "assigned by the group"),
        (["--format", "jsno"], "neither 'value', 'json' nor a template"),
        (["--format", "%q"], "unknown placeholder %q"),
        (["--json", "--format", "value"], "--json is --format json"),
        (["--format", "%s", "--print-headers"], "write the key (%k) and headers (%h)"),
        (["--group", "g", "--from-timestamp", "5"], "starts at its committed offsets"),
        (["--share-group", "s", "-p", "0"], "does not apply to a share group"),
    ],
)
def test_consume_usage_errors_exit_2(
    session_broker: EmbeddedBroker, args: list[str], message: str
) -> None:
    result = cli(session_broker, "consume", "any-topic", *args)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.replace("│", " ").split())
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--header", "novalue"], "'novalue' is not KEY=VALUE"),
        (["--format", "json", "--key-separator", ":"], "names its key itself"),
        (["--format", "yaml"], "yaml"),
    ],
)
def test_produce_usage_errors_exit_2(
    session_broker: EmbeddedBroker, args: list[str], message: str
) -> None:
    result = cli(session_broker, "produce", "any-topic", *args, stdin="x\n")
    assert result.returncode == 2
    assert message in " ".join(result.stderr.replace("│", " ").split())


def test_consume_of_a_missing_partition_is_one_error(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    create(session_broker, unique_topic, partitions=2)
    result = cli(session_broker, "consume", unique_topic, "-p", "2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: topic {unique_topic!r} has no partition 2: its partitions are 0..1"
    ]


def test_consume_as_a_share_group_member(session_broker: EmbeddedBroker, unique_topic: str) -> None:
    create(session_broker, unique_topic)
    ok(cli(session_broker, "produce", unique_topic, stdin="job1\njob2\njob3\n"))
    group = f"{unique_topic}-workers"
    ok(cli(session_broker, "groups", "configure", group, "--auto-offset-reset", "earliest"))
    read = ("consume", unique_topic, "--share-group", group, "--timeout", READ_TIMEOUT)
    text = ok(cli(session_broker, *read, "-n", "2"))
    assert text.stdout.splitlines() == ["Delivery:1\tjob1", "Delivery:1\tjob2"]
    as_json = ok(cli(session_broker, *read, "-n", "1", "--format", "json"))
    record = json.loads(as_json.stdout)
    assert (record["value"], record["delivery_count"]) == ("job3", 1)


def test_records_stay_on_stdout_when_stderr_is_a_terminal(
    session_broker: EmbeddedBroker, unique_topic: str
) -> None:
    # With stderr a terminal, consume draws its live count there; stdout (a pipe) must still
    # get the records and nothing else.
    create(session_broker, unique_topic)
    ok(cli(session_broker, "produce", unique_topic, stdin="a\nb\nc\n"))
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [*CLI, "--bootstrap", session_broker.bootstrap, "consume", unique_topic,
             "--from-beginning", "-n", "3", "--timeout", READ_TIMEOUT],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
            text=True, timeout=CLI_TIMEOUT_S,
        )  # fmt: skip
        os.close(terminal)
        shown = read_terminal(controller)
    finally:
        os.close(controller)
    assert result.returncode == 0, shown
    assert result.stdout.splitlines() == ["a", "b", "c"]
    assert "consumed 3 record(s)" in shown


def read_terminal(controller: int) -> str:
    """Everything written to a pseudo-terminal whose writers have all exited."""
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: no writer is left
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
