"""Broker-to-broker requests on the client port: reaching the controller leader from any broker.

A broker that is not the controller leader still has to register, heartbeat, report partition
leaders and forward CreateTopics/DeleteTopics (KIP-590's forwarding). It does so over the ordinary
client protocol (wire/codec.py) over `wire.connection`, the connection the SDK uses too (the
broker never imports the client), on the same port peers use for Raft, at the address `--peers`
gives for the leader. Rules:

1. One connection per peer, opened on first use and dropped on any failure (the next call opens a
   new one). Connection readers run in the node's nursery, so they stop with the node.
2. A transport failure becomes BrokerError(BROKER_NOT_AVAILABLE) or REQUEST_TIMED_OUT: retriable,
   and callers already retry on those (registration, heartbeats, leader reports).
3. NOT_CONTROLLER answers become `NotControllerError` with the answering broker's leader hint.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from broker.controller.records import BrokerState, Endpoint
from wire import codec
from wire.connection import BrokerConnection, open_broker_connection
from wire.error_codes import BrokerError, ErrorCode
from wire.errors import ClientError
from wire.sasl_client import SaslLogin

from .controller_service import ControllerService, NotControllerError

logger = logging.getLogger(__name__)


class PeerClients:
    """Client-protocol connections from this broker to its peers (rule 1)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        node_id: int,
        peers: Mapping[int, tuple[str, int]],
        *,
        request_timeout_ms: int,
        login: SaslLogin | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: reach peers over TLS (their inter-broker listener is TLS)."""
        self._nursery = nursery
        self._login = login
        self._ssl_context = ssl_context
        self._node_id = node_id
        self._peers = dict(peers)
        self._timeout_s = request_timeout_ms / 1000
        self._connections: dict[int, BrokerConnection] = {}
        self._locks: dict[int, trio.Lock] = {}

    async def call(self, peer: int, request: Any, *, extra_timeout_s: float = 0.0) -> Any:
        """Send `request` to `peer`; its decoded response. BrokerError on any failure (rule 2)."""
        connection = await self._connection(peer)
        header, payload = codec.encode_request(request, correlation_id=0)
        try:
            frame = await connection.request(
                header, payload, timeout_s=self._timeout_s + extra_timeout_s
            )
            response = codec.decode_response(frame.header, frame.payload)
        except (ClientError, BrokerError) as exc:
            self._drop(peer, connection)
            raise BrokerError(
                ErrorCode.BROKER_NOT_AVAILABLE, f"broker {peer} did not answer: {exc}"
            ) from None
        if isinstance(response, codec.ErrorResponse):
            raise BrokerError(response.error, f"broker {peer}: {response.error_message}")
        return response

    async def _connection(self, peer: int) -> BrokerConnection:
        address = self._peers.get(peer)
        if address is None:
            raise BrokerError(
                ErrorCode.BROKER_NOT_AVAILABLE,
                f"broker {self._node_id} knows no address of broker {peer} (not in --peers, "
                "not registered in its metadata yet)",
            )
        lock = self._locks.setdefault(peer, trio.Lock())
        async with lock:
            connection = self._connections.get(peer)
            if connection is not None and not connection.closed:
                return connection
            handshake = codec.HandshakeRequest(client_id=f"broker-{self._node_id}")
            header, _ = codec.encode_request(handshake, correlation_id=0)
            try:
                connection = await open_broker_connection(
                    self._nursery,
                    address,
                    header,
                    connect_timeout_s=self._timeout_s,
                    login=self._login,
                    ssl_context=self._ssl_context,
                )
            except ClientError as exc:
                raise BrokerError(
                    ErrorCode.BROKER_NOT_AVAILABLE, f"cannot reach broker {peer}: {exc}"
                ) from None
            self._connections[peer] = connection
            return connection

    def add_peer(self, peer: int, address: tuple[str, int]) -> None:
        """Reach `peer` at `address` from now on (learned from the metadata or a bootstrap
        broker); a peer already known keeps its address (it may be a proxy)."""
        self._peers.setdefault(peer, address)

    def remove_peer(self, peer: int) -> None:
        """Forget a decommissioned peer (its connection closes)."""
        self._peers.pop(peer, None)
        connection = self._connections.pop(peer, None)
        if connection is not None:
            self._nursery.start_soon(connection.aclose)

    def _drop(self, peer: int, connection: BrokerConnection) -> None:
        if self._connections.get(peer) is connection:
            del self._connections[peer]
        self._nursery.start_soon(connection.aclose)


def _check(response: Any, peer: int) -> Any:
    """Raise the controller's refusal carried in `response` (rule 3)."""
    if response.error is ErrorCode.NONE:
        return response
    if response.error is ErrorCode.NOT_CONTROLLER:
        raise NotControllerError(peer, response.leader_hint)
    raise BrokerError(response.error, response.error_message)


async def discover_cluster(
    nursery: trio.Nursery,
    node_id: int,
    bootstrap: Sequence[tuple[str, int]],
    *,
    timeout_s: float,
    login: SaslLogin | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> codec.ClusterStatusResponse:
    """`--bootstrap`: ask each address in turn for its ClusterStatus until one names a
    controller leader; the answer lists every broker's address. Raises BrokerError
    (BROKER_NOT_AVAILABLE) naming every failure if none does."""
    failures = []
    handshake = codec.HandshakeRequest(client_id=f"broker-{node_id}")
    header, _ = codec.encode_request(handshake, correlation_id=0)
    for address in bootstrap:
        where = f"{address[0]}:{address[1]}"
        try:
            connection = await open_broker_connection(
                nursery,
                address,
                header,
                connect_timeout_s=timeout_s,
                login=login,
                ssl_context=ssl_context,
            )
        except ClientError as exc:
            failures.append(f"{where}: {exc}")
            continue
        try:
            request_header, payload = codec.encode_request(
                codec.ClusterStatusRequest(), correlation_id=0
            )
            frame = await connection.request(request_header, payload, timeout_s=timeout_s)
            status = codec.decode_response(frame.header, frame.payload)
        except (ClientError, BrokerError) as exc:
            failures.append(f"{where}: {exc}")
            continue
        finally:
            await connection.aclose()
        if isinstance(status, codec.ClusterStatusResponse) and status.controller_id > 0:
            return status
        failures.append(f"{where}: no controller leader known there yet")
    raise BrokerError(
        ErrorCode.BROKER_NOT_AVAILABLE,
        "no --bootstrap broker named a controller leader: " + "; ".join(failures),
    )


class RemoteController:
    """The controller commands a broker sends, addressed to the controller leader `peer`."""

    def __init__(self, clients: PeerClients, peer: int) -> None:
        self._clients = clients
        self._peer = peer

    async def register_broker(
        self,
        node_id: int,
        host: str,
        port: int,
        incarnation: int,
        endpoints: tuple[Endpoint, ...] = (),
    ) -> int:
        request = codec.BrokerRegistrationRequest(
            node_id=node_id,
            host=host,
            port=port,
            incarnation=incarnation,
            endpoints=tuple(
                codec.ListenerEndpoint(listener=name, host=h, port=p) for name, h, p in endpoints
            ),
        )
        response = _check(await self._clients.call(self._peer, request), self._peer)
        return int(response.broker_epoch)

    async def heartbeat(
        self, node_id: int, broker_epoch: int, *, want_active: bool, shutting_down: bool = False
    ) -> BrokerState:
        request = codec.BrokerHeartbeatRequest(
            node_id=node_id,
            broker_epoch=broker_epoch,
            want_active=want_active,
            shutting_down=shutting_down,
        )
        response = _check(await self._clients.call(self._peer, request), self._peer)
        return BrokerState(response.state)

    async def report_leader(
        self,
        topic: str,
        partition: int,
        leader: int,
        leader_epoch: int,
        in_sync_replicas: Sequence[int],
    ) -> None:
        request = codec.LeaderReportRequest(
            topic=topic,
            partition=partition,
            leader_id=leader,
            leader_epoch=leader_epoch,
            in_sync=tuple(in_sync_replicas),
        )
        _check(await self._clients.call(self._peer, request), self._peer)

    async def complete_reassignment(
        self, topic: str, partition: int, replicas: Sequence[int]
    ) -> None:
        request = codec.ReassignmentCompletedRequest(
            topic=topic, partition=partition, replicas=tuple(replicas)
        )
        _check(await self._clients.call(self._peer, request), self._peer)


class PeerRouter:
    """`ControllerRouter` for real brokers: this node's own controller when it leads, else a
    `RemoteController` over `PeerClients`."""

    def __init__(self, node_id: int, local: ControllerService, clients: PeerClients) -> None:
        self._node_id = node_id
        self._local = local
        self._clients = clients

    def controller_of(self, node_id: int) -> ControllerService | RemoteController | None:
        if node_id == 0:
            return None
        if node_id == self._node_id:
            return self._local
        return RemoteController(self._clients, node_id)
