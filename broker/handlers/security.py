"""CreateAcls, DescribeAcls, DeleteAcls, AlterClientQuotas, DescribeClientQuotas
(`broker-cli acls ...`, `broker-cli quotas ...`; docs/security.md).

A single node validates, persists (LMDB) and applies the change (`SecurityStore.commit`). In a
cluster ACLs and quotas are controller metadata: a change runs on the controller leader
(forwarded there by any other broker), which commits the records; every broker applies them.
Describe requests read this broker's copy of the state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from broker.handlers.context import BrokerContext
from broker.handlers.controller_forward import on_controller
from broker.handlers.reply import Deferred
from broker.security.acl import (
    FILTER_ANY,
    AclBinding,
    AclError,
    AclFilter,
    Operation,
    Permission,
    ResourceType,
    parse_enum,
)
from broker.security.quota import QuotaEntity, QuotaError, check_rate, parse_kind
from broker.security.state import SecurityState, sorted_values
from wire import codec
from wire.error_codes import BrokerError, ErrorCode


def binding_of(data: codec.AclBindingData) -> AclBinding:
    return AclBinding.parse(
        resource_type=data.resource_type,
        resource_name=data.resource_name,
        pattern_type=data.pattern_type,
        principal=data.principal,
        host=data.host,
        operation=data.operation,
        permission=data.permission,
    )


def data_of(binding: AclBinding) -> codec.AclBindingData:
    return codec.AclBindingData(
        resource_type=binding.resource_type.value,
        resource_name=binding.resource_name,
        pattern_type=binding.pattern_type.value,
        principal=binding.principal,
        host=binding.host,
        operation=binding.operation.value,
        permission=binding.permission.value,
    )


def _optional(kind: Any, field: str, value: str) -> Any:
    return None if value == FILTER_ANY else parse_enum(kind, field, value)


def filter_of(data: codec.AclFilterData) -> AclFilter:
    return AclFilter(
        resource_type=_optional(ResourceType, "resource_type", data.resource_type),
        resource_name=data.resource_name,
        pattern_type=data.pattern_type.lower(),
        principal=data.principal,
        host=data.host,
        operation=_optional(Operation, "operation", data.operation),
        permission=_optional(Permission, "permission", data.permission),
    )


def _invalid(exc: Exception) -> BrokerError:
    return BrokerError(ErrorCode.INVALID_REQUEST, str(exc))


def _change(
    ctx: BrokerContext,
    request: Any,
    response_type: type[Any],
    prepare: Callable[[SecurityState], Sequence[Any]],
    answer: Callable[[Sequence[Any]], Any],
) -> Any:
    """Run `prepare` on the current state and commit its records: here on a single node, on the
    controller leader in a cluster; `answer(records)` is the response."""
    if ctx.cluster is not None:
        committed: list[Any] = []

        def prepare_and_keep(state: SecurityState) -> Sequence[Any]:
            records = _prepared(prepare, state)
            committed[:] = records
            return records

        async def run_here(controller: Any) -> Any:
            await controller.alter_security(prepare_and_keep)
            return answer(committed)

        return on_controller(ctx, request, response_type, run_here)
    try:
        records = _prepared(prepare, ctx.security_store.state)
    except BrokerError as exc:
        return response_type(error=exc.code, error_message=exc.message)
    ctx.security_store.commit(records)
    return answer(records)


def _prepared(prepare: Callable[[SecurityState], Sequence[Any]], state: SecurityState) -> Any:
    try:
        return prepare(state)
    except ValueError as exc:  # a limit (ACL_COUNT_MAX, ...) would be passed
        raise BrokerError(ErrorCode.POLICY_VIOLATION, str(exc)) from None


def handle_create_acls(ctx: BrokerContext, request: codec.CreateAclsRequest) -> Any:
    try:
        bindings = [binding_of(data) for data in request.acls]
    except AclError as exc:
        raise _invalid(exc) from None
    return _change(
        ctx,
        request,
        codec.CreateAclsResponse,
        lambda state: state.prepare_create_acls(bindings),
        lambda records: codec.CreateAclsResponse(),
    )


def handle_delete_acls(ctx: BrokerContext, request: codec.DeleteAclsRequest) -> Any:
    try:
        filters = [filter_of(data) for data in request.filters]
    except AclError as exc:
        raise _invalid(exc) from None
    return _change(
        ctx,
        request,
        codec.DeleteAclsResponse,
        lambda state: state.prepare_delete_acls(filters),
        lambda records: codec.DeleteAclsResponse(
            deleted=tuple(data_of(record.binding()) for record in records)
        ),
    )


def handle_describe_acls(
    ctx: BrokerContext, request: codec.DescribeAclsRequest
) -> codec.DescribeAclsResponse:
    try:
        acl_filter = filter_of(request.filter)
    except AclError as exc:
        raise _invalid(exc) from None
    bindings = security_state(ctx).acls.matching(acl_filter)
    return codec.DescribeAclsResponse(acls=tuple(data_of(binding) for binding in bindings))


def _entity_of(data: codec.QuotaEntityData) -> QuotaEntity:
    return QuotaEntity(data.user, data.client_id)


def handle_alter_client_quotas(
    ctx: BrokerContext, request: codec.AlterClientQuotasRequest
) -> codec.AlterClientQuotasResponse | Deferred:
    try:
        entity = _entity_of(request.entity)
        values = {parse_kind(key): value for key, value in request.values.items()}
        remove = [parse_kind(key) for key in request.remove]
        # Rates are checked before anything is committed: one bad value changes nothing.
        for kind, value in values.items():
            check_rate(kind, value)
    except QuotaError as exc:
        raise _invalid(exc) from None
    return _change(
        ctx,
        request,
        codec.AlterClientQuotasResponse,
        lambda state: state.prepare_alter_quotas(entity, values, remove),
        lambda records: codec.AlterClientQuotasResponse(),
    )


def handle_describe_client_quotas(
    ctx: BrokerContext, request: codec.DescribeClientQuotasRequest
) -> codec.DescribeClientQuotasResponse:
    entries = [
        codec.ClientQuotaEntry(
            entity=codec.QuotaEntityData(user=entity.user, client_id=entity.client_id),
            values={kind.value: rate for kind, rate in sorted_values(values)},
        )
        for entity, values in security_state(ctx).quotas.entries()
        if (request.user is None or entity.user == request.user)
        and (request.client_id is None or entity.client_id == request.client_id)
    ]
    return codec.DescribeClientQuotasResponse(entries=tuple(entries))


def security_state(ctx: BrokerContext) -> SecurityState:
    """This broker's copy of the ACLs and quotas."""
    if ctx.cluster is not None:
        return ctx.cluster.controller.machine.security  # type: ignore[no-any-return]
    return ctx.security_store.state  # type: ignore[no-any-return]
