"""Fixtures of the cluster integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster.common import FAST_GROUP_BROKER_ARGS


@pytest.fixture
def group_cluster() -> Iterator[EmbeddedCluster]:
    """Three real brokers with fast Raft, liveness and group timers, stopped after the test."""
    with EmbeddedCluster(3, extra_args=FAST_GROUP_BROKER_ARGS) as running:
        yield running
