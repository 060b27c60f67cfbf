"""broker-cli's share group commands (`groups configure`, `groups describe` of a share group,
`consume --share-group`): argument checks exit 2, broker errors exit 1 with one line, and the
output, with the SDK replaced by fakes (no broker)."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from cli import common, share_groups
from cli.broker_cli import app
from client.blocking import _Blocking
from client.types import ShareRecord
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

runner = CliRunner()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeClient(_Blocking):
    """A blocking client without a loop thread: it records its options and calls."""

    instances: ClassVar[list[Any]]

    def __init__(self, bootstrap: str, **options: Any) -> None:
        self.options = options
        self.calls: list[tuple[Any, ...]] = []
        type(self).instances.append(self)

    def close(self) -> None:
        self.calls.append(("close",))


class FakeAdmin(FakeClient):
    instances: ClassVar[list[Any]] = []
    effective: ClassVar[dict[str, Any]] = {}
    share_group: codec.DescribedShareGroup | BrokerError = BrokerError(
        ErrorCode.GROUP_ID_NOT_FOUND, "no share group"
    )

    def alter_group_config(self, group: str, configs: dict[str, Any], reset: Any) -> Any:
        self.calls.append(("alter", group, configs, list(reset)))
        if isinstance(self.effective, BrokerError):
            raise self.effective
        return self.effective

    def describe_share_group(self, group: str) -> codec.DescribedShareGroup:
        if isinstance(self.share_group, BrokerError):
            raise self.share_group
        return self.share_group

    def describe_group(self, group: str) -> codec.DescribedGroup:
        self.calls.append(("describe_group", group))
        return codec.DescribedGroup(group_id=group, state="Empty", protocol_type="consumer")

    def describe_topic(self, name: str) -> Any:
        # `consume` looks its topic up before it starts reading.
        return SimpleNamespace(name=name, partition_count=1)


class FakeShareConsumer(FakeClient):
    instances: ClassVar[list[Any]] = []
    polls: ClassVar[list[list[ShareRecord]]] = []

    def subscribe(self, topics: list[str]) -> None:
        self.calls.append(("subscribe", topics))

    def poll(self, timeout_ms: float, max_records: int | None = None) -> list[ShareRecord]:
        self.calls.append(("poll", max_records))
        return self.polls.pop(0) if self.polls else []

    def acknowledge(self, record: ShareRecord, type: str = "accept", delay_ms: int = 0) -> None:
        self.calls.append(("ack", record.offset, type))


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    fake = type("Admin", (FakeAdmin,), {"instances": []})
    monkeypatch.setattr(common, "AdminClient", fake)
    # No broker behind the fakes, so no cluster for `broker-cli` to wait for.
    monkeypatch.setenv("BROKER_WAIT_TIMEOUT", "0")
    return fake


@pytest.fixture
def share_consumer(
    monkeypatch: pytest.MonkeyPatch, admin: type[FakeAdmin]
) -> type[FakeShareConsumer]:
    fake = type("Share", (FakeShareConsumer,), {"instances": [], "polls": []})
    monkeypatch.setattr(share_groups, "ShareConsumer", fake)
    return fake


def record(offset: int, value: bytes, delivery_count: int) -> ShareRecord:
    return ShareRecord("jobs", 0, offset, 1_000, b"k", value, None, delivery_count)


# --- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["groups", "configure", "g"], "at least one setting"),
        (["groups", "configure", "g", "--reset", "share.colour"], "unknown share group config"),
        (["groups", "configure", "g", "--delivery-limit", "3", "--reset", "delivery-limit"],
         "set and reset at once"),
        (["groups", "configure", "g", "--auto-offset-reset", "sometimes"], "sometimes"),
        (["groups", "configure", "g", "--delivery-limit", "0"], "--delivery-limit"),
        (["groups", "configure", "g", "--lock-duration-ms", "soon"], "--lock-duration-ms"),
        (["consume", "t", "--share-group", "g", "--from-beginning"], "auto-offset-reset"),
        (["consume", "t", "--share-group", "g", "--isolation-level", "read_committed"],
         "does not apply to a share group"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["--bootstrap", f"127.0.0.1:{closed_port()}", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_unreachable_broker_is_one_line_exit_1() -> None:
    address = f"127.0.0.1:{closed_port()}"
    args = ["--bootstrap", address, "--wait-timeout", "0",
            "groups", "configure", "g", "--delivery-limit", "3"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: cannot reach broker at {address}")


# --- groups configure -----------------------------------------------------------------------------


def test_configure_sends_the_configs_and_prints_the_effective_ones(admin: type[FakeAdmin]) -> None:
    admin.effective = {"share.delivery.count.limit": 3, "share.auto.offset.reset": "earliest"}
    result = runner.invoke(
        app,
        ["groups", "configure", "jobs", "--delivery-limit", "3", "--auto-offset-reset",
         "earliest", "--dead-letter-topic", "", "--reset", "lock-duration-ms", "--reset",
         "share.release.delay.max.ms"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (client,) = admin.instances
    assert client.calls[0] == (
        "alter",
        "jobs",
        {
            "share.delivery.count.limit": 3,
            "share.auto.offset.reset": "earliest",
            "share.dead.letter.topic": "",
        },
        ["share.record.lock.duration.ms", "share.release.delay.max.ms"],
    )
    assert "share.auto.offset.reset = earliest\nshare.delivery.count.limit = 3\n" in result.output


def test_configure_json_output(admin: type[FakeAdmin]) -> None:
    admin.effective = {"share.delivery.count.limit": 4}
    result = runner.invoke(app, ["groups", "configure", "g", "--delivery-limit", "4", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"share.delivery.count.limit": 4}


def test_a_refused_config_is_one_line_exit_1(admin: type[FakeAdmin]) -> None:
    admin.effective = BrokerError(  # type: ignore[assignment]
        ErrorCode.INVALID_CONFIG, "share.delivery.count.limit: must be in 2..10, got 11"
    )
    result = runner.invoke(app, ["groups", "configure", "g", "--delivery-limit", "11"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: INVALID_CONFIG: share.delivery.count.limit: must be in 2..10, got 11"
    )


# --- groups describe ------------------------------------------------------------------------------


def share_group() -> codec.DescribedShareGroup:
    partition = codec.SharePartitionDescription(
        topic="jobs", partition=0, start_offset=10, end_offset=30, in_flight=20, available=5,
        acquired=12, acknowledged=3, archived_total=40, dead_lettered_total=2,
        redelivered_total=7, lock_expired_total=1, backlog=100, oldest_available_ms=1_000,
    )  # fmt: skip
    member = codec.ShareMemberDescription(
        member_id="m1", client_id="worker", client_host="/10.0.0.1", topics=("jobs",),
        acquired_records=12,
    )  # fmt: skip
    return codec.DescribedShareGroup(
        group_id="jobs-workers",
        state="Stable",
        configs={"share.delivery.count.limit": 5},
        members=(member,),
        partitions=(partition,),
        dead_letter_writes=2,
    )


def test_describe_shows_a_share_group(admin: type[FakeAdmin]) -> None:
    admin.share_group = share_group()
    result = runner.invoke(app, ["groups", "describe", "jobs-workers"])
    assert result.exit_code == 0, result.output
    assert "type=share" in result.output and "state=Stable" in result.output
    assert "dead-letter writes=2" in result.output
    assert "jobs/0" in result.output and "100" in result.output  # a row per partition
    assert "m1 worker@/10.0.0.1: topics=jobs  acquired=12" in result.output
    assert "share.delivery.count.limit = 5" in result.output
    (client,) = admin.instances
    assert ("describe_group", "jobs-workers") not in client.calls


def test_describe_json_of_a_share_group(
    admin: type[FakeAdmin], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.share_group = share_group()
    monkeypatch.setattr(common.time, "time", lambda: 4.5)  # 4500 ms: oldest is 3.5 s old
    result = runner.invoke(app, ["groups", "describe", "jobs-workers", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["type"] == "share" and data["dead_letter_writes"] == 2
    (partition,) = data["partitions"]
    assert partition["oldest_available_age_ms"] == 3_500
    assert (partition["in_flight"], partition["available"], partition["acquired"]) == (20, 5, 12)
    assert (partition["archived_total"], partition["backlog"]) == (40, 100)
    assert data["members"][0]["member_id"] == "m1"


def test_describe_falls_back_to_the_consumer_group(admin: type[FakeAdmin]) -> None:
    result = runner.invoke(app, ["groups", "describe", "classic", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "Empty"
    (client,) = admin.instances
    assert ("describe_group", "classic") in client.calls


def test_describe_reports_other_share_group_errors(admin: type[FakeAdmin]) -> None:
    admin.share_group = BrokerError(ErrorCode.UNAUTHORIZED, "not allowed")
    result = runner.invoke(app, ["groups", "describe", "g"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: UNAUTHORIZED: not allowed"


# --- consume --share-group ------------------------------------------------------------------------


def test_consume_prints_delivery_counts_and_accepts_what_it_printed(
    share_consumer: type[FakeShareConsumer],
) -> None:
    share_consumer.polls = [[record(4, b"a", 1), record(5, b"b", 3)], [record(9, b"c", 1)]]
    result = runner.invoke(
        app, ["consume", "jobs", "--share-group", "workers", "--timeout", "0", "-n", "2"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "Delivery:1\ta\nDelivery:3\tb\n"
    (consumer,) = share_consumer.instances
    assert consumer.options == {"group_id": "workers", "acknowledgement_mode": "explicit"}
    assert consumer.calls == [
        ("subscribe", ["jobs"]),
        ("poll", 2),
        ("ack", 4, "accept"),
        ("ack", 5, "accept"),
        ("close",),
    ]


def test_consume_releases_records_past_max_messages(
    share_consumer: type[FakeShareConsumer],
) -> None:
    share_consumer.polls = [[record(1, b"a", 1), record(2, b"b", 1), record(3, b"c", 2)]]
    result = runner.invoke(app, ["consume", "jobs", "--share-group", "w", "-n", "1", "--json"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["delivery_count"] == 1 and json.loads(line)["offset"] == 1
    (consumer,) = share_consumer.instances
    assert [c for c in consumer.calls if c[0] == "ack"] == [
        ("ack", 2, "release"),
        ("ack", 3, "release"),
        ("ack", 1, "accept"),
    ]
