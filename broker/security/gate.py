"""The one hook between a connection's decoded request and its handler: authorization (ACLs) and
quotas, in the trio thread.

`BrokerSecurity` is per broker: the authorizer settings, where the replicated `SecurityState` is
read (a single node's `SecurityStore`, or the controller state machine every cluster member
applies), the quota buckets and the denial counter. `ConnectionSecurity` is per connection: its
principal (`User:ANONYMOUS` until an authentication mechanism sets another), host and client id,
and until when it is muted by a quota.

`ConnectionSecurity.handle(request, handler, ctx)`:
1. with the authorizer enabled, `rules.admit` decides the request (broker/security/rules.py);
   every denial is logged on the `broker.audit` logger and counted;
2. the handler runs on what was admitted (not at all if nothing was);
3. the request is charged to the connection's quotas (1 request; a produce request's batch bytes;
   a fetch response's batch bytes, once it is ready), the throttle time goes into produce and
   fetch responses as `throttle_time_ms`, and the connection reads nothing more until it is over
   (Kafka mutes the channel the same way).

With the authorizer off and no quota configured, `handle` is one call to the handler.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import trio

from broker.handlers.reply import Deferred
from broker.security.acl import ANONYMOUS, AuthorizerConfig, Operation, ResourceType, authorize
from broker.security.quota import QuotaCore, QuotaKind, QuotaLimits
from broker.security.rules import Admission, Denial, DeniedError, admit
from broker.security.state import SecurityState
from wire import codec

audit_logger = logging.getLogger("broker.audit")


class BrokerSecurity:
    """Per-broker security: see the module docstring. `state_of()` returns the live state (re-read
    on every request: a cluster's controller replaces its state machine on a snapshot install)."""

    def __init__(
        self,
        *,
        enabled: bool,
        authorizer: AuthorizerConfig,
        quota_limits: QuotaLimits,
        state_of: Callable[[], SecurityState],
        on_denied: Callable[[str, str], None] = lambda operation, resource_type: None,
    ) -> None:
        self.enabled = enabled
        self.authorizer = authorizer
        self.state_of = state_of
        self.quotas = QuotaCore(quota_limits)
        self.on_denied = on_denied

    def connection(self, host: str) -> ConnectionSecurity:
        return ConnectionSecurity(self, host)


class ConnectionSecurity:
    """One connection's principal, client id and quota mute; see the module docstring."""

    def __init__(self, broker: BrokerSecurity, host: str) -> None:
        self.broker = broker
        self.host = host
        # Set by authentication (SASL, mTLS) once the client proved who it is.
        self.principal = ANONYMOUS
        # From the handshake; quotas may be set per client id.
        self.client_id = ""
        # trio clock time before which the connection reads no request (quota throttling).
        self.muted_until = 0.0

    @property
    def user(self) -> str:
        """The principal's name, the quota entity `user` (`User:alice` -> `alice`)."""
        return self.principal.partition(":")[2]

    def can(self, resource_type: ResourceType, name: str | None, operation: Operation) -> bool:
        """The authorizer's answer for this connection (`name=None`: on any resource)."""
        state = self.broker.state_of()
        if name is None:
            return self.principal in self.broker.authorizer.super_users or state.acls.allows_any(
                self.principal, self.host, resource_type, operation
            )
        return authorize(
            state.acls,
            self.broker.authorizer,
            principal=self.principal,
            host=self.host,
            operation=operation,
            resource_type=resource_type,
            name=name,
        )

    @property
    def muted(self) -> bool:
        """Whether a quota throttle forbids reading the next request now."""
        return self.muted_until > trio.current_time()

    async def wait_unmuted(self) -> None:
        """Wait out the quota throttle (the server writes its pending replies first)."""
        await trio.sleep_until(self.muted_until)

    def handle(self, request: Any, handler: Callable[[Any, Any], Any], ctx: Any) -> Any:
        """Authorize, run the handler and charge quotas; a response, None, a Deferred, or (for a
        denied request) raises BrokerError."""
        state = self.broker.state_of()
        quotas_on = len(state.quotas) > 0
        if not self.broker.enabled and not quotas_on:
            return handler(ctx, request)
        admission = self._admit(request) if self.broker.enabled else Admission(request, [])
        reply = None if admission.request is None else handler(ctx, admission.request)
        if isinstance(reply, Deferred):
            deferred = reply

            async def finished() -> Any:
                return self._finish(request, admission, await deferred.run())

            return Deferred(finished)
        return self._finish(request, admission, reply)

    def _admit(self, request: Any) -> Admission:
        try:
            admission = admit(request, self.can)
        except DeniedError as exc:
            self._audit(request, exc.denials)
            if len(self.broker.state_of().quotas):
                self._charge(request, None)
            raise
        self._audit(request, admission.denials)
        return admission

    def _finish(self, request: Any, admission: Admission, reply: Any) -> Any:
        reply = admission.finish(reply)
        if not len(self.broker.state_of().quotas):
            return reply
        throttle_ms = self._charge(request, reply)
        if throttle_ms and isinstance(reply, codec.ProduceResponse | codec.FetchResponse):
            reply = dataclasses.replace(reply, throttle_time_ms=throttle_ms)
        return reply

    def _charge(self, request: Any, reply: Any) -> int:
        """Charge the request (and a fetch reply's bytes) to the quotas; mute for the throttle."""
        charges: list[tuple[QuotaKind, float]] = [(QuotaKind.REQUEST_RATE, 1)]
        if isinstance(request, codec.ProduceRequest):
            size = sum(len(p.records) for p in request.partitions)
            charges.append((QuotaKind.PRODUCER_BYTE_RATE, size))
        if isinstance(reply, codec.FetchResponse):
            size = sum(len(p.records) for p in reply.partitions)
            charges.append((QuotaKind.CONSUMER_BYTE_RATE, size))
        now = trio.current_time()
        throttle_ms = self.broker.quotas.record(
            self.broker.state_of().quotas,
            charges,
            user=self.user,
            client_id=self.client_id,
            now_s=now,
        )
        if throttle_ms:
            self.muted_until = max(self.muted_until, now + throttle_ms / 1000)
        return throttle_ms

    def _audit(self, request: Any, denials: list[Denial]) -> None:
        for denial in denials:
            resource = denial.name if denial.name is not None else "*"
            audit_logger.info(
                "DENIED principal=%s host=%s client_id=%s api=%s operation=%s resource=%s:%s",
                self.principal,
                self.host,
                self.client_id,
                type(request).API.value,
                denial.operation.value,
                denial.resource_type.value,
                resource,
            )
            self.broker.on_denied(denial.operation.value, denial.resource_type.value)
