"""Goal: every consumer-group message survives the wire codec, and decoding stays strict."""

from __future__ import annotations

from typing import Any

import pytest

from wire import codec
from wire.error_codes import ErrorCode

MESSAGES: list[Any] = [
    codec.FindCoordinatorRequest(key="g"),
    codec.FindCoordinatorResponse(node_id=1, host="h", port=9),
    codec.JoinGroupRequest(
        group_id="g",
        session_timeout_ms=10,
        protocols=(codec.JoinGroupProtocol(name="range", metadata=b"\x00\x01"),),
        group_instance_id="i",
    ),
    codec.JoinGroupResponse(
        generation=3,
        members=(codec.JoinGroupMember(member_id="m", metadata=b"abc", group_instance_id=None),),
    ),
    codec.SyncGroupRequest(
        group_id="g",
        generation=1,
        member_id="m",
        assignments=(codec.SyncGroupAssignment(member_id="m", assignment=b"zz"),),
    ),
    codec.SyncGroupResponse(assignment=b"q", error=ErrorCode.REBALANCE_IN_PROGRESS),
    codec.HeartbeatRequest(group_id="g", generation=1, member_id="m"),
    codec.HeartbeatResponse(error=ErrorCode.ILLEGAL_GENERATION),
    codec.LeaveGroupRequest(group_id="g", members=(codec.LeaveGroupMember(member_id="m"),)),
    codec.LeaveGroupResponse(members=(codec.LeaveGroupMemberResult(member_id="m"),)),
    codec.OffsetCommitRequest(
        group_id="g", partitions=(codec.OffsetCommitPartition(topic="t", partition=0, offset=5),)
    ),
    codec.OffsetCommitResponse(
        partitions=(codec.OffsetCommitPartitionResult(topic="t", partition=0),)
    ),
    codec.OffsetFetchRequest(group_id="g", partitions=None),
    codec.OffsetFetchRequest(
        group_id="g", partitions=(codec.GroupTopicPartition(topic="t", partition=1),)
    ),
    codec.OffsetFetchResponse(
        partitions=(codec.OffsetFetchPartitionResult(topic="t", partition=0, offset=3),)
    ),
    codec.ListGroupsRequest(states=("Stable",)),
    codec.ListGroupsResponse(
        groups=(codec.ListedGroupInfo(group_id="g", protocol_type="consumer", state="Empty"),)
    ),
    codec.DescribeGroupsRequest(group_ids=("a", "b")),
    codec.DescribeGroupsResponse(
        groups=(
            codec.DescribedGroup(
                group_id="g",
                members=(codec.DescribedMember(member_id="m", subscription=b"s", assignment=b"a"),),
                offsets=(codec.DescribedOffset(topic="t", partition=0, committed_offset=1, lag=2),),
            ),
        )
    ),
    codec.DeleteGroupsRequest(group_ids=("g",)),
    codec.DeleteGroupsResponse(groups=(codec.GroupResultInfo(group_id="g"),)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Any) -> None:
    header, payload = codec.encode_response(message, correlation_id=7)
    decode = (
        codec.decode_request
        if type(message).__name__.endswith("Request")
        else codec.decode_response
    )
    assert decode(header, payload) == message


def test_join_without_protocols_is_refused_by_name() -> None:
    header = {
        "api": "join_group",
        "version": 1,
        "correlation_id": 1,
        "body": {"group_id": "g", "session_timeout_ms": 5},
    }
    with pytest.raises(codec.InvalidRequestError) as caught:
        codec.decode_request(header, b"")
    assert caught.value.path == "join_group.protocols"
