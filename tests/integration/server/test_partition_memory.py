"""What a partition costs a real `broker serve` in memory stays small next to the broker itself:
a regression that holds megabytes per partition (a touched full-size index mapping, a buffer or
cache per log, a per-partition metrics child) fails here long before 1,000 partitions would pass
the 200 MB target of docs/performance.md ("Memory"); benchmarks/memory.py measures the figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from client import AdminClient, Producer
from tests.integration.server.conftest import StartProcess

PARTITIONS = 200
# 200 partitions must cost less than this share of the broker's own resident size before them
# (about 50 MB: the interpreter, the code and the internal topics). Measured: about 30 KiB per
# partition, i.e. 6 MB, 11% of it; the bound (about 130 KiB per partition) would still keep a
# broker with 1,000 partitions under 200 MB.
GROWTH_SHARE_MAX = 0.5

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/status")


def rss_kb(pid: int) -> int:
    """Resident set size (anonymous and file-backed pages, mapped index pages included)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no VmRSS")


def create_and_touch(bootstrap: str, topic: str, partitions: int) -> None:
    """A topic whose every partition has one acknowledged record: each log holds a segment with
    its index files mapped and written."""
    with AdminClient(bootstrap) as admin:
        admin.create_topic(topic, partitions)
    with Producer(bootstrap, acks="all") as producer:
        for partition in range(partitions):
            producer.send(topic, b"x" * 100, partition=partition)
        producer.flush()


def test_partition_memory_is_small_next_to_the_broker(broker_process: StartProcess) -> None:
    process = broker_process()
    assert process.process is not None
    host, port = process.listen
    bootstrap = f"{host}:{port}"
    # A first small topic loads every code path a partition uses (lazy imports, the producer
    # path, caches), so the baseline holds the broker's fixed cost and not first-use costs.
    create_and_touch(bootstrap, "warm-up", 10)
    baseline_kb = rss_kb(process.process.pid)
    create_and_touch(bootstrap, "many", PARTITIONS)
    growth_kb = rss_kb(process.process.pid) - baseline_kb
    per_partition_kb = growth_kb / PARTITIONS
    assert growth_kb < GROWTH_SHARE_MAX * baseline_kb, (
        f"{PARTITIONS} partitions grew the broker by {growth_kb} KiB "
        f"({per_partition_kb:.1f} KiB each) from {baseline_kb} KiB: more than "
        f"{GROWTH_SHARE_MAX:.0%} of the broker's own size"
    )
