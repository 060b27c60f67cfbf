"""Consumer group APIs: FindCoordinator, Join/Sync/Heartbeat/Leave, OffsetCommit/Fetch,
TxnOffsetCommit, and ListGroups, DescribeGroups, DeleteGroups, over the `GroupService`
(broker/consumer_groups).

Each handler turns the wire request into the core's event and submits it at once, in the
connection's reader, so pipelined requests reach the coordinator in arrival order. An answer the
core gives at once is returned at once; one that waits (a JoinGroup for the rebalance, a SyncGroup
for the leader's assignment, a commit for its write) is a `Deferred`, bounded by a timeout: the
rebalance timeout for joins and syncs, `COMMIT_WAIT_S` for writes. DescribeGroups adds each
partition's log end offset (its high watermark) and the lag to what the core knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from broker.consumer_groups.actions import (
    RespondDeleteGroups,
    RespondHeartbeat,
    RespondJoin,
    RespondLeave,
    RespondOffsetCommit,
    RespondOffsetFetch,
    RespondSync,
)
from broker.consumer_groups.events import (
    DeleteGroupsRequested,
    HeartbeatReceived,
    JoinGroupRequested,
    LeaveGroupRequested,
    LeavingMember,
    OffsetCommitRequested,
    OffsetFetchRequested,
    OffsetToCommit,
    SyncAssignment,
    SyncGroupRequested,
    TxnOffsetCommitRequested,
)
from broker.consumer_groups.group import GroupState, JoinProtocol, TopicPartition
from broker.consumer_groups.service import GroupService
from broker.handlers import cluster
from broker.handlers.context import BrokerContext
from broker.handlers.reply import Deferred, answer_when_ready
from broker.internal_topics import OFFSETS_TOPIC, SHARE_STATE_TOPIC, TRANSACTION_STATE_TOPIC
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

# How long a commit or deletion may wait for its write to be durable.
COMMIT_WAIT_S: Final = 30.0
# Added to a join's or sync's rebalance timeout before the handler gives up on the core.
WAIT_MARGIN_S: Final = 5.0

# A sentence per error a member may meet: what happened and what the client does about it.
_MESSAGES: Final = {
    ErrorCode.NONE: "",
    ErrorCode.REBALANCE_IN_PROGRESS: "the group is rebalancing: rejoin",
    ErrorCode.ILLEGAL_GENERATION: "stale generation: the group has rebalanced since; rejoin",
    ErrorCode.UNKNOWN_MEMBER_ID: "unknown member id (evicted or never joined): rejoin",
    ErrorCode.FENCED_INSTANCE_ID: "another consumer with this group_instance_id replaced us",
    ErrorCode.INVALID_SESSION_TIMEOUT: "session timeout outside the broker's "
    "group_min_session_timeout_ms..group_max_session_timeout_ms",
    ErrorCode.GROUP_NOT_EMPTY: "the group has active members; stop its consumers first",
    ErrorCode.GROUP_ID_NOT_FOUND: "no such group",
    ErrorCode.COORDINATOR_NOT_AVAILABLE: "the coordinator cannot write right now; retry",
    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: "the coordinator is loading; retry",
    ErrorCode.NOT_COORDINATOR: "this broker is not (or no longer) the group's coordinator",
    ErrorCode.THROTTLED: "too many commits awaiting their write; retry",
    ErrorCode.INCONSISTENT_GROUP_PROTOCOL: "the member's protocols do not match the group's",
    ErrorCode.GROUP_MAX_SIZE_REACHED: "the group has group_max_size members already",
    ErrorCode.OFFSET_METADATA_TOO_LARGE: "offset metadata is larger than the broker allows",
    ErrorCode.UNSTABLE_OFFSET_COMMIT: "a transaction's offsets for this partition are not "
    "committed or aborted yet; retry",
    ErrorCode.INVALID_PRODUCER_EPOCH: "the producer epoch is older than the partition's: fenced",
    ErrorCode.CONCURRENT_TRANSACTIONS: "the producer's previous transaction is still completing "
    "here; retry",
}


def _message(error: ErrorCode) -> str:
    return _MESSAGES.get(error, error.name.lower().replace("_", " "))


def _service(ctx: BrokerContext) -> GroupService:
    service = ctx.groups
    if service is None:
        raise BrokerError(ErrorCode.COORDINATOR_NOT_AVAILABLE, "the group service is not running")
    return service  # type: ignore[no-any-return]


def _check_group_id(group_id: str) -> None:
    if not group_id:
        raise BrokerError(ErrorCode.INVALID_REQUEST, "group_id must not be empty")


def _answer(
    service: GroupService,
    group_id: str,
    build: Callable[[int, int], Any],
    convert: Callable[[Any], Any],
    timeout_s: float,
    on_timeout: Any,
) -> Any:
    """Submit to the group's core; the converted answer now, or a Deferred that waits for it."""
    waiting = service.submit(service.partition_of(group_id), build)
    return answer_when_ready(service, waiting, convert, timeout_s, on_timeout)


# --- FindCoordinator ------------------------------------------------------------------------------


def handle_find_coordinator(
    ctx: BrokerContext, request: codec.FindCoordinatorRequest, listener: str
) -> codec.FindCoordinatorResponse:
    """The coordinator as the client's `listener` reaches it; COORDINATOR_NOT_AVAILABLE while
    it has no leader, or if its leader has no such listener (Kafka's answer)."""
    if request.key_type == codec.COORDINATOR_KEY_GROUP:
        what, service, topic = "group id", ctx.groups, OFFSETS_TOPIC
    elif request.key_type == codec.COORDINATOR_KEY_TRANSACTION:
        what, service, topic = "transactional id", ctx.transactions, TRANSACTION_STATE_TOPIC
    elif request.key_type == codec.COORDINATOR_KEY_SHARE:
        what, service, topic = "share group id", ctx.share_groups, SHARE_STATE_TOPIC
    else:
        return codec.FindCoordinatorResponse(
            error=ErrorCode.INVALID_REQUEST,
            error_message=f"key_type {request.key_type} is not supported; 0 = consumer group, "
            "1 = transactional id, 2 = share group",
        )
    if not request.key:
        return codec.FindCoordinatorResponse(
            error=ErrorCode.INVALID_REQUEST, error_message=f"key (the {what}) must not be empty"
        )
    if service is None:
        return codec.FindCoordinatorResponse(
            error=ErrorCode.COORDINATOR_NOT_AVAILABLE,
            error_message=f"the coordinator for {what}s is not running yet; retry",
        )
    partition = service.partition_of(request.key)
    leader = _leader_of(ctx, topic, partition)
    if leader < 0:
        return codec.FindCoordinatorResponse(
            error=ErrorCode.COORDINATOR_NOT_AVAILABLE,
            error_message=f"{topic}-{partition} has no leader yet; retry",
        )
    address = ctx.endpoint_of(leader, listener)
    if address is None:
        return codec.FindCoordinatorResponse(
            error=ErrorCode.COORDINATOR_NOT_AVAILABLE,
            error_message=f"the coordinator, broker {leader}, has no listener {listener}",
        )
    host, port = address
    return codec.FindCoordinatorResponse(node_id=leader, host=host, port=port)


def _leader_of(ctx: BrokerContext, topic: str, partition: int) -> int:
    """The leader of an internal topic's partition (`__consumer_offsets`,
    `__transaction_state`); -1 if it has none."""
    if ctx.cluster is None:
        state = ctx.partitions.get((topic, partition))
        return -1 if state is None or state.leader_id < 0 else state.leader_id
    leader = cluster.partition_metadata(ctx, topic, partition).leader_id
    return leader if leader > 0 else -1


# --- membership -----------------------------------------------------------------------------------


def handle_join_group(ctx: BrokerContext, request: codec.JoinGroupRequest) -> Any:
    _check_group_id(request.group_id)
    service = _service(ctx)
    config = service.config

    def build(request_id: int, now_ms: int) -> JoinGroupRequested:
        return JoinGroupRequested(
            request_id=request_id,
            now_ms=now_ms,
            group_id=request.group_id,
            member_id=request.member_id,
            group_instance_id=request.group_instance_id,
            client_id=request.client_id or "consumer",
            client_host="",
            session_timeout_ms=request.session_timeout_ms,
            rebalance_timeout_ms=request.rebalance_timeout_ms,
            protocol_type=request.protocol_type,
            protocols=tuple(JoinProtocol(p.name, p.metadata) for p in request.protocols),
        )

    rebalance_ms = request.rebalance_timeout_ms
    if rebalance_ms <= 0:
        rebalance_ms = config.rebalance_timeout_ms_default
    timeout_s = (rebalance_ms + config.initial_rebalance_delay_ms) / 1000 + WAIT_MARGIN_S
    timed_out = codec.JoinGroupResponse(
        error=ErrorCode.REBALANCE_IN_PROGRESS,
        error_message="the rebalance did not complete in time; rejoin",
        member_id=request.member_id,
    )
    return _answer(service, request.group_id, build, _join_response, timeout_s, timed_out)


def _join_response(response: RespondJoin) -> codec.JoinGroupResponse:
    return codec.JoinGroupResponse(
        error=response.error,
        error_message=_message(response.error),
        generation=response.generation,
        protocol_type=response.protocol_type,
        protocol_name=response.protocol_name,
        leader_id=response.leader_id,
        member_id=response.member_id,
        skip_assignment=response.skip_assignment,
        members=tuple(
            codec.JoinGroupMember(
                member_id=m.member_id, metadata=m.metadata, group_instance_id=m.group_instance_id
            )
            for m in response.members
        ),
    )


def handle_sync_group(ctx: BrokerContext, request: codec.SyncGroupRequest) -> Any:
    _check_group_id(request.group_id)
    service = _service(ctx)

    def build(request_id: int, now_ms: int) -> SyncGroupRequested:
        return SyncGroupRequested(
            request_id=request_id,
            now_ms=now_ms,
            group_id=request.group_id,
            generation=request.generation,
            member_id=request.member_id,
            group_instance_id=request.group_instance_id,
            protocol_type=request.protocol_type,
            protocol_name=request.protocol_name,
            assignments=tuple(
                SyncAssignment(a.member_id, a.assignment) for a in request.assignments
            ),
        )

    def convert(response: RespondSync) -> codec.SyncGroupResponse:
        return codec.SyncGroupResponse(
            error=response.error,
            error_message=_message(response.error),
            protocol_type=response.protocol_type,
            protocol_name=response.protocol_name,
            assignment=response.assignment,
        )

    timeout_s = service.config.rebalance_timeout_ms_default / 1000 + WAIT_MARGIN_S
    timed_out = codec.SyncGroupResponse(
        error=ErrorCode.REBALANCE_IN_PROGRESS, error_message="no assignment in time; rejoin"
    )
    return _answer(service, request.group_id, build, convert, timeout_s, timed_out)


def handle_heartbeat(ctx: BrokerContext, request: codec.HeartbeatRequest) -> Any:
    _check_group_id(request.group_id)

    def build(request_id: int, now_ms: int) -> HeartbeatReceived:
        return HeartbeatReceived(
            request_id=request_id,
            now_ms=now_ms,
            group_id=request.group_id,
            generation=request.generation,
            member_id=request.member_id,
            group_instance_id=request.group_instance_id,
        )

    def convert(response: RespondHeartbeat) -> codec.HeartbeatResponse:
        return codec.HeartbeatResponse(error=response.error, error_message=_message(response.error))

    timed_out = codec.HeartbeatResponse(
        error=ErrorCode.COORDINATOR_NOT_AVAILABLE, error_message="no answer in time; retry"
    )
    return _answer(_service(ctx), request.group_id, build, convert, COMMIT_WAIT_S, timed_out)


def handle_leave_group(ctx: BrokerContext, request: codec.LeaveGroupRequest) -> Any:
    _check_group_id(request.group_id)

    def build(request_id: int, now_ms: int) -> LeaveGroupRequested:
        return LeaveGroupRequested(
            request_id=request_id,
            now_ms=now_ms,
            group_id=request.group_id,
            members=tuple(LeavingMember(m.member_id, m.group_instance_id) for m in request.members),
        )

    def convert(response: RespondLeave) -> codec.LeaveGroupResponse:
        return codec.LeaveGroupResponse(
            error=response.error,
            error_message=_message(response.error),
            members=tuple(
                codec.LeaveGroupMemberResult(
                    member_id=m.member_id, group_instance_id=m.group_instance_id, error=m.error
                )
                for m in response.members
            ),
        )

    timed_out = codec.LeaveGroupResponse(
        error=ErrorCode.COORDINATOR_NOT_AVAILABLE, error_message="no answer in time; retry"
    )
    return _answer(_service(ctx), request.group_id, build, convert, COMMIT_WAIT_S, timed_out)


# --- offsets --------------------------------------------------------------------------------------


def handle_offset_commit(ctx: BrokerContext, request: codec.OffsetCommitRequest) -> Any:
    def build(request_id: int, now_ms: int) -> OffsetCommitRequested:
        return OffsetCommitRequested(
            request_id=request_id, now_ms=now_ms, **_commit_fields(request)
        )

    return _commit(ctx, request.group_id, build, codec.OffsetCommitResponse)


def handle_txn_offset_commit(ctx: BrokerContext, request: codec.TxnOffsetCommitRequest) -> Any:
    """A transaction's offsets (KIP-447), answered once written as the producer's transactional
    batch; they stay invisible to OffsetFetch until the transaction's COMMIT marker."""

    def build(request_id: int, now_ms: int) -> TxnOffsetCommitRequested:
        return TxnOffsetCommitRequested(
            request_id=request_id,
            now_ms=now_ms,
            transactional_id=request.transactional_id,
            producer_id=request.producer_id,
            producer_epoch=request.producer_epoch,
            **_commit_fields(request),
        )

    return _commit(ctx, request.group_id, build, codec.TxnOffsetCommitResponse)


def _commit_fields(request: codec.OffsetCommitRequest | codec.TxnOffsetCommitRequest) -> Any:
    """The event fields OffsetCommit and TxnOffsetCommit share."""
    return {
        "group_id": request.group_id,
        "generation": request.generation,
        "member_id": request.member_id,
        "group_instance_id": request.group_instance_id,
        "offsets": tuple(
            OffsetToCommit(
                TopicPartition(p.topic, p.partition), p.offset, p.leader_epoch, p.metadata
            )
            for p in request.partitions
        ),
    }


def _commit(
    ctx: BrokerContext,
    group_id: str,
    build: Callable[[int, int], OffsetCommitRequested],
    response_type: type[codec.OffsetCommitResponse] | type[codec.TxnOffsetCommitResponse],
) -> Any:
    """Submit a commit; its answer (per partition) once its write is durable."""
    _check_group_id(group_id)

    def convert(response: RespondOffsetCommit) -> Any:
        return response_type(
            error=response.error,
            error_message=_message(response.error),
            partitions=tuple(
                codec.OffsetCommitPartitionResult(
                    topic=r.topic_partition.topic,
                    partition=r.topic_partition.partition,
                    error=r.error,
                    error_message=_message(r.error),
                )
                for r in response.partitions
            ),
        )

    timed_out = response_type(
        error=ErrorCode.REQUEST_TIMED_OUT,
        error_message="the commit was not durable in time; it may still be applied",
    )
    return _answer(_service(ctx), group_id, build, convert, COMMIT_WAIT_S, timed_out)


def handle_offset_fetch(ctx: BrokerContext, request: codec.OffsetFetchRequest) -> Any:
    _check_group_id(request.group_id)
    partitions = (
        None
        if request.partitions is None
        else tuple(TopicPartition(p.topic, p.partition) for p in request.partitions)
    )

    def build(request_id: int, now_ms: int) -> OffsetFetchRequested:
        return OffsetFetchRequested(
            request_id=request_id,
            now_ms=now_ms,
            group_id=request.group_id,
            partitions=partitions,
            require_stable=request.require_stable,
        )

    def convert(response: RespondOffsetFetch) -> codec.OffsetFetchResponse:
        return codec.OffsetFetchResponse(
            error=response.error,
            error_message=_message(response.error),
            partitions=tuple(
                codec.OffsetFetchPartitionResult(
                    topic=o.topic_partition.topic,
                    partition=o.topic_partition.partition,
                    offset=o.offset,
                    leader_epoch=o.leader_epoch,
                    metadata=o.metadata,
                    error=o.error,
                    error_message=_message(o.error),
                )
                for o in response.offsets
            ),
        )

    timed_out = codec.OffsetFetchResponse(
        error=ErrorCode.COORDINATOR_NOT_AVAILABLE, error_message="no answer in time; retry"
    )
    return _answer(_service(ctx), request.group_id, build, convert, COMMIT_WAIT_S, timed_out)


# --- administration -------------------------------------------------------------------------------


def handle_list_groups(
    ctx: BrokerContext, request: codec.ListGroupsRequest
) -> codec.ListGroupsResponse:
    states = []
    for name in request.states:
        try:
            states.append(GroupState(name))
        except ValueError:
            known = ", ".join(state.value for state in GroupState)
            raise BrokerError(
                ErrorCode.INVALID_REQUEST, f"unknown group state {name!r}; states: {known}"
            ) from None
    listed = _service(ctx).list_groups(tuple(states))
    return codec.ListGroupsResponse(
        error=listed.error,
        error_message=_message(listed.error),
        groups=tuple(
            codec.ListedGroupInfo(
                group_id=g.group_id, protocol_type=g.protocol_type, state=g.state.value
            )
            for g in listed.groups
        ),
    )


def handle_describe_groups(
    ctx: BrokerContext, request: codec.DescribeGroupsRequest
) -> codec.DescribeGroupsResponse:
    service = _service(ctx)
    described = service.describe_groups([g for g in request.group_ids if g])
    groups = [_described_group(service, d) for d in described.groups]
    groups += [
        codec.DescribedGroup(
            group_id="", error=ErrorCode.INVALID_REQUEST, error_message="empty group id"
        )
        for g in request.group_ids
        if not g
    ]
    return codec.DescribeGroupsResponse(
        error=described.error, error_message=_message(described.error), groups=tuple(groups)
    )


def _described_group(service: GroupService, description: Any) -> codec.DescribedGroup:
    if description.error is not ErrorCode.NONE:
        return codec.DescribedGroup(
            group_id=description.group_id,
            error=description.error,
            error_message=_message(description.error),
        )
    offsets = []
    for tp, committed, metadata, owner in service.partition_offsets(description):
        end = service.log_end_offset(tp.topic, tp.partition)
        lag = max(end - committed, 0) if end >= 0 and committed >= 0 else -1
        offsets.append(
            codec.DescribedOffset(
                topic=tp.topic,
                partition=tp.partition,
                committed_offset=committed,
                log_end_offset=end,
                lag=lag,
                metadata=metadata,
                member_id=owner,
            )
        )
    return codec.DescribedGroup(
        group_id=description.group_id,
        state=description.state.value,
        protocol_type=description.protocol_type,
        protocol_name=description.protocol_name,
        generation=description.generation,
        leader_id=description.leader_id,
        members=tuple(
            codec.DescribedMember(
                member_id=m.member_id,
                group_instance_id=m.group_instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                session_timeout_ms=m.session_timeout_ms,
                rebalance_timeout_ms=m.rebalance_timeout_ms,
                subscription=m.subscription,
                assignment=m.assignment,
            )
            for m in description.members
        ),
        offsets=tuple(offsets),
    )


def handle_delete_groups(ctx: BrokerContext, request: codec.DeleteGroupsRequest) -> Any:
    service = _service(ctx)
    by_partition: dict[int, list[str]] = {}
    for group_id in dict.fromkeys(request.group_ids):
        _check_group_id(group_id)
        by_partition.setdefault(service.partition_of(group_id), []).append(group_id)
    pendings = [
        service.submit(
            partition,
            lambda rid, now, ids=tuple(ids): DeleteGroupsRequested(
                request_id=rid, now_ms=now, group_ids=ids
            ),
        )
        for partition, ids in sorted(by_partition.items())
    ]

    async def wait() -> codec.DeleteGroupsResponse:
        results: dict[str, codec.GroupResultInfo] = {}
        for pending in pendings:
            response = await service.wait(pending, COMMIT_WAIT_S)
            if response is None:
                continue
            assert isinstance(response, RespondDeleteGroups)
            for result in response.groups:
                results[result.group_id] = codec.GroupResultInfo(
                    group_id=result.group_id,
                    error=result.error,
                    error_message=result.message or _message(result.error),
                )
        timed_out = codec.GroupResultInfo(
            group_id="", error=ErrorCode.REQUEST_TIMED_OUT, error_message="no answer in time"
        )
        return codec.DeleteGroupsResponse(
            groups=tuple(
                results.get(g, timed_out.__class__(group_id=g, error=timed_out.error))
                for g in dict.fromkeys(request.group_ids)
            )
        )

    return Deferred(wait)
