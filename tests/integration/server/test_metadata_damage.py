"""Goal: a damaged or lost metadata store (`<data>/meta.lmdb`) never destroys data on a real
single-node `broker serve` (issue 13, docs/storage.md "Metadata damage").

Each case writes RECORDS records, stops the broker, damages the store, then checks that:
- a lost store or an unreadable topic record: the broker starts, keeps the partition logs on disk
  unserved (reported in its log and in `broker_stray_logs`), and `--recover-topics` serves them
  again with every record;
- a truncated or garbled data file: the broker refuses to start (exit 1) with one message naming
  the file and what to do, no traceback, and leaves every log file as it was.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from broker.kvstore import DATA_FILE, KeySpace, KvStore
from client import AdminClient, Consumer, Producer, TopicPartition
from tests.integration.server.conftest import BrokerProcess, StartProcess, broker_command

TOPIC = "orders"
PARTITIONS = 4
RECORDS = 4000
DEADLINE_S = 60.0
REFUSE_TIMEOUT_S = 60.0
EXIT_STARTUP = 1


def bootstrap(broker: BrokerProcess) -> str:
    return f"{broker.listen[0]}:{broker.listen[1]}"


def fill(broker: BrokerProcess) -> None:
    with AdminClient(bootstrap(broker)) as admin:
        admin.create_topic(TOPIC, PARTITIONS)
    with Producer(bootstrap(broker), acks="all", linger_ms=5) as producer:
        for index in range(RECORDS):
            producer.send(TOPIC, b"value-%d" % index, partition=index % PARTITIONS)
        producer.flush()


def read_all(broker: BrokerProcess) -> list[bytes]:
    """Every record of TOPIC, read from the beginning of each partition."""
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    values: list[bytes] = []
    with Consumer(bootstrap(broker), auto_offset_reset="earliest") as consumer:
        consumer.assign(partitions)
        deadline = time.monotonic() + DEADLINE_S
        while len(values) < RECORDS:
            assert time.monotonic() < deadline, f"read {len(values)} of {RECORDS} records"
            values.extend(record.value for record in consumer.poll(timeout_ms=500))
    return values


def log_digest(data_dir: Path) -> dict[str, str]:
    """Every file under the topic's log directories, by path, with its content hash."""
    return {
        str(path.relative_to(data_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((data_dir / "logs").glob(f"{TOPIC}-*/*"))
        if path.is_file()
    }


def stray_gauge(broker: BrokerProcess) -> float:
    assert broker.metrics is not None
    address = f"http://{broker.metrics[0]}:{broker.metrics[1]}/metrics"
    with urllib.request.urlopen(address, timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith("broker_stray_logs "):
                return float(line.split()[1])
    raise AssertionError("no broker_stray_logs on /metrics")


def assert_recovers(broker_process: StartProcess, data_dir: Path) -> None:
    """Kept unserved on a plain start; every record served after --recover-topics."""
    broker = broker_process()
    assert broker.log().count("stray log") >= 1, broker.log()
    assert str(data_dir / "logs" / f"{TOPIC}-0") in broker.log()
    assert stray_gauge(broker) == PARTITIONS
    with AdminClient(bootstrap(broker)) as admin:
        assert TOPIC not in admin.list_topics()
    assert broker.stop() == 0
    assert len(log_digest(data_dir)) > 0
    broker = broker_process("--recover-topics")
    assert f"recovered topic {TOPIC}" in broker.log()
    assert stray_gauge(broker) == 0
    values = read_all(broker)
    assert sorted(values) == sorted(b"value-%d" % index for index in range(RECORDS))
    assert broker.stop() == 0
    # Recovery is durable: a plain restart serves the topic.
    broker = broker_process()
    assert len(read_all(broker)) == RECORDS


@pytest.fixture
def filled(broker_process: StartProcess, tmp_path: Path) -> Path:
    """A data directory whose topic holds RECORDS records; the broker is stopped."""
    broker = broker_process()
    fill(broker)
    assert broker.stop() == 0
    return tmp_path / "data"


def test_lost_store_keeps_logs_and_recovers(broker_process: StartProcess, filled: Path) -> None:
    shutil.rmtree(filled / "meta.lmdb")
    assert_recovers(broker_process, filled)


def test_topic_record_missing_a_field_keeps_logs(
    broker_process: StartProcess, filled: Path
) -> None:
    store = KvStore.open(filled / "meta.lmdb")
    stored = store.get_obj(KeySpace.TOPICS, TOPIC.encode())
    del stored["partition_count"]
    store.put_obj(KeySpace.TOPICS, TOPIC.encode(), stored)
    store.close()
    assert_recovers(broker_process, filled)


def test_undecodable_topic_record_keeps_logs(broker_process: StartProcess, filled: Path) -> None:
    store = KvStore.open(filled / "meta.lmdb")
    store.put(KeySpace.TOPICS, TOPIC.encode(), b"\xa4\xff\xfe\xfd\xfc")  # msgpack str, not UTF-8
    store.close()
    assert_recovers(broker_process, filled)


def refuse(data_dir: Path, tmp_path: Path) -> str:
    """Start `broker serve` on a damaged store; assert it refuses cleanly; returns stderr."""
    before = log_digest(data_dir)
    result = subprocess.run(
        [*broker_command(), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=REFUSE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == EXIT_STARTUP, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert str(data_dir / "meta.lmdb" / DATA_FILE) in result.stderr
    assert result.stderr.count("--recover-topics") == 1 and "backup" in result.stderr
    assert log_digest(data_dir) == before, "a refused start touched the logs"
    return result.stderr


def recover_after_moving_aside(broker_process: StartProcess, data_dir: Path) -> None:
    """What the refusal message says to do: move the store aside, start with --recover-topics."""
    (data_dir / "meta.lmdb").rename(data_dir / "meta.lmdb.damaged")
    broker = broker_process("--recover-topics")
    assert len(read_all(broker)) == RECORDS


def test_truncated_store_refuses_to_start(
    broker_process: StartProcess, filled: Path, tmp_path: Path
) -> None:
    data_file = filled / "meta.lmdb" / DATA_FILE
    with data_file.open("r+b") as handle:
        handle.truncate(handle.seek(0, 2) // 2)
    assert "truncated" in refuse(filled, tmp_path)
    recover_after_moving_aside(broker_process, filled)


def test_garbled_store_refuses_to_start(
    broker_process: StartProcess, filled: Path, tmp_path: Path
) -> None:
    # Keep LMDB's two meta pages, overwrite every data page: its trees point at garbage.
    data_file = filled / "meta.lmdb" / DATA_FILE
    page_size = 4096
    size = data_file.stat().st_size
    with data_file.open("r+b") as handle:
        handle.seek(2 * page_size)
        handle.write(b"\xff" * (size - 2 * page_size))
    refuse(filled, tmp_path)
    recover_after_moving_aside(broker_process, filled)
