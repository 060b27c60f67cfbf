"""`EmbeddedCluster`: process management (on single-node brokers) and cluster formation (three
`broker serve --node-id --peers` brokers: formation, a killed node rejoining, an isolated node
catching up)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from client import AdminClient
from client import embedded_cluster as module
from client.embedded_cluster import EmbeddedCluster, EmbeddedClusterError, open_embedded_cluster

WAIT_S = 30.0

ClusterFactory = Callable[..., EmbeddedCluster]


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """Start `EmbeddedCluster(n, **options)`; every cluster is closed after the test, and on a
    failure its nodes' logs go into the report."""
    clusters: list[EmbeddedCluster] = []

    def make(n: int = 3, **options: Any) -> EmbeddedCluster:
        cluster = EmbeddedCluster(n, **options)
        clusters.append(cluster)
        return cluster.start()

    yield make
    failed = getattr(request.node, "rep_call", None)
    for cluster in clusters:
        if failed is not None and failed.failed:
            request.node.add_report_section("call", "cluster logs", cluster.log_tails())
        cluster.close()


def topics_of(address: str) -> list[str]:
    with AdminClient(address) as admin:
        return admin.list_topics()


# --- process management (single-node brokers: runs today) -----------------------------------------


def test_nodes_run_on_their_own_ports_and_close_cleans_up(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(2, peers=False)
    first, second = cluster.node(1), cluster.node(2)
    assert cluster.bootstrap == f"{first.bootstrap},{second.bootstrap}"
    assert first.port != second.port and first.running and second.running
    with AdminClient(first.bootstrap) as admin:
        admin.create_topic("only-on-1", 1)
    assert topics_of(second.bootstrap) == []  # independent brokers without peers
    processes = [first.process, second.process]
    data_dirs = [first.data_dir, second.data_dir]
    cluster.close()
    assert [process.poll() for process in processes if process is not None] == [0, 0]
    assert not any(directory.exists() for directory in data_dirs)
    with pytest.raises(EmbeddedClusterError, match="not started"):
        cluster.node(1)


def test_kill_stop_and_start_keep_the_port_and_the_data(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(1, peers=False)
    node = cluster.node(1)
    address = node.bootstrap
    with AdminClient(address) as admin:
        admin.create_topic("kept", 1)

    cluster.kill(1)
    assert not node.running
    with pytest.raises(EmbeddedClusterError, match="already started"):
        cluster.start(1).start(1)
    cluster.wait_ready()
    assert node.bootstrap == address and topics_of(address) == ["kept"]

    assert cluster.stop(1) == 0  # SIGTERM: a clean shutdown
    cluster.restart(1)  # restart of a stopped node is a start
    cluster.restart(1)
    cluster.wait_ready()
    assert node.bootstrap == address and topics_of(address) == ["kept"]


def test_a_port_taken_before_the_start_is_retried(
    make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind((module.HOST, 0))
        taken.listen()
        calls: list[int] = []
        real_free_ports = module.free_ports

        def clashing_then_free(count: int, host: str = module.HOST) -> list[int]:
            calls.append(count)
            ports = real_free_ports(count, host)
            return [taken.getsockname()[1], *ports[1:]] if len(calls) == 1 else ports

        monkeypatch.setattr(module, "free_ports", clashing_then_free)
        cluster = make_cluster(2, peers=False)
    assert len(calls) == 2
    assert all(cluster.node(node_id).running for node_id in cluster.node_ids)


def test_a_failed_start_names_the_node_shows_its_log_and_cleans_up() -> None:
    cluster = EmbeddedCluster(2, peers=False, extra_args=["--set", "no_such_option=1"])
    with pytest.raises(EmbeddedClusterError) as failure:
        cluster.start()
    assert "node 1" in str(failure.value) and "no_such_option" in str(failure.value)
    with pytest.raises(EmbeddedClusterError, match="not started"):
        cluster.node(1)  # closed by the failed start: nothing left running or on disk


def test_wait_ready_fails_at_once_when_a_node_dies(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(2, peers=False)
    process = cluster.node(2).process
    assert process is not None
    process.kill()  # behind the cluster's back: a crash
    process.wait()
    with pytest.raises(EmbeddedClusterError, match="node 2 exited"):
        cluster.wait_ready(timeout_s=WAIT_S)


def test_partition_blocks_exactly_the_links_between_groups(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, peers=False, proxies=True)
    # A proxy leads to its destination's broker (clients can use it too).
    assert topics_of(cluster.link(1, 2).address) == []
    assert cluster.link(1, 2).target == (module.HOST, cluster.node(2).port)

    def blocked() -> set[tuple[int, int]]:
        return {
            (source, destination)
            for source in cluster.node_ids
            for destination in cluster.node_ids
            if source != destination and cluster.link(source, destination).blocked
        }

    cluster.isolate(1)
    assert blocked() == {(1, 2), (1, 3), (2, 1), (3, 1)}
    cluster.partition([{1, 2}])  # node 3 is the rest
    assert blocked() == {(1, 3), (2, 3), (3, 1), (3, 2)}
    cluster.heal()
    assert blocked() == set()
    assert topics_of(cluster.link(1, 2).address) == []
    with pytest.raises(ValueError, match="two groups"):
        cluster.partition([{1}, {1, 2}])


def test_links_need_proxies(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(1, peers=False)
    with pytest.raises(EmbeddedClusterError, match="proxies=True"):
        cluster.isolate(1)


async def test_trio_code_opens_a_cluster_in_a_worker_thread() -> None:
    async with open_embedded_cluster(1, peers=False) as cluster:
        assert await module.cluster_members(cluster.node(1).bootstrap) == {cluster.node(1).node_id}
    with pytest.raises(EmbeddedClusterError, match="not started"):
        cluster.node(1)


# --- cluster mode ---------------------------------------------------------------------------------


def test_three_nodes_form_a_cluster(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3)  # start() returns once every broker lists all three
    for node_id in cluster.node_ids:
        node = cluster.node(node_id)
        assert node.node_id == node_id
        with AdminClient(node.bootstrap) as admin:
            admin.list_topics()  # served, not just listening
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic("replicated", 3, replication_factor=3)
    for node_id in cluster.node_ids:
        assert "replicated" in topics_of(cluster.node(node_id).bootstrap)


def test_a_killed_node_rejoins_on_restart(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3)
    cluster.kill(2)
    with AdminClient(cluster.node(1).bootstrap) as admin:
        admin.create_topic("while-2-was-down", 1, replication_factor=3)
    cluster.start(2)
    cluster.wait_ready()
    wait_for_topic(cluster.node(2).bootstrap, "while-2-was-down")


def test_an_isolated_node_catches_up_after_heal(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, proxies=True)
    cluster.isolate(1)
    # The majority {2, 3} still elects a controller and commits metadata.
    with AdminClient(cluster.node(2).bootstrap) as admin:
        admin.create_topic("during-partition", 1, replication_factor=3)
    cluster.heal()
    wait_for_topic(cluster.node(1).bootstrap, "during-partition")
    cluster.wait_ready()


def wait_for_topic(address: str, topic: str) -> None:
    """Poll `address`'s topic list until `topic` is in it (metadata propagates asynchronously)."""
    deadline = time.monotonic() + WAIT_S
    while topic not in topics_of(address):
        assert time.monotonic() < deadline, f"{topic} never reached {address}"
        time.sleep(module.READY_POLL_S)
