"""Goal: a coordinator core that raises (a broken invariant, as in issue 17) costs only the
requests waiting on that partition a retry: they are answered NOT_COORDINATOR, the failure is
logged with its traceback, the broker keeps serving, and the partition is reloaded from its log."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from broker.consumer_groups.actions import Action
from broker.consumer_groups.coordinator import GroupCoordinatorCore
from broker.consumer_groups.events import (
    Event,
    LoadPartition,
    OffsetCommitRequested,
    RecordsPersisted,
)
from broker.consumer_groups.offsets import coordinator_partition
from broker.consumer_groups.service import OFFSETS_TOPIC
from tests.unit.server.conftest import StartBroker
from tests.unit.server.wire_client import WireClient
from wire import codec
from wire.error_codes import ErrorCode

from .test_service import GROUP_SETTINGS, commit, connect, join_alone, join_request

PARTITIONS = 8  # offsets_topic_partitions' default


def group_on(partition: int, *, other_than: str = "") -> str:
    """A group id whose coordinator partition is `partition`."""
    return next(
        name
        for name in (f"group-{i}" for i in itertools.count())
        if name != other_than and coordinator_partition(name, PARTITIONS) == partition
    )


class InjectedFault(AssertionError):
    """What a broken invariant raises inside a core."""


def fail_once(monkeypatch: pytest.MonkeyPatch, when: Callable[[Event], bool]) -> list[Event]:
    """Make the first core event matching `when` raise; returns the events that did."""
    raised: list[Event] = []
    handle = GroupCoordinatorCore.handle

    def faulty(core: GroupCoordinatorCore, event: Event) -> list[Action]:
        if not raised and when(event):
            raised.append(event)
            raise InjectedFault(f"injected: broken invariant on {type(event).__name__}")
        return handle(core, event)

    monkeypatch.setattr(GroupCoordinatorCore, "handle", faulty)
    return raised


async def once_served(send: Callable[[], Awaitable[Any]]) -> Any:
    """The answer to `send()` once the partition is served again: retried, as a client does,
    while it answers NOT_COORDINATOR (the watcher is reloading the partition)."""
    with trio.fail_after(10):
        while (answer := await send()).error is ErrorCode.NOT_COORDINATOR:
            await trio.sleep(0.01)
    return answer


async def fetched(client: WireClient, group: str) -> dict[int, int]:
    """The group's committed offsets on topic t, once its coordinator serves it again."""
    answer = await once_served(lambda: client.request(codec.OffsetFetchRequest(group_id=group)))
    assert answer.error is ErrorCode.NONE, answer
    return {p.partition: p.offset for p in answer.partitions}


@pytest.mark.parametrize("where", ["request", "write-report"])
async def test_a_core_that_raises_answers_its_waiters_and_is_reloaded(
    start_broker: StartBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    broker = await start_broker(**GROUP_SETTINGS)
    client = await connect(broker)
    join = await join_alone(client, "g")
    assert (await commit(client, "g", join, 3)).partitions[0].error is ErrorCode.NONE
    # A newcomer's join waits on the core (until the first member rejoins).
    newcomer = await connect(broker)
    waiting = await newcomer.send(join_request("g"))
    with trio.fail_after(5):
        while True:
            described = await client.request(codec.DescribeGroupsRequest(group_ids=("g",)))
            if described.groups[0].state == "PreparingRebalance":
                break
    # "request": the core raises handling the commit itself (it never takes effect);
    # "write-report": it raises in the writer task, on the commit's RecordsPersisted (as in
    # issue 17), after the record is durable in the log.
    if where == "request":
        raised = fail_once(monkeypatch, lambda e: isinstance(e, OffsetCommitRequested))
    else:
        raised = fail_once(monkeypatch, lambda e: isinstance(e, RecordsPersisted))
    broken = await commit(client, "g", join, 5)
    assert raised, "the fault was injected"
    assert broken.error is ErrorCode.NOT_COORDINATOR, broken
    with trio.fail_after(5):
        answer = await newcomer.wait_response(waiting)
    assert answer.error is ErrorCode.NOT_COORDINATOR, "every request waiting on the core"
    failure = next(r for r in caplog.records if "the group coordinator failed" in r.getMessage())
    assert failure.exc_info is not None and failure.exc_info[0] is InjectedFault

    # The other partitions never stopped serving.
    elsewhere = group_on((coordinator_partition("g", PARTITIONS) + 1) % PARTITIONS)
    other = await client.request(
        codec.OffsetCommitRequest(
            group_id=elsewhere,
            partitions=(codec.OffsetCommitPartition(topic="t", partition=0, offset=1),),
        )
    )
    assert other.error is ErrorCode.NONE and other.partitions[0].error is ErrorCode.NONE

    # Reloaded from the log, which is the truth: the commit that raised in its report is there
    # (it was durable; the client was told NOT_COORDINATOR and may retry it: same result).
    assert await fetched(client, "g") == {0: 5 if where == "write-report" else 3}
    # The group resumes its generation (docs: failover) and serves its member's commits.
    again = await once_served(lambda: commit(client, "g", join, 7))
    assert again.error is ErrorCode.NONE and again.partitions[0].error is ErrorCode.NONE
    assert await fetched(client, "g") == {0: 7}
    # Member ids the discarded core handed out (the newcomer's, unanswered) are not reused,
    # although the reloaded core has the same coordinator epoch.
    sibling = group_on(coordinator_partition("g", PARTITIONS), other_than="g")
    fresh = await client.request(join_request(sibling))
    assert fresh.error is ErrorCode.NONE
    assert fresh.member_id.split("-")[1] == join.member_id.split("-")[1]  # the same epoch
    assert int(fresh.member_id.rsplit("-", 1)[1]) > 2, (join.member_id, fresh.member_id)
    await newcomer.aclose()
    await client.aclose()


async def test_a_core_that_raises_while_loading_leaves_the_broker_serving(
    start_broker: StartBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The reload after a failure replays the same log: if the load itself raises, the partition
    # stays unserved (NOT_COORDINATOR) rather than failing again and again, and nothing else stops.
    broker = await start_broker(**GROUP_SETTINGS)
    client = await connect(broker)
    join = await join_alone(client, "g")
    loads = 0
    handle = GroupCoordinatorCore.handle

    def faulty(core: GroupCoordinatorCore, event: Event) -> list[Action]:
        nonlocal loads
        if isinstance(event, OffsetCommitRequested):
            raise InjectedFault("injected: broken invariant on a commit")
        if isinstance(event, LoadPartition):
            loads += 1
            raise InjectedFault("injected: broken invariant while loading")
        return handle(core, event)

    monkeypatch.setattr(GroupCoordinatorCore, "handle", faulty)
    assert (await commit(client, "g", join, 5)).error is ErrorCode.NOT_COORDINATOR
    with trio.fail_after(5):
        while "cannot be loaded" not in caplog.text:
            await trio.sleep(0.01)  # the watcher's reload attempt
    monkeypatch.setattr(GroupCoordinatorCore, "handle", handle)
    # However often the watcher looks again (each change of the partition wakes it), it does
    # not load the same leadership again, and the partition answers NOT_COORDINATOR.
    state = broker.context.partitions[(OFFSETS_TOPIC, coordinator_partition("g", PARTITIONS))]
    for _ in range(3):
        state.notify()
        await trio.testing.wait_all_tasks_blocked()
    assert loads == 1
    fetch = await client.request(codec.OffsetFetchRequest(group_id="g"))
    assert fetch.error is ErrorCode.NOT_COORDINATOR
    elsewhere = group_on((coordinator_partition("g", PARTITIONS) + 1) % PARTITIONS)
    served = await client.request(codec.OffsetFetchRequest(group_id=elsewhere))
    assert served.error is ErrorCode.NONE
    await client.aclose()
