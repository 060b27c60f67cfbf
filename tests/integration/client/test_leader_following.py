"""The trio client against a fake two-broker cluster: per-leader routing, a leader that dies with
requests in flight, a partition without a leader, and control batches.

The fakes share one leaders table ({(topic, partition): node id}); a test moves leadership by
editing it, and kills a broker with `FakeBroker.kill()` (its connections drop at once).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import pytest
import trio

from client.aio import AdminClient, Consumer, Producer
from client.types import TopicPartition
from tests.integration.client.fake_broker import FakeBroker
from wire.batch import iter_batches

WAIT_S = 10.0


class FakeCluster:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.leaders: dict[tuple[str, int], int] = {}
        self.brokers: list[FakeBroker] = []

    async def start(self, count: int) -> None:
        for node_id in range(1, count + 1):
            broker = FakeBroker(node_id, leaders=self.leaders, peers=self.brokers)
            self.brokers.append(broker)
            await self.nursery.start(broker.serve)

    def create(self, topic: str, partitions: int) -> None:
        for broker in self.brokers:
            broker.create(topic, partitions)

    def node(self, node_id: int) -> FakeBroker:
        return self.brokers[node_id - 1]

    @property
    def bootstrap(self) -> str:
        return self.brokers[0].bootstrap


@pytest.fixture
async def fakes(nursery: trio.Nursery) -> AsyncIterator[FakeCluster]:
    cluster = FakeCluster(nursery)
    await cluster.start(2)
    cluster.create("t", 2)
    yield cluster
    for broker in cluster.brokers:
        broker.kill()


def values_in(broker: FakeBroker, topic: str, partition: int) -> list[bytes]:
    from wire.batch import decode_records

    out: list[bytes] = []
    for batch in broker.logs[(topic, partition)]:
        for position, header in iter_batches(batch):
            if not header.is_control:
                out += [r.value for r in decode_records(batch, position, header=header)]
    return out


async def wait_for(condition: object, what: str) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.001)


async def test_list_offsets_go_to_each_partitions_leader(fakes: FakeCluster) -> None:
    fakes.leaders[("t", 1)] = 2
    fakes.node(1).ends[("t", 0)] = 5
    fakes.node(2).ends[("t", 1)] = 7
    tps = [TopicPartition("t", 0), TopicPartition("t", 1)]
    async with Consumer(fakes.bootstrap, auto_offset_reset="latest") as consumer:
        consumer.assign(tps)
        assert await consumer.end_offsets(tps) == {tps[0]: 5, tps[1]: 7}
        assert [await consumer.position(tp) for tp in tps] == [5, 7]
    async with AdminClient(fakes.bootstrap) as admin:
        assert await admin.list_offsets(tps, -1) == {tps[0]: 5, tps[1]: 7}


async def test_list_offsets_retry_when_the_leader_moves(fakes: FakeCluster) -> None:
    fakes.node(2).ends[("t", 0)] = 3
    tp = TopicPartition("t", 0)
    async with AdminClient(fakes.bootstrap) as admin:
        await admin.list_topics()  # caches node 1 as the leader of t-0
        assert admin._cluster.leader("t", 0) == 1
        fakes.leaders[("t", 0)] = 2  # moved: node 1 now answers NOT_LEADER
        assert await admin.list_offsets([tp], -1) == {tp: 3}
    assert fakes.node(1).list_offsets_requests >= 1 and fakes.node(2).list_offsets_requests >= 1


async def test_the_producer_follows_a_killed_leader_and_keeps_order(fakes: FakeCluster) -> None:
    fakes.leaders[("t", 0)] = 2
    old, new = fakes.node(2), fakes.node(1)
    async with Producer(fakes.bootstrap, linger_ms=0, batch_bytes=64, retry_backoff_ms=1) as p:
        first = [await p.send("t", b"%d" % i, partition=0) for i in range(10)]
        await p.flush()
        assert [(await f).offset for f in first] == list(range(10))
        old.hold_produce = True  # the next produce stays in flight...
        sent_before = old.produce_requests
        rest = [await p.send("t", b"%d" % i, partition=0) for i in range(10, 40)]
        await wait_for(lambda: old.produce_requests > sent_before, "a produce in flight")
        # ...when node 2 dies and node 1 takes over with the same log (and so, as a real
        # replica rebuilds it from the log, the same producer state).
        new.logs[("t", 0)] = list(old.logs[("t", 0)])
        new.ends[("t", 0)] = old.ends[("t", 0)]
        new.producers[("t", 0)] = copy.deepcopy(old.producers.get(("t", 0), {}))
        fakes.leaders[("t", 0)] = 1
        old.kill()
        with trio.fail_after(WAIT_S):
            offsets = [(await f).offset for f in rest]
    assert offsets == list(range(10, 40))  # one per record, strictly increasing
    assert values_in(new, "t", 0) == [b"%d" % i for i in range(40)]


async def test_a_partition_without_a_leader_is_retried_until_one_is_elected(
    fakes: FakeCluster,
) -> None:
    fakes.leaders[("t", 1)] = -1
    async with Producer(fakes.bootstrap, linger_ms=0, retry_backoff_ms=1) as producer:
        future = await producer.send("t", b"x", partition=1)
        before = fakes.node(1).metadata_requests
        await wait_for(lambda: fakes.node(1).metadata_requests >= before + 2, "metadata refreshed")
        assert not future.done()
        fakes.leaders[("t", 1)] = 2  # elected
        with trio.fail_after(WAIT_S):
            assert (await future).offset == 0
    assert values_in(fakes.node(2), "t", 1) == [b"x"]


async def test_the_consumer_steps_over_control_batches(fakes: FakeCluster) -> None:
    broker = fakes.node(1)
    broker.append_control("t", 0)
    broker.append_control("t", 0)
    tp = TopicPartition("t", 0)
    async with Consumer(fakes.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([tp])
        assert await consumer.poll(timeout_ms=100) == []
        await wait_for(lambda: consumer._states[tp].position == 2, "position past the no-ops")
        async with Producer(fakes.bootstrap, linger_ms=0) as producer:
            await producer.send_and_wait("t", b"a", partition=0)
        broker.append_control("t", 0)  # a later term's no-op after the record
        records = []
        with trio.fail_after(WAIT_S):
            while not records:
                records = await consumer.poll(timeout_ms=100)
        assert [(r.offset, r.value) for r in records] == [(2, b"a")]
        await wait_for(lambda: consumer._states[tp].position == 4, "position past the last no-op")
        assert await consumer.position(tp) == 4


async def test_the_consumer_follows_a_leader_that_moves(fakes: FakeCluster) -> None:
    fakes.leaders[("t", 0)] = 2
    tp = TopicPartition("t", 0)
    async with Producer(fakes.bootstrap, linger_ms=0) as producer:
        for i in range(5):
            await producer.send_and_wait("t", b"%d" % i, partition=0)
    async with Consumer(fakes.bootstrap, auto_offset_reset="earliest", retry_backoff_ms=1) as c:
        c.assign([tp])
        seen: list[bytes] = []
        with trio.fail_after(WAIT_S):
            while len(seen) < 5:
                seen += [r.value for r in await c.poll(timeout_ms=100)]
        old, new = fakes.node(2), fakes.node(1)
        new.logs[("t", 0)] = list(old.logs[("t", 0)])
        new.ends[("t", 0)] = old.ends[("t", 0)]
        fakes.leaders[("t", 0)] = 1
        old.kill()
        async with Producer(fakes.bootstrap, linger_ms=0) as producer:
            for i in range(5, 10):
                await producer.send_and_wait("t", b"%d" % i, partition=0)
        with trio.fail_after(WAIT_S):
            while len(seen) < 10:
                seen += [r.value for r in await c.poll(timeout_ms=100)]
    assert seen == [b"%d" % i for i in range(10)]
