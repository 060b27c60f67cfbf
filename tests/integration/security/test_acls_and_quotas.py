"""Authorization and quotas on a real `broker serve`, driven by `broker-cli` and the SDK.

Authentication lands separately (SASL, mTLS); these tests run as `User:ANONYMOUS`, the principal
of an unauthenticated connection, with the authorizer on and `allow.everyone.if.no.acl.found`
off: the ACLs granted to `User:ANONYMOUS` decide everything. The first ACLs (cluster ALTER and
DESCRIBE, so that the CLI may manage ACLs) are added while the authorizer is still off, then the
broker restarts with `--authorizer`: the ACLs survive the restart (LMDB).
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from client import Producer
from client.embedded import EmbeddedBroker
from tests.cli_process import cli
from wire.error_codes import BrokerError, ErrorCode

ANON = "User:ANONYMOUS"


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(extra_args=["--log-level", "info"])
    with embedded:
        yield embedded


def ok(broker: EmbeddedBroker, *args: str, stdin: str = "") -> str:
    result = cli(broker, *args, stdin=stdin)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def refused(broker: EmbeddedBroker, *args: str, stdin: str = "") -> str:
    result = cli(broker, *args, stdin=stdin)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    return result.stderr


def end_offset(broker: EmbeddedBroker, topic: str) -> int:
    out = ok(broker, "topics", "describe", topic, "--json")
    return int(out.split('"log_end_offset": ')[1].split(",")[0])


def denials_counted(broker: EmbeddedBroker) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{broker.metrics_address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("broker_authorization_denied_total{")
    }


def test_acls_decide_produce_fetch_and_create(broker: EmbeddedBroker) -> None:
    """The matrix a user meets: each operation denied until granted, literal and prefixed, deny
    over allow, a denied produce writes nothing, every denial audited and counted."""
    ok(broker, "topics", "create", "orders")
    ok(broker, "acls", "add", "--allow", ANON, "--operation", "alter", "--operation",
       "describe", "--cluster")  # fmt: skip
    broker.extra_args += ["--authorizer"]
    broker.restart()
    assert "ALLOW User:ANONYMOUS host=* alter cluster:kafka-cluster" in ok(broker, "acls", "list")

    # CREATE: denied, then allowed by a prefixed ACL for the names under it only.
    assert "TOPIC_AUTHORIZATION_FAILED" in refused(broker, "topics", "create", "pay.in")
    ok(broker, "acls", "add", "--allow", ANON, "--operation", "create", "--operation", "write",
       "--operation", "read", "--topic", "pay.", "--prefixed")  # fmt: skip
    ok(broker, "topics", "create", "pay.in")
    assert "TOPIC_AUTHORIZATION_FAILED" in refused(broker, "topics", "create", "payroll")

    # DESCRIBE: a topic nobody may describe is left out of the listing.
    assert ok(broker, "topics", "list").split() == ["pay.in"]

    # WRITE: with DESCRIBE only, a produce is refused and writes nothing.
    ok(broker, "acls", "add", "--allow", ANON, "--operation", "describe", "--topic", "orders")
    assert "TOPIC_AUTHORIZATION_FAILED" in refused(broker, "produce", "orders", stdin="x\n")
    assert end_offset(broker, "orders") == 0
    ok(broker, "acls", "add", "--allow", ANON, "--operation", "write", "--topic", "orders")
    ok(broker, "produce", "orders", stdin="one\ntwo\n")
    assert end_offset(broker, "orders") == 2

    # READ: denied, then granted.
    consume = ("consume", "orders", "--from-beginning", "--max-messages", "2", "--timeout", "10")
    assert "TOPIC_AUTHORIZATION_FAILED" in refused(broker, *consume)
    ok(broker, "acls", "add", "--allow", ANON, "--operation", "read", "--topic", "orders")
    assert ok(broker, *consume).split() == ["one", "two"]

    # A consumer group needs READ on the group too (a prefixed ACL here).
    in_group = (*consume, "--group", "billing-1")
    assert "GROUP_AUTHORIZATION_FAILED" in refused(broker, *in_group)
    ok(broker, "acls", "add", "--allow", ANON, "--operation", "read", "--group", "billing-",
       "--prefixed")  # fmt: skip
    assert ok(broker, *in_group).split() == ["one", "two"]

    # A DENY beats the ALLOW, whether literal or prefixed.
    ok(broker, "acls", "add", "--deny", ANON, "--operation", "write", "--topic", "ord",
       "--prefixed")  # fmt: skip
    assert "TOPIC_AUTHORIZATION_FAILED" in refused(broker, "produce", "orders", stdin="x\n")
    assert end_offset(broker, "orders") == 2
    ok(broker, "produce", "pay.in", stdin="fine\n")  # the prefix does not cover pay.in
    removed = ok(broker, "acls", "remove", "--permission", "deny", "--topic", "ord")
    assert "DENY User:ANONYMOUS host=* write topic:ord (prefixed)" in removed
    ok(broker, "produce", "orders", stdin="three\n")
    assert end_offset(broker, "orders") == 3

    # A transactional producer needs WRITE on its transactional id (the SDK this time).
    with Producer(broker.bootstrap, transactional_id="billing-tx") as producer:
        with pytest.raises(BrokerError) as refused_txn:
            producer.init_transactions()
        assert refused_txn.value.code is ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    ok(broker, "acls", "add", "--allow", ANON, "--operation", "write", "--transactional-id",
       "billing-", "--prefixed")  # fmt: skip
    with Producer(broker.bootstrap, transactional_id="billing-tx") as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send("orders", b"in a transaction")
        producer.commit_transaction()
    assert end_offset(broker, "orders") == 5  # the record and its commit marker

    # Every denial is an audit line and a counted metric.
    log = broker.log_path.read_text()
    assert "broker.audit: DENIED principal=User:ANONYMOUS" in log
    assert "api=produce operation=write resource=topic:orders" in log
    counted = denials_counted(broker)
    assert counted['operation="write",resource_type="topic"'] >= 2
    assert counted['operation="create",resource_type="topic"'] >= 2


def test_removing_the_cluster_grant_locks_the_cli_out_of_acls(broker: EmbeddedBroker) -> None:
    """ACL administration is itself authorized: cluster ALTER (which implies DESCRIBE, so
    `acls list` works too); once it is removed, only a super user could grant it back."""
    ok(broker, "acls", "add", "--allow", ANON, "--operation", "alter", "--cluster")
    broker.extra_args += ["--authorizer"]
    broker.restart()
    assert "alter cluster:kafka-cluster" in ok(broker, "acls", "list")
    assert "name what to remove" in refused(broker, "acls", "remove")
    ok(broker, "acls", "remove", "--all")
    assert "CLUSTER_AUTHORIZATION_FAILED" in refused(broker, "acls", "list")
    assert "CLUSTER_AUTHORIZATION_FAILED" in refused(
        broker, "acls", "add", "--allow", ANON, "--operation", "alter", "--cluster"
    )


def produce_for(
    broker: EmbeddedBroker, topic: str, client_id: str, seconds: float, acked: dict[str, int]
) -> None:
    """Produce 16 KiB records in acknowledged rounds of 64 KiB for `seconds`; the bytes acked."""
    value = b"v" * 16 * 1024
    with Producer(broker.bootstrap, client_id=client_id, linger_ms=0) as producer:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(4):
                producer.send(topic, value)
            producer.flush()
            acked[client_id] = acked.get(client_id, 0) + 4 * len(value)


def test_a_throttled_producer_is_held_to_its_quota_while_another_keeps_its_rate(
    broker: EmbeddedBroker,
) -> None:
    rate = 256 * 1024
    ok(broker, "topics", "create", "load")
    ok(broker, "quotas", "set", "--client-id", "greedy", "--producer-byte-rate", str(rate))
    assert "client-id=greedy: producer_byte_rate=262144" in ok(broker, "quotas", "list")
    seconds = 4.0
    acked: dict[str, int] = {}
    threads = [
        threading.Thread(target=produce_for, args=(broker, "load", name, seconds, acked))
        for name in ("greedy", "polite")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    # The greedy one: its rate over the run plus the one-second burst, and a round of slack.
    assert acked["greedy"] <= rate * (seconds + 1) + 64 * 1024 * 2, acked
    assert acked["greedy"] >= rate * seconds / 2, acked  # throttled, not starved
    # The other client id is not held back (generous: it shares 2 cores with everything).
    assert acked["polite"] >= 3 * acked["greedy"], acked
    ok(broker, "quotas", "remove", "--client-id", "greedy")
    assert ok(broker, "quotas", "list").strip() == ""
