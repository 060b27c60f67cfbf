"""Idempotent and transactional produce on a real (in-process) broker over TCP: producer ids,
duplicates answered with their original offsets, sequence and epoch errors, transaction markers,
the last stable offset and read_committed fetches. Each test opens with its goal."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from tests.unit.server.conftest import StartBroker
from tests.unit.server.wire_client import WireClient
from wire import codec
from wire.batch import build_batch, iter_batches
from wire.error_codes import ErrorCode

# Now: markers are stamped with the broker's clock, and a batch much older than the segment's
# first would roll the segment (a fetch reads from one segment at a time).
TS = int(time.time() * 1000)


def batch(values: list[bytes], pid: int, epoch: int, seq: int, *, txn: bool = False) -> bytes:
    return build_batch(
        [(TS + i, None, v, None) for i, v in enumerate(values)],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        transactional=txn,
    )


async def init_pid(client: WireClient) -> tuple[int, int]:
    response = await client.request(codec.InitProducerIdRequest())
    assert response.error is ErrorCode.NONE, response
    return response.producer_id, response.producer_epoch


def headers_of(records: bytes) -> list:
    return [header for _, header in iter_batches(records)]


async def test_producer_ids_are_unique_across_calls_and_restarts(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    # Goal: every InitProducerId hands out a fresh id with epoch 0, also after a restart (the
    # reserved block is durable, so a restarted broker never hands an id out twice).
    broker = await start_broker()
    client = await WireClient.connect(*broker.addresses.listen)
    first = [await init_pid(client) for _ in range(3)]
    await client.aclose()
    broker.request_stop()
    with trio.fail_after(30):
        await broker.stopped.wait()
    again = await start_broker()
    client = await WireClient.connect(*again.addresses.listen)
    second = [await init_pid(client) for _ in range(3)]
    await client.aclose()
    ids = [pid for pid, _ in first + second]
    assert len(set(ids)) == 6, ids
    assert {epoch for _, epoch in first + second} == {0}


async def test_a_retried_batch_is_answered_with_its_original_offset_and_written_once(
    client: WireClient,
) -> None:
    # Goal: the retry of a batch the partition already has (same producer id, epoch and
    # sequences) is acknowledged with the first copy's offset, and the log holds it once.
    await client.create_topic("t")
    pid, epoch = await init_pid(client)
    first = await client.produce("t", 0, batch([b"a", b"b"], pid, epoch, 0))
    assert (first.error, first.base_offset) == (ErrorCode.NONE, 0)
    second = await client.produce("t", 0, batch([b"c"], pid, epoch, 2))
    assert second.base_offset == 2
    retry_first = await client.produce("t", 0, batch([b"a", b"b"], pid, epoch, 0))
    retry_second = await client.produce("t", 0, batch([b"c"], pid, epoch, 2))
    assert (retry_first.error, retry_first.base_offset) == (ErrorCode.NONE, 0)
    assert (retry_second.error, retry_second.base_offset) == (ErrorCode.NONE, 2)
    fetched = await client.fetch("t", 0, 0)
    assert fetched.high_watermark == 3
    assert [h.base_sequence for h in headers_of(fetched.records)] == [0, 2]


async def test_sequence_gaps_old_epochs_and_control_batches_are_refused(
    client: WireClient,
) -> None:
    # Goal: a gap is OUT_OF_ORDER_SEQUENCE, an older epoch INVALID_PRODUCER_EPOCH, a new epoch
    # must restart at sequence 0, a client-made control batch and two batches of one idempotent
    # producer in one request are INVALID_RECORD; none of them writes anything.
    await client.create_topic("t")
    pid, _ = await init_pid(client)
    assert (await client.produce("t", 0, batch([b"a"], pid, 1, 0))).error is ErrorCode.NONE
    gap = await client.produce("t", 0, batch([b"b"], pid, 1, 5))
    assert gap.error is ErrorCode.OUT_OF_ORDER_SEQUENCE, gap
    old = await client.produce("t", 0, batch([b"b"], pid, 0, 1))
    assert old.error is ErrorCode.INVALID_PRODUCER_EPOCH, old
    bumped = await client.produce("t", 0, batch([b"b"], pid, 2, 3))
    assert bumped.error is ErrorCode.OUT_OF_ORDER_SEQUENCE, bumped
    control = build_batch([(TS, b"\0\0\0\1", b"", None)], control=True)
    assert (await client.produce("t", 0, control)).error is ErrorCode.INVALID_RECORD
    two = batch([b"x"], pid, 1, 1) + batch([b"y"], pid, 1, 2)
    assert (await client.produce("t", 0, two)).error is ErrorCode.INVALID_RECORD
    fetched = await client.fetch("t", 0, 0)
    assert fetched.high_watermark == 1


async def test_duplicates_are_recognised_after_a_restart(
    start_broker: StartBroker,
) -> None:
    # Goal: the producer state is rebuilt from the log (and its snapshots) at start-up, so a
    # retry that reaches a restarted broker is still answered with the original offset.
    broker = await start_broker()
    client = await WireClient.connect(*broker.addresses.listen)
    await client.create_topic("t")
    pid, epoch = await init_pid(client)
    for seq in range(5):
        await client.produce("t", 0, batch([b"v%d" % seq], pid, epoch, seq))
    await client.aclose()
    broker.request_stop()
    with trio.fail_after(30):
        await broker.stopped.wait()
    again = await start_broker()
    client = await WireClient.connect(*again.addresses.listen)
    retry = await client.produce("t", 0, batch([b"v4"], pid, epoch, 4))
    assert (retry.error, retry.base_offset) == (ErrorCode.NONE, 4)
    gap = await client.produce("t", 0, batch([b"v9"], pid, epoch, 9))
    assert gap.error is ErrorCode.OUT_OF_ORDER_SEQUENCE
    nxt = await client.produce("t", 0, batch([b"v5"], pid, epoch, 5))
    assert (nxt.error, nxt.base_offset) == (ErrorCode.NONE, 5)
    await client.aclose()


async def write_marker(
    client: WireClient, pid: int, epoch: int, committed: bool, topic: str = "t"
) -> None:
    response = await client.request(
        codec.WriteTxnMarkersRequest(
            markers=(
                codec.TxnMarker(
                    producer_id=pid,
                    producer_epoch=epoch,
                    committed=committed,
                    coordinator_epoch=1,
                    partitions=(codec.TopicPartitionRef(topic=topic, partition=0),),
                ),
            )
        )
    )
    assert [p.error for p in response.markers[0].partitions] == [ErrorCode.NONE], response


async def fetch_committed(client: WireClient, offset: int = 0) -> codec.FetchPartitionResult:
    response = await client.request(
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=offset),),
            max_wait_ms=0,
            isolation_level=codec.READ_COMMITTED,
        )
    )
    return response.partitions[0]


async def test_read_committed_stops_at_open_transactions_and_names_aborted_ones(
    client: WireClient,
) -> None:
    # Goal: while a transaction is open the last stable offset stays at its first offset and a
    # read_committed fetch returns nothing past it; its ABORT marker moves the LSO past the
    # marker and the fetch names the aborted transaction (a range) for the client to drop; a
    # COMMIT marker makes the transaction's records plain reading. read_uncommitted sees all.
    await client.create_topic("t")
    plain_pid, _ = await init_pid(client)
    txn_pid, _ = await init_pid(client)
    await client.produce("t", 0, batch([b"p0"], plain_pid, 0, 0))  # offset 0
    await client.produce("t", 0, batch([b"a1", b"a2"], txn_pid, 0, 0, txn=True))  # 1-2
    await client.produce("t", 0, batch([b"p1"], plain_pid, 0, 1))  # offset 3
    during = await fetch_committed(client)
    assert during.last_stable_offset == 1
    assert [h.base_offset for h in headers_of(during.records)] == [0]
    uncommitted = await client.fetch("t", 0, 0)
    assert uncommitted.high_watermark == 4 and len(headers_of(uncommitted.records)) == 3

    await write_marker(client, txn_pid, 1, committed=False)  # offset 4, epoch bumped
    after_abort = await fetch_committed(client)
    assert after_abort.last_stable_offset == after_abort.high_watermark == 5
    assert [(a.producer_id, a.first_offset) for a in after_abort.aborted_transactions] == [
        (txn_pid, 1)
    ]
    marker = headers_of(after_abort.records)[-1]
    assert marker.is_control and marker.is_transactional and marker.producer_epoch == 1
    # The epoch was bumped by the marker: the old transaction's late write is fenced.
    late = await client.produce("t", 0, batch([b"late"], txn_pid, 0, 2, txn=True))
    assert late.error is ErrorCode.INVALID_PRODUCER_EPOCH

    await client.produce("t", 0, batch([b"c1"], txn_pid, 1, 0, txn=True))  # offset 5
    assert (await fetch_committed(client)).last_stable_offset == 5
    await write_marker(client, txn_pid, 2, committed=True)  # offset 6
    after_commit = await fetch_committed(client, offset=5)
    assert after_commit.last_stable_offset == 7
    assert after_commit.aborted_transactions == ()
    assert [h.base_offset for h in headers_of(after_commit.records)] == [5, 6]
    latest = await client.request(
        codec.ListOffsetsRequest(
            partitions=(codec.ListOffsetsPartition(topic="t", partition=0, timestamp=-1),),
            isolation_level=codec.READ_COMMITTED,
        )
    )
    assert latest.partitions[0].offset == 7
