"""Goal: `broker serve`'s membership flags are validated at start-up with errors that name the
flag and say what to do: --controller-voters among --peers, --bootstrap instead of --peers."""

from __future__ import annotations

import pytest

from broker.config import BrokerConfig, ConfigError

PEERS = "1@127.0.0.1:9001,2@127.0.0.1:9002,3@127.0.0.1:9003,4@127.0.0.1:9004"


def _config(**values: str) -> BrokerConfig:
    return BrokerConfig.from_mapping({"node_id": "1", **values})


def test_voters_default_to_the_peers_and_may_be_a_subset() -> None:
    assert _config(peers=PEERS).controller_voter_ids == [1, 2, 3, 4]
    assert _config(peers=PEERS, controller_voters="3,1,2").controller_voter_ids == [1, 2, 3]


def test_a_joining_broker_needs_no_peers() -> None:
    config = _config(bootstrap="127.0.0.1:9001, 127.0.0.1:9002", node_id="5")
    assert config.is_cluster and config.peer_addresses == {}
    assert config.bootstrap_addresses == [("127.0.0.1", 9001), ("127.0.0.1", 9002)]


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        ({"peers": PEERS, "controller_voters": "1,9"}, "controller_voters", "not in --peers"),
        ({"peers": PEERS, "controller_voters": "1,1"}, "controller_voters", "listed twice"),
        ({"peers": PEERS, "controller_voters": "a"}, "controller_voters", "node ids"),
        ({"controller_voters": "1"}, "controller_voters", "needs --peers"),
        ({"peers": PEERS, "bootstrap": "127.0.0.1:9001"}, "bootstrap", "not both"),
        ({"bootstrap": "127.0.0.1:0"}, "bootstrap", "real port"),
        ({"bootstrap": "127.0.0.1:9001", "node_id": "0"}, "node_id", ">= 1"),
        (
            {"peers": PEERS, "metadata_snapshot_interval_records": "0"},
            "metadata_snapshot",
            "must be",
        ),
        ({"peers": PEERS, "metadata_log_segment_bytes": "1024"}, "metadata_log_segment", "must be"),
    ],
)
def test_bad_membership_flags_are_refused(values: dict[str, str], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        _config(**values)
    assert caught.value.key.startswith(key)
