"""Hypothesis strategies for ACL bindings and the security metadata records."""

from __future__ import annotations

from hypothesis import strategies as st

from broker.controller.records import AclCreated, AclDeleted, ClientQuotaSet, acl_record
from broker.security.acl import (
    CLUSTER_NAME,
    AclBinding,
    Operation,
    PatternType,
    Permission,
    ResourceType,
)
from broker.security.quota import DEFAULT, QuotaKind

# Few distinct values, so that drawn bindings and queries collide often.
principals = st.sampled_from(["User:alice", "User:bob", "User:*", "User:CN=host,O=org"])
hosts = st.sampled_from(["*", "10.0.0.1", "10.0.0.2"])
resource_names = st.sampled_from(["a", "ab", "abc", "b", "bc", "*"])


@st.composite
def bindings(draw: st.DrawFn) -> AclBinding:
    resource_type = draw(st.sampled_from(ResourceType))
    pattern_type = draw(st.sampled_from(PatternType))
    if resource_type is ResourceType.CLUSTER:
        name = CLUSTER_NAME
    else:
        name = draw(
            resource_names.filter(lambda n: n != "*" or pattern_type is PatternType.LITERAL)
        )
    return AclBinding(
        resource_type=resource_type,
        resource_name=name,
        pattern_type=pattern_type,
        principal=draw(principals),
        host=draw(hosts),
        operation=draw(st.sampled_from(Operation)),
        permission=draw(st.sampled_from(Permission)),
    )


entity_names = st.one_of(st.none(), st.just(DEFAULT), st.sampled_from(["alice", "app-1"]))


@st.composite
def quota_records(draw: st.DrawFn) -> ClientQuotaSet:
    user, client_id = draw(entity_names), draw(entity_names)
    if user is None and client_id is None:
        user = "alice"  # an entity names a user, a client id, or both
    return ClientQuotaSet(
        user,
        client_id,
        draw(st.sampled_from([kind.value for kind in QuotaKind])),
        draw(st.one_of(st.none(), st.integers(1, 2**53))),
    )


security_records = st.one_of(
    bindings().map(lambda binding: acl_record(AclCreated, binding)),
    bindings().map(lambda binding: acl_record(AclDeleted, binding)),
    quota_records(),
)
