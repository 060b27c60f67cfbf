"""Handlers of a cluster member: metadata, topic administration and describe from the controller's
metadata, cluster status, and the broker-to-controller APIs.

Rules:
1. Metadata answers from this broker's metadata cache (every broker applies the metadata log), so
   any broker answers. A partition's leader is the one last reported to the controller, unless
   this broker hosts the partition and its own Raft group knows a leader of a newer term.
2. CreateTopics/DeleteTopics run on the controller leader. Any other broker forwards the request
   unchanged to the leader (Kafka's KIP-590) and relays the answer; with no leader known, each topic
   gets NOT_CONTROLLER (retriable). Before answering, the broker waits (bounded) until its own cache
   shows the change, so a client's next Metadata to the same broker sees it.
3. The broker-to-controller APIs (registration, heartbeat, leader report) run on the local
   controller; a broker that is not the leader answers NOT_CONTROLLER with its leader hint.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from broker.cluster.controller_service import NotControllerError
from broker.controller.records import BrokerState
from broker.handlers.context import BrokerContext
from broker.handlers.reply import Deferred
from broker.internal_topics import INTERNAL_TOPICS, is_internal_topic
from broker.topics import TopicRecord
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

logger = logging.getLogger(__name__)

# How long a topic change may take to reach this broker's own cache before it answers anyway.
CACHE_CATCH_UP_S = 10.0
# Wait before forwarding again when nothing changes (a refusal, or no controller known).
FORWARD_RETRY_S = 0.2


# --- metadata -------------------------------------------------------------------------------------


def partitions_metadata(
    ctx: BrokerContext, record: TopicRecord
) -> tuple[codec.PartitionMetadata, ...]:
    return _partitions(ctx, record.name)


def partition_metadata(ctx: BrokerContext, name: str, partition: int) -> codec.PartitionMetadata:
    """One partition's metadata (rule 1); leader -1 if it has none or is unknown."""
    for metadata in _partitions(ctx, name):
        if metadata.partition == partition:
            return metadata
    return codec.PartitionMetadata(partition=partition, leader_id=-1)


def _partitions(ctx: BrokerContext, name: str) -> tuple[codec.PartitionMetadata, ...]:
    result = []
    serving = set(ctx.cluster.cache.serving_broker_ids())
    for view in ctx.cluster.cache.partitions_for(name):
        leader, epoch = view.leader, view.leader_epoch
        local = ctx.partitions.get((name, view.partition))
        if local is not None and local.leader_epoch > epoch:
            # Rule 1: this replica has seen a newer term than the last report. Its leader, if
            # it knows one, is fresher; if not, the reported one is certainly deposed.
            known = local.leader_id if local.leader_id in serving else None
            leader, epoch = known, local.leader_epoch
        if leader is None:
            result.append(
                codec.PartitionMetadata(
                    partition=view.partition,
                    leader_id=-1,
                    replicas=view.replicas,
                    isr=view.in_sync_replicas,
                    error=ErrorCode.LEADER_NOT_AVAILABLE,
                    error_message=f"{name}-{view.partition} has no serving leader now; retry",
                )
            )
            continue
        result.append(
            codec.PartitionMetadata(
                partition=view.partition,
                leader_id=leader,
                leader_epoch=epoch,
                replicas=view.replicas,
                isr=view.in_sync_replicas,
            )
        )
    return tuple(result)


# --- topic administration (rule 2) ----------------------------------------------------------------


def cluster_create_topics(ctx: BrokerContext, request: codec.CreateTopicsRequest) -> Deferred:
    async def run_here() -> codec.CreateTopicsResponse:
        results = []
        for topic in request.topics:
            try:
                await _create_one(ctx, topic, validate_only=request.validate_only)
            except BrokerError as exc:
                results.append(
                    codec.TopicResult(name=topic.name, error=exc.code, error_message=exc.message)
                )
                continue
            results.append(codec.TopicResult(name=topic.name))
        return codec.CreateTopicsResponse(topics=tuple(results))

    return Deferred(lambda: _on_controller(ctx, request, codec.CreateTopicsResponse, run_here))


def create_in_background(ctx: BrokerContext, name: str) -> None:
    """Auto-creation (Metadata with `allow_auto_create` and `auto_create_topics` on): create
    `name` with the broker defaults through the controller, in the background; the client's
    retries find it once created. One creation per name at a time."""
    if name in ctx.topics_being_created or ctx.spawn is None:
        return
    ctx.topics_being_created.add(name)
    deferred = cluster_create_topics(
        ctx, codec.CreateTopicsRequest(topics=(codec.NewTopic(name=name),))
    )

    async def run() -> None:
        try:
            response = await deferred.run()
            result = response.topics[0]
            if result.error not in (ErrorCode.NONE, ErrorCode.TOPIC_ALREADY_EXISTS):
                logger.warning("auto-creating topic %s: %s", name, result.error_message)
        finally:
            ctx.topics_being_created.discard(name)

    ctx.spawn(run)


async def _create_one(ctx: BrokerContext, topic: codec.NewTopic, *, validate_only: bool) -> None:
    partitions = topic.partitions if topic.partitions != -1 else ctx.config.default_partitions
    factor = (
        topic.replication_factor
        if topic.replication_factor != -1
        else ctx.config.default_replication_factor
    )
    controller = ctx.cluster.controller
    if validate_only:
        controller.machine.prepare_create_topic(
            topic.name, partitions, factor, topic.configs, topic_id="0" * 32
        )
        return
    await controller.create_topic(topic.name, partitions, factor, topic.configs)


def cluster_delete_topics(ctx: BrokerContext, request: codec.DeleteTopicsRequest) -> Deferred:
    async def run_here() -> codec.DeleteTopicsResponse:
        results = []
        for name in request.topics:
            try:
                if is_internal_topic(name):
                    raise BrokerError(
                        ErrorCode.INVALID_TOPIC, f"topic {name!r} is internal and cannot be deleted"
                    )
                await ctx.cluster.controller.delete_topic(name)
            except BrokerError as exc:
                results.append(
                    codec.TopicResult(name=name, error=exc.code, error_message=exc.message)
                )
                continue
            results.append(codec.TopicResult(name=name))
        return codec.DeleteTopicsResponse(topics=tuple(results))

    return Deferred(lambda: _on_controller(ctx, request, codec.DeleteTopicsResponse, run_here))


async def _on_controller(
    ctx: BrokerContext,
    request: Any,
    response_type: type[Any],
    run_here: Callable[[], Awaitable[Any]],
) -> Any:
    """Run a topic change on the controller leader: here if this broker leads, else forwarded
    (rule 2). A forward is abandoned and sent again when the leader changes meanwhile (the old
    one may be cut off), until `command_timeout_ms`; every topic gets the last error then."""
    node = ctx.cluster
    controller = node.controller
    names = [getattr(topic, "name", topic) for topic in request.topics]
    error = BrokerError(ErrorCode.NOT_CONTROLLER, "no controller leader is known yet; retry")
    leads_here = False
    with trio.move_on_after(controller.config.command_timeout_ms / 1000):
        while True:
            version = controller.driver.change_version
            leader = controller.leader_id
            if leader == node.node_id and controller.is_leader:
                leads_here = True
                break
            if leader:
                try:
                    response = await _call_while_leading(ctx, leader, request)
                except BrokerError as exc:
                    error = exc
                else:
                    if response is not None and not _all_refused(response):
                        await _wait_for_cache(ctx, response, request)
                        return response
            # No leader, a refusal or a failover: go again once the metadata group changes.
            with trio.move_on_after(FORWARD_RETRY_S):
                await controller.driver.wait_changed(version)
    if leads_here:
        # Outside the forwarding deadline: each command has its own timeout, and each topic
        # gets its own outcome (a cut-short loop would report topics it created as failed).
        return await run_here()
    code = error.code if error.code.retriable else ErrorCode.NOT_CONTROLLER
    return response_type(
        topics=tuple(
            codec.TopicResult(name=name, error=code, error_message=error.message) for name in names
        )
    )


async def _call_while_leading(ctx: BrokerContext, leader: int, request: Any) -> Any:
    """`request` sent to `leader`; None if leadership moved before it answered."""
    controller = ctx.cluster.controller
    response: Any = None
    failure: BrokerError | None = None
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            nonlocal response, failure
            try:
                # The controller spends up to its command timeout: wait that long on top.
                response = await ctx.cluster.peer_clients.call(
                    leader, request, extra_timeout_s=controller.config.command_timeout_ms / 1000
                )
            except BrokerError as exc:
                failure = exc
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            while controller.leader_id == leader:
                await controller.driver.wait_changed()
            nursery.cancel_scope.cancel()

        nursery.start_soon(call)
        nursery.start_soon(watch)
    if failure is not None:
        raise failure
    return response


def _all_refused(response: Any) -> bool:
    """Every topic answered NOT_CONTROLLER: the broker we asked no longer leads."""
    return bool(response.topics) and all(
        result.error is ErrorCode.NOT_CONTROLLER for result in response.topics
    )


async def _wait_for_cache(ctx: BrokerContext, response: Any, request: Any) -> None:
    """Wait until this broker's cache shows the changes the controller made (rule 2)."""
    created = isinstance(request, codec.CreateTopicsRequest)
    if created and request.validate_only:
        return
    done = [r.name for r in response.topics if r.error is ErrorCode.NONE]
    controller = ctx.cluster.controller

    def caught_up() -> bool:
        return all((controller.cache.topic(name) is not None) == created for name in done)

    with trio.move_on_after(CACHE_CATCH_UP_S):
        while not caught_up():
            await controller.changes.wait(controller.changes.version)


# --- describe and status --------------------------------------------------------------------------


def describe_partitions(
    ctx: BrokerContext, record: TopicRecord
) -> tuple[codec.PartitionDescription, ...]:
    """DescribeTopics' partitions of a cluster topic (see `_describe_partition`)."""
    metadata = {p.partition: p for p in _partitions(ctx, record.name)}
    return tuple(
        _describe_partition(ctx, record.name, index, metadata[index]) for index in sorted(metadata)
    )


def _describe_partition(
    ctx: BrokerContext, topic: str, index: int, metadata: codec.PartitionMetadata
) -> codec.PartitionDescription:
    """Leader, replicas and in-sync replicas from the metadata; log figures from this broker's
    replica if it hosts one (the client asks the leader for the authoritative figures)."""
    state = ctx.partitions.get((topic, index))
    log = state.log if state is not None else None
    return codec.PartitionDescription(
        partition=index,
        leader_id=metadata.leader_id,
        replicas=metadata.replicas,
        isr=metadata.isr,
        log_start_offset=log.log_start_offset if log is not None else -1,
        log_end_offset=log.log_end_offset if log is not None else -1,
        high_watermark=state.high_watermark if state is not None else -1,
        size_bytes=log.size_bytes if log is not None else 0,
        segment_count=log.segment_count if log is not None else 0,
        error=metadata.error,
        error_message=metadata.error_message,
    )


def cluster_status(ctx: BrokerContext, listener: str) -> codec.ClusterStatusResponse:
    """Broker rows give the addresses of `listener` (a broker without it: the address it
    registered, where its peers reach it)."""
    node = ctx.cluster
    statistics = node.cache.statistics(controller_leader=node.controller.leader_id or None)
    # A decommissioning broker shows as such, whatever its liveness (docs/cluster.md).
    leaving = {info.node_id for info in node.cache.brokers() if info.decommissioning}
    return codec.ClusterStatusResponse(
        controller_id=statistics.controller_leader or -1,
        metadata_index=statistics.metadata_index,
        brokers=tuple(
            codec.ClusterBroker(
                node_id=row.node_id,
                host=address[0],
                port=address[1],
                state="decommissioning" if row.node_id in leaving else row.state.value,
                broker_epoch=row.broker_epoch,
                replica_count=row.replica_count,
                leader_count=row.leader_count,
                preferred_leader_count=row.preferred_leader_count,
            )
            for row in statistics.brokers
            for address in [ctx.endpoint_of(row.node_id, listener) or (row.host, row.port)]
        ),
        topic_count=statistics.topic_count,
        partition_count=statistics.partition_count,
        offline_partitions=_refs(statistics.offline_partitions),
        under_replicated_partitions=_refs(statistics.under_replicated_partitions),
        preferred_leader_imbalance_count=statistics.preferred_leader_imbalance_count,
        controller_voters=node.controller.configuration.voters,
        internal_topics_missing=tuple(sorted(INTERNAL_TOPICS - set(ctx.topics.names()))),
    )


def _refs(pairs: tuple[tuple[str, int], ...]) -> tuple[codec.TopicPartitionRef, ...]:
    return tuple(codec.TopicPartitionRef(topic=t, partition=p) for t, p in pairs)


# --- broker-to-controller APIs (rule 3) -----------------------------------------------------------


def _controller_call(
    ctx: BrokerContext,
    response_type: type[Any],
    call: Callable[[Any], Any],
) -> Deferred:
    async def run() -> Any:
        if ctx.cluster is None:
            raise BrokerError(
                ErrorCode.INVALID_REQUEST, "this broker is not a cluster member (no --peers)"
            )
        controller = ctx.cluster.controller
        try:
            return await call(controller)
        except NotControllerError as exc:
            return response_type(
                error=exc.code, error_message=exc.message, leader_hint=exc.leader_hint
            )
        except BrokerError as exc:
            return response_type(error=exc.code, error_message=exc.message)

    return Deferred(run)


def handle_broker_registration(
    ctx: BrokerContext, request: codec.BrokerRegistrationRequest
) -> Deferred:
    async def call(controller: Any) -> codec.BrokerRegistrationResponse:
        epoch = await controller.register_broker(
            request.node_id,
            request.host,
            request.port,
            request.incarnation,
            tuple((item.listener, item.host, item.port) for item in request.endpoints),
        )
        return codec.BrokerRegistrationResponse(broker_epoch=epoch)

    return _controller_call(ctx, codec.BrokerRegistrationResponse, call)


def handle_broker_heartbeat(ctx: BrokerContext, request: codec.BrokerHeartbeatRequest) -> Deferred:
    async def call(controller: Any) -> codec.BrokerHeartbeatResponse:
        state: BrokerState = await controller.heartbeat(
            request.node_id,
            request.broker_epoch,
            want_active=request.want_active,
            shutting_down=request.shutting_down,
        )
        return codec.BrokerHeartbeatResponse(state=state.value)

    return _controller_call(ctx, codec.BrokerHeartbeatResponse, call)


def handle_leader_report(ctx: BrokerContext, request: codec.LeaderReportRequest) -> Deferred:
    async def call(controller: Any) -> codec.LeaderReportResponse:
        await controller.report_leader(
            request.topic,
            request.partition,
            request.leader_id,
            request.leader_epoch,
            request.in_sync,
        )
        return codec.LeaderReportResponse()

    return _controller_call(ctx, codec.LeaderReportResponse, call)
