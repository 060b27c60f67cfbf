"""Hostile clients against a real broker: does its memory stay bounded, and come back?

    python -m benchmarks.hostile                      # the issue's abuse, small deadlines
    python -m benchmarks.hostile --frames 220000 --half-open 1000 --slow 20
    python -m benchmarks.hostile --broker-arg --set --broker-arg queued_max_request_bytes=67108864

Starts one `broker serve` process (`client.embedded.EmbeddedBroker`), samples its RSS from
/proc every 50 ms, and runs, all at once:
- mutated frames: `--workers` connections handshake and then pipeline `--frames` frames in all,
  each a valid Produce, Fetch or Metadata request with random bytes flipped, its length prefix
  changed (sometimes to a huge frame), or cut short; a connection the broker closes is reopened;
- half-open connections: `--half-open` connections announce a frame of nearly max_frame_bytes,
  send `--half-open-fill-bytes` of it and stall (half of them after a proper handshake);
- slow clients: `--slow` connections handshake and then send a request at 1 byte/s.
Then every abusive connection is closed and the broker is left alone for `--settle-s`; with
`--rounds N` all of it runs N times against the same broker (does memory keep growing?).

Printed (and written to `--output`, default benchmarks/results/hostile.json, git-ignored): RSS
idle, peak and after, in MB; the target `2 x idle + queued_max_request_bytes`; and the broker's
counters of refused and closed connections by limit. The deadlines default to small values
(`request_arrival_timeout_ms=5000`, `handshake_timeout_ms=5000`) so a run takes under a minute;
the limits themselves are the broker's defaults unless `--broker-arg` overrides them.
Wall-clock figures on a shared machine are noisy; the RSS ratios are what this measures.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

from client.embedded import EmbeddedBroker
from wire import codec
from wire.batch import build_batch
from wire.framing import FrameConnection, Role

MIB = 1024 * 1024
SAMPLE_S = 0.05
DEFAULT_BROKER_ARGS = (
    "--set", "request_arrival_timeout_ms=5000",
    "--set", "handshake_timeout_ms=5000",
    "--set", "auto_create_topics=true",
)  # fmt: skip
OUTPUT = Path(__file__).parent / "results" / "hostile.json"


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await trio.sleep(SAMPLE_S)


def _handshake_bytes(frames: FrameConnection) -> bytes:
    header, payload = codec.encode_request(
        codec.HandshakeRequest(client_id="hostile"), correlation_id=0
    )
    return frames.send(header, payload)


def _templates() -> list[bytes]:
    """Valid request frames (after a handshake) that mutations start from."""
    frames = FrameConnection(Role.CLIENT)
    _handshake_bytes(frames)
    batch = build_batch([(1_700_000_000_000 + i, None, b"v" * 100, None) for i in range(20)])
    requests: list[Any] = [
        codec.ProduceRequest(
            partitions=(codec.ProducePartition(topic="abuse", partition=0, records=batch),),
            acks=1,
        ),
        codec.FetchRequest(
            partitions=(codec.FetchPartition(topic="abuse", partition=0, fetch_offset=0),),
            max_wait_ms=0,
        ),
        codec.MetadataRequest(topics=("abuse",)),
    ]
    out = []
    for index, request in enumerate(requests, 1):
        header, payload = codec.encode_request(request, correlation_id=index)
        out.append(frames.send(header, payload))
    return out


def mutate(frame: bytes, rng: random.Random) -> bytes:
    """One mutation of a valid frame: flipped bytes, a changed length prefix, or a cut."""
    data = bytearray(frame)
    choice = rng.random()
    if choice < 0.6:
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(8, len(data))
            data[position] = rng.randrange(256)
    elif choice < 0.8:
        length = rng.choice([rng.randrange(1 << 32), len(data) - 4 + rng.randint(-8, 8)])
        data[0:4] = max(0, length).to_bytes(4, "big")
    elif choice < 0.9:
        data = data[: rng.randrange(1, len(data))]
    return bytes(data)


class Counts:
    def __init__(self) -> None:
        self.frames = 0
        self.reconnects = 0
        self.refused = 0


async def _drain(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some(1 << 16):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _mutating_worker(
    address: tuple[str, int], quota: int, seed: int, counts: Counts, templates: list[bytes]
) -> None:
    rng = random.Random(seed)
    sent = 0
    while sent < quota:
        try:
            stream = await trio.open_tcp_stream(*address)
        except OSError:
            counts.refused += 1
            await trio.sleep(0.05)
            continue
        counts.reconnects += 1
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(_drain, stream)
            try:
                await stream.send_all(_handshake_bytes(FrameConnection(Role.CLIENT)))
                while sent < quota:
                    chunk = b"".join(mutate(rng.choice(templates), rng) for _ in range(50))
                    await stream.send_all(chunk)
                    sent += 50
                    counts.frames += 50
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            nursery.cancel_scope.cancel()


async def _half_open(
    address: tuple[str, int], index: int, args: argparse.Namespace, stop: trio.Event, counts: Counts
) -> None:
    try:
        stream = await trio.open_tcp_stream(*address)
    except OSError:
        counts.refused += 1
        return
    async with stream, trio.open_nursery() as nursery:

        async def stall() -> None:
            try:
                if index % 2:
                    await stream.send_all(_handshake_bytes(FrameConnection(Role.CLIENT)))
                prefix = (args.frame_bytes - 4).to_bytes(4, "big") + (16).to_bytes(4, "big")
                # The frame's first bytes, then nothing: the broker waits for the rest.
                await stream.send_all(prefix + bytes(args.half_open_fill_bytes))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

        nursery.start_soon(stall)
        await stop.wait()
        nursery.cancel_scope.cancel()


async def _slow(address: tuple[str, int], stop: trio.Event) -> None:
    try:
        stream = await trio.open_tcp_stream(*address)
    except OSError:
        return
    async with stream:
        frames = FrameConnection(Role.CLIENT)
        try:
            await stream.send_all(_handshake_bytes(frames))
            header, payload = codec.encode_request(codec.MetadataRequest(), correlation_id=1)
            for byte in frames.send(header, payload):
                if stop.is_set():
                    return
                await stream.send_all(bytes([byte]))
                await trio.sleep(1.0)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _metrics(broker: EmbeddedBroker) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{broker.metrics_address}/metrics", timeout=10) as page:
        text = page.read().decode()
    wanted = ("broker_connections_refused_total", "broker_connections_closed_by_limit_total")
    found = {}
    for line in text.splitlines():
        if line.startswith(wanted) or line.startswith("broker_connections "):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


async def _one_round(
    address: tuple[str, int], args: argparse.Namespace, counts: Counts, templates: list[bytes]
) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as abuse:
        for index in range(args.half_open):
            abuse.start_soon(_half_open, address, index, args, stop, counts)
        for _ in range(args.slow):
            abuse.start_soon(_slow, address, stop)
        async with trio.open_nursery() as mutators:
            quota = args.frames // args.workers
            for worker in range(args.workers):
                mutators.start_soon(
                    _mutating_worker, address, quota, args.seed + worker, counts, templates
                )
        # Mutations done: give the deadlines time to close the half-open and slow clients.
        await trio.sleep(args.hold_s)
        stop.set()


async def _abuse(broker: EmbeddedBroker, args: argparse.Namespace) -> dict[str, Any]:
    address = (broker.host, broker.port)
    sampler = RssSampler(broker.process.pid)  # type: ignore[union-attr]
    counts = Counts()
    templates = _templates()
    after: list[float] = []
    async with trio.open_nursery() as nursery:
        await trio.sleep(args.idle_s)
        idle = rss_bytes(sampler.pid)
        nursery.start_soon(sampler.run)
        started = time.monotonic()
        for _ in range(args.rounds):
            await _one_round(address, args, counts, templates)
            await trio.sleep(args.settle_s)
            after.append(rss_bytes(sampler.pid) / MIB)
        abuse_s = time.monotonic() - started
        nursery.cancel_scope.cancel()
    return {
        "idle_rss_mb": idle / MIB,
        "peak_rss_mb": sampler.peak / MIB,
        "after_rss_mb": after[-1],
        "after_rss_mb_per_round": after,
        "seconds": abuse_s,
        "frames_sent": counts.frames,
        "connections_opened_by_mutators": counts.reconnects,
        "connect_failures": counts.refused,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=220_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--half-open", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--frame-bytes", type=int, default=64 * MIB - 1024)
    parser.add_argument("--half-open-fill-bytes", type=int, default=1 * MIB)
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--hold-s", type=float, default=8.0)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the abuse on one broker")
    parser.add_argument("--budget-bytes", type=int, default=128 * MIB, help="as configured")
    parser.add_argument("--broker-arg", action="append", default=[])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    with EmbeddedBroker(extra_args=[*DEFAULT_BROKER_ARGS, *args.broker_arg]) as broker:
        result = trio.run(_abuse, broker, args)
        result["metrics"] = _metrics(broker)
    result["budget_mb"] = args.budget_bytes / MIB
    result["target_peak_mb"] = 2 * result["idle_rss_mb"] + result["budget_mb"]
    result["peak_within_target"] = result["peak_rss_mb"] <= result["target_peak_mb"]
    result["after_over_idle"] = result["after_rss_mb"] / result["idle_rss_mb"]
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
