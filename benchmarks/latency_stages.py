"""Latency stages: where a record's end-to-end time goes, stage by stage.

    python -m benchmarks.latency_stages                  # one broker, acks=1
    python -m benchmarks.latency_stages --brokers 3      # three brokers, RF 3, acks=all
    python -m benchmarks.latency_stages --seconds 10 --rate 5000

It runs `benchmarks.compare`'s latency phase (bursts of 10 records of 100 bytes at `--rate`
records/s, the SDK's default settings, a consumer in the same process) against brokers it starts
itself, with probes that timestamp the steps of each burst's way: in the client (the producer's
write, the fetch response's read, the records buffered, the records handed to `poll`) and in each
broker (a request read, a response written, an fsync handed to the helper process and answered,
a Raft message handed to the transport and delivered by it). Timestamps are CLOCK_MONOTONIC,
which every process on the machine shares, so a burst's steps join across processes: each stage
is the time from one step to the first matching step after it. A burst whose steps do not all
match (a request that carried two bursts, a fetch answered before the fsync of a later batch) is
left out; the table says how many matched.

It prints a table (p50/p90/p99 of each stage, in µs) and writes JSON (`--json`, default
benchmarks/results/latency_stages.json). The figures are for reading the shape of the latency
(docs/performance.md, "Where a record's latency goes"), not for comparing trees: the probes cost a
few µs per step and keep every event in memory (the client's full garbage collections grow
longer, so read the end-to-end tail from `benchmarks.compare`), and the stages' medians add up
to about the total's median only.

The probes wrap functions of the broker and the SDK by name (`_PROBES` below); renaming one of
them breaks this benchmark, and its test says which.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import inspect
import itertools
import json
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DEFAULT = Path(__file__).parent / "results" / "latency_stages.json"
# Frames above this size carry records (a burst is 10 records of 100 bytes, over 1 KB); produce
# acknowledgements, fetch requests and empty fetch responses are a few hundred bytes.
RECORDS_FRAME_BYTES = 600
# Where each probed broker writes its events at exit (set for the child processes).
PROBE_DIR_ENV = "LATENCY_STAGES_PROBE_DIR"
PROBED_BROKER_COMMAND = (
    sys.executable,
    "-c",
    "from benchmarks.latency_stages import serve_probed; serve_probed()",
    "serve",
)

Event = tuple[int, str, Any]
now_ns = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: comparable across processes


# --- probes -----------------------------------------------------------------------------------


def _wrap(owner: Any, name: str, record: Callable[..., tuple[str, Any] | None]) -> None:
    """Replace `owner.name` by a wrapper that appends `record(result, *args)` after each call."""
    original = getattr(owner, name)
    events: list[Event] = _EVENTS

    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        noted = record(result, *args)
        if noted is not None:
            events.append((now_ns(), *noted))
        return result

    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        noted = record(result, *args)
        if noted is not None:
            events.append((now_ns(), *noted))
        return result

    setattr(owner, name, async_wrapper if inspect.iscoroutinefunction(original) else sync_wrapper)


_EVENTS: list[Event] = []


def _message(message: Any) -> list[Any]:
    return [type(message).__name__, len(getattr(message, "entries", ()) or ())]


def install_broker_probes() -> None:
    """Probes in a broker process (called before it starts serving)."""
    import broker.log.fsync_process as fsync_process
    import broker.raft.transport as transport
    import broker.server as server

    _wrap(server, "write_now", lambda rest, stream, data: ("write", len(data)))
    _wrap(
        server._Connection,
        "_receive_more",
        lambda more, connection: ("read", connection.frames.buffered_bytes),
    )
    _wrap(fsync_process.FsyncProcess, "submit", lambda sent, *args: ("fsync_submit", 0))
    _wrap(fsync_process.FsyncProcess, "_read_ready", lambda _, helper: ("fsync_done", 0))
    _wrap(
        transport.RaftTransport,
        "send",
        lambda sent, link, group, message: ("raft_send", [*_message(message), group]),
    )
    _wrap(
        transport.RaftTransport,
        "_deliver",
        lambda _, link, group, message: ("raft_deliver", [*_message(message), group]),
    )


def install_client_probes(stamp_offset_ns: int) -> None:
    """Probes in this (the client's) process. `stamp_offset_ns`: wall clock minus monotonic, to
    turn the records' send stamps (wall clock ns) into monotonic ones."""
    import trio

    import client.aio.consumer as consumer
    import wire.connection as connection
    from benchmarks.compare import measure

    def delivered(_: Any, recorder: Any, values: list[bytes]) -> tuple[str, Any]:
        stamps = [measure._STAMP.unpack_from(value)[0] - stamp_offset_ns for value in values]
        return "delivered", stamps

    _wrap(connection, "write_now", lambda rest, stream, data: ("write", len(data)))
    _wrap(trio.SocketStream, "receive_some", lambda data, stream, *args: ("read", len(data)))
    _wrap(consumer.Consumer, "_buffer_chunk", lambda kept, _, chunk: ("buffered", chunk.count))
    _wrap(measure.LatencyRecorder, "received", delivered)


def serve_probed() -> None:
    """A `broker serve` with the broker probes, writing its events to the probe directory at
    exit (a clean stop: SIGTERM, as `EmbeddedBroker.stop` sends)."""
    install_broker_probes()
    out = Path(os.environ[PROBE_DIR_ENV]) / f"{os.getpid()}.json"
    atexit.register(lambda: out.write_text(json.dumps(_EVENTS)))
    from cli.broker_main import app

    app()


# --- joining the steps of each burst ------------------------------------------------------------


class _Steps:
    """One process's events of one kind, in time order, for `after` lookups."""

    def __init__(self, events: list[Event], kind: str, keep: Callable[[Any], bool]) -> None:
        self.times = sorted(t for t, k, value in events if k == kind and keep(value))

    def after(self, t: int | None) -> int | None:
        """The first step at or after `t` (None: none, or no `t`)."""
        if t is None:
            return None
        index = bisect.bisect_left(self.times, t)
        return self.times[index] if index < len(self.times) else None

    def before(self, t: int) -> int | None:
        """The last step at or before `t`."""
        index = bisect.bisect_right(self.times, t)
        return self.times[index - 1] if index else None


def _big(size: int) -> bool:
    return size > RECORDS_FRAME_BYTES


def _client_steps(client: list[Event]) -> dict[str, _Steps]:
    return {
        "produce_written": _Steps(client, "write", _big),
        "fetch_read": _Steps(client, "read", _big),
        "buffered": _Steps(client, "buffered", lambda count: count > 0),
    }


def _deliveries(client: list[Event]) -> Iterator[tuple[int, int]]:
    """(first send stamp, delivery time) of each burst handed to poll."""
    for t, kind, stamps in client:
        if kind == "delivered" and stamps:
            yield min(stamps), t


def join_single(client: list[Event], broker: list[Event]) -> dict[str, list[int]]:
    """Stages of each burst through one broker (acks=1: visible once fsynced)."""
    c = _client_steps(client)
    read = _Steps(broker, "read", _big)
    submit = _Steps(broker, "fsync_submit", lambda _: True)
    done = _Steps(broker, "fsync_done", lambda _: True)
    written = _Steps(broker, "write", _big)
    stages: dict[str, list[int]] = {name: [] for name in SINGLE_STAGES}
    for sent, delivered in _deliveries(client):
        request = c["produce_written"].after(sent)
        arrived = read.after(request)
        submitted = submit.after(arrived)
        synced = done.after(submitted)
        answered = written.after(synced)
        fetched = c["fetch_read"].before(delivered)
        buffered = c["buffered"].before(delivered)
        steps = [sent, request, arrived, submitted, synced, answered, fetched, buffered, delivered]
        if not _ordered(steps):
            continue
        for name, begin, end in zip(SINGLE_STAGES, steps, steps[1:], strict=False):
            stages[name].append(end - begin)  # type: ignore[operator]
        stages["total"].append(delivered - sent)
    return stages


SINGLE_STAGES = (
    "client: first send -> produce request written",
    "request written -> broker read it",
    "broker: read -> fsync handed to the helper",
    "fsync (helper round trip)",
    "broker: fsync done -> fetch response written",
    "response written -> client read it",
    "client: read -> records buffered",
    "client: buffered -> handed to poll",
    "total",
)


def join_replicated(
    client: list[Event], leader: list[Event], followers: list[list[Event]], topic: str
) -> dict[str, list[int]]:
    """Stages of each burst through a leader and the first follower to answer (acks=all)."""
    c = _client_steps(client)

    def raft(events: list[Event], kind: str, message: str, *, entries: bool) -> _Steps:
        return _Steps(
            events,
            kind,
            lambda v: v[0] == message and (v[1] > 0 or not entries) and topic in v[2],
        )

    read = _Steps(leader, "read", _big)
    append_sent = raft(leader, "raft_send", "AppendRequest", entries=True)
    answers = raft(leader, "raft_deliver", "AppendResponse", entries=False)
    leader_submit = _Steps(leader, "fsync_submit", lambda _: True)
    leader_done = _Steps(leader, "fsync_done", lambda _: True)
    written = _Steps(leader, "write", _big)
    per_follower = [
        (
            raft(events, "raft_deliver", "AppendRequest", entries=True),
            _Steps(events, "fsync_submit", lambda _: True),
            _Steps(events, "fsync_done", lambda _: True),
            raft(events, "raft_send", "AppendResponse", entries=False),
        )
        for events in followers
    ]

    def follower_chain(handed: int) -> list[int] | None:
        """The steps through the follower whose answer reached the leader first."""
        quickest: list[int] | None = None
        for delivered_append, submit, done, answer in per_follower:
            got = delivered_append.after(handed)
            submitted = submit.after(got)
            synced = done.after(submitted)
            back = answers.after(answer.after(synced))
            chain = [got, submitted, synced, answer.after(synced), back]
            if _complete(chain) and (quickest is None or chain[-1] < quickest[-1]):
                quickest = chain  # type: ignore[assignment]
        return quickest

    stages: dict[str, list[int]] = {name: [] for name in REPLICATED_STAGES}
    for sent, delivered in _deliveries(client):
        request = c["produce_written"].after(sent)
        arrived = read.after(request)
        handed = append_sent.after(arrived)
        own_synced = leader_done.after(leader_submit.after(arrived))
        if handed is None or own_synced is None or arrived is None:
            continue
        chain = follower_chain(handed)
        if chain is None:
            continue
        committed = max(chain[-1], own_synced)
        answered = written.after(committed)
        steps = [sent, request, arrived, handed, *chain]
        if answered is None or not _ordered([*steps, answered, delivered]):
            continue
        for name, begin, end in zip(REPLICATED_STAGES, steps, steps[1:], strict=False):
            stages[name].append(end - begin)  # type: ignore[operator]
        stages["leader: own fsync (read -> done)"].append(own_synced - arrived)
        stages["leader: committed -> fetch response written"].append(answered - committed)
        stages["response written -> records handed to poll"].append(delivered - answered)
        stages["total"].append(delivered - sent)
    return stages


REPLICATED_STAGES = (
    "client: first send -> produce request written",
    "request written -> leader read it",
    "leader: read -> AppendRequest handed to the transport",
    "transport -> follower has it",
    "follower: -> fsync handed to the helper",
    "follower: fsync",
    "follower: fsync done -> AppendResponse handed to the transport",
    "transport -> leader has the answer",
    "leader: own fsync (read -> done)",
    "leader: committed -> fetch response written",
    "response written -> records handed to poll",
    "total",
)


def _complete(steps: list[int | None]) -> bool:
    return all(step is not None for step in steps)


def _ordered(steps: list[int | None]) -> bool:
    """Every step present, and none before the one it follows."""
    if not _complete(steps):
        return False
    return all(a <= b for a, b in itertools.pairwise(steps))  # type: ignore[operator]


def summarize(stages: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """p50/p90/p99 in µs and the count of each stage."""
    out = {}
    for name, values in stages.items():
        ordered = sorted(values)
        n = len(ordered)
        if not n:
            out[name] = {"count": 0}
            continue
        out[name] = {
            "count": n,
            **{
                f"p{q}_us": round(ordered[min(int(n * q / 100), n - 1)] / 1000, 1)
                for q in (50, 90, 99)
            },
        }
    return out


# --- running ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", type=int, choices=[1, 3], default=1)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the latency phase")
    parser.add_argument("--rate", type=int, default=10_000, help="records per second")
    parser.add_argument("--json", type=Path, default=RESULTS_DEFAULT, help="where to write")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate < 10:
        parser.error("--seconds must be positive and --rate at least 10 (one burst a second)")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import client.embedded as embedded
    from benchmarks import throughput
    from benchmarks.compare.measure import Workload
    from benchmarks.compare.system_pybroker import PyBroker, PyBrokerSession

    replicated = args.brokers == 3
    system = PyBroker(
        "pybroker-rf3" if replicated else "pybroker",
        brokers=args.brokers,
        replication_factor=args.brokers,
        acks="all" if replicated else 1,
    )
    with tempfile.TemporaryDirectory(prefix="latency-stages-") as probe_dir:
        os.environ[PROBE_DIR_ENV] = probe_dir
        embedded.BROKER_COMMAND = PROBED_BROKER_COMMAND  # type: ignore[misc]
        brokers = throughput._brokers(types.SimpleNamespace(bootstrap=None), args.brokers)  # type: ignore[arg-type]
        with brokers as (bootstrap, pids):
            session = PyBrokerSession(bootstrap, pids, system)
            session.prepare_latency()
            install_client_probes(time.time_ns() - time.perf_counter_ns())
            _EVENTS.clear()
            measured = session.latency(
                Workload(records=0, record_bytes=100, rate=args.rate, latency_seconds=args.seconds)
            )
            client_events = list(_EVENTS)
        per_broker = {
            int(path.stem): json.loads(path.read_text()) for path in Path(probe_dir).glob("*.json")
        }
    missing = [pid for pid in pids if pid not in per_broker]
    if missing:
        raise SystemExit(f"brokers {missing} wrote no probe events (did they stop cleanly?)")
    if replicated:
        # The leader is the broker that read the produce requests.
        leader = max(pids, key=lambda pid: len(_Steps(per_broker[pid], "read", _big).times))
        followers = [per_broker[pid] for pid in pids if pid != leader]
        stages = join_replicated(
            client_events, per_broker[leader], followers, session.latency_topic
        )
    else:
        stages = join_single(client_events, per_broker[pids[0]])
    return {
        "workload": {
            "brokers": args.brokers,
            "acks": system.acks,
            "rate": args.rate,
            "seconds": args.seconds,
            "record_bytes": 100,
            "bursts": int(args.rate * args.seconds) // 10,
        },
        "end_to_end_ms": {key: measured.get(key) for key in ("p50_ms", "p99_ms", "p999_ms")},
        "stages": summarize(stages),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    console = Console()
    workload = result["workload"]
    table = Table(
        title=f"latency stages: {workload['brokers']} broker(s), acks={workload['acks']}, "
        f"{workload['rate']:,} records/s for {workload['seconds']:g} s (bursts of 10 x 100 B)"
    )
    for column in ("stage", "bursts", "p50 µs", "p90 µs", "p99 µs"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, figures in result["stages"].items():
        table.add_row(
            name,
            str(figures["count"]),
            *(str(figures.get(f"p{q}_us", "-")) for q in (50, 90, 99)),
        )
    console.print(table)
    e2e = result["end_to_end_ms"]
    console.print(
        f"end to end (every record of the same run, probes included): p50 {e2e['p50_ms']} ms, "
        f"p99 {e2e['p99_ms']} ms, p99.9 {e2e['p999_ms']} ms"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
