"""Handler of `broker-cli cluster decommission` (docs/cluster.md "Membership").

It runs on the controller leader, which records `BrokerDecommissioning` and answers at once; the
leader's `MembershipService` then moves the broker's replicas and vote away and removes it, and
the client follows the progress in `cluster status`. Any other broker forwards the request (as
reassignment requests are, KIP-590). A single-node broker answers INVALID_REQUEST.
"""

from __future__ import annotations

from typing import Any

from broker.handlers.context import BrokerContext
from broker.handlers.controller_forward import on_controller
from broker.handlers.reply import Deferred
from wire import codec


def handle_decommission_broker(
    ctx: BrokerContext, request: codec.DecommissionBrokerRequest
) -> Deferred:
    async def run_here(controller: Any) -> codec.DecommissionBrokerResponse:
        await controller.decommission_broker(request.node_id)
        return codec.DecommissionBrokerResponse()

    return on_controller(ctx, request, codec.DecommissionBrokerResponse, run_here)
