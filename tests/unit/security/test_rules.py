"""What each API needs: every API has a rule; whole requests fail with the error of the denied
resource's type; per-item requests run only their allowed items (none: the handler never runs);
listings leave out what may not be described, without counting it as a denial."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from broker.security.acl import CLUSTER_NAME, Operation, ResourceType
from broker.security.rules import Can, DeniedError, admit, covered_apis
from wire import codec
from wire.error_codes import ErrorCode

T, G, C, X = (
    ResourceType.TOPIC,
    ResourceType.GROUP,
    ResourceType.CLUSTER,
    ResourceType.TRANSACTIONAL_ID,
)
Grant = tuple[ResourceType, str | None, Operation]


def can_only(*grants: Grant) -> Can:
    allowed = set(grants)

    def can(resource_type: ResourceType, name: str | None, operation: Operation) -> bool:
        return (resource_type, name, operation) in allowed

    return can


def test_every_api_but_the_handshake_and_the_login_has_a_rule() -> None:
    before_any_rule = {
        codec.ApiKey.HANDSHAKE,
        codec.ApiKey.SASL_HANDSHAKE,
        codec.ApiKey.SASL_AUTHENTICATE,
    }
    assert covered_apis() == set(codec.ApiKey) - before_any_rule


def denied_code(request: object, *grants: Grant) -> ErrorCode:
    with pytest.raises(DeniedError) as caught:
        admit(request, can_only(*grants))
    assert len(caught.value.denials) == 1
    return caught.value.code


@pytest.mark.parametrize(
    ("request_", "needs", "code"),
    [
        (codec.JoinGroupRequest(group_id="g", session_timeout_ms=1, protocols=()),
         [(G, "g", Operation.READ)], ErrorCode.GROUP_AUTHORIZATION_FAILED),
        # Per partition for its topics, but the group is checked for the whole request.
        (codec.OffsetCommitRequest(group_id="g", partitions=(
            codec.OffsetCommitPartition(topic="t", partition=0, offset=1),)),
         [(T, "t", Operation.READ), (G, "g", Operation.READ)],
         ErrorCode.GROUP_AUTHORIZATION_FAILED),
        (codec.OffsetFetchRequest(group_id="g"), [(G, "g", Operation.DESCRIBE)],
         ErrorCode.GROUP_AUTHORIZATION_FAILED),
        (codec.TxnOffsetCommitRequest(transactional_id="x", group_id="g", producer_id=1,
                                      producer_epoch=0, partitions=()),
         [(G, "g", Operation.READ), (X, "x", Operation.WRITE)],
         ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
        (codec.BrokerHeartbeatRequest(node_id=1, broker_epoch=1),
         [(C, CLUSTER_NAME, Operation.CLUSTER_ACTION)], ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
        (codec.EndTxnRequest(transactional_id="x", producer_id=1, producer_epoch=0,
                             committed=True),
         [(X, "x", Operation.WRITE)], ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
        (codec.InitProducerIdRequest(transactional_id="x"), [(X, "x", Operation.WRITE)],
         ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
        (codec.CreateAclsRequest(acls=()), [(C, CLUSTER_NAME, Operation.ALTER)],
         ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
        (codec.AlterClientQuotasRequest(entity=codec.QuotaEntityData(user="u")),
         [(C, CLUSTER_NAME, Operation.ALTER_CONFIGS)], ErrorCode.CLUSTER_AUTHORIZATION_FAILED),
        (codec.AlterTopicConfigsRequest(topic="t"), [(T, "t", Operation.ALTER_CONFIGS)],
         ErrorCode.TOPIC_AUTHORIZATION_FAILED),
    ],
)  # fmt: skip
def test_whole_requests_need_every_pair(
    request_: object, needs: list[Grant], code: ErrorCode
) -> None:
    assert admit(request_, can_only(*needs)).request is request_
    # Without the last pair: denied with the error of its resource type.
    assert denied_code(request_, *needs[:-1]) is code


def test_an_idempotent_producer_needs_idempotent_write_or_write_on_any_topic() -> None:
    request = codec.InitProducerIdRequest(transactional_id=None)
    assert denied_code(request) is ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    assert admit(request, can_only((C, CLUSTER_NAME, Operation.IDEMPOTENT_WRITE))).request
    assert admit(request, can_only((T, None, Operation.WRITE))).request


def produce(*topics: str, acks: int = codec.ACKS_ALL) -> codec.ProduceRequest:
    return codec.ProduceRequest(
        partitions=tuple(
            codec.ProducePartition(topic=topic, partition=p, records=b"x")
            for topic in topics
            for p in (0, 1)
        ),
        acks=acks,
    )


def results(response: Any) -> dict[tuple[str, int], ErrorCode]:
    return {(r.topic, r.partition): r.error for r in response.partitions}


def test_produce_runs_only_the_allowed_topics_and_answers_the_others() -> None:
    admission = admit(produce("ok", "no"), can_only((T, "ok", Operation.WRITE)))
    assert {p.topic for p in admission.request.partitions} == {"ok"}
    assert [(d.name, d.operation) for d in admission.denials] == [("no", Operation.WRITE)]
    handled = codec.ProduceResponse(
        partitions=tuple(
            codec.ProducePartitionResult(topic="ok", partition=p, base_offset=0) for p in (0, 1)
        )
    )
    merged = admission.finish(handled)
    assert results(merged) == {
        ("ok", 0): ErrorCode.NONE,
        ("ok", 1): ErrorCode.NONE,
        ("no", 0): ErrorCode.TOPIC_AUTHORIZATION_FAILED,
        ("no", 1): ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    }


def test_a_produce_with_nothing_allowed_never_reaches_the_handler() -> None:
    admission = admit(produce("no"), can_only())
    assert admission.request is None
    response = admission.finish(None)
    assert set(results(response).values()) == {ErrorCode.TOPIC_AUTHORIZATION_FAILED}
    assert "not authorized to write topic 'no'" in response.partitions[0].error_message
    # acks=0 has no response, denied or not.
    admission = admit(produce("no", acks=codec.ACKS_NONE), can_only())
    assert admission.request is None and admission.finish(None) is None


def test_create_topics_takes_create_on_the_topic_or_the_cluster() -> None:
    request = codec.CreateTopicsRequest(
        topics=(codec.NewTopic(name="mine"), codec.NewTopic(name="theirs"))
    )
    admission = admit(request, can_only((T, "mine", Operation.CREATE)))
    assert [t.name for t in admission.request.topics] == ["mine"]
    merged = admission.finish(codec.CreateTopicsResponse(topics=(codec.TopicResult(name="mine"),)))
    assert {r.name: r.error for r in merged.topics} == {
        "mine": ErrorCode.NONE,
        "theirs": ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    }
    assert admit(request, can_only((C, CLUSTER_NAME, Operation.CREATE))).request is request


def metadata(names: Iterable[str]) -> codec.MetadataResponse:
    return codec.MetadataResponse(
        brokers=(),
        controller_id=0,
        topics=tuple(codec.TopicMetadata(name=name) for name in names),
    )


def test_metadata_leaves_out_topics_that_may_not_be_described() -> None:
    can = can_only((T, "seen", Operation.DESCRIBE))
    admission = admit(codec.MetadataRequest(), can)
    assert admission.request == codec.MetadataRequest()
    filtered = admission.finish(metadata(["seen", "hidden"]))
    assert [t.name for t in filtered.topics] == ["seen"]
    # Asked for by name: an error for the hidden one, and the handler never sees its name.
    admission = admit(codec.MetadataRequest(topics=("seen", "hidden")), can)
    assert admission.request.topics == ("seen",)
    answered = admission.finish(metadata(["seen"]))
    assert {t.name: t.error for t in answered.topics} == {
        "seen": ErrorCode.NONE,
        "hidden": ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    }


def test_metadata_auto_creation_needs_create() -> None:
    request = codec.MetadataRequest(topics=("new",), allow_auto_create=True)
    describe = (T, "new", Operation.DESCRIBE)
    assert not admit(request, can_only(describe)).request.allow_auto_create
    allowed = admit(request, can_only(describe, (T, "new", Operation.CREATE)))
    assert allowed.request.allow_auto_create


def commit(*topics: str) -> codec.OffsetCommitRequest:
    return codec.OffsetCommitRequest(
        group_id="g",
        partitions=tuple(
            codec.OffsetCommitPartition(topic=topic, partition=p, offset=5)
            for topic in topics
            for p in (0, 1)
        ),
    )


def test_offset_commit_runs_the_allowed_topics_and_answers_the_denied_ones() -> None:
    can = can_only((G, "g", Operation.READ), (T, "mine", Operation.READ))
    admission = admit(commit("mine", "theirs"), can)
    assert {(p.topic, p.partition) for p in admission.request.partitions} == {
        ("mine", 0),
        ("mine", 1),
    }
    assert [(d.name, d.operation) for d in admission.denials] == [("theirs", Operation.READ)]
    handled = codec.OffsetCommitResponse(
        partitions=tuple(
            codec.OffsetCommitPartitionResult(topic="mine", partition=p) for p in (0, 1)
        )
    )
    merged = admission.finish(handled)
    assert results(merged) == {
        ("mine", 0): ErrorCode.NONE,
        ("mine", 1): ErrorCode.NONE,
        ("theirs", 0): ErrorCode.TOPIC_AUTHORIZATION_FAILED,
        ("theirs", 1): ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    }
    assert "not authorized to read topic 'theirs'" in merged.partitions[2].error_message
    # Nothing allowed: the handler never runs (nothing is committed), each partition answered.
    admission = admit(commit("theirs"), can)
    assert admission.request is None
    assert set(results(admission.finish(None)).values()) == {ErrorCode.TOPIC_AUTHORIZATION_FAILED}
    # The group is whole-request: without READ on it, the allowed topic does not help.
    with pytest.raises(DeniedError) as caught:
        admit(commit("mine"), can_only((T, "mine", Operation.READ)))
    assert caught.value.code is ErrorCode.GROUP_AUTHORIZATION_FAILED


def test_txn_offset_commit_checks_the_id_and_group_whole_and_topics_per_partition() -> None:
    request = codec.TxnOffsetCommitRequest(
        transactional_id="x",
        group_id="g",
        producer_id=1,
        producer_epoch=0,
        partitions=commit("mine", "theirs").partitions,
    )
    grants = [(X, "x", Operation.WRITE), (G, "g", Operation.READ), (T, "mine", Operation.READ)]
    admission = admit(request, can_only(*grants))
    assert {p.topic for p in admission.request.partitions} == {"mine"}
    merged = admission.finish(codec.TxnOffsetCommitResponse())
    assert isinstance(merged, codec.TxnOffsetCommitResponse)
    assert set(results(merged).values()) == {ErrorCode.TOPIC_AUTHORIZATION_FAILED}
    with pytest.raises(DeniedError) as caught:
        admit(request, can_only(*grants[1:]))
    assert caught.value.code is ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


def fetched(*topics: str) -> codec.OffsetFetchResponse:
    return codec.OffsetFetchResponse(
        partitions=tuple(
            codec.OffsetFetchPartitionResult(topic=topic, partition=p, offset=7)
            for topic in topics
            for p in (0, 1)
        )
    )


def test_offset_fetch_answers_denied_topics_by_name_and_leaves_them_out_of_all() -> None:
    can = can_only((G, "g", Operation.DESCRIBE), (T, "seen", Operation.DESCRIBE))
    named = codec.OffsetFetchRequest(
        group_id="g",
        partitions=(
            codec.GroupTopicPartition(topic="seen", partition=0),
            codec.GroupTopicPartition(topic="hidden", partition=0),
        ),
    )
    admission = admit(named, can)
    assert [p.topic for p in admission.request.partitions] == ["seen"]
    merged = admission.finish(
        codec.OffsetFetchResponse(
            partitions=(codec.OffsetFetchPartitionResult(topic="seen", partition=0, offset=7),)
        )
    )
    assert {(p.topic, p.offset, p.error) for p in merged.partitions} == {
        ("seen", 7, ErrorCode.NONE),
        ("hidden", -1, ErrorCode.TOPIC_AUTHORIZATION_FAILED),
    }
    # All the group's partitions: the hidden topic's are left out, and that is no denial.
    everything = codec.OffsetFetchRequest(group_id="g")
    admission = admit(everything, can)
    assert admission.request is everything and admission.denials == []
    filtered = admission.finish(fetched("seen", "hidden"))
    assert {(p.topic, p.partition) for p in filtered.partitions} == {("seen", 0), ("seen", 1)}


def listed_groups(*group_ids: str) -> codec.ListGroupsResponse:
    return codec.ListGroupsResponse(
        groups=tuple(
            codec.ListedGroupInfo(group_id=g, protocol_type="consumer", state="Stable")
            for g in group_ids
        )
    )


def test_list_groups_shows_the_groups_that_may_be_described() -> None:
    request = codec.ListGroupsRequest()
    admission = admit(request, can_only((G, "mine", Operation.DESCRIBE)))
    assert admission.request is request and admission.denials == []
    shown = admission.finish(listed_groups("mine", "theirs"))
    assert [g.group_id for g in shown.groups] == ["mine"]
    # Nothing allowed: an empty list, no error.
    assert admit(request, can_only()).finish(listed_groups("mine", "theirs")).groups == ()
    # DESCRIBE on the cluster shows every group.
    everything = admit(request, can_only((C, CLUSTER_NAME, Operation.DESCRIBE)))
    assert len(everything.finish(listed_groups("mine", "theirs")).groups) == 2


def test_list_transactions_shows_the_ids_that_may_be_described() -> None:
    listed = codec.ListTransactionsResponse(
        transactions=tuple(
            codec.ListedTransaction(transactional_id=x, producer_id=i, state="Ongoing")
            for i, x in enumerate(("mine", "theirs"))
        )
    )
    request = codec.ListTransactionsRequest()
    admission = admit(request, can_only((X, "mine", Operation.DESCRIBE)))
    assert admission.request is request and admission.denials == []
    assert [t.transactional_id for t in admission.finish(listed).transactions] == ["mine"]
    # As KIP-664: DESCRIBE on the cluster is no shortcut.
    cluster = admit(request, can_only((C, CLUSTER_NAME, Operation.DESCRIBE)))
    assert cluster.finish(listed).transactions == ()
