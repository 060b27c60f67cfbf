"""An in-process broker on 127.0.0.1:0 with a temporary data directory, stopped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.config import BrokerConfig
from broker.server import Broker
from tests.unit.server.wire_client import WireClient

StartBroker = Callable[..., Awaitable[Broker]]


@pytest.fixture
async def start_broker(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartBroker]:
    """`await start_broker(**config)` runs a broker; all are stopped (gracefully) at teardown."""
    brokers: list[Broker] = []

    async def start(**values: Any) -> Broker:
        settings = {
            "listen": "127.0.0.1:0",
            "metrics_listen": "",
            "data_dir": str(tmp_path / "data"),
        }
        settings.update(values)
        broker = Broker(BrokerConfig.from_mapping(settings))
        await nursery.start(broker.run)
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.request_stop()
        with trio.fail_after(30):
            await broker.stopped.wait()


@pytest.fixture
async def broker(start_broker: StartBroker) -> Broker:
    return await start_broker()


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[WireClient]:
    assert broker.addresses is not None
    connection = await WireClient.connect(*broker.addresses.listen)
    yield connection
    await connection.aclose()
