"""What each API needs: every API has a rule; whole requests fail with the error of the denied
resource's type; per-item requests run only their allowed items (none: the handler never runs);
listings leave out what may not be described."""

from __future__ import annotations

from collections.abc import Iterable

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
        (codec.OffsetCommitRequest(group_id="g", partitions=(
            codec.OffsetCommitPartition(topic="t", partition=0, offset=1),)),
         [(G, "g", Operation.READ), (T, "t", Operation.READ)],
         ErrorCode.TOPIC_AUTHORIZATION_FAILED),
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


def results(response: codec.ProduceResponse) -> dict[tuple[str, int], ErrorCode]:
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
