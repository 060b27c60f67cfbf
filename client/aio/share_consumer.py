"""The trio-native share consumer: a member of a share group, reading topics as a queue (KIP-932).

A share group hands each record to one member at a time. `poll()` sends a ShareFetch to the
group's share coordinator, which acquires records for this member (locked for the group's
`share.record.lock.duration.ms`) and answers whole batches plus the acquired offset ranges, each
with its delivery count; `poll()` returns only the records inside those ranges. The application
acknowledges each record (accept, release, reject; renew extends its lock), and the
acknowledgements ride on the next ShareFetch, or on the ShareAcknowledge of `commit()`/`close()`.

Rules:
- The pure part (`coalesce_acknowledgements`, `acquired_records`, `acknowledgement_results`,
  `AcknowledgementsCore`) does no I/O; the `ShareConsumer` shell sends what the core hands it.
- Implicit mode (the default): what the previous poll returned and the application did not
  acknowledge is accepted by the next poll, `commit()` or `close()`. Unlike Kafka's Java client,
  the application may still acknowledge single records itself (reject a poison message).
  Explicit mode: every record must be acknowledged before the next poll, which otherwise raises
  `AcknowledgementStateError` (Kafka's IllegalStateException); `close()` lets the broker release
  what is left.
- Acknowledgements travel as offset ranges: consecutive offsets of one partition with the same
  type (and delay) become one `ShareAcknowledgementBatch`. Acquired offsets with no record in the
  batches (control batches) are acknowledged as GAP, or they would come back until archived.
- No heartbeat: the member id is chosen here (uuid4) and the coordinator registers it at its
  first request; a member silent for the broker's session timeout (45 s) is dropped and its
  records released, so poll at least that often.
- Acknowledgements of a request that fails (or is cancelled) are put back and sent again with
  the next one: if the broker had applied them, they come back INVALID_RECORD_STATE, reported
  like any acknowledgement error (at-least-once, never lost).
- One task (or thread, through the blocking facade) polls at a time; `acknowledge()` is
  thread-safe.
"""

from __future__ import annotations

import inspect
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, Unpack

import trio

from client._gc import gc_paused
from client.aio._base import AsyncClientBase
from client.aio.cluster import (
    CLIENT_ID_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT,
)
from client.aio.consumer import (
    FETCH_MAX_BYTES_DEFAULT,
    FETCH_MAX_WAIT_MS_DEFAULT,
    MAX_POLL_RECORDS_DEFAULT,
    RETRY_BACKOFF_MS_DEFAULT,
    decode_fetched,
    visible_batches,
)
from client.aio.coordinator_calls import CoordinatorCalls
from client.errors import ClientError
from client.security import SecurityOptions
from client.types import ShareRecord, TopicPartition
from wire import codec
from wire.config_error import ConfigError
from wire.error_codes import BrokerError, ErrorCode

log = logging.getLogger("client.share_consumer")

AcknowledgeType = Literal["accept", "release", "reject", "renew"]
ACKNOWLEDGE_TYPES: Final[dict[str, int]] = {
    "accept": codec.ACK_ACCEPT,
    "release": codec.ACK_RELEASE,
    "reject": codec.ACK_REJECT,
    "renew": codec.ACK_RENEW,
}
ACKNOWLEDGEMENT_MODES: Final = ("implicit", "explicit")
# How long close() may spend sending the last acknowledgements and leaving.
CLOSE_TIMEOUT_S: Final = 5.0
# Records named in an error message before "...".
RECORDS_NAMED_MAX: Final = 3

# What `on_acknowledged` receives: per partition, None or why its acknowledgements failed.
AcknowledgementResults = dict[TopicPartition, Exception | None]
AcknowledgementCallback = Callable[[AcknowledgementResults], Any]


class AcknowledgementStateError(ClientError):
    """An acknowledgement the consumer's state does not allow (Kafka's IllegalStateException):
    a record not returned by the latest poll, one already acknowledged, or (explicit mode) a
    poll while records of the previous one are unacknowledged. Nothing was sent; fix the
    calling code."""


# --- the pure part --------------------------------------------------------------------------------

# An acknowledgement waiting to be sent: (ack type, delay_ms).
_Ack = tuple[int, int]


def coalesce_acknowledgements(
    pending: Mapping[TopicPartition, Mapping[int, _Ack]],
) -> tuple[codec.ShareAcknowledgePartition, ...]:
    """The wire form of `pending` (per partition, offset -> (ack type, delay_ms)): one batch per
    run of consecutive offsets with the same type and delay, partitions and offsets in order."""
    out: list[codec.ShareAcknowledgePartition] = []
    for tp in sorted(pending):
        acks = pending[tp]
        batches: list[codec.ShareAcknowledgementBatch] = []
        first = last = -1
        current: _Ack | None = None
        for offset in sorted(acks):
            ack = acks[offset]
            if ack == current and offset == last + 1:
                last = offset
                continue
            if current is not None:
                batches.append(_batch(first, last, current))
            first = last = offset
            current = ack
        if current is not None:
            batches.append(_batch(first, last, current))
            out.append(
                codec.ShareAcknowledgePartition(
                    topic=tp.topic, partition=tp.partition, batches=tuple(batches)
                )
            )
    return tuple(out)


def _batch(first: int, last: int, ack: _Ack) -> codec.ShareAcknowledgementBatch:
    return codec.ShareAcknowledgementBatch(
        first_offset=first, last_offset=last, ack_type=ack[0], delay_ms=ack[1]
    )


def acquired_records(
    tp: TopicPartition, data: bytes, acquired: Sequence[codec.AcquiredRange]
) -> tuple[list[ShareRecord], list[int]]:
    """The records of the fetched batches `data` that lie in an `acquired` range, each with its
    range's delivery count, in offset order; and the acquired offsets that a batch covers but
    that have no record in it (control batches, compacted records): the gaps to acknowledge.

    The batches may hold more records than were acquired (another member holds those). An
    acquired offset that no batch covers is neither returned nor acknowledged: the broker
    releases it when the lock expires. Raises the batch errors (`CrcMismatchError`...)."""
    if not acquired:
        return [], []
    ranges = sorted(acquired, key=lambda r: r.first_offset)
    # The CRC check happens here, on every batch, so that the decode below can skip it.
    spans = [(header.base_offset, header.last_offset) for _, header, _ in visible_batches(data)]
    records = decode_fetched(tp, data, ranges[0].first_offset, validate=False)
    kept: list[ShareRecord] = []
    gaps: list[int] = []
    index = 0
    with gc_paused():
        for span in ranges:
            while index < len(records) and records[index].offset < span.first_offset:
                index += 1
            expected = span.first_offset
            while index < len(records) and records[index].offset <= span.last_offset:
                record = records[index]
                if record.offset > expected:
                    gaps += _covered(expected, record.offset - 1, spans)
                kept.append(_new_record(ShareRecord, (*record, span.delivery_count)))
                expected = record.offset + 1
                index += 1
            if expected <= span.last_offset:
                gaps += _covered(expected, span.last_offset, spans)
    return kept, gaps


_new_record = tuple.__new__


def _covered(first: int, last: int, spans: Sequence[tuple[int, int]]) -> list[int]:
    # The offsets in [first, last] inside some batch: only those are known to hold no record.
    out: list[int] = []
    for base, end in spans:
        out += range(max(first, base), min(last, end) + 1)
    return out


def acknowledgement_results(
    sent: Sequence[codec.ShareAcknowledgePartition],
    answered: Mapping[TopicPartition, tuple[ErrorCode, str]],
) -> AcknowledgementResults:
    """Per partition acknowledged in `sent`: None, or the `BrokerError` the broker `answered`
    for it (error code and message per partition). A partition left out of the answer failed:
    its outcome is unknown, and its records come back when their locks expire."""
    results: AcknowledgementResults = {}
    for partition in sent:
        tp = TopicPartition(partition.topic, partition.partition)
        code, message = answered.get(
            tp, (ErrorCode.UNKNOWN_SERVER_ERROR, "the broker did not answer for it")
        )
        results[tp] = (
            None
            if code is ErrorCode.NONE
            else BrokerError(code, f"acknowledging {tp.topic}/{tp.partition}: {message}")
        )
    return results


class AcknowledgementsCore:
    """The acknowledgement bookkeeping of one share consumer, without I/O.

    It knows which records the latest poll returned and whether each is acknowledged, and
    which acknowledgements wait to be sent. The shell calls `start_poll` as a poll begins,
    `delivered`/`add_gaps` with what a fetch acquired, `take` to put the pending
    acknowledgements in a request, and `restore` when that request failed.
    """

    def __init__(self, mode: str) -> None:
        if mode not in ACKNOWLEDGEMENT_MODES:
            raise ConfigError(
                "acknowledgement_mode", f"expected one of {ACKNOWLEDGEMENT_MODES}, got {mode!r}"
            )
        self.explicit = mode == "explicit"
        # (partition, offset) of every record the latest poll returned -> acknowledged yet?
        # A renewed record stays unacknowledged (its lock is only extended).
        self._delivered: dict[tuple[TopicPartition, int], bool] = {}
        # Acknowledgements not sent yet: partition -> offset -> (ack type, delay_ms).
        self._pending: dict[TopicPartition, dict[int, _Ack]] = {}

    def acknowledge(self, tp: TopicPartition, offset: int, ack_type: int, delay_ms: int) -> None:
        """Record the application's acknowledgement of one record of the latest poll.

        Raises `AcknowledgementStateError` for a record the latest poll did not return or one
        already acknowledged (accepted, released or rejected)."""
        key = (tp, offset)
        done = self._delivered.get(key)
        if done is None:
            raise AcknowledgementStateError(
                f"{_name(key)} was not returned by the latest poll(): only the records of the "
                "latest poll can be acknowledged"
            )
        if done:
            raise AcknowledgementStateError(f"{_name(key)} is already acknowledged")
        if ack_type != codec.ACK_RENEW:
            self._delivered[key] = True
        self._pending.setdefault(tp, {})[offset] = (ack_type, delay_ms)

    def start_poll(self) -> None:
        """A poll begins: implicit mode accepts the records of the previous poll that are not
        acknowledged; explicit mode raises `AcknowledgementStateError` if there are any (and
        changes nothing)."""
        unacknowledged = self._unacknowledged()
        if unacknowledged and self.explicit:
            named = ", ".join(_name(key) for key in unacknowledged[:RECORDS_NAMED_MAX])
            more = ", ..." if len(unacknowledged) > RECORDS_NAMED_MAX else ""
            raise AcknowledgementStateError(
                f"{len(unacknowledged)} record(s) of the previous poll() are not acknowledged "
                f"({named}{more}): in explicit mode, acknowledge() every record before the "
                "next poll()"
            )
        self._accept(unacknowledged)
        self._delivered = {}

    def accept_unacknowledged(self) -> None:
        """Implicit mode, before a commit or close: accept what the application left."""
        if not self.explicit:
            self._accept(self._unacknowledged())

    def delivered(self, records: Iterable[ShareRecord]) -> None:
        """A fetch acquired `records`; the current poll returns them."""
        for record in records:
            self._delivered[TopicPartition(record.topic, record.partition), record.offset] = False

    def add_gaps(self, tp: TopicPartition, offsets: Iterable[int]) -> None:
        """Acquired offsets without a record: acknowledged as GAP with the next request."""
        pending = self._pending.setdefault(tp, {})
        for offset in offsets:
            pending[offset] = (codec.ACK_GAP, 0)

    def take(self) -> tuple[codec.ShareAcknowledgePartition, ...]:
        """Every pending acknowledgement, coalesced into ranges, for the next request."""
        taken = coalesce_acknowledgements(self._pending)
        self._pending = {}
        return taken

    def restore(self, sent: Iterable[codec.ShareAcknowledgePartition]) -> None:
        """The request that carried `sent` failed: send them again with the next one (an
        acknowledgement the application made since, for the same record, wins)."""
        for partition in sent:
            tp = TopicPartition(partition.topic, partition.partition)
            pending = self._pending.setdefault(tp, {})
            for batch in partition.batches:
                for offset in range(batch.first_offset, batch.last_offset + 1):
                    pending.setdefault(offset, (batch.ack_type, batch.delay_ms))

    def _unacknowledged(self) -> list[tuple[TopicPartition, int]]:
        return [key for key, done in self._delivered.items() if not done]

    def _accept(self, keys: Iterable[tuple[TopicPartition, int]]) -> None:
        for tp, offset in keys:
            self._delivered[tp, offset] = True
            self._pending.setdefault(tp, {})[offset] = (codec.ACK_ACCEPT, 0)


def ack_type_code(ack_type: str, delay_ms: int) -> int:
    """The wire value of an acknowledgement type name; ValueError for an unknown name, a
    negative delay, or a delay with anything but "release"."""
    code = ACKNOWLEDGE_TYPES.get(ack_type)
    if code is None:
        raise ValueError(f"acknowledgement type must be one of {sorted(ACKNOWLEDGE_TYPES)}")
    if delay_ms < 0:
        raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
    if delay_ms and code != codec.ACK_RELEASE:
        raise ValueError(f"delay_ms applies to 'release' only, not {ack_type!r}")
    return code


def _name(key: tuple[TopicPartition, int]) -> str:
    tp, offset = key
    return f"{tp.topic}/{tp.partition}@{offset}"


# --- the share coordinator ------------------------------------------------------------------------


# --- the consumer ---------------------------------------------------------------------------------


class ShareConsumer(AsyncClientBase):
    """A share group member: `async with ShareConsumer(bootstrap, group_id="jobs") as c:
    c.subscribe(["jobs"]); records = await c.poll()`; see the module rules.

    `on_acknowledged(results)` (Kafka's AcknowledgementCommitCallback; a plain or async
    function, run in the consumer's trio task) hears the outcome of every acknowledgement sent:
    per partition None or the error. Without it, failures are logged as warnings.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str] | None = None,
        *,
        group_id: str,
        acknowledgement_mode: str = "implicit",
        max_poll_records: int = MAX_POLL_RECORDS_DEFAULT,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS_DEFAULT,
        fetch_max_bytes: int = FETCH_MAX_BYTES_DEFAULT,
        retry_backoff_ms: int = RETRY_BACKOFF_MS_DEFAULT,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        client_id: str = CLIENT_ID_DEFAULT,
        on_acknowledged: AcknowledgementCallback | None = None,
        **security: Unpack[SecurityOptions],
    ) -> None:
        super().__init__(
            bootstrap, client_id=client_id, request_timeout_ms=request_timeout_ms, **security
        )
        if not group_id:
            raise ConfigError("group_id", "must not be empty")
        if max_poll_records < 1:
            raise ConfigError("max_poll_records", f"must be >= 1, got {max_poll_records}")
        if fetch_max_wait_ms < 0:
            raise ConfigError("fetch_max_wait_ms", f"must be >= 0, got {fetch_max_wait_ms}")
        self._core = AcknowledgementsCore(acknowledgement_mode)
        self.group_id = group_id
        self.member_id = uuid.uuid4().hex
        self.max_poll_records = max_poll_records
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_max_bytes = fetch_max_bytes
        self.retry_backoff_s = retry_backoff_ms / 1000.0
        self.on_acknowledged = on_acknowledged
        # How long the member holds what it acquires, as the last ShareFetch said (-1: unknown).
        self.lock_duration_ms = -1
        # `acknowledge` may come from another thread than the poll (the blocking facade).
        self._lock = threading.Lock()
        self._topics: tuple[str, ...] = ()
        self._coordinator: CoordinatorCalls | None = None
        # Whether the coordinator knows this member (it registers it at its first request).
        self._registered = False

    def subscribe(self, topics: Iterable[str]) -> None:
        """Read `topics` from the next poll on (an empty list: nothing)."""
        if isinstance(topics, str):
            raise TypeError(f"subscribe() takes a list of topics: subscribe([{topics!r}])")
        self._topics = tuple(sorted(set(topics)))

    def subscription(self) -> set[str]:
        return set(self._topics)

    def acknowledge(
        self, record: ShareRecord, type: AcknowledgeType = "accept", delay_ms: int = 0
    ) -> None:
        """Acknowledge `record` (from the latest poll): "accept" (done), "release" (give it
        back for redelivery, after `delay_ms`), "reject" (unprocessable: archived) or "renew"
        (keep it locked longer; it still needs one of the others). Sent with the next poll or
        `commit()`. Raises ValueError for a bad type or delay, `AcknowledgementStateError` for
        a record not from the latest poll or already acknowledged. Thread-safe."""
        code = ack_type_code(type, delay_ms)
        tp = TopicPartition(record.topic, record.partition)
        with self._lock:
            self._core.acknowledge(tp, record.offset, code, delay_ms)

    async def poll(
        self, timeout_ms: float = 1000, max_records: int | None = None
    ) -> list[ShareRecord]:
        """Acquire and return up to `max_records` (default `max_poll_records`) records; [] if
        none arrived within `timeout_ms`. Sends the pending acknowledgements first (implicit
        mode: accepting what the previous poll returned and the application left)."""
        self._cluster  # noqa: B018 - raises if the consumer is not open
        if not self._topics:
            raise ClientError("subscribe() to one or more topics before poll()")
        with self._lock:
            self._core.start_poll()
        limit = max_records or self.max_poll_records
        deadline = trio.current_time() + timeout_ms / 1000.0
        while True:
            remaining_ms = (deadline - trio.current_time()) * 1000.0
            wait_ms = int(max(min(self.fetch_max_wait_ms, remaining_ms), 0))
            records = await self._share_fetch(limit, wait_ms)
            if records or trio.current_time() >= deadline:
                return records

    async def commit(self) -> AcknowledgementResults:
        """Send the pending acknowledgements now (implicit mode: accepting what the latest poll
        returned and the application left) and wait: per partition, None or its error
        (INVALID_RECORD_STATE: a lock expired and the record went to another member). Raises
        what fails the whole request."""
        self._cluster  # noqa: B018 - raises if the consumer is not open
        with self._lock:
            self._core.accept_unacknowledged()
            acks = self._core.take()
        if not acks:
            return {}
        results = await self._share_acknowledge(acks, leave=False)
        await self._notify(results, quiet=True)
        return results

    async def _share_fetch(self, limit: int, wait_ms: int) -> list[ShareRecord]:
        with self._lock:
            acks = self._core.take()
        request = codec.ShareFetchRequest(
            group_id=self.group_id,
            member_id=self.member_id,
            topics=self._topics,
            acknowledgements=acks,
            max_records=limit,
            max_bytes=self.fetch_max_bytes,
            max_wait_ms=wait_ms,
            client_id=self._client_id,
        )
        response: codec.ShareFetchResponse = await self._send(
            request, acks, extra_timeout_s=wait_ms / 1000.0
        )
        self.lock_duration_ms = response.lock_duration_ms
        records: list[ShareRecord] = []
        errors: list[BrokerError] = []
        for result in response.partitions:
            tp = TopicPartition(result.topic, result.partition)
            if result.error is not ErrorCode.NONE:
                errors.append(
                    BrokerError(result.error, f"{tp.topic}/{tp.partition}: {result.error_message}")
                )
                continue
            kept, gaps = acquired_records(tp, result.records, result.acquired)
            with self._lock:
                self._core.add_gaps(tp, gaps)
            records += kept
        if acks:
            answered = {
                TopicPartition(p.topic, p.partition): (
                    p.acknowledge_error,
                    p.acknowledge_error_message,
                )
                for p in response.partitions
            }
            await self._notify(acknowledgement_results(acks, answered), quiet=False)
        await self._partition_errors(errors, got_records=bool(records))
        # Only now, with no await left before the records reach the caller: records of a poll
        # that failed or was cancelled above must not count as returned (implicit mode would
        # accept them unseen); the broker releases them when their locks expire or we leave.
        with self._lock:
            self._core.delivered(records)
        return records

    async def _partition_errors(self, errors: list[BrokerError], *, got_records: bool) -> None:
        # A partition's error must not cost the records acquired in the others (they are
        # locked to us now): it is raised only from a poll that got nothing, and only if
        # retrying cannot help; otherwise logged, and the next fetch waits the backoff.
        if not errors:
            return
        final = [error for error in errors if not error.retriable]
        if final and not got_records:
            raise final[0]
        for error in errors:
            log.warning("share group %s: %s", self.group_id, error)
        if not got_records:
            await trio.sleep(self.retry_backoff_s)

    async def _share_acknowledge(
        self, acks: tuple[codec.ShareAcknowledgePartition, ...], *, leave: bool
    ) -> AcknowledgementResults:
        request = codec.ShareAcknowledgeRequest(
            group_id=self.group_id,
            member_id=self.member_id,
            acknowledgements=acks,
            leave=leave,
            client_id=self._client_id,
        )
        response: codec.ShareAcknowledgeResponse = await self._send(request, acks)
        answered = {
            TopicPartition(p.topic, p.partition): (p.error, p.error_message)
            for p in response.partitions
        }
        return acknowledgement_results(acks, answered)

    async def _send(
        self,
        request: Any,
        acks: tuple[codec.ShareAcknowledgePartition, ...],
        *,
        extra_timeout_s: float = 0.0,
    ) -> Any:
        if self._coordinator is None:
            self._coordinator = CoordinatorCalls(
                self._cluster, self.group_id, retry_backoff_s=self.retry_backoff_s
            )
        try:
            response = await self._coordinator.call(request, extra_timeout_s=extra_timeout_s)
        except BaseException:
            # Failed or cancelled: the broker may not have applied them; send them again.
            with self._lock:
                self._core.restore(acks)
            raise
        self._registered = True
        return response

    async def _notify(self, results: AcknowledgementResults, *, quiet: bool) -> None:
        """Hand acknowledgement outcomes to `on_acknowledged`; without one, log the failures
        (unless the caller gets them anyway: `quiet`, for commit's return value)."""
        callback = self.on_acknowledged
        if callback is None:
            if not quiet:
                for error in results.values():
                    if error is not None:
                        log.warning("share group %s: %s", self.group_id, error)
            return
        try:
            outcome = callback(results)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("share group %s: on_acknowledged callback failed", self.group_id)

    async def _before_close(self) -> None:
        # The last acknowledgements (implicit mode: accepting what the latest poll returned),
        # and leave: the broker releases what this member still holds, at once rather than
        # when the locks expire.
        if not self._registered:
            return  # the coordinator never heard of this member
        with self._lock:
            self._core.accept_unacknowledged()
            acks = self._core.take()
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                results = await self._share_acknowledge(acks, leave=True)
            except (ClientError, BrokerError) as exc:
                log.warning("share group %s: close: %s", self.group_id, exc)
                return
            if results:
                await self._notify(results, quiet=False)
