"""`CoordinatorCalls`: requests to a group's coordinator, found again while it moves.

Shared by the share consumer and the admin client; the consumer group member has its own, tied to
its membership (client/aio/group.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from client.aio.cluster import RETRY_BACKOFF_MAX_S, Cluster
from client.aio.group import COORDINATOR_ERRORS
from client.errors import ClientClosedError, ClientError
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

log = logging.getLogger("client.coordinator")


def _response_error(response: Any) -> tuple[ErrorCode, str]:
    return response.error, response.error_message


class CoordinatorCalls:
    """Sends a group's requests to its coordinator: a share group's (`key_type`
    COORDINATOR_KEY_SHARE, the share consumer's and the admin client's) or a consumer group's
    (COORDINATOR_KEY_GROUP, the admin client's offset requests).

    `call` finds the coordinator (FindCoordinator with `key_type`) and finds it
    again, with backoff, while it answers NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE or
    COORDINATOR_LOAD_IN_PROGRESS or cannot be reached, for up to `request_timeout_ms`; then it
    raises the last error. Any other error the response states is raised as `BrokerError`.
    """

    def __init__(
        self,
        cluster: Cluster,
        group_id: str,
        *,
        retry_backoff_s: float,
        key_type: int = codec.COORDINATOR_KEY_SHARE,
    ) -> None:
        self._cluster = cluster
        self.group_id = group_id
        self._retry_backoff_s = retry_backoff_s
        self._key_type = key_type
        self._kind = "share group" if key_type == codec.COORDINATOR_KEY_SHARE else "group"
        self.node_id: int | None = None

    async def call(
        self,
        request: Any,
        *,
        extra_timeout_s: float = 0.0,
        error_of: Callable[[Any], tuple[ErrorCode, str]] = _response_error,
    ) -> Any:
        """`request`'s response; `error_of(response)` tells its error (default: the
        response's own `error` and `error_message`)."""
        cluster = self._cluster
        deadline = trio.current_time() + cluster.request_timeout_s
        backoff = self._retry_backoff_s
        while True:
            try:
                if self.node_id is None:
                    self.node_id = await cluster.find_coordinator(self.group_id, self._key_type)
                response = await cluster.call(
                    request, self.node_id, extra_timeout_s=extra_timeout_s
                )
                code, message = error_of(response)
                if code is not ErrorCode.NONE:
                    message = message or f"{self._kind} {self.group_id!r}: {code.name}"
                    raise BrokerError(code, message)
                return response
            except ClientClosedError:
                raise
            except (ClientError, BrokerError) as exc:
                # A dead connection or a coordinator that moved: find it again and retry.
                retriable = isinstance(exc, ClientError) or exc.code in COORDINATOR_ERRORS
                if not retriable or trio.current_time() + backoff >= deadline:
                    raise
                log.info("%s %s: %s; retrying", self._kind, self.group_id, exc)
            self.node_id = None
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
