"""Compaction in a real `broker serve`: SIGKILL while the cleaner is rewriting segments, restart,
and every key still reads back with its latest value; then the cleaner finishes the job."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from broker.log.cleaner import CLEANER_CHECKPOINT_FILE, CLEANING_DIRECTORY
from tests.integration.server.conftest import BrokerProcess, StartProcess
from tests.unit.server.wire_client import WireClient
from wire.batch import build_batch, decode_records, iter_batches
from wire.error_codes import ErrorCode

WAIT_S = 30.0
KEYS = 20
BATCHES = 300
TOPIC = "compacted"
TOPIC_CONFIGS = {
    "segment.bytes": 1024,
    "max.message.bytes": 1024,
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": 0.01,
}


async def read_latest(process: BrokerProcess) -> tuple[dict[bytes, bytes | None], int]:
    """Latest value per key from offset 0 to the end, and how many records were read."""
    client = await WireClient.connect(*process.listen)
    latest: dict[bytes, bytes | None] = {}
    offset = count = 0
    while offset < BATCHES:
        result = await client.fetch(TOPIC, 0, offset)
        assert result.error is ErrorCode.NONE and result.records
        for position, header in iter_batches(result.records):
            for record in decode_records(result.records, position, header=header):
                if record.offset >= offset:
                    assert record.key is not None
                    latest[bytes(record.key)] = record.value
                    count += 1
            offset = max(offset, header.next_offset)
    await client.aclose()
    return latest, count


def wait_for(condition, timeout_s: float = WAIT_S) -> None:  # type: ignore[no-untyped-def]
    # A filesystem condition a background task brings about; polled with a deadline.
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


async def test_sigkill_mid_clean_loses_no_key(broker_process: StartProcess, tmp_path: Path) -> None:
    # Written with the cleaner off, so that the first pass has the whole log to do.
    first = broker_process("--set", "log_cleaner_enabled=false")
    client = await WireClient.connect(*first.listen)
    assert (await client.create_topic(TOPIC, **TOPIC_CONFIGS)).error is ErrorCode.NONE
    expected: dict[bytes, bytes | None] = {}
    for i in range(BATCHES):
        key, value = b"key-%02d" % (i % KEYS), b"value-%04d-" % i + b"x" * 150
        expected[key] = value
        batch = build_batch([(1_700_000_000_000 + i, key, value, None)])
        assert (await client.produce(TOPIC, 0, batch)).error is ErrorCode.NONE
    await client.aclose()
    assert first.stop() == 0
    slow = ("--set", "log_cleaner_backoff_ms=50", "--set", "log_cleaner_io_bytes_per_second=8192")
    cleaning = broker_process(*slow)
    partition_dir = tmp_path / "data" / "logs" / f"{TOPIC}-0"
    workspace = partition_dir / CLEANING_DIRECTORY
    # The throttled cleaner is rewriting segments: kill it in the middle.
    wait_for(lambda: workspace.exists() and len(list(workspace.glob("*.log"))) >= 3)
    cleaning.stop(signal.SIGKILL)
    assert not (partition_dir / CLEANER_CHECKPOINT_FILE).exists()  # no pass completed
    second = broker_process("--set", "log_cleaner_backoff_ms=50")
    latest, _ = await read_latest(second)
    assert latest == expected
    # The restarted cleaner completes a pass: fewer records, the same latest value per key.
    wait_for(lambda: (partition_dir / CLEANER_CHECKPOINT_FILE).exists())
    latest, count = await read_latest(second)
    assert latest == expected
    assert count < BATCHES
    assert second.stop() == 0
