"""What the cluster integration tests share: fast timers for real brokers, and a bounded wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from client.embedded_cluster import EmbeddedCluster
from tests.unit.server.wire_client import WireClient
from wire import codec

# Raft ticks, broker heartbeats and group timers short enough that failovers take a second or
# two, so a test can kill brokers several times within its budget.
FAST_GROUP_BROKER_ARGS = (
    "--set", "raft_tick_ms=50",
    "--set", "broker_heartbeat_interval_ms=200",
    "--set", "broker_session_timeout_ms=2000",
    "--set", "group_min_session_timeout_ms=500",
    "--set", "group_initial_rebalance_delay_ms=0",
)  # fmt: skip


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """Poll `condition` until it is truthy (returned), failing after `timeout_s` with `what`."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def find_coordinator(cluster: EmbeddedCluster, key: str, key_type: int) -> int:
    """The broker FindCoordinator names for `key` (a transactional id, a share group; -1: none
    known yet), asked of the first broker."""
    node = cluster.node(cluster.node_ids[0])

    async def find() -> int:
        client = await WireClient.connect(node.host, node.port)
        try:
            response = await client.request(
                codec.FindCoordinatorRequest(key=key, key_type=key_type)
            )
        finally:
            await client.aclose()
        return int(response.node_id) if response.error is codec.ErrorCode.NONE else -1

    return trio.run(find)
