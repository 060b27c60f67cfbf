"""Goal: transactional offset commits through a real (in-process) broker over TCP: TxnOffsetCommit
writes the offsets in the producer's transaction (pending: OffsetFetch with require_stable says
UNSTABLE_OFFSET_COMMIT), WriteTxnMarkers to the group's __consumer_offsets partition goes through
the group core (COMMIT makes them the committed offsets, ABORT drops them), the partition's
producer state sees the transaction closed, and a restart replays the same state, including a
transaction still open when the broker stopped."""

from __future__ import annotations

import trio

from broker.consumer_groups.offsets import coordinator_partition
from broker.consumer_groups.service import OFFSETS_TOPIC
from broker.server import Broker
from broker.transactions.producer_state import is_marker
from tests.unit.server.conftest import StartBroker
from tests.unit.server.wire_client import WireClient
from wire import codec
from wire.batch import iter_batches
from wire.error_codes import ErrorCode

GROUP = "etl"
PID = 4242
PARTITION = coordinator_partition(GROUP, 8)


async def connect(broker: Broker) -> WireClient:
    assert broker.addresses is not None
    return await WireClient.connect(*broker.addresses.listen)


async def txn_commit(client: WireClient, offset: int) -> None:
    response = await client.request(
        codec.TxnOffsetCommitRequest(
            transactional_id="etl-1",
            group_id=GROUP,
            producer_id=PID,
            producer_epoch=0,
            partitions=(codec.OffsetCommitPartition(topic="in", partition=0, offset=offset),),
        )
    )
    assert response.error is ErrorCode.NONE, response
    assert [p.error for p in response.partitions] == [ErrorCode.NONE]


async def marker(client: WireClient, *, commit: bool) -> None:
    response = await client.request(
        codec.WriteTxnMarkersRequest(
            markers=(
                codec.TxnMarker(
                    producer_id=PID,
                    producer_epoch=0,
                    committed=commit,
                    coordinator_epoch=0,
                    partitions=(codec.TopicPartitionRef(topic=OFFSETS_TOPIC, partition=PARTITION),),
                ),
            )
        )
    )
    (result,) = response.markers
    assert [p.error for p in result.partitions] == [ErrorCode.NONE], result


async def fetch(client: WireClient, *, require_stable: bool) -> tuple[int, ErrorCode]:
    response = await client.request(
        codec.OffsetFetchRequest(
            group_id=GROUP,
            partitions=(codec.GroupTopicPartition(topic="in", partition=0),),
            require_stable=require_stable,
        )
    )
    (partition,) = response.partitions
    return partition.offset, partition.error


def last_batch_is_a_marker(broker: Broker) -> bool:
    state = broker.context.partitions[(OFFSETS_TOPIC, PARTITION)]
    log = state.log
    data = log.read(log.log_start_offset, 1 << 22).data
    headers = [h for _, h in iter_batches(data, max_batch_bytes=log.config.max_batch_bytes)]
    return is_marker(headers[-1]) and log.producers.stats().open_transactions == 0


async def stop(broker: Broker, client: WireClient) -> None:
    await client.aclose()
    broker.request_stop()
    with trio.fail_after(30):
        await broker.stopped.wait()


async def test_txn_offsets_become_visible_at_the_commit_marker_and_survive_a_restart(
    start_broker: StartBroker,
) -> None:
    broker = await start_broker()
    client = await connect(broker)
    await txn_commit(client, 10)
    assert await fetch(client, require_stable=True) == (-1, ErrorCode.UNSTABLE_OFFSET_COMMIT)
    assert await fetch(client, require_stable=False) == (-1, ErrorCode.NONE)
    await marker(client, commit=True)
    assert await fetch(client, require_stable=True) == (10, ErrorCode.NONE)
    assert last_batch_is_a_marker(broker)
    # A second transaction aborts: its offset never shows.
    await txn_commit(client, 20)
    await marker(client, commit=False)
    assert await fetch(client, require_stable=True) == (10, ErrorCode.NONE)
    # A third is still open when the broker stops.
    await txn_commit(client, 30)
    await stop(broker, client)

    again = await start_broker()
    client = await connect(again)
    assert await fetch(client, require_stable=True) == (-1, ErrorCode.UNSTABLE_OFFSET_COMMIT)
    assert await fetch(client, require_stable=False) == (10, ErrorCode.NONE)
    deleted = await client.request(codec.DeleteGroupsRequest(group_ids=(GROUP,)))
    assert deleted.groups[0].error is ErrorCode.GROUP_NOT_EMPTY
    assert str(PID) in deleted.groups[0].error_message
    # The transaction coordinator finishes the transaction on the new coordinator.
    await marker(client, commit=True)
    assert await fetch(client, require_stable=True) == (30, ErrorCode.NONE)
    assert last_batch_is_a_marker(again)
    await client.aclose()
