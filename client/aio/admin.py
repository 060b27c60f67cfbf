"""The trio-native admin client: topics (create, delete, describe, list), consumer groups
(list, describe with lag, delete, list and alter committed offsets), share groups (configure,
describe) and transactions (list, describe).

Rule: a per-topic error in a response is raised as `BrokerError(code, message)`, the message as
the broker wrote it (it names the offending value), so callers and the CLI can show it as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from client.aio._base import AsyncClientBase
from client.aio.consumer import isolation_level_code, list_offsets
from client.aio.coordinator_calls import CoordinatorCalls
from client.errors import ClientError, TopicAlreadyExistsError
from client.types import (
    ClusterStatus,
    OffsetAndMetadata,
    ShareGroupDescription,
    TopicDescription,
    TopicPartition,
)
from wire import codec
from wire.error_codes import BrokerError, ErrorCode
from wire.sasl_client import credential_upsertion
from wire.scram import ITERATIONS_DEFAULT, ScramMechanism

# First backoff of per-leader retries (list_offsets): doubled each round up to 1 s.
ADMIN_RETRY_BACKOFF_S = 0.05
# How long a controller request (reassignments, rebalance) retries while no controller answers.
CONTROLLER_RETRY_TIMEOUT_S = 30.0


class AdminClient(AsyncClientBase):
    """`async with AdminClient(bootstrap) as admin: await admin.create_topic("t", 3)`."""

    # --- users (SASL SCRAM credentials; docs/security.md) -----------------------------------------

    async def upsert_user(
        self,
        name: str,
        password: str,
        *,
        mechanism: str = ScramMechanism.SCRAM_SHA_256.value,
        iterations: int = ITERATIONS_DEFAULT,
    ) -> None:
        """Create `name`, or give it a new password, for `mechanism`. The SCRAM credential is
        derived here: the password is not sent. BrokerError (UNACCEPTABLE_CREDENTIAL for
        iterations out of range, UNSUPPORTED_SASL_MECHANISM, UNAUTHORIZED)."""
        try:
            upsertion = credential_upsertion(
                name, password, ScramMechanism.parse(mechanism), iterations
            )
        except ValueError as exc:
            raise BrokerError(ErrorCode.UNACCEPTABLE_CREDENTIAL, str(exc)) from None
        await self._alter_users(codec.AlterUserScramCredentialsRequest(upsertions=(upsertion,)))

    async def delete_user(self, name: str, *, mechanism: str | None = None) -> None:
        """Delete `name`'s credential for `mechanism` (None: all of them, so the user is gone).
        BrokerError(RESOURCE_NOT_FOUND) if there is none."""
        mechanisms = (
            [mechanism]
            if mechanism is not None
            else [m for m, _ in (await self.describe_users([name])).get(name, [])]
        )
        deletions = tuple(codec.ScramCredentialDeletion(name=name, mechanism=m) for m in mechanisms)
        await self._alter_users(codec.AlterUserScramCredentialsRequest(deletions=deletions))

    async def describe_users(
        self, names: list[str] | None = None
    ) -> dict[str, list[tuple[str, int]]]:
        """Users and their credentials as (mechanism, iterations); BrokerError(RESOURCE_NOT_FOUND)
        for a name given that does not exist."""
        request = codec.DescribeUserScramCredentialsRequest(
            users=tuple(names) if names is not None else None
        )
        response: codec.DescribeUserScramCredentialsResponse = await self._cluster.call(request)
        if response.error is not ErrorCode.NONE:
            raise BrokerError(response.error, response.error_message)
        found = {}
        for user in response.users:
            if user.error is not ErrorCode.NONE:
                raise BrokerError(user.error, user.error_message)
            found[user.name] = [(c.mechanism, c.iterations) for c in user.credentials]
        return found

    async def _alter_users(self, request: codec.AlterUserScramCredentialsRequest) -> None:
        response = await self._on_controller(request)
        for result in response.results:
            if result.error is not ErrorCode.NONE:
                raise BrokerError(result.error, result.error_message)

    async def create_topic(
        self,
        name: str,
        partitions: int = -1,
        replication_factor: int = 1,
        config: Mapping[str, Any] | None = None,
        *,
        validate_only: bool = False,
        exist_ok: bool = False,
    ) -> None:
        """Create `name`; `partitions=-1` takes the broker default. Raises
        `TopicAlreadyExistsError` (a `BrokerError`) unless `exist_ok`, in which case an existing
        topic is left as it is (its partitions and configs are not compared); INVALID_PARTITIONS,
        INVALID_CONFIG... as `BrokerError`."""
        request = codec.CreateTopicsRequest(
            topics=(
                codec.NewTopic(
                    name=name,
                    partitions=partitions,
                    replication_factor=replication_factor,
                    configs=dict(config or {}),
                ),
            ),
            validate_only=validate_only,
        )
        response: codec.CreateTopicsResponse = await self._cluster.call(request)
        self._cluster.invalidate(name)
        for result in response.topics:
            if result.error is ErrorCode.TOPIC_ALREADY_EXISTS:
                if exist_ok:
                    return
                raise TopicAlreadyExistsError(
                    result.error_message
                    or f"topic {name!r} already exists; pass exist_ok=True to accept that"
                )
        _raise_topic_errors(response.topics)

    async def alter_topic_configs(
        self,
        name: str,
        configs: Mapping[str, Any] | None = None,
        *,
        reset: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Set config overrides of topic `name` (`cleanup.policy`, `retention.ms`, ...) and
        return `reset` ones to the broker default; returns the topic's overrides after. Raises
        UNKNOWN_TOPIC or INVALID_CONFIG (naming the key; nothing changed) as `BrokerError`."""
        response: codec.AlterTopicConfigsResponse = await self._on_controller(
            codec.AlterTopicConfigsRequest(topic=name, configs=dict(configs or {}), reset=reset)
        )
        return dict(response.configs)

    async def describe_configs(self, topic: str) -> dict[str, Any]:
        """Kafka's DescribeConfigs for one topic: its effective configs (dotted keys, defaults
        included), as `describe_topic(topic).configs`. Raises UNKNOWN_TOPIC as `BrokerError`."""
        description = await self.describe_topic(topic)
        return dict(description.configs)

    async def alter_configs(
        self,
        topic: str,
        configs: Mapping[str, Any] | None = None,
        delete: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Kafka's (incremental) AlterConfigs for one topic: set `configs`, return the `delete`d
        keys to the broker default, validated as a whole; returns the topic's overrides after.
        The same as `alter_topic_configs(topic, configs, reset=delete)`."""
        return await self.alter_topic_configs(topic, configs, reset=tuple(delete))

    async def create_partitions(
        self, topic: str, new_total: int, *, validate_only: bool = False
    ) -> None:
        """Kafka's CreatePartitions: raise `topic` to `new_total` partitions (the new count, not
        how many to add). Producers and consumers see the new partitions at their next metadata
        refresh (`metadata_max_age_ms`). Raises INVALID_PARTITIONS (the count does not grow:
        partitions are never removed; or passes the broker's limit), UNKNOWN_TOPIC... as
        `BrokerError`."""
        await self._on_controller(
            codec.CreatePartitionsRequest(
                topic=topic, partition_count=new_total, validate_only=validate_only
            )
        )
        self._cluster.invalidate(topic)

    async def delete_records(
        self, offsets: Mapping[tuple[str, int], int]
    ) -> dict[TopicPartition, int]:
        """Kafka's DeleteRecords: per (topic, partition), delete the records below `offset` (-1:
        below the high watermark); returns each partition's new log start offset (its low
        watermark). Asked of each partition's leader. Raises the first partition's error as
        `BrokerError` (OFFSET_OUT_OF_RANGE for an offset above the high watermark,
        UNKNOWN_TOPIC...)."""
        wanted = {TopicPartition(*tp): offset for tp, offset in offsets.items()}

        async def send(node: int, group: list[TopicPartition]) -> dict[TopicPartition, Any]:
            request = codec.DeleteRecordsRequest(
                partitions=tuple(
                    codec.DeleteRecordsPartition(
                        topic=tp.topic, partition=tp.partition, offset=wanted[tp]
                    )
                    for tp in group
                )
            )
            response: codec.DeleteRecordsResponse = await self._cluster.call(request, node)
            _raise_error(response.error, response.error_message)
            return {
                TopicPartition(r.topic, r.partition): r.low_watermark
                if r.error is ErrorCode.NONE
                else BrokerError(
                    r.error, r.error_message or f"{r.topic}-{r.partition}: {r.error.name}"
                )
                for r in response.partitions
            }

        if not wanted:
            return {}
        return await self._cluster.for_leaders(
            list(wanted), send, retry_backoff_s=ADMIN_RETRY_BACKOFF_S
        )

    async def delete_topic(self, name: str) -> None:
        response: codec.DeleteTopicsResponse = await self._cluster.call(
            codec.DeleteTopicsRequest(topics=(name,))
        )
        _raise_topic_errors(response.topics)
        self._cluster.invalidate(name)

    async def describe_topic(self, name: str) -> TopicDescription:
        """Partitions, leaders, offsets (log start/end, high watermark), sizes and configs."""
        (description,) = await self.describe_topics([name])
        return description

    async def describe_topics(self, names: list[str] | None = None) -> list[TopicDescription]:
        """Leader, replicas and in-sync replicas of every partition come from any broker's
        metadata; the log figures (log start/end, high watermark, size, segments) from each
        partition's leader, asked in one DescribeTopics per leader. A leader that cannot be
        reached leaves the figures the first broker reported (its own replica's, or -1)."""
        request = codec.DescribeTopicsRequest(topics=tuple(names) if names is not None else None)
        response: codec.DescribeTopicsResponse = await self._cluster.call_idempotent(request)
        _raise_topic_errors(response.topics)
        topics = list(response.topics)
        answered = self._cluster.connection_node()
        by_leader: dict[int, set[str]] = {}
        for topic in topics:
            for partition in topic.partitions:
                if partition.leader_id >= 0 and partition.leader_id != answered:
                    by_leader.setdefault(partition.leader_id, set()).add(topic.name)
        if not by_leader:
            return topics
        figures: dict[tuple[str, int], codec.PartitionDescription] = {}
        async with trio.open_nursery() as nursery:
            for leader, leader_topics in by_leader.items():
                nursery.start_soon(self._leader_figures, leader, sorted(leader_topics), figures)
        return [
            dataclasses.replace(
                topic,
                partitions=tuple(
                    _with_figures(p, figures.get((topic.name, p.partition)))
                    for p in topic.partitions
                ),
            )
            for topic in topics
        ]

    async def _leader_figures(
        self,
        leader: int,
        names: list[str],
        figures: dict[tuple[str, int], codec.PartitionDescription],
    ) -> None:
        try:
            response: codec.DescribeTopicsResponse = await self._cluster.call(
                codec.DescribeTopicsRequest(topics=tuple(names)), leader
            )
        except (ClientError, BrokerError):
            return  # a dead leader: keep the figures we have
        for topic in response.topics:
            for partition in topic.partitions:
                if partition.leader_id == leader:  # it still leads: its figures are the truth
                    figures[topic.name, partition.partition] = partition

    async def cluster_status(self) -> ClusterStatus:
        """The brokers (state, epoch, replicas and leaders hosted), the controller leader, and
        the offline and under-replicated partitions, as the answering broker's metadata sees
        them (any broker answers; a single-node broker is a cluster of one)."""
        response: codec.ClusterStatusResponse = await self._cluster.call_idempotent(
            codec.ClusterStatusRequest()
        )
        return response

    async def list_topics(self) -> list[str]:
        """Every topic's name, sorted."""
        response = await self._cluster.refresh_metadata(None)
        return sorted(topic.name for topic in response.topics if topic.error is ErrorCode.NONE)

    # --- consumer groups --------------------------------------------------------------------------

    async def list_groups(self, states: tuple[str, ...] = ()) -> list[codec.ListedGroupInfo]:
        """Every group (optionally only those in `states`, e.g. ("Stable",)), sorted by id. With
        ACLs on: the groups the principal may describe (all of them with `describe` on the
        cluster); none is no error, an empty list.

        A broker lists the groups it coordinates, so every broker is asked (as Kafka's admin
        client does). A broker that cannot be reached is skipped unless none answers: its groups
        are missing from the list until it is back or its coordinator partitions have moved."""
        answers = await self._ask_every_broker(codec.ListGroupsRequest(states=tuple(states)))
        found = {group.group_id: group for answer in answers for group in answer.groups}
        return sorted(found.values(), key=lambda group: group.group_id)

    async def list_transactions(
        self, states: Iterable[str] | None = None
    ) -> list[codec.ListedTransaction]:
        """Every transactional id the coordinators know (optionally only those in `states`, e.g.
        ("Ongoing",)), sorted by id. Each broker lists the ids it coordinates, so every broker
        is asked, as for `list_groups`. With ACLs on: the ids the principal may describe."""
        request = codec.ListTransactionsRequest(states=tuple(states or ()))
        answers = await self._ask_every_broker(request)
        found = {t.transactional_id: t for answer in answers for t in answer.transactions}
        return sorted(found.values(), key=lambda t: t.transactional_id)

    async def describe_transactions(
        self, transactional_ids: Iterable[str]
    ) -> list[codec.TransactionDescription]:
        """State, producer id and epoch, timeout, start time and partitions of each id, asked
        of its transaction coordinator. Raises an id's error (TRANSACTIONAL_ID_NOT_FOUND...)."""
        wanted = list(dict.fromkeys(transactional_ids))  # any iterable, read once
        by_node: dict[int, list[str]] = {}
        for transactional_id in wanted:
            node = await self._cluster.find_coordinator(
                transactional_id, codec.COORDINATOR_KEY_TRANSACTION
            )
            by_node.setdefault(node, []).append(transactional_id)
        found: dict[str, codec.TransactionDescription] = {}
        for node, ids in by_node.items():
            response: codec.DescribeTransactionsResponse = await self._cluster.call_idempotent(
                codec.DescribeTransactionsRequest(transactional_ids=tuple(ids)), node
            )
            _raise_error(response.error, response.error_message)
            for description in response.transactions:
                _raise_error(
                    description.error,
                    description.error_message
                    or f"transactional id {description.transactional_id!r}: "
                    f"{description.error.name}",
                )
                found[description.transactional_id] = description
        return [found[i] for i in wanted if i in found]

    async def _ask_every_broker(self, request: Any) -> list[Any]:
        """`request` answered by every broker (a list request whose answers each broker keeps
        for the ids it coordinates); a broker that cannot be reached is skipped unless none
        answers. A broker's own error is raised."""
        metadata = await self._cluster.refresh_metadata([])
        answers: list[Any] = []
        failures: list[ClientError] = []
        for broker in metadata.brokers or (codec.BrokerInfo(node_id=-1, host="", port=0),):
            node = broker.node_id if broker.node_id >= 0 else None
            try:
                response = await self._cluster.call_idempotent(request, node)
            except ClientError as exc:
                failures.append(exc)
                continue
            _raise_error(response.error, response.error_message)
            answers.append(response)
        if failures and len(failures) == max(len(metadata.brokers), 1):
            raise failures[0]
        return answers

    async def describe_group(self, group_id: str) -> codec.DescribedGroup:
        """State, members and their assignments, and per partition: committed offset, log end
        offset and lag. Raises GROUP_ID_NOT_FOUND for an unknown group. Follows the
        coordinator while it moves, as `list_consumer_group_offsets` does."""
        response: codec.DescribeGroupsResponse = await self._group_coordinator(group_id).call(
            codec.DescribeGroupsRequest(group_ids=(group_id,)), error_of=_single_group_error
        )
        (group,) = response.groups
        return group

    async def delete_group(self, group_id: str) -> None:
        """Delete an Empty group and its offsets (GROUP_NOT_EMPTY while it has members)."""
        node = await self._coordinator(group_id)
        response: codec.DeleteGroupsResponse = await self._cluster.call(
            codec.DeleteGroupsRequest(group_ids=(group_id,)), node
        )
        _raise_error(response.error, response.error_message)
        for result in response.groups:
            _raise_error(result.error, f"group {group_id!r}: {result.error_message}")

    async def list_consumer_group_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets (Kafka's `listConsumerGroupOffsets`): of `partitions`,
        or of every partition it has committed. A partition without a commit, and a group the
        coordinator does not know, have no entry. Offsets a transaction is still committing are
        not shown until its marker is written (the last stable commit is). With ACLs on, all
        partitions means those of the topics the principal may describe; a partition named of
        another topic raises TOPIC_AUTHORIZATION_FAILED."""
        request = codec.OffsetFetchRequest(
            group_id=group_id,
            partitions=None
            if partitions is None
            else tuple(codec.GroupTopicPartition(topic=t, partition=p) for t, p in partitions),
        )
        response: codec.OffsetFetchResponse = await self._group_coordinator(group_id).call(
            request, error_of=_partitions_error
        )
        return {
            TopicPartition(p.topic, p.partition): OffsetAndMetadata(p.offset, p.metadata)
            for p in response.partitions
            if p.offset >= 0
        }

    async def alter_consumer_group_offsets(
        self, group_id: str, offsets: Mapping[TopicPartition, int | OffsetAndMetadata]
    ) -> None:
        """Set a group's committed offsets from outside the group (Kafka's
        `alterConsumerGroupOffsets`; `broker-cli groups reset-offsets --execute`): each value an
        offset (the next record to read) or an `OffsetAndMetadata`. All or nothing per request:
        one record batch in `__consumer_offsets`; but with ACLs on, the partitions of topics the
        principal may not read are left out (TOPIC_AUTHORIZATION_FAILED is raised, naming one,
        after the others were committed), as in Kafka.

        Only while the group has no members: an active group answers GROUP_NOT_EMPTY, so a
        reset never races with the members' own commits. A group that does not exist is
        created Empty with these offsets.
        """
        request = codec.OffsetCommitRequest(
            group_id=group_id,
            partitions=tuple(
                codec.OffsetCommitPartition(
                    topic=topic, partition=partition, offset=value.offset, metadata=value.metadata
                )
                for (topic, partition), value in sorted(
                    (tuple(tp), _offset_and_metadata(v)) for tp, v in offsets.items()
                )
            ),
        )
        try:
            await self._group_coordinator(group_id).call(request, error_of=_partitions_error)
        except BrokerError as exc:
            if exc.code is not ErrorCode.GROUP_NOT_EMPTY:
                raise
            raise BrokerError(
                ErrorCode.GROUP_NOT_EMPTY,
                f"group {group_id!r} has active members; stop its consumers (and wait for their "
                "session timeout) before altering its offsets",
            ) from None

    async def list_offsets(
        self,
        partitions: list[TopicPartition],
        timestamp: int,
        isolation_level: str = "read_uncommitted",
    ) -> dict[TopicPartition, int]:
        """Per partition: the earliest offset (timestamp -2), the high watermark (-1; with
        `isolation_level="read_committed"` the last stable offset), or the first offset at or
        after `timestamp` ms (-1 when there is none)."""
        timestamps = {TopicPartition(*tp): timestamp for tp in partitions}
        return await list_offsets(
            self._cluster,
            timestamps,
            retry_backoff_s=ADMIN_RETRY_BACKOFF_S,
            isolation_level=isolation_level_code(isolation_level),
        )

    async def _coordinator(self, group_id: str) -> int:
        return await self._cluster.find_coordinator(group_id)

    def _group_coordinator(self, group_id: str) -> CoordinatorCalls:
        """The consumer group's coordinator, found again (with backoff) while it moves."""
        return CoordinatorCalls(
            self._cluster,
            group_id,
            retry_backoff_s=ADMIN_RETRY_BACKOFF_S,
            key_type=codec.COORDINATOR_KEY_GROUP,
        )

    # --- share groups -----------------------------------------------------------------------------

    async def alter_group_config(
        self,
        group_id: str,
        configs: Mapping[str, str | int],
        reset: Iterable[str] = (),
    ) -> dict[str, codec.ConfigValue]:
        """Set share group configs (`share.delivery.count.limit`, ...; see
        broker/share_groups/share_config.py) and return the group's effective configs, defaults
        included; `reset` names configs to return to the broker default. Validated as a whole:
        a bad name or value raises `BrokerError(INVALID_CONFIG)` naming it, and nothing
        changes. Asked of the group's share coordinator."""
        request = codec.AlterGroupConfigsRequest(
            group_id=group_id, configs=dict(configs), reset=tuple(reset)
        )
        response: codec.AlterGroupConfigsResponse = await self._share_coordinator(group_id).call(
            request
        )
        return dict(response.configs)

    async def describe_share_group(self, group_id: str) -> ShareGroupDescription:
        """A share group's state, members, configs, dead-letter writes and, per partition, its
        in-flight window and record counts. Raises GROUP_ID_NOT_FOUND for a group that is not
        a share group."""
        response: codec.DescribeShareGroupsResponse = await self._share_coordinator(group_id).call(
            codec.DescribeShareGroupsRequest(group_ids=(group_id,)), error_of=_single_group_error
        )
        (group,) = response.groups
        return group

    def _share_coordinator(self, group_id: str) -> CoordinatorCalls:
        return CoordinatorCalls(self._cluster, group_id, retry_backoff_s=ADMIN_RETRY_BACKOFF_S)

    # --- partition reassignment (docs/reassignment.md) -------------------------------------------

    async def alter_partition_reassignments(
        self,
        reassignments: Mapping[tuple[str, int], Iterable[int] | None],
        *,
        throttle_bytes_per_s: int = 0,
    ) -> None:
        """Move each (topic, partition) to its replicas (preferred leader first); None cancels
        the reassignment under way. `throttle_bytes_per_s` bounds replication to the new
        replicas (0: the brokers' default). Returns once the controller recorded the moves (they
        then run in the background: `list_partition_reassignments`). Raises BrokerError naming
        every refused partition (the others were started)."""
        request = codec.AlterPartitionReassignmentsRequest(
            partitions=tuple(
                codec.ReassignPartition(
                    topic=topic,
                    partition=partition,
                    replicas=tuple(replicas) if replicas is not None else None,
                )
                for (topic, partition), replicas in sorted(reassignments.items())
            ),
            throttle_bytes_per_s=throttle_bytes_per_s,
        )
        response: codec.AlterPartitionReassignmentsResponse = await self._on_controller(request)
        refused = [r for r in response.partitions if r.error is not ErrorCode.NONE]
        if refused:
            raise BrokerError(
                refused[0].error,
                "; ".join(f"{r.topic}-{r.partition}: {r.error_message}" for r in refused),
            )

    async def list_partition_reassignments(
        self, topics: Iterable[str] | None = None
    ) -> list[codec.PartitionReassignmentStatus]:
        """The reassignments under way (of `topics`, or all), by (topic, partition): replicas,
        target, adding and removing replicas, and each replica's progress as the partition's
        leader reports it (match offset, lag, bytes caught up); every leader is asked."""
        request = codec.ListPartitionReassignmentsRequest(
            topics=tuple(topics) if topics is not None else None
        )
        answers = await self._ask_every_broker(request)
        found: dict[tuple[str, int], codec.PartitionReassignmentStatus] = {}
        for answer in answers:
            for status in answer.reassignments:
                key = (status.topic, status.partition)
                # A leader's answer carries the progress; keep it over a follower's.
                if key not in found or (status.progress and not found[key].progress):
                    found[key] = status
        return [found[key] for key in sorted(found)]

    async def rebalance(
        self,
        *,
        dry_run: bool = False,
        throttle_bytes_per_s: int = 0,
        move_count_max: int = 1000,
    ) -> list[codec.RebalanceMove]:
        """Even replicas and preferred leaders over the ACTIVE brokers: the controller plans the
        moves (fewest first) and, unless `dry_run`, starts them as reassignments. Returns the
        moves, each with the error that refused it, if any."""
        request = codec.RebalanceRequest(
            dry_run=dry_run,
            throttle_bytes_per_s=throttle_bytes_per_s,
            move_count_max=move_count_max,
        )
        response: codec.RebalanceResponse = await self._on_controller(request)
        return list(response.moves)

    async def decommission_broker(self, node_id: int) -> None:
        """Start decommissioning broker `node_id`: the controller moves its replicas (and its
        controller vote) away, then removes it; follow it in `cluster_status()` (the broker is
        "decommissioning", then gone). Raises BrokerError (INVALID_REQUEST: unknown broker, the
        last active one)."""
        await self._on_controller(codec.DecommissionBrokerRequest(node_id=node_id))

    # --- ACLs and client quotas (docs/security.md) ---------------------------------------------

    async def create_acls(self, acls: Iterable[codec.AclBindingData]) -> None:
        """Add ACL bindings (existing ones are left as they are). Raises BrokerError
        (INVALID_REQUEST naming a bad field, CLUSTER_AUTHORIZATION_FAILED)."""
        await self._on_controller(codec.CreateAclsRequest(acls=tuple(acls)))

    async def describe_acls(
        self, acl_filter: codec.AclFilterData | None = None
    ) -> list[codec.AclBindingData]:
        """The ACL bindings `acl_filter` selects (all of them without one)."""
        request = codec.DescribeAclsRequest(filter=acl_filter or codec.AclFilterData())
        response: codec.DescribeAclsResponse = await self._cluster.call(request)
        _raise_error(response.error, response.error_message)
        return list(response.acls)

    async def delete_acls(
        self, filters: Iterable[codec.AclFilterData]
    ) -> list[codec.AclBindingData]:
        """Remove every binding some filter selects; returns the removed bindings."""
        request = codec.DeleteAclsRequest(filters=tuple(filters))
        response: codec.DeleteAclsResponse = await self._on_controller(request)
        return list(response.deleted)

    async def alter_client_quotas(
        self,
        *,
        user: str | None = None,
        client_id: str | None = None,
        values: Mapping[str, int] | None = None,
        remove: Iterable[str] = (),
    ) -> None:
        """Set `values` (producer_byte_rate, consumer_byte_rate in bytes/s, request_rate in
        requests/s) and remove the `remove` keys of the entity (`user`, `client_id`: a name,
        "<default>", or None for not part of the entity)."""
        request = codec.AlterClientQuotasRequest(
            entity=codec.QuotaEntityData(user=user, client_id=client_id),
            values=dict(values or {}),
            remove=tuple(remove),
        )
        await self._on_controller(request)

    async def describe_client_quotas(
        self, *, user: str | None = None, client_id: str | None = None
    ) -> list[codec.ClientQuotaEntry]:
        """The quota entities (and their values) whose user / client id equal these (None:
        any)."""
        request = codec.DescribeClientQuotasRequest(user=user, client_id=client_id)
        response: codec.DescribeClientQuotasResponse = await self._cluster.call(request)
        _raise_error(response.error, response.error_message)
        return list(response.entries)

    async def _on_controller(self, request: Any) -> Any:
        """`request` answered by the controller (any broker forwards it there), retried while
        no controller answers (NOT_CONTROLLER, REQUEST_TIMED_OUT), for a bounded time."""
        backoff_s = ADMIN_RETRY_BACKOFF_S
        deadline = trio.current_time() + CONTROLLER_RETRY_TIMEOUT_S
        while True:
            response = await self._cluster.call(request)
            if not response.error.retriable or trio.current_time() + backoff_s > deadline:
                break
            await trio.sleep(backoff_s)
            backoff_s = min(1.0, backoff_s * 2)
        _raise_error(response.error, response.error_message)
        return response


def _with_figures(
    partition: codec.PartitionDescription, leader: codec.PartitionDescription | None
) -> codec.PartitionDescription:
    if leader is None:
        return partition
    return dataclasses.replace(
        partition,
        log_start_offset=leader.log_start_offset,
        log_end_offset=leader.log_end_offset,
        high_watermark=leader.high_watermark,
        size_bytes=leader.size_bytes,
        segment_count=leader.segment_count,
    )


def _single_group_error(
    response: codec.DescribeShareGroupsResponse | codec.DescribeGroupsResponse,
) -> tuple[ErrorCode, str]:
    # The coordinator states a group's own errors (GROUP_ID_NOT_FOUND, NOT_COORDINATOR) per group.
    if response.error is not ErrorCode.NONE:
        return response.error, response.error_message
    if len(response.groups) != 1:
        return ErrorCode.UNKNOWN_SERVER_ERROR, f"asked for 1 group, got {len(response.groups)}"
    (group,) = response.groups
    return group.error, group.error_message or f"group {group.group_id!r}: {group.error.name}"


def _partitions_error(response: Any) -> tuple[ErrorCode, str]:
    # OffsetCommit and OffsetFetch state the group's errors on the response and a partition's
    # (OFFSET_METADATA_TOO_LARGE, a negative offset...) on the partition: the first one counts.
    if response.error is not ErrorCode.NONE:
        return response.error, response.error_message
    for result in response.partitions:
        if result.error is not ErrorCode.NONE:
            detail = result.error_message or result.error.name
            return result.error, f"{result.topic}/{result.partition}: {detail}"
    return ErrorCode.NONE, ""


def _offset_and_metadata(value: int | OffsetAndMetadata) -> OffsetAndMetadata:
    return value if isinstance(value, OffsetAndMetadata) else OffsetAndMetadata(value)


def _raise_error(error: ErrorCode, message: str) -> None:
    if error is not ErrorCode.NONE:
        raise BrokerError(error, message or error.name)


def _raise_topic_errors(results: Any) -> None:
    for result in results:
        if result.error is not ErrorCode.NONE:
            message = result.error_message or f"topic {result.name!r}: {result.error.name}"
            raise BrokerError(result.error, message)
