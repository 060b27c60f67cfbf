"""What every system's driver shares, so that the systems are measured alike.

Rules:
- Every system runs the same `Workload`: `records` records of `record_bytes` random bytes
  produced to one stream (a one-partition topic, a JetStream stream, a Redis stream), read back
  from its start, then `latency_records` records sent at `rate` records/s.
- Timed regions start after connecting and creating the stream, and end when the last record is
  acknowledged (produce) or received (consume, latency). Client CPU is this process's CPU time in
  that region; server CPU is the servers' CPU time (from /proc) around the whole workload call.
- Latency: each value starts with its send time in ns (`LatencyRecorder.stamped`, taken right
  before the client's send call); the consumer, in the same process, subtracts it from the time
  it got the record. The sender sends bursts of `LATENCY_BURST` records on a fixed schedule
  (`pacing`), as benchmarks/throughput.py does.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.throughput import _STAMP, LATENCY_BURST, _cpu_total, _quantile, _rates

WORKLOADS = ("produce", "consume", "latency")


@dataclasses.dataclass(frozen=True)
class Workload:
    """The shape every system runs (see the module rules)."""

    records: int
    record_bytes: int
    rate: int
    latency_seconds: float

    @property
    def latency_records(self) -> int:
        # Whole bursts only, so that every tick sends the same number of records.
        bursts = max(int(self.rate * self.latency_seconds) // LATENCY_BURST, 1)
        return bursts * LATENCY_BURST

    def value(self) -> bytes:
        """A produce/consume record's value: random, so no layer can compress it away."""
        return os.urandom(self.record_bytes)


class Session(abc.ABC):
    """One running system (its servers started): the three workloads, in order.

    `prepare_*` create the stream (untimed; the caller measures server CPU only around the
    workload calls). `consume` reads what `produce` wrote.
    """

    server_pids: list[int]

    @abc.abstractmethod
    def prepare_produce(self) -> None: ...

    @abc.abstractmethod
    def produce(self, workload: Workload) -> dict[str, Any]: ...

    @abc.abstractmethod
    def consume(self, workload: Workload) -> dict[str, Any]: ...

    @abc.abstractmethod
    def prepare_latency(self) -> None: ...

    @abc.abstractmethod
    def latency(self, workload: Workload) -> dict[str, Any]: ...


class System(abc.ABC):
    """A system under test: how to start it, and what it promises about durability."""

    name: str
    # What an acknowledged record survives, in words (the row's `durability`).
    durability: str
    # The pybroker system a peer is compared with (None for pybroker's own systems).
    compared_with: str | None = None
    # The workloads it runs, in `WORKLOADS` order (consume reads what produce wrote, so a system
    # that consumes also produces); a variant of another system may run only what differs.
    workloads: tuple[str, ...] = WORKLOADS

    @abc.abstractmethod
    def missing(self) -> str | None:
        """Why this system cannot run here (a client or server not installed), else None."""

    @abc.abstractmethod
    def running(self) -> contextlib.AbstractContextManager[Session]:
        """Start the servers; yield a session; stop them (also on errors)."""


def throughput_result(
    phase: str, records: int, record_bytes: int, wall_s: float, cpu_s: float
) -> dict[str, Any]:
    """records, seconds, records/s, MB/s and client CPU of a timed produce or consume."""
    return _rates(phase, records, record_bytes, wall_s, cpu_s)


@contextlib.contextmanager
def server_cpu(result: dict[str, Any], pids: list[int]) -> Iterator[None]:
    """Adds `server_cpu_seconds` (the servers' CPU time during the block) to `result`, which the
    block fills in; nothing when a pid's CPU time cannot be read."""
    before = _cpu_total(pids)
    yield
    after = _cpu_total(pids)
    if before is not None and after is not None:
        result["server_cpu_seconds"] = round(after - before, 3)


class ClientClock:
    """Wall-clock and CPU time of this process over a timed region."""

    def __init__(self) -> None:
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) since construction."""
        return time.perf_counter() - self.wall_start, time.process_time() - self.cpu_start


def pacing(rate: int) -> float:
    """Seconds between two bursts of `LATENCY_BURST` records at `rate` records/s."""
    return LATENCY_BURST / rate


class LatencyRecorder:
    """Stamps values with their send time and collects each one's end-to-end latency."""

    def __init__(self, record_bytes: int) -> None:
        self.padding = b"\0" * max(record_bytes - _STAMP.size, 0)
        self.latencies_ns: list[int] = []

    def stamped(self) -> bytes:
        """A value stamped now: call it right before the send."""
        return _STAMP.pack(time.time_ns()) + self.padding

    def received(self, values: list[bytes]) -> None:
        """Records the latency of values just received."""
        now = time.time_ns()
        unpack = _STAMP.unpack_from
        self.latencies_ns += [now - unpack(value)[0] for value in values]

    def result(self, rate: int, wall_s: float, cpu_s: float) -> dict[str, Any]:
        """The latency percentiles (ms) and the client's CPU over the phase."""
        return latency_summary(self.latencies_ns, rate, wall_s, cpu_s)


def latency_summary(
    latencies_ns: list[int], rate: int, wall_s: float, cpu_s: float
) -> dict[str, Any]:
    """p50/p99/p999/max in ms (nearest rank) of `latencies_ns`, with the phase's figures."""
    values = sorted(latencies_ns)
    if not values:
        raise ValueError("the latency phase received no record: nothing to summarise")

    def ms(q: float) -> float:
        return round(_quantile(values, q) / 1e6, 3)

    return {
        "records": len(values),
        "seconds": round(wall_s, 3),
        "rate_records_per_s": rate,
        "records_per_s": round(len(values) / wall_s) if wall_s > 0 else None,
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": round(values[-1] / 1e6, 3),
        "client_cpu_seconds": round(cpu_s, 3),
    }
