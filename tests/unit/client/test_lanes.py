"""Lanes: the open sticky batch with buffer memory reserved, which the trio producer's `send`
fills after one comparison (client/accumulator.py, the rules). The producer is built but never
started; its topic's partition count is set by hand, and a test plays the sender (drain, then
complete and release)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from client.accumulator import (
    LANE_RESERVE_BYTES,
    RECORD_OVERHEAD_BYTES,
    ProducerBatch,
    RecordAccumulator,
    RecordFuture,
)
from client.aio import Producer
from client.bulk import BulkAppend
from client.errors import BufferFullError, ClientClosedError
from tests.unit.client.batch_rows import rows_of
from wire.error_codes import BrokerError, ErrorCode

PARTITIONS = 3


def producer(**options: object) -> Producer:
    options = {
        "acks": 1,
        "batch_bytes": 1000,
        "buffer_memory_bytes": 2500,
        "max_block_ms": 0,
        **options,
    }
    made = Producer("127.0.0.1:1", **options)  # type: ignore[arg-type]
    for topic in ("t", "u", "v"):
        made._counts[topic] = PARTITIONS
    return made


def send(made: Producer, value: bytes, topic: str = "t", **kwargs: object) -> RecordFuture:
    async def one() -> RecordFuture:
        return await made.send(topic, value, **kwargs)  # type: ignore[arg-type]

    return trio.run(one)


def unfinished(made: Producer) -> list[ProducerBatch]:
    acc = made._acc
    return [b for queue in acc._sealed.values() for b in queue] + list(acc._open.values())


def test_a_keyless_send_opens_a_lane_whose_reservation_counts_until_the_batch_leaves() -> None:
    made = producer()
    acc = made._acc
    send(made, b"a" * 84)  # 100 bytes with the overhead: the general path, which opens the lane
    lane = acc.lanes["t"]
    assert (lane.size_bytes, lane.lane_limit) == (100, 1000)
    assert acc.memory_used == 1000  # the record and the batch's room
    send(made, b"b" * 84)  # the fast path: it fills the reserved room, memory is unchanged
    assert (lane.record_count, lane.size_bytes, acc.memory_used) == (2, 200, 1000)
    [drained], _ = acc.drain(0.0, {}, max_in_flight=1)
    assert drained is lane and "t" not in acc.lanes and lane.lane_limit == 0
    assert acc.memory_used == 200  # the unused room is given back when the batch leaves
    lane.complete(0, None)
    acc.release(lane)
    assert acc.memory_used == 0


def test_the_reservation_never_exceeds_the_free_memory_and_the_fast_path_respects_it() -> None:
    made = producer(buffer_memory_bytes=1300)
    acc = made._acc
    send(made, b"x" * 484, "u", partition=0)  # 500 bytes of another topic, no lane
    send(made, b"a" * 84)
    lane = acc.lanes["t"]
    assert lane.lane_limit - lane.size_bytes == 1300 - 500 - 100  # what the buffer had left
    assert acc.memory_used == 1300
    for _ in range(7):
        send(made, b"b" * 84)
    assert lane.size_bytes == 800 and acc.memory_used == 1300
    # The next record does not fit the reservation: the general path gives the room back, finds
    # the buffer full and (max_block_ms=0) refuses the record.
    with pytest.raises(BufferFullError):
        send(made, b"c" * 84)
    assert "t" not in acc.lanes and acc.memory_used == 1300 == 500 + 800


def test_the_fast_path_refuses_a_record_above_max_record_bytes_even_with_room() -> None:
    made = producer(max_record_bytes=300)
    acc = made._acc
    send(made, b"a" * 84)
    assert acc.lanes["t"].lane_limit - acc.lanes["t"].size_bytes == 300  # capped by the record
    with pytest.raises(BrokerError) as refused:
        send(made, b"b" * 290)  # 306 bytes: fits the batch, not the record limit
    assert refused.value.code is ErrorCode.MESSAGE_TOO_LARGE
    assert [b.record_count for b in unfinished(made)] == [1]


def test_a_full_batch_is_sealed_by_the_fast_path_and_the_next_one_opens_a_lane() -> None:
    made = producer()
    acc = made._acc
    for _ in range(10):
        send(made, b"v" * 84)
    first = unfinished(made)
    assert [b.record_count for b in first] == [10] and first[0].size_bytes == 1000
    assert acc._open == {} and acc.lanes == {}  # sealed when full, its lane closed
    assert acc.memory_used == 1000
    send(made, b"v" * 84)
    assert acc.lanes["t"] is not first[0] and acc.memory_used == 2000


def test_no_lane_when_the_record_limit_could_seal_before_the_byte_limit() -> None:
    made = producer(max_records_per_batch=10)  # 10 x 16 bytes < batch_bytes
    send(made, b"")
    assert made._acc.lanes == {}
    assert made._acc.memory_used == RECORD_OVERHEAD_BYTES
    for _ in range(9):
        send(made, b"")
    assert [b.record_count for b in unfinished(made)] == [10] and made._acc._open == {}


def test_no_lane_for_a_thread_safe_or_transactional_producer() -> None:
    for options in ({"thread_safe": True}, {"transactional_id": "tx", "acks": "all"}):
        made = producer(**options)
        made._acc.append("t", -1, 0, None, b"v", None, 17, PARTITIONS)
        assert made._acc.lanes == {}, options


def test_aborting_gives_back_the_reservation() -> None:
    made = producer()
    send(made, b"a" * 84)
    assert made._acc.memory_used == 1000
    [batch] = made._acc.abort_unsent()
    assert made._acc.lanes == {} and made._acc.memory_used == 100
    batch.complete(-1, None)
    made._acc.release(batch)
    assert made._acc.memory_used == 0


def test_reservations_never_refuse_a_record_the_buffer_has_room_for() -> None:
    # Two lanes hold 1,800 bytes of room for 200 bytes of records: a 616-byte record of a third
    # topic (and a bulk append) must still be taken, the lanes' room given back first.
    made = producer()
    acc = made._acc
    send(made, b"a" * 84, "t")
    send(made, b"b" * 84, "u")
    assert acc.memory_used == 2000 and set(acc.lanes) == {"t", "u"}
    send(made, b"c" * 600, "v")
    assert set(acc.lanes) == {"v"}
    assert acc.memory_used == 100 + 100 + 616 + (1000 - 616)  # v's own lane took the rest
    send(made, b"d" * 84, "t")
    send(made, b"e" * 84, "u")
    bulk = BulkAppend(made, "v", [b"f" * 400, b"g" * 400], None, None, None, 1_700_000_000_000)
    assert bulk.route()
    while not bulk.finished and bulk.append_some():
        pass
    assert bulk.finished  # 832 bytes: more than was free beside the lanes' room
    assert acc.memory_used == sum(b.size_bytes for b in unfinished(made)) + sum(
        lane.lane_limit - lane.size_bytes for lane in acc.lanes.values()
    )


def test_a_lane_reserves_at_most_lane_reserve_bytes_at_a_time() -> None:
    made = producer(batch_bytes=200_000, buffer_memory_bytes=1_000_000)
    acc = made._acc
    send(made, b"a" * 84)
    lane = acc.lanes["t"]
    assert lane.lane_limit - lane.size_bytes == LANE_RESERVE_BYTES
    while "t" in acc.lanes and acc.lanes["t"].size_bytes + 100 <= acc.lanes["t"].lane_limit:
        send(made, b"b" * 84)  # the fast path, until the reserved room is used up
    send(made, b"c" * 84)  # the general path: the next piece of room
    assert acc.lanes["t"] is lane and lane.lane_limit == lane.size_bytes + LANE_RESERVE_BYTES


def test_a_thread_safe_accumulator_opens_no_lanes() -> None:
    acc = RecordAccumulator(
        batch_bytes=1000, linger_ms=5, buffer_memory_bytes=2500, max_records_per_batch=1000,
        thread_safe=True, lane_record_bytes=1000,
    )  # fmt: skip
    assert acc.append("t", -1, 0, None, b"v", None, 17, PARTITIONS) is not None
    assert acc.lanes == {} and acc.memory_used == 17


def test_a_waiting_sender_is_woken_by_a_delivery_and_the_lanes_room_is_not_waited_for() -> None:
    made = producer(max_block_ms=10_000)
    acc = made._acc

    async def scenario() -> None:
        for _ in range(20):
            await made.send("t", b"a" * 84)  # two full batches, sealed: 2,000 bytes
        await made.send("u", b"b" * 84)  # u's lane takes the last 400 bytes of room
        assert acc.memory_used == 2500 and "u" in acc.lanes
        got: list[RecordFuture] = []

        async def waiter() -> None:
            got.append(await made.send("v", b"c" * 600))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                # Waiting for 616 bytes that records (2,100) leave no room for, not u's room.
                assert got == [] and acc.lanes == {} and acc.memory_used == 2100
                ready, _ = acc.drain(0.0, {}, max_in_flight=1)
                sealed = next(batch for batch in ready if batch.topic == "t")
                made._complete(sealed, 0, None)  # frees 1,000 bytes and wakes the waiter
        [future] = got
        assert future.batch.topic == "v" and future.batch.values[future[1]] == b"c" * 600

    trio.run(scenario)


def test_a_closed_or_failed_producer_refuses_keyless_sends_and_frees_the_lanes() -> None:
    closed = producer()

    async def close_then_send() -> None:
        await closed.send("t", b"a" * 84)
        assert "t" in closed._acc.lanes
        await closed.aclose()
        assert closed._acc.lanes == {} and closed._acc.memory_used == 0
        await closed.send("t", b"b" * 84)

    with pytest.raises(ClientClosedError):
        trio.run(close_then_send)
    failed = producer()
    send(failed, b"a" * 84)
    fenced = BrokerError(ErrorCode.PRODUCER_FENCED, "fenced")
    failed._set_fatal(fenced)
    assert failed._acc.lanes == {} and failed._acc.memory_used == 0
    with pytest.raises(BrokerError) as refused:
        send(failed, b"b" * 84)
    assert refused.value is fenced


class LaneMachine(RuleBasedStateMachine):
    """Sends of every kind (fast, keyed, to a partition, bulk) to two topics, drains, deliveries
    and aborts, in any order: memory always counts exactly the queued records and the lanes'
    reservations, stays within the buffer, and every record is in its batch at its future."""

    def __init__(self) -> None:
        super().__init__()
        self.made = producer()
        self.acc = self.made._acc
        self.sent: list[tuple[RecordFuture, bytes]] = []
        self.live: set[ProducerBatch] = set()  # made and not yet released

    def _refused(self, least: int) -> None:
        # Refused only for memory that records hold: every lane's room was given back first.
        assert self.acc.lanes == {}
        assert self.acc.memory_used == sum(batch.size_bytes for batch in self.live)
        assert self.acc.memory_used + least > 2500

    def _sent(self, future: RecordFuture, value: bytes) -> None:
        self.sent.append((future, value))
        self.live.add(future.batch)

    @rule(topic=st.sampled_from(["t", "u"]), size=st.integers(0, 700), n=st.integers(1, 6))
    def send_keyless(self, topic: str, size: int, n: int) -> None:
        for i in range(n):
            value = bytes([i]) * size
            try:
                self._sent(send(self.made, value, topic), value)
            except BufferFullError:
                self._refused(RECORD_OVERHEAD_BYTES + size)
                return

    @rule(
        topic=st.sampled_from(["t", "u"]),
        size=st.integers(0, 300),
        how=st.sampled_from(["key", "partition", "headers"]),
    )
    def send_other(self, topic: str, size: int, how: str) -> None:
        value = b"k" * size
        kwargs: dict[str, object] = {
            "key": {"key": b"some key"},
            "partition": {"partition": size % PARTITIONS},
            "headers": {"headers": [("h", b"1")]},
        }[how]
        try:
            self._sent(send(self.made, value, topic, **kwargs), value)
        except BufferFullError:
            extra = {"key": len(b"some key"), "partition": 0, "headers": len("h") + len(b"1")}
            self._refused(RECORD_OVERHEAD_BYTES + size + extra[how])

    @rule(topic=st.sampled_from(["t", "u"]), count=st.integers(1, 12))
    def send_many(self, topic: str, count: int) -> None:
        values = [b"m" * (37 * i % 200) for i in range(count)]
        bulk = BulkAppend(self.made, topic, values, None, None, None, 1_700_000_000_000)
        assert bulk.route()
        while not bulk.finished and bulk.append_some():
            pass
        future = bulk.future()  # keyless: indexed in call order, finished or not
        for index in range(len(future)):
            self._sent(future[index], values[index])
        if not bulk.finished:
            self._refused(bulk.next_size())

    @rule(flush=st.booleans())
    def drain_and_deliver(self, flush: bool) -> None:
        if flush:
            self.acc.begin_flush()
        ready, _ = self.acc.drain(0.0, {}, max_in_flight=1)
        if flush:
            self.acc.end_flush()
        for batch in ready:
            assert batch.topic not in self.acc.lanes or self.acc.lanes[batch.topic] is not batch
            batch.complete(0, None)
            self.acc.release(batch)
            self.live.discard(batch)

    @rule()
    def abort(self) -> None:
        for batch in self.acc.abort_unsent():
            batch.complete(-1, None)
            self.acc.release(batch)
            self.live.discard(batch)

    @invariant()
    def memory_counts_records_and_reservations(self) -> None:
        lanes = self.acc.lanes.values()
        records = sum(batch.size_bytes for batch in self.live)
        reserved = sum(batch.lane_limit - batch.size_bytes for batch in lanes)
        assert self.acc.memory_used == records + reserved
        assert self.acc.memory_used <= 2500 or len(self.live) == 1

    @invariant()
    def lanes_are_open_sticky_batches_within_bounds(self) -> None:
        open_batches = set(self.acc._open.values())
        for topic, lane in self.acc.lanes.items():
            assert lane.topic == topic and lane in open_batches and lane in self.live
            assert lane.size_bytes <= lane.lane_limit <= 1000
            assert lane.partition == self.acc.sticky.current[topic]

    @invariant()
    def batches_stay_within_their_limits(self) -> None:
        for batch in self.live:
            assert batch.size_bytes <= 1000 or batch.record_count == 1
            size = sum(RECORD_OVERHEAD_BYTES + len(row[2] or b"") + len(row[1] or b"")
                       for row in rows_of(batch))  # fmt: skip
            assert batch.size_bytes == size + sum(
                len(name) + len(value) for row in rows_of(batch) for name, value in row[3] or ()
            )

    @invariant()
    def every_record_is_at_its_future(self) -> None:
        for future, value in self.sent:
            assert future.batch.values[future[1]] == value


TestLanes = LaneMachine.TestCase
TestLanes.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
