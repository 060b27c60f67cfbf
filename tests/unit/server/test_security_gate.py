"""The server's security hook on an in-process broker: a produce over allowed and denied topics
writes only the allowed ones, and a client over its quota gets `throttle_time_ms` at once and
is then not read from until the throttle has passed."""

from __future__ import annotations

import trio

from broker.handlers.security import binding_of
from tests.unit.server.conftest import StartBroker
from tests.unit.server.wire_client import WireClient, make_batch
from wire import codec
from wire.error_codes import ErrorCode

ANON = "User:ANONYMOUS"


def allow(operation: str, resource_type: str, name: str) -> codec.AclBindingData:
    return codec.AclBindingData(
        resource_type=resource_type,
        resource_name=name,
        pattern_type="literal",
        principal=ANON,
        operation=operation,
        permission="allow",
    )


async def test_a_produce_writes_only_its_allowed_topics(start_broker: StartBroker) -> None:
    broker = await start_broker(authorizer_enabled=True, super_users="admin")
    assert broker.addresses is not None and broker.context is not None
    # Set-up straight through the single node's store (no principal may grant yet).
    for name in ("open", "closed"):
        broker.context.topics.create(name)
    client = await WireClient.connect(*broker.addresses.listen)
    denied = await client.request(codec.CreateAclsRequest(acls=(allow("alter", "cluster", "x"),)))
    assert denied.error is ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    store = broker.context.security_store
    grants = [binding_of(allow(op, "topic", "open")) for op in ("write", "read")]
    store.commit(store.state.prepare_create_acls(grants))
    batch = make_batch([b"a"])
    response = await client.request(
        codec.ProduceRequest(
            partitions=(
                codec.ProducePartition(topic="open", partition=0, records=batch),
                codec.ProducePartition(topic="closed", partition=0, records=batch),
            )
        )
    )
    errors = {r.topic: r.error for r in response.partitions}
    assert errors == {"open": ErrorCode.NONE, "closed": ErrorCode.TOPIC_AUTHORIZATION_FAILED}
    assert broker.context.partitions[("closed", 0)].log.log_end_offset == 0
    assert broker.context.partitions[("open", 0)].log.log_end_offset == 1
    # Metadata shows only what may be described.
    metadata = await client.request(codec.MetadataRequest())
    assert [t.name for t in metadata.topics] == ["open"]
    await client.aclose()


async def test_a_throttled_client_is_answered_at_once_then_muted(start_broker: StartBroker) -> None:
    broker = await start_broker(quota_burst_ms=1000)
    assert broker.addresses is not None and broker.context is not None
    broker.context.topics.create("t")
    client = await WireClient.connect(*broker.addresses.listen, client_id="greedy")
    alter = codec.AlterClientQuotasRequest(
        entity=codec.QuotaEntityData(client_id="greedy"), values={"request_rate": 1}
    )
    assert (await client.request(alter)).error is ErrorCode.NONE
    fetch = codec.FetchRequest(
        partitions=(codec.FetchPartition(topic="t", partition=0, fetch_offset=0),), max_wait_ms=0
    )
    # The bucket held one request (burst 1 s at 1/s): this one runs it 1 request into debt.
    first = await client.request(fetch)
    second = await client.request(fetch)
    throttle_ms = max(first.throttle_time_ms, second.throttle_time_ms)
    assert 500 <= throttle_ms <= 2000, (first, second)
    # The next request is read only once the throttle has passed.
    answered = trio.current_time()
    await client.request(fetch)
    assert trio.current_time() - answered >= 0.4
    # Another client id is not throttled.
    other = await WireClient.connect(*broker.addresses.listen, client_id="other")
    assert (await other.request(fetch)).throttle_time_ms == 0
    await other.aclose()
    await client.aclose()
