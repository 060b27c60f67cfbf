"""Inline fsyncs: the event loop's budget (a token bucket of the loop's time, and a cooldown
after a stall), and `fsync_workers` running a plain fsync on the event loop at its next turn
while that budget allows, handing it to the helper at once when it does not.

Tests that expect fsyncs inline give the loop a budget no slow disk spends (`ample_inline_budget`).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import outcome
import pytest
import trio

from broker.log.inline_fsync import InlineBudget, loop_budget, use_loop_budget
from broker.log.sync_threads import SyncThreads, fsync_workers
from tests.unit.log.helpers import ample_inline_budget, wait_for


def test_a_spent_budget_refuses_until_refilled_at_its_share() -> None:
    budget = InlineBudget(share=0.25, burst_s=0.002, busy_cooldown_s=0.0)
    assert budget.allows(100.0)
    budget.spend(0.003, 100.0)  # a slow fsync: the bucket is 1 ms in debt
    assert not budget.allows(100.0)
    assert not budget.allows(100.003)  # 0.75 ms back: still 0.25 ms short
    assert budget.allows(100.0045)  # 0.375 ms more
    assert budget.tokens_s == pytest.approx(0.000125)


def test_a_loop_that_spends_its_whole_share_is_busy_and_sends_fsyncs_on_for_a_while() -> None:
    # A high rate: inline fsyncs would hold up every request that arrives during them.
    budget = InlineBudget(share=0.3, burst_s=0.003, busy_cooldown_s=1.0)
    now = 0.0
    while budget.allows(now):  # an fsync of 0.5 ms every 0.6 ms: 83 % of the loop
        now += 0.0005
        budget.spend(0.0005, now)
        now += 0.0001
    assert budget.busy_spells == 1 and now < 0.01
    assert not budget.allows(now + 0.5)  # refilled long ago, still busy
    assert budget.allows(now + 1.0) and budget.tokens_s == 0.003


def test_one_fsync_a_millisecond_runs_inline_for_good() -> None:
    budget = InlineBudget()  # the defaults: 30 % of the loop
    for tick in range(10_000):  # 10 s of one 0.2 ms fsync every millisecond
        now = tick / 1000
        assert budget.allows(now)
        budget.spend(0.0002, now + 0.0002)
    assert budget.busy_spells == 0 and budget.stalls == 0


def test_the_disks_ordinary_tail_does_not_make_a_loop_busy() -> None:
    # 10 k records/s on this disk: one 0.15 ms fsync a millisecond, and now and then one of
    # 1-10 ms (its p99 and the odd hiccup, below the stall threshold).
    budget = InlineBudget()  # the defaults
    now = 0.0
    for tick in range(10_000):
        slow = 0.001 * (1 + tick % 10) if tick % 500 == 499 else 0.00015
        assert budget.allows(now), f"refused at {now:.3f} s"
        now += slow
        budget.spend(slow, now)
        now = max(now, (tick + 1) / 1000)
    assert budget.busy_spells == 0 and budget.stalls == 0


def test_the_budget_holds_at_most_its_burst() -> None:
    budget = InlineBudget(share=0.5, burst_s=0.002, busy_cooldown_s=0.0)
    assert budget.allows(0.0)
    assert budget.allows(1_000.0) and budget.tokens_s == 0.002  # an idle hour saves no more
    budget.spend(0.0025, 1_000.0)
    assert not budget.allows(1_000.0)


def test_a_zero_share_allows_none() -> None:
    budget = InlineBudget(share=0.0, burst_s=0.001)
    assert not budget.allows(0.0)
    assert not budget.allows(3_600.0)


def test_a_stall_stops_inline_fsyncs_for_the_cooldown() -> None:
    budget = InlineBudget(share=1.0, burst_s=1.0, stall_s=0.05, cooldown_s=10.0)
    assert budget.allows(0.0)
    budget.spend(0.049, 0.049)  # slow, not a stall
    assert budget.allows(0.05) and budget.stalls == 0
    budget.spend(0.2, 0.25)  # a stall: the bucket alone would refill in 0.2 s
    assert budget.stalls == 1
    assert not budget.allows(5.0) and not budget.allows(10.24)
    assert budget.allows(10.25)


def test_each_trio_run_has_its_own_budget() -> None:
    async def spend_all() -> float:
        budget = loop_budget()
        assert loop_budget() is budget
        budget.spend(10.0, trio.current_time())
        return budget.tokens_s

    assert trio.run(spend_all) < 0
    assert trio.run(spend_all) == pytest.approx(InlineBudget().tokens_s - 10.0)  # not in debt


def _in_a_thread() -> None:
    raise AssertionError("a plain fsync ran its job in a thread")


async def test_a_plain_fsync_runs_on_the_loop_while_the_budget_allows_then_in_the_helper(
    data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ample_inline_budget()
    on_loop: list[bool] = []
    fdatasync = os.fdatasync

    def recorded(fd: int) -> None:  # this process's fsyncs only: the helper is another one
        on_loop.append(threading.current_thread() is threading.main_thread())
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", recorded)
    done: list[outcome.Outcome[None]] = []
    async with fsync_workers("test-fsync") as threads:
        assert threads.helper is not None
        threads.submit(_in_a_thread, done.append, [data_fd])
        # Not during the submitting task's step (a produce response is written first): in the
        # inline runner, woken without a `run_sync_soon` (its wake-up socket costs syscalls).
        assert on_loop == [] and done == []
        assert trio.lowlevel.current_statistics().run_sync_soon_queue_size == 0
        await wait_for(lambda: bool(done))
        assert on_loop == [True] and threads.inline_count == 1
        await threads.run(_in_a_thread, [data_fd])  # the awaited form
        assert threads.inline_count == 2
        loop_budget().spend(100.0, trio.current_time())  # the loop has had its share...
        threads.submit(_in_a_thread, done.append, [data_fd])
        assert threads.helper.in_flight == 1  # ...so the helper has it at once, no turn first
        await wait_for(lambda: len(done) == 2)
        assert threads.inline_count == 2
    assert done == [outcome.Value(None)] * 2
    assert on_loop == [True, True] and not threads.threads


async def test_a_budget_spent_by_the_turn_hands_the_job_on_and_a_failure_to_is_its_outcome(
    data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ample_inline_budget()
    done: list[outcome.Outcome[None]] = []

    def no_thread(*args: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(SyncThreads, "_start", no_thread)
    async with fsync_workers("test-fsync", helper=False) as threads:
        threads.submit(_in_a_thread, done.append, [data_fd])  # deferred: the budget had room
        loop_budget().spend(100.0, trio.current_time())  # spent before the turn (other logs)
        await wait_for(lambda: bool(done))  # and the trio run lives on
    (result,) = done
    assert isinstance(result, outcome.Error) and isinstance(result.error, RuntimeError)
    assert threads.inline_count == 0


async def test_a_job_deferred_just_before_the_workers_stop_is_done_when_they_have(
    data_fd: int,
) -> None:
    ample_inline_budget()
    done: list[outcome.Outcome[None]] = []
    async with fsync_workers("test-fsync", helper=False) as threads:
        threads.submit(_in_a_thread, done.append, [data_fd])
    assert done == [outcome.Value(None)] and threads.inline_count == 1


async def test_an_inline_fsync_syncs_the_file_even_if_its_descriptor_closed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log may close or reuse its descriptor (a roll, a deletion) before the loop's next
    # turn: the fsync runs on a copy taken at submit, which names the same file.
    ample_inline_budget()
    synced: list[int] = []
    fdatasync = os.fdatasync

    def recorded(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", recorded)
    path = tmp_path / "segment.log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 4096)
    done: list[outcome.Outcome[None]] = []
    async with fsync_workers("test-fsync", helper=False) as threads:
        threads.submit(_in_a_thread, done.append, [fd])
        os.close(fd)
        other = os.open(tmp_path / "other.log", os.O_RDWR | os.O_CREAT)  # may reuse the number
        try:
            await wait_for(lambda: bool(done))
        finally:
            os.close(other)
    assert done == [outcome.Value(None)] and synced == [path.stat().st_ino]


async def test_an_inline_fsync_error_reaches_the_caller_as_the_helper_would_report_it() -> None:
    ample_inline_budget()
    read_end, write_end = os.pipe()  # fsync of a pipe fails (EINVAL)
    try:
        async with fsync_workers("test-fsync", helper=False) as threads:
            with pytest.raises(OSError) as failed:
                await threads.run(_in_a_thread, [read_end])
            assert failed.value.errno == errno.EINVAL and threads.inline_count == 1
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_a_stalled_inline_fsync_sends_the_next_ones_to_the_helper(
    data_fd: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use_loop_budget(InlineBudget(1.0, burst_s=10.0, stall_s=0.001, cooldown_s=3_600.0))
    fdatasync = os.fdatasync

    def slow(fd: int) -> None:
        threading.Event().wait(0.005)  # a disk that stalls (this process only)
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    async with fsync_workers("test-fsync") as threads:
        assert threads.helper is not None
        await threads.run(_in_a_thread, [data_fd])
        assert threads.inline_count == 1 and loop_budget().stalls == 1
        done: list[outcome.Outcome[None]] = []
        threads.submit(_in_a_thread, done.append, [data_fd])
        assert threads.helper.in_flight == 1
        await wait_for(lambda: bool(done))
    assert threads.inline_count == 1 and done == [outcome.Value(None)]
    assert "fsync helper process for the next 3600 s" in caplog.text


async def test_what_the_owner_raises_leaves_the_workers_as_it_was_raised() -> None:
    # The inline runner is a system task, not a nursery around the owner's code, which would
    # wrap this in an ExceptionGroup that `except OSError` no longer catches.
    with pytest.raises(OSError, match="disk gone"):
        async with fsync_workers("test-fsync", helper=False):
            raise OSError("disk gone")
