"""What each API needs: the (resource, operation) pairs a request must be allowed, as Kafka maps
them (docs/security.md has the table), pure.

`admit(request, can)` runs before the handler. `can(resource_type, name, operation)` is the
authorizer's answer for the connection's principal (`name=None`: on any resource of that type,
Kafka's KIP-679 check). Three shapes of rule:

- whole: every pair must be allowed, else the request fails with the error of the first denied
  resource's type (TOPIC_/GROUP_/CLUSTER_/TRANSACTIONAL_ID_AUTHORIZATION_FAILED) and the handler
  never runs;
- per item (produce, fetch, list_offsets, delete_records, create_topics, delete_topics, and the
  partitions of offset_commit, offset_fetch, txn_offset_commit once their group and transactional
  id passed as whole): denied items are taken out of the request and answered with
  TOPIC_AUTHORIZATION_FAILED, the others run as usual; a request with no allowed item never
  reaches its handler, so a denied produce writes nothing. An offset_fetch of all the group's
  partitions leaves out those of topics the principal may not DESCRIBE;
- listing (metadata, describe_topics, list_groups, list_transactions): what the principal may not
  DESCRIBE is left out of an all-of-them answer (not a denial: neither audited nor counted, as
  Kafka does not log these), and a topic asked for by name is answered with
  TOPIC_AUTHORIZATION_FAILED.

`Admission.finish(response)` merges the denied items into the handler's response (or builds it
when the handler did not run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Final

from broker.security.acl import CLUSTER_NAME, Operation, ResourceType
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

Can = Callable[[ResourceType, str | None, Operation], bool]
# One requirement: every alternative is (resource type, name or None for "any", operation); the
# requirement holds if any alternative is allowed.
Need = tuple[tuple[ResourceType, str | None, Operation], ...]

ERROR_OF: Final[dict[ResourceType, ErrorCode]] = {
    ResourceType.TOPIC: ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    ResourceType.GROUP: ErrorCode.GROUP_AUTHORIZATION_FAILED,
    ResourceType.CLUSTER: ErrorCode.CLUSTER_AUTHORIZATION_FAILED,
    ResourceType.TRANSACTIONAL_ID: ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}

T, G, C, X = (
    ResourceType.TOPIC,
    ResourceType.GROUP,
    ResourceType.CLUSTER,
    ResourceType.TRANSACTIONAL_ID,
)


def need(resource_type: ResourceType, name: str | None, operation: Operation) -> Need:
    return ((resource_type, name, operation),)


def cluster(operation: Operation) -> Need:
    return need(C, CLUSTER_NAME, operation)


def denial_message(resource_type: ResourceType, name: str | None, operation: Operation) -> str:
    """What was denied and what to do about it (the text of the error)."""
    what = f"{resource_type.value} {name!r}" if name is not None else f"any {resource_type.value}"
    return (
        f"not authorized to {operation.value} {what} (no ALLOW ACL grants it, or a DENY ACL "
        "refuses it): an administrator can grant it with "
        f"`broker-cli acls add --allow PRINCIPAL --operation {operation.value.replace('_', '-')} "
        f"--{resource_type.value.replace('_', '-')}"
        + ("" if resource_type is C else f" {name or 'NAME'}")
        + "`"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Denial:
    """One denied (resource, operation), for the audit log and the denial counter."""

    resource_type: ResourceType
    name: str | None
    operation: Operation


@dataclasses.dataclass(slots=True)
class Admission:
    """The request to run (None: do not run the handler), the denials seen, and `finish`."""

    request: Any
    denials: list[Denial]
    finish: Callable[[Any], Any] = lambda response: response


def _check(needs: Iterable[Need], can: Can, denials: list[Denial]) -> None:
    """Raise the BrokerError of the first requirement that no alternative satisfies."""
    for alternatives in needs:
        if any(can(*alternative) for alternative in alternatives):
            continue
        resource_type, name, operation = alternatives[0]
        denials.append(Denial(resource_type, name, operation))
        message = denial_message(resource_type, name, operation)
        for other_type, other_name, other_operation in alternatives[1:]:
            what = other_name or f"any {other_type.value}"
            message += f"; {other_operation.value} on {what} would do too"
        raise BrokerError(ERROR_OF[resource_type], message)


# --- whole-request rules ------------------------------------------------------------------------

W = Operation


def _topics(items: Iterable[Any], operation: Operation) -> list[Need]:
    return [need(T, name, operation) for name in sorted({item.topic for item in items})]


def _init_producer_id(r: codec.InitProducerIdRequest) -> list[Need]:
    if r.transactional_id:
        return [need(X, r.transactional_id, W.WRITE)]
    # An idempotent producer: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic (KIP-679).
    return [((C, CLUSTER_NAME, W.IDEMPOTENT_WRITE), (T, None, W.WRITE))]


def _find_coordinator(r: codec.FindCoordinatorRequest) -> list[Need]:
    kind = X if r.key_type == codec.COORDINATOR_KEY_TRANSACTION else G
    return [need(kind, r.key, W.DESCRIBE)]


WHOLE_RULES: Final[dict[type[Any], Callable[[Any], list[Need]]]] = {
    codec.AlterTopicConfigsRequest: lambda r: [need(T, r.topic, W.ALTER_CONFIGS)],
    codec.CreatePartitionsRequest: lambda r: [need(T, r.topic, W.ALTER)],
    codec.FindCoordinatorRequest: _find_coordinator,
    codec.JoinGroupRequest: lambda r: [need(G, r.group_id, W.READ)],
    codec.SyncGroupRequest: lambda r: [need(G, r.group_id, W.READ)],
    codec.HeartbeatRequest: lambda r: [need(G, r.group_id, W.READ)],
    codec.LeaveGroupRequest: lambda r: [need(G, r.group_id, W.READ)],
    codec.DescribeGroupsRequest: lambda r: [need(G, g, W.DESCRIBE) for g in r.group_ids],
    codec.DeleteGroupsRequest: lambda r: [need(G, g, W.DELETE) for g in r.group_ids],
    # Brokers, controller and partition health, as Kafka's DescribeCluster: no ACL (every
    # `broker-cli` command asks it first, to wait for a cluster that is still forming).
    codec.ClusterStatusRequest: lambda r: [],
    codec.BrokerRegistrationRequest: lambda r: [cluster(W.CLUSTER_ACTION)],
    codec.BrokerHeartbeatRequest: lambda r: [cluster(W.CLUSTER_ACTION)],
    codec.LeaderReportRequest: lambda r: [cluster(W.CLUSTER_ACTION)],
    codec.ReassignmentCompletedRequest: lambda r: [cluster(W.CLUSTER_ACTION)],
    codec.WriteTxnMarkersRequest: lambda r: [cluster(W.CLUSTER_ACTION)],
    codec.DecommissionBrokerRequest: lambda r: [cluster(W.ALTER)],
    codec.AlterPartitionReassignmentsRequest: lambda r: [cluster(W.ALTER)],
    codec.RebalanceRequest: lambda r: [cluster(W.ALTER)],
    codec.ListPartitionReassignmentsRequest: lambda r: [cluster(W.DESCRIBE)],
    codec.InitProducerIdRequest: _init_producer_id,
    codec.AddPartitionsToTxnRequest: lambda r: [
        need(X, r.transactional_id, W.WRITE),
        *_topics(r.partitions, W.WRITE),
    ],
    codec.AddOffsetsToTxnRequest: lambda r: [
        need(X, r.transactional_id, W.WRITE),
        need(G, r.group_id, W.READ),
    ],
    codec.EndTxnRequest: lambda r: [need(X, r.transactional_id, W.WRITE)],
    codec.DescribeTransactionsRequest: lambda r: [
        need(X, x, W.DESCRIBE) for x in r.transactional_ids
    ],
    codec.ShareFetchRequest: lambda r: [
        need(G, r.group_id, W.READ),
        *[need(T, t, W.READ) for t in sorted(set(r.topics))],
        *_topics(r.acknowledgements, W.READ),
    ],
    codec.ShareAcknowledgeRequest: lambda r: [
        need(G, r.group_id, W.READ),
        *_topics(r.acknowledgements, W.READ),
    ],
    codec.AlterGroupConfigsRequest: lambda r: [need(G, r.group_id, W.ALTER_CONFIGS)],
    codec.DescribeShareGroupsRequest: lambda r: [need(G, g, W.DESCRIBE) for g in r.group_ids],
    codec.CreateAclsRequest: lambda r: [cluster(W.ALTER)],
    codec.DeleteAclsRequest: lambda r: [cluster(W.ALTER)],
    codec.DescribeAclsRequest: lambda r: [cluster(W.DESCRIBE)],
    # Users (SCRAM credentials), as Kafka's AlterUserScramCredentials/DescribeUserScramCredentials.
    codec.AlterUserScramCredentialsRequest: lambda r: [cluster(W.ALTER)],
    codec.DescribeUserScramCredentialsRequest: lambda r: [cluster(W.DESCRIBE)],
    codec.AlterClientQuotasRequest: lambda r: [cluster(W.ALTER_CONFIGS)],
    codec.DescribeClientQuotasRequest: lambda r: [cluster(W.DESCRIBE_CONFIGS)],
}


# --- per-item rules -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ItemRule:
    """Items of `field` are checked one by one: `name_of(item)` needs `operation` on the topic
    (or, with `cluster_alternative`, that operation on the cluster); a denied item is answered
    with `denied(item, message)` in the response's `field`. `whole(request)` is checked first,
    as a whole rule (an offset commit's group: Kafka fails the request on it, not per item).
    A `field` of None asks for all items: the answer leaves out those of topics the principal
    may not `operation` (an offset fetch of all the group's partitions)."""

    field: str
    name_of: Callable[[Any], str]
    operation: Operation
    denied: Callable[[Any, str], Any]
    empty_response: Callable[[Any, tuple[Any, ...]], Any]
    cluster_alternative: bool = False
    whole: Callable[[Any], list[Need]] = lambda request: []


def _partition_rule(
    result: type[Any],
    response: type[Any],
    operation: Operation,
    whole: Callable[[Any], list[Need]] = lambda request: [],
) -> ItemRule:
    return ItemRule(
        field="partitions",
        name_of=lambda item: item.topic,
        operation=operation,
        denied=lambda item, message: result(
            topic=item.topic,
            partition=item.partition,
            error=ErrorCode.TOPIC_AUTHORIZATION_FAILED,
            error_message=message,
        ),
        empty_response=lambda request, denied: response(partitions=denied),
        whole=whole,
    )


def _empty_produce(request: codec.ProduceRequest, denied: tuple[Any, ...]) -> Any:
    # acks=0 gets no response at all, denied or not (Kafka's behaviour too).
    if request.acks == codec.ACKS_NONE:
        return None
    return codec.ProduceResponse(partitions=denied)


def _topic_result(name: str, message: str) -> codec.TopicResult:
    return codec.TopicResult(
        name=name, error=ErrorCode.TOPIC_AUTHORIZATION_FAILED, error_message=message
    )


ITEM_RULES: Final[dict[type[Any], ItemRule]] = {
    codec.ProduceRequest: dataclasses.replace(
        _partition_rule(codec.ProducePartitionResult, codec.ProduceResponse, W.WRITE),
        empty_response=_empty_produce,
    ),
    codec.FetchRequest: _partition_rule(codec.FetchPartitionResult, codec.FetchResponse, W.READ),
    codec.ListOffsetsRequest: _partition_rule(
        codec.ListOffsetsPartitionResult, codec.ListOffsetsResponse, W.DESCRIBE
    ),
    codec.DeleteRecordsRequest: _partition_rule(
        codec.DeleteRecordsPartitionResult, codec.DeleteRecordsResponse, W.DELETE
    ),
    # The group (and transactional id) as a whole, as Kafka: GROUP_AUTHORIZATION_FAILED for all.
    codec.OffsetCommitRequest: _partition_rule(
        codec.OffsetCommitPartitionResult,
        codec.OffsetCommitResponse,
        W.READ,
        lambda r: [need(G, r.group_id, W.READ)],
    ),
    codec.TxnOffsetCommitRequest: _partition_rule(
        codec.OffsetCommitPartitionResult,
        codec.TxnOffsetCommitResponse,
        W.READ,
        lambda r: [need(X, r.transactional_id, W.WRITE), need(G, r.group_id, W.READ)],
    ),
    codec.OffsetFetchRequest: _partition_rule(
        codec.OffsetFetchPartitionResult,
        codec.OffsetFetchResponse,
        W.DESCRIBE,
        lambda r: [need(G, r.group_id, W.DESCRIBE)],
    ),
    codec.CreateTopicsRequest: ItemRule(
        field="topics",
        name_of=lambda item: item.name,
        operation=W.CREATE,
        denied=lambda item, message: _topic_result(item.name, message),
        empty_response=lambda request, denied: codec.CreateTopicsResponse(topics=denied),
        cluster_alternative=True,
    ),
    codec.DeleteTopicsRequest: ItemRule(
        field="topics",
        name_of=lambda item: item,
        operation=W.DELETE,
        denied=lambda item, message: _topic_result(item, message),
        empty_response=lambda request, denied: codec.DeleteTopicsResponse(topics=denied),
    ),
}


def _admit_items(request: Any, rule: ItemRule, can: Can) -> Admission:
    _check_whole(rule.whole(request), can)
    items = getattr(request, rule.field)
    if items is None:
        finish = _keep_allowed(rule.field, rule.name_of, lambda name: can(T, name, rule.operation))
        return Admission(request, [], finish)
    allowed: list[Any] = []
    denied: list[Any] = []
    denials: list[Denial] = []
    verdicts: dict[str, bool] = {}  # one check per topic, however many partitions
    for item in items:
        name = rule.name_of(item)
        verdict = verdicts.get(name)
        if verdict is None:
            verdict = can(T, name, rule.operation) or (
                rule.cluster_alternative and can(C, CLUSTER_NAME, rule.operation)
            )
            verdicts[name] = verdict
            if not verdict:
                denials.append(Denial(T, name, rule.operation))
        if verdict:
            allowed.append(item)
        else:
            denied.append(rule.denied(item, denial_message(T, name, rule.operation)))
    if not denied:
        return Admission(request, denials)
    denied_results = tuple(denied)
    if not allowed:
        return Admission(None, denials, lambda _: rule.empty_response(request, denied_results))

    kept = dataclasses.replace(request, **{rule.field: tuple(allowed)})
    return Admission(kept, denials, _with_denied(rule.field, denied_results))


def _with_denied(field: str, entries: tuple[Any, ...]) -> Callable[[Any], Any]:
    """A `finish` that adds the denied `entries` to the handler's response's `field` (no
    response, as for acks=0, and errors pass through)."""

    def finish(response: Any) -> Any:
        if response is None or isinstance(response, BrokerError):
            return response
        return dataclasses.replace(response, **{field: getattr(response, field) + entries})

    return finish


# --- listing rules: metadata, describe_topics, list_groups, list_transactions --------------------


def _keep_allowed(
    field: str, name_of: Callable[[Any], str], allowed: Callable[[str], bool]
) -> Callable[[Any], Any]:
    """A `finish` that leaves out of the response's `field` the entries whose name is not
    `allowed` (asked once per name). Not denials: a listing shows what one may see, and Kafka
    neither audits nor counts what it leaves out."""
    verdicts: dict[str, bool] = {}

    def visible(entry: Any) -> bool:
        name = name_of(entry)
        verdict = verdicts.get(name)
        if verdict is None:
            verdict = verdicts[name] = allowed(name)
        return verdict

    def finish(response: Any) -> Any:
        if response is None or isinstance(response, BrokerError):
            return response
        kept = tuple(entry for entry in getattr(response, field) if visible(entry))
        return dataclasses.replace(response, **{field: kept})

    return finish


def _admit_listing(request: Any, can: Can, denied_entry: Callable[[str, str], Any]) -> Admission:
    denials: list[Denial] = []
    # Creating a topic on a metadata request needs CREATE as create_topics does.
    auto_create = getattr(request, "allow_auto_create", False) and request.topics
    if auto_create and not all(
        can(T, name, W.CREATE) or can(C, CLUSTER_NAME, W.CREATE) for name in request.topics
    ):
        request = dataclasses.replace(request, allow_auto_create=False)
    if request.topics is None:
        leave_out = _keep_allowed("topics", lambda t: t.name, lambda name: can(T, name, W.DESCRIBE))
        return Admission(request, denials, leave_out)
    allowed = [name for name in request.topics if can(T, name, W.DESCRIBE)]
    refused = [name for name in request.topics if name not in allowed]
    if not refused:
        return Admission(request, denials)
    denials.extend(Denial(T, name, W.DESCRIBE) for name in refused)
    entries = tuple(denied_entry(name, denial_message(T, name, W.DESCRIBE)) for name in refused)
    kept = dataclasses.replace(request, topics=tuple(allowed))
    return Admission(kept, denials, _with_denied("topics", entries))


def _topic_metadata(name: str, message: str) -> codec.TopicMetadata:
    return codec.TopicMetadata(
        name=name, error=ErrorCode.TOPIC_AUTHORIZATION_FAILED, error_message=message
    )


def _topic_description(name: str, message: str) -> codec.TopicDescription:
    return codec.TopicDescription(
        name=name, error=ErrorCode.TOPIC_AUTHORIZATION_FAILED, error_message=message
    )


LISTING_RULES: Final[dict[type[Any], Callable[[str, str], Any]]] = {
    codec.MetadataRequest: _topic_metadata,
    codec.DescribeTopicsRequest: _topic_description,
}


def _admit_list_groups(request: codec.ListGroupsRequest, can: Can) -> Admission:
    """Every group with DESCRIBE on the cluster, else those the principal may DESCRIBE (Kafka)."""
    if can(C, CLUSTER_NAME, W.DESCRIBE):
        return Admission(request, [])
    groups = _keep_allowed("groups", lambda g: g.group_id, lambda name: can(G, name, W.DESCRIBE))
    return Admission(request, [], groups)


def _admit_list_transactions(request: codec.ListTransactionsRequest, can: Can) -> Admission:
    """The transactional ids the principal may DESCRIBE (KIP-664: no cluster-wide shortcut)."""
    ids = _keep_allowed(
        "transactions", lambda t: t.transactional_id, lambda name: can(X, name, W.DESCRIBE)
    )
    return Admission(request, [], ids)


# Listings of other resources than topics: nothing is asked for by name, the answer is filtered.
FILTER_RULES: Final[dict[type[Any], Callable[[Any, Can], Admission]]] = {
    codec.ListGroupsRequest: _admit_list_groups,
    codec.ListTransactionsRequest: _admit_list_transactions,
}


def admit(request: Any, can: Can) -> Admission:
    """Decide `request` (see the module docstring); raises BrokerError for a whole-request
    denial, with the denial in `exc.denials`."""
    item_rule = ITEM_RULES.get(type(request))
    if item_rule is not None:
        return _admit_items(request, item_rule, can)
    listing = LISTING_RULES.get(type(request))
    if listing is not None:
        return _admit_listing(request, can, listing)
    filtered = FILTER_RULES.get(type(request))
    if filtered is not None:
        return filtered(request, can)
    whole = WHOLE_RULES.get(type(request))
    assert whole is not None, f"no authorization rule for {type(request).__name__}"
    _check_whole(whole(request), can)
    return Admission(request, [])


def _check_whole(needs: Iterable[Need], can: Can) -> None:
    """Raise DeniedError for the first requirement none of whose alternatives is allowed."""
    denials: list[Denial] = []
    try:
        _check(needs, can, denials)
    except BrokerError as exc:
        raise DeniedError(exc.code, exc.message, denials) from None


class DeniedError(BrokerError):
    """A whole request was denied; `denials` says what for (audit log, counter)."""

    def __init__(self, code: ErrorCode, message: str, denials: list[Denial]) -> None:
        super().__init__(code, message)
        self.denials = denials


def covered_apis() -> set[codec.ApiKey]:
    """The APIs some rule covers (a test checks that this is every API but the handshake and the
    SASL login, which the connection's authentication answers before any rule runs)."""
    types = set(WHOLE_RULES) | set(ITEM_RULES) | set(LISTING_RULES) | set(FILTER_RULES)
    return {cls.API for cls in types}
