"""FakeShell: the caller a coordinator core expects, played synchronously for unit tests.

Both coordinator cores (groups, transactions) have the same caller, `broker.coordinator_shell`:
it loads the core with the partition's records, queues every write (`PersistRecords`,
`PersistMarker`) in emission order and reports each outcome in that order, ticks it, and routes
each response to its request by `request_id`. This plays that part with a clock, a list for the
partition and a counter for request ids, so the two harnesses (harness.py here, and
tests/unit/transactions/coordinator_harness.py) add only what their core has of its own: how a
write lands in the partition list, other actions (the transaction core's markers), and when
queued work is carried out without the test asking (`settle`).
"""

from __future__ import annotations

from typing import Any

from broker.consumer_groups.actions import PersistMarker, PersistRecords
from broker.consumer_groups.events import AppendFailed, LoadPartition, Tick
from wire.error_codes import ErrorCode


class FakeShell:
    """A core, its partition as `log`, the writes not yet reported (`pending`), and every
    response by request id (`responses`) and in emission order (`arrivals`); a request answered
    twice fails the test."""

    def __init__(
        self, core: Any, *, records: tuple[Any, ...], now_ms: int, epoch: int, load: bool = True
    ) -> None:
        self.core = core
        self.now_ms = now_ms
        self.log: list[Any] = list(records)
        self.pending: list[Any] = []
        self.responses: dict[int, Any] = {}
        self.arrivals: list[Any] = []  # every response, in the order the core emitted them
        self.next_request_id = 1
        if load:
            self.handle(LoadPartition(now_ms=now_ms, coordinator_epoch=epoch, records=records))

    # --- the shell's loop -------------------------------------------------------------------------

    def handle(self, event: Any) -> list[Any]:
        actions: list[Any] = self.core.handle(event)
        for action in actions:
            if isinstance(action, PersistRecords | PersistMarker):
                self.pending.append(action)
            elif hasattr(action, "request_id"):
                assert action.request_id not in self.responses, f"answered twice: {action}"
                self.responses[action.request_id] = action
                self.arrivals.append(action)
            else:
                self.carry_out(action)
        self.settle()
        return actions

    def carry_out(self, action: Any) -> None:
        """An action that is neither a write nor a response (none, unless a subclass says)."""
        raise AssertionError(f"unexpected action {action!r}")

    def settle(self) -> None:
        """Carry out what the test leaves to the shell, after every event (nothing here)."""

    def fail_next(self, error: ErrorCode = ErrorCode.COORDINATOR_NOT_AVAILABLE) -> None:
        write = self.pending.pop(0)
        self.handle(AppendFailed(now_ms=self.now_ms, token=write.token, error=error))

    def tick(self, advance_ms: int = 0) -> list[Any]:
        self.now_ms += advance_ms
        return self.handle(Tick(now_ms=self.now_ms))

    # --- requests ---------------------------------------------------------------------------------

    def request(self, cls: type[Any], **fields: Any) -> int:
        request_id = self.next_request_id
        self.next_request_id += 1
        self.handle(cls(now_ms=self.now_ms, request_id=request_id, **fields))
        return request_id

    def response(self, request_id: int) -> Any:
        return self.responses.get(request_id)
