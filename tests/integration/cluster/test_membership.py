"""Goal: on real `broker serve` processes, a broker joins a running cluster with --bootstrap and
another is decommissioned while an acks=all producer runs; every acknowledged record stays at its
acknowledged offset, the decommissioned broker leaves the metadata (and the controller voters),
and the new broker takes its replicas and its vote.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from client import AdminClient
from client.embedded_cluster import EmbeddedCluster
from tests.integration.cluster.common import wait_for
from tests.integration.cluster.test_chaos import (
    FAST_RAFT,
    PARTITIONS,
    SETTLE_S,
    TOPIC,
    Ledger,
    _produce,
    _read_everything,
)

# Bound on the decommission (moves of every replica of broker 2, the vote change, the removal).
DECOMMISSION_S = 60.0
# Acknowledged records to see before and after each membership step: the producer is running.
PROGRESS_RECORDS = 200


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3, controller_voters=(1, 2, 3), extra_args=FAST_RAFT) as running:
        yield running


def _acked_more(ledger: Ledger, than: int) -> bool:
    return len(ledger.acked) >= than + PROGRESS_RECORDS


def test_add_a_broker_then_decommission_another_under_load(cluster: EmbeddedCluster) -> None:
    with AdminClient(cluster.bootstrap) as admin:
        admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
    ledger = Ledger()
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce, args=(cluster.bootstrap, ledger, stop), daemon=True
    )
    producer.start()
    try:
        wait_for(lambda: _acked_more(ledger, 0), "the first acknowledgements", SETTLE_S)
        new = cluster.add_broker()
        cluster.wait_ready()
        with AdminClient(cluster.bootstrap) as admin:
            status = admin.cluster_status()
            assert new in {b.node_id for b in status.brokers}
            assert new not in status.controller_voters  # it joined as a learner
            seen = len(ledger.acked)
            # As a user would: the real CLI, which returns once the controller recorded it.
            started = subprocess.run(
                [sys.executable, "-m", "cli.broker_cli", "--bootstrap", cluster.bootstrap,
                 "cluster", "decommission", "2", "--no-wait"],
                capture_output=True, text=True, timeout=DECOMMISSION_S, check=False,
            )  # fmt: skip
            assert started.returncode == 0, started.stderr

            def shown_leaving() -> bool:
                # Any broker answers the status: it shows the mark once it applied the record.
                states = {b.node_id: b.state for b in admin.cluster_status().brokers}
                return states.get(2) == "decommissioning"

            wait_for(shown_leaving, "broker 2 shown as decommissioning", SETTLE_S)

            def broker_2_gone() -> bool:
                return 2 not in {b.node_id for b in admin.cluster_status().brokers}

            wait_for(broker_2_gone, "broker 2 to be removed", DECOMMISSION_S)
            status = admin.cluster_status()
        cluster.retire(2)
        wait_for(lambda: _acked_more(ledger, seen), "acknowledgements after the move", SETTLE_S)
    finally:
        stop.set()
        producer.join(SETTLE_S)
    assert not ledger.errors, ledger.errors
    assert not producer.is_alive(), "the producer thread did not stop"
    # The new broker took broker 2's replicas and its controller vote.
    assert sorted(status.controller_voters) == [1, 3, new]
    # Every partition (the internal topics' too) had a replica on broker 2: now on the new one.
    replicas = {b.node_id: b.replica_count for b in status.brokers}
    assert replicas == dict.fromkeys([1, 3, new], status.partition_count), replicas
    truth = _read_everything(cluster.bootstrap)
    for partition, offset, value in ledger.acked:
        assert truth[partition].get(offset) == value, (partition, offset, value)
