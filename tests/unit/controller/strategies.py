"""Hypothesis strategies for metadata records (shared by the codec and state tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from broker.controller.records import (
    BrokerDecommissioning,
    BrokerRegistered,
    BrokerState,
    BrokerStateChanged,
    BrokerUnregistered,
    ConfigSet,
    MetadataRecord,
    PartitionAssignment,
    PartitionLeaderChanged,
    PartitionsCreated,
    ScramCredentialRemoved,
    ScramCredentialSet,
    TopicCreated,
    TopicDeleted,
)
from tests.unit.security.strategies import security_records

node_ids = st.integers(1, 2**31 - 1)
small_node_ids = st.integers(1, 9)
replica_lists = st.lists(node_ids, min_size=1, max_size=6, unique=True).map(tuple)
topic_names = st.from_regex(r"[A-Za-z0-9._-]{1,24}", fullmatch=True)
topic_ids = st.integers(0, 2**128 - 1).map(lambda number: f"{number:032x}")
epochs = st.integers(0, 2**63 - 1)
config_values = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20))
config_items = st.dictionaries(st.text(min_size=1, max_size=16), config_values, max_size=5).map(
    lambda configs: tuple(sorted(configs.items()))
)


@st.composite
def leader_reports(draw: st.DrawFn) -> PartitionLeaderChanged:
    in_sync = draw(st.lists(node_ids, max_size=5, unique=True).map(tuple))
    leader = draw(st.one_of(st.none(), st.sampled_from(in_sync))) if in_sync else None
    return PartitionLeaderChanged(
        draw(topic_names),
        draw(topic_ids),
        draw(st.integers(0, 2**31 - 2)),
        leader,
        draw(epochs),
        in_sync,
    )


# A broker's listeners' advertised addresses: none (version 0) or a few, each name once.
endpoints: st.SearchStrategy[tuple[tuple[str, str, int], ...]] = st.lists(
    st.tuples(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,10}", fullmatch=True),
        st.text(min_size=1, max_size=40),
        st.integers(1, 65535),
    ),
    max_size=4,
    unique_by=lambda endpoint: endpoint[0],
).map(tuple)

records: st.SearchStrategy[MetadataRecord] = st.one_of(
    st.builds(
        BrokerRegistered,
        node_ids,
        st.text(min_size=1, max_size=40),
        st.integers(1, 65535),
        st.integers(0, 2**63 - 1),
        endpoints,
    ),
    st.builds(BrokerStateChanged, node_ids, epochs, st.sampled_from(BrokerState)),
    st.builds(BrokerDecommissioning, node_ids),
    st.builds(BrokerUnregistered, node_ids, epochs),
    st.builds(
        TopicCreated,
        topic_names,
        topic_ids,
        st.integers(1, 2**31 - 1),
        st.integers(1, 255),
        config_items,
    ),
    st.builds(TopicDeleted, topic_names, topic_ids),
    st.builds(
        PartitionAssignment, topic_names, topic_ids, st.integers(0, 2**31 - 2), replica_lists
    ),
    st.builds(PartitionsCreated, topic_names, topic_ids, st.integers(1, 2**31 - 1)),
    leader_reports(),
    st.builds(
        ConfigSet,
        topic_names,
        topic_ids,
        st.text(min_size=1, max_size=20),
        st.one_of(st.none(), config_values),
    ),
    # Users (SCRAM credentials): a few names, so sets and removals meet.
    st.builds(
        ScramCredentialSet,
        st.sampled_from(["alice", "bob", "admin"]),
        st.just("SCRAM-SHA-256"),
        st.binary(min_size=8, max_size=40),
        st.integers(4096, 16384),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=32, max_size=32),
    ),
    st.builds(
        ScramCredentialRemoved,
        st.sampled_from(["alice", "bob", "admin"]),
        st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-512"]),
    ),
    security_records,
)
