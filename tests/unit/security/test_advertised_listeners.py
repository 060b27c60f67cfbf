"""Goal: each listener tells its clients where to go on that same listener (Kafka's
`advertised.listeners`): `--advertised-listener NAME=HOST:PORT` is checked at start-up, each
listener advertises its own address by default, and Metadata, FindCoordinator and ClusterStatus
answer with the addresses of the listener the request arrived on. A broker without that listener
is left out; a partition or coordinator it leads is not available to that client."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from broker.config import BrokerConfig, ConfigError, parse_advertised_listeners
from broker.controller.cache import MetadataCache
from broker.controller.state import BrokerInfo, BrokerState
from broker.handlers import LISTENER_HANDLERS, BrokerContext, handlers_for
from broker.internal_topics import OFFSETS_TOPIC
from tests.unit.controller.harness import MetadataLog
from wire import codec
from wire.error_codes import BrokerError, ErrorCode

TWO_LISTENERS = "INTERNAL=plaintext://127.0.0.1:0,EXTERNAL=plaintext://0.0.0.0:0"


# --- configuration --------------------------------------------------------------------------------


def test_advertised_listeners_parse() -> None:
    assert parse_advertised_listeners("k", " A=h1:1 , B=[::1]:2,") == {
        "A": ("h1", 1),
        "B": ("::1", 2),
    }
    assert parse_advertised_listeners("k", "") == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("A", "expected NAME=HOST:PORT"),
        ("=h:1", "expected NAME=HOST:PORT"),
        ("A=h", "expected HOST:PORT"),
        ("A=h:0", "needs a real port"),
        ("A=h:1,A=h:2", "advertised twice"),
    ],
)
def test_bad_advertised_listeners_are_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_advertised_listeners("advertised_listeners", value)
    assert caught.value.key == "advertised_listeners"


def test_an_advertised_listener_must_be_a_configured_one() -> None:
    with pytest.raises(ConfigError, match=r"names no listener: 'SECURE'.*INTERNAL") as caught:
        BrokerConfig.from_mapping(
            {"listeners": TWO_LISTENERS, "advertised_listeners": "SECURE=example.com:9093"}
        )
    assert caught.value.key == "advertised_listeners"
    # Without --listener the one listener is CLIENT (the --listen one).
    BrokerConfig.from_mapping({"advertised_listeners": "CLIENT=example.com:9092"})
    with pytest.raises(ConfigError, match="names no listener"):
        BrokerConfig.from_mapping({"advertised_listeners": "EXTERNAL=example.com:9092"})


def test_advertised_listen_and_an_entry_for_the_same_listener_conflict() -> None:
    with pytest.raises(ConfigError, match="advertised_listen gives too"):
        BrokerConfig.from_mapping(
            {
                "listeners": TWO_LISTENERS,
                "advertised_listen": "a.example.com:9092",
                "advertised_listeners": "INTERNAL=b.example.com:9092",
            }
        )


def test_each_listener_advertises_its_bound_address_by_default() -> None:
    config = BrokerConfig.from_mapping({"listeners": TWO_LISTENERS})
    bound = {"EXTERNAL": ("0.0.0.0", 2), "INTERNAL": ("127.0.0.1", 1)}
    assert list(config.advertised_endpoints(bound).items()) == [
        ("INTERNAL", ("127.0.0.1", 1)),
        ("EXTERNAL", ("0.0.0.0", 2)),
    ]


def test_advertised_addresses_override_the_bound_ones() -> None:
    config = BrokerConfig.from_mapping(
        {
            "listeners": TWO_LISTENERS,
            # Kafka's key is accepted too.
            "advertised.listeners": "EXTERNAL=broker1.example.com:19093",
            # Still the default (inter-broker) listener's address, as before listeners existed.
            "advertised_listen": "10.0.0.1:9092",
        }
    )
    bound = {"INTERNAL": ("127.0.0.1", 1), "EXTERNAL": ("0.0.0.0", 2)}
    assert config.advertised_endpoints(bound) == {
        "INTERNAL": ("10.0.0.1", 9092),
        "EXTERNAL": ("broker1.example.com", 19093),
    }
    single = BrokerConfig.from_mapping({"advertised_listen": "a.example.com:1"})
    assert single.advertised_endpoints({"CLIENT": ("127.0.0.1", 5)}) == {
        "CLIENT": ("a.example.com", 1)
    }


# --- the endpoint a broker has for a listener -----------------------------------------------------


def _info(endpoints: tuple[tuple[str, str, int], ...]) -> BrokerInfo:
    return BrokerInfo(1, "peer.example.com", 9092, 1, 1, BrokerState.ACTIVE, endpoints=endpoints)


def test_a_broker_with_endpoints_answers_per_listener() -> None:
    info = _info((("INTERNAL", "peer.example.com", 9092), ("EXTERNAL", "ext.example.com", 9093)))
    assert info.endpoint_for("EXTERNAL", "INTERNAL") == ("ext.example.com", 9093)
    assert info.endpoint_for("INTERNAL", "INTERNAL") == ("peer.example.com", 9092)
    assert info.endpoint_for("OTHER", "INTERNAL") is None


def test_a_broker_without_endpoints_serves_the_default_listener_only() -> None:
    """A registration from a broker with one listener (or an older broker): its one address is
    the inter-broker listener's, whose name the reader knows."""
    info = _info(())
    assert info.endpoint_for("INTERNAL", "INTERNAL") == ("peer.example.com", 9092)
    assert info.endpoint_for("EXTERNAL", "INTERNAL") is None


# --- handlers: a cluster member -------------------------------------------------------------------


def _endpoints(node_id: int, *names: str) -> tuple[tuple[str, str, int], ...]:
    ports = {"INTERNAL": 9000, "EXTERNAL": 19000}
    return tuple((name, f"{name.lower()}.{node_id}", ports[name] + node_id) for name in names)


class _Topics:
    """The part of ClusterTopics the metadata handler reads."""

    def __init__(self, cache: MetadataCache) -> None:
        self._cache = cache

    def names(self) -> list[str]:
        return self._cache.topic_names()

    def get(self, name: str) -> Any:
        try:
            count = len(self._cache.partitions_for(name))
        except BrokerError:
            return None
        return SimpleNamespace(name=name, partition_count=count)


@pytest.fixture
def member() -> tuple[BrokerContext, MetadataLog]:
    """Broker 1's handler context in a cluster where brokers 1 and 2 have INTERNAL and EXTERNAL
    listeners and broker 3 only INTERNAL (registered without endpoints, as an older broker)."""
    log = MetadataLog()
    for node_id in (1, 2):
        log.commit(
            log.machine.prepare_register_broker(
                node_id, f"internal.{node_id}", 9000 + node_id, 1,
                _endpoints(node_id, "INTERNAL", "EXTERNAL"),
            )
        )  # fmt: skip
    log.commit(log.machine.prepare_register_broker(3, "internal.3", 9003, 1))
    for node_id in (1, 2, 3):
        log.set_state(node_id, BrokerState.ACTIVE)
    log.create_topic("orders", 3, 3, number=1)
    log.create_topic(OFFSETS_TOPIC, 1, 3, number=2)
    for partition, leader in enumerate((1, 2, 3)):
        log.commit(log.machine.prepare_leader_change("orders", partition, leader, 1, [1, 2, 3]))
    cache = MetadataCache(log.machine)
    config = BrokerConfig.from_mapping({"listeners": TWO_LISTENERS, "node_id": 1})
    ctx = BrokerContext(config, _Topics(cache), None)
    controller = SimpleNamespace(leader_id=1, configuration=SimpleNamespace(voters=(1, 2, 3)))
    ctx.cluster = SimpleNamespace(cache=cache, controller=controller)
    ctx.groups = SimpleNamespace(partition_of=lambda key: 0)
    return ctx, log


def _metadata(ctx: BrokerContext, listener: str) -> codec.MetadataResponse:
    handler = handlers_for(listener)[codec.MetadataRequest]
    response: codec.MetadataResponse = handler(ctx, codec.MetadataRequest(topics=("orders",)))
    return response


def test_metadata_gives_the_addresses_of_the_clients_listener(
    member: tuple[BrokerContext, MetadataLog],
) -> None:
    ctx, _ = member
    external = _metadata(ctx, "EXTERNAL")
    assert [(b.node_id, b.host, b.port) for b in external.brokers] == [
        (1, "external.1", 19001),
        (2, "external.2", 19002),
    ]  # broker 3 has no EXTERNAL listener: left out
    internal = _metadata(ctx, "INTERNAL")
    assert [(b.node_id, b.host, b.port) for b in internal.brokers] == [
        (1, "internal.1", 9001),
        (2, "internal.2", 9002),
        (3, "internal.3", 9003),
    ]
    assert [p.leader_id for p in internal.topics[0].partitions] == [1, 2, 3]
    assert all(p.error is ErrorCode.NONE for p in internal.topics[0].partitions)


def test_a_partition_led_by_a_broker_without_the_listener_has_no_leader_for_it(
    member: tuple[BrokerContext, MetadataLog],
) -> None:
    ctx, _ = member
    partitions = _metadata(ctx, "EXTERNAL").topics[0].partitions
    assert [(p.leader_id, p.error) for p in partitions] == [
        (1, ErrorCode.NONE),
        (2, ErrorCode.NONE),
        (-1, ErrorCode.LEADER_NOT_AVAILABLE),
    ]
    assert "has no listener EXTERNAL" in partitions[2].error_message


def _coordinator(ctx: BrokerContext, listener: str) -> codec.FindCoordinatorResponse:
    handler = handlers_for(listener)[codec.FindCoordinatorRequest]
    response: codec.FindCoordinatorResponse = handler(
        ctx, codec.FindCoordinatorRequest(key="payments")
    )
    return response


def test_find_coordinator_answers_for_the_clients_listener(
    member: tuple[BrokerContext, MetadataLog],
) -> None:
    ctx, log = member
    log.commit(log.machine.prepare_leader_change(OFFSETS_TOPIC, 0, 2, 1, [1, 2, 3]))
    found = _coordinator(ctx, "EXTERNAL")
    assert (found.error, found.node_id, found.host, found.port) == (
        ErrorCode.NONE,
        2,
        "external.2",
        19002,
    )
    assert (_coordinator(ctx, "INTERNAL").host, _coordinator(ctx, "INTERNAL").port) == (
        "internal.2",
        9002,
    )
    # Led by broker 3, which has no EXTERNAL listener: not available to EXTERNAL's clients.
    log.commit(log.machine.prepare_leader_change(OFFSETS_TOPIC, 0, 3, 2, [1, 2, 3]))
    refused = _coordinator(ctx, "EXTERNAL")
    assert refused.error is ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert "has no listener EXTERNAL" in refused.error_message
    assert _coordinator(ctx, "INTERNAL").node_id == 3


def test_cluster_status_gives_the_listeners_addresses(
    member: tuple[BrokerContext, MetadataLog],
) -> None:
    ctx, _ = member
    handler = handlers_for("EXTERNAL")[codec.ClusterStatusRequest]
    status = handler(ctx, codec.ClusterStatusRequest())
    # Broker 3 still shows (an operator's view), at the address its peers reach it on.
    assert [(b.node_id, b.host, b.port) for b in status.brokers] == [
        (1, "external.1", 19001),
        (2, "external.2", 19002),
        (3, "internal.3", 9003),
    ]


# --- handlers: a single node ----------------------------------------------------------------------


def test_a_single_node_answers_each_listener_with_its_own_address() -> None:
    config = BrokerConfig.from_mapping({"listeners": TWO_LISTENERS})
    topics = SimpleNamespace(names=list, get=lambda name: None)
    ctx = BrokerContext(config, topics, None)
    ctx.advertised = {"INTERNAL": ("127.0.0.1", 1), "EXTERNAL": ("ext.example.com", 2)}
    for listener, address in ctx.advertised.items():
        metadata = handlers_for(listener)[codec.MetadataRequest](ctx, codec.MetadataRequest())
        assert [(b.host, b.port) for b in metadata.brokers] == [address]
        status = handlers_for(listener)[codec.ClusterStatusRequest](
            ctx, codec.ClusterStatusRequest()
        )
        assert [(b.host, b.port) for b in status.brokers] == [address]


def test_every_listener_table_binds_the_address_handlers() -> None:
    table = handlers_for("EXTERNAL")
    assert set(LISTENER_HANDLERS) <= set(table)
    assert all(table[kind].keywords == {"listener": "EXTERNAL"} for kind in LISTENER_HANDLERS)  # type: ignore[attr-defined]
