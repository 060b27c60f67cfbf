"""What every trio-native client shares: a nursery for its background tasks and a `Cluster`.

Rule: a client is usable between `__aenter__` and `aclose()`/`__aexit__`, both in the same task
(the nursery lives across them, as trio allows for async context managers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Self, Unpack

import trio

from client._bootstrap import choose_bootstrap
from client.aio.cluster import CLIENT_ID_DEFAULT, REQUEST_TIMEOUT_MS_DEFAULT, Cluster
from client.errors import ClientClosedError
from client.security import SecurityOptions, sasl_login, ssl_context_of


class AsyncClientBase:
    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        client_id: str = CLIENT_ID_DEFAULT,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        bootstrap_servers: str | Sequence[str] | None = None,
        **security: Unpack[SecurityOptions],
    ) -> None:
        """`bootstrap_servers` is kafka-python's name for `bootstrap` (give one of them).
        `security`: `security_protocol`, `sasl_*`, `ssl_*` (client/security.py)."""
        self._bootstrap = choose_bootstrap(bootstrap, bootstrap_servers)
        self._login = sasl_login(security)
        self._ssl_context = ssl_context_of(security)
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._cluster_obj: Cluster | None = None
        self._closed = False

    @property
    def _cluster(self) -> Cluster:
        if self._cluster_obj is None:
            name = type(self).__name__
            raise ClientClosedError(
                f"{name} is not open: use 'async with {name}(...)'"
                if not self._closed
                else f"{name} is closed"
            )
        return self._cluster_obj

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the connection to the cluster and start background tasks."""
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            cluster = Cluster(
                nursery,
                self._bootstrap,
                client_id=self._client_id,
                request_timeout_ms=self._request_timeout_ms,
                login=self._login,
                ssl_context=self._ssl_context,
            )
            # Connect now so that a wrong address fails here, with the "is 'broker serve'
            # running?" hint, rather than at the first send.
            await cluster.connection()
            self._stack, self._nursery, self._cluster_obj = stack, nursery, cluster
            await self._start_tasks(nursery)
        except BaseException:
            nursery.cancel_scope.cancel()
            await stack.aclose()
            raise

    async def _start_tasks(self, nursery: trio.Nursery) -> None:
        """Subclasses start their background tasks here."""

    async def _before_close(self) -> None:
        """Subclasses finish their work here (the producer flushes)."""

    async def aclose(self) -> None:
        if self._closed or self._stack is None:
            self._closed = True
            return
        try:
            await self._before_close()
        finally:
            self._closed = True
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            if self._cluster_obj is not None:
                with trio.CancelScope(shield=True):
                    await self._cluster_obj.aclose()
            self._cluster_obj = None
            await self._stack.aclose()
