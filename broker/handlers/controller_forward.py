"""Requests that only the controller leader may answer (reassignment, decommission, topic
configs): run on the local controller when it leads, else forwarded unchanged to the leader and
its answer relayed (as CreateTopics is, KIP-590). With no leader known the answer is
NOT_CONTROLLER with the leader hint (retriable; the client retries). A single-node broker has no
controller: INVALID_REQUEST.

Topic creation and deletion use their own forwarding loop (broker/handlers/cluster.py), which
also re-sends across a controller failover and waits for the local metadata cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from broker.cluster.controller_service import NotControllerError
from broker.handlers.context import BrokerContext
from broker.handlers.reply import Deferred
from wire.error_codes import BrokerError, ErrorCode


def require_cluster(ctx: BrokerContext) -> Any:
    """This broker's cluster node; INVALID_REQUEST on a single-node broker."""
    if ctx.cluster is None:
        raise BrokerError(
            ErrorCode.INVALID_REQUEST,
            "this broker is a single node (no --peers): the request needs a cluster",
        )
    return ctx.cluster


def on_controller(
    ctx: BrokerContext,
    request: Any,
    response_type: type[Any],
    run_here: Callable[[Any], Awaitable[Any]],
) -> Deferred:
    """`run_here(controller)` if the local controller leads, else `request` forwarded to the
    leader; errors become a `response_type` carrying the code and message."""

    async def run() -> Any:
        try:
            node = require_cluster(ctx)
            controller = node.controller
            leader = controller.leader_id
            if controller.is_leader:
                return await run_here(controller)
            if not leader or leader == node.node_id:
                raise NotControllerError(node.node_id, 0)
            return await node.peer_clients.call(
                leader, request, extra_timeout_s=controller.config.command_timeout_ms / 1000
            )
        except NotControllerError as exc:
            return response_type(
                error=exc.code, error_message=exc.message, leader_hint=exc.leader_hint
            )
        except BrokerError as exc:
            return response_type(error=exc.code, error_message=exc.message)

    return Deferred(run)
