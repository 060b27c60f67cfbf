"""TransactionConfig: the transaction coordinator's limits and timers, named, defaulted, validated.

Times are milliseconds of the `now_ms` the shell passes in events; the core never reads a clock.
Kafka's dotted keys (`transaction.max.timeout.ms`) map to field names once, here, through
`ALIASES`, like every other config of the broker; `validate()` raises `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses

from broker.config import DAY_MS, ConfigBase, check_range


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionConfig(ConfigBase):
    """Bounds and timers of one `__transaction_state` partition's transactional ids."""

    # The largest `transaction_timeout_ms` an InitProducerId may ask for. A longer transaction
    # holds back every read_committed consumer of its partitions (the last stable offset cannot
    # pass its first record) for that long, so the broker caps it.
    transaction_timeout_ms_max: int = 15 * 60_000
    # How often a Tick looks for Ongoing transactions past their timeout (Kafka's
    # transaction.abort.timed.out.transaction.cleanup.interval.ms). The scan walks every id.
    timeout_check_interval_ms: int = 10_000
    # A transactional id idle this long in Empty/CompleteCommit/CompleteAbort is forgotten (a
    # tombstone): its producer id and epoch go, and a new instance starts from a fresh id.
    transactional_id_expiration_ms: int = 7 * DAY_MS
    # How often a Tick looks for expired transactional ids (Kafka: once an hour).
    expiration_check_interval_ms: int = 3_600_000
    # Partitions one transaction may write (its markers are one request per leader, and its
    # metadata one record): past it, AddPartitionsToTxn is refused with POLICY_VIOLATION.
    partitions_per_transaction_max: int = 10_000
    # Writes to `__transaction_state` awaiting replication; past it, requests that would write
    # are answered THROTTLED (retriable) so a slow partition cannot grow memory without bound.
    pending_writes_max: int = 1_024
    # Markers that failed to be written are requested again after this long (never dropped:
    # a transaction cannot complete without them).
    marker_retry_backoff_ms: int = 500
    # AddPartitions/AddOffsets of the producer's next transaction that arrive while the previous
    # one is still writing its markers wait (parked) for its Complete* record instead of being
    # refused with CONCURRENT_TRANSACTIONS: a producer starts its next transaction at once, and a
    # refusal costs it a client backoff. Parked requests hold memory until the markers land (a
    # partition may be down for long), so they are bounded per transactional id and per
    # coordinator partition; past either bound the request gets CONCURRENT_TRANSACTIONS again.
    parked_requests_per_id_max: int = 4
    parked_requests_max: int = 1_024

    ALIASES = {  # noqa: RUF012 - class-level constant, not a field
        "transaction.max.timeout.ms": "transaction_timeout_ms_max",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "timeout_check_interval_ms",
        "transactional.id.expiration.ms": "transactional_id_expiration_ms",
        "transaction.remove.expired.transaction.cleanup.interval.ms": (
            "expiration_check_interval_ms"
        ),
    }

    def validate(self) -> None:
        check_range("transaction_timeout_ms_max", self.transaction_timeout_ms_max, 1)
        check_range("timeout_check_interval_ms", self.timeout_check_interval_ms, 1)
        check_range("transactional_id_expiration_ms", self.transactional_id_expiration_ms, 1)
        check_range("expiration_check_interval_ms", self.expiration_check_interval_ms, 1)
        check_range(
            "partitions_per_transaction_max", self.partitions_per_transaction_max, 1, 1_000_000
        )
        check_range("pending_writes_max", self.pending_writes_max, 1)
        check_range("marker_retry_backoff_ms", self.marker_retry_backoff_ms, 1)
        check_range("parked_requests_per_id_max", self.parked_requests_per_id_max, 0)
        check_range("parked_requests_max", self.parked_requests_max, 0)
