"""Group membership for the trio consumer: join, sync, heartbeat, commit, rebalance, leave.

`GroupMember` is one consumer's side of Kafka's classic group protocol. It runs as one background
task in the consumer's nursery (`run`): find the coordinator, join (the leader runs the assignor,
`wire.assignors.assign_encoded`), sync, then heartbeat every
`heartbeat_interval_ms`, auto-commit every `auto_commit_interval_ms`, and rejoin when the
coordinator says REBALANCE_IN_PROGRESS.

Rules:
- Eager assignors (range, roundrobin, sticky) revoke every owned partition before rejoining;
  cooperative-sticky (KIP-429) revokes only the partitions the new assignment takes away, then
  rejoins once more so they can be handed to their new owner; the partitions a member keeps are
  consumed throughout.
- What auto-commit (and a rebalance, and close) commits is `consumed`: the consumer's positions
  as they were when `poll()` was last *entered*, i.e. only records poll() returned before the
  previous poll, which the application has therefore finished with. A record poll() has not
  returned, or returned in the latest poll, is never committed by the library: at-least-once.
  `commit()` without offsets commits the current positions (everything returned so far): call it
  after processing.
- A member that does not call poll() within `max_poll_interval_ms` leaves the group (its
  partitions go to the others) and rejoins at its next poll.
- Listener callbacks (`on_partitions_revoked`, `on_partitions_assigned`, `on_partitions_lost`)
  run in the consumer's trio task (the loop thread of the blocking facade), may be plain or async
  functions, and must not block for long: heartbeats wait for them.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import trio

from client.aio.cluster import Cluster
from client.aio.metadata_refresh import RefreshSchedule, subscribed_partition_counts
from client.errors import ClientError
from client.types import OffsetAndMetadata, TopicPartition
from wire import codec
from wire.assignors import (
    ASSIGNORS,
    CONSUMER_PROTOCOL_TYPE,
    Assignment,
    Subscription,
    assign_encoded,
)
from wire.assignors import TopicPartition as CoreTopicPartition
from wire.config_error import ConfigError
from wire.error_codes import BrokerError, ErrorCode


class GroupHost(Protocol):
    """What a `GroupMember` needs from the consumer it serves (`client.aio.consumer.Consumer`).

    Declared here, not imported, so the layers read top to bottom: the consumer builds on the
    group, and the group knows its consumer only through this interface.
    """

    retry_backoff_s: float
    _client_id: str
    _cluster: Cluster
    _token: trio.lowlevel.TrioToken | None

    def _positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]: ...

    def _add_partitions(self, positions: Mapping[TopicPartition, int | None]) -> None: ...

    def _remove_partitions(self, partitions: Iterable[TopicPartition]) -> None: ...

    def _call_in_loop(self, fn: Callable[[], Any]) -> None: ...

    def _fail(self, exc: BaseException) -> None: ...


log = logging.getLogger("client.group")

SESSION_TIMEOUT_MS_DEFAULT: Final = 10_000
HEARTBEAT_INTERVAL_MS_DEFAULT: Final = 3_000
MAX_POLL_INTERVAL_MS_DEFAULT: Final = 300_000
AUTO_COMMIT_INTERVAL_MS_DEFAULT: Final = 5_000
# Added to a JoinGroup's request timeout: the broker may hold it for the rebalance timeout plus
# its initial rebalance delay.
JOIN_MARGIN_S: Final = 10.0
# How long close() may spend committing and leaving.
CLOSE_TIMEOUT_S: Final = 5.0
# Attempts of a synchronous commit across coordinator moves and lost connections.
COMMIT_ATTEMPTS: Final = 5

COORDINATOR_ERRORS: Final = frozenset(
    {
        ErrorCode.NOT_COORDINATOR,
        ErrorCode.COORDINATOR_NOT_AVAILABLE,
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
    }
)
MEMBERSHIP_ERRORS: Final = frozenset(
    {
        ErrorCode.REBALANCE_IN_PROGRESS,
        ErrorCode.ILLEGAL_GENERATION,
        ErrorCode.UNKNOWN_MEMBER_ID,
        ErrorCode.FENCED_INSTANCE_ID,
    }
)
# Partition errors of an OffsetFetch that fail the call (others: no committed offset).
OFFSET_FETCH_FAILURES: Final = frozenset(
    {ErrorCode.UNSTABLE_OFFSET_COMMIT, ErrorCode.TOPIC_AUTHORIZATION_FAILED}
)


class CommitFailedError(ClientError):
    """The group rebalanced (or evicted us) before the commit: the partitions may belong to
    another member now. Their records may be consumed again (at-least-once); do not retry."""


class ConsumerRebalanceListener:
    """Subclass and override what you need (or pass any object with some of these methods)."""

    def on_partitions_revoked(self, partitions: set[TopicPartition]) -> Any:
        """Before a rebalance takes `partitions` away: commit what you processed of them."""

    def on_partitions_assigned(self, partitions: set[TopicPartition]) -> Any:
        """After a rebalance gave us `partitions` (only the new ones, with cooperative-sticky)."""

    def on_partitions_lost(self, partitions: set[TopicPartition]) -> Any:
        """We were evicted: `partitions` may already belong to others; committing would fail."""


class GroupMember:
    """The group side of one `Consumer` (created by it when `group_id` is set)."""

    def __init__(
        self,
        consumer: GroupHost,
        *,
        group_id: str,
        group_instance_id: str | None,
        assignor: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        max_poll_interval_ms: int,
        enable_auto_commit: bool,
        auto_commit_interval_ms: int,
        metadata_max_age_ms: int,
    ) -> None:
        """`metadata_max_age_ms`: how often the subscription is checked for new topics and
        partitions (sooner while a subscribed topic is missing; `client.aio.metadata_refresh`)."""
        if not group_id:
            raise ConfigError("group_id", "must not be empty")
        if assignor not in ASSIGNORS:
            raise ConfigError("assignor", f"expected one of {sorted(ASSIGNORS)}, got {assignor!r}")
        if not 0 < heartbeat_interval_ms < session_timeout_ms:
            raise ConfigError(
                "heartbeat_interval_ms", "must be positive and below session_timeout_ms"
            )
        if max_poll_interval_ms < 1 or auto_commit_interval_ms < 1:
            raise ConfigError("max_poll_interval_ms", "max_poll/auto_commit intervals must be > 0")
        self._consumer = consumer
        self.group_id = group_id
        self.group_instance_id = group_instance_id
        self.assignor = assignor
        self.cooperative = ASSIGNORS[assignor].cooperative
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_s = heartbeat_interval_ms / 1000
        self.max_poll_interval_s = max_poll_interval_ms / 1000
        self.max_poll_interval_ms = max_poll_interval_ms
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        # Membership.
        self.member_id = ""
        self.generation = -1
        self.protocol_name = ""
        self.owned: set[TopicPartition] = set()
        self._coordinator_id: int | None = None
        self._need_join = False
        self._topics: list[str] = []
        self._pattern: re.Pattern[str] | None = None
        self._resolved: list[str] = []
        # The leader's view at its last assignment: every member's topics and their partition
        # counts (a missing topic is absent). A change makes the leader rejoin, which rebalances.
        self._leader = False
        self._group_topics: list[str] = []
        self._assigned_counts: dict[str, int] = {}
        self._refresh = RefreshSchedule(
            max_age_ms=metadata_max_age_ms, backoff_ms=round(consumer.retry_backoff_s * 1000)
        )
        self._need_leave = False
        self._listener: Any = None
        # Offsets.
        self.consumed: dict[TopicPartition, int] = {}
        self._last_committed: dict[TopicPartition, int] = {}
        # Timers (time.monotonic()).
        self._last_poll = time.monotonic()
        self._left_for_poll_timeout = False
        self._next_heartbeat = 0.0
        self._next_auto_commit = 0.0
        self._wake = trio.Event()
        self._closing = False
        self._abandoned = False
        self.rebalance_count = 0

    # --- the application's side -----------------------------------------------------------------

    def subscribe(self, topics: Iterable[str] | re.Pattern[str], listener: Any = None) -> None:
        """Join the group for `topics` (or every topic matching a compiled pattern)."""
        if isinstance(topics, re.Pattern):
            self._pattern, self._topics = topics, []
        else:
            self._pattern, self._topics = None, sorted(set(topics))
        self._listener = listener
        self._last_poll = time.monotonic()
        self._need_join = True
        self._need_leave = False
        self._refresh.request()
        self.wake()

    def unsubscribe(self) -> None:
        """Give up every partition (commit, `on_partitions_revoked`) and leave the group, in the
        background task; a later `subscribe` joins again."""
        self._pattern, self._topics, self._resolved = None, [], []
        self._need_join = False
        self._need_leave = True
        self.wake()

    def subscription(self) -> set[str]:
        return set(self._resolved if self._pattern is not None else self._topics)

    def on_poll(self) -> None:
        """Called at the start of every poll (any thread): snapshot what the app has finished."""
        self.consumed = self._consumer._positions(self.owned)
        self._last_poll = time.monotonic()
        if self._left_for_poll_timeout:
            self._left_for_poll_timeout = False
            self._need_join = True
            self.wake()

    def wake(self) -> None:
        """Wake the background task (from any thread)."""
        token = self._consumer._token
        try:
            here = trio.lowlevel.current_trio_token()
        except RuntimeError:
            here = None
        if token is None or here is token:
            self._wake.set()
        else:
            self._consumer._call_in_loop(lambda: self._wake.set())

    def abandon(self) -> None:
        """Close like a crash: no last commit and no LeaveGroup (tests of failure handling)."""
        self._abandoned = True

    async def commit(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None
    ) -> None:
        """Commit `offsets` (default: the positions of every owned partition) and wait for it.

        Raises `CommitFailedError` if the group rebalanced meanwhile, `BrokerError` otherwise.
        """
        if offsets is None:
            offsets = self._consumer._positions(self.owned)
        await self._commit({TopicPartition(*tp): value for tp, value in offsets.items()})

    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata | None]:
        """The group's committed offset and metadata per partition (None where it has none)."""
        wanted = [TopicPartition(*tp) for tp in partitions]
        fetched = await self._fetch_committed(wanted)
        return {tp: fetched.get(tp) for tp in wanted}

    # --- the background task --------------------------------------------------------------------

    async def run(self) -> None:
        backoff_s = self._consumer.retry_backoff_s
        while not self._closing:
            self._wake = trio.Event()
            try:
                await self._step()
            except (ClientError, BrokerError) as exc:
                if self._closing:
                    return
                if _is_fatal(exc):
                    self._consumer._fail(exc)
                    return
                log.info("group %s: %s; retrying", self.group_id, exc)
                self._coordinator_id = None
                with trio.move_on_after(backoff_s):
                    await self._wake.wait()

    async def _step(self) -> None:
        if self._need_leave:
            await self._unsubscribe()
            return
        if not self._topics and self._pattern is None:
            await self._wake.wait()
            return
        now = time.monotonic()
        if self.generation >= 0 and now - self._last_poll > self.max_poll_interval_s:
            await self._leave_for_poll_timeout()
            return
        if self._left_for_poll_timeout:
            await self._wake.wait()
            return
        if self.generation >= 0 and self._refresh.due(now) and await self._subscription_changed():
            self._need_join = True
        if self._need_join or self.generation < 0:
            await self._join_and_sync()
            return
        if now >= self._next_heartbeat:
            await self._heartbeat()
        if self.enable_auto_commit and now >= self._next_auto_commit:
            self._next_auto_commit = now + self.auto_commit_interval_s
            await self._auto_commit()
        wait_until = min(
            self._next_heartbeat,
            self._next_auto_commit if self.enable_auto_commit else math.inf,
            self._last_poll + self.max_poll_interval_s + 0.001,
            self._refresh.next_at,
        )
        with trio.move_on_after(max(wait_until - time.monotonic(), 0.0)):
            await self._wake.wait()

    # --- joining ----------------------------------------------------------------------------------

    async def _join_and_sync(self) -> None:
        previously_owned = set(self.owned)
        if not self.cooperative and self.owned:
            await self._revoke(set(self.owned))
        if self._pattern is not None:
            topics = sorted(await subscribed_partition_counts(self._cluster, (), self._pattern))
            found = bool(topics)
        else:
            topics, found = self._topics, True
        self._resolved = list(topics)
        subscription = Subscription(
            topics=tuple(topics),
            owned=tuple(_core(tp) for tp in sorted(previously_owned)),
            generation=self.generation,
            group_instance_id=self.group_instance_id,
        )
        join = await self._call(
            codec.JoinGroupRequest(
                group_id=self.group_id,
                session_timeout_ms=self.session_timeout_ms,
                rebalance_timeout_ms=self.max_poll_interval_ms,
                member_id=self.member_id,
                group_instance_id=self.group_instance_id,
                protocol_type=CONSUMER_PROTOCOL_TYPE,
                protocols=(
                    codec.JoinGroupProtocol(name=self.assignor, metadata=subscription.encode()),
                ),
                client_id=self._consumer._client_id,
            ),
            extra_timeout_s=self.max_poll_interval_s + JOIN_MARGIN_S,
        )
        if join.error is not ErrorCode.NONE:
            await self._membership_error(join.error, join.error_message, "join")
            return
        self.member_id, self.generation = join.member_id, join.generation
        self.protocol_name = join.protocol_name
        self._leader = join.leader_id == join.member_id
        assignments: tuple[codec.SyncGroupAssignment, ...] = ()
        if self._leader and not join.skip_assignment:
            assignments = await self._assign(join)
            found &= set(self._group_topics) <= set(self._assigned_counts)
        sync = await self._call(
            codec.SyncGroupRequest(
                group_id=self.group_id,
                generation=self.generation,
                member_id=self.member_id,
                group_instance_id=self.group_instance_id,
                protocol_type=CONSUMER_PROTOCOL_TYPE,
                protocol_name=self.protocol_name,
                assignments=assignments,
            ),
            extra_timeout_s=self.max_poll_interval_s + JOIN_MARGIN_S,
        )
        if sync.error is not ErrorCode.NONE:
            await self._membership_error(sync.error, sync.error_message, "sync")
            return
        self._need_join = False
        self._refresh.done(time.monotonic(), complete=found)
        self.rebalance_count += 1
        partitions = {TopicPartition(tp.topic, tp.partition) for tp in _decode(sync.assignment)}
        await self._apply_assignment(partitions)
        now = time.monotonic()
        self._next_heartbeat = now + self.heartbeat_interval_s
        self._next_auto_commit = now + self.auto_commit_interval_s
        log.info(
            "group %s: member %s generation %d owns %s",
            self.group_id,
            self.member_id,
            self.generation,
            sorted(self.owned),
        )

    async def _assign(self, join: codec.JoinGroupResponse) -> tuple[codec.SyncGroupAssignment, ...]:
        """The leader's job: partition counts of every subscribed topic, then the assignor."""
        members = [(member.member_id, member.metadata) for member in join.members]
        try:
            topics = sorted({t for _, data in members for t in Subscription.decode(data).topics})
        except (ValueError, TypeError, KeyError) as exc:
            raise BrokerError(
                ErrorCode.INCONSISTENT_GROUP_PROTOCOL, f"undecodable member subscription: {exc}"
            ) from exc
        # Fresh counts: partitions added since the last rebalance must be handed out by this one.
        counts = await subscribed_partition_counts(self._cluster, topics)
        for topic in sorted(set(topics) - set(counts)):
            log.warning(
                "group %s: subscribed topic %r does not exist (yet); looking again soon",
                self.group_id,
                topic,
            )
        self._group_topics, self._assigned_counts = topics, counts
        encoded = assign_encoded(join.protocol_name, members, counts)
        return tuple(
            codec.SyncGroupAssignment(member_id=member_id, assignment=data)
            for member_id, data in sorted(encoded.items())
        )

    async def _apply_assignment(self, partitions: set[TopicPartition]) -> None:
        revoked = self.owned - partitions
        added = partitions - self.owned
        if revoked:
            # Cooperative: give these up now; a follow-up rebalance hands them to their new owner.
            await self._revoke(revoked)
            self._need_join = True
        committed = await self._fetch_committed(sorted(added))
        positions = {tp: value.offset for tp, value in committed.items()}
        self._last_committed.update(positions)
        self._consumer._add_partitions({tp: positions.get(tp) for tp in added})
        self.owned = set(partitions)
        await self._notify("on_partitions_assigned", added if self.cooperative else partitions)

    async def _revoke(self, partitions: set[TopicPartition]) -> None:
        """Commit what the application finished of `partitions`, tell it, then stop them."""
        if self.enable_auto_commit and self.generation >= 0:
            try:
                await self._commit(
                    {tp: o for tp, o in self.consumed.items() if tp in partitions}, quiet=True
                )
            except (ClientError, BrokerError) as exc:
                log.warning("group %s: commit before revoking failed: %s", self.group_id, exc)
        await self._notify("on_partitions_revoked", set(partitions))
        self._drop(partitions)

    async def _lose(self) -> None:
        """Evicted: the partitions may be someone else's already; no commit."""
        lost = set(self.owned)
        self.generation = -1
        self._need_join = True
        if lost:
            await self._notify("on_partitions_lost", lost)
            self._drop(lost)

    def _drop(self, partitions: set[TopicPartition]) -> None:
        self._consumer._remove_partitions(partitions)
        self.owned -= partitions
        self.consumed = {tp: o for tp, o in self.consumed.items() if tp not in partitions}
        for tp in partitions:
            self._last_committed.pop(tp, None)

    async def _membership_error(self, error: ErrorCode, message: str, what: str) -> None:
        log.info("group %s: %s answered %s: %s", self.group_id, what, error.name, message)
        if error is ErrorCode.UNKNOWN_MEMBER_ID:
            self.member_id = ""
            await self._lose()
        elif error is ErrorCode.ILLEGAL_GENERATION:
            await self._lose()
        elif error is ErrorCode.FENCED_INSTANCE_ID:
            await self._lose()
            raise BrokerError(error, f"group {self.group_id}: {message}")
        elif error is ErrorCode.REBALANCE_IN_PROGRESS:
            self._need_join = True
        elif error in COORDINATOR_ERRORS or error.retriable:
            self._coordinator_id = None
            raise BrokerError(error, message)
        else:
            raise BrokerError(error, f"group {self.group_id}: {message}")

    async def _heartbeat(self) -> None:
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval_s
        response = await self._call(
            codec.HeartbeatRequest(
                group_id=self.group_id,
                generation=self.generation,
                member_id=self.member_id,
                group_instance_id=self.group_instance_id,
            )
        )
        if response.error is not ErrorCode.NONE:
            await self._membership_error(response.error, response.error_message, "heartbeat")

    async def _leave_for_poll_timeout(self) -> None:
        log.warning(
            "group %s: poll() not called within max_poll_interval_ms=%d; leaving the group",
            self.group_id,
            self.max_poll_interval_ms,
        )
        self._left_for_poll_timeout = True
        # Give the partitions up before the group hears of it: once LeaveGroup is answered they
        # may be another member's, and no two members may own one at once.
        await self._lose()  # keeps member_id, which `_leave` names
        await self._leave()
        if self.group_instance_id is None:
            self.member_id = ""

    async def _leave(self) -> None:
        if self.generation < 0 and not self.member_id:
            return
        member = codec.LeaveGroupMember(
            member_id=self.member_id, group_instance_id=self.group_instance_id
        )
        response = await self._call(
            codec.LeaveGroupRequest(group_id=self.group_id, members=(member,))
        )
        if response.error is not ErrorCode.NONE:
            log.info("group %s: leave answered %s", self.group_id, response.error.name)

    async def close(self) -> None:
        """Last commit of what the app finished, revoke callback, LeaveGroup (dynamic members).

        Static members do not leave: a restart within the session timeout keeps the assignment.
        A dynamic member between generations (evicted by `_lose`, its rejoin not answered yet)
        owns nothing to commit or revoke, but still leaves while it has a member id, as Kafka's
        `maybeLeaveGroup` does: else the coordinator keeps it until its session or the rebalance
        times out, and the group's next rebalance waits for it.
        """
        self._closing = True
        self.wake()
        if self._abandoned:
            return
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                if self.generation >= 0:
                    if self.enable_auto_commit:
                        await self._commit(dict(self.consumed), quiet=True)
                    await self._notify("on_partitions_revoked", set(self.owned))
                if self.group_instance_id is None:
                    await self._leave()  # nothing to send without a member id
            except (ClientError, BrokerError) as exc:
                log.warning("group %s: close: %s", self.group_id, exc)

    # --- offsets ----------------------------------------------------------------------------------

    async def _auto_commit(self) -> None:
        try:
            await self._commit(dict(self.consumed), quiet=True)
        except (ClientError, BrokerError) as exc:
            log.warning("group %s: auto-commit failed: %s", self.group_id, exc)

    async def _commit(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata], *, quiet: bool = False
    ) -> None:
        wanted = {tp: OffsetAndMetadata.of(value) for tp, value in offsets.items()}
        if quiet:
            # Library commits: only owned partitions, and only forward: a snapshot taken before
            # the application's own commit() must never move the committed offset back.
            wanted = {
                tp: value
                for tp, value in wanted.items()
                if tp in self.owned and value.offset > self._last_committed.get(tp, -1)
            }
        if not wanted:
            return
        request = codec.OffsetCommitRequest(
            group_id=self.group_id,
            generation=self.generation,
            member_id=self.member_id,
            group_instance_id=self.group_instance_id,
            partitions=tuple(
                codec.OffsetCommitPartition(
                    topic=tp.topic, partition=tp.partition, offset=v.offset, metadata=v.metadata
                )
                for tp, v in sorted(wanted.items())
            ),
        )
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                response = await self._call(request)
            except ClientError:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                self._coordinator_id = None
                continue
            errors = [(response.error, response.error_message or response.error.name)] + [
                (r.error, f"{r.topic}/{r.partition}: {r.error_message or r.error.name}")
                for r in response.partitions
            ]
            failed = [(e, m) for e, m in errors if e is not ErrorCode.NONE]
            # A partition's error (TOPIC_AUTHORIZATION_FAILED...) fails that partition only: the
            # broker committed the others, which later library commits must not move back.
            done: list[TopicPartition] = []
            if not failed:
                done = list(wanted)
            elif response.error is ErrorCode.NONE:
                done = [
                    tp
                    for r in response.partitions
                    if r.error is ErrorCode.NONE
                    and (tp := TopicPartition(r.topic, r.partition)) in wanted
                ]
            for tp in done:
                self._last_committed[tp] = max(wanted[tp].offset, self._last_committed.get(tp, -1))
            if not failed:
                return
            error, message = failed[0]
            if error in COORDINATOR_ERRORS and attempt < COMMIT_ATTEMPTS - 1:
                self._coordinator_id = None
                await trio.sleep(self._consumer.retry_backoff_s)
                continue
            if error in MEMBERSHIP_ERRORS:
                self._need_join = True
                self.wake()
                raise CommitFailedError(
                    f"commit to group {self.group_id} failed with {error.name}: the group "
                    "rebalanced; these partitions may now belong to another member"
                )
            if done:
                message += f"; the other {len(done)} partition(s) were committed"
            raise BrokerError(error, f"commit to group {self.group_id} failed: {message}")

    async def _fetch_committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        wanted = list(partitions)
        if not wanted:
            return {}
        request = codec.OffsetFetchRequest(
            group_id=self.group_id,
            partitions=tuple(
                codec.GroupTopicPartition(topic=tp.topic, partition=tp.partition) for tp in wanted
            ),
            # KIP-447, always on as in Kafka >= 3: a partition whose offsets a transaction is
            # still committing answers UNSTABLE_OFFSET_COMMIT instead of an offset that the
            # commit is about to replace (which would make a read_committed pipeline reprocess).
            require_stable=True,
        )
        deadline = trio.current_time() + self._consumer._cluster.request_timeout_s
        backoff = self._consumer.retry_backoff_s
        while True:
            response = await self._call(request)
            # Partition errors other than these leave the partition without a committed offset
            # (auto_offset_reset decides), as before; a topic the principal may not describe
            # fails the call, as Kafka's consumer does.
            errors = [(response.error, response.error_message)] + [
                (p.error, p.error_message)
                for p in response.partitions
                if p.error in OFFSET_FETCH_FAILURES
            ]
            failed = [(e, m) for e, m in errors if e is not ErrorCode.NONE]
            if not failed:
                break
            error, message = failed[0]
            if error is not ErrorCode.UNSTABLE_OFFSET_COMMIT or (
                trio.current_time() + backoff >= deadline
            ):
                raise BrokerError(error, message or f"offset fetch for group {self.group_id}")
            log.debug("group %s: offsets unstable (a transaction is completing)", self.group_id)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        return {
            TopicPartition(p.topic, p.partition): OffsetAndMetadata(p.offset, p.metadata)
            for p in response.partitions
            if p.offset >= 0
        }

    # --- plumbing ---------------------------------------------------------------------------------

    @property
    def _cluster(self) -> Cluster:
        return self._consumer._cluster

    async def _subscription_changed(self) -> bool:
        """Refresh the subscription's metadata: True if the group must rebalance.

        A pattern member rejoins when the matching topics change (its subscription changed).
        The leader also compares the partition counts of every member's topics with those it
        assigned; followers do not (Kafka does the same): a follower rejoining with an unchanged
        subscription would not rebalance the group, and the leader's rejoin does.
        """
        changed, complete = False, True
        if self._pattern is not None:
            topics = sorted(await subscribed_partition_counts(self._cluster, (), self._pattern))
            changed, complete = topics != self._resolved, bool(topics)
        if self._leader and not changed:
            counts = await subscribed_partition_counts(self._cluster, self._group_topics)
            changed = counts != self._assigned_counts
            complete &= len(counts) == len(self._group_topics)
        self._refresh.done(time.monotonic(), complete=complete)
        return changed

    async def _unsubscribe(self) -> None:
        """Revoke (committing what the app finished) and leave; dynamic members only send
        LeaveGroup, as on close, so a static member keeps its assignment across restarts."""
        self._need_leave = False
        if self.generation >= 0 and self.owned:
            await self._revoke(set(self.owned))
        if self.group_instance_id is None:
            await self._leave()
            self.member_id = ""
        self.generation = -1
        self._leader = False

    async def _call(self, request: Any, *, extra_timeout_s: float = 0.0) -> Any:
        cluster = self._consumer._cluster
        if self._coordinator_id is None:
            self._coordinator_id = await cluster.find_coordinator(self.group_id)
        return await cluster.call(request, self._coordinator_id, extra_timeout_s=extra_timeout_s)

    async def _notify(self, name: str, partitions: set[TopicPartition]) -> None:
        listener = self._listener
        callback = getattr(listener, name, None) if listener is not None else None
        if callback is None and name == "on_partitions_lost" and listener is not None:
            callback = getattr(listener, "on_partitions_revoked", None)
        if callback is None or (not partitions and name != "on_partitions_assigned"):
            return
        try:
            result = callback(set(partitions))
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("group %s: %s callback failed", self.group_id, name)


def _core(tp: TopicPartition) -> CoreTopicPartition:
    return CoreTopicPartition(tp.topic, tp.partition)


def _decode(assignment: bytes) -> tuple[CoreTopicPartition, ...]:
    try:
        return Assignment.decode(assignment).partitions
    except (ValueError, TypeError, KeyError) as exc:
        # Another client library's leader in our group: nothing we can consume safely.
        raise BrokerError(
            ErrorCode.INCONSISTENT_GROUP_PROTOCOL, f"undecodable assignment from the leader: {exc}"
        ) from exc


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, BrokerError) and exc.code in (
        ErrorCode.FENCED_INSTANCE_ID,
        ErrorCode.INVALID_SESSION_TIMEOUT,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
        ErrorCode.GROUP_MAX_SIZE_REACHED,
        ErrorCode.POLICY_VIOLATION,
        ErrorCode.UNAUTHORIZED,
        # Authorization: retrying never helps until an operator grants an ACL.
        ErrorCode.GROUP_AUTHORIZATION_FAILED,
        ErrorCode.TOPIC_AUTHORIZATION_FAILED,
    )
