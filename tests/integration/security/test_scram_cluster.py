"""Goal: a 3-broker cluster runs with `--auth scram`: its brokers log in to each other (Raft
links and controller calls), a user created through one broker logs in through another, and a
Raft link that did not log in as a super-user is refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from broker.raft import wire as raft_wire
from client import aio
from client.embedded_cluster import EmbeddedCluster
from tests.integration.security.conftest import ADMIN, AUTH_ARGS, AUTH_ENV
from wire import codec
from wire.error_codes import BrokerError
from wire.framing import FrameConnection, Role

LOGIN_WAIT_S = 30


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[EmbeddedCluster]:
    # Ready means every broker registered and is ACTIVE: impossible unless the brokers' Raft
    # links and controller calls logged in (the readiness probe logs in as the admin too).
    with EmbeddedCluster(3, extra_args=AUTH_ARGS, env=AUTH_ENV, security=ADMIN) as cluster:
        yield cluster


async def test_a_user_created_through_one_broker_logs_in_through_another(
    auth_cluster: EmbeddedCluster,
) -> None:
    async with aio.AdminClient(auth_cluster.node(1).bootstrap, **ADMIN) as admin:
        await admin.upsert_user("erin", "erin-pw", mechanism="SCRAM-SHA-512")
        await admin.create_topic("erin-topic", 1, replication_factor=3)
        # `--auth scram` enforces ACLs: erin may write (and so describe) her topic, no more.
        await admin.create_acls(
            [
                codec.AclBindingData(
                    resource_type="topic",
                    resource_name="erin-topic",
                    pattern_type="literal",
                    principal="User:erin",
                    operation="write",
                    permission="allow",
                )
            ]
        )
    erin = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "erin",
        "sasl_password": "erin-pw",
    }
    # Node 3 applies the metadata records (her credential, her ACL) a moment later: retry the
    # login until it has both.
    with trio.fail_after(LOGIN_WAIT_S):
        while True:
            try:
                async with aio.AdminClient(auth_cluster.node(3).bootstrap, **erin) as admin:
                    topics = await admin.list_topics()
                if "erin-topic" in topics:
                    break
            except BrokerError:
                pass
            await trio.sleep(0.2)
    async with aio.AdminClient(auth_cluster.node(1).bootstrap, **ADMIN) as admin:
        assert "other-topic" not in topics
        await admin.create_topic("other-topic", 1, replication_factor=3)
    async with aio.AdminClient(auth_cluster.node(3).bootstrap, **erin) as admin:
        assert "other-topic" not in await admin.list_topics(), "no ACL: not even listed"
    async with aio.Producer(auth_cluster.node(2).bootstrap, **erin) as producer:
        await producer.send("erin-topic", b"replicated")
        await producer.flush()
    with pytest.raises(BrokerError, match="wrong user name or password"):
        wrong = {**erin, "sasl_password": "nope"}
        async with aio.AdminClient(auth_cluster.node(2).bootstrap, **wrong):
            pass


async def test_a_raft_link_without_a_login_is_refused(auth_cluster: EmbeddedCluster) -> None:
    host, port = auth_cluster.node(2).bootstrap.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    frames = FrameConnection(Role.CLIENT)
    async with stream:
        # Claims to be broker 1 of this cluster: it would be served if links were trusted.
        await stream.send_all(frames.send(raft_wire.encode_handshake(1, "pybroker")))
        with trio.fail_after(10):
            received = await stream.receive_some(1 << 16)
    assert received == b""  # closed, not answered
    assert "refusing a raft link" in auth_cluster.node(2).log_tail(400)


async def test_brokers_log_in_again_after_a_restart_and_a_new_broker_joins(
    auth_cluster: EmbeddedCluster,
) -> None:
    # By now the metadata holds the admin's credential (the controller leader wrote it), so
    # the restarted broker's links log in against the replicated one, not the bootstrap one.
    async with aio.AdminClient(auth_cluster.node(1).bootstrap, **ADMIN) as admin:
        with trio.fail_after(LOGIN_WAIT_S):
            while "admin" not in await admin.describe_users():
                await trio.sleep(0.2)
    await trio.to_thread.run_sync(auth_cluster.restart, 1)
    # A fourth broker joins through --bootstrap: it must log in to discover the cluster.
    added = await trio.to_thread.run_sync(auth_cluster.add_broker)
    await trio.to_thread.run_sync(auth_cluster.wait_ready)
    async with aio.AdminClient(auth_cluster.node(added).bootstrap, **ADMIN) as admin:
        status = await admin.cluster_status()
    assert {broker.node_id for broker in status.brokers} >= {1, 2, 3, added}
