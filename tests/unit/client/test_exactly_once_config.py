"""Idempotence and isolation options: Kafka's defaults, and conflicts refused at construction."""

from __future__ import annotations

import pytest

from client.aio import Consumer, Producer


def test_idempotent_by_default_with_five_in_flight() -> None:
    producer = Producer("127.0.0.1:1")
    assert producer.enable_idempotence and producer.max_in_flight_per_partition == 5


@pytest.mark.parametrize(
    "options",
    [{"acks": 1}, {"acks": 0}, {"retries": 0}, {"max_in_flight_requests_per_connection": 6}],
)
def test_a_conflicting_option_turns_the_default_off(options: dict[str, int]) -> None:
    producer = Producer("127.0.0.1:1", **options)  # type: ignore[arg-type]
    assert not producer.enable_idempotence


def test_plain_producer_keeps_one_batch_in_flight() -> None:
    assert Producer("127.0.0.1:1", enable_idempotence=False).max_in_flight_per_partition == 1


@pytest.mark.parametrize(
    "options",
    [
        {"acks": 1, "enable_idempotence": True},
        {"acks": "0", "enable_idempotence": True},
        {"retries": 0, "enable_idempotence": True},
        {"max_in_flight_requests_per_connection": 6, "enable_idempotence": True},
        {"acks": 1, "transactional_id": "tx"},
        {"enable_idempotence": False, "transactional_id": "tx"},
        {"transactional_id": ""},
        {"max_in_flight_per_partition": 2, "max_in_flight_requests_per_connection": 3},
        {"max_in_flight_requests_per_connection": 0},
    ],
)
def test_conflicts_are_value_errors(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid config"):
        Producer("127.0.0.1:1", **options)  # type: ignore[arg-type]


def test_isolation_level_is_checked() -> None:
    assert Consumer("127.0.0.1:1", isolation_level="read_committed").isolation_level == 1
    assert Consumer("127.0.0.1:1").isolation_level == 0
    with pytest.raises(ValueError, match="isolation_level"):
        Consumer("127.0.0.1:1", isolation_level="committed")
