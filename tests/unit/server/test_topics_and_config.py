"""TopicManager over a real KvStore and LogManager (tmp_path), and BrokerConfig loading rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.config import BrokerConfig, ConfigError, FlushPolicy, LogConfig
from broker.kvstore import KeySpace, KvStore
from broker.log.manager import LogManager
from broker.topics import TopicManager, effective_configs, validate_topic_name
from cli.broker_main import load_config
from wire.error_codes import BrokerError, ErrorCode


def open_topics(data_dir: Path, config: BrokerConfig | None = None) -> tuple[TopicManager, Any]:
    config = config or BrokerConfig()
    store = KvStore.open(data_dir / "meta.lmdb")
    topics = TopicManager(config, store, KeySpace.TOPICS)
    topics.load_records()
    logs = LogManager.open(data_dir, config.log, config_for=topics.config_for)
    topics.attach_logs(logs)
    return topics, (store, logs)


def close(handles: Any) -> None:
    store, logs = handles
    logs.close(clean=True)
    store.close()


@pytest.mark.parametrize(
    ("name", "ok"),
    [("a", True), ("A.b_c-9", True), ("x" * 249, True), ("x" * 250, False), ("", False),
     (".", False), ("..", False), ("a/b", False), ("a b", False), ("é", False)],
)  # fmt: skip
def test_topic_name_rules(name: str, ok: bool) -> None:
    if ok:
        validate_topic_name(name)
    else:
        with pytest.raises(BrokerError) as info:
            validate_topic_name(name)
        assert info.value.code is ErrorCode.INVALID_TOPIC


def test_topics_persist_with_their_overrides(tmp_path: Path) -> None:
    # Goal: a topic's record and overrides survive a reopen; its logs get the topic config.
    topics, handles = open_topics(tmp_path)
    added: list[tuple[str, int]] = []
    topics.on_partition_added = lambda topic, partition, log: added.append((topic, partition))
    record = topics.create(
        "t", partitions=2, configs={"retention.ms": "1000", "flush.policy": "never"}
    )
    assert added == [("t", 0), ("t", 1)]
    assert record.log_config.retention_ms == 1000
    assert record.log_config.flush_policy is FlushPolicy.NEVER
    close(handles)
    topics, handles = open_topics(tmp_path)
    reopened = topics.get("t")
    assert reopened is not None
    assert reopened.partition_count == 2
    assert reopened.configs == {"retention.ms": "1000", "flush.policy": "never"}
    _, logs = handles
    assert logs.get("t", 1).config.retention_ms == 1000
    close(handles)


def test_create_refusals_are_named(tmp_path: Path) -> None:
    topics, handles = open_topics(tmp_path, BrokerConfig(max_partitions_per_topic=4))
    topics.create("t")
    cases = [
        (dict(name="t"), ErrorCode.TOPIC_ALREADY_EXISTS),
        (dict(name="u", partitions=5), ErrorCode.INVALID_PARTITIONS),
        (dict(name="u", partitions=0), ErrorCode.INVALID_PARTITIONS),
        (dict(name="u", replication_factor=2), ErrorCode.INVALID_REPLICATION_FACTOR),
        (dict(name="u", configs={"retention.ms": "x"}), ErrorCode.INVALID_CONFIG),
        (dict(name="u", configs={"bogus.key": 1}), ErrorCode.INVALID_CONFIG),
        (dict(name="u", configs={"max.message.bytes": 2**30}), ErrorCode.INVALID_CONFIG),
        (dict(name="u", configs={"partitions": "many"}), ErrorCode.INVALID_CONFIG),
        (dict(name="u/v"), ErrorCode.INVALID_TOPIC),
    ]
    for kwargs, code in cases:
        name = kwargs.pop("name")
        with pytest.raises(BrokerError) as info:
            topics.create(name, **kwargs)
        assert info.value.code is code, (name, kwargs, info.value)
    assert topics.names() == ["t"]
    close(handles)


def test_partitions_config_key_and_validate_only(tmp_path: Path) -> None:
    topics, handles = open_topics(tmp_path)
    assert topics.create("p", configs={"partitions": "3"}).partition_count == 3
    assert topics.create("v", partitions=2, validate_only=True).partition_count == 2
    assert topics.get("v") is None
    close(handles)


def test_delete_removes_record_and_logs(tmp_path: Path) -> None:
    topics, handles = open_topics(tmp_path)
    topics.create("gone", partitions=2)
    removed: list[tuple[str, int]] = []
    topics.on_partition_removed = lambda topic, partition, log: removed.append((topic, partition))
    topics.delete("gone")
    assert removed == [("gone", 0), ("gone", 1)]
    with pytest.raises(BrokerError) as info:
        topics.delete("gone")
    assert info.value.code is ErrorCode.UNKNOWN_TOPIC
    close(handles)
    topics, handles = open_topics(tmp_path)
    assert topics.names() == []
    assert not list((tmp_path / "logs").iterdir())
    close(handles)


def test_logs_without_a_record_are_kept_unserved(tmp_path: Path) -> None:
    # Goal: a log the metadata does not know (lost or damaged metadata) is never deleted or
    # served; it is reported as a stray (tests/unit/test_topic_strays.py has the rest).
    store = KvStore.open(tmp_path / "meta.lmdb")
    logs = LogManager.open(tmp_path, LogConfig())
    logs.create("orphan", 0)
    logs.close()
    store.close()
    topics, handles = open_topics(tmp_path)
    assert topics.names() == []
    assert list(topics.stray_logs) == [("orphan", 0)]
    assert (tmp_path / "logs" / "orphan-0").is_dir()
    _, logs = handles
    assert logs.partitions() == []
    close(handles)


def test_require_partition(tmp_path: Path) -> None:
    topics, handles = open_topics(tmp_path)
    topics.create("t", partitions=2)
    topics.require_partition("t", 1)
    for topic, partition, code in [("t", 2, ErrorCode.UNKNOWN_PARTITION),
                                   ("t", -1, ErrorCode.UNKNOWN_PARTITION),
                                   ("x", 0, ErrorCode.UNKNOWN_TOPIC)]:  # fmt: skip
        with pytest.raises(BrokerError) as info:
            topics.require_partition(topic, partition)
        assert info.value.code is code
    close(handles)


def test_effective_configs_use_dotted_keys() -> None:
    configs = effective_configs(LogConfig(retention_ms=5))
    assert configs["retention.ms"] == 5
    assert configs["flush.policy"] == "always"
    assert configs["max.message.bytes"] == LogConfig().max_batch_bytes


# --- BrokerConfig ------------------------------------------------------------------------------


def test_defaults_are_valid_and_documented() -> None:
    config = BrokerConfig()
    config.validate()
    assert config.listen == "127.0.0.1:9092"
    assert config.data_dir == "./broker-data"
    assert config.metrics_listen == "127.0.0.1:9100"
    assert config.auto_create_topics is False
    documented = (Path(__file__).resolve().parents[3] / "docs" / "configuration.md").read_text()
    for field in BrokerConfig.__dataclass_fields__:
        if field != "log":
            assert f"`{field}`" in documented, field
    for field in LogConfig.__dataclass_fields__:
        assert f"`{field}`" in documented, f"log key {field}"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"listen": "localhost"}, "listen"),
        ({"listen": "h:99999"}, "listen"),
        ({"metrics_listen": "x"}, "metrics_listen"),
        ({"node_id": -1}, "node_id"),
        ({"max_frame_bytes": "1k"}, "max_frame_bytes"),
        ({"max_inflight_requests_per_connection": 0}, "max_inflight_requests_per_connection"),
        ({"default_partitions": 0}, "default_partitions"),
        ({"log.segment.bytes": 10}, "log.segment.bytes"),
        ({"log": {"flush.policy": "sometimes"}}, "log.flush.policy"),
        ({"log": 5}, "log"),
        ({"unknown": 1}, "unknown"),
        ({"log.max_batch_bytes": 64 * 1024 * 1024}, "log.max_batch_bytes"),
        # Cluster mode: malformed peers, a node id < 1, a broker missing from its own peers.
        ({"peers": "1@h"}, "peers"),
        ({"peers": "x@h:1"}, "peers"),
        ({"peers": "1@h:1,1@h:2", "node_id": 1}, "peers"),
        ({"peers": "1@h:0", "node_id": 1}, "peers"),
        ({"peers": "1@h:1,2@h:2"}, "node_id"),
        ({"peers": "1@h:1,2@h:2", "node_id": 3}, "peers"),
        (
            {"peers": "1@h:1", "node_id": 1, "broker_session_timeout_ms": 10},
            "broker_session_timeout_ms",
        ),
        ({"peers": "1@h:1", "node_id": 1, "raft_tick_ms": 0}, "raft_tick_ms"),
    ],
)
def test_invalid_values_name_their_key(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        BrokerConfig.from_mapping(values)
    assert info.value.key == key


def test_cluster_peers_parse_into_addresses() -> None:
    config = BrokerConfig.from_mapping(
        {"node_id": 2, "peers": " 1@10.0.0.1:9092, 2@[::1]:9093,3@b:9094 "}
    )
    assert config.peer_addresses == {1: ("10.0.0.1", 9092), 2: ("::1", 9093), 3: ("b", 9094)}
    assert BrokerConfig().peer_addresses == {}  # single-node mode


def test_sources_merge_in_order(tmp_path: Path) -> None:
    config_file = tmp_path / "b.toml"
    config_file.write_text(
        'listen = "127.0.0.1:1"\nnode_id = 3\n'
        '[log]\n"retention.ms" = 10\n"flush.policy" = "never"\n'
    )
    config = load_config(
        config_file=config_file,
        settings=["node_id=4", "retention.bytes=99", "log.flush.policy=interval"],
        flags={"listen": "127.0.0.1:2", "data_dir": None, "metrics_listen": ""},
    )
    assert config.listen == "127.0.0.1:2"
    assert config.node_id == 4
    assert config.metrics_listen == ""
    assert config.log.retention_ms == 10
    assert config.log.retention_bytes == 99
    assert config.log.flush_policy is FlushPolicy.INTERVAL


def test_bad_config_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(config_file=tmp_path / "missing.toml", settings=[], flags={})
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(config_file=broken, settings=[], flags={})
    with pytest.raises(ConfigError, match="key=value"):
        load_config(config_file=None, settings=["novalue"], flags={})
