"""The client's view of the cluster: bootstrap, one connection per broker, the metadata cache.

Rules:
- Connections are opened lazily and reopened after they die; a connection is known by the node id
  its handshake reported, so the bootstrap connection doubles as the connection to that node.
- The metadata cache maps each topic to its partitions' leaders. It is refreshed on demand:
  when a topic is first used, and whenever a request fails with NOT_LEADER, UNKNOWN_TOPIC,
  LEADER_NOT_AVAILABLE or a dead connection (`invalidate`). These are the seams for multiple
  brokers: everything routes by `leader(topic, partition)`.
- `call` turns a request-level `ErrorResponse` into a `BrokerError`; per-partition errors stay in
  the response for the caller. It does not retry: only the caller knows whether a request is safe
  to repeat (`call_idempotent` retries transport failures for requests that are).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import trio

from broker import codec
from broker.errors import BrokerError, ErrorCode
from client._bootstrap import Address, format_addresses, parse_bootstrap
from client.aio.connection import (
    MAX_IN_FLIGHT_DEFAULT,
    BrokerConnection,
    open_broker_connection,
)
from client.errors import BrokerUnavailableError, ClientError, ConnectionLostError

CLIENT_ID_DEFAULT = "pybroker-client"
REQUEST_TIMEOUT_MS_DEFAULT = 30_000
# Attempts of an idempotent request (metadata, fetch, list offsets) over fresh connections.
IDEMPOTENT_ATTEMPTS = 3
# Errors after which the cached leaders may be stale.
METADATA_STALE_CODES = frozenset(
    {
        ErrorCode.NOT_LEADER,
        ErrorCode.UNKNOWN_TOPIC,
        ErrorCode.LEADER_NOT_AVAILABLE,
        ErrorCode.UNKNOWN_PARTITION,
        ErrorCode.BROKER_NOT_AVAILABLE,
    }
)

R = TypeVar("R")


class Cluster:
    """Connections and metadata for one client. Create with `open_cluster`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        bootstrap: str | Sequence[str] | None,
        *,
        client_id: str = CLIENT_ID_DEFAULT,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
    ) -> None:
        self._nursery = nursery
        self.bootstrap = parse_bootstrap(bootstrap)
        self.client_id = client_id
        self.request_timeout_s = request_timeout_ms / 1000.0
        self._max_in_flight = max_in_flight
        self._by_node: dict[int, BrokerConnection] = {}
        self._any: BrokerConnection | None = None
        self._connect_lock = trio.Lock()
        self.brokers: dict[int, Address] = {}
        # topic -> leader node id of each partition (index = partition number).
        self.leaders: dict[str, list[int]] = {}
        # topic -> partition count; read without a lock by the blocking producer's threads.
        self.partition_counts: dict[str, int] = {}
        self._metadata_lock = trio.Lock()

    # --- connections ------------------------------------------------------------------------------

    async def connection(self, node_id: int | None = None) -> BrokerConnection:
        """A live connection to `node_id` (None: any broker), opening one if needed."""
        existing = self._by_node.get(node_id) if node_id is not None else self._any
        if existing is not None and not existing.closed:
            return existing
        async with self._connect_lock:
            existing = self._by_node.get(node_id) if node_id is not None else self._any
            if existing is not None and not existing.closed:
                return existing
            if node_id is not None and node_id in self.brokers:
                addresses = [self.brokers[node_id], *self.bootstrap]
            else:
                addresses = [*self.bootstrap, *self.brokers.values()]
            connection = await self._connect_first(addresses)
            node = connection.handshake.get("body", {}).get("node_id", -1)
            self._by_node[node] = connection
            self._any = connection
            if node_id is not None and node != node_id:
                # Single-node clusters answer for every node id the metadata names; with several
                # brokers this is where a wrong bootstrap mapping would surface.
                self._by_node[node_id] = connection
            return connection

    async def _connect_first(self, addresses: list[Address]) -> BrokerConnection:
        handshake, _ = codec.encode_request(
            codec.HandshakeRequest(client_id=self.client_id), correlation_id=0
        )
        reasons: list[str] = []
        for address in dict.fromkeys(addresses):  # unique, in order
            try:
                connection = await open_broker_connection(
                    self._nursery, address, handshake, max_in_flight=self._max_in_flight
                )
            except BrokerUnavailableError as exc:
                reasons.append(exc.reason)
                continue
            except ConnectionLostError as exc:
                reasons.append(str(exc))
                continue
            _check_handshake(connection)
            return connection
        unique = list(dict.fromkeys(addresses))
        raise BrokerUnavailableError(format_addresses(unique), "; ".join(dict.fromkeys(reasons)))

    # --- requests ---------------------------------------------------------------------------------

    async def call(
        self, request: Any, node_id: int | None = None, *, extra_timeout_s: float = 0.0
    ) -> Any:
        """Send `request` and return the decoded response dataclass.

        Raises `BrokerError` for a request-level error, `BrokerUnavailableError`,
        `ConnectionLostError`, `RequestTimedOutError`.
        """
        connection = await self.connection(node_id)
        header, payload = codec.encode_request(request, correlation_id=0)
        frame = await connection.request(
            header, payload, timeout_s=self.request_timeout_s + extra_timeout_s
        )
        try:
            response = codec.decode_response(frame.header, frame.payload)
        except BrokerError as exc:
            raise BrokerError(
                ErrorCode.UNKNOWN_SERVER_ERROR, f"cannot decode the broker's response: {exc}"
            ) from exc
        if isinstance(response, codec.ErrorResponse):
            raise BrokerError(response.error, response.error_message)
        return response

    async def call_oneway(self, request: Any, node_id: int | None = None) -> None:
        connection = await self.connection(node_id)
        header, payload = codec.encode_request(request, correlation_id=0)
        await connection.send_oneway(header, payload)

    async def call_idempotent(
        self, request: Any, node_id: int | None = None, *, extra_timeout_s: float = 0.0
    ) -> Any:
        """`call`, repeated over a fresh connection if the old one died (safe to repeat only)."""
        for attempt in range(IDEMPOTENT_ATTEMPTS):
            try:
                return await self.call(request, node_id, extra_timeout_s=extra_timeout_s)
            except ConnectionLostError:
                if attempt == IDEMPOTENT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    # --- metadata ---------------------------------------------------------------------------------

    async def refresh_metadata(self, topics: Sequence[str] | None) -> codec.MetadataResponse:
        """Fetch metadata for `topics` (None: all) and update the cache."""
        async with self._metadata_lock:
            request = codec.MetadataRequest(topics=tuple(topics) if topics is not None else None)
            response: codec.MetadataResponse = await self.call_idempotent(request)
            for broker in response.brokers:
                self.brokers[broker.node_id] = (broker.host, broker.port)
            for topic in response.topics:
                if topic.error is ErrorCode.NONE:
                    ordered = sorted(topic.partitions, key=lambda p: p.partition)
                    self.leaders[topic.name] = [p.leader_id for p in ordered]
                    self.partition_counts[topic.name] = len(ordered)
                else:
                    self.invalidate(topic.name)
            return response

    async def topic_partitions(self, topic: str) -> int:
        """The partition count of `topic`, from the cache or the broker.

        Raises `BrokerError(UNKNOWN_TOPIC)` naming the topic and how to create it.
        """
        count = self.partition_counts.get(topic)
        if count is not None and topic in self.leaders:
            return count
        response = await self.refresh_metadata([topic])
        for meta in response.topics:
            if meta.name == topic and meta.error is not ErrorCode.NONE:
                raise BrokerError(meta.error, _topic_error_message(topic, meta))
        count = self.partition_counts.get(topic)
        if count is None:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC, _topic_error_message(topic, None))
        return count

    def leader(self, topic: str, partition: int) -> int | None:
        leaders = self.leaders.get(topic)
        if leaders is None or partition >= len(leaders) or leaders[partition] < 0:
            return None
        return leaders[partition]

    def invalidate(self, topic: str) -> None:
        """Forget `topic`'s leaders so the next use refreshes them."""
        self.leaders.pop(topic, None)
        self.partition_counts.pop(topic, None)

    def invalidate_all(self) -> None:
        """Forget every topic's leaders (after a dead connection, the cluster may have moved)."""
        self.leaders.clear()

    async def aclose(self) -> None:
        for connection in {*self._by_node.values(), *([self._any] if self._any else [])}:
            await connection.aclose()


def _topic_error_message(topic: str, meta: codec.TopicMetadata | None) -> str:
    detail = f" ({meta.error_message})" if meta is not None and meta.error_message else ""
    return (
        f"topic {topic!r} does not exist{detail}; create it with "
        f"'broker-cli topics create {topic} --partitions N'"
    )


def _check_handshake(connection: BrokerConnection) -> None:
    body = connection.handshake.get("body")
    if not isinstance(body, dict):
        error = connection.handshake.get("error_message", "no handshake body")
        raise ClientError(f"broker at {connection.address_text} refused the handshake: {error}")
    error = ErrorCode.from_wire(body.get("error", 0))
    if error is not ErrorCode.NONE:
        raise BrokerError(error, str(body.get("error_message", "handshake refused")))


def timeout_from_ms(value_ms: float | None) -> float:
    return math.inf if value_ms is None else value_ms / 1000.0
