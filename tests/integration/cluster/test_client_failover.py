"""The SDK and `broker-cli` against a real 3-broker cluster (`EmbeddedCluster`): control batches in
partition logs, per-leader routing, a leader killed with SIGKILL under load, cluster status.

One cluster for the module (starting three brokers takes seconds). A test that kills a node starts
it again before it returns and waits until the cluster is whole.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator

import pytest
import trio
from typer.testing import CliRunner

from cli.broker_cli import app
from client import AdminClient, Consumer, Producer, TopicPartition, aio
from client.embedded_cluster import EmbeddedCluster
from client.types import ConsumerRecord, RecordMetadata
from wire import codec

WAIT_S = 60.0
# Between two checks of a condition that needs a round trip to the cluster.
CHECK_INTERVAL_S = 0.05
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3) as running:
        yield running


@pytest.fixture
def topic() -> str:
    return f"failover-{os.getpid()}-{next(_names)}"


def wait_until(condition: Callable[[], bool], message: str, timeout_s: float = WAIT_S) -> None:
    """Check `condition` (a round trip to the cluster) until it holds; fail after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, message
        time.sleep(CHECK_INTERVAL_S)


def healthy(admin: AdminClient, name: str) -> bool:
    description = admin.describe_topic(name)
    return all(p.leader_id >= 0 and len(p.isr) == 3 for p in description.partitions)


def create_replicated(cluster: EmbeddedCluster, name: str, partitions: int) -> None:
    """Create `name` with RF 3; wait until every partition has a leader and 3 in-sync replicas."""
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(name, partitions, replication_factor=3)
        wait_until(lambda: healthy(admin, name), f"{name} never got leaders and a full ISR")


# --- control batches and per-leader routing -------------------------------------------------------


def test_a_consumer_reads_every_record_and_steps_over_control_batches(
    cluster: EmbeddedCluster, topic: str
) -> None:
    create_replicated(cluster, topic, 3)
    tps = [TopicPartition(topic, p) for p in range(3)]
    with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign(tps)
        # Nothing produced yet: each log holds only its leaders' no-op (control) batches, so
        # the end offset is above 0 and the position must reach it without any record.
        ends = consumer.end_offsets(tps)  # one ListOffsets per leader (three leaders)
        assert all(end >= 1 for end in ends.values()), ends
        assert consumer.poll(timeout_ms=200) == []
        # A leadership change (the preferred leader taking over) may append another no-op
        # meanwhile: the position must reach the log end as it is now, with no record returned.
        wait_until(
            lambda: (
                consumer.poll(timeout_ms=50) == []
                and all(
                    consumer.position(tp) == end for tp, end in consumer.end_offsets(tps).items()
                )
            ),
            f"positions never stepped over the control batches: {ends}",
        )
        assert consumer.beginning_offsets(tps) == dict.fromkeys(tps, 0)

        with Producer(cluster.bootstrap) as producer:  # acks=all by default
            sent = [producer.send(topic, f"v{i}".encode(), partition=i % 3) for i in range(300)]
            acked = [future.result(timeout=WAIT_S) for future in sent]
        records: list[ConsumerRecord] = []
        end = time.monotonic() + WAIT_S
        while len(records) < len(acked) and time.monotonic() < end:
            records += consumer.poll(timeout_ms=500)
        assert len(records) == len(acked)
        by_partition = {
            tp.partition: [r.value for r in records if r.partition == tp.partition] for tp in tps
        }
        assert by_partition == {p: [f"v{i}".encode() for i in range(p, 300, 3)] for p in range(3)}
        assert {(r.partition, r.offset) for r in records} == {
            (m.partition, m.offset) for m in acked
        }
        wait_until(
            lambda: (
                consumer.poll(timeout_ms=50) == []
                and all(
                    consumer.position(tp) == end for tp, end in consumer.end_offsets(tps).items()
                )
            ),
            "positions never reached the log end after the last record",
        )
        # Timestamp lookups go to the leaders too (a no-op batch may carry the first timestamp).
        found = consumer.offsets_for_times(dict.fromkeys(tps, 0))
        assert all(
            (hit := found[tp]) is not None
            and 0 <= hit.offset <= min(m.offset for m in acked if m.partition == tp.partition)
            for tp in tps
        )


def test_topics_describe_and_cluster_status_from_the_cli(
    cluster: EmbeddedCluster, topic: str
) -> None:
    create_replicated(cluster, topic, 3)
    with Producer(cluster.bootstrap) as producer:
        for i in range(30):
            producer.send(topic, b"x", partition=i % 3)
    runner = CliRunner()
    env = {"COLUMNS": "200"}
    described = runner.invoke(
        app, ["--bootstrap", cluster.bootstrap, "topics", "describe", topic, "--json"], env=env
    )
    assert described.exit_code == 0, described.output
    data = json.loads(described.stdout)
    for p in data["partition_details"]:
        assert sorted(p["replicas"]) == [1, 2, 3] and sorted(p["isr"]) == [1, 2, 3]
        assert p["leader"] in (1, 2, 3)
        # The figures come from the leader: 10 records plus the no-op(s) are committed there.
        assert p["high_watermark"] >= 11 and p["log_end_offset"] >= p["high_watermark"]
    human = runner.invoke(
        app, ["--bootstrap", cluster.bootstrap, "topics", "describe", topic], env=env
    )
    assert human.exit_code == 0, human.output
    assert "replicas" in human.stdout and "in-sync" in human.stdout

    status = runner.invoke(app, ["--bootstrap", cluster.bootstrap, "cluster", "status"], env=env)
    assert status.exit_code == 0, status.output
    assert status.stdout.count("active") == 3
    assert "under-replicated partitions" in status.stdout and "offline partitions" in status.stdout
    as_json = runner.invoke(
        app, ["--bootstrap", cluster.bootstrap, "cluster", "status", "--json"], env=env
    )
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert [b["node_id"] for b in summary["brokers"]] == [1, 2, 3]
    assert {b["state"] for b in summary["brokers"]} == {"active"}
    assert summary["controller"] in (1, 2, 3)
    assert summary["offline_partitions"] == []


def test_group_offsets_reset_from_the_cli_in_a_cluster(
    cluster: EmbeddedCluster, topic: str
) -> None:
    # Goal: `groups reset-offsets` on three brokers. Its describe-then-list-offsets sequence once
    # sent every partition's ListOffsets to the bootstrap broker (a describe of a leader the
    # client had no address for recorded the bootstrap connection under that leader's id).
    create_replicated(cluster, topic, 3)
    group = f"{topic}-group"
    with Producer(cluster.bootstrap) as producer:
        for n in range(30):
            producer.send(topic, b"%d" % n, partition=n % 3)
        producer.flush()
    tps = [TopicPartition(topic, p) for p in range(3)]
    with Consumer(
        cluster.bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    ) as consumer:
        consumer.subscribe([topic])
        seen = 0
        end = time.monotonic() + WAIT_S
        while seen < 30:
            assert time.monotonic() < end, f"consumed {seen} of 30"
            seen += len(consumer.poll(timeout_ms=200))
        consumer.commit()
    first = cluster.node(1)
    result = CliRunner().invoke(
        app,
        ["-b", f"{first.host}:{first.port}", "groups", "reset-offsets", group, "--topic", topic,
         "--to-earliest", "--execute"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with AdminClient(cluster.bootstrap) as admin:
        starts = admin.list_offsets(tps, -2)
        committed = {
            TopicPartition(o.topic, o.partition): o.committed_offset
            for o in admin.describe_group(group).offsets
        }
    assert committed == starts


def test_cluster_status_through_the_sdk(cluster: EmbeddedCluster) -> None:
    with AdminClient(cluster.bootstrap) as admin:
        status = admin.cluster_status()
    assert isinstance(status, codec.ClusterStatusResponse)
    assert sorted(b.node_id for b in status.brokers) == [1, 2, 3]
    assert all(b.state == "active" and b.broker_epoch > 0 for b in status.brokers)
    assert status.controller_id in (1, 2, 3)


def test_bootstrap_skips_a_dead_address(cluster: EmbeddedCluster, topic: str) -> None:
    create_replicated(cluster, topic, 1)
    with AdminClient(f"127.0.0.1:1,{cluster.bootstrap}") as admin:
        assert topic in admin.list_topics()


# --- a leader killed with SIGKILL under load ------------------------------------------------------


async def test_producer_and_consumer_follow_a_killed_leader(
    cluster: EmbeddedCluster, topic: str
) -> None:
    partitions = 3
    total = 3000
    await trio.to_thread.run_sync(create_replicated, cluster, topic, partitions)
    async with aio.AdminClient(cluster.bootstrap) as admin:
        victim = (await admin.describe_topic(topic)).partitions[0].leader_id
    acked: list[RecordMetadata] = []  # in acknowledgement order
    values: dict[tuple[int, int], bytes] = {}
    consumed: dict[int, list[ConsumerRecord]] = {p: [] for p in range(partitions)}
    killed = trio.Event()
    try:
        async with (
            aio.Producer(cluster.bootstrap, linger_ms=2, retry_backoff_ms=50) as producer,
            aio.Consumer(cluster.bootstrap, auto_offset_reset="earliest") as consumer,
            trio.open_nursery() as nursery,
        ):
            consumer.assign([TopicPartition(topic, p) for p in range(partitions)])

            async def read() -> None:
                async for record in consumer:
                    consumed[record.partition].append(record)

            nursery.start_soon(read)

            def on_ack(value: bytes) -> Callable[[RecordMetadata | None, object], None]:
                def callback(metadata: RecordMetadata | None, error: object) -> None:
                    assert error is None, error
                    assert metadata is not None
                    acked.append(metadata)
                    values[metadata.partition, metadata.offset] = value

                return callback

            async def kill_when_busy() -> None:
                # Once a third is acknowledged, with the producer still sending: batches are in
                # flight to the victim when its sockets die.
                while len(acked) < total // 3:
                    await trio.sleep(0.001)
                await trio.to_thread.run_sync(cluster.kill, victim)
                killed.set()

            nursery.start_soon(kill_when_busy)
            futures = []
            for i in range(total):
                value = f"{i % partitions}:{i // partitions}".encode()
                future = await producer.send(
                    topic, value, partition=i % partitions, callback=on_ack(value)
                )
                futures.append(future)
                if i % 10 == 0:
                    await trio.sleep(0.001)  # pacing: traffic keeps flowing across the kill
            with trio.fail_after(WAIT_S):
                for future in futures:
                    await future  # every send acknowledged despite the failover
            assert len(acked) == total and killed.is_set()

            def all_consumed() -> bool:
                seen = {(p, r.offset) for p, records in consumed.items() for r in records}
                return seen >= set(values)

            with trio.fail_after(WAIT_S):
                while not all_consumed():
                    await trio.sleep(CHECK_INTERVAL_S)
            nursery.cancel_scope.cancel()
    finally:
        if killed.is_set():
            await trio.to_thread.run_sync(cluster.start, victim)
            await trio.to_thread.run_sync(cluster.wait_ready)

    for p in range(partitions):
        offsets = [m.offset for m in acked if m.partition == p]
        assert offsets == sorted(set(offsets)), f"partition {p}: acks not in offset order"
        # Sequence numbers in offset order: the producer kept the partition's order.
        sequence = [int(values[p, offset].split(b":")[1]) for offset in offsets]
        assert sequence == list(range(total // partitions))
        records = consumed[p]
        assert [r.offset for r in records] == sorted({r.offset for r in records})
        seen = {r.offset: r.value for r in records}
        assert all(seen.get(offset) == values[p, offset] for offset in offsets)
        # Anything read that was not acknowledged at its offset is a copy of an acknowledged
        # record: a retry after a lost acknowledgement (the producer is not idempotent).
        acked_values = {values[p, offset] for offset in offsets}
        assert all(r.value in acked_values for r in records)
