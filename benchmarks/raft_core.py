"""Benchmark: committed Raft entries per CPU-second for a 3-node group stepped in memory.

Workload: the leader takes `proposals_per_round` client batches (one record of `record_bytes` each,
built once up front, as a producer would send them), then every node handles its Readys
synchronously (MemoryStorage append, no fsync) and messages are delivered in memory until the group
is quiet; repeat. Each Ready therefore carries many entries per AppendRequest (batching). The
number reported is entries committed AND applied on the leader per CPU-second (time.process_time)
of the whole group, i.e. all three cores and the in-memory transport on one CPU.

Run: python -m benchmarks.raft_core [--rounds N] [--batch K]
(writes benchmarks/results/raft_core.json)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from broker.raft.config import RaftConfig
from broker.raft.core import RaftCore, Role
from broker.raft.messages import Configuration, Message
from broker.raft.storage import MemoryStorage
from wire import batch as batch_codec

TARGET_ENTRIES_PER_SECOND = 50_000


class Group:
    def __init__(self, node_count: int) -> None:
        configuration = Configuration.of(range(1, node_count + 1))
        self.storages = {n: MemoryStorage(configuration) for n in configuration.voters}
        self.cores = {
            n: RaftCore(
                node_id=n, storage=self.storages[n], config=RaftConfig(), rng=random.Random(n)
            )
            for n in configuration.voters
        }
        self.applied = 0

    def handle_readys(self) -> list[Message]:
        messages: list[Message] = []
        for node_id, core in self.cores.items():
            if not core.has_ready():
                continue
            ready = core.ready()
            storage = self.storages[node_id]
            storage.append(ready.entries)
            if ready.hard_state is not None:
                storage.set_hard_state(ready.hard_state)
            messages += ready.messages
            if node_id == 1:
                self.applied += len(ready.committed_entries)
            core.advance(ready)
            core.persisted(ready.last_index, ready.last_term)
        return messages

    def stabilize(self) -> None:
        while True:
            messages = self.handle_readys()
            if not messages:
                if not any(core.has_ready() for core in self.cores.values()):
                    return
                continue
            for message in messages:
                self.cores[message.target].step(message)


def run(rounds: int, proposals_per_round: int, record_bytes: int) -> dict[str, object]:
    group = Group(3)
    leader = group.cores[1]
    leader.campaign()
    group.stabilize()
    assert leader.role is Role.LEADER
    payload = b"x" * record_bytes
    batches = [
        batch_codec.build_batch([(1_700_000_000_000, None, payload, None)])
        for _ in range(proposals_per_round)
    ]
    applied_before = group.applied
    started = time.process_time()
    for _ in range(rounds):
        for data in batches:
            leader.propose(data)
        group.stabilize()
    elapsed = time.process_time() - started
    committed = group.applied - applied_before
    assert committed == rounds * proposals_per_round, (committed, rounds * proposals_per_round)
    rate = committed / elapsed
    return {
        "benchmark": "raft_core",
        "nodes": 3,
        "rounds": rounds,
        "proposals_per_round": proposals_per_round,
        "record_bytes": record_bytes,
        "batch_bytes": len(batches[0]),
        "committed_entries": committed,
        "cpu_seconds": round(elapsed, 4),
        "committed_entries_per_cpu_second": round(rate),
        "target_entries_per_cpu_second": TARGET_ENTRIES_PER_SECOND,
        "meets_target": rate >= TARGET_ENTRIES_PER_SECOND,
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256, help="proposals per round")
    parser.add_argument("--record-bytes", type=int, default=100)
    parser.add_argument("--output", default="benchmarks/results/raft_core.json")
    arguments = parser.parse_args()
    result = run(arguments.rounds, arguments.batch, arguments.record_bytes)
    print(
        f"raft_core: 3 nodes in memory, {arguments.rounds} rounds x {arguments.batch} proposals "
        f"of one {arguments.record_bytes}-byte record ({result['batch_bytes']}-byte batches)"
    )
    print(
        f"  committed {result['committed_entries']} entries in {result['cpu_seconds']} CPU-s: "
        f"{result['committed_entries_per_cpu_second']:,} entries/CPU-s "
        f"(target {TARGET_ENTRIES_PER_SECOND:,}: {'met' if result['meets_target'] else 'MISSED'})"
    )
    output = pathlib.Path(arguments.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {output}")


if __name__ == "__main__":
    main()
