"""Goal: the controller shell applies each metadata record exactly once, in log order, skipping
control batches and records an LMDB snapshot already holds; and the cluster configs validate.

The service is built over a real LMDB store and metadata log in `tmp_path`; its driver never runs:
entries are handed to `on_apply` as the driver would hand committed ones.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cluster.controller_service import (
    SNAPSHOT_KEY,
    ControllerService,
    ControllerServiceConfig,
)
from broker.cluster.node import ClusterNodeConfig
from broker.cluster.replicas import ReplicaManagerConfig
from broker.config import ConfigError, LogConfig
from broker.controller.records import (
    BrokerRegistered,
    MetadataRecord,
    PartitionAssignment,
    TopicCreated,
    encode_record,
)
from broker.controller.state import ControllerConfig
from broker.kvstore import KeySpace, KvStore
from broker.log.manager import LogManager
from broker.raft.config import RaftConfig
from broker.raft.driver import RaftDriverConfig
from broker.raft.messages import Entry, assign_entry
from broker.raft.transport import RaftTransport, RaftTransportConfig
from wire import batch as batch_codec

TOPIC_ID = "0123456789abcdef0123456789abcdef"


def _service(store: KvStore, logs: LogManager) -> ControllerService:
    return ControllerService(
        node_id=1,
        voters=[1],
        store=store,
        logs=logs,
        transport=RaftTransport(node_id=1, cluster_id="unit", peers={}),
        log_defaults=LogConfig(),
        metadata_log_config=LogConfig(),
        limits=ControllerConfig(),
        raft_config=RaftConfig(),
        driver_config=RaftDriverConfig(),
        config=ControllerServiceConfig(snapshot_interval_records=1000),
        rng=random.Random(1),
    )


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[tuple[KvStore, LogManager]]:
    store = KvStore.open(tmp_path / "meta")
    logs = LogManager.open(tmp_path, LogConfig())
    yield store, logs
    logs.close(clean=False)
    store.close()


def _entries() -> list[Entry]:
    """A metadata log: the first leader's no-op at 0, then two entries of records (1-2, 3-4)."""
    noop = batch_codec.build_control_batch(batch_codec.ControlType.LEADER_NOOP, b"", timestamp_ms=1)
    commands: list[list[MetadataRecord]] = [
        [BrokerRegistered(1, "h1", 9001, 11), BrokerRegistered(2, "h2", 9002, 22)],
        [TopicCreated("t", TOPIC_ID, 1, 1, ()), PartitionAssignment("t", TOPIC_ID, 0, (2,))],
    ]
    entries = [assign_entry(noop, base_index=0, term=1)]
    for records in commands:
        batch = batch_codec.build_batch([(1, None, encode_record(r), None) for r in records])
        entries.append(assign_entry(batch, base_index=entries[-1].index + 1, term=1))
    return entries


async def test_records_apply_once_with_their_log_index(
    storage: tuple[KvStore, LogManager],
) -> None:
    service = _service(*storage)
    seen: list[int] = []
    service.add_listener(lambda machine: seen.append(machine.applied_index))
    entries = _entries()
    service._apply_entries(entries)
    machine = service.machine
    assert machine.applied_index == 4
    assert [b.node_id for b in machine.brokers()] == [1, 2]
    assert machine.broker(2) is not None and machine.broker(2).broker_epoch == 2  # its index
    topic = machine.topic("t")
    assert topic is not None and topic.partitions[0].replicas == (2,)
    # Once at registration (restored state), then once per entry that applied records.
    assert seen == [0, 2, 4]
    before = machine.to_bytes()
    # Raft may hand out committed entries again after a restart: nothing applies twice.
    service._apply_entries(entries)
    assert machine.to_bytes() == before
    assert machine.statistics().applied_record_count == 4


async def test_restart_restores_the_snapshot_and_replays_only_newer_records(
    storage: tuple[KvStore, LogManager],
) -> None:
    store, logs = storage
    first = _service(store, logs)
    entries = _entries()
    first._apply_entries(entries[:2])  # the no-op and the registrations: index 2
    first.save_snapshot()
    logs.close(clean=True)
    reopened_logs = LogManager.open(logs.data_dir, LogConfig())
    try:
        second = _service(store, reopened_logs)
        assert second.restored_index == 2
        assert [b.node_id for b in second.machine.brokers()] == [1, 2]
        # The driver hands out everything after its commit index: the registrations again.
        second._apply_entries(entries)
        assert second.machine.applied_index == 4
        assert second.machine.statistics().applied_record_count == 2  # only the topic's records
        assert second.machine.topic("t") is not None
        assert store.get(KeySpace.CONTROLLER, SNAPSHOT_KEY) is not None
    finally:
        reopened_logs.close(clean=False)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (ClusterNodeConfig(cluster_id=""), "cluster_id"),
        (
            ClusterNodeConfig(transport=RaftTransportConfig(heartbeat_interval_ms=500)),
            "transport.heartbeat_interval_ms",
        ),
        (
            ClusterNodeConfig(controller=ControllerServiceConfig(snapshot_interval_records=0)),
            "snapshot_interval_records",
        ),
        (ClusterNodeConfig(replicas=ReplicaManagerConfig(replicas_max=0)), "replicas_max"),
        (
            ClusterNodeConfig(replicas=ReplicaManagerConfig(preferred_leader_delay_ms=-1)),
            "preferred_leader_delay_ms",
        ),
    ],
)
def test_configs_name_the_bad_key(config: ClusterNodeConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config.validate()


def test_default_config_is_valid() -> None:
    ClusterNodeConfig().validate()
