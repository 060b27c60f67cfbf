"""Fixtures of the cluster integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster.common import FAST_GROUP_BROKER_ARGS


@pytest.fixture
def group_cluster(request: pytest.FixtureRequest) -> Iterator[EmbeddedCluster]:
    """Three real brokers with fast Raft, liveness and group timers, stopped after the test (a
    failed test's report gets the brokers' log tails)."""
    with EmbeddedCluster(3, extra_args=FAST_GROUP_BROKER_ARGS) as running:
        yield running
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            request.node.add_report_section("call", "cluster logs", running.log_tails(150))
