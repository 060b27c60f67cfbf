"""Goal: a cluster member whose `meta.lmdb` is lost rebuilds its metadata from the controller and
keeps its replica data: nothing on its disk is deleted while its metadata catches up, it rejoins,
and its replica ends byte for byte equal to the others' (issue 13, docs/storage.md).

Three real `broker serve` processes with fast Raft timers; the replica logs are compared on disk
after every broker has stopped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import trio

from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster.test_failover import (
    FAST_RAFT,
    TOPIC,
    _data_values,
    _produce_until_acked,
    _replica_logs,
    _setup,
)

BEFORE = 300
AFTER = 100
BATCH = 50


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3, extra_args=FAST_RAFT) as running:
        yield running


@pytest.mark.slow
def test_lost_metadata_store_rebuilds_from_the_controller(cluster: EmbeddedCluster) -> None:
    async def produce(prefix: bytes, count: int) -> None:
        for start in range(0, count, BATCH):
            values = [b"%s-%d" % (prefix, i) for i in range(start, start + BATCH)]
            await _produce_until_acked(cluster, values, ask=1)

    async def before() -> None:
        client, _ = await _setup(cluster)
        await client.aclose()
        await produce(b"before", BEFORE)

    trio.run(before)
    victim = 3
    assert cluster.stop(victim) == 0
    data_dir = cluster.node(victim).data_dir
    shutil.rmtree(data_dir / "meta.lmdb")
    held = _data_values(data_dir)
    assert held[:BEFORE] == [b"before-%d" % i for i in range(BEFORE)]
    # Same inodes afterwards: the replica was kept, not deleted and replicated again.
    segments = sorted((data_dir / "logs" / f"{TOPIC}-0").glob("*.log"))
    inodes = {path.name: path.stat().st_ino for path in segments}
    assert inodes

    cluster.start(victim)
    cluster.wait_ready()  # registered again, caught up, unfenced
    assert {name: (data_dir / "logs" / f"{TOPIC}-0" / name).stat().st_ino for name in inodes} == (
        inodes
    )
    trio.run(produce, b"after", AFTER)
    logs = _replica_logs(cluster)
    assert logs[0] == logs[1] == logs[2]
    values = _data_values(data_dir)
    assert values == [b"before-%d" % i for i in range(BEFORE)] + [
        b"after-%d" % i for i in range(AFTER)
    ]
