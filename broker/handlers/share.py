"""Share groups (queues): ShareFetch, ShareAcknowledge, AlterGroupConfigs, DescribeShareGroups.

Every request goes to the share coordinator (broker/share_groups/service.py), which answers
NOT_COORDINATOR unless this broker leads the group's `__share_group_state` partition; clients
find it with FindCoordinator (key type 2). The handlers check what the core cannot: request
shapes, the group id, and that a dead-letter topic exists and is not internal.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from broker.handlers.context import BrokerContext
from broker.handlers.reply import Deferred
from broker.internal_topics import is_internal_topic
from broker.share_groups.service import ShareGroupService, acks_of
from broker.share_groups.share_config import DEAD_LETTER_TOPIC
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

# Bounds of one ShareFetch.
MAX_RECORDS_LIMIT: Final = 10_000
MAX_WAIT_MS_LIMIT: Final = 30_000
GROUP_ID_MAX_CHARS: Final = 255


def handle_share_fetch(ctx: BrokerContext, request: codec.ShareFetchRequest) -> Deferred:
    service = _service(ctx)
    _check_member(request.group_id, request.member_id)
    if not 0 < request.max_records <= MAX_RECORDS_LIMIT:
        raise BrokerError(
            ErrorCode.INVALID_REQUEST,
            f"max_records must be between 1 and {MAX_RECORDS_LIMIT}, got {request.max_records}",
        )
    if request.max_bytes <= 0 or not 0 <= request.max_wait_ms <= MAX_WAIT_MS_LIMIT:
        raise BrokerError(
            ErrorCode.INVALID_REQUEST,
            f"max_bytes must be > 0 and max_wait_ms between 0 and {MAX_WAIT_MS_LIMIT}",
        )
    if not request.topics:
        raise BrokerError(ErrorCode.INVALID_REQUEST, "subscribe to at least one topic")
    acks_of(request.acknowledgements)  # a bad ack type fails the request before anything applies
    return Deferred(lambda: service.share_fetch(request, client_id=request.client_id))


def handle_share_acknowledge(
    ctx: BrokerContext, request: codec.ShareAcknowledgeRequest
) -> Deferred:
    service = _service(ctx)
    _check_member(request.group_id, request.member_id)
    waiting = service.submit_acknowledge(
        request.group_id,
        request.member_id,
        acks_of(request.acknowledgements),
        leave=request.leave,
        client_id=request.client_id,
    )

    async def answer() -> codec.ShareAcknowledgeResponse:
        outcome = await service.acknowledge_results(waiting)
        return codec.ShareAcknowledgeResponse(
            error=outcome.error,
            error_message=outcome.error_message,
            partitions=tuple(
                codec.ShareAcknowledgePartitionResult(
                    topic=tp.topic, partition=tp.partition, error=code, error_message=message
                )
                for tp, code, message in outcome.results
            ),
        )

    return Deferred(answer)


def handle_alter_group_configs(ctx: BrokerContext, request: codec.AlterGroupConfigsRequest) -> Any:
    service = _service(ctx)
    _check_group_id(request.group_id)
    topic = request.configs.get(DEAD_LETTER_TOPIC)
    if isinstance(topic, str) and topic:
        problem = None
        if is_internal_topic(topic):
            problem = f"{topic!r} is an internal topic"
        elif ctx.topics.get(topic) is None:
            problem = f"topic {topic!r} does not exist: create it first"
        if problem is not None:
            return codec.AlterGroupConfigsResponse(
                error=ErrorCode.INVALID_CONFIG,
                error_message=f"{DEAD_LETTER_TOPIC}: {problem}",
            )
    waiting = service.submit_alter_configs(
        request.group_id, dict(request.configs), tuple(request.reset)
    )

    async def answer() -> codec.AlterGroupConfigsResponse:
        outcome = await service.alter_configs_result(waiting)
        return codec.AlterGroupConfigsResponse(
            error=outcome.error, error_message=outcome.error_message, configs=outcome.configs
        )

    return Deferred(answer)


def handle_describe_share_groups(
    ctx: BrokerContext, request: codec.DescribeShareGroupsRequest
) -> codec.DescribeShareGroupsResponse:
    service = _service(ctx)
    groups = []
    for description in service.describe(tuple(request.group_ids)):
        partitions = tuple(
            _wire(
                codec.SharePartitionDescription,
                p,
                topic=p.topic_partition.topic,
                partition=p.topic_partition.partition,
            )
            for p in description.partitions
        )
        groups.append(
            _wire(
                codec.DescribedShareGroup,
                description,
                error_message=_describe_message(description.error, description.group_id),
                members=tuple(_wire(codec.ShareMemberDescription, m) for m in description.members),
                partitions=partitions,
                dead_letter_writes=sum(p.dead_lettered_total for p in partitions),
            )
        )
    return codec.DescribeShareGroupsResponse(groups=tuple(groups))


def _wire(message: type[Any], source: Any, **fields: Any) -> Any:
    """`message` built from the same-named attributes of the core's `source` (and `fields`):
    the core's descriptions and the wire's have the same field names by design."""
    names = {field.name for field in dataclasses.fields(message)} - set(fields)
    return message(
        **{name: getattr(source, name) for name in names if hasattr(source, name)}, **fields
    )


def _describe_message(error: ErrorCode, group_id: str) -> str:
    if error is ErrorCode.GROUP_ID_NOT_FOUND:
        return f"no share group {group_id!r} (it exists once a member fetches or it is configured)"
    if error is ErrorCode.NOT_COORDINATOR:
        return f"this broker is not the share coordinator of {group_id!r}: find it again"
    return ""


def _service(ctx: BrokerContext) -> ShareGroupService:
    if ctx.share_groups is None:
        raise BrokerError(
            ErrorCode.COORDINATOR_NOT_AVAILABLE, "the share coordinator is not running yet; retry"
        )
    service: ShareGroupService = ctx.share_groups
    return service


def _check_group_id(group_id: str) -> None:
    if not group_id or len(group_id) > GROUP_ID_MAX_CHARS:
        raise BrokerError(
            ErrorCode.INVALID_GROUP_ID,
            f"a share group id must have 1 to {GROUP_ID_MAX_CHARS} characters",
        )


def _check_member(group_id: str, member_id: str) -> None:
    _check_group_id(group_id)
    if not member_id or len(member_id) > GROUP_ID_MAX_CHARS:
        raise BrokerError(
            ErrorCode.UNKNOWN_MEMBER_ID,
            f"a member id must have 1 to {GROUP_ID_MAX_CHARS} characters (the client picks a "
            "unique one, e.g. a UUID)",
        )
