"""Goal: under seeded faults the transaction coordinator keeps Kafka's promises.

A seeded random driver plays producers of two transactional ids (one starts near the epoch's end,
so epochs run out and producer ids rotate), zombies that keep using old pairs, retries after lost
responses, coordinator failovers in every state (the partition keeps only what was persisted, plus
sometimes writes that were persisted but never reported), failed appends, lost or partial marker
deliveries, and time jumps past the transaction timeout. After every step:
- the core's store is exactly the replay of the partition;
- a transaction's outcome never changes once its Prepare* is in the partition, and agrees with
  every client answer (committed, aborted, TRANSACTION_ABORTED) and every marker written;
- partitions a client was told were added are in the transaction's Prepare* record;
- an id's epoch never decreases (a new producer id only when the epoch ran out);
- no two producer instances are ever handed the same (producer id, epoch);
- every request is answered at most once;
- an add that arrives while its id's transaction is completing (Prepare*) and is not refused at
  once is parked: it is answered only after that transaction's Complete* is in the partition (or
  NOT_COORDINATOR when the partition is unloaded), with the answer a second coordinator loaded
  from the partition as it was then gives to the same request (a sequential execution), or the
  error of its own failed write.
A final liveness phase (no faults) must answer every request, complete every transaction and
leave a marker with the right outcome on every partition of every decided transaction.
A failure prints its seed; `TXN_SEED=N` runs that seed alone (`TXN_THOROUGH=1`: 2000 seeds).
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest

from broker.consumer_groups.group import TopicPartition
from broker.transactions.txn_actions import (
    RespondAddOffsets,
    RespondAddPartitions,
    RespondEndTxn,
    RespondInitProducerId,
    Response,
    WriteMarkers,
)
from broker.transactions.txn_events import UnloadPartition
from broker.transactions.txn_records import (
    PRODUCER_EPOCH_MAX,
    EpochBump,
    TransactionState,
    decode_record,
    replay,
)
from wire.error_codes import ErrorCode

from .coordinator_harness import THOROUGH, TIMEOUT_MS, TxnHarness, fast_config, seeded_record, tp

SEEDS = 2_000 if THOROUGH else 120
STEPS = 600 if THOROUGH else 250
PARTITIONS = (tp("a", 0), tp("a", 1), tp("b", 0))
OFFSETS = tp("__consumer_offsets", 3)
IDS = ("t0", "t1")
Pair = tuple[int, int]


@dataclasses.dataclass
class Instance:
    """One producer process of a transactional id; older ones are zombies that keep trying."""

    transactional_id: str
    number: int
    pair: Pair | None = None
    waiting: int | None = None  # the request in flight (one at a time, like a real client)
    previous: Pair | None = None  # the pair of its last EndTxn or init, for retries
    previous_commit: bool = True


class Simulation:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.config = fast_config()
        self.epoch = 1
        # "t1" starts six bumps before its epoch runs out, so producer ids rotate.
        records = (seeded_record("t1", producer_epoch=PRODUCER_EPOCH_MAX - 6),)
        self.h = TxnHarness(self.config, records=records, auto=False)
        self.seen = 0
        self.instances: list[Instance] = []
        self.requests: dict[int, tuple[Instance, str, Pair | None, object]] = {}
        self.answered: set[int] = set()
        # What clients were told and what partitions hold, checked against the partition's log.
        self.told: dict[tuple[str, Pair], bool] = {}  # (id, pair of the txn) -> committed
        self.acked: dict[tuple[str, Pair], set[TopicPartition]] = {}
        self.owners: dict[tuple[str, Pair], int] = {}  # pair handed out -> instance number
        self.markers: dict[TopicPartition, list[tuple[str, int, int, bool]]] = {}
        # From the log: outcome and partitions of each decided transaction, the id's pairs.
        self.outcomes: dict[tuple[str, Pair], bool] = {}
        self.decided_partitions: dict[tuple[str, Pair], tuple[TopicPartition, ...]] = {}
        self.latest: dict[str, Pair] = {}
        self.producer_ids: dict[int, str] = {}
        self.log_read = 0
        # Parked adds: request id -> its id; and the answer a sequential execution gives them,
        # known once the transaction they wait for has its Complete* in the partition.
        self.parked: dict[int, str] = {}
        self.sequential: dict[int, ErrorCode] = {}
        self.unloading = False

    # --- clients ----------------------------------------------------------------------------------

    def idle_instance(self) -> Instance | None:
        idle = [i for i in self.instances if i.waiting is None and i.pair is not None]
        return self.rng.choice(idle) if idle else None

    def send(self, instance: Instance, kind: str, pair: Pair | None, extra: object, call) -> None:
        rid = self.h.next_request_id
        self.requests[rid] = (instance, kind, pair, extra)
        instance.waiting = rid
        before = self.h.core.store.get(instance.transactional_id)
        assert call() == rid
        self.absorb()
        completing = before is not None and before.state.is_prepare
        if kind == "add" and completing and rid not in self.answered:
            # Parked: only the pair the EndTxn of the completing transaction handed out.
            assert before is not None and before.last_bump is EpochBump.END, before
            assert pair == (before.producer_id, before.producer_epoch), (pair, before)
            self.parked[rid] = instance.transactional_id

    def new_instance(self) -> None:
        transactional_id = self.rng.choice(IDS)
        instance = Instance(transactional_id, len(self.instances))
        self.instances.append(instance)
        self.send(instance, "init", None, None, lambda: self.h.init(transactional_id))

    def client_step(self) -> None:
        instance = self.idle_instance()
        if instance is None:
            return self.new_instance()
        assert instance.pair is not None
        tid, pair = instance.transactional_id, instance.pair
        roll = self.rng.random()
        if roll < 0.35:
            parts = tuple(sorted(self.rng.sample(PARTITIONS, self.rng.randint(1, 2))))
            self.send(
                instance, "add", pair, parts, lambda: self.h.add(pair, *parts, transactional_id=tid)
            )
        elif roll < 0.45:
            self.send(
                instance,
                "add",
                pair,
                (OFFSETS,),
                lambda: self.h.add_offsets(pair, transactional_id=tid),
            )
        elif roll < 0.75:
            commit = self.rng.random() < 0.6
            instance.previous, instance.previous_commit = pair, commit
            self.send(
                instance,
                "end",
                pair,
                commit,
                lambda: self.h.end(pair, commit, transactional_id=tid),
            )
        elif roll < 0.85 and instance.previous is not None:
            # A retry of the last EndTxn with the pair it was sent with (its answer was lost).
            old, commit = instance.previous, instance.previous_commit
            self.send(
                instance, "end", old, commit, lambda: self.h.end(old, commit, transactional_id=tid)
            )
        else:
            # KIP-360 recovery with the instance's pair.
            instance.previous = pair
            self.send(
                instance,
                "init",
                pair,
                None,
                lambda: self.h.init(tid, pair[0], pair[1]),
            )
        return None

    # --- responses --------------------------------------------------------------------------------

    def absorb(self) -> None:
        while self.seen < len(self.h.arrivals):
            response = self.h.arrivals[self.seen]
            self.seen += 1
            self.deliver(response)

    def deliver(self, response: Response) -> None:
        assert response.request_id not in self.answered, f"answered twice: {response}"
        self.answered.add(response.request_id)
        instance, kind, pair, extra = self.requests[response.request_id]
        instance.waiting = None
        tid = instance.transactional_id
        error = response.error
        if response.request_id in self.parked:
            expected = self.sequential.get(response.request_id)
            if expected is None:
                assert self.unloading and error is ErrorCode.NOT_COORDINATOR, (
                    f"parked {response} answered before its transaction's Complete*"
                )
            else:
                write_failed = error in (
                    ErrorCode.COORDINATOR_NOT_AVAILABLE,
                    ErrorCode.NOT_COORDINATOR,
                )
                assert error is expected or (expected is ErrorCode.NONE and write_failed), (
                    f"parked {response}: a sequential execution answers {expected.name}"
                )
        if isinstance(response, RespondInitProducerId | RespondEndTxn) and error is ErrorCode.NONE:
            handed = (response.producer_id, response.producer_epoch)
            owner = self.owners.setdefault((tid, handed), instance.number)
            assert owner == instance.number, (
                f"{handed} handed to instances {owner} and {instance.number}"
            )
            assert handed[1] < PRODUCER_EPOCH_MAX, "nobody is handed the last epoch"
            instance.pair = handed
        if isinstance(response, RespondEndTxn) and error is ErrorCode.NONE:
            assert pair is not None
            assert self.told.setdefault((tid, pair), bool(extra)) == bool(extra)
        if (
            isinstance(response, RespondAddPartitions | RespondAddOffsets)
            and error is ErrorCode.NONE
        ):
            assert pair is not None and isinstance(extra, tuple)
            self.acked.setdefault((tid, pair), set()).update(extra)
        if error is ErrorCode.TRANSACTION_ABORTED:
            assert pair is not None and kind in ("add", "end")
            assert self.told.setdefault((tid, pair), False) is False, "told committed, then aborted"

    # --- the shell's faults -----------------------------------------------------------------------

    def persist(self) -> None:
        if self.h.pending:
            persisted = len(self.h.log)
            self.h.persist_next()
            for encoded in self.h.log[persisted:]:
                record = decode_record(encoded)
                if record.value is not None and record.value.state.is_complete:
                    self.run_sequentially(record.transactional_id)

    def run_sequentially(self, transactional_id: str) -> None:
        """The answers the adds parked on `transactional_id` get from a second coordinator
        loaded from the partition as it is now (just after the Complete*), sent one by one in
        arrival order: what they would get had they arrived now."""
        waiting = [
            rid
            for rid, tid in self.parked.items()
            if tid == transactional_id and rid not in self.sequential and rid not in self.answered
        ]
        if not waiting:
            return
        oracle = TxnHarness(
            self.config, records=tuple(self.h.log), now_ms=self.h.now_ms, epoch=self.epoch
        )
        for rid in waiting:
            _, _, pair, extra = self.requests[rid]
            assert pair is not None and isinstance(extra, tuple)
            if extra == (OFFSETS,):
                asked = oracle.add_offsets(pair, transactional_id=transactional_id)
            else:
                asked = oracle.add(pair, *extra, transactional_id=transactional_id)
            self.sequential[rid] = oracle.error(asked)

    def fail_append(self) -> None:
        if self.h.pending:
            self.h.fail_next(
                self.rng.choice([ErrorCode.COORDINATOR_NOT_AVAILABLE, ErrorCode.NOT_COORDINATOR])
            )

    def write_markers(self, partial: bool) -> None:
        if not self.h.markers:
            return
        index = self.rng.randrange(len(self.h.markers))
        markers = self.h.markers[index]
        targets = markers.partitions
        if partial:
            targets = tuple(p for p in targets if self.rng.random() < 0.5)
        self.land(markers, targets)
        if partial:
            self.h.markers_failed(index)
        else:
            self.h.markers_written(index)

    def land(self, markers: WriteMarkers, partitions: tuple[TopicPartition, ...]) -> None:
        """The markers reach `partitions` (whoever delivered them, whenever)."""
        entry = (
            markers.transactional_id,
            markers.producer_id,
            markers.producer_epoch,
            markers.commit,
        )
        for partition in partitions:
            self.markers.setdefault(partition, []).append(entry)

    def failover(self) -> None:
        """Leadership moves. The new leader has what was persisted, and maybe some writes that
        were replicated but never reported (an unknown outcome, which the shell answers by
        unloading). Deliveries of the old coordinator may still land, but report to nobody."""
        old = self.h
        landed = self.rng.randint(0, len(old.pending))
        for write in old.pending[:landed]:
            old.log.extend(write.records)
        for markers in old.markers:
            if self.rng.random() < 0.5:
                self.land(markers, markers.partitions)
        self.unloading = True
        old.handle(UnloadPartition(now_ms=old.now_ms))
        self.absorb()
        self.unloading = False
        self.epoch += 1
        successor = TxnHarness(
            self.config,
            records=tuple(old.log),
            now_ms=old.now_ms,
            epoch=self.epoch,
            next_producer_id=old.next_producer_id,
            auto=False,
        )
        successor.next_request_id = old.next_request_id
        successor.responses = old.responses
        self.h, self.seen = successor, 0
        assert self.h.core.store == replay(self.h.log)

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.40:
            self.client_step()
        elif roll < 0.47:
            self.new_instance()
        elif roll < 0.65:
            self.persist()
        elif roll < 0.69:
            self.fail_append()
        elif roll < 0.79:
            self.write_markers(partial=False)
        elif roll < 0.84:
            self.write_markers(partial=True)
        elif roll < 0.95:
            self.h.tick(self.rng.choice([10, 50, 100, 1_000, TIMEOUT_MS // 2, TIMEOUT_MS + 100]))
        else:
            self.failover()
        self.absorb()
        self.check()

    # --- invariants -------------------------------------------------------------------------------

    def check(self) -> None:
        assert self.h.core.store == replay(self.h.log), "store != replay(log)"
        self.read_new_log_records()
        for key, committed in self.told.items():
            assert key in self.outcomes, f"client told about {key}, which is not in the log"
            assert self.outcomes[key] == committed, f"{key}: told {committed}, log says otherwise"
        for key, partitions in self.acked.items():
            if key in self.decided_partitions:
                assert partitions <= set(self.decided_partitions[key]), (key, partitions)
        for entries in self.markers.values():
            for tid, producer_id, epoch, commit in entries:
                assert self.outcomes[(tid, (producer_id, epoch - 1))] == commit, "marker disagrees"

    def read_new_log_records(self) -> None:
        for encoded in self.h.log[self.log_read :]:
            record = decode_record(encoded)
            tid, meta = record.transactional_id, record.value
            if meta is None:
                self.latest.pop(tid, None)
                continue
            pair = (meta.producer_id, meta.producer_epoch)
            before = self.latest.get(tid)
            if before is not None and pair[0] == before[0]:
                assert pair[1] >= before[1], f"{tid}: epoch went back from {before} to {pair}"
            elif before is not None:
                assert pair[1] == 0 and before[1] >= PRODUCER_EPOCH_MAX - 1, (before, pair)
            assert self.producer_ids.setdefault(pair[0], tid) == tid, "a producer id for two ids"
            self.latest[tid] = pair
            if meta.state.is_prepare or meta.state.is_complete:
                key = (tid, (meta.last_producer_id, meta.last_producer_epoch))
                outcome = self.outcomes.setdefault(key, meta.state.committed)
                assert outcome == meta.state.committed, f"{key}: the outcome changed"
                if meta.state.is_prepare:
                    self.decided_partitions[key] = meta.partitions
        self.log_read = len(self.h.log)

    # --- liveness ---------------------------------------------------------------------------------

    def settle(self) -> None:
        """No more faults: every write persists, every delivery succeeds, time passes."""
        for _ in range(200):
            if self.h.pending:
                self.persist()
            elif self.h.markers:
                self.write_markers(partial=False)
            else:
                self.h.tick(TIMEOUT_MS + 100)
            self.absorb()
            self.check()
            busy = any(
                m.state.is_prepare or m.state is TransactionState.ONGOING
                for m in self.h.core.store.metadata.values()
            )
            if not busy and not self.h.pending and not self.h.markers:
                break
        assert not self.h.pending and not self.h.markers
        unanswered = sorted(set(self.requests) - self.answered)
        assert not unanswered, f"never answered: {unanswered}"
        for key, partitions in self.decided_partitions.items():
            tid, (producer_id, epoch) = key
            for partition in partitions:
                wanted = (tid, producer_id, epoch + 1, self.outcomes[key])
                assert wanted in self.markers.get(partition, []), f"{partition} lacks {wanted}"


def run(seed: int) -> Simulation:
    simulation = Simulation(seed)
    try:
        for _ in range(STEPS):
            simulation.step()
        simulation.settle()
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nreproduce: TXN_SEED={seed} .venv/bin/pytest "
            "tests/unit/transactions/test_coordinator_simulation.py"
        ) from exc
    return simulation


def _seeds() -> list[int]:
    pinned = os.environ.get("TXN_SEED")
    return [int(pinned)] if pinned else list(range(SEEDS))


@pytest.mark.parametrize("seed", _seeds())
def test_simulation(seed: int) -> None:
    run(seed)


def test_the_simulation_reaches_every_state_and_fault() -> None:
    """The driver is only worth its invariants if it gets everywhere: count what a few seeds saw."""
    seen: set[str] = set()
    for seed in range(20):
        simulation = run(seed)
        for encoded in simulation.h.log:
            record = decode_record(encoded)
            if record.value is not None:
                seen.add(record.value.state.value)
                seen.add(record.value.last_bump.value)
                if record.value.producer_id != 7 and record.transactional_id == "t1":
                    seen.add("rotated")
        seen.update(response.error.name for response in simulation.h.responses.values())
        if simulation.sequential:
            seen.add("parked")
    for wanted in [s.value for s in TransactionState] + [
        "end", "timeout", "fence", "recover", "rotated", "PRODUCER_FENCED", "TRANSACTION_ABORTED",
        "CONCURRENT_TRANSACTIONS", "INVALID_TXN_STATE", "NOT_COORDINATOR", "parked",
    ]:  # fmt: skip
        assert wanted in seen, f"no seed reached {wanted}"
