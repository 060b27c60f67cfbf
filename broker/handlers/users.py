"""AlterUserScramCredentials and DescribeUserScramCredentials: `broker-cli users`.

Credentials arrive already derived (salt, iterations, StoredKey, ServerKey; the client derives
them from the password, which never reaches the broker). On a single node they are written to
LMDB (`broker.auth.users.LocalUsers`); in a cluster the controller leader (any other broker
forwards the request there) commits them to the metadata log, and every broker applies them.
Describe answers from the users this broker knows (a cluster's: the metadata it has applied),
with mechanisms and iteration counts only. Who may call them is `broker.auth.session`'s rule.
"""

from __future__ import annotations

from typing import Any

from broker.controller.scram_users import describe
from broker.handlers.context import BrokerContext
from broker.handlers.controller_forward import on_controller
from broker.handlers.reply import Deferred
from wire import codec


def handle_alter_user_scram_credentials(
    ctx: BrokerContext, request: codec.AlterUserScramCredentialsRequest
) -> codec.AlterUserScramCredentialsResponse | Deferred:
    if ctx.cluster is not None:

        async def run_here(controller: Any) -> codec.AlterUserScramCredentialsResponse:
            results = await controller.alter_scram_credentials(
                request.upsertions, request.deletions
            )
            return codec.AlterUserScramCredentialsResponse(results=tuple(results))

        return on_controller(ctx, request, codec.AlterUserScramCredentialsResponse, run_here)
    results = ctx.users.alter(request.upsertions, request.deletions)
    return codec.AlterUserScramCredentialsResponse(results=tuple(results))


def handle_describe_user_scram_credentials(
    ctx: BrokerContext, request: codec.DescribeUserScramCredentialsRequest
) -> codec.DescribeUserScramCredentialsResponse:
    return describe(ctx.users.users, request.users)
