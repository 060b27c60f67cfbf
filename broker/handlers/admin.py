"""Metadata and topic administration: metadata, create_topics, delete_topics, describe_topics.

On a single node all of them run to completion in the connection's reader, in the order requests
arrived, so a client that pipelines "create topic" then "produce" finds the topic. In a cluster
they answer from the controller's metadata (handlers/cluster.py), and topic changes wait for the
controller. Each topic gets its own error; one bad topic never fails the others.
"""

from __future__ import annotations

import dataclasses
import logging

from broker.controller.records import BrokerState
from broker.handlers import cluster
from broker.handlers.context import BrokerContext
from broker.handlers.reply import Deferred
from broker.internal_topics import is_internal_topic
from broker.topics import TopicRecord, effective_configs, validate_topic_name
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)


def handle_metadata(
    ctx: BrokerContext, request: codec.MetadataRequest, listener: str
) -> codec.MetadataResponse:
    """Brokers and leaders as the client's `listener` reaches them (Kafka's advertised
    listeners): a broker without that listener is left out, and a partition it leads is
    LEADER_NOT_AVAILABLE to this client."""
    # "Every topic" leaves internal topics out (as Kafka's clients do); asked by name, they show.
    names = _public_names(ctx) if request.topics is None else list(request.topics)
    if ctx.cluster is None:
        broker_ids, controller_id = [ctx.node_id], ctx.node_id
        partitions_of = _partition_metadata
    else:
        broker_ids = ctx.cluster.cache.serving_broker_ids()
        controller_id = ctx.cluster.controller.leader_id or -1
        partitions_of = cluster.partitions_metadata
    brokers = []
    for node_id in broker_ids:
        endpoint = ctx.endpoint_of(node_id, listener)
        if endpoint is not None:
            brokers.append(codec.BrokerInfo(node_id=node_id, host=endpoint[0], port=endpoint[1]))
    topics = []
    for name in names:
        try:
            record = _topic_for_metadata(ctx, name, auto_create=request.allow_auto_create)
        except BrokerError as exc:
            topics.append(codec.TopicMetadata(name=name, error=exc.code, error_message=exc.message))
            continue
        partitions = partitions_of(ctx, record)
        if ctx.cluster is not None:  # a single node leads its partitions on every listener
            partitions = tuple(_reachable_leader(ctx, listener, item) for item in partitions)
        topics.append(codec.TopicMetadata(name=name, partitions=partitions))
    return codec.MetadataResponse(
        brokers=tuple(brokers), controller_id=controller_id, topics=tuple(topics)
    )


def _reachable_leader(
    ctx: BrokerContext, listener: str, metadata: codec.PartitionMetadata
) -> codec.PartitionMetadata:
    """`metadata`, or LEADER_NOT_AVAILABLE if its leader has no `listener` to send a client to."""
    if metadata.leader_id < 0 or ctx.endpoint_of(metadata.leader_id, listener) is not None:
        return metadata
    return dataclasses.replace(
        metadata,
        leader_id=-1,
        error=ErrorCode.LEADER_NOT_AVAILABLE,
        error_message=f"the leader, broker {metadata.leader_id}, has no listener {listener}",
    )


def _topic_for_metadata(ctx: BrokerContext, name: str, *, auto_create: bool) -> TopicRecord:
    record = ctx.topics.get(name)
    if record is not None:
        return record
    validate_topic_name(name)
    if auto_create and ctx.config.auto_create_topics:
        if ctx.cluster is None:
            return ctx.topics.create(name)
        cluster.create_in_background(ctx, name)
        raise BrokerError(
            ErrorCode.LEADER_NOT_AVAILABLE, f"topic {name!r} is being created; retry shortly"
        )
    raise BrokerError(ErrorCode.UNKNOWN_TOPIC, f"topic {name!r} does not exist")


def _partition_metadata(
    ctx: BrokerContext, record: TopicRecord
) -> tuple[codec.PartitionMetadata, ...]:
    partitions = []
    for index in range(record.partition_count):
        state = ctx.partitions.get((record.name, index))
        if state is None:
            partitions.append(
                codec.PartitionMetadata(
                    partition=index,
                    leader_id=-1,
                    error=ErrorCode.LEADER_NOT_AVAILABLE,
                    error_message=f"partition {record.name}-{index} is not open",
                )
            )
            continue
        partitions.append(
            codec.PartitionMetadata(
                partition=index,
                leader_id=state.leader_id,
                leader_epoch=state.leader_epoch,
                replicas=(state.leader_id,),
                isr=(state.leader_id,),
            )
        )
    return tuple(partitions)


def handle_create_topics(
    ctx: BrokerContext, request: codec.CreateTopicsRequest
) -> codec.CreateTopicsResponse | Deferred:
    if ctx.cluster is not None:
        return cluster.cluster_create_topics(ctx, request)
    results = []
    for topic in request.topics:
        try:
            ctx.topics.create(
                topic.name,
                partitions=topic.partitions,
                replication_factor=topic.replication_factor,
                configs=topic.configs,
                validate_only=request.validate_only,
            )
        except BrokerError as exc:
            results.append(
                codec.TopicResult(name=topic.name, error=exc.code, error_message=exc.message)
            )
            continue
        results.append(codec.TopicResult(name=topic.name))
    return codec.CreateTopicsResponse(topics=tuple(results))


def handle_delete_topics(
    ctx: BrokerContext, request: codec.DeleteTopicsRequest
) -> codec.DeleteTopicsResponse | Deferred:
    if ctx.cluster is not None:
        return cluster.cluster_delete_topics(ctx, request)
    results = []
    for name in request.topics:
        try:
            if is_internal_topic(name):
                raise BrokerError(
                    ErrorCode.INVALID_TOPIC, f"topic {name!r} is internal and cannot be deleted"
                )
            ctx.topics.delete(name)
        except BrokerError as exc:
            results.append(codec.TopicResult(name=name, error=exc.code, error_message=exc.message))
            continue
        results.append(codec.TopicResult(name=name))
    return codec.DeleteTopicsResponse(topics=tuple(results))


def handle_describe_topics(
    ctx: BrokerContext, request: codec.DescribeTopicsRequest
) -> codec.DescribeTopicsResponse:
    names = _public_names(ctx) if request.topics is None else list(request.topics)
    describe = _describe_partitions if ctx.cluster is None else cluster.describe_partitions
    descriptions = []
    for name in names:
        record = ctx.topics.get(name)
        if record is None:
            descriptions.append(
                codec.TopicDescription(
                    name=name,
                    error=ErrorCode.UNKNOWN_TOPIC,
                    error_message=f"topic {name!r} does not exist",
                )
            )
            continue
        descriptions.append(
            codec.TopicDescription(
                name=name,
                partition_count=record.partition_count,
                replication_factor=record.replication_factor,
                configs=effective_configs(record.log_config),
                partitions=describe(ctx, record),
            )
        )
    return codec.DescribeTopicsResponse(topics=tuple(descriptions))


def _describe_partitions(
    ctx: BrokerContext, record: TopicRecord
) -> tuple[codec.PartitionDescription, ...]:
    return tuple(
        _describe_partition(ctx, record.name, index) for index in range(record.partition_count)
    )


def _describe_partition(ctx: BrokerContext, topic: str, index: int) -> codec.PartitionDescription:
    state = ctx.partitions.get((topic, index))
    if state is None:
        return codec.PartitionDescription(
            partition=index,
            leader_id=-1,
            error=ErrorCode.LEADER_NOT_AVAILABLE,
            error_message=f"partition {topic}-{index} is not open",
        )
    log = state.log
    return codec.PartitionDescription(
        partition=index,
        leader_id=state.leader_id,
        replicas=(state.leader_id,),
        isr=(state.leader_id,),
        log_start_offset=log.log_start_offset,
        log_end_offset=log.log_end_offset,
        high_watermark=state.high_watermark,
        size_bytes=log.size_bytes,
        segment_count=log.segment_count,
    )


def handle_cluster_status(
    ctx: BrokerContext, request: codec.ClusterStatusRequest, listener: str
) -> codec.ClusterStatusResponse:
    """The cluster's brokers and partition health; a single node is a cluster of one. Broker
    addresses are those of the client's `listener`."""
    if ctx.cluster is not None:
        return cluster.cluster_status(ctx, listener)
    host, port = ctx.advertised[listener]
    partition_count = len(ctx.partitions)
    return codec.ClusterStatusResponse(
        controller_id=ctx.node_id,
        metadata_index=0,
        brokers=(
            codec.ClusterBroker(
                node_id=ctx.node_id,
                host=host,
                port=port,
                state=BrokerState.ACTIVE.value,
                broker_epoch=0,
                replica_count=partition_count,
                leader_count=partition_count,
                preferred_leader_count=partition_count,
            ),
        ),
        topic_count=len(ctx.topics.names()),
        partition_count=partition_count,
    )


def _public_names(ctx: BrokerContext) -> list[str]:
    return [name for name in ctx.topics.names() if not is_internal_topic(name)]
