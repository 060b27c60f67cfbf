"""LogRaftStorage answers exactly as MemoryStorage does, survives reopening, and runs a real group.

The first test drives both storages with the same random driver operations (appends with
truncation, hard states, snapshots, compaction) and compares every read after every step, and
after reopening the disk-backed one from its files. The second runs three Raft cores on partition
logs and LMDB, restarts one from disk, and checks it rejoins with its log intact.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from broker.config import LogConfig
from broker.kvstore import KvStore
from broker.log.log import PartitionLog
from broker.raft.config import RaftConfig
from broker.raft.core import RaftCore, Role
from broker.raft.log_storage import COMMIT_INDEX_SAVE_INTERVAL_S, LogRaftStorage
from broker.raft.messages import Configuration, Entry, HardState, Snapshot, assign_entry
from broker.raft.storage import CompactedError, MemoryStorage, UnavailableError
from tests.log_reading import log_bytes
from wire import batch as batch_codec

CONFIG = Configuration.of([1, 2, 3])
SMALL_LOG = LogConfig(segment_bytes=2048, max_batch_bytes=1024, index_interval_bytes=128)


def _entries(rng: random.Random, base: int, term: int, count: int) -> list[Entry]:
    entries = []
    for _ in range(count):
        records = [(1_000, None, b"v" * rng.randint(1, 60), None) for _ in range(rng.randint(1, 4))]
        entry = assign_entry(batch_codec.build_batch(records), base_index=base, term=term)
        if rng.random() < 0.1:
            other = Configuration.of([1, 2, 3], [4]) if rng.random() < 0.5 else CONFIG
            control = batch_codec.build_control_batch(
                batch_codec.ControlType.RAFT_CONFIGURATION, other.encode(), timestamp_ms=1_000
            )
            entry = assign_entry(control, base_index=base, term=term)
        entries.append(entry)
        base = entry.index + 1
    return entries


def _reads(storage: LogRaftStorage | MemoryStorage) -> tuple[object, ...]:
    first, last = storage.first_index(), storage.last_index()
    terms = []
    for index in range(first - 1, last + 2):
        try:
            terms.append(storage.term(index))
        except (CompactedError, UnavailableError) as exc:
            terms.append(type(exc).__name__)
    spans = [
        [
            (entry.base_index, entry.index, entry.term, entry.data)
            for entry in storage.entries(low, last + 1, 300)
        ]
        for low in range(first, last + 1, 7)
    ]
    return first, last, terms, spans, storage.initial_state(), storage.snapshot()


@pytest.mark.parametrize("seed", range(8))
def test_log_storage_matches_memory_storage(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = KvStore.open(tmp_path / "meta")
    log = PartitionLog.open(tmp_path / "log", SMALL_LOG)
    disk = LogRaftStorage(log, store, "t-0", CONFIG)
    memory = MemoryStorage(CONFIG)
    term = 1
    for step in range(60):
        action = rng.random()
        if action < 0.6:
            # Append at the end or over a suffix, as a follower does after a conflict.
            start = rng.randint(memory.first_index(), memory.last_index() + 1)
            if start <= memory.last_index():
                start = next(
                    (e.base_index for e in memory.all_entries if e.base_index >= start),
                    memory.last_index() + 1,
                )
            term += rng.random() < 0.3
            new = _entries(rng, start, term, rng.randint(1, 5))
            memory.append(new)
            disk.append(new)
        elif action < 0.75:
            state = HardState(
                term=term, vote=rng.choice([0, 1, 2]), commit_index=memory.last_index()
            )
            memory.set_hard_state(state)
            disk.set_hard_state(state)
        elif action < 0.85 and memory.all_entries:
            # Compaction at an entry boundary (retention), keeping its term.
            entry = rng.choice(list(memory.all_entries))
            memory.compact(entry.index)
            disk.compact_to(entry.index, entry.term)
            # Retention on the real log deletes segments; the storage answers the same either way.
        elif action < 0.9:
            snapshot = Snapshot(memory.last_index() + rng.randint(1, 50), term, CONFIG)
            memory.apply_snapshot(snapshot)
            disk.apply_snapshot(snapshot)
        else:
            log.close(clean=rng.random() < 0.5)
            log = PartitionLog.open(tmp_path / "log", SMALL_LOG)
            disk = LogRaftStorage(log, store, "t-0", CONFIG)
        assert _reads(disk) == _reads(memory), f"seed {seed} step {step}"
    log.close()
    store.close()


def _drive(cores: dict[int, RaftCore], storages: dict[int, LogRaftStorage], rounds: int) -> None:
    """Deliver Readys and messages until quiet: persist, fsync, then send (the driver contract)."""
    for _ in range(rounds):
        messages = []
        for node_id, core in cores.items():
            if not core.has_ready():
                continue
            ready = core.ready()
            storage = storages[node_id]
            if ready.snapshot is not None:
                storage.apply_snapshot(ready.snapshot)
            storage.append(ready.entries)
            if ready.hard_state is not None:
                storage.set_hard_state(ready.hard_state)
            storage.log.flush()
            messages += ready.messages
            core.advance(ready)
            core.persisted(ready.last_index, ready.last_term)
        if not messages and not any(core.has_ready() for core in cores.values()):
            return
        for message in messages:
            if message.target in cores:
                cores[message.target].step(message)
    raise AssertionError("the group did not settle")


def test_three_cores_on_partition_logs_commit_and_restart(tmp_path: Path) -> None:
    store = KvStore.open(tmp_path / "meta")

    def open_node(node_id: int) -> tuple[RaftCore, LogRaftStorage]:
        log = PartitionLog.open(tmp_path / f"node{node_id}", SMALL_LOG)
        storage = LogRaftStorage(log, store, f"node{node_id}/t-0", CONFIG)
        core = RaftCore(
            node_id=node_id, storage=storage, config=RaftConfig(), rng=random.Random(node_id)
        )
        return core, storage

    nodes = {node_id: open_node(node_id) for node_id in (1, 2, 3)}
    cores = {node_id: pair[0] for node_id, pair in nodes.items()}
    storages = {node_id: pair[1] for node_id, pair in nodes.items()}
    cores[1].campaign()
    _drive(cores, storages, 200)
    assert cores[1].role is Role.LEADER
    for number in range(30):
        cores[1].propose(batch_codec.build_batch([(1_000, None, b"record-%d" % number, None)]))
        _drive(cores, storages, 200)
    leader_log = storages[1].log
    assert leader_log.segment_count > 1  # the byte comparison below must span segments
    assert cores[1].statistics().commit_index == leader_log.log_end_offset - 1
    # Node 3 crashes (no clean close) and comes back from its files alone.
    storages[3].log.close(clean=False)
    cores[3], storages[3] = open_node(3)
    assert storages[3].log.log_end_offset == leader_log.log_end_offset
    for number in range(5):
        cores[1].propose(batch_codec.build_batch([(1_000, None, b"late-%d" % number, None)]))
        _drive(cores, storages, 200)
    for node_id in (2, 3):
        follower = storages[node_id].log
        assert follower.log_end_offset == leader_log.log_end_offset
        assert log_bytes(follower) == log_bytes(leader_log)
    for storage in storages.values():
        storage.log.close()
    store.close()


def test_a_lazy_commit_index_is_written_at_most_once_an_interval(tmp_path: Path) -> None:
    """A partition's commit index alone reaches LMDB at most once per
    COMMIT_INDEX_SAVE_INTERVAL_S (one LMDB write transaction per Raft round otherwise); a term
    or vote change writes it at once, and so does `save_commit_index` (a clean stop). A
    storage opened from the same files reads what was written."""
    now = [100.0]
    log = PartitionLog.open(tmp_path / "log", SMALL_LOG)
    store = KvStore.open(tmp_path / "meta")

    def reopened_hard_state() -> HardState:
        return LogRaftStorage(log, store, "g", CONFIG).hard_state

    storage = LogRaftStorage(log, store, "g", CONFIG, lazy_commit_index=True, clock=lambda: now[0])
    storage.set_hard_state(HardState(term=1, vote=1, commit_index=-1))
    assert reopened_hard_state() == HardState(1, 1, -1)
    storage.set_hard_state(HardState(term=1, vote=1, commit_index=3))  # within the interval
    storage.set_hard_state(HardState(term=1, vote=1, commit_index=5))
    assert storage.hard_state == HardState(1, 1, 5)  # the core's view is current
    assert reopened_hard_state() == HardState(1, 1, -1)
    now[0] += COMMIT_INDEX_SAVE_INTERVAL_S
    storage.set_hard_state(HardState(term=1, vote=1, commit_index=6))
    assert reopened_hard_state() == HardState(1, 1, 6)
    storage.set_hard_state(HardState(term=1, vote=1, commit_index=7))
    assert reopened_hard_state() == HardState(1, 1, 6)
    storage.set_hard_state(HardState(term=2, vote=3, commit_index=7))  # a vote: at once
    assert storage.hard_state_unsynced
    assert reopened_hard_state() == HardState(2, 3, 7)
    storage.set_hard_state(HardState(term=2, vote=3, commit_index=9))
    assert reopened_hard_state() == HardState(2, 3, 7)
    storage.save_commit_index()
    assert reopened_hard_state() == HardState(2, 3, 9)
    # Without laziness (a state machine group) every change is written.
    eager = LogRaftStorage(log, store, "g", CONFIG, clock=lambda: now[0])
    eager.set_hard_state(HardState(term=2, vote=3, commit_index=10))
    assert reopened_hard_state() == HardState(2, 3, 10)
    log.close()
    store.close()
