"""LogFlusher: group commit (flush=always), interval flushes, sealed-segment sync, fsync errors.

Flushes run in the flusher's own threads while `run()` runs, in `trio.to_thread` otherwise; the
behaviour tests run both ways (`threads`), with the fsync helper process and inline fsyncs off
so that a patched `FlushTicket.run` sees every fsync. The last tests are the default flusher's:
plain fsyncs inline on the event loop, or in the helper process once the loop's inline budget is
spent (or with `fsync_inline=False`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.config import FlushPolicy, LogConfig
from broker.log.flusher import LogFlusher
from broker.log.log import FlushTicket, PartitionLog
from tests.unit.log.helpers import ample_inline_budget, wait_for
from wire.batch import build_batch
from wire.error_codes import BrokerError, ErrorCode

# Bound on each wait for a flush or its callback.
WAIT_S = 5.0

BATCH = build_batch([(1_000, None, b"x" * 200, None)])


class _GatedRuns:
    """Replaces FlushTicket.run: records each ticket and holds the first one until released."""

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.thread_names: list[str] = []
        self.release = threading.Event()
        self._original = FlushTicket.run

    def __call__(self, ticket: FlushTicket) -> None:
        self.ends.append(ticket.end_offset)
        self.thread_names.append(threading.current_thread().name)
        if len(self.ends) == 1:
            assert self.release.wait(timeout=10)
        self._original(ticket)


@contextlib.asynccontextmanager
async def _running(flusher: LogFlusher, threads: bool) -> AsyncIterator[None]:
    """With `threads`, the flusher's `run()` (and so its fsync threads) runs meanwhile."""
    if not threads:
        yield
        return
    async with trio.open_nursery() as nursery:
        await nursery.start(flusher.run)
        assert flusher.threads is not None
        yield
        nursery.cancel_scope.cancel()


def _fsync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("log-fsync")]


@pytest.mark.parametrize("threads", [False, True], ids=["to_thread", "own_threads"])
async def test_one_fsync_covers_every_append_made_while_the_previous_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: bool
) -> None:
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    flusher = LogFlusher(lambda: [log], tick_ms=60_000, fsync_helper=False, fsync_inline=False)
    gated = _GatedRuns()
    monkeypatch.setattr(FlushTicket, "run", lambda ticket: gated(ticket))
    first_end = log.append(BATCH).last_offset + 1
    async with _running(flusher, threads), trio.open_nursery() as nursery:
        nursery.start_soon(flusher.wait_durable, log, first_end)
        await wait_for(lambda: len(gated.ends) == 1, WAIT_S)
        later_ends = [log.append(BATCH).last_offset + 1 for _ in range(10)]
        for end in later_ends:
            nursery.start_soon(flusher.wait_durable, log, end)
        await trio.testing.wait_all_tasks_blocked()
        assert log.flushed_offset == 0  # nobody is acknowledged before their fsync
        gated.release.set()
    assert gated.ends == [first_end, later_ends[-1]]
    assert flusher.fsync_count == 2
    assert log.flushed_offset == log.log_end_offset == later_ends[-1]
    assert all(name.startswith("log-fsync") == threads for name in gated.thread_names)
    log.close()


async def test_waiters_wake_with_their_appends_durable_and_the_threads_stop_with_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    flusher = LogFlusher(lambda: [log], tick_ms=60_000, fsync_helper=False, fsync_inline=False)
    synced_ends: list[int] = []
    original = FlushTicket.run

    def recording_run(ticket: FlushTicket) -> None:
        original(ticket)
        synced_ends.append(ticket.end_offset)  # after the fsync returned

    monkeypatch.setattr(FlushTicket, "run", recording_run)
    async with _running(flusher, threads=True):
        for _ in range(20):
            end = log.append(BATCH).last_offset + 1
            await flusher.wait_durable(log, end)
            # Woken only once an fsync that started after this append has finished.
            assert synced_ends and synced_ends[-1] >= end
            assert log.flushed_offset >= end
        assert _fsync_threads()
        assert flusher.threads is not None
        started = flusher.threads.threads
        assert started
    assert flusher.threads is None
    assert not any(thread.is_alive() for thread in started) and not _fsync_threads()
    # After run() the flusher still flushes (in trio's threads).
    end = log.append(BATCH).last_offset + 1
    await flusher.wait_durable(log, end)
    assert log.flushed_offset == end
    log.close()


async def test_never_and_interval_do_not_fsync_before_acknowledging(tmp_path: Path) -> None:
    for policy in (FlushPolicy.NEVER, FlushPolicy.INTERVAL):
        log = PartitionLog.open(tmp_path / policy.value, LogConfig(flush_policy=policy))
        flusher = LogFlusher(lambda log=log: [log])
        end = log.append(BATCH).last_offset + 1
        await flusher.wait_durable(log, end)
        assert flusher.fsync_count == 0
        assert log.flushed_offset == 0
        log.close()


async def test_interval_policy_flushes_once_the_interval_passed(tmp_path: Path) -> None:
    now = [0.0]
    log = PartitionLog.open(
        tmp_path, LogConfig(flush_policy=FlushPolicy.INTERVAL, flush_interval_ms=500)
    )
    flusher = LogFlusher(lambda: [log], clock_ms=lambda: now[0])
    log.append(BATCH)
    await flusher.sweep()  # starts the interval
    now[0] = 499
    await flusher.sweep()
    assert log.flushed_offset == 0
    now[0] = 500
    await flusher.sweep()
    assert log.flushed_offset == log.log_end_offset == 1
    log.close()


async def test_sealed_segments_are_synced_even_with_flush_never(tmp_path: Path) -> None:
    config = LogConfig(flush_policy=FlushPolicy.NEVER, segment_bytes=1024, max_batch_bytes=512)
    log = PartitionLog.open(tmp_path, config)
    flusher = LogFlusher(lambda: [log])
    for _ in range(10):
        log.append(BATCH)
    assert log.segment_count > 1 and log.has_unsynced_segments
    await flusher.sweep()
    assert not log.has_unsynced_segments
    # The active segment stays unsynced under `never`: only sealed data moved the checkpoint.
    assert log.flushed_offset < log.log_end_offset
    assert (tmp_path / "recovery-checkpoint").read_text().strip() == str(log.active.base_offset)
    log.close()


@pytest.mark.parametrize("threads", [False, True], ids=["to_thread", "own_threads"])
async def test_fsync_failure_takes_the_log_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: bool
) -> None:
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    flusher = LogFlusher(lambda: [log], tick_ms=60_000, fsync_helper=False, fsync_inline=False)

    def failing_run(ticket: FlushTicket) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(FlushTicket, "run", failing_run)
    end = log.append(BATCH).last_offset + 1
    async with _running(flusher, threads):
        with pytest.raises(OSError) as failed:
            await flusher.wait_durable(log, end)
        assert failed.value.errno == 5
        monkeypatch.undo()
        with pytest.raises(BrokerError) as offline:
            await flusher.wait_durable(log, end)
    assert offline.value.code is ErrorCode.KAFKA_STORAGE_ERROR
    assert log.flushed_offset == 0
    log.close(clean=False)


@pytest.mark.parametrize("first", ["wait_durable", "flush_soon"])
async def test_flush_soon_calls_made_while_a_flush_runs_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    flusher = LogFlusher(lambda: [log], tick_ms=60_000, fsync_helper=False, fsync_inline=False)
    gated = _GatedRuns()
    monkeypatch.setattr(FlushTicket, "run", lambda ticket: gated(ticket))
    called: list[str] = []
    first_end = log.append(BATCH).last_offset + 1
    async with _running(flusher, threads=True), trio.open_nursery() as nursery:
        if first == "wait_durable":
            nursery.start_soon(flusher.wait_durable, log, first_end)
        else:
            assert flusher.flush_soon(log, lambda: called.append("first"))
        await wait_for(lambda: len(gated.ends) == 1, WAIT_S)
        for name in ("a", "b"):
            log.append(BATCH)
            assert flusher.flush_soon(log, lambda name=name: called.append(name))

        def again() -> None:
            called.append("again")

        assert flusher.flush_soon(log, again) and flusher.flush_soon(log, again)  # called once
        await trio.testing.wait_all_tasks_blocked()
        assert called == [] and log.flushed_offset == 0
        gated.release.set()
        await wait_for(lambda: "b" in called, WAIT_S)
    expected_first = ["first"] if first == "flush_soon" else []
    assert called[: len(expected_first)] == expected_first
    assert sorted(called[len(expected_first) :]) == ["a", "again", "b"]
    # The second fsync covered every append made while the first ran: two fsyncs in all.
    assert gated.ends == [first_end, log.log_end_offset]
    assert flusher.fsync_count == 2
    assert log.flushed_offset == log.log_end_offset
    log.close()


async def test_flush_soon_declines_without_threads_or_once_an_fsync_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    flusher = LogFlusher(lambda: [log], tick_ms=60_000, fsync_helper=False, fsync_inline=False)
    called: list[bool] = []
    end = log.append(BATCH).last_offset + 1
    assert not flusher.flush_soon(log, lambda: called.append(True))  # no fsync threads

    def failing_run(ticket: FlushTicket) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(FlushTicket, "run", failing_run)
    async with _running(flusher, threads=True):
        assert flusher.flush_soon(log, lambda: called.append(True))
        # The background fsync is in flight: the waiter waits for it, and its failure took
        # the log offline (a waiter that ran a flush of its own would get the OSError).
        with pytest.raises(BrokerError) as offline, trio.fail_after(5):
            await flusher.wait_durable(log, end)
        assert offline.value.code is ErrorCode.KAFKA_STORAGE_ERROR
        assert not flusher.flush_soon(log, lambda: called.append(True))
    assert called == []  # nothing was made durable, so nobody was told it was
    assert log.flushed_offset == 0
    log.close(clean=False)


async def test_the_helper_process_runs_the_group_commit(
    tmp_path: Path,
) -> None:
    # The default flusher hands plain fsyncs to its helper process; stopping the helper holds
    # the first fsync open, as a slow disk would.
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    flusher = LogFlusher(lambda: [log], tick_ms=60_000, fsync_inline=False)
    called: list[str] = []
    async with _running(flusher, threads=True):
        helper = flusher.threads.helper if flusher.threads is not None else None
        assert helper is not None and helper.alive
        # The log's first fsync also syncs its directory (the new segment file): a thread's job.
        await flusher.wait_durable(log, log.append(BATCH).last_offset + 1)
        os.kill(helper.pid, signal.SIGSTOP)
        try:
            log.append(BATCH)
            assert flusher.flush_soon(log, lambda: called.append("first"))
            for name in ("a", "b"):
                log.append(BATCH)
                assert flusher.flush_soon(log, lambda name=name: called.append(name))
            await trio.testing.wait_all_tasks_blocked()
            # With the stopped helper, not in a thread: nothing became durable meanwhile.
            assert helper.in_flight == 1
            assert called == [] and log.flushed_offset == 1
        finally:
            os.kill(helper.pid, signal.SIGCONT)
        await wait_for(lambda: "b" in called, WAIT_S)
    assert called == ["first", "a", "b"]
    assert flusher.fsync_count == 3  # the third covered both appends made while the second ran
    assert log.flushed_offset == log.log_end_offset
    log.close()


@pytest.mark.parametrize("inline", [False, True], ids=["helper", "inline"])
async def test_an_fsync_error_in_the_helper_or_inline_takes_the_log_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    if inline:
        ample_inline_budget()
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    flusher = LogFlusher(lambda: [log], tick_ms=60_000, fsync_inline=inline)
    read_end, write_end = os.pipe()  # fsync of a pipe fails (EINVAL), in the helper as anywhere
    begin_flush = PartitionLog.begin_flush
    monkeypatch.setattr(
        PartitionLog,
        "begin_flush",
        lambda self, **kw: dataclasses.replace(begin_flush(self, **kw), fds=(read_end,)),
    )
    called: list[bool] = []
    end = log.append(BATCH).last_offset + 1
    try:
        async with _running(flusher, threads=True):
            assert flusher.flush_soon(log, lambda: called.append(True))
            with pytest.raises(BrokerError) as offline, trio.fail_after(10):
                await flusher.wait_durable(log, end)
            assert offline.value.code is ErrorCode.KAFKA_STORAGE_ERROR
            assert "Invalid argument" in str(offline.value)
            assert flusher.threads is not None
            assert flusher.threads.inline_count == (1 if inline else 0)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert called == [] and log.flushed_offset == 0
    log.close(clean=False)


async def test_the_default_flusher_runs_a_small_group_commit_on_the_event_loop(
    tmp_path: Path,
) -> None:
    ample_inline_budget()
    log = PartitionLog.open(tmp_path, LogConfig(flush_policy=FlushPolicy.ALWAYS))
    flusher = LogFlusher(lambda: [log], tick_ms=60_000)
    called: list[int] = []
    async with _running(flusher, threads=True):
        threads = flusher.threads
        assert threads is not None and threads.helper is not None
        # The log's first fsync also syncs its directory (the new segment file): a thread's job.
        await flusher.wait_durable(log, log.append(BATCH).last_offset + 1)
        for round_ in range(3):
            end = log.append(BATCH).last_offset + 1
            assert flusher.flush_soon(log, lambda end=end: called.append(end))
            await wait_for(lambda n=round_ + 1: len(called) == n, WAIT_S)
        assert threads.inline_count == 3 and threads.helper.in_flight == 0
    assert called == [2, 3, 4] and log.flushed_offset == log.log_end_offset == 4
    log.close()
