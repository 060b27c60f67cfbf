"""ACLs and the authorizer: who may do what to which resource (Kafka's AclAuthorizer, pure).

An ACL binding is (principal, host, resource type, resource pattern, operation, permission). A
request is allowed when no DENY binding matches it and at least one ALLOW binding does; super
users skip the check; with `allow_everyone_if_no_acl_found` a resource that no binding names at
all is open to everyone (Kafka's `allow.everyone.if.no.acl.found`, off by default here).

Matching, as Kafka does:
- a LITERAL pattern matches its exact name, and the literal name `*` matches every name;
- a PREFIXED pattern matches every name that starts with it;
- principal `User:*` matches every principal, host `*` every host;
- operation ALL matches every operation; an ALLOW of READ, WRITE, DELETE or ALTER implies
  DESCRIBE, and an ALLOW of ALTER_CONFIGS implies DESCRIBE_CONFIGS (DENY implies nothing).

`AclIndex` keeps the bindings by (resource type, pattern type, name), plus the distinct lengths of
the prefixed names per resource type, so a check looks up the literal name, `*`, and one prefix of
the name per distinct prefix length: O(matching candidates), never O(all ACLs).

Rules: pure (no I/O, clock or randomness). Iteration orders are sorted where they reach output.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator
from typing import Final

WILDCARD: Final = "*"
# The one name of the cluster resource (Kafka's).
CLUSTER_NAME: Final = "kafka-cluster"
ANONYMOUS: Final = "User:ANONYMOUS"
WILDCARD_PRINCIPAL: Final = "User:*"
# Bounds on what a binding may hold, so a bad request or record cannot build huge objects.
NAME_LENGTH_MAX: Final = 255
PRINCIPAL_LENGTH_MAX: Final = 255
HOST_LENGTH_MAX: Final = 255


class AclError(ValueError):
    """A binding or filter field is not valid; the message names the field and the choices."""


class ResourceType(enum.Enum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"
    TRANSACTIONAL_ID = "transactional_id"


class PatternType(enum.Enum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(enum.Enum):
    ALL = "all"
    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    ALTER = "alter"
    DESCRIBE = "describe"
    CLUSTER_ACTION = "cluster_action"
    DESCRIBE_CONFIGS = "describe_configs"
    ALTER_CONFIGS = "alter_configs"
    IDEMPOTENT_WRITE = "idempotent_write"


class Permission(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


# The ALLOW operations that grant each operation (Kafka's implied operations).
_GRANTED_BY: Final[dict[Operation, frozenset[Operation]]] = {
    op: frozenset({op, Operation.ALL}) for op in Operation
}
_GRANTED_BY[Operation.DESCRIBE] = frozenset(
    {
        Operation.DESCRIBE,
        Operation.READ,
        Operation.WRITE,
        Operation.DELETE,
        Operation.ALTER,
        Operation.ALL,
    }
)
_GRANTED_BY[Operation.DESCRIBE_CONFIGS] = frozenset(
    {Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS, Operation.ALL}
)


def parse_enum(kind: type[enum.Enum], field: str, value: str) -> enum.Enum:
    """`value` as a member of `kind`, accepting `describe-configs` for `describe_configs` and any
    case; AclError naming the choices otherwise."""
    try:
        return kind(value.strip().lower().replace("-", "_"))
    except (ValueError, AttributeError):
        choices = ", ".join(member.value.replace("_", "-") for member in kind)
        raise AclError(f"{field}: {value!r} is not one of {choices}") from None


def _check_text(field: str, value: object, length_max: int) -> None:
    if not isinstance(value, str) or not value:
        raise AclError(f"{field}: expected a non-empty string, got {value!r}")
    if len(value) > length_max:
        raise AclError(f"{field}: {len(value)} characters is more than {length_max}")


def check_principal(principal: object) -> None:
    """A principal is `Type:name` (`User:alice`, `User:*`, `User:CN=host,O=org`)."""
    _check_text("principal", principal, PRINCIPAL_LENGTH_MAX)
    assert isinstance(principal, str)
    kind, _, name = principal.partition(":")
    if not kind or not name:
        raise AclError(f"principal: expected TYPE:NAME such as User:alice, got {principal!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class AclBinding:
    """One ACL. `sort_key` orders them for deterministic listings and snapshots."""

    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: Operation
    permission: Permission

    def __post_init__(self) -> None:
        _check_text("resource_name", self.resource_name, NAME_LENGTH_MAX)
        check_principal(self.principal)
        _check_text("host", self.host, HOST_LENGTH_MAX)
        if self.resource_type is ResourceType.CLUSTER and self.resource_name != CLUSTER_NAME:
            raise AclError(f"resource_name: the cluster resource is named {CLUSTER_NAME!r}")
        if self.pattern_type is PatternType.PREFIXED and self.resource_name == WILDCARD:
            raise AclError("resource_name: '*' is a literal wildcard; it cannot be prefixed")

    def sort_key(self) -> tuple[str, ...]:
        return (
            self.resource_type.value,
            self.resource_name,
            self.pattern_type.value,
            self.principal,
            self.host,
            self.operation.value,
            self.permission.value,
        )

    @classmethod
    def parse(
        cls,
        *,
        resource_type: str,
        resource_name: str,
        pattern_type: str,
        principal: str,
        host: str,
        operation: str,
        permission: str,
    ) -> AclBinding:
        """Build from wire strings; AclError naming the bad field."""
        return cls(
            resource_type=parse_enum(ResourceType, "resource_type", resource_type),  # type: ignore[arg-type]
            resource_name=resource_name,
            pattern_type=parse_enum(PatternType, "pattern_type", pattern_type),  # type: ignore[arg-type]
            principal=principal,
            host=host,
            operation=parse_enum(Operation, "operation", operation),  # type: ignore[arg-type]
            permission=parse_enum(Permission, "permission", permission),  # type: ignore[arg-type]
        )

    def describe(self) -> str:
        """One line for logs and the CLI."""
        pattern = "" if self.pattern_type is PatternType.LITERAL else " (prefixed)"
        return (
            f"{self.permission.value.upper()} {self.principal} from {self.host} "
            f"{self.operation.value} {self.resource_type.value}:{self.resource_name}{pattern}"
        )


# Filter pattern types beyond the binding's: ANY matches both, MATCH every pattern that applies to
# the filter's name (literal name, literal `*`, and prefixes of it), as Kafka's filters do.
FILTER_ANY: Final = "any"
FILTER_MATCH: Final = "match"


@dataclasses.dataclass(frozen=True, slots=True)
class AclFilter:
    """Selects bindings for describe/delete: a None field matches anything."""

    resource_type: ResourceType | None = None
    resource_name: str | None = None
    # A PatternType value, FILTER_ANY or FILTER_MATCH.
    pattern_type: str = FILTER_ANY
    principal: str | None = None
    host: str | None = None
    operation: Operation | None = None
    permission: Permission | None = None

    def __post_init__(self) -> None:
        allowed = {FILTER_ANY, FILTER_MATCH, *(p.value for p in PatternType)}
        if self.pattern_type not in allowed:
            raise AclError(
                f"pattern_type: {self.pattern_type!r} is not one of {', '.join(sorted(allowed))}"
            )
        if self.pattern_type == FILTER_MATCH and self.resource_name is None:
            raise AclError("pattern_type: 'match' needs a resource name to match against")

    def matches(self, binding: AclBinding) -> bool:
        if self.resource_type is not None and binding.resource_type is not self.resource_type:
            return False
        if not self._name_matches(binding):
            return False
        return (
            (self.principal is None or binding.principal == self.principal)
            and (self.host is None or binding.host == self.host)
            and (self.operation is None or binding.operation is self.operation)
            and (self.permission is None or binding.permission is self.permission)
        )

    def _name_matches(self, binding: AclBinding) -> bool:
        if self.pattern_type == FILTER_MATCH:
            assert self.resource_name is not None
            return _pattern_applies(binding, self.resource_name)
        if self.pattern_type != FILTER_ANY and binding.pattern_type.value != self.pattern_type:
            return False
        return self.resource_name is None or binding.resource_name == self.resource_name


def _pattern_applies(binding: AclBinding, name: str) -> bool:
    """Whether `binding`'s pattern covers resource `name`."""
    if binding.pattern_type is PatternType.PREFIXED:
        return name.startswith(binding.resource_name)
    return binding.resource_name in (name, WILDCARD)


_Key = tuple[ResourceType, PatternType, str]


class AclIndex:
    """The set of bindings, indexed for checks (see the module docstring)."""

    def __init__(self, bindings: Iterable[AclBinding] = ()) -> None:
        self._by_pattern: dict[_Key, set[AclBinding]] = {}
        # resource type -> {prefix length: number of prefixed patterns of that length}
        self._prefix_lengths: dict[ResourceType, dict[int, int]] = {}
        self._count = 0
        for binding in bindings:
            self.add(binding)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, binding: object) -> bool:
        if not isinstance(binding, AclBinding):
            return False
        return binding in self._by_pattern.get(_key_of(binding), ())

    def __iter__(self) -> Iterator[AclBinding]:
        """Every binding, sorted."""
        bindings = (b for bucket in self._by_pattern.values() for b in bucket)
        return iter(sorted(bindings, key=AclBinding.sort_key))

    def add(self, binding: AclBinding) -> bool:
        """Add a binding; False if it was there already."""
        bucket = self._by_pattern.setdefault(_key_of(binding), set())
        if binding in bucket:
            return False
        bucket.add(binding)
        self._count += 1
        if binding.pattern_type is PatternType.PREFIXED:
            lengths = self._prefix_lengths.setdefault(binding.resource_type, {})
            length = len(binding.resource_name)
            lengths[length] = lengths.get(length, 0) + 1
        return True

    def remove(self, binding: AclBinding) -> bool:
        """Remove a binding; False if it was not there."""
        key = _key_of(binding)
        bucket = self._by_pattern.get(key)
        if bucket is None or binding not in bucket:
            return False
        bucket.discard(binding)
        if not bucket:
            del self._by_pattern[key]
        self._count -= 1
        if binding.pattern_type is PatternType.PREFIXED:
            lengths = self._prefix_lengths[binding.resource_type]
            length = len(binding.resource_name)
            lengths[length] -= 1
            if not lengths[length]:
                del lengths[length]
        return True

    def matching(self, acl_filter: AclFilter) -> list[AclBinding]:
        """The bindings `acl_filter` selects, sorted."""
        return [binding for binding in self if acl_filter.matches(binding)]

    def candidates(self, resource_type: ResourceType, name: str) -> Iterator[AclBinding]:
        """Every binding whose pattern covers resource `name`: the literal name, the literal
        wildcard, and each prefixed pattern that is a prefix of the name."""
        get = self._by_pattern.get
        yield from get((resource_type, PatternType.LITERAL, name), ())
        if name != WILDCARD:
            yield from get((resource_type, PatternType.LITERAL, WILDCARD), ())
        for length in self._prefix_lengths.get(resource_type, {}):
            if length <= len(name):
                yield from get((resource_type, PatternType.PREFIXED, name[:length]), ())

    def allows_any(
        self, principal: str, host: str, resource_type: ResourceType, operation: Operation
    ) -> bool:
        """Whether some ALLOW binding grants `operation` on some resource of `resource_type` to
        the principal (Kafka's KIP-679 check for idempotent producers: WRITE on any topic)."""
        granted = _GRANTED_BY[operation]
        return any(
            binding.permission is Permission.ALLOW
            and binding.operation in granted
            and _principal_matches(binding, principal)
            and _host_matches(binding, host)
            for (kind, _, _), bucket in self._by_pattern.items()
            if kind is resource_type
            for binding in bucket
        )


def _key_of(binding: AclBinding) -> _Key:
    return (binding.resource_type, binding.pattern_type, binding.resource_name)


def _principal_matches(binding: AclBinding, principal: str) -> bool:
    return binding.principal in (principal, WILDCARD_PRINCIPAL)


def _host_matches(binding: AclBinding, host: str) -> bool:
    return binding.host in (host, WILDCARD)


@dataclasses.dataclass(frozen=True, slots=True)
class AuthorizerConfig:
    """`super_users`: principals that bypass every check (`User:admin`)."""

    super_users: frozenset[str] = frozenset()
    allow_everyone_if_no_acl_found: bool = False


def authorize(
    index: AclIndex,
    config: AuthorizerConfig,
    *,
    principal: str,
    host: str,
    operation: Operation,
    resource_type: ResourceType,
    name: str,
) -> bool:
    """Whether `principal` connected from `host` may do `operation` on the resource. Deny wins
    over allow; no matching allow is a denial (see the module docstring)."""
    assert operation is not Operation.ALL, "ALL is an ACL operation, never a requested one"
    if principal in config.super_users:
        return True
    granted = _GRANTED_BY[operation]
    allowed = False
    any_binding = False
    for binding in index.candidates(resource_type, name):
        any_binding = True
        if not (_principal_matches(binding, principal) and _host_matches(binding, host)):
            continue
        if binding.permission is Permission.DENY:
            if binding.operation in (operation, Operation.ALL):
                return False
        elif binding.operation in granted:
            allowed = True
    if not any_binding and config.allow_everyone_if_no_acl_found:
        return True
    return allowed
