"""`TrioScrape`: compute a metrics view in the broker's trio thread at the moment of a scrape.

prometheus-client serves `/metrics` from its own thread, while the broker's state (Raft cores,
replicas, the metadata cache) belongs to the trio thread and is not thread-safe. Instead of a
task that rebuilds snapshots every second (a cost paid by every idle broker, scraped or not),
a collector asks the trio thread for the view when a scrape arrives: `TrioScrape(token).run(fn)`
blocks the HTTP thread until `fn` has run between two trio steps, so it reads a consistent state.

Called from the trio thread itself (a test reading the registry in-process), it runs `fn` at once.
After the trio run has finished it returns None: a scrape racing a shutdown gets no samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import trio

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TrioScrape:
    """Runs view functions in one trio run's thread, on behalf of the metrics thread."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    @classmethod
    def current(cls) -> TrioScrape:
        """The bridge to the trio run this is called from."""
        return cls(trio.lowlevel.current_trio_token())

    def run(self, view: Callable[[], T]) -> T | None:
        """`view()` computed in the trio thread; None if the run is over or `view` failed (a
        failing view is logged: one bad source must not break the whole scrape)."""
        try:
            in_trio_thread = trio.lowlevel.current_trio_token() is self._token
        except RuntimeError:
            in_trio_thread = False
        try:
            if in_trio_thread:
                return view()
            return trio.from_thread.run_sync(view, trio_token=self._token)
        except trio.RunFinishedError:
            return None
        except Exception:
            logger.exception("computing a metrics view failed")
            return None
