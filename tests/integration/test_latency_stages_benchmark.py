"""`python -m benchmarks.latency_stages`: the stages join, and a real run of each mode finds them.

The joins are checked on made-up timelines (every stage is the gap between two steps, so the
stages of a burst add up to its total exactly); the real runs check that the probes still find
the functions they wrap (a renamed one leaves a stage empty) and that most bursts join. No timing
is asserted: timings belong in benchmarks, not in tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks.latency_stages import (
    REPLICATED_STAGES,
    SINGLE_STAGES,
    join_replicated,
    join_single,
)

RUN_TIMEOUT_S = 180
BIG, SMALL = 1300, 200  # a frame with records / one without


def _burst(start: int, sent_stamps: list[int]) -> tuple[list, list]:
    """Client and broker events of one burst through one broker, 10 µs apart from `start`."""
    t = [start + 10_000 * i for i in range(8)]
    client = [
        (t[0], "write", BIG),  # the produce request
        (t[0] + 1, "write", SMALL),  # a fetch request: not a step
        (t[5], "read", BIG),
        (t[6], "buffered", 10),
        (t[7], "delivered", sent_stamps),
    ]
    broker = [
        (t[1], "read", BIG),
        (t[2], "fsync_submit", 0),
        (t[3], "fsync_done", 0),
        (t[3] + 5, "write", SMALL),  # the produce acknowledgement: not a step
        (t[4], "write", BIG),
    ]
    return client, broker


def test_a_single_broker_burst_splits_into_its_stages_which_add_up_to_its_total() -> None:
    client_a, broker_a = _burst(1_000_000, [990_000, 995_000])
    client_b, broker_b = _burst(2_000_000, [1_990_000])
    stages = join_single(client_a + client_b, sorted(broker_a + broker_b))
    assert set(stages) == set(SINGLE_STAGES)
    assert all(len(values) == 2 for values in stages.values())
    # From the burst's first send stamp to the produce request, then 10 µs per step.
    assert stages[SINGLE_STAGES[0]] == [10_000, 10_000]
    assert all(values == [10_000, 10_000] for values in list(stages.values())[1:-1])
    for burst in range(2):
        assert sum(stages[name][burst] for name in SINGLE_STAGES[:-1]) == stages["total"][burst]


def test_a_burst_whose_steps_do_not_all_happen_is_left_out() -> None:
    client, broker = _burst(1_000_000, [990_000])
    no_fsync_answer = [event for event in broker if event[1] != "fsync_done"]
    assert all(values == [] for values in join_single(client, no_fsync_answer).values())


def test_a_replicated_burst_takes_the_follower_that_answered_first() -> None:
    topic = "lat-topic"
    append, answer = ["AppendRequest", 1, f"{topic}/0"], ["AppendResponse", 0, f"{topic}/0"]
    client = [(100, "write", BIG), (900, "read", BIG), (950, "delivered", [50])]
    leader = [
        (200, "read", BIG),
        (210, "fsync_submit", 0),
        (300, "raft_send", append),
        (400, "fsync_done", 0),
        (620, "raft_deliver", answer),  # the quick follower's answer
        (700, "write", BIG),
        (780, "raft_deliver", answer),
    ]
    quick = [
        (350, "raft_deliver", append),
        (360, "fsync_submit", 0),
        (500, "fsync_done", 0),
        (510, "raft_send", answer),
    ]
    slow = [
        (340, "raft_deliver", append),
        (345, "fsync_submit", 0),
        (650, "fsync_done", 0),
        (660, "raft_send", answer),
    ]
    stages = join_replicated(client, leader, [slow, quick], topic)
    assert set(stages) == set(REPLICATED_STAGES)
    got = {name: values[0] for name, values in stages.items()}
    assert got["follower: fsync"] == 140  # the quick follower's, not the slow one's 305
    assert got["transport -> leader has the answer"] == 110
    assert got["leader: own fsync (read -> done)"] == 200
    assert got["leader: committed -> fetch response written"] == 80  # committed at 620
    assert got["total"] == 900


def _run(tmp_path: pathlib.Path, *args: str) -> dict:
    out = tmp_path / "stages.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency_stages", *args, "--json", str(out)],
        cwd=pathlib.Path(__file__).resolve().parents[2],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
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
    counts = {name: stage["count"] for name, stage in figures["stages"].items()}
    # Every stage of a joined burst is measured (the same count), and bursts join: a poll that
    # hands out several bursts at once counts once (at RF 3 most do: a produce request waits
    # for the one in flight, so a request carries a few bursts).
    assert len(set(counts.values())) == 1, counts
    assert counts["total"] >= (bursts // 2 if brokers == "1" else bursts // 10), counts
    for stage in figures["stages"].values():
        assert 0 <= stage["p50_us"] <= stage["p90_us"] <= stage["p99_us"]
