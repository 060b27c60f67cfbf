"""Latency stages: where a record's end-to-end time goes, stage by stage.

    python -m benchmarks.latency_stages                  # one broker, acks=1
    python -m benchmarks.latency_stages --brokers 3      # three brokers, RF 3, acks=all
    python -m benchmarks.latency_stages --seconds 10 --rate 5000

It runs `benchmarks.compare`'s latency phase (bursts of `LATENCY_BURST` records of 100 bytes at
`--rate` records/s, the SDK's default settings, a consumer in the same process) against brokers it
starts itself, with probes that timestamp the steps of each burst's way: in the client (the
producer's write, the fetch response's read, the records buffered, the records handed to `poll`)
and in each broker (a request read, a response written, an fsync submitted and done, on the
event loop or in the helper process, a Raft message handed to the transport and delivered by
it). Timestamps are CLOCK_MONOTONIC, which every process on the machine shares, so a burst's
steps join across processes: each stage is the time from one step to the first matching step
after it, with these checks against matching another burst's step:
- an fsync is followed by its job number, from the submit to its own answer (the answer of one
  fsync starts the next, so "the first answer after the submit" could be an earlier job's);
- a hop between processes must be the last of its kind before the step it reached (no other
  request was written between the produce request and the broker's read of it, no other fetch
  response between the one matched and the client's read), and the records buffered must be the
  ones the burst's `poll` handed out;
- at RF 3 each follower is followed by its node id, and the stage rows are the follower whose
  answer reached the leader first;
- a `poll` that hands out several bursts counts each (split where the send stamps jump by more
  than half the time between bursts).
A burst whose steps do not all match is left out; the table says how many joined.

It prints a table (p50/p90/p99 of each stage, in µs) and writes JSON (`--json`, default
benchmarks/results/latency_stages.json). The figures are for reading the shape of the latency
(docs/performance.md, "Where a record's latency goes"), not for comparing trees: the probes cost a
few µs per step and keep every event in memory (the client's full garbage collections grow
longer, so read the end-to-end tail from `benchmarks.compare`), and the stages' medians add up
to about the total's median only.

The probes wrap functions of the broker and the SDK by name (`install_broker_probes`,
`client_probes`); renaming one of them makes this benchmark fail at start, and its test with it.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import contextlib
import inspect
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from rich.console import Console
from rich.table import Table

from benchmarks.throughput import LATENCY_BURST

RESULTS_DEFAULT = Path(__file__).parent / "results" / "latency_stages.json"
RECORD_BYTES = 100
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
# This process's events (the client's, or a probed broker's).
_EVENTS: list[Event] = []
Record = Callable[..., tuple[str, Any]]


# --- probes -----------------------------------------------------------------------------------


def probe(
    original: Callable[..., Any], record: Record, *, at_call: bool = False
) -> Callable[..., Any]:
    """`original`, noting `record(result, *args)` (kind, value) with the time it returned, or
    (`at_call`) the time it was called. Writes are stamped when called: a write wakes its
    reader, which often runs on the writer's core at once, so the writer's own return comes
    after the reader has already read and handled the data."""
    if inspect.iscoroutinefunction(original):

        async def async_probe(*args: Any, **kwargs: Any) -> Any:
            called = now_ns()
            result = await original(*args, **kwargs)
            _EVENTS.append((called if at_call else now_ns(), *record(result, *args)))
            return result

        return async_probe

    def sync_probe(*args: Any, **kwargs: Any) -> Any:
        called = now_ns()
        result = original(*args, **kwargs)
        _EVENTS.append((called if at_call else now_ns(), *record(result, *args)))
        return result

    return sync_probe


def _probed_fsync_submit(original: Callable[..., None]) -> Callable[..., None]:
    """`SyncThreads.submit` of a plain fsync (one given its descriptors: run inline on the event
    loop, or in the helper process, or a thread), noting a job number and, when it is done, that
    job's end, stamped before any callback runs (a callback may start the next fsync)."""
    jobs = itertools.count()

    def submit(threads: Any, job: Any, on_done: Callable[[Any], None], fds: Any = ()) -> None:
        if not fds:
            return original(threads, job, on_done, fds)  # type: ignore[no-any-return]
        number = next(jobs)

        def done(outcome: Any) -> None:
            _EVENTS.append((now_ns(), "fsync_done", number))
            on_done(outcome)

        _EVENTS.append((now_ns(), "fsync_submit", number))  # before a helper takes the core
        return original(threads, job, done, fds)  # type: ignore[no-any-return]

    return submit


def _written(rest: Any, stream: Any, data: bytes) -> tuple[str, int]:
    """A `write_now` probe: the size of the frame written."""
    return "write", len(data)


def _raft_message(message: Any, group: str) -> list[Any]:
    """What a Raft probe keeps of a message: kind, source, target, entry count, group."""
    entries = getattr(message, "entries", None) or ()
    return [type(message).__name__, message.source, message.target, len(entries), group]


def install_broker_probes() -> None:
    """Probes in a broker process, for its whole life (called before it starts serving)."""
    import broker.log.sync_threads as sync_threads
    import broker.raft.transport as transport
    import broker.server as server

    server.write_now = probe(server.write_now, _written, at_call=True)  # type: ignore[assignment]
    server._Connection._receive_more = probe(  # type: ignore[method-assign]
        server._Connection._receive_more,
        lambda more, connection: ("read", connection.frames.buffered_bytes),
    )
    threads = sync_threads.SyncThreads
    threads.submit = _probed_fsync_submit(threads.submit)  # type: ignore[method-assign]
    raft = transport.RaftTransport
    raft.send = probe(  # type: ignore[method-assign]
        raft.send,
        lambda _, transport, group, message: ("raft_send", _raft_message(message, group)),
    )
    raft._deliver = probe(  # type: ignore[method-assign]
        raft._deliver,
        lambda _, transport, group, message: ("raft_deliver", _raft_message(message, group)),
    )


@contextlib.contextmanager
def client_probes(stamp_offset_ns: int) -> Iterator[None]:
    """Probes in this (the client's) process while the block runs. `stamp_offset_ns`: wall clock
    minus monotonic, to turn the records' send stamps (wall clock ns) into monotonic ones."""
    import trio

    import client.aio.consumer as consumer
    import wire.connection as connection
    from benchmarks.compare import measure

    def delivered(_: Any, recorder: Any, values: list[bytes]) -> tuple[str, Any]:
        stamps = [measure._STAMP.unpack_from(value)[0] - stamp_offset_ns for value in values]
        return "delivered", stamps

    wrapped: list[tuple[Any, str, Record, bool]] = [
        (connection, "write_now", _written, True),
        (trio.SocketStream, "receive_some", lambda data, *_: ("read", len(data)), False),
        (consumer.Consumer, "_buffer_chunk", lambda _, __, chunk: ("buffered", chunk.count), False),
        (measure.LatencyRecorder, "received", delivered, True),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, record, at_call in wrapped:
            probed = probe(getattr(owner, name), record, at_call=at_call)
            stack.enter_context(mock.patch.object(owner, name, probed))
        yield


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
    """One process's events of one kind, in time order."""

    def __init__(self, events: Sequence[Event], kind: str, keep: Callable[[Any], bool]) -> None:
        self.times = sorted(t for t, k, value in events if k == kind and keep(value))

    def after(self, t: int | None) -> int | None:
        """The first step at or after `t` (None: none, or no `t`)."""
        if t is None:
            return None
        index = bisect.bisect_left(self.times, t)
        return self.times[index] if index < len(self.times) else None

    def before(self, t: int | None) -> int | None:
        """The last step at or before `t`."""
        if t is None:
            return None
        index = bisect.bisect_right(self.times, t)
        return self.times[index - 1] if index else None

    def reached(self, sent: int | None, at: _Steps) -> int | None:
        """The first step of `at` after this step `sent`, if `sent` is the last of these before
        it (else another one of these was on its way: not this one's step)."""
        got = at.after(sent)
        return got if got is not None and self.before(got) == sent else None


class _Fsyncs:
    """One process's fsync jobs: when each was submitted and when it was done."""

    def __init__(self, events: Sequence[Event]) -> None:
        submitted = sorted((t, job) for t, kind, job in events if kind == "fsync_submit")
        self._times = [t for t, _ in submitted]
        self._jobs = [job for _, job in submitted]
        self._done = {job: t for t, kind, job in events if kind == "fsync_done"}

    def first_after(self, t: int | None) -> tuple[int, int] | tuple[None, None]:
        """(submitted, answered) of the first job handed over at or after `t`."""
        if t is None:
            return None, None
        index = bisect.bisect_left(self._times, t)
        if index == len(self._times):
            return None, None
        done = self._done.get(self._jobs[index])
        return (self._times[index], done) if done is not None else (None, None)


def _big(size: int) -> bool:
    return size > RECORDS_FRAME_BYTES


def _bursts(client: Sequence[Event], gap_ns: int) -> Iterator[tuple[int, int]]:
    """(first send stamp, delivery time) of each burst handed to `poll`: one poll's stamps are
    split where they jump by more than `gap_ns`."""
    for t, kind, stamps in client:
        if kind != "delivered" or not stamps:
            continue
        ordered = sorted(stamps)
        yield ordered[0], t
        for previous, stamp in itertools.pairwise(ordered):
            if stamp - previous > gap_ns:
                yield stamp, t


class _Client:
    """The client's steps, and the tail every join shares: from a fetch response written by
    the broker to the records handed to `poll`."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.produce_written = _Steps(events, "write", _big)
        self.fetch_read = _Steps(events, "read", _big)
        self.buffered = _Steps(events, "buffered", lambda count: count > 0)
        self.delivered = _Steps(events, "delivered", bool)

    def request_read(self, sent: int, read: _Steps) -> tuple[int | None, int | None]:
        """(written, read by the broker) of the produce request that carried the burst first
        sent at `sent`."""
        request = self.produce_written.after(sent)
        return request, self.produce_written.reached(request, read)

    def tail(self, written: _Steps, answered: int | None, delivered: int) -> list[int | None]:
        """[read, buffered] for the fetch response `answered` (of `written`), if it is what
        reached `poll` at `delivered`; Nones otherwise."""
        fetched = written.reached(answered, self.fetch_read)
        buffered = self.buffered.after(fetched)
        if buffered is None or self.delivered.after(buffered) != delivered:
            return [None, None]
        return [fetched, buffered]


SINGLE_STAGES = (
    "client: first send -> produce request written",
    "request written -> broker read it",
    "broker: read -> fsync submitted",
    "fsync (submitted -> done: inline or helper)",
    "broker: fsync done -> fetch response written",
    "response written -> client read it",
    "client: read -> records buffered",
    "client: buffered -> handed to poll",
    "total",
)


def join_single(
    client: Sequence[Event], broker: Sequence[Event], *, gap_ns: int
) -> dict[str, list[int]]:
    """Stages of each burst through one broker (acks=1: visible once fsynced)."""
    c = _Client(client)
    read = _Steps(broker, "read", _big)
    fsyncs = _Fsyncs(broker)
    written = _Steps(broker, "write", _big)
    stages: dict[str, list[int]] = {name: [] for name in SINGLE_STAGES}
    for sent, delivered in _bursts(client, gap_ns):
        request, arrived = c.request_read(sent, read)
        submitted, synced = fsyncs.first_after(arrived)
        answered = written.after(synced)
        steps = [sent, request, arrived, submitted, synced, answered]
        steps += [*c.tail(written, answered, delivered), delivered]
        if not _ordered(steps):
            continue
        _add_gaps(stages, SINGLE_STAGES, steps)
        stages["total"].append(delivered - sent)
    return stages


REPLICATED_STAGES = (
    "client: first send -> produce request written",
    "request written -> leader read it",
    "leader: read -> AppendRequest handed to the transport",
    "transport -> follower has it",
    "follower: -> fsync submitted",
    "follower: fsync",
    "follower: fsync done -> AppendResponse handed to the transport",
    "transport -> leader has the answer",
    "leader: own fsync (read -> done)",
    "leader: committed -> fetch response written",
    "response written -> records handed to poll",
    "total",
)


class _Follower:
    """One follower's steps of the partition `topic`'s group, and the leader's with it."""

    def __init__(self, leader: Sequence[Event], events: Sequence[Event], topic: str) -> None:
        node = next(
            (v[2] for _, kind, v in events if kind == "raft_deliver" and topic in v[4]), None
        )

        def raft(of: Sequence[Event], kind: str, message: str, *, entries: bool) -> _Steps:
            return _Steps(
                of,
                kind,
                lambda v: (
                    v[0] == message
                    and node in (v[1], v[2])
                    and (v[3] > 0 or not entries)
                    and topic in v[4]
                ),
            )

        self.sent = raft(leader, "raft_send", "AppendRequest", entries=True)
        self.got = raft(events, "raft_deliver", "AppendRequest", entries=True)
        self.fsyncs = _Fsyncs(events)
        self.answered = raft(events, "raft_send", "AppendResponse", entries=False)
        self.back = raft(leader, "raft_deliver", "AppendResponse", entries=False)

    def chain(self, arrived: int) -> list[int | None]:
        """[handed, got, fsync submitted, fsync done, answered, back at the leader] for the
        entries the leader appended after reading the request at `arrived`."""
        handed = self.sent.after(arrived)
        got = self.sent.reached(handed, self.got)
        submitted, synced = self.fsyncs.first_after(got)
        answered = self.answered.after(synced)
        back = self.answered.reached(answered, self.back)
        return [handed, got, submitted, synced, answered, back]


def join_replicated(
    client: Sequence[Event],
    leader: Sequence[Event],
    followers: Sequence[Sequence[Event]],
    topic: str,
    *,
    gap_ns: int,
) -> dict[str, list[int]]:
    """Stages of each burst through a leader and the follower that answered first (acks=all)."""
    c = _Client(client)
    read = _Steps(leader, "read", _big)
    own_fsyncs = _Fsyncs(leader)
    written = _Steps(leader, "write", _big)
    per_follower = [_Follower(leader, events, topic) for events in followers]
    stages: dict[str, list[int]] = {name: [] for name in REPLICATED_STAGES}
    for sent, delivered in _bursts(client, gap_ns):
        request, arrived = c.request_read(sent, read)
        if arrived is None:
            continue
        chains = [chain for f in per_follower if _ordered(chain := f.chain(arrived))]
        _, own_synced = own_fsyncs.first_after(arrived)
        if not chains or own_synced is None:
            continue
        quickest = min(chains, key=lambda chain: chain[-1])  # type: ignore[arg-type,return-value]
        committed = max(quickest[-1], own_synced)  # type: ignore[type-var]
        answered = written.after(committed)
        tail = [*c.tail(written, answered, delivered), delivered]
        steps = [sent, request, arrived, *quickest]
        if not _ordered([*steps, committed, answered, *tail]):
            continue
        _add_gaps(stages, REPLICATED_STAGES, steps)
        stages["leader: own fsync (read -> done)"].append(own_synced - arrived)
        stages["leader: committed -> fetch response written"].append(answered - committed)  # type: ignore[operator]
        stages["response written -> records handed to poll"].append(delivered - answered)  # type: ignore[operator]
        stages["total"].append(delivered - sent)
    return stages


def _add_gaps(stages: dict[str, list[int]], names: Sequence[str], steps: list[int | None]) -> None:
    """Stage `names[i]` gets the gap from `steps[i]` to `steps[i + 1]` (steps all present)."""
    for name, (begin, end) in zip(names, itertools.pairwise(steps), strict=False):
        stages[name].append(end - begin)  # type: ignore[operator]


def _ordered(steps: list[int | None]) -> bool:
    """Every step present, and none before the one it follows."""
    if any(step is None for step in steps):
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
    if args.seconds <= 0 or args.rate < LATENCY_BURST:
        parser.error(
            f"--seconds must be positive and --rate at least {LATENCY_BURST} (a burst a second)"
        )
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import client.embedded as embedded
    from benchmarks.compare.measure import Workload
    from benchmarks.compare.system_pybroker import PyBroker, PyBrokerSession

    replicated = args.brokers == 3
    system = PyBroker(
        "pybroker-rf3" if replicated else "pybroker",
        brokers=args.brokers,
        replication_factor=args.brokers,
        acks="all" if replicated else 1,
    )
    workload = Workload(
        records=0, record_bytes=RECORD_BYTES, rate=args.rate, latency_seconds=args.seconds
    )
    with contextlib.ExitStack() as stack:
        probe_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="latency-stages-"))
        stack.enter_context(mock.patch.dict(os.environ, {PROBE_DIR_ENV: probe_dir}))
        stack.enter_context(mock.patch.object(embedded, "BROKER_COMMAND", PROBED_BROKER_COMMAND))
        with system.running() as session:
            assert isinstance(session, PyBrokerSession)
            session.prepare_latency()
            with client_probes(time.time_ns() - time.perf_counter_ns()):
                _EVENTS.clear()
                measured = session.latency(workload)
            client_events = list(_EVENTS)
            pids, topic = session.server_pids, session.latency_topic
        per_broker = {
            int(path.stem): json.loads(path.read_text()) for path in Path(probe_dir).glob("*.json")
        }
    missing = [pid for pid in pids if pid not in per_broker]
    if missing:
        raise SystemExit(f"brokers {missing} wrote no probe events (did they stop cleanly?)")
    gap_ns = int(LATENCY_BURST / args.rate * 1e9) // 2
    if replicated:
        # The leader is the broker that read the produce requests.
        leader = max(pids, key=lambda pid: len(_Steps(per_broker[pid], "read", _big).times))
        followers = [per_broker[pid] for pid in pids if pid != leader]
        stages = join_replicated(client_events, per_broker[leader], followers, topic, gap_ns=gap_ns)
    else:
        stages = join_single(client_events, per_broker[pids[0]], gap_ns=gap_ns)
    return {
        "workload": {
            "brokers": args.brokers,
            "acks": system.acks,
            "rate": args.rate,
            "seconds": args.seconds,
            "record_bytes": RECORD_BYTES,
            "bursts": int(args.rate * args.seconds) // LATENCY_BURST,
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
        f"{workload['rate']:,} records/s for {workload['seconds']:g} s (bursts of "
        f"{LATENCY_BURST} x {RECORD_BYTES} B)"
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
