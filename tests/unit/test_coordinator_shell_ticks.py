"""Goal: the coordinator shell ticks a core when its deadline has come, and only then: an idle
core (no deadline, or one still ahead) is left alone, so an idle broker's coordinators cost
nothing per round. Fake cores on trio's autojump clock."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from broker.coordinator_shell import CoordinatorShell, Tick
from tests.unit.transactions.test_coordinator_service import FakeContext, MemoryTopics

TOPIC = "__fake_coordinator"


class DeadlineCore:
    """Has something to do at `deadline_ms` (None: never); a Tick at or after it does it."""

    def __init__(self, deadline_ms: int | None) -> None:
        self.deadline_ms = deadline_ms
        self.ticks: list[int] = []

    def handle(self, event: Any) -> list[Any]:
        if isinstance(event, Tick):
            self.ticks.append(event.now_ms)
            if self.deadline_ms is not None and event.now_ms >= self.deadline_ms:
                self.deadline_ms = None  # done
        return []

    def next_deadline_ms(self) -> int | None:
        return self.deadline_ms


async def test_only_cores_whose_deadline_came_are_ticked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadlines = {0: None, 1: 250, 2: 1_000}
    cores: dict[int, DeadlineCore] = {}

    def new_core(partition: int) -> DeadlineCore:
        cores[partition] = DeadlineCore(deadlines[partition])
        return cores[partition]

    topics = MemoryTopics()
    topics.create(TOPIC, partitions=3, configs={})
    shell = CoordinatorShell(
        FakeContext(topics, {}),
        topic=TOPIC,
        name="fake",
        new_core=new_core,
        next_epoch=lambda: 1,
        clock_ms=lambda: int(trio.current_time() * 1000),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(shell.run)
        await trio.sleep(2)  # the behaviour under test: 2 s of autojump time, deadlines come due
        nursery.cancel_scope.cancel()
    assert cores[0].ticks == [], "a core with no deadline is never ticked"
    assert len(cores[1].ticks) == 1 and 250 <= cores[1].ticks[0] < 260, cores[1].ticks
    assert len(cores[2].ticks) == 1 and 1_000 <= cores[2].ticks[0] < 1_010, cores[2].ticks
