"""Plain value types shared by the producer, consumer and admin client.

They are NamedTuples, not dataclasses: the consumer builds one `ConsumerRecord` per record in a
list comprehension, and a tuple is the cheapest Python object that still has named fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from broker import codec


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class RecordMetadata(NamedTuple):
    """Where an acknowledged record landed. `offset` is -1 with acks=0 (the broker never says)."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class ConsumerRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Any  # tuple of (str, bytes) pairs, or None


# Topic descriptions are the wire dataclasses themselves (one definition, no twin):
# TopicDescription(name, partition_count, replication_factor, configs, partitions, ...) with
# PartitionDescription(partition, leader_id, replicas, log_start_offset, log_end_offset,
# high_watermark, size_bytes, segment_count).
TopicDescription = codec.TopicDescription
PartitionDescription = codec.PartitionDescription

# `AdminClient.cluster_status()` answers the wire dataclass too: ClusterStatus(controller_id,
# metadata_index, brokers=(ClusterBroker(node_id, host, port, state, broker_epoch, replica_count,
# leader_count, preferred_leader_count), ...), topic_count, partition_count, offline_partitions,
# under_replicated_partitions=(TopicPartitionRef(topic, partition), ...),
# preferred_leader_imbalance_count). `state` is "active", "fenced" or "shutting_down".
ClusterStatus = codec.ClusterStatusResponse
ClusterBroker = codec.ClusterBroker
