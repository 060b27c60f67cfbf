"""The client's view of the cluster: bootstrap, one connection per broker, the metadata cache.

Rules:
- Connections are opened lazily and reopened after they die; a connection is known by the node id
  its handshake reported, so the bootstrap connection doubles as the connection to that node. A
  request for a node the metadata names goes to that node's address only (never to a stand-in,
  which would answer NOT_LEADER); requests for no node in particular (metadata) go to the first
  bootstrap address that accepts a connection, the next one when it dies.
- Per-partition requests (list offsets, and the callers' own loops for produce and fetch) go to
  each partition's leader, grouped per leader: `for_leaders` retries a partition after a metadata
  refresh, with backoff, on a retriable error, a dead connection or an unknown leader.
- The metadata cache maps each topic to its partitions' leaders. It is refreshed on demand:
  when a topic is first used, and whenever a request fails with NOT_LEADER, UNKNOWN_TOPIC,
  LEADER_NOT_AVAILABLE or a dead connection (`invalidate`). These are the seams for multiple
  brokers: everything routes by `leader(topic, partition)`.
- `call` turns a request-level `ErrorResponse` into a `BrokerError`; per-partition errors stay in
  the response for the caller. It does not retry: only the caller knows whether a request is safe
  to repeat (`call_idempotent` retries transport failures for requests that are).
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

import trio

from client._bootstrap import Address, format_addresses, parse_bootstrap
from client.errors import (
    BrokerUnavailableError,
    ClientClosedError,
    ClientError,
    ConnectionLostError,
    TlsHandshakeError,
)
from wire import codec
from wire.connection import (
    MAX_IN_FLIGHT_DEFAULT,
    BrokerConnection,
    PendingRequest,
    open_broker_connection,
)
from wire.error_codes import BrokerError, ErrorCode
from wire.framing import Frame
from wire.sasl_client import SaslLogin

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

# Backoff between rounds of a per-leader request (`for_leaders`): doubled each round, capped.
RETRY_BACKOFF_S_DEFAULT = 0.05
RETRY_BACKOFF_MAX_S = 1.0

R = TypeVar("R")
P = TypeVar("P", bound=Hashable)


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
        login: SaslLogin | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._nursery = nursery
        # Each connection logs in with it after its handshake (wire.sasl_client).
        self._login = login
        # TLS to every broker (client/security.py); None: plaintext.
        self._ssl_context = ssl_context
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
        # Connection -> trio time until which the broker said it reads nothing more from it (a
        # quota's `throttle_time_ms`, docs/security.md): requests wait for it instead of timing
        # out in the broker's socket buffer.
        self._throttled_until: dict[BrokerConnection, float] = {}

    # --- connections ------------------------------------------------------------------------------

    async def connection(self, node_id: int | None = None) -> BrokerConnection:
        """A live connection to `node_id` (None: any broker), opening one if needed."""
        existing = self._by_node.get(node_id) if node_id is not None else self._any
        if existing is not None and not existing.closed:
            return existing
        if node_id is not None and node_id not in self.brokers:
            # Learn where the node is first (outside the lock: the refresh needs a connection).
            with contextlib.suppress(ClientError, BrokerError):
                await self.refresh_metadata([])
        async with self._connect_lock:
            existing = self._by_node.get(node_id) if node_id is not None else self._any
            if existing is not None and not existing.closed:
                return existing
            if node_id is not None and node_id in self.brokers:
                # Only that broker will do: another one would answer NOT_LEADER, and mapping it to
                # `node_id` would send that node's requests to the wrong broker for good.
                try:
                    connection = await self._connect_first([self.brokers[node_id]])
                except BrokerUnavailableError as exc:
                    connection = await self._find_node(node_id, exc)
            else:
                connection = await self._connect_first([*self.bootstrap, *self.brokers.values()])
            node = _node_of(connection)
            self._by_node[node] = connection
            if self._any is None or self._any.closed or node_id is None:
                self._any = connection
            # A node the metadata does not name gets whichever broker answered, for this request
            # only: recording it under `node_id` would send that node's requests to the wrong
            # broker for good (it answers NOT_LEADER; the caller refreshes and retries).
            return connection

    async def _find_node(self, node_id: int, failure: BrokerUnavailableError) -> BrokerConnection:
        """`node_id` through a bootstrap address whose handshake names it (the metadata's
        address for it may be one clients cannot reach); re-raise `failure` if none does. Other
        brokers met on the way are kept as their own nodes' connections."""
        live = {c.address for c in self._by_node.values() if not c.closed}
        for address in dict.fromkeys(self.bootstrap):
            if address in live or address == self.brokers.get(node_id):
                continue
            try:
                connection = await self._connect_first([address])
            except BrokerUnavailableError:
                continue
            node = _node_of(connection)
            if node == node_id:
                return connection
            current = self._by_node.get(node)
            if current is None or current.closed:
                self._by_node[node] = connection
            else:
                await connection.aclose()
        raise failure

    def broker_apis(self) -> dict[str, Any] | None:
        """The APIs the broker answering requests for no node in particular said it speaks in
        its handshake (None before the first connection): a newer client skips what an older
        broker cannot do (the idempotent producer falls back without InitProducerId)."""
        if self._any is None:
            return None
        apis = self._any.handshake.get("body", {}).get("apis")
        return apis if isinstance(apis, dict) else None

    def connection_node(self) -> int | None:
        """The node id of the broker that answers requests sent to no node in particular."""
        if self._any is None or self._any.closed:
            return None
        node = _node_of(self._any)
        return node if node >= 0 else None

    async def _connect_first(self, addresses: list[Address]) -> BrokerConnection:
        handshake, _ = codec.encode_request(
            codec.HandshakeRequest(client_id=self.client_id), correlation_id=0
        )
        reasons: list[str] = []
        tls_failed = False
        for address in dict.fromkeys(addresses):  # unique, in order
            try:
                connection = await open_broker_connection(
                    self._nursery,
                    address,
                    handshake,
                    max_in_flight=self._max_in_flight,
                    login=self._login,
                    ssl_context=self._ssl_context,
                )
            except BrokerUnavailableError as exc:
                tls_failed = tls_failed or isinstance(exc, TlsHandshakeError)
                reasons.append(exc.reason)
                continue
            except ConnectionLostError as exc:
                reasons.append(str(exc))
                continue
            _check_handshake(connection)
            return connection
        unique = list(dict.fromkeys(addresses))
        # A broker that answered but failed TLS is reachable: say what to check, not "is it
        # running?".
        error = TlsHandshakeError if tls_failed else BrokerUnavailableError
        raise error(format_addresses(unique), "; ".join(dict.fromkeys(reasons)))

    # --- requests ---------------------------------------------------------------------------------

    async def call(
        self, request: Any, node_id: int | None = None, *, extra_timeout_s: float = 0.0
    ) -> Any:
        """Send `request` and return the decoded response dataclass.

        Raises `BrokerError` for a request-level error, `BrokerUnavailableError`,
        `ConnectionLostError`, `RequestTimedOutError`.
        """
        answer = await self.start_call(request, node_id, extra_timeout_s=extra_timeout_s)
        return await answer

    async def start_call(
        self, request: Any, node_id: int | None = None, *, extra_timeout_s: float = 0.0
    ) -> Awaitable[Any]:
        """Write `request` now and return an awaitable of its decoded response (as `call`).

        Requests started one after another by one task reach the broker in that order (the
        idempotent producer's per-broker writer relies on it); the awaitable must be awaited.
        """
        sent = await self.send_request(request, node_id)
        return self._answer(*sent, self.request_timeout_s + extra_timeout_s)

    async def send_request(
        self, request: Any, node_id: int | None = None
    ) -> tuple[BrokerConnection, dict[str, Any], PendingRequest]:
        """Write `request` now; the connection, frame header and pending handle its answer
        comes through (`BrokerConnection.finish_request` or `finish_with`, then `decode`)."""
        connection = await self.connection(node_id)
        throttled_until = self._throttled_until.pop(connection, 0.0)
        if throttled_until > trio.current_time():
            await trio.sleep_until(throttled_until)
        header, payload = codec.encode_request(request, correlation_id=0)
        pending = await connection.start_request(header, payload)
        return connection, header, pending

    async def _answer(
        self,
        connection: BrokerConnection,
        header: dict[str, Any],
        pending: PendingRequest,
        timeout_s: float,
    ) -> Any:
        frame = await connection.finish_request(header, pending, timeout_s=timeout_s)
        return self.decode(connection, frame)

    def decode(self, connection: BrokerConnection, frame: Frame) -> Any:
        """The response dataclass of `frame`, an answer from `connection`; raises the
        request-level `BrokerError`, and notes a quota throttle for the next request."""
        try:
            response = codec.decode_response(frame.header, frame.payload)
        except BrokerError as exc:
            raise BrokerError(
                ErrorCode.UNKNOWN_SERVER_ERROR, f"cannot decode the broker's response: {exc}"
            ) from exc
        if isinstance(response, codec.ErrorResponse):
            raise BrokerError(response.error, response.error_message)
        throttle_ms = getattr(response, "throttle_time_ms", 0)
        if throttle_ms > 0:
            self._throttled_until[connection] = trio.current_time() + throttle_ms / 1000
        return response

    async def find_coordinator(self, key: str, key_type: int = codec.COORDINATOR_KEY_GROUP) -> int:
        """The node id of the coordinator of a group (`key_type` 0) or a transactional id (1),
        its address learnt for `connection`. Raises its `BrokerError` (COORDINATOR_NOT_AVAILABLE
        while the coordinator's partition has no leader: retriable)."""
        found: codec.FindCoordinatorResponse = await self.call_idempotent(
            codec.FindCoordinatorRequest(key=key, key_type=key_type)
        )
        if found.error is not ErrorCode.NONE:
            raise BrokerError(found.error, found.error_message or found.error.name)
        self.brokers[found.node_id] = (found.host, found.port)
        return found.node_id

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

    async def for_leaders(
        self,
        partitions: Sequence[P],
        send: Callable[[int, list[P]], Awaitable[dict[P, Any]]],
        *,
        timeout_s: float | None = None,
        retry_backoff_s: float = RETRY_BACKOFF_S_DEFAULT,
    ) -> dict[P, Any]:
        """Run a per-partition request against each partition's leader; return each result.

        `partitions` are `(topic, partition)` tuples (TopicPartition); `send(node_id, group)`
        sends one request for `group` to `node_id` and returns, per partition, its result or the
        `BrokerError` the broker stated for it (a partition left out is retried). Partitions are
        grouped per leader and the groups sent concurrently. A partition whose leader is unknown,
        whose broker answers a retriable error (NOT_LEADER, LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC,
        ...) or whose connection fails is retried after a metadata refresh, with backoff, until
        `timeout_s` (default `request_timeout_ms`); then the last error is raised. A
        non-retriable error is raised at once. UNKNOWN_TOPIC from the metadata itself is final.
        """
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = trio.current_time() + timeout_s
        pending = list(dict.fromkeys(partitions))
        results: dict[P, Any] = {}
        backoff = retry_backoff_s
        while True:
            by_leader: dict[int, list[P]] = {}
            errors: dict[P, Exception] = {}
            try:
                for topic in dict.fromkeys(tp[0] for tp in pending):  # type: ignore[index]
                    if topic not in self.leaders:
                        await self.topic_partitions(topic)
            except ClientClosedError:
                raise
            except ClientError as exc:  # no broker answered the metadata request: go again
                errors = dict.fromkeys(pending, exc)
                pending = []
            for tp in pending:
                topic, partition = tp  # type: ignore[misc]
                count = self.partition_counts.get(topic, 0)
                if not 0 <= partition < count:
                    raise BrokerError(
                        ErrorCode.UNKNOWN_PARTITION,
                        f"topic {topic!r} has partitions 0..{count - 1}, not {partition}",
                    )
                leader = self.leader(topic, partition)
                if leader is None:
                    errors[tp] = BrokerError(
                        ErrorCode.LEADER_NOT_AVAILABLE,
                        f"{topic}-{partition} has no leader now (an election is under way)",
                    )
                else:
                    by_leader.setdefault(leader, []).append(tp)

            async with trio.open_nursery() as nursery:
                for node, group in by_leader.items():
                    nursery.start_soon(_send_group, send, node, group, results, errors)
            if not errors:
                return results
            last: Exception | None = None
            for tp, error in errors.items():
                if isinstance(error, BrokerError) and not error.retriable:
                    raise error
                last = error
                if not isinstance(error, BrokerError) or error.code in METADATA_STALE_CODES:
                    self.invalidate_leaders(tp[0])  # type: ignore[index]
            assert last is not None
            if trio.current_time() + backoff >= deadline:
                raise last
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
            pending = list(errors)

    # --- metadata ---------------------------------------------------------------------------------

    async def refresh_metadata(
        self, topics: Sequence[str] | None, *, allow_auto_create: bool = False
    ) -> codec.MetadataResponse:
        """Fetch metadata for `topics` (None: all) and update the cache. `allow_auto_create`
        lets a broker with `auto_create_topics` on create the unknown ones."""
        async with self._metadata_lock:
            request = codec.MetadataRequest(
                topics=tuple(topics) if topics is not None else None,
                allow_auto_create=allow_auto_create,
            )
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

    async def topic_partitions(self, topic: str, *, auto_create: bool = False) -> int:
        """The partition count of `topic`, from the cache or the broker.

        With `auto_create` (producers), a broker with `auto_create_topics` on creates an unknown
        topic; a cluster answers LEADER_NOT_AVAILABLE while its controller does, and this waits
        for it (with backoff, within the request timeout). Raises `BrokerError(UNKNOWN_TOPIC)`
        naming the topic and how to create it.
        """
        count = self.partition_counts.get(topic)
        if count is not None and topic in self.leaders:
            return count
        deadline = trio.current_time() + self.request_timeout_s
        backoff = RETRY_BACKOFF_S_DEFAULT
        while True:
            response = await self.refresh_metadata([topic], allow_auto_create=auto_create)
            meta = next((m for m in response.topics if m.name == topic), None)
            if meta is None or meta.error is ErrorCode.NONE:
                break
            being_created = auto_create and meta.error is ErrorCode.LEADER_NOT_AVAILABLE
            if not being_created or trio.current_time() + backoff >= deadline:
                raise BrokerError(meta.error, _topic_error_message(topic, meta))
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
        count = self.partition_counts.get(topic)
        if count is None:
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC, _topic_error_message(topic, None))
        return count

    def leader(self, topic: str, partition: int) -> int | None:
        leaders = self.leaders.get(topic)
        if leaders is None or partition >= len(leaders) or leaders[partition] < 0:
            return None
        return leaders[partition]

    def learn_leader(self, topic: str, partition: int, leader_id: int) -> bool:
        """Record the leader a NOT_LEADER answer named (its `leader_id`, -1: none known); the
        topic's other partitions stay as they are (unknown if forgotten: a refresh loads them).
        True if `leader_id` is a known broker and now routes that partition."""
        count = self.partition_counts.get(topic)
        if leader_id < 0 or leader_id not in self.brokers or count is None or partition >= count:
            return False
        leaders = self.leaders.setdefault(topic, [-1] * count)
        if partition >= len(leaders):
            return False
        leaders[partition] = leader_id
        return True

    def invalidate(self, topic: str) -> None:
        """Forget `topic`'s leaders so the next use refreshes them."""
        self.leaders.pop(topic, None)
        self.partition_counts.pop(topic, None)

    def invalidate_leaders(self, topic: str) -> None:
        """Forget `topic`'s leaders but keep its partition count (a leader moved)."""
        self.leaders.pop(topic, None)

    def invalidate_all(self) -> None:
        """Forget every topic's leaders (after a dead connection, the cluster may have moved)."""
        self.leaders.clear()

    async def aclose(self) -> None:
        for connection in {*self._by_node.values(), *([self._any] if self._any else [])}:
            await connection.aclose()


async def _send_group(
    send: Callable[[int, list[P]], Awaitable[dict[P, Any]]],
    node: int,
    group: list[P],
    results: dict[P, Any],
    errors: dict[P, Exception],
) -> None:
    """One leader's share of `Cluster.for_leaders`: outcomes go into `results` / `errors`."""
    try:
        outcome = await send(node, group)
    except ClientClosedError:
        raise
    except (ClientError, BrokerError) as exc:
        # A dead broker or connection (the leader may move), or a request-level refusal: it
        # covers the whole group.
        for tp in group:
            errors[tp] = exc
        return
    for tp in group:
        result = outcome.get(tp)
        if result is None:
            topic, partition = tp  # type: ignore[misc]
            errors[tp] = BrokerError(
                ErrorCode.UNKNOWN_SERVER_ERROR,
                f"broker {node} left {topic}-{partition} out of its answer",
            )
        elif isinstance(result, BrokerError):
            errors[tp] = result
        else:
            results[tp] = result


def _topic_error_message(topic: str, meta: codec.TopicMetadata | None) -> str:
    detail = f" ({meta.error_message})" if meta is not None and meta.error_message else ""
    return (
        f"topic {topic!r} does not exist{detail}; create it with "
        f"'broker-cli topics create {topic} --partitions N'"
    )


def _node_of(connection: BrokerConnection) -> int:
    """The node id the broker reported in its handshake (-1 if none)."""
    node = connection.handshake.get("body", {}).get("node_id", -1)
    return node if isinstance(node, int) else -1


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
