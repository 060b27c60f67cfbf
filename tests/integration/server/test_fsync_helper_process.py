"""`broker serve` runs its fsyncs in a helper process (broker/log/fsync_process.py) unless its
event loop runs them itself (broker/log/inline_fsync.py): acks=all writes are acknowledged
through the helper when the loop does not (`fsync_inline_share=0`), without it when it does (the
default, at a low rate), and the helper never outlives the broker, killed or stopped."""

from __future__ import annotations

import os
import signal
import urllib.request

import trio
import trio.testing

from tests.integration.server.conftest import BrokerProcess, StartProcess
from tests.processes import exited, fsync_helpers, ignores_signal, open_files
from tests.unit.server.wire_client import WireClient, make_batch
from wire.error_codes import ErrorCode

WAIT_S = 20.0


def _helpers(process: BrokerProcess) -> list[int]:
    assert process.process is not None
    return fsync_helpers(process.process.pid)


async def _wait_for(condition, timeout_s: float = WAIT_S) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)


def _log_end_offset(process: BrokerProcess, topic: str) -> float | None:
    assert process.metrics is not None
    url = f"http://{process.metrics[0]}:{process.metrics[1]}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    prefix = f'broker_log_end_offset{{partition="0",topic="{topic}"}} '
    return next(
        (float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), None
    )


async def test_acks_all_waits_for_the_helper_and_it_dies_with_a_killed_broker(
    broker_process: StartProcess,
) -> None:
    process = broker_process("--set", "fsync_inline_share=0")  # every plain fsync: the helper
    (helper,) = _helpers(process)
    client = await WireClient.connect(*process.listen)
    assert (await client.create_topic("durable")).error is ErrorCode.NONE
    # The first fsync of a new log also syncs its directory (in a thread); later ones are plain.
    assert (await client.produce("durable", 0, make_batch([b"first"]))).base_offset == 0
    answers: list[int] = []

    async def produce() -> None:
        answers.append((await client.produce("durable", 0, make_batch([b"x"]))).base_offset)

    os.kill(helper, signal.SIGSTOP)  # holds its fsyncs, as a slow disk would
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            # Appended (in the page cache), its fsync handed to the helper (which holds the
            # segment's descriptor while it is stopped)...
            await _wait_for(lambda: _log_end_offset(process, "durable") == 2.0)
            await _wait_for(lambda: any(p.name.endswith(".log") for p in open_files(helper)))
            # ...so not acknowledged (acks=all, flush.policy=always) until the helper answers.
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
            os.kill(helper, signal.SIGCONT)
    finally:
        os.kill(helper, signal.SIGCONT)
    assert answers == [1]
    await client.aclose()
    process.stop(signal.SIGKILL)
    await _wait_for(lambda: exited(helper))


async def test_by_default_a_small_fsync_runs_on_the_event_loop_not_in_the_helper(
    broker_process: StartProcess,
) -> None:
    process = broker_process()
    (helper,) = _helpers(process)
    client = await WireClient.connect(*process.listen)
    assert (await client.create_topic("durable")).error is ErrorCode.NONE
    assert (await client.produce("durable", 0, make_batch([b"first"]))).base_offset == 0
    os.kill(helper, signal.SIGSTOP)  # a helper that cannot answer...
    try:
        with trio.fail_after(WAIT_S):  # ...does not hold up this acks=all write
            # One: the loop's budget (3 ms at first) covers it even on a slow disk.
            answer = await client.produce("durable", 0, make_batch([b"x"]))
        assert answer.error is ErrorCode.NONE and answer.base_offset == 1
    finally:
        os.kill(helper, signal.SIGCONT)
    await client.aclose()


async def test_a_clean_stop_reaps_the_helper_and_a_stray_sigint_does_not_stop_it(
    broker_process: StartProcess,
) -> None:
    process = broker_process()
    (helper,) = _helpers(process)
    await _wait_for(lambda: ignores_signal(helper, signal.SIGINT))  # its main() has run
    os.kill(helper, signal.SIGINT)  # as Ctrl-C sends to the whole process group
    client = await WireClient.connect(*process.listen)
    assert (await client.create_topic("t")).error is ErrorCode.NONE
    for i in range(3):
        assert (await client.produce("t", 0, make_batch([b"%d" % i]))).base_offset == i
    await client.aclose()
    assert _helpers(process) == [helper]
    assert process.stop(signal.SIGTERM) == 0
    assert exited(helper)
    assert "fsync helper" not in process.log()  # no warning: it was never lost
