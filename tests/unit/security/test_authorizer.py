"""The authorizer core: every operation allowed and denied on literal and prefixed patterns, deny
over allow, super users, wildcards, implied operations, the no-ACL policy; and, by hypothesis, the
indexed check against a naive scan of every binding."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.security.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclError,
    AclFilter,
    AclIndex,
    AuthorizerConfig,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    authorize,
)
from tests.unit.security.strategies import bindings, hosts, principals, resource_names

ALICE = "User:alice"
BOB = "User:bob"
HOST = "10.0.0.1"
REQUESTED = [op for op in Operation if op is not Operation.ALL]
NAMED_TYPES = [ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID]
CLOSED = AuthorizerConfig()


def acl(
    operation: Operation,
    *,
    resource_type: ResourceType = ResourceType.TOPIC,
    name: str = "orders",
    pattern_type: PatternType = PatternType.LITERAL,
    principal: str = ALICE,
    host: str = "*",
    permission: Permission = Permission.ALLOW,
) -> AclBinding:
    if resource_type is ResourceType.CLUSTER:
        name = CLUSTER_NAME
    return AclBinding(resource_type, name, pattern_type, principal, host, operation, permission)


def check(
    index: AclIndex,
    operation: Operation,
    *,
    resource_type: ResourceType = ResourceType.TOPIC,
    name: str = "orders",
    principal: str = ALICE,
    host: str = HOST,
    config: AuthorizerConfig = CLOSED,
) -> bool:
    if resource_type is ResourceType.CLUSTER:
        name = CLUSTER_NAME
    return authorize(
        index,
        config,
        principal=principal,
        host=host,
        operation=operation,
        resource_type=resource_type,
        name=name,
    )


# (resource type, pattern type): the cluster resource has one name, so no prefixed pattern.
PATTERNS = [
    (resource_type, pattern_type)
    for resource_type in ResourceType
    for pattern_type in PatternType
    if not (resource_type is ResourceType.CLUSTER and pattern_type is PatternType.PREFIXED)
]


@pytest.mark.parametrize(("resource_type", "pattern_type"), PATTERNS)
@pytest.mark.parametrize("operation", REQUESTED)
def test_each_operation_allowed_only_by_its_acl(
    resource_type: ResourceType, operation: Operation, pattern_type: PatternType
) -> None:
    """The matrix: an ALLOW of `operation` grants exactly it (plus what it implies), on the
    named resource (literal) or every resource under the prefix (prefixed)."""
    pattern_name = "ord" if pattern_type is PatternType.PREFIXED else "orders"
    index = AclIndex([acl(operation, resource_type=resource_type, name=pattern_name,
                          pattern_type=pattern_type)])  # fmt: skip
    assert check(index, operation, resource_type=resource_type)
    # Other principals, and (for named resources) names the pattern does not cover: denied.
    assert not check(index, operation, resource_type=resource_type, principal=BOB)
    if resource_type is not ResourceType.CLUSTER:
        assert not check(index, operation, resource_type=resource_type, name="payments")
    # Other resource types: denied.
    for other in ResourceType:
        if other is not resource_type:
            assert not check(index, operation, resource_type=other)
    # Other operations: denied unless implied.
    implied = {
        Operation.DESCRIBE: {Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER},
        Operation.DESCRIBE_CONFIGS: {Operation.ALTER_CONFIGS},
    }
    for other in REQUESTED:
        expected = other is operation or operation in implied.get(other, set())
        assert check(index, other, resource_type=resource_type) is expected, other


@pytest.mark.parametrize(("resource_type", "pattern_type"), PATTERNS)
@pytest.mark.parametrize("operation", REQUESTED)
def test_deny_wins_over_allow(
    resource_type: ResourceType, operation: Operation, pattern_type: PatternType
) -> None:
    deny_name = "ord" if pattern_type is PatternType.PREFIXED else "orders"
    index = AclIndex(
        [
            acl(Operation.ALL, resource_type=resource_type),
            acl(operation, resource_type=resource_type, name=deny_name, pattern_type=pattern_type,
                permission=Permission.DENY),
        ]
    )  # fmt: skip
    assert not check(index, operation, resource_type=resource_type)
    # The deny is of one operation; ALL still grants the others.
    others = [op for op in REQUESTED if op is not operation]
    assert all(check(index, op, resource_type=resource_type) for op in others)


def test_deny_all_denies_every_operation_and_implies_nothing_more() -> None:
    index = AclIndex(
        [acl(Operation.ALL), acl(Operation.ALL, permission=Permission.DENY, principal="User:*")]
    )
    assert not any(check(index, op) for op in REQUESTED)
    # A DENY of READ does not deny DESCRIBE (only allows imply).
    index = AclIndex([acl(Operation.DESCRIBE), acl(Operation.READ, permission=Permission.DENY)])
    assert check(index, Operation.DESCRIBE)
    assert not check(index, Operation.READ)


def test_no_acl_means_denied_unless_allow_everyone_if_no_acl_found() -> None:
    empty = AclIndex()
    assert not any(check(empty, op, resource_type=t) for op in REQUESTED for t in ResourceType)
    open_config = AuthorizerConfig(allow_everyone_if_no_acl_found=True)
    assert check(empty, Operation.WRITE, config=open_config)
    # Once any ACL names the resource, the policy no longer applies: only its ALLOWs count.
    named = AclIndex([acl(Operation.READ, principal=BOB)])
    assert not check(named, Operation.WRITE, config=open_config)
    assert check(named, Operation.WRITE, name="payments", config=open_config)


def test_super_users_bypass_even_a_deny() -> None:
    index = AclIndex([acl(Operation.ALL, principal="User:*", permission=Permission.DENY)])
    config = AuthorizerConfig(super_users=frozenset({"User:admin"}))
    for resource_type, op in itertools.product(ResourceType, REQUESTED):
        assert check(index, op, resource_type=resource_type, principal="User:admin", config=config)
        assert not check(index, op, resource_type=resource_type, config=config)


@pytest.mark.parametrize("resource_type", NAMED_TYPES)
def test_wildcards(resource_type: ResourceType) -> None:
    """The literal name `*` covers every name, principal `User:*` every principal, host `*`
    every host; a host-specific ACL only that host."""
    index = AclIndex([acl(Operation.READ, resource_type=resource_type, name="*",
                          principal="User:*")])  # fmt: skip
    assert check(index, Operation.READ, resource_type=resource_type, name="anything", principal=BOB)
    host_only = AclIndex([acl(Operation.READ, resource_type=resource_type, host=HOST)])
    assert check(host_only, Operation.READ, resource_type=resource_type, host=HOST)
    assert not check(host_only, Operation.READ, resource_type=resource_type, host="10.9.9.9")


def test_prefixed_pattern_covers_longer_names_only() -> None:
    index = AclIndex([acl(Operation.WRITE, name="pay.", pattern_type=PatternType.PREFIXED)])
    assert check(index, Operation.WRITE, name="pay.in")
    assert check(index, Operation.WRITE, name="pay.")
    assert not check(index, Operation.WRITE, name="pay")
    assert not check(index, Operation.WRITE, name="xpay.in")


def test_binding_validation_names_the_field() -> None:
    with pytest.raises(AclError, match="principal"):
        acl(Operation.READ, principal="alice")
    with pytest.raises(AclError, match="cluster resource"):
        AclBinding(ResourceType.CLUSTER, "c", PatternType.LITERAL, ALICE, "*", Operation.ALTER,
                   Permission.ALLOW)  # fmt: skip
    with pytest.raises(AclError, match="cannot be prefixed"):
        acl(Operation.READ, name="*", pattern_type=PatternType.PREFIXED)
    with pytest.raises(AclError, match="describe-configs"):
        AclBinding.parse(
            resource_type="topic", resource_name="t", pattern_type="literal", principal=ALICE,
            host="*", operation="descrbe", permission="allow",
        )  # fmt: skip
    parsed = AclBinding.parse(
        resource_type="transactional-id", resource_name="t", pattern_type="PREFIXED",
        principal=ALICE, host="*", operation="idempotent-write", permission="deny",
    )  # fmt: skip
    assert parsed.operation is Operation.IDEMPOTENT_WRITE
    assert parsed.resource_type is ResourceType.TRANSACTIONAL_ID


def test_filters_select_by_every_field_and_match() -> None:
    literal = acl(Operation.READ)
    prefixed = acl(Operation.WRITE, name="ord", pattern_type=PatternType.PREFIXED, principal=BOB)
    wildcard = acl(Operation.READ, name="*", permission=Permission.DENY)
    group = acl(Operation.READ, resource_type=ResourceType.GROUP, name="orders")
    index = AclIndex([literal, prefixed, wildcard, group])
    assert index.matching(AclFilter()) == sorted(
        [literal, prefixed, wildcard, group], key=AclBinding.sort_key
    )
    assert index.matching(AclFilter(principal=BOB)) == [prefixed]
    assert index.matching(AclFilter(resource_type=ResourceType.GROUP)) == [group]
    assert index.matching(AclFilter(permission=Permission.DENY)) == [wildcard]
    assert index.matching(AclFilter(pattern_type="prefixed")) == [prefixed]
    assert set(index.matching(AclFilter(resource_name="orders"))) == {literal, group}
    match = AclFilter(
        resource_type=ResourceType.TOPIC, resource_name="orders", pattern_type="match"
    )
    assert set(index.matching(match)) == {literal, prefixed, wildcard}
    with pytest.raises(AclError):
        AclFilter(pattern_type="match")


def test_allows_any_is_kip_679_for_idempotent_producers() -> None:
    index = AclIndex([acl(Operation.WRITE, name="t")])
    assert index.allows_any(ALICE, HOST, ResourceType.TOPIC, Operation.WRITE)
    assert not index.allows_any(BOB, HOST, ResourceType.TOPIC, Operation.WRITE)
    assert not index.allows_any(ALICE, HOST, ResourceType.GROUP, Operation.WRITE)


# --- the index against a naive reference ---------------------------------------------------------


def reference(
    all_bindings: list[AclBinding],
    config: AuthorizerConfig,
    principal: str,
    host: str,
    operation: Operation,
    resource_type: ResourceType,
    name: str,
) -> bool:
    """Kafka's rules read straight off the documentation, scanning every binding."""
    if principal in config.super_users:
        return True

    def covers(b: AclBinding) -> bool:
        if b.resource_type is not resource_type:
            return False
        if b.pattern_type is PatternType.PREFIXED:
            return name.startswith(b.resource_name)
        return b.resource_name in (name, "*")

    relevant = [b for b in all_bindings if covers(b)]
    mine = [b for b in relevant if b.principal in (principal, "User:*") and b.host in (host, "*")]
    if any(b.permission is Permission.DENY and b.operation in (operation, Operation.ALL)
           for b in mine):  # fmt: skip
        return False
    implied = {
        Operation.DESCRIBE: {Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER},
        Operation.DESCRIBE_CONFIGS: {Operation.ALTER_CONFIGS},
    }.get(operation, set())
    if any(b.permission is Permission.ALLOW
           and (b.operation in (operation, Operation.ALL) or b.operation in implied)
           for b in mine):  # fmt: skip
        return True
    return not relevant and config.allow_everyone_if_no_acl_found


@given(
    st.lists(bindings(), max_size=30),
    st.lists(bindings(), max_size=10),
    principals.filter(lambda p: p != "User:*"),
    hosts.filter(lambda h: h != "*"),
    st.sampled_from(REQUESTED),
    st.sampled_from(ResourceType),
    resource_names.filter(lambda n: n != "*"),
    st.booleans(),
    st.booleans(),
)
def test_index_agrees_with_a_scan_of_every_binding(
    added: list[AclBinding],
    removed: list[AclBinding],
    principal: str,
    host: str,
    operation: Operation,
    resource_type: ResourceType,
    name: str,
    allow_everyone: bool,
    super_user: bool,
) -> None:
    index = AclIndex()
    model: set[AclBinding] = set()
    for binding in added:
        assert index.add(binding) is (binding not in model)
        model.add(binding)
    for binding in removed:
        assert index.remove(binding) is (binding in model)
        model.discard(binding)
    assert len(index) == len(model)
    assert list(index) == sorted(model, key=AclBinding.sort_key)
    if resource_type is ResourceType.CLUSTER:
        name = CLUSTER_NAME
    config = AuthorizerConfig(
        super_users=frozenset({principal}) if super_user else frozenset(),
        allow_everyone_if_no_acl_found=allow_everyone,
    )
    expected = reference(sorted(model, key=AclBinding.sort_key), config, principal, host,
                         operation, resource_type, name)  # fmt: skip
    actual = authorize(index, config, principal=principal, host=host, operation=operation,
                       resource_type=resource_type, name=name)  # fmt: skip
    assert actual is expected


def test_a_check_looks_only_at_matching_candidates() -> None:
    """O(matching prefixes): 10,000 ACLs on other names are never looked at."""
    index = AclIndex(acl(Operation.READ, name=f"topic-{n}") for n in range(10_000))
    index.add(acl(Operation.WRITE, name="topic-1", pattern_type=PatternType.PREFIXED))
    prefix = acl(Operation.WRITE, name="topic-1", pattern_type=PatternType.PREFIXED)
    candidates = list(index.candidates(ResourceType.TOPIC, "topic-12"))
    assert candidates == [acl(Operation.READ, name="topic-12"), prefix]
