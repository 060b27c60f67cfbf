"""Three real `broker serve` processes: a network partition isolates a partition's leader, a
follower that diverged is truncated to the new leader's log, and a killed broker catches up.

The brokers run with fast Raft timers (50 ms ticks: elections in 0.5-1 s). Replica logs are
compared on disk, byte for byte, after every broker has stopped.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from broker.config import LogConfig
from broker.log.manager import LogManager
from client.embedded_cluster import EmbeddedCluster
from tests.log_reading import log_bytes
from tests.unit.server.wire_client import WireClient, make_batch
from wire import codec
from wire.batch import build_batch, decode_records, iter_batches
from wire.error_codes import ErrorCode

FAST_RAFT = (
    "--set", "raft_tick_ms=50",
    "--set", "broker_heartbeat_interval_ms=200",
    "--set", "broker_session_timeout_ms=2000",
)  # fmt: skip
TOPIC = "replicated"
WAIT_S = 30.0


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3, proxies=True, extra_args=FAST_RAFT) as running:
        yield running


def _address(cluster: EmbeddedCluster, node_id: int) -> tuple[str, int]:
    node = cluster.node(node_id)
    return node.host, node.port


async def _connect(cluster: EmbeddedCluster, node_id: int) -> WireClient:
    return await WireClient.connect(*_address(cluster, node_id))


async def _leader_seen_by(client: WireClient, *, not_in: tuple[int, ...] = ()) -> int:
    """Wait until `client`'s broker names a leader of TOPIC-0 outside `not_in`; return it."""
    with trio.fail_after(WAIT_S):
        while True:
            response = await client.request(codec.MetadataRequest(topics=(TOPIC,)))
            partitions = response.topics[0].partitions
            if partitions and partitions[0].leader_id > 0 and partitions[0].leader_id not in not_in:
                return int(partitions[0].leader_id)
            await trio.sleep(0.05)


async def _produce_until_acked(
    cluster: EmbeddedCluster, values: list[bytes], *, ask: int, not_in: tuple[int, ...] = ()
) -> int:
    """acks=all to the leader that broker `ask` names (outside `not_in`), following leadership
    on retriable refusals as a client does; the base offset. Idempotent, as the SDK's producer
    is by default: a refused attempt may still have committed (a leader deposed after its
    append), and its retry is then answered with the stored offsets, not written again."""
    with trio.fail_after(WAIT_S):
        batch = await _idempotent_batch(cluster, ask, values)
        while True:
            metadata = await _connect(cluster, ask)
            leader = await _leader_seen_by(metadata, not_in=not_in)
            await metadata.aclose()
            writer = await _connect(cluster, leader)
            result = await writer.produce(TOPIC, 0, batch)
            await writer.aclose()
            if result.error is ErrorCode.NONE:
                return int(result.base_offset)
            assert result.error.retriable, result
            await trio.sleep(0.05)


async def _idempotent_batch(cluster: EmbeddedCluster, ask: int, values: list[bytes]) -> bytes:
    """`values` as the first batch (sequence 0) of a new idempotent producer, whose id broker
    `ask` hands out."""
    while True:
        client = await _connect(cluster, ask)
        response = await client.request(codec.InitProducerIdRequest())
        await client.aclose()
        if response.error is ErrorCode.NONE:
            break
        assert response.error.retriable, response
        await trio.sleep(0.05)
    return make_batch(
        values,
        producer_id=response.producer_id,
        producer_epoch=response.producer_epoch,
        base_sequence=0,
    )


def _data_values(data_dir: Path) -> list[bytes]:
    """The values of every data record in the replica's log, in offset order."""
    data = _replica_log(data_dir)
    values = []
    for position, header in iter_batches(data):
        if not header.is_control:
            values += [bytes(r.value or b"") for r in decode_records(data, position, header=header)]
    return values


def _replica_log(data_dir: Path) -> bytes:
    """The whole log of a stopped broker's replica of TOPIC-0."""
    logs = LogManager.open(data_dir, LogConfig())
    try:
        return log_bytes(logs.get(TOPIC, 0))
    finally:
        logs.close()


def _replica_logs(cluster: EmbeddedCluster) -> list[bytes]:
    """Every replica's log, once all three hold the same committed log and the preferred leader
    leads (else the preferred-leader rule may still move leadership, and that new term's no-op
    would reach only some of the brokers before they are killed). The brokers are killed, not
    stopped: a stopping broker hands its leaderships over, and the new terms' no-op entries would
    reach only the brokers still running. They are frozen together (SIGSTOP) before the kills:
    a killed broker's sockets close at once, and a follower that sees its leader die that way
    campaigns at once (docs/raft.md, "Dead leaders are succeeded at once"), so the last one
    killed could otherwise append a new term's no-op that the others never see (a failure seen
    in 3 of 10 runs)."""

    async def converged() -> None:
        clients = [await _connect(cluster, node_id) for node_id in cluster.node_ids]
        with trio.fail_after(WAIT_S):
            while True:
                ends, leaders = set(), set()
                for client in clients:
                    response = await client.request(codec.DescribeTopicsRequest(topics=(TOPIC,)))
                    partition = response.topics[0].partitions[0]
                    ends.add((partition.log_end_offset, partition.high_watermark))
                    leaders.add((partition.leader_id, partition.replicas[0]))
                same_end = len(ends) == 1 and len({*next(iter(ends))}) == 1
                if same_end and len(leaders) == 1 and len({*next(iter(leaders))}) == 1:
                    break
                await trio.sleep(0.05)
        for client in clients:
            await client.aclose()

    trio.run(converged)
    for node_id in cluster.node_ids:
        process = cluster.node(node_id).process
        assert process is not None, f"broker {node_id} is not running"
        os.kill(process.pid, signal.SIGSTOP)
    for node_id in cluster.node_ids:
        cluster.kill(node_id)
    return [_replica_log(cluster.node(node_id).data_dir) for node_id in cluster.node_ids]


async def _setup(cluster: EmbeddedCluster) -> tuple[WireClient, int]:
    client = await _connect(cluster, 1)
    created = await client.request(
        codec.CreateTopicsRequest(
            topics=(codec.NewTopic(name=TOPIC, partitions=1, replication_factor=3),)
        )
    )
    assert created.topics[0].error is ErrorCode.NONE, created
    return client, await _leader_seen_by(client)


def test_an_isolated_leader_stops_acknowledging_and_its_divergent_tail_is_truncated(
    cluster: EmbeddedCluster,
) -> None:
    async def scenario() -> tuple[int, list[bytes]]:
        client, leader = await _setup(cluster)
        await _produce_until_acked(cluster, [b"before-%d" % i for i in range(20)], ask=1)
        # Wait until the leader is stable (preferred leadership settled), then cut it off.
        leader = await _leader_seen_by(client)
        isolated = await _connect(cluster, leader)
        cluster.isolate(leader)
        # acks=1: the isolated leader appends locally while it still believes it leads. Those
        # records are never committed: a divergent tail.
        divergent = [b"divergent-%d" % i for i in range(5)]
        first = await isolated.produce(TOPIC, 0, make_batch(divergent), acks=codec.ACKS_LEADER)
        # acks=all: never acknowledged, whatever the isolated broker says instead.
        refused = await isolated.produce(TOPIC, 0, make_batch([b"never"]))
        assert refused.error is not ErrorCode.NONE, refused
        assert refused.error in (ErrorCode.NOT_LEADER, ErrorCode.REQUEST_TIMED_OUT), refused
        # The majority elects a new leader, which takes writes.
        others = [n for n in cluster.node_ids if n != leader]
        after = [b"after-%d" % i for i in range(20)]
        await _produce_until_acked(cluster, after, ask=others[0], not_in=(leader,))
        majority = await _connect(cluster, others[0])
        cluster.heal()
        # The old leader rejoins as a follower: it must give up its tail and take the new log.
        with trio.fail_after(WAIT_S):
            while True:
                response = await isolated.request(codec.DescribeTopicsRequest(topics=(TOPIC,)))
                described = response.topics[0].partitions[0]
                if described.high_watermark >= (await _end_offset(majority)):
                    break
                await trio.sleep(0.05)
        for connection in (client, isolated, majority):
            await connection.aclose()
        return first.error.wire_id, divergent

    appended_error, divergent = trio.run(scenario)
    logs = _replica_logs(cluster)
    assert logs[0] == logs[1] == logs[2], "replica logs differ after the heal"
    values = _data_values(cluster.node(1).data_dir)
    assert [v for v in values if v.startswith(b"before")] == [b"before-%d" % i for i in range(20)]
    assert [v for v in values if v.startswith(b"after")] == [b"after-%d" % i for i in range(20)]
    assert b"never" not in values
    if appended_error == ErrorCode.NONE.wire_id:
        # It was appended on the old leader only: truncated away everywhere.
        assert not set(divergent) & set(values)


async def _end_offset(client: WireClient) -> int:
    response = await client.request(codec.DescribeTopicsRequest(topics=(TOPIC,)))
    return int(response.topics[0].partitions[0].high_watermark)


def test_a_killed_follower_restarts_and_catches_up(cluster: EmbeddedCluster) -> None:
    async def phase_one() -> int:
        client, _ = await _setup(cluster)
        await _produce_until_acked(cluster, [b"one-%d" % i for i in range(30)], ask=1)
        await client.aclose()
        return await _stable_leader(cluster)

    leader = trio.run(phase_one)
    follower = next(n for n in cluster.node_ids if n != leader)
    cluster.kill(follower)

    async def phase_two() -> None:
        for i in range(10):
            batch = [b"two-%d-%d" % (i, j) for j in range(10)]
            await _produce_until_acked(cluster, batch, ask=leader, not_in=(follower,))

    trio.run(phase_two)

    async def fenced() -> None:
        # Its heartbeats stopped: after the session timeout (2 s here) the controller fences it,
        # so Metadata no longer names it as a leader or an in-sync replica.
        client = await _connect(cluster, leader)
        with trio.fail_after(WAIT_S):
            while True:
                status = await client.request(codec.ClusterStatusRequest())
                states = {broker.node_id: broker.state for broker in status.brokers}
                if states[follower] == "fenced":
                    break
                await trio.sleep(0.05)
            metadata = await client.request(codec.MetadataRequest(topics=(TOPIC,)))
        await client.aclose()
        assert follower not in metadata.topics[0].partitions[0].isr
        assert follower not in [broker.node_id for broker in metadata.brokers]

    trio.run(fenced)
    cluster.start(follower)
    cluster.wait_ready()  # ACTIVE again: registered anew, caught up, unfenced

    async def caught_up() -> None:
        leader_client = await _connect(cluster, await _stable_leader(cluster))
        target = await _end_offset(leader_client)
        follower_client = await _connect(cluster, follower)
        with trio.fail_after(WAIT_S):
            while (await _end_offset(follower_client)) < target:
                await trio.sleep(0.05)
        await leader_client.aclose()
        await follower_client.aclose()

    trio.run(caught_up)
    logs = _replica_logs(cluster)
    assert logs[0] == logs[1] == logs[2]
    values = _data_values(cluster.node(follower).data_dir)
    assert len(values) == 130
    assert values[:30] == [b"one-%d" % i for i in range(30)]


async def _stable_leader(cluster: EmbeddedCluster) -> int:
    client = await _connect(cluster, 1)
    leader = await _leader_seen_by(client)
    await client.aclose()
    return leader


def test_a_stopping_broker_hands_its_leaderships_over_first(cluster: EmbeddedCluster) -> None:
    # Goal: controlled shutdown. SIGTERM on a partition leader moves every leadership it holds
    # to a caught-up follower before it stops; the others go on taking writes.
    async def settle() -> int:
        client, _ = await _setup(cluster)
        await _produce_until_acked(cluster, [b"x"], ask=1)
        await client.aclose()
        return await _stable_leader(cluster)

    leader = trio.run(settle)
    assert cluster.stop(leader) == 0
    log = cluster.node(leader).log_path.read_text()
    assert "leaderships handed over (0 not moved)" in log, cluster.log_tails()
    survivor = next(n for n in cluster.node_ids if n != leader)

    async def still_writable() -> None:
        await _produce_until_acked(cluster, [b"y"], ask=survivor, not_in=(leader,))
        # It asked to be SHUTTING_DOWN first, so no leadership was handed back to it; silent
        # now, it stays so (only ACTIVE brokers are fenced) until it registers again.
        client = await _connect(cluster, survivor)
        status = await client.request(codec.ClusterStatusRequest())
        await client.aclose()
        states = {broker.node_id: broker.state for broker in status.brokers}
        assert states[leader] == "shutting_down", states

    trio.run(still_writable)


def test_a_produce_with_a_refused_batch_writes_none_of_its_partitions_batches(
    cluster: EmbeddedCluster,
) -> None:
    # Goal: all or nothing per partition in a cluster too. The second batch (a control batch,
    # which only the broker may write) is refused, and the valid first one is not proposed.
    async def scenario() -> None:
        client, _ = await _setup(cluster)
        await _produce_until_acked(cluster, [b"ok"], ask=1)
        leader = await _stable_leader(cluster)
        writer = await _connect(cluster, leader)
        before = await _end_offset(writer)
        records = make_batch([b"valid"]) + build_batch([(0, None, b"x", None)], control=True)
        refused = await writer.produce(TOPIC, 0, records)
        assert refused.error is ErrorCode.INVALID_RECORD, refused
        await _produce_until_acked(cluster, [b"after"], ask=leader)
        response = await writer.request(codec.DescribeTopicsRequest(topics=(TOPIC,)))
        log_end = response.topics[0].partitions[0].log_end_offset
        # Only "after" was added (at most a leader no-op besides, if leadership moved).
        assert before + 1 <= log_end <= before + 2
        for connection in (client, writer):
            await connection.aclose()

    trio.run(scenario)
    values = _data_values_of_converged(cluster)
    assert b"valid" not in values and values[-1] == b"after"


def _data_values_of_converged(cluster: EmbeddedCluster) -> list[bytes]:
    _replica_logs(cluster)  # waits for convergence and stops the brokers
    return _data_values(cluster.node(1).data_dir)
