"""Handlers of partition reassignment (docs/reassignment.md): alter, list, rebalance, and the
partition leader's completion report.

Rules:
1. Alter, rebalance and completion run on the controller leader; any other broker forwards the
   request unchanged (as CreateTopics is, KIP-590) and relays the answer. With no leader known
   the answer is NOT_CONTROLLER (retriable; the client retries).
2. List answers from this broker's metadata (any broker), with each partition's replica progress
   filled in where this broker leads the partition; the client asks every leader.
3. A single-node broker has no replicas to move: every request is INVALID_REQUEST.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from broker.cluster.reassignment import moving_partitions, replica_progress
from broker.controller.reassignment import removing_replicas
from broker.handlers.context import BrokerContext
from broker.handlers.controller_forward import on_controller, require_cluster
from broker.handlers.reply import Deferred
from wire import codec
from wire.error_codes import BrokerError, ErrorCode


def handle_alter_partition_reassignments(
    ctx: BrokerContext, request: codec.AlterPartitionReassignmentsRequest
) -> Deferred:
    async def run_here(controller: Any) -> codec.AlterPartitionReassignmentsResponse:
        moves = [(p.topic, p.partition, p.replicas) for p in request.partitions]
        outcomes = await controller.alter_partition_reassignments(
            moves, throttle_bytes_per_s=request.throttle_bytes_per_s
        )
        return codec.AlterPartitionReassignmentsResponse(
            partitions=tuple(
                codec.ReassignPartitionResult(
                    topic=p.topic,
                    partition=p.partition,
                    error=outcome.code if outcome is not None else ErrorCode.NONE,
                    error_message=outcome.message if outcome is not None else "",
                )
                for p, outcome in zip(request.partitions, outcomes, strict=True)
            )
        )

    return on_controller(ctx, request, codec.AlterPartitionReassignmentsResponse, run_here)


def handle_reassignment_completed(
    ctx: BrokerContext, request: codec.ReassignmentCompletedRequest
) -> Deferred:
    async def run_here(controller: Any) -> codec.ReassignmentCompletedResponse:
        await controller.complete_reassignment(request.topic, request.partition, request.replicas)
        return codec.ReassignmentCompletedResponse()

    return on_controller(ctx, request, codec.ReassignmentCompletedResponse, run_here)


def handle_rebalance(ctx: BrokerContext, request: codec.RebalanceRequest) -> Deferred:
    async def run_here(controller: Any) -> codec.RebalanceResponse:
        planned = await controller.rebalance(
            dry_run=request.dry_run,
            throttle_bytes_per_s=request.throttle_bytes_per_s,
            move_count_max=request.move_count_max,
        )
        return codec.RebalanceResponse(
            moves=tuple(
                codec.RebalanceMove(
                    topic=move.topic,
                    partition=move.partition,
                    replicas=move.replicas,
                    target_replicas=move.target_replicas,
                    error=outcome.code if outcome is not None else ErrorCode.NONE,
                    error_message=outcome.message if outcome is not None else "",
                )
                for move, outcome in planned
            )
        )

    return on_controller(ctx, request, codec.RebalanceResponse, run_here)


def handle_list_partition_reassignments(
    ctx: BrokerContext, request: codec.ListPartitionReassignmentsRequest
) -> codec.ListPartitionReassignmentsResponse:
    """Rule 2."""
    node = require_cluster(ctx)
    wanted = set(request.topics) if request.topics is not None else None
    statuses = []
    for topic, info in moving_partitions(node.controller.machine):
        if wanted is not None and topic not in wanted:
            continue
        status = codec.PartitionReassignmentStatus(
            topic=topic,
            partition=info.partition,
            replicas=info.replicas,
            target_replicas=info.target_replicas,
            adding_replicas=info.adding_replicas,
            removing_replicas=removing_replicas(info),
            leader_id=info.leader if info.leader is not None else -1,
            throttle_bytes_per_s=info.reassignment_throttle_bytes_per_s,
        )
        statuses.append(_with_progress(node, topic, info, status))
    return codec.ListPartitionReassignmentsResponse(reassignments=tuple(statuses))


def _with_progress(
    node: Any, topic: str, info: Any, status: codec.PartitionReassignmentStatus
) -> codec.PartitionReassignmentStatus:
    try:
        replica = node.replicas.replica(topic, info.partition)
    except BrokerError:
        return status
    views = replica_progress(replica, info)
    if not views:
        return status
    return dataclasses.replace(
        status,
        leader_id=node.node_id,
        log_end_offset=replica.log.log_end_offset,
        log_size_bytes=replica.log.size_bytes,
        progress=tuple(
            codec.ReplicaProgress(
                node_id=view.node_id,
                match_offset=view.match_offset,
                lag_offsets=view.lag_offsets,
                caught_up_bytes=view.caught_up_bytes,
                role=view.role,
            )
            for view in views
        ),
    )
