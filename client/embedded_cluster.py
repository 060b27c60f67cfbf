"""A cluster of embedded brokers for tests and benchmarks: N `broker serve` children on loopback.

    with EmbeddedCluster(3) as cluster:        # returns once every broker sees all the others
        producer = Producer(cluster.bootstrap)
        cluster.kill(2)                        # SIGKILL; stop(2) is SIGTERM
        cluster.start(2)                       # same port, same data: it rejoins
        cluster.wait_ready()

    with EmbeddedCluster(3, proxies=True) as cluster:
        cluster.isolate(1)                     # node 1 neither reaches nor is reached by its peers
        cluster.heal()

    with EmbeddedCluster(3, listeners=[("INTERNAL", "plaintext"), ("SECURE", "tls")],
                         extra_args=tls_args) as cluster:
        producer = Producer(cluster.bootstrap_of("SECURE"), security_protocol="SSL", ...)

    with EmbeddedCluster(3, controller_voters=(1, 2, 3)) as cluster:
        node_id = cluster.add_broker()         # node 4: `broker serve --bootstrap ...`
        cluster.wait_ready()                   # it is registered and ACTIVE everywhere
        cluster.retire(2)                      # after `cluster decommission 2`: stop, forget

Rules:
- Node ids are 1..n (Raft numbers brokers from 1). Node i is one `client.embedded.EmbeddedBroker`
  (its temporary data dir and log, its stop and kill) running `broker serve --node-id i --listen
  127.0.0.1:P_i --peers 1@...,2@...,...`. `peers=False` runs plain single-node brokers instead,
  under the same management (independent brokers, e.g. for harness tests or a 1-broker benchmark).
- Ports are chosen before any node starts, because every `--peers` must name the others: bind
  port 0, read it, close. Another process may take such a port before its broker binds it; that
  broker then fails with EADDRINUSE and the whole start is retried on fresh ports, with fresh data
  directories, so nothing remembers the old addresses. Afterwards a node keeps its port across
  stops and restarts: its peers and clients know it.
- With `proxies=True`, broker i reaches broker j through its own `FaultProxy` (i, j). That carries
  the Raft traffic and controller RPC i sends to j; the Raft transport's links are one-way (j
  answers over its own link to i, through proxy (j, i)), so blocking `link(i, j)` alone cuts one
  direction. Clients connect directly (`bootstrap`): a partition is between brokers only, and an
  isolated broker still answers clients, which is the stale-leader case tests want.
- `listeners=[(NAME, PROTOCOL), ...]` gives every broker those named listeners (`--listener
  NAME=PROTOCOL://127.0.0.1:PORT`, a port of its own each); the first is the inter-broker one,
  which `--peers`, `bootstrap` and the readiness probes use. `bootstrap_of(NAME)` is every node's
  address on listener NAME. Each listener advertises its own address (docs/security.md).
- `add_broker()` starts one more broker that joins the running cluster with `--bootstrap` (the
  running brokers' addresses) instead of `--peers`, on a fresh port, as the next node id. It is
  not a controller voter. Not with `proxies=True` (nothing would carry its links).
  `retire(node_id)` stops a broker and forgets it (after it was decommissioned): `wait_ready`
  and `bootstrap` no longer include it.
- `close()` (and leaving the `with`) stops every broker and proxy and removes every temporary
  directory, whatever failed before, including a failed `start()`.
- Trio code: `async with open_embedded_cluster(...)`, and run the blocking methods (start, stop,
  kill, restart, wait_ready) in `trio.to_thread.run_sync`. `isolate`, `partition` and `heal`
  never block and may be called from a trio task.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, Self, Unpack

import trio

from broker.listen_errors import PORT_IN_USE
from client import aio
from client._started import StartedByWith
from client.embedded import (
    LOG_TAIL_LINES,
    STARTUP_TIMEOUT_S_DEFAULT,
    STOP_TIMEOUT_S_DEFAULT,
    EmbeddedBroker,
    EmbeddedBrokerError,
    open_in_thread,
)
from client.errors import ClientError
from client.fault_proxy import FaultProxy
from client.security import SecurityOptions
from wire.error_codes import BrokerError

HOST = "127.0.0.1"
READY_TIMEOUT_S_DEFAULT = 30.0
# Between two readiness probes: membership changes take Raft round trips of tens of ms.
READY_POLL_S = 0.1
# One probe's requests; a broker that does not answer within it is simply not ready yet.
PROBE_TIMEOUT_MS = 2_000
# `ClusterBroker.state` of a registered, unfenced broker.
ACTIVE = "active"
# Whole-cluster start attempts when a pre-allocated port was taken by someone else meanwhile.
START_ATTEMPTS = 3


class EmbeddedClusterError(EmbeddedBrokerError):
    """The cluster did not start or become ready; the message holds the nodes' log tails."""


async def cluster_members(address: str, **security: Unpack[SecurityOptions]) -> set[int]:
    """The node ids the broker at `address` lists as ACTIVE members: the readiness probe.

    The one place that says what "ready" means: `AdminClient.cluster_status()` of that broker
    (its own applied metadata) shows the broker registered and unfenced. A single-node broker
    reports itself. `security`: the SDK's login options, for a cluster run with `--auth scram`.
    """
    async with aio.AdminClient(address, request_timeout_ms=PROBE_TIMEOUT_MS, **security) as admin:
        status = await admin.cluster_status()
    return {broker.node_id for broker in status.brokers if broker.state == ACTIVE}


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports free right now (all held open together, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


class EmbeddedCluster(StartedByWith):
    """`n` brokers on loopback, node ids 1..n. See the module rules.

    Args:
        n: number of brokers that start the cluster.
        peers: False runs independent single-node brokers (no `--node-id`/`--peers`).
        controller_voters: the controller voters among them (`--controller-voters`); default all.
        proxies: put a `FaultProxy` on every broker-to-broker link (`isolate`, `partition`).
        extra_args, env, startup_timeout_s, stop_timeout_s: as `EmbeddedBroker`, for every node.
        ready_timeout_s: how long `start()` and `wait_ready()` wait for the membership.
        security: the SDK's security options (`security_protocol`, `sasl_*`, `ssl_*`) of the
            readiness probes, for brokers run with `--auth scram` or a TLS listener.
        listeners: named listeners `(NAME, "plaintext" or "tls")` of every broker, the first the
            inter-broker one (default: one, `--listen`); a TLS one needs `--tls-*` extra_args.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        peers: bool = True,
        proxies: bool = False,
        controller_voters: Sequence[int] = (),
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S_DEFAULT,
        stop_timeout_s: float = STOP_TIMEOUT_S_DEFAULT,
        ready_timeout_s: float = READY_TIMEOUT_S_DEFAULT,
        security: SecurityOptions | None = None,
        listeners: Sequence[tuple[str, str]] = (),
    ) -> None:
        if n < 1:
            raise ValueError(f"a cluster needs at least one broker, not {n}")
        if len({name for name, _ in listeners}) != len(listeners):
            raise ValueError(f"listener names must differ: {list(listeners)}")
        self.node_ids = tuple(range(1, n + 1))
        self.peers = peers
        self.proxies = proxies
        self.controller_voters = tuple(controller_voters)
        self.extra_args = list(extra_args)
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.security = security or SecurityOptions()
        self.listeners = tuple(listeners)
        # Each node's port on each named listener (empty without `listeners`).
        self._listener_ports: dict[int, dict[str, int]] = {}
        self._nodes: dict[int, EmbeddedBroker] = {}
        self._links: dict[tuple[int, int], FaultProxy] = {}

    # --- addresses and members --------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Every node's `HOST:PORT`, comma-separated (stopped nodes too: their ports are kept)."""
        return ",".join(self.node(node_id).bootstrap for node_id in self.node_ids)

    def bootstrap_of(self, listener: str) -> str:
        """Every node's `HOST:PORT` on the named listener, comma-separated."""
        names = [name for name, _ in self.listeners]
        if listener not in names:
            raise EmbeddedClusterError(f"no listener {listener!r}: the listeners are {names}")
        return ",".join(
            f"{HOST}:{self._listener_ports[node_id][listener]}" for node_id in self.node_ids
        )

    def node(self, node_id: int) -> EmbeddedBroker:
        """Node `node_id`'s broker: `bootstrap`, `process`, `data_dir`, `log_tail()`..."""
        try:
            return self._nodes[node_id]
        except KeyError:
            raise EmbeddedClusterError(
                f"no node {node_id}: the nodes are {list(self.node_ids)}"
                + ("" if self._nodes else " (the cluster is not started)")
            ) from None

    def link(self, source: int, destination: int) -> FaultProxy:
        """The proxy through which broker `source` reaches broker `destination`."""
        self._require_proxies()
        try:
            return self._links[source, destination]
        except KeyError:
            raise EmbeddedClusterError(f"no link {source} -> {destination}") from None

    def _require_proxies(self) -> None:
        if not self.proxies:
            raise EmbeddedClusterError("links are direct: use EmbeddedCluster(proxies=True)")

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """Each node's log tail under a header: for failure messages and test reports."""
        return "\n".join(
            f"--- node {node_id} ({node.host}:{node.port}) ---\n{node.log_tail(lines)}"
            for node_id, node in self._nodes.items()
        )

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, node_id: int | None = None) -> Self:
        """Start every node and wait for `wait_ready()`, or start one stopped node (no wait).

        Raises `EmbeddedClusterError` with the failed node's log; a failed whole start has
        already closed the cluster.
        """
        if node_id is not None:
            self._start_node(node_id)
            return self
        assert not self._nodes, "the cluster is already started"
        try:
            self._launch_on_free_ports()
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _launch_on_free_ports(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._launch(free_ports(len(self.node_ids) * max(1, len(self.listeners))))
                return
            except EmbeddedClusterError as exc:
                taken = PORT_IN_USE in str(exc) or os.strerror(errno.EADDRINUSE) in str(exc)
                if attempt == START_ATTEMPTS or not taken:
                    raise
                self.close()  # a port was taken meanwhile: fresh ports, fresh data directories

    def _launch(self, ports: list[int]) -> None:
        per_node = max(1, len(self.listeners))
        node_ports = {
            node_id: ports[index * per_node : (index + 1) * per_node]
            for index, node_id in enumerate(self.node_ids)
        }
        # A node's first port is its `--listen` (or first listener's): where its peers reach it.
        port_of = {node_id: own[0] for node_id, own in node_ports.items()}
        if self.proxies:
            for source in self.node_ids:
                for destination in self.node_ids:
                    if source != destination:
                        proxy = FaultProxy((HOST, port_of[destination]))
                        self._links[source, destination] = proxy
                        proxy.start()
        for node_id in self.node_ids:
            self._nodes[node_id] = EmbeddedBroker(
                port=port_of[node_id],
                extra_args=[
                    *self._listener_args(node_id, node_ports[node_id]),
                    *self._cluster_args(node_id, port_of),
                    *self.extra_args,
                ],
                env=self.env,
                startup_timeout_s=self.startup_timeout_s,
                stop_timeout_s=self.stop_timeout_s,
            )
        for node_id in self.node_ids:
            self._start_node(node_id)

    def _listener_args(self, node_id: int, ports: list[int]) -> list[str]:
        """`--listener NAME=PROTOCOL://HOST:PORT` for each named listener (none without any);
        remembers the node's ports for `bootstrap_of`."""
        if not self.listeners:
            return []
        self._listener_ports[node_id] = {
            name: port for (name, _), port in zip(self.listeners, ports, strict=True)
        }
        args = ["--inter-broker-listener", self.listeners[0][0]]
        for (name, protocol), port in zip(self.listeners, ports, strict=True):
            args += ["--listener", f"{name}={protocol}://{HOST}:{port}"]
        return args

    def _cluster_args(self, node_id: int, port_of: dict[int, int]) -> list[str]:
        if not self.peers:
            return []
        # The node's own entry is included (and ignored by the broker): every list has one shape.
        peers = ",".join(
            f"{peer}@{self._links[node_id, peer].address}"
            if (node_id, peer) in self._links
            else f"{peer}@{HOST}:{port}"
            for peer, port in port_of.items()
        )
        voters = ["--controller-voters", ",".join(map(str, self.controller_voters))]
        return [
            "--node-id",
            str(node_id),
            "--peers",
            peers,
            *(voters if self.controller_voters else []),
        ]

    def add_broker(self) -> int:
        """Start one more broker, joining the running cluster with `--bootstrap`; its node id
        (the next one). Does not wait: `wait_ready()` waits until every broker lists it ACTIVE."""
        if self.proxies or not self.peers:
            raise EmbeddedClusterError("add_broker needs a cluster without proxies")
        node_id = max(self.node_ids) + 1
        running = [node.bootstrap for node in self._nodes.values() if node.running]
        if not running:
            raise EmbeddedClusterError("no running broker to join through")
        ports = free_ports(max(1, len(self.listeners)))
        self._nodes[node_id] = EmbeddedBroker(
            port=ports[0],
            extra_args=[
                *self._listener_args(node_id, ports),
                *("--node-id", str(node_id), "--bootstrap", ",".join(running)),
                *self.extra_args,
            ],
            env=self.env,
            startup_timeout_s=self.startup_timeout_s,
            stop_timeout_s=self.stop_timeout_s,
        )
        self.node_ids = (*self.node_ids, node_id)
        self._start_node(node_id)
        return node_id

    def retire(self, node_id: int) -> None:
        """Stop node `node_id` (decommissioned) and forget it: it is no longer waited for nor
        in `bootstrap`. Its files are removed with it."""
        node = self.node(node_id)
        self.node_ids = tuple(other for other in self.node_ids if other != node_id)
        del self._nodes[node_id]
        self._listener_ports.pop(node_id, None)
        node.close()

    def _start_node(self, node_id: int) -> None:
        node = self.node(node_id)
        if node.process is not None:
            raise EmbeddedClusterError(f"node {node_id} is already started (stop or kill it first)")
        try:
            node.start()
        except EmbeddedBrokerError as exc:
            raise EmbeddedClusterError(f"node {node_id}: {exc}") from None

    def stop(self, node_id: int) -> int | None:
        """SIGTERM node `node_id` (a clean shutdown), then wait; returns its exit status."""
        return self.node(node_id).stop()

    def kill(self, node_id: int) -> None:
        """SIGKILL node `node_id`: no flush, no clean-shutdown marker (crash tests)."""
        self.node(node_id).kill()

    def restart(self, node_id: int) -> Self:
        """Stop node `node_id` cleanly and start it again on its port and data (no wait)."""
        self.stop(node_id)
        return self.start(node_id)

    def close(self) -> None:
        """Stop every broker and proxy and remove the temporary directories, whatever fails."""
        nodes, self._nodes = self._nodes, {}
        links, self._links = self._links, {}
        self._listener_ports = {}
        with contextlib.ExitStack() as stack:  # runs every callback, even after one raised
            for proxy in links.values():
                stack.callback(proxy.close)
            for node in nodes.values():  # last in, first out: brokers stop before the proxies
                stack.callback(node.close)

    # --- readiness --------------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until every running broker, asked directly, lists every running broker as ACTIVE.

        Fails at once, with its log, if a node that was started has exited; after `timeout_s`
        (default `ready_timeout_s`) with every node's log.
        """
        trio.run(self._wait_ready, self.ready_timeout_s if timeout_s is None else timeout_s)

    async def _wait_ready(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            while not await self._ready():
                await trio.sleep(READY_POLL_S)
            return
        raise EmbeddedClusterError(f"cluster not ready within {timeout_s} s\n{self.log_tails()}")

    async def _ready(self) -> bool:
        for node_id, node in self._nodes.items():
            if node.process is not None and not node.running:
                raise EmbeddedClusterError(
                    f"node {node_id} exited with status {node.process.returncode}\n"
                    f"{node.log_tail()}"
                )
        running = [node for node in self._nodes.values() if node.running]
        expected = {node.node_id for node in running}
        for node in running:
            try:
                members = await cluster_members(node.bootstrap, **self.security)
            except (BrokerError, ClientError):
                return False
            if not expected <= members:
                return False
        return True

    # --- partitions (proxies=True) ----------------------------------------------------------------

    def partition(self, groups: Sequence[Collection[int]]) -> None:
        """Split the brokers: links inside a group pass, links between groups are blocked.

        Brokers named in no group form one more group together, so `partition([{1}])` isolates
        node 1. Replaces any earlier partition; `heal()` is `partition([])`.
        """
        self._require_proxies()
        side: dict[int, int] = {}
        for index, group in enumerate(groups):
            for node_id in group:
                if node_id not in self.node_ids or node_id in side:
                    raise ValueError(f"node {node_id} is unknown or in two groups: {groups}")
                side[node_id] = index
        for (source, destination), proxy in self._links.items():
            rest = len(groups)
            if side.get(source, rest) == side.get(destination, rest):
                proxy.unblock()
            else:
                proxy.block()

    def isolate(self, node_id: int) -> None:
        """Cut every link to and from `node_id` (and heal every other link)."""
        self.partition([{node_id}])

    def heal(self) -> None:
        """Unblock every link: held messages flow again, in order."""
        self.partition([])


@contextlib.asynccontextmanager
async def open_embedded_cluster(n: int = 3, **options: Any) -> AsyncIterator[EmbeddedCluster]:
    """The trio version of `EmbeddedCluster(n, **options)`: start and close in a worker thread."""
    async with open_in_thread(EmbeddedCluster(n, **options)) as cluster:
        yield cluster
