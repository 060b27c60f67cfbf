"""ACLs and quotas in a cluster are controller metadata: a change sent to any broker is committed
by the controller leader and applied by every broker, and survives a broker restart (the metadata
log and its snapshots)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client.embedded_cluster import EmbeddedCluster
from tests.cli_process import cli
from tests.integration.cluster.common import FAST_GROUP_BROKER_ARGS, wait_for

LINE = "ALLOW User:alice host=* write topic:orders"


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3, extra_args=FAST_GROUP_BROKER_ARGS) as running:
        yield running
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            request.node.add_report_section("call", "cluster logs", running.log_tails(150))


def listed(cluster: EmbeddedCluster, node_id: int, *args: str) -> str:
    result = cli(cluster.node(node_id), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_acls_and_quotas_reach_every_broker_and_survive_a_restart(
    cluster: EmbeddedCluster,
) -> None:
    for node_id in cluster.node_ids:  # whichever leads the controller, the others forward
        result = cli(cluster.node(node_id), "acls", "add", "--allow", "User:alice",
                     "--operation", "write", "--topic", "orders", "--group", "g")  # fmt: skip
        assert result.returncode == 1 and "give one of" in result.stderr
    added = cli(cluster.node(2), "acls", "add", "--allow", "User:alice", "--operation", "write",
                "--topic", "orders")  # fmt: skip
    assert added.returncode == 0, added.stderr
    quota = cli(cluster.node(3), "quotas", "set", "--user", "alice", "--request-rate", "50")
    assert quota.returncode == 0, quota.stderr
    for node_id in cluster.node_ids:
        wait_for(lambda n=node_id: LINE in listed(cluster, n, "acls", "list"), "the ACL", 20)
        wait_for(
            lambda n=node_id: "user=alice: request_rate=50" in listed(cluster, n, "quotas", "list"),
            "the quota",
            20,
        )
    cluster.restart(3)
    cluster.wait_ready()
    assert LINE in listed(cluster, 3, "acls", "list")
    removed = cli(cluster.node(3), "acls", "remove", "--principal", "User:alice")
    assert removed.returncode == 0 and LINE in removed.stdout, removed.stderr
    for node_id in cluster.node_ids:
        wait_for(lambda n=node_id: not listed(cluster, n, "acls", "list"), "the removal", 20)
