"""Goal: with `broker serve --auth scram`, a restricted user sees what Kafka shows it: list_groups
and list_transactions only what it may describe (no error when that is nothing), an offset
commit over an allowed and a denied topic commits the allowed partition and fails the denied one
with TOPIC_AUTHORIZATION_FAILED, and an offset fetch of all partitions leaves out the topics it
may not describe. Filtered listings are no denials (not counted); a denied partition is."""

from __future__ import annotations

import json
import urllib.request

import pytest
import trio

from client import aio
from client.embedded import EmbeddedBroker
from client.types import OffsetAndMetadata, TopicPartition
from tests.cli_process import cli
from tests.integration.security.conftest import ADMIN
from wire import codec
from wire.error_codes import BrokerError, ErrorCode


def _login(user: str) -> dict[str, str]:
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_username": user,
        "sasl_password": f"{user}-pw",
    }


def _allow(
    user: str, resource_type: str, name: str, *operations: str
) -> list[codec.AclBindingData]:
    return [
        codec.AclBindingData(
            resource_type=resource_type,
            resource_name=name,
            pattern_type="literal",
            principal=f"User:{user}",
            operation=operation,
            permission="allow",
        )
        for operation in operations
    ]


def _denials(broker: EmbeddedBroker, operation: str, resource_type: str) -> float:
    with urllib.request.urlopen(f"http://{broker.metrics_address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    wanted = (
        f'broker_authorization_denied_total{{operation="{operation}",'
        f'resource_type="{resource_type}"}}'
    )
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted)
    )


async def test_a_restricted_user_gets_its_groups_transactions_and_partitions(
    auth_broker: EmbeddedBroker, unique_topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = unique_topic
    user = f"{base}-carol"
    mine, theirs = f"{base}-mine", f"{base}-theirs"  # topics
    group, other_group = f"{base}-g", f"{base}-other-g"
    tx_mine, tx_theirs = f"{base}-tx-mine", f"{base}-tx-theirs"
    async with aio.AdminClient(auth_broker.bootstrap, **ADMIN) as admin:
        await admin.upsert_user(user, f"{user}-pw")
        for topic in (mine, theirs):
            await admin.create_topic(topic, 1)
        await admin.alter_consumer_group_offsets(
            group, {TopicPartition(mine, 0): 3, TopicPartition(theirs, 0): 4}
        )
        await admin.alter_consumer_group_offsets(other_group, {TopicPartition(mine, 0): 1})
        await admin.create_acls(
            [
                *_allow(user, "topic", mine, "read"),
                *_allow(user, "group", group, "read"),
            ]
        )
    for transactional_id in (tx_mine, tx_theirs):
        async with aio.Producer(
            auth_broker.bootstrap, transactional_id=transactional_id, **ADMIN
        ) as producer:
            await producer.init_transactions()

    described_groups = _denials(auth_broker, "describe", "group")
    async with aio.AdminClient(auth_broker.bootstrap, **_login(user)) as carol:
        # ListGroups: only the group carol may describe (READ implies DESCRIBE).
        assert [g.group_id for g in await carol.list_groups() if base in g.group_id] == [group]
        # ListTransactions: nothing allowed yet is an empty list, not an error.
        assert [t for t in await carol.list_transactions() if base in t.transactional_id] == []
        # OffsetFetch of all the group's partitions: the denied topic is left out.
        assert await carol.list_consumer_group_offsets(group) == {
            TopicPartition(mine, 0): OffsetAndMetadata(3)
        }
        # Asked for by name, the denied topic's partition is an error naming it.
        with pytest.raises(BrokerError, match=theirs) as refused:
            await carol.list_consumer_group_offsets(group, [TopicPartition(theirs, 0)])
        assert refused.value.code is ErrorCode.TOPIC_AUTHORIZATION_FAILED
    assert _denials(auth_broker, "describe", "group") == described_groups  # filtered: no denial

    # OffsetCommit over an allowed and a denied topic: the allowed partition is committed.
    read_topics = _denials(auth_broker, "read", "topic")
    async with aio.Consumer(
        auth_broker.bootstrap, group_id=group, enable_auto_commit=False, **_login(user)
    ) as consumer:
        consumer.subscribe([mine])
        with trio.fail_after(30):
            while not consumer.assignment():
                await consumer.poll(timeout_ms=200)
        with pytest.raises(BrokerError) as denied:
            await consumer.commit({TopicPartition(mine, 0): 5, TopicPartition(theirs, 0): 6})
        assert denied.value.code is ErrorCode.TOPIC_AUTHORIZATION_FAILED
        assert f"{theirs}/0: not authorized to read topic '{theirs}'" in str(denied.value)
        assert "the other 1 partition(s) were committed" in str(denied.value)
    assert _denials(auth_broker, "read", "topic") == read_topics + 1
    async with aio.AdminClient(auth_broker.bootstrap, **ADMIN) as admin:
        committed = await admin.list_consumer_group_offsets(group)
        assert {tp: v.offset for tp, v in committed.items()} == {
            TopicPartition(mine, 0): 5,
            TopicPartition(theirs, 0): 4,  # untouched
        }
        # The super user sees every group and transaction; then carol may describe one id.
        listed = {g.group_id for g in await admin.list_groups()}
        assert {group, other_group} <= listed
        ids = {t.transactional_id for t in await admin.list_transactions()}
        assert {tx_mine, tx_theirs} <= ids
        await admin.create_acls(_allow(user, "transactional_id", tx_mine, "describe"))
    async with aio.AdminClient(auth_broker.bootstrap, **_login(user)) as carol:
        listed_tx = [t.transactional_id for t in await carol.list_transactions()]
    assert [t for t in listed_tx if base in t] == [tx_mine]

    # The CLI shows the same: carol's `groups list` has her group only.
    monkeypatch.setenv("BROKER_PASSWORD", f"{user}-pw")
    shown = await trio.to_thread.run_sync(
        lambda: cli(auth_broker, "--user", user, "groups", "list", "--json")
    )
    assert shown.returncode == 0, shown.stderr
    assert [row["group"] for row in json.loads(shown.stdout) if base in row["group"]] == [group]
