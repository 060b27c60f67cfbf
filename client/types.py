"""Plain value types shared by the producer, consumer and admin client.

They are NamedTuples, not dataclasses: the consumer builds one `ConsumerRecord` per record read
(`client.consumer_records.ConsumerRecords`), and a tuple is the cheapest Python object that still
has named fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from wire import codec


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


class ShareRecord(NamedTuple):
    """A record a share group handed to this member: a `ConsumerRecord`'s fields, then
    `delivery_count`, how many times the group has handed it out (1 the first time; each
    release or lock expiry hands it out again, up to the group's share.delivery.count.limit)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Any  # tuple of (str, bytes) pairs, or None
    delivery_count: int


@dataclasses.dataclass(frozen=True, slots=True)
class OffsetAndTimestamp:
    """What `Consumer.offsets_for_times` finds in a partition, as Kafka's `OffsetAndTimestamp`:
    the first record whose timestamp is at or after the time asked, by its offset and its own
    timestamp (which may be later than the time asked)."""

    offset: int
    timestamp: int


@dataclasses.dataclass(frozen=True, slots=True)
class OffsetAndMetadata:
    """A group's committed position in one partition, as Kafka's `OffsetAndMetadata`: `offset` is
    the next record the group will read (last processed + 1), `metadata` free text the
    application stores with it (who committed, a checkpoint id). `Consumer.commit` and
    `AdminClient.alter_consumer_group_offsets` take it; `Consumer.committed` and
    `AdminClient.list_consumer_group_offsets` answer it. The broker bounds `metadata`
    (`offset_metadata_bytes_max`). A negative offset is refused here, as Kafka does."""

    offset: int
    metadata: str = ""

    @classmethod
    def of(cls, value: int | OffsetAndMetadata) -> OffsetAndMetadata:
        """`value` itself, or a plain offset with empty metadata (APIs take either)."""
        return value if isinstance(value, OffsetAndMetadata) else cls(value)

    def __post_init__(self) -> None:
        if not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {self.offset!r}")
        if not isinstance(self.metadata, str):
            raise TypeError(f"metadata must be a str, got {type(self.metadata).__name__}")


class ConsumerGroupMetadata(NamedTuple):
    """A group member's identity, as Kafka's `consumer.groupMetadata()`: passed to
    `Producer.send_offsets_to_transaction` so the group coordinator can refuse offsets from a
    member the group has since fenced (a zombie after a rebalance, KIP-447)."""

    group_id: str
    generation_id: int = -1
    member_id: str = ""
    group_instance_id: str | None = None


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

# `AdminClient.list_transactions()` answers ListedTransaction(transactional_id, producer_id, state)
# and `describe_transactions()` TransactionDescription(transactional_id, state, producer_id,
# producer_epoch, transaction_timeout_ms, transaction_start_ms, last_update_ms, partitions=
# (TopicPartitionRef(topic, partition), ...)). `state` is Kafka's: "Empty", "Ongoing",
# "PrepareCommit", "PrepareAbort", "CompleteCommit", "CompleteAbort", "Dead".
ListedTransaction = codec.ListedTransaction
TransactionDescription = codec.TransactionDescription

# `AdminClient.describe_share_group()` answers the wire dataclass: ShareGroupDescription(group_id,
# state, configs (effective, defaults included), members=(ShareMemberDescription(member_id,
# client_id, client_host, topics, acquired_records), ...), partitions=(SharePartitionDescription(
# topic, partition, start_offset, end_offset, in_flight, available, acquired, acknowledged,
# archived_total, dead_lettered_total, redelivered_total, lock_expired_total, backlog,
# oldest_available_ms), ...), dead_letter_writes). `oldest_available_ms` is the append time of
# the oldest record waiting (-1: none); `backlog` the records not handed out yet.
ShareGroupDescription = codec.DescribedShareGroup
ShareMemberDescription = codec.ShareMemberDescription
SharePartitionDescription = codec.SharePartitionDescription
