"""Limits against hostile clients on a real `broker serve` process, with small configured
values: a client sending 1 byte/s is closed within request_arrival_timeout_ms, a connection
that never completes its handshake within handshake_timeout_ms, an idle one within
connections_max_idle_ms, and connections beyond max_connections_per_ip are closed at once while
the others are still served. Each closure is counted in /metrics by its limit."""

from __future__ import annotations

import time
import urllib.request

import trio

from tests.integration.server.conftest import BrokerProcess, StartProcess
from tests.unit.server.wire_client import WireClient
from wire import codec
from wire.error_codes import ErrorCode

WAIT_S = 20.0


def _metric(broker: BrokerProcess, name: str, reason: str) -> float:
    assert broker.metrics is not None
    host, port = broker.metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


async def _closed_by_broker(stream: trio.SocketStream) -> None:
    """Return once the broker has closed `stream` (end of stream or a reset)."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass


def test_a_one_byte_per_second_client_is_closed_within_the_arrival_deadline(
    broker_process: StartProcess,
) -> None:
    broker = broker_process("--set", "request_arrival_timeout_ms=1000")

    async def main() -> float:
        client = await WireClient.connect(*broker.listen)
        header, payload = codec.encode_request(codec.MetadataRequest(), correlation_id=7)
        frame = client.frames.send(header, payload)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def trickle() -> None:
                for byte in frame:
                    await client.stream.send_all(bytes([byte]))
                    await trio.sleep(0.25)  # 4 bytes/s: the frame would take many seconds

            nursery.start_soon(trickle)
            with trio.fail_after(WAIT_S):
                await _closed_by_broker(client.stream)
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
        # Meanwhile and afterwards, a well-behaved client is served.
        other = await WireClient.connect(*broker.listen)
        response = await other.request(codec.MetadataRequest())
        await other.aclose()
        assert isinstance(response, codec.MetadataResponse)
        return elapsed

    elapsed = trio.run(main)
    assert 0.9 <= elapsed < WAIT_S, elapsed
    assert _metric(broker, "broker_connections_closed_by_limit", "request_arrival_timeout_ms") == 1


def test_handshake_and_idle_deadlines_close_silent_connections(
    broker_process: StartProcess,
) -> None:
    broker = broker_process(
        "--set", "handshake_timeout_ms=500", "--set", "connections_max_idle_ms=700"
    )  # fmt: skip

    async def main() -> None:
        silent = await trio.open_tcp_stream(*broker.listen)  # never says a word
        idle = await WireClient.connect(*broker.listen)  # handshakes, then nothing
        with trio.fail_after(WAIT_S):
            await _closed_by_broker(silent)
            await _closed_by_broker(idle.stream)
        await silent.aclose()
        await idle.aclose()

    trio.run(main)
    assert _metric(broker, "broker_connections_closed_by_limit", "handshake_timeout_ms") == 1
    assert _metric(broker, "broker_connections_closed_by_limit", "connections_max_idle_ms") == 1


def test_connections_beyond_the_per_ip_limit_are_refused_and_the_rest_served(
    broker_process: StartProcess,
) -> None:
    broker = broker_process("--set", "max_connections_per_ip=3")

    async def main() -> None:
        held = [await WireClient.connect(*broker.listen) for _ in range(3)]
        for _ in range(5):
            refused = await trio.open_tcp_stream(*broker.listen)
            with trio.fail_after(WAIT_S):
                await _closed_by_broker(refused)
            await refused.aclose()
        for client in held:  # every connection within the limit still works
            response = await client.request(codec.MetadataRequest(topics=("absent",)))
            assert response.topics[0].error is ErrorCode.UNKNOWN_TOPIC
        await held.pop().aclose()
        # The broker counts the closed connection out; then a new one is accepted again.
        with trio.fail_after(WAIT_S):
            while True:
                try:
                    replacement = await WireClient.connect(*broker.listen, timeout_s=2)
                    break
                except (ConnectionError, trio.BrokenResourceError):
                    await trio.sleep(0.05)
        held.append(replacement)
        for client in held:
            await client.aclose()

    trio.run(main)
    refused = _metric(broker, "broker_connections_refused", "max_connections_per_ip")
    assert refused >= 5, refused
    deadline = time.monotonic() + WAIT_S
    while "refusing a connection" not in broker.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
