"""Idempotence, transactions and read_committed in the client, against the fake broker (which can
lose acknowledgements and producer state, hold requests and inject coordinator errors on demand).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
import trio
from typer.testing import CliRunner

from cli.broker_cli import app
from client import ConsumerGroupMetadata, InvalidTxnStateError, ProducerFencedError
from client.aio import AdminClient, Consumer, Producer
from client.blocking import Producer as BlockingProducer
from client.errors import ClientError, TransactionAbortedError
from client.types import OffsetAndMetadata, TopicPartition
from tests.integration.client.fake_broker import FakeBroker
from wire import codec
from wire.error_codes import BrokerError, ErrorCode


@contextlib.asynccontextmanager
async def in_transaction(
    fake: FakeBroker, transactional_id: str = "tx", linger_ms: int = 0
) -> AsyncIterator[Producer]:
    """A transactional producer, initialised, inside its first transaction."""
    async with Producer(
        fake.bootstrap, transactional_id=transactional_id, linger_ms=linger_ms
    ) as producer:
        await producer.init_transactions()
        producer.begin_transaction()
        yield producer


async def read(
    broker: FakeBroker, partition: int, count: int, isolation_level: str = "read_uncommitted"
) -> list[bytes | None]:
    async with Consumer(
        broker.bootstrap, auto_offset_reset="earliest", isolation_level=isolation_level
    ) as consumer:
        consumer.assign([TopicPartition("t", partition)])
        values: list[bytes | None] = []
        with trio.fail_after(10):
            while len(values) < count:
                values += [r.value for r in await consumer.poll(timeout_ms=1000)]
        return values


async def until(condition: object) -> None:
    """Wait (bounded) for a condition the client reaches on its own tasks."""
    with trio.fail_after(10):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.001)


# --- idempotence ----------------------------------------------------------------------------------


async def test_batches_are_numbered_per_partition_from_zero(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, linger_ms=0) as producer:
        offsets = []
        for values in ([b"a", b"b"], [b"c"], [b"d", b"e", b"f"]):
            futures = [await producer.send("t", v, partition=0) for v in values]
            await producer.flush()  # one batch each
            offsets += [(await f).offset for f in futures]
        assert offsets == list(range(6))
        await producer.send_and_wait("t", b"x", partition=1)
        pid, epoch = producer.producer_id_and_epoch
    assert [r.transactional_id for r in fake.init_producer_id_requests] == [None]
    # Sequences count records, as Kafka's do: each batch starts where the previous one ended.
    batches = fake.appended[("t", 0)]
    assert {(e[0], e[1], e[4]) for e in batches} == {(pid, 0, False)}
    starts = [0]
    for entry in batches[:-1]:
        starts.append(starts[-1] + entry[3])
    assert [e[2] for e in batches] == starts and sum(e[3] for e in batches) == 6
    assert fake.appended[("t", 1)] == [(pid, 0, 0, 1, False)]
    assert epoch == 0


async def test_in_flight_batches_keep_their_order_through_a_retry(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, linger_ms=0, batch_bytes=1, retry_backoff_ms=1) as p:
        await p.send_and_wait("t", b"warm-up", partition=1)  # producer id known
        fake.produce_gate = trio.Event()
        fake.fail_produce.append(ErrorCode.NOT_LEADER)  # the first batch fails, the rest follow
        futures = [await p.send("t", b"%d" % i, partition=0) for i in range(5)]
        await until(lambda: p._in_flight.get(("t", 0)) == 5)  # five requests in flight
        fake.produce_gate.set()
        offsets = [(await f).offset for f in futures]
    assert offsets == [0, 1, 2, 3, 4]
    assert await read(fake, 0, 5) == [b"0", b"1", b"2", b"3", b"4"]
    # Written once each, with their original sequence numbers, by the same producer id.
    assert [entry[2] for entry in fake.appended[("t", 0)]] == [0, 1, 2, 3, 4]
    assert len(fake.init_producer_id_requests) == 1


async def test_a_lost_acknowledgement_is_not_stored_twice(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, linger_ms=0, retry_backoff_ms=1) as producer:
        await producer.send_and_wait("t", b"first", partition=0)
        fake.drop_after_next_append = True  # written, then the connection dies unanswered
        metadata = await producer.send_and_wait("t", b"second", partition=0)
    assert metadata.offset == 1  # the original offset, from the broker's duplicate check
    assert fake.ends[("t", 0)] == 2
    assert await read(fake, 0, 2) == [b"first", b"second"]


async def test_lost_producer_state_gets_a_new_producer_id(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, linger_ms=0, retry_backoff_ms=1) as producer:
        await producer.send_and_wait("t", b"a", partition=0)
        old = producer.producer_id_and_epoch
        fake.forget_producers()  # the next batch (sequence 1) is UNKNOWN_PRODUCER_ID
        metadata = await producer.send_and_wait("t", b"b", partition=0)
        new = producer.producer_id_and_epoch
    assert metadata.offset == 1
    assert new != old
    second = fake.init_producer_id_requests[1]
    assert (second.producer_id, second.producer_epoch) == old  # KIP-360: the current pair
    assert fake.appended[("t", 0)][-1][:3] == (new[0], new[1], 0)  # renumbered from 0
    assert await read(fake, 0, 2) == [b"a", b"b"]


async def test_a_batch_of_unknown_fate_fails_when_the_producer_id_is_replaced(
    fake: FakeBroker,
) -> None:
    async with Producer(fake.bootstrap, linger_ms=0, retry_backoff_ms=1) as producer:
        await producer.send_and_wait("t", b"a", partition=0)
        # "b" is written, its answer lost, and the broker forgets the producer: its retry is
        # UNKNOWN_PRODUCER_ID, and resending it under a new id could store it twice.
        fake.drop_after_next_append = True
        fake.forget_producers_on_drop = True
        future = await producer.send("t", b"b", partition=0)
        with pytest.raises(BrokerError) as info:
            await future
        after = await producer.send_and_wait("t", b"c", partition=0)
    assert info.value.code is ErrorCode.OUT_OF_ORDER_SEQUENCE
    assert "may or may not have been written" in info.value.message
    assert after.offset == 2
    assert await read(fake, 0, 3) == [b"a", b"b", b"c"]  # "b" stored once


async def test_a_broker_without_idempotence_gets_a_plain_producer(
    fake: FakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    fake.supports_idempotence = False
    with caplog.at_level(logging.WARNING, logger="client.producer"):
        async with Producer(fake.bootstrap, linger_ms=0) as producer:
            await producer.send_and_wait("t", b"a", partition=0)
            await producer.send_and_wait("t", b"b", partition=0)
            assert not producer.enable_idempotence
            assert producer.max_in_flight_per_partition == 1
    assert fake.init_producer_id_requests == []  # the handshake said so: not even asked
    assert [entry[0] for entry in fake.appended[("t", 0)]] == [-1, -1]
    assert sum("does not support idempotent" in r.message for r in caplog.records) == 1


async def test_init_producer_id_refused_as_unsupported_falls_back(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, linger_ms=0) as producer:
        fake.supports_idempotence = False  # connected already: the request itself is refused
        metadata = await producer.send_and_wait("t", b"a", partition=0)
        assert not producer.enable_idempotence
    assert metadata.offset == 0
    assert fake.appended[("t", 0)][0][0] == -1


# --- transactions ---------------------------------------------------------------------------------


def kinds(fake: FakeBroker) -> list[str]:
    return [type(r).__name__.removesuffix("Request") for r in fake.txn_requests]


async def test_commit_adds_partitions_then_ends_with_a_new_epoch(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, transactional_id="tx", linger_ms=0) as producer:
        await producer.init_transactions()
        pid, epoch = producer.producer_id_and_epoch
        producer.begin_transaction()
        await producer.send("t", b"a", partition=0)
        await producer.send("t", b"b", partition=1)
        await producer.commit_transaction()
        assert producer.producer_id_and_epoch == (pid, epoch + 1)  # KIP-890
        producer.begin_transaction()
        await producer.send("t", b"c", partition=0)
        await producer.commit_transaction()
    added = [r for r in fake.txn_requests if isinstance(r, codec.AddPartitionsToTxnRequest)]
    assert kinds(fake)[0] == "InitProducerId" and kinds(fake)[-1] == "EndTxn"
    first_txn = {(p.topic, p.partition) for r in added[:-1] for p in r.partitions}
    assert first_txn == {("t", 0), ("t", 1)}  # both added before the first commit
    assert [(p.topic, p.partition) for p in added[-1].partitions] == [("t", 0)]
    expected = [(pid, epoch, 0, 1, True), (pid, epoch + 1, 0, 1, True)]  # sequences restart
    assert fake.appended[("t", 0)] == expected
    ends = [r for r in fake.txn_requests if isinstance(r, codec.EndTxnRequest)]
    assert [(e.committed, e.producer_epoch) for e in ends] == [(True, epoch), (True, epoch + 1)]
    assert await read(fake, 0, 2, "read_committed") == [b"a", b"c"]


async def test_read_committed_drops_aborted_transactions_and_markers(fake: FakeBroker) -> None:
    async with in_transaction(fake) as producer:
        await producer.send("t", b"aborted-1", partition=0)
        await producer.send("t", b"aborted-2", partition=0)
        await producer.flush()  # written, then aborted
        await producer.abort_transaction()
        producer.begin_transaction()
        await producer.send("t", b"kept", partition=0)
        await producer.commit_transaction()
    async with Producer(fake.bootstrap, linger_ms=0) as plain:
        await plain.send_and_wait("t", b"plain", partition=0)
    assert await read(fake, 0, 4) == [b"aborted-1", b"aborted-2", b"kept", b"plain"]
    assert await read(fake, 0, 2, "read_committed") == [b"kept", b"plain"]
    async with Consumer(
        fake.bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    ) as consumer:
        tp = TopicPartition("t", 0)
        consumer.assign([tp])
        records = []
        with trio.fail_after(10):
            while len(records) < 2:
                records += await consumer.poll(timeout_ms=1000)
        assert await consumer.position(tp) == fake.ends[("t", 0)]  # past markers and aborts


async def test_an_open_transaction_holds_read_committed_back(fake: FakeBroker) -> None:
    async with in_transaction(fake) as producer:
        await producer.send("t", b"open", partition=0)
        await producer.flush()
        async with Consumer(fake.bootstrap, isolation_level="read_committed") as committed:
            tp = TopicPartition("t", 0)
            assert await committed.end_offsets([tp]) == {tp: 0}  # the last stable offset
            committed.assign([tp])
            committed.seek(tp, 0)
            assert await committed.poll(timeout_ms=200) == []
        assert await read(fake, 0, 1) == [b"open"]
        await producer.commit_transaction()
    assert await read(fake, 0, 1, "read_committed") == [b"open"]


async def test_calls_out_of_order_are_refused_locally(fake: FakeBroker) -> None:
    async with Producer(fake.bootstrap, transactional_id="tx") as producer:
        with pytest.raises(InvalidTxnStateError, match="init_transactions"):
            await producer.send("t", b"x")
        with pytest.raises(InvalidTxnStateError):
            producer.begin_transaction()
        await producer.init_transactions()
        with pytest.raises(InvalidTxnStateError, match="begin_transaction"):
            await producer.send("t", b"x")
        with pytest.raises(InvalidTxnStateError):
            await producer.commit_transaction()
        with pytest.raises(InvalidTxnStateError):
            await producer.abort_transaction()
        producer.begin_transaction()
        with pytest.raises(InvalidTxnStateError):
            producer.begin_transaction()
        with pytest.raises(InvalidTxnStateError):
            await producer.init_transactions()
    async with Producer(fake.bootstrap) as plain:
        with pytest.raises(InvalidTxnStateError, match="transactional_id"):
            plain.begin_transaction()
    assert kinds(fake) == ["InitProducerId"]


async def test_a_second_instance_fences_the_first(fake: FakeBroker) -> None:
    async with in_transaction(fake) as zombie:
        async with Producer(fake.bootstrap, transactional_id="tx") as successor:
            await successor.init_transactions()
        future = await zombie.send("t", b"late", partition=0)
        with pytest.raises(ProducerFencedError):
            await zombie.commit_transaction()
        with pytest.raises(ProducerFencedError):
            await future
        with pytest.raises(ProducerFencedError):
            await zombie.send("t", b"again", partition=0)
        with pytest.raises(ProducerFencedError):
            await zombie.abort_transaction()
    assert ("t", 0) not in fake.appended


async def test_coordinator_errors_are_retried(fake: FakeBroker) -> None:
    fake.fail_txn.extend(
        [
            ErrorCode.NOT_COORDINATOR,
            ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
            ErrorCode.CONCURRENT_TRANSACTIONS,
        ]
    )
    async with Producer(fake.bootstrap, transactional_id="tx", retry_backoff_ms=1) as producer:
        await producer.init_transactions()
        producer.begin_transaction()
        fake.fail_txn.append(ErrorCode.CONCURRENT_TRANSACTIONS)  # at AddPartitionsToTxn
        await producer.send("t", b"a", partition=0)
        await producer.commit_transaction()
    assert kinds(fake).count("InitProducerId") == 4
    assert kinds(fake).count("AddPartitionsToTxn") == 2
    assert await read(fake, 0, 1, "read_committed") == [b"a"]


async def test_transaction_aborted_by_the_coordinator_recovers_with_a_new_epoch(
    fake: FakeBroker,
) -> None:
    async with Producer(fake.bootstrap, transactional_id="tx", linger_ms=0) as producer:
        await producer.init_transactions()
        pid, epoch = producer.producer_id_and_epoch
        producer.begin_transaction()
        await producer.send("t", b"a", partition=0)
        await producer.flush()
        fake.fail_txn.append(ErrorCode.TRANSACTION_ABORTED)  # EndTxn: it timed out meanwhile
        with pytest.raises(TransactionAbortedError):
            await producer.commit_transaction()
        with pytest.raises(TransactionAbortedError):
            await producer.send("t", b"b", partition=0)
        await producer.abort_transaction()
        last = fake.txn_requests[-1]
        assert isinstance(last, codec.InitProducerIdRequest)
        assert (last.producer_id, last.producer_epoch) == (pid, epoch)  # KIP-360
        assert producer.producer_id_and_epoch == (pid, epoch + 1)
        producer.begin_transaction()
        await producer.send("t", b"c", partition=0)
        await producer.commit_transaction()
    assert await read(fake, 0, 1, "read_committed") == [b"c"]


async def test_a_failed_send_fails_the_commit_and_abort_recovers(fake: FakeBroker) -> None:
    async with in_transaction(fake) as producer:
        fake.fail_produce.append(ErrorCode.MESSAGE_TOO_LARGE)
        future = await producer.send("t", b"a", partition=0)
        with pytest.raises(BrokerError) as info:
            await producer.commit_transaction()
        assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
        with pytest.raises(BrokerError):
            await future
        with pytest.raises(InvalidTxnStateError):
            producer.begin_transaction()
        await producer.abort_transaction()
        producer.begin_transaction()
        await producer.send("t", b"b", partition=0)
        await producer.commit_transaction()
    ends = [r.committed for r in fake.txn_requests if isinstance(r, codec.EndTxnRequest)]
    assert ends == [False, True]
    assert await read(fake, 0, 1, "read_committed") == [b"b"]


async def test_abort_drops_unsent_records(fake: FakeBroker) -> None:
    async with in_transaction(fake, linger_ms=60_000) as producer:
        future = await producer.send("t", b"never", partition=0)  # lingering, not sent
        await producer.abort_transaction()
        with pytest.raises(TransactionAbortedError):
            await future
    assert ("t", 0) not in fake.appended
    assert kinds(fake) == ["InitProducerId"]  # the coordinator never heard of it: no EndTxn


async def test_offsets_are_committed_with_the_transaction(fake: FakeBroker) -> None:
    metadata = ConsumerGroupMetadata("g", generation_id=3, member_id="m-1")
    async with in_transaction(fake) as producer:
        await producer.send("t", b"out", partition=1)
        await producer.send_offsets_to_transaction({TopicPartition("t", 0): 42}, metadata)
        assert fake.committed_offsets == {}  # only once the transaction commits
        await producer.commit_transaction()
    commit = next(r for r in fake.txn_requests if isinstance(r, codec.TxnOffsetCommitRequest))
    assert (commit.group_id, commit.generation, commit.member_id) == ("g", 3, "m-1")
    assert fake.committed_offsets == {("g", "t", 0): 42}
    fake.unstable_offset_fetches = 2  # a transaction's offsets still completing: retried
    async with Consumer(fake.bootstrap, group_id="g", retry_backoff_ms=1) as consumer:
        assert consumer.group_metadata() == ConsumerGroupMetadata("g", -1, "", None)
        tp = TopicPartition("t", 0)
        assert await consumer.committed([tp]) == {tp: OffsetAndMetadata(42)}
    assert len(fake.offset_fetch_requests) == 3
    assert all(r.require_stable for r in fake.offset_fetch_requests)


async def test_group_metadata_needs_a_group(fake: FakeBroker) -> None:
    async with Consumer(fake.bootstrap) as consumer:
        with pytest.raises(ClientError, match="group_id"):
            consumer.group_metadata()


async def test_blocking_producer_transaction(fake: FakeBroker) -> None:
    def run() -> None:
        with BlockingProducer(fake.bootstrap, transactional_id="tx", linger_ms=0) as producer:
            producer.init_transactions()
            producer.begin_transaction()
            producer.send("t", b"a", partition=0)
            producer.send_offsets_to_transaction({("t", 0): 1}, ConsumerGroupMetadata("g"))
            producer.commit_transaction()
            producer.begin_transaction()
            producer.send("t", b"b", partition=0)
            producer.abort_transaction()

    await trio.to_thread.run_sync(run)
    assert await read(fake, 0, 1, "read_committed") == [b"a"]
    assert fake.committed_offsets == {("g", "t", 0): 1}


# --- admin and CLI --------------------------------------------------------------------------------


async def test_admin_lists_and_describes_transactions(fake: FakeBroker) -> None:
    async with in_transaction(fake) as producer:
        await producer.send_and_wait("t", b"a", partition=1)
        async with AdminClient(fake.bootstrap) as admin:
            listed = await admin.list_transactions()
            assert [(t.transactional_id, t.state) for t in listed] == [("tx", "Ongoing")]
            assert await admin.list_transactions(states=["Empty"]) == []
            (described,) = await admin.describe_transactions(["tx"])
            assert described.producer_id == producer.producer_id_and_epoch[0]
            assert [(p.topic, p.partition) for p in described.partitions] == [("t", 1)]
            with pytest.raises(BrokerError) as info:
                await admin.describe_transactions(["nope"])
            assert info.value.code is ErrorCode.TRANSACTIONAL_ID_NOT_FOUND
        await producer.abort_transaction()


async def test_cli_transactions_and_read_committed_consume(fake: FakeBroker) -> None:
    async with in_transaction(fake, "pay-1") as producer:
        await producer.send_and_wait("t", b"aborted", partition=0)
        await producer.abort_transaction()
        producer.begin_transaction()
        await producer.send_and_wait("t", b"kept", partition=0)
        runner = CliRunner()

        def cli(*args: str) -> tuple[int, str]:
            result = runner.invoke(app, ["--bootstrap", fake.bootstrap, *args])
            return result.exit_code, result.output

        code, out = await trio.to_thread.run_sync(cli, "transactions", "list")
        assert code == 0 and "pay-1" in out and "Ongoing" in out
        code, out = await trio.to_thread.run_sync(cli, "transactions", "describe", "pay-1")
        assert code == 0 and "Ongoing" in out and "t-0" in out
        code, out = await trio.to_thread.run_sync(cli, "transactions", "describe", "x", "--json")
        assert code == 1 and "TRANSACTIONAL_ID_NOT_FOUND" in out
        await producer.commit_transaction()
    args = ["consume", "t", "--from-beginning", "--timeout", "1", "--isolation-level"]
    code, out = await trio.to_thread.run_sync(cli, *args, "read_committed")
    assert code == 0 and out.splitlines()[0] == "kept"
    code, out = await trio.to_thread.run_sync(cli, *args, "read_uncommitted")
    assert code == 0 and out.splitlines()[:2] == ["aborted", "kept"]
