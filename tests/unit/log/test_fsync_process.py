"""FsyncProcess: the helper process fsyncs what it is handed, answers each job once, reports an
fsync's error, hands what it never answered to `redo` when it dies, and answers everything it
was given before `open()` returns, even under cancellation.

A job is held open by stopping the helper (SIGSTOP), the way a slow disk would hold it.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import outcome
import pytest
import trio

from broker.log.fsync_process import FsyncProcess


class _Job:
    """A job's two possible endings, recorded."""

    def __init__(self) -> None:
        self.results: list[outcome.Outcome[None]] = []
        self.redone = 0

    def on_done(self, result: outcome.Outcome[None]) -> None:
        self.results.append(result)

    def redo(self) -> None:
        self.redone += 1


@pytest.fixture
def data_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "segment.log", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 4096)
    yield fd
    os.close(fd)


async def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.001)


def _exited(pid: int) -> bool:
    """The process is gone or a zombie (it has exited; its parent has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def test_each_job_is_answered_once_and_the_descriptor_stays_open_here(data_fd: int) -> None:
    jobs = [_Job() for _ in range(20)]
    async with FsyncProcess.open() as helper:
        for job in jobs:
            assert helper.submit([data_fd], job.on_done, job.redo)
        await _wait_for(lambda: all(job.results for job in jobs))
    assert all(job.results == [outcome.Value(None)] and not job.redone for job in jobs)
    os.fstat(data_fd)  # the helper closed its copies only
    assert _exited(helper.pid)


async def test_an_fsync_error_comes_back_as_that_oserror(data_fd: int) -> None:
    # fsync of a pipe fails with EINVAL: proof that the helper fsyncs the very descriptor sent.
    read_end, write_end = os.pipe()
    try:
        failing, fine = _Job(), _Job()
        async with FsyncProcess.open() as helper:
            assert helper.submit([data_fd, read_end], failing.on_done, failing.redo)
            assert helper.submit([data_fd], fine.on_done, fine.redo)
            await _wait_for(lambda: bool(failing.results and fine.results))
        (result,) = failing.results
        assert isinstance(result, outcome.Error) and isinstance(result.error, OSError)
        assert result.error.errno == errno.EINVAL
        assert fine.results == [outcome.Value(None)]
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_jobs_a_dead_helper_never_answered_are_redone_and_later_ones_refused(
    data_fd: int, caplog: pytest.LogCaptureFixture
) -> None:
    job = _Job()
    async with FsyncProcess.open() as helper:
        os.kill(helper.pid, signal.SIGSTOP)
        assert helper.submit([data_fd], job.on_done, job.redo)
        assert job.results == [] and job.redone == 0  # it cannot answer while stopped
        os.kill(helper.pid, signal.SIGKILL)
        await _wait_for(lambda: job.redone == 1)
        assert not helper.alive
        assert not helper.submit([data_fd], job.on_done, job.redo)  # the caller uses threads
    assert job.results == [] and job.redone == 1
    assert "fsync helper process" in caplog.text and "redone in threads" in caplog.text


async def test_leaving_waits_for_every_answer_even_when_cancelled(data_fd: int) -> None:
    job = _Job()

    async def resume_once_leaving(helper: FsyncProcess) -> None:
        # `_answered()` made its event: the exit is waiting for the answer.
        await _wait_for(lambda: helper._all_answered is not None)
        os.kill(helper.pid, signal.SIGCONT)

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            async with FsyncProcess.open() as helper:
                os.kill(helper.pid, signal.SIGSTOP)
                assert helper.submit([data_fd], job.on_done, job.redo)
                nursery.start_soon(resume_once_leaving, helper)
                scope.cancel()
                await trio.sleep_forever()
    assert scope.cancelled_caught
    assert job.results == [outcome.Value(None)] and job.redone == 0
    assert _exited(helper.pid)


async def test_the_helper_ignores_sigint_and_sigterm_and_exits_with_its_owner(
    data_fd: int,
) -> None:
    job = _Job()
    async with FsyncProcess.open() as helper:

        def ignores(signum: int) -> bool:
            status = Path(f"/proc/{helper.pid}/status").read_text()
            line = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))

        # Ignored once the helper's main() ran; until then a signal would kill it.
        await _wait_for(lambda: ignores(signal.SIGINT) and ignores(signal.SIGTERM))
        os.kill(helper.pid, signal.SIGINT)
        os.kill(helper.pid, signal.SIGTERM)
        assert helper.submit([data_fd], job.on_done, job.redo)
        await _wait_for(lambda: bool(job.results))
        assert helper.alive and not _exited(helper.pid)
    assert job.results == [outcome.Value(None)]
    assert _exited(helper.pid)
