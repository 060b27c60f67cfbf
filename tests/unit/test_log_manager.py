"""LogManager: partitions are created, found again after a restart, configured and deleted."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import LogConfig
from broker.log.manager import LogManager, check_topic_name, parse_partition_directory
from wire.batch import build_batch
from wire.error_codes import BrokerError, ErrorCode


def _batch(value: bytes) -> bytes:
    return build_batch([(1_000, None, value, None)])


def test_create_reopen_and_list(tmp_path: Path) -> None:
    manager = LogManager.open(tmp_path, LogConfig())
    manager.create("orders-eu", 0).append(_batch(b"a"))
    manager.create("orders-eu", 1)
    manager.create("clicks", 0)
    manager.close()

    manager = LogManager.open(tmp_path, LogConfig())
    assert manager.partitions() == [("clicks", 0), ("orders-eu", 0), ("orders-eu", 1)]
    log = manager.get("orders-eu", 0)
    assert log is not None and log.log_end_offset == 1
    assert manager.get("orders-eu", 7) is None
    manager.close()


def test_duplicate_and_invalid_names_are_refused(tmp_path: Path) -> None:
    manager = LogManager.open(tmp_path, LogConfig())
    manager.create("t", 0)
    with pytest.raises(BrokerError) as exists:
        manager.create("t", 0)
    assert exists.value.code is ErrorCode.TOPIC_ALREADY_EXISTS
    for bad in ["", ".", "..", "a/b", "../etc", "x" * 250, "spaces here"]:
        with pytest.raises(BrokerError) as invalid:
            manager.create(bad, 0)
        assert invalid.value.code is ErrorCode.INVALID_TOPIC
    manager.close()


def test_per_topic_config_is_used_on_reopen(tmp_path: Path) -> None:
    small = LogConfig(segment_bytes=1024, max_batch_bytes=512)
    manager = LogManager.open(tmp_path, LogConfig())
    log = manager.create("small", 0, small)
    for _ in range(20):
        log.append(_batch(b"x" * 100))
    assert log.segment_count > 1
    manager.close()
    manager = LogManager.open(
        tmp_path, LogConfig(), config_for=lambda topic: small if topic == "small" else None
    )
    reopened = manager.get("small", 0)
    assert reopened is not None and reopened.config == small
    manager.close()


def test_delete_removes_files_and_survives_restart(tmp_path: Path) -> None:
    manager = LogManager.open(tmp_path, LogConfig())
    manager.create("gone", 0).append(_batch(b"a"))
    manager.create("kept", 0)
    manager.delete("gone", 0)
    assert manager.partitions() == [("kept", 0)]
    assert not any(path.name.startswith("gone") for path in (tmp_path / "logs").iterdir())
    with pytest.raises(BrokerError) as unknown:
        manager.delete("gone", 0)
    assert unknown.value.code is ErrorCode.UNKNOWN_PARTITION
    manager.close()
    # A deletion interrupted after the rename is finished by the next open.
    (tmp_path / "logs" / "half-0.3.deleting").mkdir()
    manager = LogManager.open(tmp_path, LogConfig())
    assert manager.partitions() == [("kept", 0)]
    assert not (tmp_path / "logs" / "half-0.3.deleting").exists()
    manager.close()


def test_retention_runs_over_every_log(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=1024, max_batch_bytes=512, retention_ms=1_000)
    manager = LogManager.open(tmp_path, config)
    for partition in range(2):
        log = manager.create("t", partition)
        for _ in range(20):
            log.append(build_batch([(1_000, None, b"x" * 100, None)]))
    segments_before = sum(log.segment_count for log in manager.logs())
    deleted = manager.apply_retention(now_ms=10_000)
    assert deleted == segments_before - 2  # everything but each active segment
    assert all(log.log_start_offset > 0 for log in manager.logs())
    manager.close()


def test_parse_partition_directory() -> None:
    assert parse_partition_directory("a-b-c-12") == ("a-b-c", 12)
    assert parse_partition_directory("nodash") is None
    assert parse_partition_directory("t-x") is None
    assert parse_partition_directory("-3") is None


def test_topic_names_must_match_whole() -> None:
    # `$` in a regex also matches before a trailing newline; the whole name must be checked.
    for bad in ["abc\n", "abc\r", "a\nb"]:
        with pytest.raises(BrokerError):
            check_topic_name(bad)
    check_topic_name("a.b_c-9")


def test_flush_recovered_makes_a_crashed_logs_tail_durable(tmp_path: Path) -> None:
    # Goal: after an unclean stop the tail above the recovery checkpoint is only in the page
    # cache; Raft would count it as durable at open, so start-up fsyncs it first.
    manager = LogManager.open(tmp_path, LogConfig())
    log = manager.create("t", 0)
    for value in (b"a", b"b", b"c"):
        log.append(_batch(value))
    manager.close(clean=False)  # as a crash leaves it: no flush, no clean-shutdown marker

    manager = LogManager.open(tmp_path, LogConfig())
    log = manager.get("t", 0)
    assert log is not None and log.log_end_offset == 3
    assert log.flushed_offset < log.log_end_offset
    manager.flush_recovered()
    assert log.flushed_offset == log.log_end_offset == 3
    manager.close()


def test_release_keeps_the_directory_and_adopt_serves_it_again(tmp_path: Path) -> None:
    manager = LogManager.open(tmp_path, LogConfig())
    manager.create("t", 0).append(_batch(b"a"))
    directory = manager.release("t", 0)
    assert manager.get("t", 0) is None and directory.is_dir()
    with pytest.raises(BrokerError) as refused:
        manager.create("t", 0)  # never a fresh log over a directory on disk
    assert refused.value.code is ErrorCode.TOPIC_ALREADY_EXISTS
    assert str(directory) in str(refused.value)
    log = manager.adopt("t", 0, LogConfig())
    assert log.log_end_offset == 1
    manager.close()


def test_open_keeps_directories_not_marked_for_deletion(tmp_path: Path) -> None:
    manager = LogManager.open(tmp_path, LogConfig())
    manager.create("kept", 0).append(_batch(b"a"))
    manager.close()
    (tmp_path / "logs" / "gone-0.1.deleting").mkdir()
    manager = LogManager.open(tmp_path, LogConfig())
    assert manager.partitions() == [("kept", 0)]
    assert not (tmp_path / "logs" / "gone-0.1.deleting").exists()
    manager.close()
