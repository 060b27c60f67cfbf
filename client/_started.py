"""`StartedByWith`: `with resource:` starts it and closes it, whatever happens inside.

The embedded broker, the embedded cluster and the fault proxy are all started by `start()` and
released by `close()`; this is their one `with` protocol.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class StartedByWith(abc.ABC):
    """Mixin: `__enter__` returns `self.start()`, `__exit__` calls `self.close()`."""

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
