"""Goal: a real log's producer state equals one rebuilt from its batches, whatever happens to it.

Model producers (several producer ids, epoch bumps, transactions ended by COMMIT/ABORT markers
with and without the KIP-890 bump, retries of any earlier batch, sends with sequence gaps) drive a
PartitionLog with tiny segments (snapshots at every roll) through leader appends and follower
copies, follower truncations above the high watermark, and restarts clean, unclean and with a torn
tail. After every step the state equals a from-scratch rebuild; retries are duplicates exactly when
the original is among the producer's last five batches in the log; the last stable offset and the
aborted ranges equal a brute-force reading of the log.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.log.log import PartitionLog
from broker.transactions.producer_state import (
    MAX_CACHED_BATCHES,
    Duplicate,
    Marker,
    increment_sequence,
    is_marker,
    marker_of,
)
from wire.batch import BatchHeader, iter_batches, unpack_header
from wire.error_codes import BrokerError, ErrorCode

from .conftest import PROFILE
from .helpers import small_config, with_offset_and_epoch
from .producer_helpers import marker_batch, producer_batch, same_state

PIDS = st.sampled_from([1, 2, 3])


@dataclasses.dataclass
class ModelProducer:
    epoch: int = 0
    next_seq: int = 0
    in_txn: bool = False
    sent: list[tuple[int, int, int, bool]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Reading:
    """What the log says, computed the plain way from every batch in order."""

    epochs: dict[int, int] = dataclasses.field(default_factory=dict)
    recent: dict[int, list[tuple[int, int, int, int]]] = dataclasses.field(default_factory=dict)
    open_first: dict[int, int] = dataclasses.field(default_factory=dict)
    # (pid, first_offset, marker_offset or None, aborted)
    transactions: list[tuple[int, int, int | None, bool]] = dataclasses.field(default_factory=list)
    boundaries: list[int] = dataclasses.field(default_factory=list)


def read_log(log: PartitionLog) -> Reading:
    reading = Reading()
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        result = log.read(offset, 1 << 20)
        data = bytes(result.data)
        for position, header in iter_batches(data):
            reading.boundaries.append(header.base_offset)
            marker = marker_of(data, position, header) if is_marker(header) else None
            _apply(reading, header, marker)
        offset = result.next_offset
    reading.transactions += [(p, f, None, False) for p, f in reading.open_first.items()]
    return reading


def _apply(reading: Reading, header: BatchHeader, marker: Marker | None) -> None:
    pid = header.producer_id
    if pid < 0 or (header.is_control and marker is None):
        return
    current = reading.epochs.get(pid)
    if current is not None and header.producer_epoch < current:
        return
    if current is not None and header.producer_epoch > current:
        reading.recent[pid] = []
    reading.epochs[pid] = header.producer_epoch
    if marker is not None:
        first = reading.open_first.pop(pid, None)
        if first is not None:
            reading.transactions.append((pid, first, header.base_offset, not marker.commit))
        return
    last_seq = increment_sequence(header.base_sequence, header.last_offset_delta)
    recent = reading.recent.setdefault(pid, [])
    recent.append((header.base_sequence, last_seq, header.base_offset, header.last_offset))
    del recent[:-MAX_CACHED_BATCHES]
    if header.is_transactional:
        reading.open_first.setdefault(pid, header.base_offset)


class ProducerLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="producers-sm-"))
        self.config = small_config(segment_bytes=700)
        self.log = PartitionLog.open(self.root, self.config)
        self.producers = {pid: ModelProducer() for pid in (1, 2, 3)}
        self.high_watermark = 0
        self.term = 1

    def teardown(self) -> None:
        self.log.close(clean=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- writes ---------------------------------------------------------------------------------

    def _write(self, batch: bytes, *, replicated: bool) -> None:
        if replicated:  # a follower's copy: offsets and term assigned by "the leader"
            self.log.append_replicated(
                with_offset_and_epoch(batch, self.log.log_end_offset, self.term)
            )
        else:
            self.log.append(batch, leader_epoch=self.term)

    def _produce(self, batch: bytes, replicated: bool) -> Duplicate | BrokerError | None:
        try:
            duplicate = self.log.producers.check(unpack_header(batch), self.term)
        except BrokerError as exc:
            return exc
        if duplicate is None:
            self._write(batch, replicated=replicated)
        return duplicate

    @rule(pid=PIDS, count=st.integers(1, 4), txn=st.booleans(), replicated=st.booleans())
    def send(self, pid: int, count: int, txn: bool, replicated: bool) -> None:
        producer = self.producers[pid]
        txn = txn or producer.in_txn
        batch = producer_batch(pid, producer.epoch, producer.next_seq, count, txn=txn)
        outcome = self._produce(batch, replicated)
        note(f"send {pid} e{producer.epoch} s{producer.next_seq}+{count} txn={txn}: {outcome!r}")
        if outcome is None:
            producer.sent.append((producer.epoch, producer.next_seq, count, txn))
            producer.next_seq += count
            producer.in_txn = producer.in_txn or txn

    @rule(pid=PIDS, gap=st.integers(1, 3))
    def send_with_a_gap(self, pid: int, gap: int) -> None:
        producer = self.producers[pid]
        reading = read_log(self.log)
        known = reading.recent.get(pid)
        batch = producer_batch(pid, producer.epoch, producer.next_seq + gap, txn=producer.in_txn)
        if known and reading.epochs[pid] == producer.epoch and pid not in reading.open_first:
            expected = increment_sequence(known[-1][1], 1)
            if producer.next_seq + gap != expected:
                outcome = self._produce(batch, False)
                assert isinstance(outcome, BrokerError), outcome
                assert outcome.code is ErrorCode.OUT_OF_ORDER_SEQUENCE

    @rule(pid=PIDS, pick=st.integers(0, 1000), replicated=st.booleans())
    def retry(self, pid: int, pick: int, replicated: bool) -> None:
        producer = self.producers[pid]
        if not producer.sent:
            return
        epoch, seq, count, txn = producer.sent[pick % len(producer.sent)]
        reading = read_log(self.log)
        last_seq = increment_sequence(seq, count - 1)
        expected = None
        if reading.epochs.get(pid) == epoch:
            for first, last, base, last_offset in reading.recent.get(pid, []):
                if (first, last) == (seq, last_seq):
                    expected = Duplicate(base, last_offset)
                    break
        outcome = self._produce(producer_batch(pid, epoch, seq, count, txn=txn), replicated)
        note(f"retry {pid} e{epoch} s{seq}+{count}: {outcome!r}, expected {expected!r}")
        if expected is not None:
            assert outcome == expected
        else:
            assert not isinstance(outcome, Duplicate)

    @rule(pid=PIDS, commit=st.booleans(), bump=st.booleans(), replicated=st.booleans())
    def end_transaction(self, pid: int, commit: bool, bump: bool, replicated: bool) -> None:
        producer = self.producers[pid]
        if not producer.in_txn:
            return
        epoch = producer.epoch + (1 if bump else 0)
        self._write(marker_batch(pid, epoch, commit=commit), replicated=replicated)
        producer.in_txn = False
        if bump:
            producer.epoch, producer.next_seq = epoch, 0

    @rule(pid=PIDS)
    def new_epoch(self, pid: int) -> None:
        producer = self.producers[pid]
        if producer.in_txn:  # the coordinator aborts the open transaction with the bump
            self._write(marker_batch(pid, producer.epoch + 1, commit=False), replicated=False)
            producer.in_txn = False
        producer.epoch += 1
        producer.next_seq = 0

    @rule(records=st.integers(1, 3))
    def plain_batch(self, records: int) -> None:
        self._write(producer_batch(count=records), replicated=False)

    # --- the follower's and the process's troubles ----------------------------------------------

    def _resync(self) -> None:
        # What a real producer learns through errors and InitProducerId: here read off the log.
        reading = read_log(self.log)
        for pid, producer in self.producers.items():
            producer.in_txn = pid in reading.open_first

    @precondition(lambda self: self.log.log_end_offset > self.high_watermark)
    @rule(pick=st.integers(0, 1000))
    def truncate(self, pick: int) -> None:
        # A follower's divergent tail: never below the high watermark (committed stays).
        candidates = [b for b in read_log(self.log).boundaries if b >= self.high_watermark]
        if not candidates:
            return
        offset = candidates[pick % len(candidates)]
        note(f"truncate at {offset}")
        self.log.truncate(offset)
        self.term += 1
        self._resync()

    @rule(clean=st.booleans(), tear=st.booleans())
    def restart(self, clean: bool, tear: bool) -> None:
        boundaries = read_log(self.log).boundaries
        end = self.log.active.size_bytes  # the file may hold preallocated zeros after it
        self.log.close(clean=clean)
        active = sorted(self.root.glob("*.log"))[-1]
        if not clean and tear and end and boundaries and boundaries[-1] >= self.high_watermark:
            with active.open("r+b") as handle:  # a torn write of the last batch
                handle.truncate(end - 3)
        self.log = PartitionLog.open(self.root, self.config)
        note(f"restart clean={clean} tear={tear}: end {self.log.log_end_offset}")
        self._resync()

    @rule(advance=st.integers(0, 20), start=st.integers(0, 1000), length=st.integers(0, 60))
    def read_committed(self, advance: int, start: int, length: int) -> None:
        end_offset = self.log.log_end_offset
        self.high_watermark = min(end_offset, self.high_watermark + advance)
        hw = self.high_watermark
        reading = read_log(self.log)
        spanning = [f for _, f, m, _ in reading.transactions if f < hw and (m is None or m >= hw)]
        assert self.log.producers.last_stable_offset(hw) == min([hw, *spanning])
        low = start % (end_offset + 1)
        high = low + length
        expected = sorted(
            (first, pid)
            for pid, first, marker, aborted in reading.transactions
            if aborted and first < high and marker >= low
        )
        found = self.log.producers.aborted_transactions(low, high)
        assert found == [(pid, first) for first, pid in expected]

    @invariant()
    def state_is_what_the_log_says(self) -> None:
        assert self.log.producers.applied_end == self.log.log_end_offset
        assert same_state(self.log)


ProducerLogMachine.TestCase.settings = settings(
    PROFILE, max_examples=2 * PROFILE.max_examples, stateful_step_count=40
)
TestProducerLogMachine = ProducerLogMachine.TestCase
