"""Limits against hostile clients on an in-process broker: the request memory budget stops
reading when it is used up, a response too large for a frame is answered with an error (the
connection stays usable), and the pure per-IP connection counting."""

from __future__ import annotations

import pytest
import trio

from broker.connection_limits import ConnectionLimits, ConnectionRefusal, RequestMemoryBudget
from broker.server import Broker
from tests.unit.server.conftest import StartBroker
from tests.unit.server.wire_client import WireClient
from wire import codec
from wire.error_codes import ErrorCode

FRAME_LIMIT = 256 * 1024
# A frame limit this small needs batches smaller than the default 1 MiB.
SMALL_FRAMES = {"max_frame_bytes": FRAME_LIMIT, "log.max_batch_bytes": 64 * 1024}


def test_connection_limits_count_per_ip_and_in_total() -> None:
    limits = ConnectionLimits(max_connections=3, max_connections_per_ip=2)
    assert limits.try_open("10.0.0.1") is None
    assert limits.try_open("10.0.0.1") is None
    assert limits.try_open("10.0.0.1") is ConnectionRefusal.MAX_CONNECTIONS_PER_IP
    assert limits.try_open("10.0.0.2") is None
    assert limits.try_open("10.0.0.3") is ConnectionRefusal.MAX_CONNECTIONS
    limits.closed("10.0.0.1")
    assert limits.open_from("10.0.0.1") == 1
    assert limits.try_open("10.0.0.3") is None
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limits.closed(ip)
    # Forgotten addresses leave nothing behind: the table is bounded by open connections.
    assert limits.open_count == 0 and limits.open_from("10.0.0.1") == 0


async def test_the_budget_makes_a_second_reservation_wait_for_the_first() -> None:
    budget = RequestMemoryBudget(100)
    await budget.acquire(70)
    acquired = trio.Event()

    async def second() -> None:
        await budget.acquire(50)
        acquired.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not acquired.is_set() and budget.statistics().waiting_count == 1
        budget.release(70)
        await acquired.wait()
    assert budget.used_bytes == 50 and budget.statistics().waits_total == 1


async def test_concurrent_reservations_never_exceed_the_budget() -> None:
    # Tasks that all find room at once must not all take it (a yield between the check and
    # the reservation let three 64 MiB frames into a 128 MiB budget).
    budget = RequestMemoryBudget(100)
    peak = 0

    async def reserve() -> None:
        nonlocal peak
        await budget.acquire(60)
        peak = max(peak, budget.used_bytes)
        await trio.sleep(0.01)
        budget.release(60)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reserve)
    assert peak == 60 and budget.used_bytes == 0


def _frame_start(size: int) -> bytes:
    """The length prefix of a frame of `size` bytes and a few bytes of it: a request started."""
    return (size - 4).to_bytes(4, "big") + (16).to_bytes(4, "big") + b"\x00" * 8


async def _wait_until(condition: object, timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_reading_stops_while_the_request_memory_budget_is_used_up(
    start_broker: StartBroker,
) -> None:
    # Budget = one frame: a second connection's large request waits, unread, until the first
    # connection gives its reservation back (here: by closing).
    broker: Broker = await start_broker(**SMALL_FRAMES, queued_max_request_bytes=FRAME_LIMIT)
    assert broker.addresses is not None
    first = await WireClient.connect(*broker.addresses.listen)
    second = await WireClient.connect(*broker.addresses.listen)
    await first.send_raw(_frame_start(200_000))
    await _wait_until(lambda: broker.request_memory.used_bytes == 200_000)
    await second.send_raw(_frame_start(150_000))
    await _wait_until(lambda: broker.request_memory.statistics().waiting_count == 1)
    assert broker.request_memory.used_bytes == 200_000  # never over the budget
    await first.aclose()
    await _wait_until(lambda: broker.request_memory.used_bytes == 150_000)
    await second.aclose()
    await _wait_until(lambda: broker.request_memory.used_bytes == 0)


async def test_answered_requests_give_their_reservation_back(start_broker: StartBroker) -> None:
    broker: Broker = await start_broker(**SMALL_FRAMES, queued_max_request_bytes=FRAME_LIMIT)
    assert broker.addresses is not None
    client = await WireClient.connect(*broker.addresses.listen)
    for _ in range(5):  # each 200 KB request is reserved, answered, released: never stuck
        response = await client.request(codec.MetadataRequest(topics=("x" * 200_000,)))
        assert response.topics[0].error is ErrorCode.INVALID_TOPIC
    await _wait_until(lambda: broker.request_memory.used_bytes == 0)
    await client.aclose()


async def test_a_response_too_large_for_a_frame_is_an_error_and_the_connection_lives(
    start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # The issue: such a response was logged with the wrong limit and a traceback, and the
    # connection died. Many unknown topics make a response header over MAX_HEADER_BYTES.
    broker: Broker = await start_broker()
    assert broker.addresses is not None
    client = await WireClient.connect(*broker.addresses.listen)
    names = tuple(f"t{index}" for index in range(300_000))
    response = await client.request(codec.MetadataRequest(topics=names), timeout_s=60)
    assert isinstance(response, codec.ErrorResponse), type(response)
    assert response.error is ErrorCode.MESSAGE_TOO_LARGE
    assert "MAX_HEADER_BYTES" in response.error_message
    again = await client.request(codec.MetadataRequest(topics=("t",)))
    assert again.topics[0].error is ErrorCode.UNKNOWN_TOPIC
    assert "Traceback" not in caplog.text and "max_frame_bytes 67108864" not in caplog.text
    await client.aclose()


async def test_a_client_that_does_not_read_its_replies_is_closed(start_broker: StartBroker) -> None:
    broker: Broker = await start_broker(response_write_timeout_ms=500)
    assert broker.addresses is not None
    client = await WireClient.connect(*broker.addresses.listen)
    # Each answer is about 200 KB; 100 of them fill the socket buffers of both sides.
    names = tuple(f"{index:0>190}" for index in range(1000))
    with trio.fail_after(30):
        try:
            for _ in range(100):
                await client.send(codec.MetadataRequest(topics=names))
        except trio.BrokenResourceError:
            pass  # the broker closed it while we were still sending: the test's point too
        await _wait_until(lambda: not broker._connections, timeout_s=30)
    closed = broker.metrics.connections_closed.labels("response_write_timeout_ms")
    assert closed._value.get() == 1
    await client.aclose()
