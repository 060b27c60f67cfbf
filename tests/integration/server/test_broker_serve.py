"""`broker serve` as a real process: topics, produce/fetch, restart, long poll, offsets by time,
retention, metrics, graceful and forced shutdown, config refusal and the error paths."""

from __future__ import annotations

import select
import signal
import struct
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trio

from tests.integration.server.conftest import BrokerProcess, StartProcess, broker_command
from tests.log_reading import batches_in_file
from tests.unit.server.wire_client import WireClient, make_batch
from wire import codec
from wire.batch import iter_batches, validate_batch
from wire.error_codes import ErrorCode

WAIT_S = 20.0


def offsets_of(records: bytes) -> list[int]:
    return [header.base_offset for _, header in iter_batches(records)]


async def connect(process: BrokerProcess) -> WireClient:
    return await WireClient.connect(*process.listen)


async def wait_until(predicate_async, *, timeout_s: float = WAIT_S, interval_s: float = 0.05):  # type: ignore[no-untyped-def]
    """Re-check an async condition until it holds (for effects of timed background work)."""
    with trio.fail_after(timeout_s):
        while not (result := await predicate_async()):
            await trio.sleep(interval_s)
    return result


async def test_create_produce_fetch_describe(broker_process: StartProcess) -> None:
    process = broker_process()
    assert process.ready_line.startswith(f"READY listen=127.0.0.1:{process.listen[1]} metrics=")
    client = await connect(process)
    assert (await client.create_topic("events", partitions=2)).error is ErrorCode.NONE
    batches = [make_batch([b"e%d" % i for i in range(10)]) for _ in range(5)]
    for batch in batches:
        assert (await client.produce("events", 1, batch)).error is ErrorCode.NONE
    fetched = await client.fetch("events", 1, 0)
    assert offsets_of(fetched.records) == [0, 10, 20, 30, 40]
    described = await client.request(codec.DescribeTopicsRequest(topics=("events",)))
    partition = described.topics[0].partitions[1]
    assert (partition.log_end_offset, partition.high_watermark) == (50, 50)
    await client.aclose()
    assert process.stop() == 0


async def test_restart_reads_everything_back(broker_process: StartProcess, tmp_path: Path) -> None:
    # Goal: a SIGTERM shutdown is clean (exit 0, markers written) and a restart serves the data.
    first = broker_process()
    client = await connect(first)
    configs = {"segment.bytes": 4096, "max.message.bytes": 4096}
    assert (await client.create_topic("durable", **configs)).error is ErrorCode.NONE
    for i in range(40):
        result = await client.produce("durable", 0, make_batch([b"r%03d" % i] * 5))
        assert result.error is ErrorCode.NONE
    await client.aclose()
    assert first.stop() == 0
    partition_dir = tmp_path / "data" / "logs" / "durable-0"
    assert (partition_dir / "clean-shutdown").exists()
    assert "clean shutdown" in first.log()
    second = broker_process()
    client = await connect(second)
    offset, seen = 0, []
    while offset < 200:
        result = await client.fetch("durable", 0, offset)
        assert result.error is ErrorCode.NONE and result.records
        seen += offsets_of(result.records)
        offset = list(iter_batches(result.records))[-1][1].next_offset
    assert seen == list(range(0, 200, 5))
    await client.aclose()


async def test_kill_9_keeps_acknowledged_writes(
    broker_process: StartProcess, tmp_path: Path
) -> None:
    # Goal: acks=-1 under flush.policy=always survives SIGKILL (recovery on restart), and the
    # zeros preallocated after the last batch are taken for the end, not reported as damage.
    first = broker_process()
    client = await connect(first)
    assert (await client.create_topic("acked")).error is ErrorCode.NONE
    for i in range(20):
        assert (await client.produce("acked", 0, make_batch([b"%d" % i]))).base_offset == i
    first.stop(signal.SIGKILL)
    segment = tmp_path / "data" / "logs" / "acked-0" / f"{0:020d}.log"
    raw = segment.read_bytes()
    end = sum(header.size_bytes for _, header in batches_in_file(raw))
    assert len(raw) > end and raw[end:] == bytes(len(raw) - end)
    second = broker_process()
    client = await connect(second)
    result = await client.fetch("acked", 0, 0)
    assert offsets_of(result.records) == list(range(20))
    assert "truncating" not in second.log()
    assert (await client.produce("acked", 0, make_batch([b"after"]))).base_offset == 20
    await client.aclose()


async def test_long_poll_across_processes(broker_process: StartProcess) -> None:
    process = broker_process()
    consumer, producer = await connect(process), await connect(process)
    await consumer.create_topic("lp")
    correlation_id = await consumer.send(
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic="lp", partition=0, fetch_offset=0),),
            max_wait_ms=15_000,
        )
    )
    await producer.produce("lp", 0, make_batch([b"now"]))
    with trio.fail_after(5):
        response = await consumer.wait_response(correlation_id)
    assert offsets_of(response.partitions[0].records) == [0]


async def test_sigterm_finishes_in_flight_long_poll(broker_process: StartProcess) -> None:
    # Goal: stop accepting, answer what is in flight, exit 0 - without waiting out the poll.
    process = broker_process()
    client = await connect(process)
    await client.create_topic("t")
    correlation_id = await client.send(
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=0),),
            max_wait_ms=30_000,
        )
    )
    await client.request(codec.MetadataRequest())  # the fetch is surely in flight now
    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        response = await client.wait_response(correlation_id)
    assert response.partitions[0].error is ErrorCode.NONE
    assert process.stop(timeout_s=10) == 0
    try:
        await WireClient.connect(*process.listen, timeout_s=2)
    except OSError:
        pass
    else:
        raise AssertionError("the stopped broker still accepts connections")


async def test_list_offsets_by_timestamp(broker_process: StartProcess) -> None:
    process = broker_process()
    client = await connect(process)
    await client.create_topic("ts")
    for i, when in enumerate([1_000, 2_000, 3_000]):
        await client.produce("ts", 0, make_batch([b"a", b"b"], timestamp_ms=when))
        assert (await client.list_offset("ts", 0, codec.LATEST_TIMESTAMP)).offset == 2 * (i + 1)
    assert (await client.list_offset("ts", 0, 2_000)).offset == 2
    assert (await client.list_offset("ts", 0, 2_001)).offset == 3
    assert (await client.list_offset("ts", 0, 9_999)).offset == -1
    assert (await client.list_offset("ts", 0, codec.EARLIEST_TIMESTAMP)).offset == 0


async def test_retention_deletes_old_segments(broker_process: StartProcess) -> None:
    # Goal: the periodic sweep deletes whole old segments; the log start moves forward.
    process = broker_process("--set", "retention_check_interval_ms=100")
    client = await connect(process)
    configs = {"segment.bytes": 1024, "max.message.bytes": 1024, "retention.ms": 60_000}
    assert (await client.create_topic("old", **configs)).error is ErrorCode.NONE
    for _ in range(10):
        # Timestamps from 1970: older than any retention.
        await client.produce("old", 0, make_batch([b"x" * 400], timestamp_ms=1_000))

    async def log_start_moved() -> int:
        return (await client.list_offset("old", 0, codec.EARLIEST_TIMESTAMP)).offset > 0

    await wait_until(log_start_moved)
    assert (await client.fetch("old", 0, 0)).error is ErrorCode.OFFSET_OUT_OF_RANGE
    assert (await client.list_offset("old", 0, codec.LATEST_TIMESTAMP)).offset == 10


async def test_metrics_endpoint(broker_process: StartProcess) -> None:
    process = broker_process()
    client = await connect(process)
    await client.create_topic("metered")
    await client.produce("metered", 0, make_batch([b"a", b"b", b"c"]))
    await client.fetch("metered", 0, 0)
    assert process.metrics is not None
    url = f"http://{process.metrics[0]}:{process.metrics[1]}/metrics"
    text = await trio.to_thread.run_sync(
        lambda: urllib.request.urlopen(url, timeout=10).read().decode()
    )
    assert 'broker_requests_total{api="produce"} 1.0' in text
    assert 'broker_records_in_total{topic="metered"} 3.0' in text
    assert 'broker_records_out_total{topic="metered"} 3.0' in text
    assert 'broker_log_end_offset{partition="0",topic="metered"} 3.0' in text
    assert "broker_request_latency_seconds_bucket" in text
    assert "broker_connections 1.0" in text


async def test_error_paths(broker_process: StartProcess) -> None:
    # Goal: each bad input gets its named error and the broker keeps serving.
    process = broker_process("--set", "max_frame_bytes=262144", "--set", "log.max_batch_bytes=4096")
    client = await connect(process)
    assert (await client.create_topic("a/b")).error is ErrorCode.INVALID_TOPIC
    assert (await client.create_topic("x" * 250)).error is ErrorCode.INVALID_TOPIC
    bad_config = await client.create_topic("c", **{"retention.ms": "forever"})
    assert (
        bad_config.error is ErrorCode.INVALID_CONFIG and "retention.ms" in bad_config.error_message
    )
    too_big_config = await client.create_topic("c", **{"max.message.bytes": 10_000_000})
    assert too_big_config.error is ErrorCode.INVALID_CONFIG
    assert (await client.produce("missing", 0, make_batch([b"a"]))).error is ErrorCode.UNKNOWN_TOPIC
    await client.create_topic("t")
    corrupt = bytearray(make_batch([b"payload"]))
    corrupt[-2] ^= 0x40
    assert (await client.produce("t", 0, bytes(corrupt))).error is ErrorCode.CORRUPT_MESSAGE
    oversized = await client.produce("t", 0, make_batch([b"x" * 5000]))
    assert oversized.error is ErrorCode.MESSAGE_TOO_LARGE
    assert (await client.fetch("t", 0, 99)).error is ErrorCode.OFFSET_OUT_OF_RANGE
    # An oversized frame closes that connection only.
    other = await connect(process)
    await other.send_raw(struct.pack(">II", 10_000_000, 10))
    with trio.fail_after(5):
        while await other.stream.receive_some(4096):
            pass
    # Nothing invalid was written, and the first connection still works.
    result = await client.fetch("t", 0, 0)
    assert result.high_watermark == 0
    assert (await client.produce("t", 0, make_batch([b"fine"]))).base_offset == 0
    fetched = await client.fetch("t", 0, 0)
    validate_batch(fetched.records)


def run_serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*broker_command(), "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_invalid_config_is_refused_with_the_key_named(tmp_path: Path) -> None:
    cases = [
        (["--set", "max_frame_bytes=lots"], "max_frame_bytes"),
        (["--set", "no_such_key=1"], "no_such_key"),
        (["--listen", "nowhere"], "listen"),
        (["--set", "log.retention.ms=-7"], "log.retention.ms"),
        (["--set", "auto_create_topics=perhaps"], "auto_create_topics"),
    ]
    for args, key in cases:
        result = run_serve(*args, "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert f"invalid config '{key}'" in result.stderr, result.stderr
        assert "READY" not in result.stdout
    config_file = tmp_path / "broker.toml"
    config_file.write_text('listen = "127.0.0.1:0"\n[log]\n"segment.bytes" = 12\n')
    result = run_serve("--config", str(config_file), cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid config 'log.segment.bytes'" in result.stderr


async def test_config_file_and_ready_file(broker_process: StartProcess, tmp_path: Path) -> None:
    config_file = tmp_path / "broker.toml"
    config_file.write_text(
        "node_id = 7\nauto_create_topics = true\n[log]\nflush.policy = 'never'\n".replace(
            "flush.policy", '"flush.policy"'
        )
    )
    ready_file = tmp_path / "ready"
    process = broker_process("--config", str(config_file), "--ready-file", str(ready_file))
    assert ready_file.read_text().strip() == process.ready_line
    assert process.ready_line.endswith("node_id=7")
    client = await connect(process)
    result = await client.produce("auto-created", 0, make_batch([b"a"]))
    assert result.error is ErrorCode.NONE
    described = await client.request(codec.DescribeTopicsRequest(topics=("auto-created",)))
    assert described.topics[0].configs["flush.policy"] == "never"
    assert described.topics[0].partitions[0].leader_id == 7


def test_no_arguments_means_localhost_defaults(tmp_path: Path) -> None:
    # Goal: `broker serve` alone listens on 127.0.0.1:9092, metrics on :9100, data in ./broker-data.
    import socket

    for port in (9092, 9100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip(f"port {port} is in use on this machine")
    process = subprocess.Popen(
        [*broker_command(), "serve"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 30)
        assert readable, "no READY line within 30 s"
        line = process.stdout.readline().decode().strip()
        assert line == "READY listen=127.0.0.1:9092 metrics=127.0.0.1:9100 node_id=0"
        assert (tmp_path / "broker-data" / "meta.lmdb").is_dir()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "listening on 127.0.0.1:9092" in stderr.decode()
    assert "http://127.0.0.1:9100/metrics" in stderr.decode()


async def test_sigint_is_a_clean_shutdown_too(broker_process: StartProcess, tmp_path: Path) -> None:
    process = broker_process()
    client = await connect(process)
    await client.create_topic("i")
    await client.produce("i", 0, make_batch([b"a"]))
    await client.aclose()
    assert process.stop(signal.SIGINT) == 0
    assert (tmp_path / "data" / "logs" / "i-0" / "clean-shutdown").exists()


def test_startup_failures_exit_non_zero_with_a_reason(
    broker_process: StartProcess, tmp_path: Path
) -> None:
    # Goal: a taken port or a data directory in use are refused at start-up, with a reason.
    running = broker_process()
    result = run_serve(
        "--listen", f"127.0.0.1:{running.listen[1]}", "--metrics-listen", "",
        "--data-dir", str(tmp_path / "other"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "in use" in result.stderr
    result = run_serve(
        "--listen", "127.0.0.1:0", "--metrics-listen", "", "--data-dir", str(tmp_path / "data"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "is in use by another broker" in result.stderr
