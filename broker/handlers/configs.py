"""AlterTopicConfigs: change a topic's config overrides (`broker-cli topics alter-config`).

A single node validates, persists (LMDB) and applies the change to the topic's open logs
(`TopicManager.alter_configs`). In a cluster a topic's configs are controller metadata: the
request runs on the controller leader (forwarded there by any other broker), which commits one
`ConfigSet` record per changed key; every broker hosting a replica applies the new configs to
its log when it applies the records (broker/cluster/replicas.py).
"""

from __future__ import annotations

from typing import Any

from broker.handlers.context import BrokerContext
from broker.handlers.controller_forward import on_controller
from broker.handlers.reply import Deferred
from wire import codec
from wire.error_codes import BrokerError


def handle_alter_topic_configs(
    ctx: BrokerContext, request: codec.AlterTopicConfigsRequest
) -> codec.AlterTopicConfigsResponse | Deferred:
    if ctx.cluster is not None:

        async def run_here(controller: Any) -> codec.AlterTopicConfigsResponse:
            topic = await controller.alter_topic_configs(
                request.topic, request.configs, request.reset
            )
            return codec.AlterTopicConfigsResponse(configs=dict(topic.configs))

        return on_controller(ctx, request, codec.AlterTopicConfigsResponse, run_here)
    try:
        record = ctx.topics.alter_configs(request.topic, request.configs, request.reset)
    except BrokerError as exc:
        return codec.AlterTopicConfigsResponse(error=exc.code, error_message=exc.message)
    return codec.AlterTopicConfigsResponse(configs=dict(record.configs))
