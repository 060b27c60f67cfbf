"""`python -m benchmarks.latency_stages`: the stages join, and a real run of each mode finds them.

The joins are checked on made-up timelines (every stage is the gap between two steps, so the
stages of a burst add up to its total exactly), including the cases that would pair a burst with
another burst's step; the real runs check that the probes still find the functions they wrap (a
renamed one stops the run at start) and that most bursts join. No timing is asserted: timings
belong in benchmarks, not in tests.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import trio

from benchmarks import latency_stages
from benchmarks.latency_stages import (
    REPLICATED_STAGES,
    SINGLE_STAGES,
    join_replicated,
    join_single,
    probe,
)
from tests.benchmark_runs import run_benchmark

RUN_TIMEOUT_S = 180
BIG, SMALL = 1300, 200  # a frame with records / one without
GAP_NS = 500_000  # half the time between two bursts at 10,000 records/s


def _burst(start: int, stamps: list[int], job: int) -> tuple[list, list]:
    """Client and broker events of one burst through one broker, 10 µs apart from `start`."""
    t = [start + 10_000 * i for i in range(8)]
    client = [
        (t[0], "write", BIG),  # the produce request
        (t[0] + 1, "write", SMALL),  # a fetch request: not a step
        (t[5], "read", BIG),
        (t[6], "buffered", 10),
        (t[7], "delivered", stamps),
    ]
    broker = [
        (t[1], "read", BIG),
        (t[2], "fsync_submit", job),
        (t[3], "fsync_done", job),
        (t[3] + 5, "write", SMALL),  # the produce acknowledgement: not a step
        (t[4], "write", BIG),
    ]
    return client, broker


def test_a_single_broker_burst_splits_into_its_stages_which_add_up_to_its_total() -> None:
    client_a, broker_a = _burst(1_000_000, [990_000, 995_000], job=1)
    client_b, broker_b = _burst(2_000_000, [1_990_000], job=2)
    stages = join_single(client_a + client_b, sorted(broker_a + broker_b), gap_ns=GAP_NS)
    assert set(stages) == set(SINGLE_STAGES)
    assert all(values == [10_000, 10_000] for values in list(stages.values())[:-1])
    for burst in range(2):
        assert sum(stages[name][burst] for name in SINGLE_STAGES[:-1]) == stages["total"][burst]


def test_a_burst_whose_steps_do_not_all_happen_is_left_out() -> None:
    client, broker = _burst(1_000_000, [990_000], job=1)
    no_fsync_answer = [event for event in broker if event[1] != "fsync_done"]
    stages = join_single(client, no_fsync_answer, gap_ns=GAP_NS)
    assert all(values == [] for values in stages.values())


def test_a_burst_read_while_an_fsync_runs_waits_for_the_next_one() -> None:
    """Burst B's request is read while burst A's fsync (job 1) runs; job 2, started by job 1's
    answer, covers B. Here job 2's submit is stamped before job 1's answer (as it was when the
    probe stamped answers after their callbacks): joined by job number, B still gets job 2's
    answer, not job 1's, which is the first answer after job 2's submit."""
    client = [
        (100, "write", BIG),  # A's request
        (300, "write", BIG),  # B's request
        (700, "read", BIG),  # A's fetch response
        (710, "buffered", 10),
        (720, "delivered", [90]),
        (1_200, "read", BIG),  # B's
        (1_210, "buffered", 10),
        (1_220, "delivered", [290]),
    ]
    broker = [
        (110, "read", BIG),
        (120, "fsync_submit", 1),
        (310, "read", BIG),  # B arrives while job 1 runs
        (499, "fsync_submit", 2),  # started by job 1's answer: covers B
        (500, "fsync_done", 1),
        (600, "write", BIG),  # A's fetch response
        (1_000, "fsync_done", 2),
        (1_100, "write", BIG),  # B's
    ]
    stages = join_single(client, broker, gap_ns=GAP_NS)
    assert stages["fsync (submitted -> done: inline or helper)"] == [380, 501]
    assert stages["broker: read -> fsync submitted"] == [10, 189]
    assert stages["broker: fsync done -> fetch response written"] == [100, 100]
    assert stages["total"] == [630, 930]


def test_each_burst_of_a_poll_that_hands_out_several_is_joined() -> None:
    client = [
        (100, "write", BIG),  # one produce request carried both bursts (sent 1 ms apart)
        (900, "read", BIG),
        (910, "buffered", 20),
        (920, "delivered", [-1_000_000, -999_990, 50, 60]),
    ]
    broker = [
        (200, "read", BIG),
        (210, "fsync_submit", 7),
        (600, "fsync_done", 7),
        (800, "write", BIG),
    ]
    stages = join_single(client, broker, gap_ns=GAP_NS)
    assert stages["total"] == [1_000_920, 870]
    assert stages["client: first send -> produce request written"] == [1_000_100, 50]


def test_a_replicated_burst_takes_the_follower_whose_answer_came_first() -> None:
    topic = "lat-topic"
    group = f"{topic}/0"

    def append(source: int, target: int) -> list:
        return ["AppendRequest", source, target, 1, group]

    def answer(source: int, target: int) -> list:
        return ["AppendResponse", source, target, 0, group]

    client = [(100, "write", BIG), (900, "read", BIG), (910, "buffered", 10)]
    client.append((950, "delivered", [50]))
    leader = [
        (200, "read", BIG),
        (210, "fsync_submit", 1),
        (300, "raft_send", append(1, 2)),  # to the slow follower first
        (305, "raft_send", append(1, 3)),
        (400, "fsync_done", 1),
        (620, "raft_deliver", answer(3, 1)),  # the quick follower's answer
        (700, "write", BIG),
        (780, "raft_deliver", answer(2, 1)),
    ]
    slow = [
        (340, "raft_deliver", append(1, 2)),
        (345, "fsync_submit", 4),
        (650, "fsync_done", 4),
        (660, "raft_send", answer(2, 1)),
    ]
    quick = [
        (350, "raft_deliver", append(1, 3)),
        (360, "fsync_submit", 9),
        (500, "fsync_done", 9),
        (510, "raft_send", answer(3, 1)),
    ]
    stages = join_replicated(client, leader, [slow, quick], topic, gap_ns=GAP_NS)
    assert set(stages) == set(REPLICATED_STAGES)
    got = {name: values[0] for name, values in stages.items()}
    assert got["leader: read -> AppendRequest handed to the transport"] == 105  # to node 3
    assert got["transport -> follower has it"] == 45
    assert got["follower: fsync"] == 140  # the quick follower's, not the slow one's 305
    assert got["transport -> leader has the answer"] == 110  # 3's answer, not 2's at 780
    assert got["leader: own fsync (read -> done)"] == 200
    assert got["leader: committed -> fetch response written"] == 80  # committed at 620
    assert got["total"] == 900


async def _double(value: int) -> int:
    return 2 * value


def test_probes_note_what_sync_and_async_functions_returned() -> None:
    events = latency_stages._EVENTS
    events.clear()
    halve = probe(lambda value: value // 2, lambda result, value: ("halved", result))
    double = probe(_double, lambda result, value: ("doubled", result))
    assert halve(10) == 5
    assert trio.run(double, 4) == 8
    assert [(kind, value) for _, kind, value in events] == [("halved", 5), ("doubled", 8)]
    assert events[0][0] <= events[1][0]
    events.clear()


def _run(tmp_path: pathlib.Path, *args: str) -> dict:
    out = tmp_path / "stages.json"
    result = run_benchmark("latency_stages", *args, "--json", str(out), timeout_s=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize(("brokers", "names"), [("1", SINGLE_STAGES), ("3", REPLICATED_STAGES)])
def test_a_short_real_run_finds_every_stage_for_most_bursts(
    tmp_path: pathlib.Path, brokers: str, names: tuple[str, ...]
) -> None:
    figures = _run(tmp_path, "--brokers", brokers, "--seconds", "1", "--rate", "2000")
    bursts = figures["workload"]["bursts"]
    assert bursts == 200
    assert list(figures["stages"]) == list(names)
    joined = figures["stages"]["total"]["count"]
    # Most bursts join (the rest had a step matched to another burst's, or were cut by the
    # phase's end); with a probe that never fires, none would.
    assert joined >= bursts // 2, figures["stages"]
    # The joined bursts' total is the end-to-end latency of their first records: of the same
    # size as the phase's own figure over every record (a join onto later bursts' steps would
    # inflate it, onto earlier ones could not be ordered).
    e2e_p50_us = 1000 * figures["end_to_end_ms"]["p50_ms"]
    assert e2e_p50_us / 3 <= figures["stages"]["total"]["p50_us"] <= 3 * e2e_p50_us, figures
