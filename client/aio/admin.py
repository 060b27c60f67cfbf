"""The trio-native admin client: create, delete, describe and list topics.

Rule: a per-topic error in a response is raised as `BrokerError(code, message)`, the message as
the broker wrote it (it names the offending value), so callers and the CLI can show it as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker import codec
from broker.errors import BrokerError, ErrorCode
from client.aio._base import AsyncClientBase
from client.types import TopicDescription


class AdminClient(AsyncClientBase):
    """`async with AdminClient(bootstrap) as admin: await admin.create_topic("t", 3)`."""

    async def create_topic(
        self,
        name: str,
        partitions: int = -1,
        replication_factor: int = 1,
        config: Mapping[str, Any] | None = None,
        *,
        validate_only: bool = False,
    ) -> None:
        """Create `name`; `partitions=-1` takes the broker default. Raises TOPIC_ALREADY_EXISTS,
        INVALID_PARTITIONS, INVALID_CONFIG... as `BrokerError`."""
        request = codec.CreateTopicsRequest(
            topics=(
                codec.NewTopic(
                    name=name,
                    partitions=partitions,
                    replication_factor=replication_factor,
                    configs=dict(config or {}),
                ),
            ),
            validate_only=validate_only,
        )
        response: codec.CreateTopicsResponse = await self._cluster.call(request)
        _raise_topic_errors(response.topics)
        self._cluster.invalidate(name)

    async def delete_topic(self, name: str) -> None:
        response: codec.DeleteTopicsResponse = await self._cluster.call(
            codec.DeleteTopicsRequest(topics=(name,))
        )
        _raise_topic_errors(response.topics)
        self._cluster.invalidate(name)

    async def describe_topic(self, name: str) -> TopicDescription:
        """Partitions, leaders, offsets (log start/end, high watermark), sizes and configs."""
        (description,) = await self.describe_topics([name])
        return description

    async def describe_topics(self, names: list[str] | None = None) -> list[TopicDescription]:
        request = codec.DescribeTopicsRequest(topics=tuple(names) if names is not None else None)
        response: codec.DescribeTopicsResponse = await self._cluster.call_idempotent(request)
        _raise_topic_errors(response.topics)
        return list(response.topics)

    async def list_topics(self) -> list[str]:
        """Every topic's name, sorted."""
        response = await self._cluster.refresh_metadata(None)
        return sorted(topic.name for topic in response.topics if topic.error is ErrorCode.NONE)


def _raise_topic_errors(results: Any) -> None:
    for result in results:
        if result.error is not ErrorCode.NONE:
            message = result.error_message or f"topic {result.name!r}: {result.error.name}"
            raise BrokerError(result.error, message)
