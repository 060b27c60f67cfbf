"""Limits against hostile clients: connections in total and per IP address, and the memory
budget of requests read but not yet answered.

- `ConnectionLimits` (pure) counts open connections, in total and per IP address, and says why a
  new one must be refused (`max_connections`, `max_connections_per_ip`).
- `RequestMemoryBudget` (trio) is Kafka's `queued.max.request.bytes`: a connection reserves a
  request's whole size as soon as its length prefix is read, before reading the rest, and gives
  it back once the request is answered. While the budget is used up, connections stop reading
  (the kernel's socket buffers and TCP flow control then hold the clients back), so memory for
  requests never exceeds the budget, however many clients send large frames slowly.
- Deadlines (idle, request arrival, handshakes) are cancel scopes in broker/server.py; the
  reasons a connection is refused or closed are named here, for the log and the metrics.
"""

from __future__ import annotations

import collections
import dataclasses
import enum

import trio


class ConnectionRefusal(enum.Enum):
    """Why a new connection was closed at once (label of broker_connections_refused_total)."""

    MAX_CONNECTIONS = "max_connections"
    MAX_CONNECTIONS_PER_IP = "max_connections_per_ip"
    STOPPING = "stopping"


class ConnectionClosure(enum.Enum):
    """Why the broker closed a connection (label of broker_connections_closed_total)."""

    IDLE = "connections_max_idle_ms"
    REQUEST_ARRIVAL = "request_arrival_timeout_ms"
    RESPONSE_WRITE = "response_write_timeout_ms"
    HANDSHAKE_TIMEOUT = "handshake_timeout_ms"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    PROTOCOL_ERROR = "protocol_error"


class ConnectionLimits:
    """Open connections in total and per IP address (pure: the server calls it on accept/close)."""

    def __init__(self, *, max_connections: int, max_connections_per_ip: int) -> None:
        assert max_connections >= 1 and max_connections_per_ip >= 1
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self._per_ip: collections.Counter[str] = collections.Counter()
        self.open_count = 0

    def try_open(self, ip: str) -> ConnectionRefusal | None:
        """Count a new connection from `ip`, or return why it must be refused (not counted)."""
        if self.open_count >= self.max_connections:
            return ConnectionRefusal.MAX_CONNECTIONS
        if self._per_ip[ip] >= self.max_connections_per_ip:
            return ConnectionRefusal.MAX_CONNECTIONS_PER_IP
        self._per_ip[ip] += 1
        self.open_count += 1
        return None

    def closed(self, ip: str) -> None:
        """A connection `try_open` counted has closed."""
        assert self._per_ip[ip] > 0 and self.open_count > 0, ip
        self._per_ip[ip] -= 1
        self.open_count -= 1
        if not self._per_ip[ip]:
            del self._per_ip[ip]  # bounded by open connections, not by every address ever seen

    def open_from(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetStatistics:
    limit_bytes: int
    used_bytes: int
    waiting_count: int
    waits_total: int


class _Waiter:
    __slots__ = ("event", "granted", "size_bytes")

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.event = trio.Event()
        self.granted = False


class RequestMemoryBudget:
    """Bytes of requests in flight across all connections, at most `limit_bytes` (see above).

    Waiters are served first come, first served: a large request is not starved by a stream of
    small ones, and a release wakes only the waiters it can serve (not every parked connection,
    which costs quadratic wake-ups when a thousand of them wait).
    """

    def __init__(self, limit_bytes: int) -> None:
        assert limit_bytes > 0
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._waits_total = 0

    async def acquire(self, size_bytes: int) -> None:
        """Reserve `size_bytes`, waiting while the budget cannot hold them (reading stops).

        A request never exceeds the frame limit, which config validation keeps within the
        budget, so every reservation fits once the others are given back.
        """
        assert 0 < size_bytes <= self.limit_bytes, (size_bytes, self.limit_bytes)
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._waiters and self.used_bytes + size_bytes <= self.limit_bytes:
            self.used_bytes += size_bytes
            # Reserved: yield (trio's rule for async functions) without a cancellation point,
            # so a caller never loses bytes reserved for it.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._waits_total += 1
        waiter = _Waiter(size_bytes)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release(size_bytes)  # granted as the caller was cancelled: give it back
            else:
                self._waiters.remove(waiter)
                self._grant()  # the next in line may fit now
            raise
        assert waiter.granted

    def release(self, size_bytes: int) -> None:
        """Give back bytes an `acquire` reserved (the request was answered or dropped)."""
        assert 0 <= size_bytes <= self.used_bytes, (size_bytes, self.used_bytes)
        if size_bytes:
            self.used_bytes -= size_bytes
            self._grant()

    def _grant(self) -> None:
        # Reservations are made here, in arrival order, for the waiters that fit.
        while self._waiters and (self.used_bytes + self._waiters[0].size_bytes <= self.limit_bytes):
            waiter = self._waiters.popleft()
            self.used_bytes += waiter.size_bytes
            waiter.granted = True
            waiter.event.set()

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(
            self.limit_bytes, self.used_bytes, len(self._waiters), self._waits_total
        )
