"""Cluster metadata: the controller's records, state machine, replica placement and metadata cache.

Everything in this package is pure (no I/O, clock or randomness; a test scans the imports). The
(future) controller Raft group driver proposes the records that `ControllerStateMachine.prepare_*`
returns and applies committed ones with `apply(record, index)`; every broker reads the result
through a `MetadataCache`. docs/controller.md describes the records, their encoding, placement
and how the pieces fit.
"""

from broker.controller.cache import BrokerStatus, ClusterStatistics, MetadataCache, PartitionView
from broker.controller.placement import (
    LeaderElection,
    assign_replicas,
    broker_loads,
    preferred_leader_elections,
)
from broker.controller.records import (
    BrokerRegistered,
    BrokerState,
    BrokerStateChanged,
    ConfigSet,
    MetadataRecord,
    MetadataRecordError,
    PartitionAssignment,
    PartitionLeaderChanged,
    PartitionsCreated,
    TopicCreated,
    TopicDeleted,
    UnsupportedRecordVersionError,
    decode_record,
    encode_record,
)
from broker.controller.state import (
    BrokerInfo,
    ControllerConfig,
    ControllerSnapshotError,
    ControllerStateMachine,
    ControllerStatistics,
    PartitionInfo,
    TopicInfo,
)

__all__ = [
    "BrokerInfo",
    "BrokerRegistered",
    "BrokerState",
    "BrokerStateChanged",
    "BrokerStatus",
    "ClusterStatistics",
    "ConfigSet",
    "ControllerConfig",
    "ControllerSnapshotError",
    "ControllerStateMachine",
    "ControllerStatistics",
    "LeaderElection",
    "MetadataCache",
    "MetadataRecord",
    "MetadataRecordError",
    "PartitionAssignment",
    "PartitionInfo",
    "PartitionLeaderChanged",
    "PartitionView",
    "PartitionsCreated",
    "TopicCreated",
    "TopicDeleted",
    "TopicInfo",
    "UnsupportedRecordVersionError",
    "assign_replicas",
    "broker_loads",
    "decode_record",
    "encode_record",
    "preferred_leader_elections",
]
