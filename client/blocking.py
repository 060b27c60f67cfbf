"""The blocking clients: thin facades over `client.aio`, each running its own trio loop thread.

Rules:
- Every class takes the same options as its `client.aio` twin and delegates to it; nothing is
  reimplemented here. Hot paths (`Producer.send`, `Consumer.poll` with records buffered) run in
  the caller's thread on thread-safe structures; everything else goes through `LoopThread.run`.
- Usable from plain scripts and from several threads at once; `close()` (or `with`) ends the
  thread. A producer flushes on close.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from client import aio
from client._loop import LoopThread
from client.accumulator import RECORD_OVERHEAD_BYTES, DeliveryCallback, RecordFuture
from client.aio.producer import NeedMetadataError
from client.aio.share_consumer import AcknowledgementResults, AcknowledgeType
from client.bulk import BulkAppend, SendManyFuture
from client.consumer_records import ConsumerRecords
from client.errors import BrokerError, BufferFullError, ErrorCode
from client.serialization import serialize
from client.types import (
    ClusterStatus,
    ConsumerGroupMetadata,
    ConsumerRecord,
    ListedTransaction,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    ShareGroupDescription,
    ShareRecord,
    TopicDescription,
    TopicPartition,
    TransactionDescription,
)


class _Blocking:
    _loop: LoopThread

    def close(self) -> None:
        self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Producer(_Blocking):
    """`Producer(bootstrap, acks="all", linger_ms=5, batch_bytes=..., compression=None, ...)`;
    kafka-python's `bootstrap_servers=`, `key_serializer=` and `value_serializer=` work too.

    `send()` returns a `RecordFuture` (`.result(timeout)` -> RecordMetadata); `callback(metadata,
    error)` runs in the producer's I/O thread and must be quick and must not call the producer.
    """

    def __init__(self, bootstrap: str | Sequence[str] | None = None, **options: Any) -> None:
        self._aio = aio.Producer(bootstrap, thread_safe=True, **options)
        self._acc = self._aio._acc
        self._loop = LoopThread(self._aio, "pybroker-producer")
        self._loop.start()

    def send(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        callback: DeliveryCallback | None = None,
    ) -> RecordFuture:
        """Queue a record; blocks up to `max_block_ms` for buffer memory, then `BufferFullError`.

        `key`/`value` are bytes (or str), or any object with `key_serializer`/`value_serializer`.
        """
        if self._aio._serializers is not None:
            key, value = serialize(*self._aio._serializers, topic, key, value)
        try:
            future = self._aio._append(
                topic, value, key, headers, partition, timestamp_ms, callback
            )
        except NeedMetadataError:
            self._loop.run(self._aio.load_topic, topic)
            future = self._aio._append(
                topic, value, key, headers, partition, timestamp_ms, callback
            )
        except BrokerError as exc:
            if exc.code is not ErrorCode.UNKNOWN_PARTITION:
                raise
            self._loop.run(self._aio.reload_topic, topic)  # still out of range: raised again
            future = self._aio._append(
                topic, value, key, headers, partition, timestamp_ms, callback
            )
        if future is not None:
            return future
        return self._send_when_memory(topic, value, key, headers, partition, timestamp_ms, callback)

    def _send_when_memory(self, topic: str, value: Any, key: Any, *rest: Any) -> RecordFuture:
        need = RECORD_OVERHEAD_BYTES + len(value or b"") + len(key or b"")
        deadline = time.monotonic() + self._aio.max_block_s
        while True:
            self._wait_for_memory(need, deadline)
            future = self._aio._append(topic, value, key, *rest)
            if future is not None:
                return future

    def _wait_for_memory(self, need: int, deadline: float) -> None:
        """Wait until `need` bytes fit in buffer memory; `BufferFullError` at `deadline`."""
        acc = self._acc
        acc.notify()  # let the sender drain lingering batches, which frees memory
        remaining = deadline - time.monotonic()
        with acc.memory_freed:
            # The check and the wait are under the accumulator's lock, so a release cannot
            # slip in between them and be missed.
            room = acc.memory_freed.wait_for(
                lambda: acc.memory_used == 0 or acc.memory_used + need <= acc.buffer_memory_bytes,
                timeout=max(remaining, 0.0),
            )
        if not room:
            raise BufferFullError(
                f"no buffer memory freed within max_block_ms="
                f"{self._aio.max_block_s * 1000:.0f}: the broker is not keeping up or not "
                "reachable; flush(), slow down or raise buffer_memory_bytes"
            )

    def send_many(
        self,
        topic: str,
        values: Iterable[Any],
        *,
        keys: Iterable[Any] | None = None,
        headers: Iterable[Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> SendManyFuture:
        """Queue many records at once; one future for all (`.result(timeout)` -> their
        metadata in call order). Same rules as `client.aio.Producer.send_many`; blocks for
        buffer memory between batches, up to `max_block_ms` without progress."""
        bulk = BulkAppend(self._aio, topic, values, keys, headers, partition, timestamp_ms)
        try:
            routed = bulk.route()
        except BrokerError as exc:
            if exc.code is not ErrorCode.UNKNOWN_PARTITION:
                raise
            self._loop.run(self._aio.reload_topic, topic)  # still out of range: raised again
            routed = bulk.route()
        if not routed:
            self._loop.run(self._aio.load_topic, topic)
            bulk.route()
        deadline: float | None = None
        while not bulk.finished:
            if bulk.append_some():
                deadline = None
                continue
            if deadline is None:
                deadline = time.monotonic() + self._aio.max_block_s
            try:
                self._wait_for_memory(bulk.next_size(), deadline)
            except BufferFullError as exc:
                exc.queued = bulk.future()
                raise
        return bulk.future()

    def flush(self) -> None:
        """Send everything queued and wait until each record is acknowledged or failed."""
        self._loop.run(self._aio.flush)

    def close(self, timeout: float | None = None) -> None:
        """Flush for at most `timeout` seconds (default: until delivered or failed), then close.

        Records still undelivered fail their futures with `ClientClosedError`.
        """
        if timeout is not None:
            self._aio._close_timeout_s = timeout
        self._loop.stop()

    def partitions_for(self, topic: str) -> int:
        """The partition count of `topic` (raises UNKNOWN_TOPIC if it does not exist)."""
        return self._loop.run(self._aio.load_topic, topic)

    # Transactions: see `client.aio.Producer` and docs/transactions.md.

    def init_transactions(self) -> None:
        """Register the transactional id (fencing older instances); once, before the first
        transaction."""
        self._loop.run(self._aio.init_transactions)

    def begin_transaction(self) -> None:
        self._aio.begin_transaction()

    def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int] | Mapping[tuple[str, int], int],
        group_metadata: ConsumerGroupMetadata | str,
    ) -> None:
        """Commit the group's `offsets` with the transaction (consume-transform-produce)."""
        self._loop.run(self._aio.send_offsets_to_transaction, offsets, group_metadata)

    def commit_transaction(self) -> None:
        """Flush the transaction's records, then commit it."""
        self._loop.run(self._aio.commit_transaction)

    def abort_transaction(self) -> None:
        """Drop unsent records and abort the transaction; then begin a new one."""
        self._loop.run(self._aio.abort_transaction)


class Consumer(_Blocking):
    """`Consumer(bootstrap, auto_offset_reset="latest", ...)`; `assign` or `subscribe` (topics or
    `pattern=`), then `poll()` or iterate; `key_deserializer=`/`value_deserializer=` as in
    kafka-python."""

    def __init__(self, bootstrap: str | Sequence[str] | None = None, **options: Any) -> None:
        self._aio = aio.Consumer(bootstrap, **options)
        self._loop = LoopThread(self._aio, "pybroker-consumer")
        self._loop.start()

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        self._aio.assign(partitions)

    def subscribe(
        self,
        topics: Iterable[str] | re.Pattern[str] = (),
        pattern: str | re.Pattern[str] | None = None,
        listener: Any = None,
    ) -> None:
        """Read `topics` or the topics matching `pattern`, now and as they are created; with a
        `group_id`, join the group (`listener` callbacks run in the loop thread)."""
        self._aio.subscribe(topics, pattern, listener)

    def unsubscribe(self) -> None:
        """Stop reading everything; with a group, give the partitions up and leave it."""
        self._aio.unsubscribe()

    def subscription(self) -> set[str]:
        return self._aio.subscription()

    def pause(self, *partitions: TopicPartition | tuple[str, int]) -> None:
        """Stop fetching these partitions; keep calling poll() (it returns the others)."""
        self._aio.pause(*partitions)

    def resume(self, *partitions: TopicPartition | tuple[str, int]) -> None:
        self._aio.resume(*partitions)

    def paused(self) -> set[TopicPartition]:
        return self._aio.paused()

    def commit(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None
    ) -> None:
        """Commit (default: everything poll() returned) and wait; see `client.aio.Consumer`."""
        self._loop.run(self._aio.commit, offsets)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None,
        callback: Callable[[BaseException | None], Any] | None = None,
    ) -> None:
        """Start a commit; `callback(error or None)` runs in the loop thread when it is done."""
        if offsets is None:
            offsets = self._aio._positions(self._aio._member().owned)
        self._loop.call_soon(lambda: self._aio.commit_async(offsets, callback))

    def committed(
        self, partitions: TopicPartition | Iterable[TopicPartition | tuple[str, int]]
    ) -> OffsetAndMetadata | dict[TopicPartition, OffsetAndMetadata | None] | None:
        """One partition: its `OffsetAndMetadata` or None; several: a dict of them."""
        return self._loop.run(self._aio.committed, partitions)

    def assignment(self) -> set[TopicPartition]:
        return self._aio.assignment()

    def group_metadata(self) -> ConsumerGroupMetadata:
        """For `Producer.send_offsets_to_transaction`."""
        return self._aio.group_metadata()

    def seek(self, partition: TopicPartition | tuple[str, int], offset: int) -> None:
        self._aio.seek(partition, offset)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        self._aio.seek_to_beginning(partitions)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        self._aio.seek_to_end(partitions)

    def position(self, partition: TopicPartition | tuple[str, int]) -> int:
        return self._loop.run(self._aio.position, partition)

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self._loop.run(self._aio.end_offsets, list(partitions))

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self._loop.run(self._aio.beginning_offsets, list(partitions))

    def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        return self._loop.run(self._aio.offsets_for_times, timestamps)

    def poll(self, timeout_ms: float = 1000, max_records: int | None = None) -> ConsumerRecords:
        """Up to `max_records` records, as a `ConsumerRecords` (a sequence that builds each
        `ConsumerRecord` as it is read); empty if none arrived within `timeout_ms`."""
        records = self._aio.poll_nowait(max_records)
        if records:
            return records
        return self._loop.run(self._aio.poll, timeout_ms, max_records)

    def __iter__(self) -> Iterator[ConsumerRecord]:
        """Every record, forever (until `close()` from another thread or a break)."""
        while True:
            yield from self.poll(timeout_ms=self._aio.fetch_max_wait_ms)


class ShareConsumer(_Blocking):
    """`ShareConsumer(bootstrap, group_id="jobs", acknowledgement_mode="implicit", ...)`:
    `subscribe`, then `poll()`, `acknowledge(record, "accept")` and `commit()`; see
    `client.aio.ShareConsumer`. `on_acknowledged` runs in the consumer's loop thread."""

    def __init__(self, bootstrap: str | Sequence[str] | None = None, **options: Any) -> None:
        self._aio = aio.ShareConsumer(bootstrap, **options)
        self._loop = LoopThread(self._aio, "pybroker-share-consumer")
        self._loop.start()

    @property
    def member_id(self) -> str:
        return self._aio.member_id

    def subscribe(self, topics: Iterable[str]) -> None:
        self._aio.subscribe(topics)

    def subscription(self) -> set[str]:
        return self._aio.subscription()

    def poll(self, timeout_ms: float = 1000, max_records: int | None = None) -> list[ShareRecord]:
        """Acquired records (implicit mode: accepting the previous poll's unacknowledged ones);
        [] if none arrived within `timeout_ms`."""
        return self._loop.run(self._aio.poll, timeout_ms, max_records)

    def acknowledge(
        self, record: ShareRecord, type: AcknowledgeType = "accept", delay_ms: int = 0
    ) -> None:
        """Acknowledge a record of the latest poll: "accept", "release" (after `delay_ms`),
        "reject" or "renew"; sent with the next poll or commit(). Thread-safe."""
        self._aio.acknowledge(record, type, delay_ms)

    def commit(self) -> AcknowledgementResults:
        """Send the pending acknowledgements and wait: per partition, None or its error."""
        return self._loop.run(self._aio.commit)


class AdminClient(_Blocking):
    """Topic administration (`create_topic`, `delete_topic`, `describe_topic`, `list_topics`,
    `describe_configs`, `alter_configs`, `create_partitions`, `delete_records`),
    consumer groups (`list_groups`, `describe_group`, `delete_group`,
    `list_consumer_group_offsets`, `alter_consumer_group_offsets`,
    `list_offsets`), share groups (`alter_group_config`, `describe_share_group`), transactions
    (`list_transactions`, `describe_transactions`), users (`upsert_user`, `delete_user`,
    `describe_users`) and `cluster_status`."""

    def __init__(self, bootstrap: str | Sequence[str] | None = None, **options: Any) -> None:
        self._aio = aio.AdminClient(bootstrap, **options)
        self._loop = LoopThread(self._aio, "pybroker-admin")
        self._loop.start()

    def create_topic(
        self,
        name: str,
        partitions: int = -1,
        replication_factor: int = 1,
        config: Mapping[str, Any] | None = None,
        *,
        exist_ok: bool = False,
    ) -> None:
        create = functools.partial(self._aio.create_topic, exist_ok=exist_ok)
        self._loop.run(create, name, partitions, replication_factor, config)

    def describe_configs(self, topic: str) -> dict[str, Any]:
        return self._loop.run(self._aio.describe_configs, topic)

    def upsert_user(
        self,
        name: str,
        password: str,
        *,
        mechanism: str = "SCRAM-SHA-256",
        iterations: int = 4096,
    ) -> None:
        upsert = functools.partial(
            self._aio.upsert_user, mechanism=mechanism, iterations=iterations
        )
        self._loop.run(upsert, name, password)

    def delete_user(self, name: str, *, mechanism: str | None = None) -> None:
        self._loop.run(functools.partial(self._aio.delete_user, mechanism=mechanism), name)

    def describe_users(self, names: list[str] | None = None) -> dict[str, list[tuple[str, int]]]:
        return self._loop.run(self._aio.describe_users, names)

    def alter_configs(
        self, topic: str, configs: Mapping[str, Any] | None = None, delete: Iterable[str] = ()
    ) -> dict[str, Any]:
        return self._loop.run(self._aio.alter_configs, topic, configs, tuple(delete))

    def create_partitions(self, topic: str, new_total: int, *, validate_only: bool = False) -> None:
        create = functools.partial(self._aio.create_partitions, validate_only=validate_only)
        self._loop.run(create, topic, new_total)

    def delete_records(self, offsets: Mapping[tuple[str, int], int]) -> dict[TopicPartition, int]:
        return self._loop.run(self._aio.delete_records, offsets)

    def alter_topic_configs(
        self, name: str, configs: Mapping[str, Any] | None = None, *, reset: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        alter = functools.partial(self._aio.alter_topic_configs, name, configs, reset=reset)
        return self._loop.run(alter)

    def delete_topic(self, name: str) -> None:
        self._loop.run(self._aio.delete_topic, name)

    def describe_topic(self, name: str) -> TopicDescription:
        return self._loop.run(self._aio.describe_topic, name)

    def describe_topics(self, names: list[str] | None = None) -> list[TopicDescription]:
        return self._loop.run(self._aio.describe_topics, names)

    def list_topics(self) -> list[str]:
        return self._loop.run(self._aio.list_topics)

    def list_groups(self, states: tuple[str, ...] = ()) -> list[Any]:
        return self._loop.run(self._aio.list_groups, states)

    def describe_group(self, group_id: str) -> Any:
        return self._loop.run(self._aio.describe_group, group_id)

    def delete_group(self, group_id: str) -> None:
        self._loop.run(self._aio.delete_group, group_id)

    def list_consumer_group_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets (of `partitions`, or all); no entry without a commit."""
        return self._loop.run(self._aio.list_consumer_group_offsets, group_id, partitions)

    def alter_consumer_group_offsets(
        self, group_id: str, offsets: Mapping[TopicPartition, int | OffsetAndMetadata]
    ) -> None:
        """Set the committed offsets of a group without members (else GROUP_NOT_EMPTY)."""
        self._loop.run(self._aio.alter_consumer_group_offsets, group_id, offsets)

    def alter_group_config(
        self, group_id: str, configs: Mapping[str, str | int], reset: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Set a share group's configs; returns its effective configs (INVALID_CONFIG: none
        changed)."""
        return self._loop.run(self._aio.alter_group_config, group_id, configs, tuple(reset))

    def describe_share_group(self, group_id: str) -> ShareGroupDescription:
        return self._loop.run(self._aio.describe_share_group, group_id)

    def list_offsets(
        self,
        partitions: list[TopicPartition],
        timestamp: int,
        isolation_level: str = "read_uncommitted",
    ) -> dict[TopicPartition, int]:
        return self._loop.run(self._aio.list_offsets, partitions, timestamp, isolation_level)

    def cluster_status(self) -> ClusterStatus:
        """Brokers, controller leader, offline and under-replicated partitions."""
        return self._loop.run(self._aio.cluster_status)

    def decommission_broker(self, node_id: int) -> None:
        """Start moving everything off broker `node_id`, then remove it (see the aio client)."""
        self._loop.run(self._aio.decommission_broker, node_id)

    def alter_partition_reassignments(
        self,
        reassignments: Mapping[tuple[str, int], Iterable[int] | None],
        *,
        throttle_bytes_per_s: int = 0,
    ) -> None:
        """Move partitions to new replicas (None: cancel); see the trio client's docstring."""
        self._loop.run(
            functools.partial(
                self._aio.alter_partition_reassignments,
                reassignments,
                throttle_bytes_per_s=throttle_bytes_per_s,
            )
        )

    def list_partition_reassignments(self, topics: Iterable[str] | None = None) -> list[Any]:
        return self._loop.run(self._aio.list_partition_reassignments, topics)

    def rebalance(
        self, *, dry_run: bool = False, throttle_bytes_per_s: int = 0, move_count_max: int = 1000
    ) -> list[Any]:
        """Even replicas and preferred leaders; returns the planned (and started) moves."""
        return self._loop.run(
            functools.partial(
                self._aio.rebalance,
                dry_run=dry_run,
                throttle_bytes_per_s=throttle_bytes_per_s,
                move_count_max=move_count_max,
            )
        )

    def create_acls(self, acls: Iterable[Any]) -> None:
        """Add ACL bindings (`wire.codec.AclBindingData`); see the trio client."""
        self._loop.run(self._aio.create_acls, list(acls))

    def describe_acls(self, acl_filter: Any = None) -> list[Any]:
        """ACL bindings selected by `acl_filter` (`wire.codec.AclFilterData`; None: all)."""
        return self._loop.run(self._aio.describe_acls, acl_filter)

    def delete_acls(self, filters: Iterable[Any]) -> list[Any]:
        """Remove the bindings the filters select; returns them."""
        return self._loop.run(self._aio.delete_acls, list(filters))

    def alter_client_quotas(self, **entity_and_values: Any) -> None:
        """`user=`, `client_id=`, `values={key: rate}`, `remove=[key]`; see the trio client."""
        self._loop.run(functools.partial(self._aio.alter_client_quotas, **entity_and_values))

    def describe_client_quotas(
        self, *, user: str | None = None, client_id: str | None = None
    ) -> list[Any]:
        return self._loop.run(
            functools.partial(self._aio.describe_client_quotas, user=user, client_id=client_id)
        )

    def list_transactions(self, states: Iterable[str] | None = None) -> list[ListedTransaction]:
        return self._loop.run(self._aio.list_transactions, states)

    def describe_transactions(
        self, transactional_ids: Iterable[str]
    ) -> list[TransactionDescription]:
        return self._loop.run(self._aio.describe_transactions, list(transactional_ids))
