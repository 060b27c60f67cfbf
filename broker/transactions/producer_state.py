"""Per-partition producer state: idempotence, transactions and the last stable offset.

This is Kafka's ProducerStateManager. One lives beside every partition log (`log.producers`) and
is fed every batch the log writes, in log order, on the leader and on followers alike
(`on_write`). Because it is a function of the log's batch headers (plus the one record of each
transaction marker), every replica holds the same state, and a restart or a follower's
truncation rebuilds it from a snapshot plus the batches after it (broker/log/log.py).

Per producer id it keeps the current epoch, the last `MAX_CACHED_BATCHES` batches' sequence
ranges and offsets (a retry is answered with the original offsets instead of being written
again), the newest timestamp seen (expiry), the first offset of its open transaction and the
newest coordinator epoch of its markers. Per partition it keeps the open transactions, the
completed transactions whose marker may still be above the high watermark (for the last stable
offset) and the index of aborted transactions (for read_committed fetches).

Rules (docs/transactions.md, "Producer state on a partition"):
1. Batches with producer_id < 0 are not idempotent: they only advance `applied_end`.
2. `check` (leader, before a produced batch is appended or proposed) refuses an older epoch
   (INVALID_PRODUCER_EPOCH), a sequence gap or a new epoch not starting at 0
   (OUT_OF_ORDER_SEQUENCE), a non-transactional batch inside an open transaction
   (INVALID_TXN_STATE), a newer epoch while the old epoch's transaction is still open
   (CONCURRENT_TRANSACTIONS: its marker is on the way) and a client control batch
   (INVALID_RECORD); it answers a batch equal to one of the cached ones with `Duplicate`. A
   producer the partition does not know may start at any sequence (as Kafka after expiry).
3. `on_write` never refuses: the batch is in the log, so every replica applies it the same way.
   A data batch or marker with an epoch older than the producer's is ignored by the state (only a
   race around a leader's check can write one; see `accept`).
4. A marker (transactional control batch, COMMIT or ABORT) ends the producer's open transaction;
   ABORT adds an aborted-index entry. A marker whose epoch is above the producer's (the KIP-890
   bump at each transaction's end) sets the new epoch and the next batch must start at sequence 0.
5. The leader's pending overlay (`accept`) holds batches proposed to Raft but not yet written, so
   a retry that arrives before the first copy is written is still a duplicate.

Pure: no I/O, clock or randomness (callers pass `now_ms` and the high watermark).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

import msgpack

from wire.batch import (
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    BatchHeader,
    ControlType,
    InvalidBatchError,
    build_control_batch,
    control_type_of,
    decode_records,
    increment_sequence,
)
from wire.error_codes import BrokerError, ErrorCode

# Batches per producer whose retry is recognised (Kafka's max.in.flight.requests bound).
MAX_CACHED_BATCHES: Final = 5
# Completed transactions whose marker may be above the high watermark: beyond this many the
# oldest are merged (conservatively: the LSO can only be lower, never expose an open one).
MAX_UNSTABLE_COMPLETED: Final = 1024
# Batches a leader may hold accepted-but-unwritten; Raft's in-flight bound is far below.
MAX_PENDING: Final = 65536
SNAPSHOT_VERSION: Final = 1
# Both bits set: a transaction marker (a Raft control batch has only ATTR_CONTROL).
TXN_CONTROL_ATTRIBUTES: Final = ATTR_CONTROL | ATTR_TRANSACTIONAL


class ProducerSnapshotError(Exception):
    """A producer-state snapshot does not decode: the caller rebuilds from the log instead."""


class Marker(NamedTuple):
    """A transaction marker's content: COMMIT or ABORT, and the coordinator epoch that wrote it."""

    commit: bool
    coordinator_epoch: int


class Duplicate(NamedTuple):
    """A retried batch the partition already has: answer with these offsets, write nothing."""

    base_offset: int
    last_offset: int


class ProducerStateStats(NamedTuple):
    """Sizes for metrics: every one is memory the partition holds."""

    producers: int
    open_transactions: int
    aborted_index_size: int
    pending_batches: int
    stale_epoch_writes: int


# --- sequences and markers ----------------------------------------------------------------------


def encode_marker_value(coordinator_epoch: int) -> bytes:
    """The value of a marker's single record."""
    return msgpack.packb({"coordinator_epoch": int(coordinator_epoch)})


def decode_marker_value(value: bytes | None) -> int:
    """The coordinator epoch of a marker record's value; InvalidBatchError if malformed."""
    try:
        decoded = msgpack.unpackb(value, raw=False) if value is not None else None
    except (ValueError, msgpack.UnpackException) as exc:
        raise InvalidBatchError(ErrorCode.INVALID_RECORD, f"bad marker value: {exc}") from exc
    epoch = decoded.get("coordinator_epoch") if isinstance(decoded, dict) else None
    if type(epoch) is not int or len(decoded) != 1:
        raise InvalidBatchError(
            ErrorCode.INVALID_RECORD,
            f"marker value {decoded!r} is not {{'coordinator_epoch': int}}",
        )
    return epoch


def build_marker_batch(
    producer_id: int,
    producer_epoch: int,
    *,
    commit: bool,
    coordinator_epoch: int,
    timestamp_ms: int,
) -> bytes:
    """The control batch that ends `producer_id`'s transaction on a partition."""
    return build_control_batch(
        ControlType.COMMIT if commit else ControlType.ABORT,
        encode_marker_value(coordinator_epoch),
        timestamp_ms=timestamp_ms,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        transactional=True,
    )


def is_marker(header: BatchHeader) -> bool:
    return header.attributes & TXN_CONTROL_ATTRIBUTES == TXN_CONTROL_ATTRIBUTES


def marker_of(buf: bytes | bytearray | memoryview, position: int, header: BatchHeader) -> Marker:
    """Decode the marker batch at `position` (`is_marker(header)`): its one record only.

    The one place the broker decodes records of a stored batch, and only for markers, which are
    one per transaction and partition. Raises InvalidBatchError if it is not a valid marker.
    """
    records = decode_records(buf, position, header=header)
    if len(records) != 1:
        raise InvalidBatchError(
            ErrorCode.INVALID_RECORD, f"a marker holds one record, this one {len(records)}"
        )
    try:
        control_type = control_type_of(records[0])
    except ValueError as exc:
        raise InvalidBatchError(ErrorCode.INVALID_RECORD, f"unknown control type: {exc}") from exc
    if control_type not in (ControlType.COMMIT, ControlType.ABORT):
        raise InvalidBatchError(
            ErrorCode.INVALID_RECORD, f"a transactional control batch of type {control_type.name}"
        )
    return Marker(control_type is ControlType.COMMIT, decode_marker_value(records[0].value))


# --- state --------------------------------------------------------------------------------------


class _Producer:
    """One producer id's state. `last_seq` None: any next sequence (unknown history); -1: the
    next batch must start at 0 (a new epoch); else the next must be `last_seq + 1`."""

    __slots__ = (
        "batches",
        "coordinator_epoch",
        "epoch",
        "last_seq",
        "last_timestamp",
        "txn_first_offset",
    )

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.last_seq: int | None = None
        # (first_seq, last_seq, first_offset, last_offset), oldest first.
        self.batches: deque[tuple[int, int, int, int]] = deque(maxlen=MAX_CACHED_BATCHES)
        self.last_timestamp = -1
        self.txn_first_offset: int | None = None
        self.coordinator_epoch = -1

    def copy(self) -> _Producer:
        other = _Producer(self.epoch)
        other.last_seq = self.last_seq
        other.batches.extend(self.batches)
        other.last_timestamp = self.last_timestamp
        other.txn_first_offset = self.txn_first_offset
        other.coordinator_epoch = self.coordinator_epoch
        return other

    def add_batch(
        self,
        epoch: int,
        base_sequence: int,
        last_offset_delta: int,
        base_offset: int,
        timestamp: int,
        transactional: bool,
    ) -> bool:
        """Apply a data batch of an epoch >= ours; True if it opened a transaction."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches.clear()
            self.last_seq = -1
        if base_sequence >= 0:  # a coordinator's offset commits carry no sequence
            last_seq = increment_sequence(base_sequence, last_offset_delta)
            self.batches.append(
                (base_sequence, last_seq, base_offset, base_offset + last_offset_delta)
            )
            self.last_seq = last_seq
        if timestamp > self.last_timestamp:
            self.last_timestamp = timestamp
        if transactional and self.txn_first_offset is None:
            self.txn_first_offset = base_offset
            return True
        return False

    def end_transaction(self, epoch: int, coordinator_epoch: int, timestamp: int) -> int | None:
        """Apply a marker of an epoch >= ours; the first offset of the transaction it ended."""
        first = self.txn_first_offset
        self.txn_first_offset = None
        if epoch > self.epoch:  # the KIP-890 bump: the next transaction starts at sequence 0
            self.epoch = epoch
            self.batches.clear()
            self.last_seq = -1
        if coordinator_epoch > self.coordinator_epoch:
            self.coordinator_epoch = coordinator_epoch
        if timestamp > self.last_timestamp:
            self.last_timestamp = timestamp
        return first


class _Pending(NamedTuple):
    """A batch the leader accepted (proposed to Raft) that the log has not written yet."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    base_offset: int
    last_offset_delta: int
    timestamp: int
    transactional: bool
    marker: Marker | None


class ProducerStateManager:
    """The producer state of one partition. See the module docstring for the rules."""

    def __init__(
        self, start_offset: int = 0, *, max_unstable_completed: int = MAX_UNSTABLE_COMPLETED
    ) -> None:
        # Everything below this offset is applied (exclusive end, like the log end offset).
        self.applied_end = start_offset
        self._max_unstable_completed = max(2, max_unstable_completed)
        self._producers: dict[int, _Producer] = {}
        # Open transactions: pid -> first offset, plus (first_offset, pid) in opening order with
        # lazy deletion, so the earliest open one is found in O(1) amortised.
        self._open: dict[int, int] = {}
        self._open_order: deque[tuple[int, int]] = deque()
        # Completed transactions (marker_offset, first_offset) whose marker may not be below the
        # high watermark yet: increasing in both (an entry with a lower-or-equal first offset
        # behind makes one redundant), pruned as the high watermark passes.
        self._completed: deque[tuple[int, int]] = deque()
        # Aborted transactions (last_offset = marker offset, first_offset, pid) in marker order,
        # with the minimum first offset of each suffix so a range query stops early.
        self._aborted: list[tuple[int, int, int]] = []
        self._aborted_min_first: list[int] = []
        self._pending: deque[_Pending] = deque()
        self._pending_by_pid: dict[int, list[_Pending]] = {}
        self._pending_term: int | None = None
        self._stale_epoch_writes = 0

    # --- the leader's produce path --------------------------------------------------------------

    def check(self, header: BatchHeader, leader_term: int) -> Duplicate | None:
        """Decide a produced batch before it is appended: None to write it, `Duplicate` to answer
        with the original offsets; BrokerError for a batch that must be refused (rule 2)."""
        if header.attributes & ATTR_CONTROL:
            raise BrokerError(
                ErrorCode.INVALID_RECORD,
                "control batches (transaction markers) are written by the broker, not produced",
            )
        producer_id = header.producer_id
        if producer_id < 0:
            return None
        if header.base_sequence < 0:
            raise BrokerError(
                ErrorCode.INVALID_RECORD,
                f"producer {producer_id} sent a batch without a sequence number",
            )
        if leader_term != self._pending_term:
            self._clear_pending(leader_term)
        state = self._view(producer_id)
        if state is None:
            return None  # unknown here (new, or expired): any sequence starts it
        epoch = header.producer_epoch
        if epoch < state.epoch:
            raise BrokerError(
                ErrorCode.INVALID_PRODUCER_EPOCH,
                f"producer {producer_id} epoch {epoch} is older than its current epoch "
                f"{state.epoch}: this producer was fenced",
            )
        first_seq = header.base_sequence
        if epoch == state.epoch:
            last_seq = increment_sequence(first_seq, header.last_offset_delta)
            for cached_first, cached_last, first_offset, last_offset in state.batches:
                if cached_first == first_seq and cached_last == last_seq:
                    return Duplicate(first_offset, last_offset)
        transactional = bool(header.attributes & ATTR_TRANSACTIONAL)
        if state.txn_first_offset is not None:
            if epoch > state.epoch:
                raise BrokerError(
                    ErrorCode.CONCURRENT_TRANSACTIONS,
                    f"producer {producer_id}'s transaction of epoch {state.epoch} is still open "
                    f"here (its marker is on the way): retry epoch {epoch} shortly",
                )
            if not transactional:
                raise BrokerError(
                    ErrorCode.INVALID_TXN_STATE,
                    f"producer {producer_id} sent a non-transactional batch inside its open "
                    "transaction",
                )
        if epoch > state.epoch:
            if first_seq != 0:
                raise BrokerError(
                    ErrorCode.OUT_OF_ORDER_SEQUENCE,
                    f"producer {producer_id}'s new epoch {epoch} must start at sequence 0, "
                    f"not {first_seq}",
                )
            return None
        expected = None if state.last_seq is None else increment_sequence(state.last_seq, 1)
        if expected is not None and first_seq != expected:
            raise BrokerError(
                ErrorCode.OUT_OF_ORDER_SEQUENCE,
                f"producer {producer_id} epoch {epoch} sent sequence {first_seq}, expected "
                f"{expected}: a batch before it is missing",
            )
        return None

    def check_marker(self, producer_id: int, producer_epoch: int, coordinator_epoch: int) -> None:
        """Refuse a marker from a fenced coordinator or for a fenced producer epoch, before it is
        appended (the WriteTxnMarkers path; `on_write` ignores such markers anyway)."""
        state = self._view(producer_id)
        if state is None:
            return
        if coordinator_epoch < state.coordinator_epoch:
            raise BrokerError(
                ErrorCode.TRANSACTION_COORDINATOR_FENCED,
                f"marker for producer {producer_id} from coordinator epoch {coordinator_epoch}, "
                f"below {state.coordinator_epoch} already seen",
            )
        if producer_epoch < state.epoch:
            raise BrokerError(
                ErrorCode.INVALID_PRODUCER_EPOCH,
                f"marker for producer {producer_id} epoch {producer_epoch}, below its current "
                f"epoch {state.epoch}",
            )

    def accept(
        self,
        header: BatchHeader,
        base_offset: int,
        leader_term: int,
        *,
        marker: Marker | None = None,
    ) -> None:
        """Remember a batch proposed at `base_offset` that the log will write later (rule 5).

        A no-op when the log wrote it already (a single node's synchronous append). `marker`:
        the content when the batch is a transaction marker, so that a produce racing it sees
        the transaction ended and the epoch bumped."""
        if base_offset < self.applied_end or header.producer_id < 0:
            return
        if leader_term != self._pending_term:
            self._clear_pending(leader_term)
        pending = self._pending
        if pending and base_offset <= pending[-1].base_offset + pending[-1].last_offset_delta:
            self._clear_pending(leader_term)  # the tail we remembered was replaced
        if len(pending) >= MAX_PENDING:
            # Forgetting the oldest keeps the rules safe: its retry then folds onto a later
            # sequence and is refused as out of order, never written twice.
            dropped = pending.popleft()
            self._pending_by_pid[dropped.producer_id].pop(0)
        entry = _Pending(
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            base_offset,
            header.last_offset_delta,
            header.max_timestamp,
            bool(header.attributes & ATTR_TRANSACTIONAL),
            marker if is_marker(header) else None,
        )
        pending.append(entry)
        self._pending_by_pid.setdefault(entry.producer_id, []).append(entry)

    def _clear_pending(self, leader_term: int | None) -> None:
        self._pending.clear()
        self._pending_by_pid.clear()
        self._pending_term = leader_term

    def _view(self, producer_id: int) -> _Producer | None:
        """The producer's state as applied, plus its pending batches (a copy if there are any)."""
        state = self._producers.get(producer_id)
        pending = self._pending_by_pid.get(producer_id)
        if not pending:
            return state
        view = state.copy() if state is not None else None
        for entry in pending:
            if view is None:
                view = _Producer(entry.producer_epoch)
            elif entry.producer_epoch < view.epoch:
                continue  # as on_write would: a stale write changes nothing
            if entry.marker is not None:
                view.end_transaction(
                    entry.producer_epoch, entry.marker.coordinator_epoch, entry.timestamp
                )
            else:
                view.add_batch(
                    entry.producer_epoch,
                    entry.base_sequence,
                    entry.last_offset_delta,
                    entry.base_offset,
                    entry.timestamp,
                    entry.transactional,
                )
        return view

    # --- every write, in log order --------------------------------------------------------------

    def on_write(self, header: BatchHeader, base_offset: int, marker: Marker | None = None) -> None:
        """Apply one batch the log wrote at `base_offset` (rules 1, 3, 4). `marker` is the decoded
        content of a transaction marker, None for any other batch (and for a marker that does not
        decode, which is then ignored on every replica alike). Never raises: the batch is in the
        log already."""
        delta = header.last_offset_delta
        if self._pending:
            self._match_pending(header, base_offset, base_offset + delta)
        self.applied_end = base_offset + delta + 1
        producer_id = header.producer_id
        if producer_id < 0:
            return
        attributes = header.attributes
        if attributes & ATTR_CONTROL and (marker is None or not attributes & ATTR_TRANSACTIONAL):
            return  # a Raft control batch, or a marker that did not decode
        epoch = header.producer_epoch
        state = self._producers.get(producer_id)
        if state is None:
            state = self._producers[producer_id] = _Producer(epoch)
        elif epoch < state.epoch:
            self._stale_epoch_writes += 1
            return
        if marker is not None and attributes & ATTR_CONTROL:
            self._end_transaction(producer_id, state, epoch, marker, base_offset, header)
            return
        if state.add_batch(
            epoch,
            header.base_sequence,
            delta,
            base_offset,
            header.max_timestamp,
            bool(attributes & ATTR_TRANSACTIONAL),
        ):
            self._open[producer_id] = base_offset
            self._open_order.append((base_offset, producer_id))

    def _end_transaction(
        self,
        producer_id: int,
        state: _Producer,
        epoch: int,
        marker: Marker,
        offset: int,
        header: BatchHeader,
    ) -> None:
        first = state.end_transaction(epoch, marker.coordinator_epoch, header.max_timestamp)
        if first is None:
            return  # a retried marker, or one for a partition with no data of it
        del self._open[producer_id]
        if len(self._open_order) > 2 * len(self._open) + 32:
            self._open_order = deque(sorted((f, pid) for pid, f in self._open.items()))
        self._add_completed(offset, first)
        if not marker.commit:
            self._aborted.append((offset, first, producer_id))
            minima = self._aborted_min_first
            minima.append(first)
            slot = len(minima) - 2
            while slot >= 0 and minima[slot] > first:
                minima[slot] = first
                slot -= 1

    def _add_completed(self, marker_offset: int, first_offset: int) -> None:
        completed = self._completed
        while completed and completed[-1][1] >= first_offset:
            completed.pop()  # whenever it would count, this one counts with a lower first offset
        completed.append((marker_offset, first_offset))
        if len(completed) > self._max_unstable_completed:
            # Merge the two oldest: open until the later marker, from the earlier first offset.
            # The LSO can only come out lower (later visibility), never expose an open one.
            oldest_first = completed.popleft()[1]
            completed[0] = (completed[0][0], oldest_first)

    def _match_pending(self, header: BatchHeader, base_offset: int, last_offset: int) -> None:
        head = self._pending[0]
        if head.base_offset > last_offset:
            return  # ours come later
        if (
            head.base_offset == base_offset
            and head.producer_id == header.producer_id
            and head.producer_epoch == header.producer_epoch
            and head.base_sequence == header.base_sequence
        ):
            self._pending.popleft()
            by_pid = self._pending_by_pid[head.producer_id]
            by_pid.pop(0)
            if not by_pid:
                del self._pending_by_pid[head.producer_id]
        else:
            # Another leader's entries replaced ours: what we accepted will not be written.
            self._clear_pending(self._pending_term)

    # --- read_committed -------------------------------------------------------------------------

    def advance(self, high_watermark: int) -> None:
        """Forget completed transactions whose marker is below `high_watermark` (committed)."""
        completed = self._completed
        while completed and completed[0][0] < high_watermark:
            completed.popleft()

    def last_stable_offset(self, high_watermark: int) -> int:
        """Where read_committed reads end: `high_watermark`, or the first offset of the earliest
        transaction still open as of it (its marker unwritten, or at/above the high watermark)."""
        self.advance(high_watermark)
        stable = high_watermark
        if self._completed and self._completed[0][1] < stable:
            stable = self._completed[0][1]
        order = self._open_order
        while order and self._open.get(order[0][1]) != order[0][0]:
            order.popleft()
        if order and order[0][0] < stable:
            stable = order[0][0]
        return stable

    def aborted_transactions(self, start_offset: int, end_offset: int) -> list[tuple[int, int]]:
        """(producer_id, first_offset) of each aborted transaction overlapping
        [start_offset, end_offset), by first offset: a read_committed fetch drops those
        producers' records from first_offset up to their ABORT marker.

        Cost: a bisection, then only entries whose marker is at/after `start_offset` while some
        entry from there on starts below `end_offset`."""
        aborted = self._aborted
        minima = self._aborted_min_first
        slot = bisect.bisect_left(aborted, start_offset, key=lambda entry: entry[0])
        found = []
        while slot < len(aborted) and minima[slot] < end_offset:
            _, first, producer_id = aborted[slot]
            if first < end_offset:
                found.append((producer_id, first))
            slot += 1
        found.sort(key=lambda item: (item[1], item[0]))
        return found

    # --- housekeeping ---------------------------------------------------------------------------

    def expire(self, now_ms: int, expiration_ms: int) -> int:
        """Forget producers idle for `expiration_ms` or longer with no open transaction (their
        next batch is then taken at any sequence). Returns how many were forgotten."""
        expired = [
            producer_id
            for producer_id, state in self._producers.items()
            if state.txn_first_offset is None and now_ms - state.last_timestamp >= expiration_ms
        ]
        for producer_id in expired:
            del self._producers[producer_id]
        return len(expired)

    def prune_below(self, log_start_offset: int) -> None:
        """Drop aborted-index entries wholly below the log start (retention deleted them)."""
        count = bisect.bisect_left(self._aborted, log_start_offset, key=lambda entry: entry[0])
        if count:
            del self._aborted[:count]
            del self._aborted_min_first[:count]  # the suffix minima of what stays are unchanged

    def stats(self) -> ProducerStateStats:
        return ProducerStateStats(
            len(self._producers),
            len(self._open),
            len(self._aborted),
            len(self._pending),
            self._stale_epoch_writes,
        )

    def producer_ids(self) -> list[int]:
        return sorted(self._producers)

    # --- snapshots ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The applied state (not the pending overlay) as msgpack, deterministic for equal state."""
        producers = [
            [
                producer_id,
                state.epoch,
                state.last_seq,
                state.last_timestamp,
                state.txn_first_offset,
                state.coordinator_epoch,
                [list(batch) for batch in state.batches],
            ]
            for producer_id, state in sorted(self._producers.items())
        ]
        return msgpack.packb(
            {
                "version": SNAPSHOT_VERSION,
                "end": self.applied_end,
                "producers": producers,
                "completed": [list(entry) for entry in self._completed],
                "aborted": [[pid, first, last] for last, first, pid in self._aborted],
            }
        )

    @classmethod
    def restore(
        cls, data: bytes, *, max_unstable_completed: int = MAX_UNSTABLE_COMPLETED
    ) -> ProducerStateManager:
        """The state `snapshot()` saved; ProducerSnapshotError for anything malformed."""
        try:
            decoded = msgpack.unpackb(data, raw=False, use_list=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ProducerSnapshotError(f"snapshot does not decode: {exc}") from exc
        keys = {"version", "end", "producers", "completed", "aborted"}
        if not isinstance(decoded, dict) or set(decoded) != keys:
            raise ProducerSnapshotError("snapshot is not a map of the expected fields")
        if decoded["version"] != SNAPSHOT_VERSION:
            raise ProducerSnapshotError(f"snapshot version {decoded['version']!r} is unknown")
        manager = cls(_int(decoded["end"]), max_unstable_completed=max_unstable_completed)
        for row in _rows(decoded["producers"], 7):
            producer_id, epoch, last_seq, last_timestamp, txn_first, coordinator_epoch = row[:6]
            state = _Producer(_int(epoch))
            state.last_seq = _int(last_seq, optional=True)
            state.last_timestamp = _int(last_timestamp)
            state.txn_first_offset = _int(txn_first, optional=True)
            state.coordinator_epoch = _int(coordinator_epoch)
            for batch in _rows(row[6], 4):
                first_seq, last_seq, first_offset, last_offset = (_int(value) for value in batch)
                state.batches.append((first_seq, last_seq, first_offset, last_offset))
            pid = _int(producer_id)
            if pid < 0 or pid in manager._producers:
                raise ProducerSnapshotError(f"snapshot has a bad or repeated producer id {pid}")
            manager._producers[pid] = state
            if state.txn_first_offset is not None:
                manager._open[pid] = state.txn_first_offset
        manager._open_order = deque(sorted((first, pid) for pid, first in manager._open.items()))
        for marker_offset, first in _rows(decoded["completed"], 2):
            manager._completed.append((_int(marker_offset), _int(first)))
        for pid, first, last in _rows(decoded["aborted"], 3):
            if manager._aborted and _int(last) < manager._aborted[-1][0]:
                raise ProducerSnapshotError("snapshot's aborted index is out of order")
            manager._aborted.append((_int(last), _int(first), _int(pid)))
        manager._aborted_min_first = _suffix_minima(first for _, first, _ in manager._aborted)
        return manager


def _int(value: Any, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) is not int:
        raise ProducerSnapshotError(f"snapshot has {value!r} where an integer belongs")
    return value


def _rows(value: Any, width: int) -> list[list[Any]]:
    if not isinstance(value, list) or any(
        not isinstance(row, list) or len(row) != width for row in value
    ):
        raise ProducerSnapshotError(f"snapshot has a malformed list (rows of {width} expected)")
    return value


def _suffix_minima(values: Iterable[int]) -> list[int]:
    minima = list(values)
    for slot in range(len(minima) - 2, -1, -1):
        minima[slot] = min(minima[slot], minima[slot + 1])
    return minima
