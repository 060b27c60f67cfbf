"""TopicManager with damaged or lost metadata: a log the records do not know is kept and not
served, `recover=True` re-registers it, and only a delete marked durably removes logs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.config import BrokerConfig
from broker.internal_topics import OFFSETS_TOPIC
from broker.kvstore import KeySpace, KvStore
from broker.log.manager import LogManager
from broker.topics import TopicManager
from wire.batch import build_batch
from wire.error_codes import BrokerError, ErrorCode


class Opened:
    """A TopicManager over a data directory, as the server opens it."""

    def __init__(self, data_dir: Path, *, recover: bool = False) -> None:
        config = BrokerConfig()
        self.store = KvStore.open(data_dir / "meta.lmdb")
        self.topics = TopicManager(config, self.store, KeySpace.TOPICS)
        self.topics.load_records()
        self.logs = LogManager.open(data_dir, config.log, config_for=self.topics.config_for)
        self.topics.attach_logs(self.logs, recover=recover)

    def close(self) -> None:
        self.logs.close()
        self.store.close()


def _filled(data_dir: Path, topic: str = "orders", partitions: int = 3) -> None:
    opened = Opened(data_dir)
    opened.topics.create(topic, partitions=partitions)
    for partition in range(partitions):
        log = opened.logs.get(topic, partition)
        assert log is not None
        log.append(build_batch([(1_000, None, b"v%d" % partition, None)]))
    opened.close()


def test_lost_store_keeps_logs_unserved_until_recovered(tmp_path: Path) -> None:
    _filled(tmp_path)
    shutil.rmtree(tmp_path / "meta.lmdb")
    opened = Opened(tmp_path)
    assert opened.topics.get("orders") is None
    assert sorted(opened.topics.stray_logs) == [("orders", 0), ("orders", 1), ("orders", 2)]
    assert opened.logs.get("orders", 0) is None  # released: not served
    assert (tmp_path / "logs" / "orders-2").is_dir()
    with pytest.raises(BrokerError) as refused:
        opened.topics.create("orders", partitions=1)  # would hide the old data
    assert refused.value.code is ErrorCode.TOPIC_ALREADY_EXISTS
    opened.close()

    opened = Opened(tmp_path, recover=True)
    record = opened.topics.get("orders")
    assert record is not None and record.partition_count == 3
    assert not opened.topics.stray_logs
    for partition in range(3):
        log = opened.logs.get("orders", partition)
        assert log is not None and log.log_end_offset == 1
    opened.close()
    assert Opened(tmp_path).topics.get("orders") is not None  # the recovered record persists


def test_partition_beyond_the_count_is_kept(tmp_path: Path) -> None:
    _filled(tmp_path, partitions=2)
    opened = Opened(tmp_path)
    stored = opened.store.get_obj(KeySpace.TOPICS, b"orders")
    opened.store.put_obj(KeySpace.TOPICS, b"orders", {**stored, "partition_count": 1})
    opened.close()
    opened = Opened(tmp_path)
    assert list(opened.topics.stray_logs) == [("orders", 1)]
    opened.close()
    opened = Opened(tmp_path, recover=True)
    record = opened.topics.get("orders")
    assert record is not None and record.partition_count == 2
    opened.close()


def test_internal_topic_strays_are_adopted_by_its_creation(tmp_path: Path) -> None:
    _filled(tmp_path, topic=OFFSETS_TOPIC, partitions=2)
    shutil.rmtree(tmp_path / "meta.lmdb")
    opened = Opened(tmp_path)
    opened.topics.create(OFFSETS_TOPIC, partitions=2)
    assert not opened.topics.stray_logs
    log = opened.logs.get(OFFSETS_TOPIC, 1)
    assert log is not None and log.log_end_offset == 1
    opened.close()


def test_interrupted_delete_is_finished(tmp_path: Path) -> None:
    # A crash after the record was marked `deleting` and before its logs were removed.
    _filled(tmp_path)
    opened = Opened(tmp_path)
    record = opened.topics.get("orders")
    assert record is not None
    opened.store.put_obj(KeySpace.TOPICS, b"orders", record.to_stored(deleting=True))
    opened.close()
    opened = Opened(tmp_path)
    assert opened.topics.get("orders") is None and not opened.topics.stray_logs
    assert opened.logs.partitions() == []
    assert opened.store.get(KeySpace.TOPICS, b"orders") is None
    opened.close()


def test_delete_then_create_again(tmp_path: Path) -> None:
    _filled(tmp_path)
    opened = Opened(tmp_path)
    opened.topics.delete("orders")
    assert not (tmp_path / "logs" / "orders-0").exists()
    opened.topics.create("orders", partitions=1)
    opened.close()
    opened = Opened(tmp_path)
    assert opened.logs.partitions() == [("orders", 0)] and not opened.topics.stray_logs
    opened.close()
