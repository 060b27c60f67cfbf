"""FsyncProcess: the helper process fsyncs what it is handed, answers each job once, reports an
fsync's error, fails what it never answered when it dies, never answers "synced" for
descriptors that did not reach it, and answers everything it was given before `open()` returns,
even under cancellation.

A job is held open by stopping the helper (SIGSTOP), the way a slow disk would hold it.
"""

from __future__ import annotations

import array
import errno
import os
import resource
import select
import signal
import socket

import outcome
import pytest
import trio
import trio.testing

from broker.log import fsync_helper
from broker.log.fsync_process import FsyncProcess
from broker.log.sync_threads import fsync_workers
from tests.processes import exited, ignores_signal
from tests.unit.log.helpers import wait_for


class _Job:
    """A job's two possible endings, recorded."""

    def __init__(self) -> None:
        self.results: list[outcome.Outcome[None]] = []
        self.redone = 0

    def on_done(self, result: outcome.Outcome[None]) -> None:
        self.results.append(result)

    def redo(self) -> None:
        self.redone += 1


async def _started(helper: FsyncProcess) -> None:
    """Until the helper's main() runs (its signal dispositions are the first thing it sets)."""
    await wait_for(
        lambda: all(ignores_signal(helper.pid, sig) for sig in (signal.SIGINT, signal.SIGTERM))
    )


async def test_each_job_is_answered_once_and_the_descriptor_stays_open_here(data_fd: int) -> None:
    jobs = [_Job() for _ in range(20)]
    async with FsyncProcess.open() as helper:
        for job in jobs:
            assert helper.submit([data_fd], job.on_done, job.redo)
        await wait_for(lambda: all(job.results for job in jobs))
    assert all(job.results == [outcome.Value(None)] and not job.redone for job in jobs)
    os.fstat(data_fd)  # the helper closed its copies only
    assert exited(helper.pid)


async def test_an_fsync_error_comes_back_as_that_oserror(data_fd: int) -> None:
    # fsync of a pipe fails with EINVAL: proof that the helper fsyncs the very descriptor sent.
    read_end, write_end = os.pipe()
    try:
        failing, fine = _Job(), _Job()
        async with FsyncProcess.open() as helper:
            assert helper.submit([data_fd, read_end], failing.on_done, failing.redo)
            assert helper.submit([data_fd], fine.on_done, fine.redo)
            await wait_for(lambda: bool(failing.results and fine.results))
        (result,) = failing.results
        assert isinstance(result, outcome.Error) and isinstance(result.error, OSError)
        assert result.error.errno == errno.EINVAL
        assert fine.results == [outcome.Value(None)]
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_jobs_a_dead_helper_never_answered_fail_and_later_ones_are_refused(
    data_fd: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Whether their fsync ran (and failed, its error reported to the helper alone) is unknown:
    # they count as failed, never as redone.
    job = _Job()
    async with FsyncProcess.open() as helper:
        os.kill(helper.pid, signal.SIGSTOP)
        assert helper.submit([data_fd], job.on_done, job.redo)
        assert job.results == [] and helper.in_flight == 1  # it cannot answer while stopped
        os.kill(helper.pid, signal.SIGKILL)
        await wait_for(lambda: bool(job.results))
        assert not helper.alive
        assert not helper.submit([data_fd], job.on_done, job.redo)  # the caller uses threads
    (result,) = job.results
    assert isinstance(result, outcome.Error) and isinstance(result.error, OSError)
    assert result.error.errno == errno.EIO and "unknown" in str(result.error)
    assert job.redone == 0
    assert "fsync helper process" in caplog.text and "count as failed" in caplog.text


async def test_an_answer_read_after_the_helper_was_given_up_is_ignored(data_fd: int) -> None:
    job = _Job()
    async with FsyncProcess.open() as helper:
        assert helper.submit([data_fd], job.on_done, job.redo)
        # Its answer is waiting on the socket, not read yet (this task has not yielded)...
        readable, _, _ = select.select([helper._sock], [], [], 10)
        assert readable
        helper._died("given up by the test")  # ...when the helper is given up on
        await trio.testing.wait_all_tasks_blocked()  # the reader wakes, and must not crash
    (result,) = job.results
    assert isinstance(result, outcome.Error) and result.error.errno == errno.EIO  # type: ignore[union-attr]


async def test_a_message_the_helper_cannot_take_goes_elsewhere_and_the_helper_lives_on(
    data_fd: int,
) -> None:
    bad, fine = _Job(), _Job()
    async with FsyncProcess.open() as helper:
        closed = os.dup(data_fd)
        os.close(closed)
        assert not helper.submit([closed], bad.on_done, bad.redo)  # EBADF: not sent at all
        assert helper.alive
        assert helper.submit([data_fd], fine.on_done, fine.redo)
        await wait_for(lambda: bool(fine.results))
    assert bad.results == [] and bad.redone == 0
    assert fine.results == [outcome.Value(None)]


async def test_descriptors_that_do_not_arrive_are_never_answered_as_synced(data_fd: int) -> None:
    # With no descriptor left to the helper, the kernel drops the ones sent (MSG_CTRUNC): the
    # helper says so, and the job is redone where the descriptors are.
    job = _Job()
    async with FsyncProcess.open() as helper:
        await _started(helper)  # its interpreter has loaded (that needs descriptors too)
        # No new descriptor may be numbered 3 or more (0-2 are taken); those open stay usable.
        _soft, hard = resource.prlimit(helper.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(helper.pid, resource.RLIMIT_NOFILE, (3, hard))
        assert helper.submit([data_fd], job.on_done, job.redo)
        await wait_for(lambda: job.redone == 1)
    assert job.results == []


def test_the_helper_answers_not_received_for_a_truncated_request(data_fd: int) -> None:
    request = fsync_helper.REQUEST.pack(7, 2)
    ancillary = [
        (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [os.dup(data_fd)]).tobytes())
    ]
    assert fsync_helper.ANSWER.unpack(fsync_helper.answer(request, ancillary, 0)) == (
        7,
        fsync_helper.NOT_RECEIVED,
    )
    request = fsync_helper.REQUEST.pack(8, 1)
    ancillary = [
        (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [os.dup(data_fd)]).tobytes())
    ]
    truncated = fsync_helper.answer(request, ancillary, socket.MSG_CTRUNC)
    assert fsync_helper.ANSWER.unpack(truncated) == (8, fsync_helper.NOT_RECEIVED)
    ancillary = [
        (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [os.dup(data_fd)]).tobytes())
    ]
    assert fsync_helper.ANSWER.unpack(fsync_helper.answer(request, ancillary, 0)) == (8, 0)


async def test_leaving_waits_for_every_answer_even_when_cancelled(data_fd: int) -> None:
    job = _Job()

    async def resume_once_leaving(helper: FsyncProcess) -> None:
        # `_answered()` made its event: the exit is waiting for the answer.
        await wait_for(lambda: helper._all_answered is not None)
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
    assert exited(helper.pid)


async def test_the_helper_ignores_sigint_and_sigterm_and_exits_with_its_owner(
    data_fd: int,
) -> None:
    job = _Job()
    async with FsyncProcess.open() as helper:
        await _started(helper)  # until then, a signal would kill it
        os.kill(helper.pid, signal.SIGINT)
        os.kill(helper.pid, signal.SIGTERM)
        assert helper.submit([data_fd], job.on_done, job.redo)
        await wait_for(lambda: bool(job.results))
        assert helper.alive and not exited(helper.pid)
    assert job.results == [outcome.Value(None)]
    assert exited(helper.pid)


async def test_without_a_helper_the_workers_are_threads_alone(
    data_fd: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Where the helper cannot start (no SOCK_SEQPACKET, say), fsyncs run in threads as before.
    def unsupported(*args: object) -> None:
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    monkeypatch.setattr(socket, "socketpair", unsupported)
    done: list[outcome.Outcome[None]] = []
    async with fsync_workers("test-fsync", inline=False) as threads:
        assert threads.helper is None
        await threads.run(lambda: os.fsync(data_fd), [data_fd])
        threads.submit(lambda: os.fsync(data_fd), done.append, [data_fd])
        await wait_for(lambda: bool(done))
        assert threads.threads  # the threads did it
    assert done == [outcome.Value(None)]
    assert "no fsync helper process" in caplog.text and "fsyncs run in threads" in caplog.text
