"""The embedded brokers start on free ports, serve clients, restart, and always stop."""

from __future__ import annotations

import trio

from client import aio
from client.embedded import EmbeddedBroker, open_embedded_broker, open_inprocess_broker


def test_two_brokers_side_by_side_and_stop() -> None:
    with EmbeddedBroker() as first, EmbeddedBroker() as second:
        assert first.bootstrap != second.bootstrap
        assert first.metrics_address != "-"
        process = first.process
        assert process is not None and process.poll() is None
    assert process.poll() == 0  # SIGTERM: a clean shutdown exits 0


def test_start_failure_shows_the_log() -> None:
    broker = EmbeddedBroker(extra_args=["--set", "no_such_option=1"])
    try:
        broker.start()
    except RuntimeError as exc:
        assert "failed to start" in str(exc) and "no_such_option" in str(exc)
    else:
        raise AssertionError("a bad option must fail the start")
    finally:
        broker.close()


async def test_trio_embedded_and_inprocess_brokers() -> None:
    async with open_embedded_broker() as child, open_inprocess_broker() as inproc:
        for bootstrap in (child.bootstrap, inproc.bootstrap):
            async with aio.AdminClient(bootstrap) as admin:
                await admin.create_topic("t", 1)
            async with aio.Producer(bootstrap) as producer:
                metadata = await producer.send_and_wait("t", b"x")
            assert metadata.offset == 0
        await trio.lowlevel.checkpoint()
