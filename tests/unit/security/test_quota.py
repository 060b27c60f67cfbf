"""Quotas: the token bucket on a fake clock, Kafka's entity resolution order, one bucket per
(user, client id) the quota distinguishes, and the bound on buckets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.security.quota import (
    DEFAULT,
    QuotaConfigs,
    QuotaCore,
    QuotaEntity,
    QuotaError,
    QuotaKind,
    QuotaLimits,
    TokenBucket,
    check_rate,
    parse_kind,
)

PRODUCE = QuotaKind.PRODUCER_BYTE_RATE


def test_bucket_allows_its_burst_then_throttles_the_debt() -> None:
    bucket = TokenBucket(rate=100, capacity=100, tokens=100, updated_s=0.0)
    assert bucket.take(100, 0.0) == 0.0  # the whole burst at once
    assert bucket.take(50, 0.0) == pytest.approx(0.5)  # 50 tokens short at 100/s
    # Half a second later the debt is paid: taking nothing costs nothing.
    assert bucket.take(0, 0.5) == 0.0
    assert bucket.tokens == pytest.approx(0)
    # Refill stops at the capacity however long the bucket waits.
    assert bucket.take(0, 1000.0) == 0.0
    assert bucket.tokens == 100


def test_a_clock_going_backwards_never_refills() -> None:
    bucket = TokenBucket(rate=10, capacity=10, tokens=0, updated_s=5.0)
    assert bucket.take(0, 4.0) == 0.0
    assert bucket.tokens == 0


@given(st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 2)), min_size=1, max_size=50))
def test_a_client_that_waits_out_each_throttle_is_held_to_the_rate(
    steps: list[tuple[int, float]],
) -> None:
    """Whatever it sends, a client that waits its throttle time (and maybe more) sends at most
    rate * elapsed + burst."""
    rate, burst = 1000.0, 1000.0
    bucket = TokenBucket(rate=rate, capacity=burst, tokens=burst, updated_s=0.0)
    now, sent = 0.0, 0
    for amount, extra_wait in steps:
        throttle = bucket.take(amount, now)
        sent += amount
        # Everything sent up to here was within the rate, counting the debt the throttle repays.
        assert sent <= rate * (now + throttle) + burst + 1e-6
        now += throttle + extra_wait


def resolve(configs: QuotaConfigs, user: str, client_id: str) -> QuotaEntity | None:
    found = configs.resolve(PRODUCE, user, client_id)
    return None if found is None else found[0]


def test_resolution_takes_the_most_specific_entity_in_kafkas_order() -> None:
    order = [
        QuotaEntity("alice", "app"),
        QuotaEntity("alice", DEFAULT),
        QuotaEntity("alice", None),
        QuotaEntity(DEFAULT, "app"),
        QuotaEntity(DEFAULT, DEFAULT),
        QuotaEntity(DEFAULT, None),
        QuotaEntity(None, "app"),
        QuotaEntity(None, DEFAULT),
    ]
    configs = QuotaConfigs()
    for rate, entity in enumerate(reversed(order), start=1):
        configs.set(entity, PRODUCE, rate)
        # Each more specific entity, once set, takes over.
        assert resolve(configs, "alice", "app") == entity
    for entity in order:
        assert resolve(configs, "alice", "app") == entity
        configs.set(entity, PRODUCE, None)
    assert resolve(configs, "alice", "app") is None
    assert len(configs) == 0


def test_other_users_and_kinds_do_not_match() -> None:
    configs = QuotaConfigs()
    configs.set(QuotaEntity("alice"), PRODUCE, 10)
    assert resolve(configs, "bob", "app") is None
    assert configs.resolve(QuotaKind.REQUEST_RATE, "alice", "app") is None


def core(**limits: object) -> QuotaCore:
    return QuotaCore(QuotaLimits(**limits))  # type: ignore[arg-type]


def test_a_default_user_quota_gives_each_user_its_own_budget() -> None:
    configs = QuotaConfigs()
    configs.set(QuotaEntity(DEFAULT), PRODUCE, 100)
    quotas = core()
    assert quotas.record(configs, [(PRODUCE, 300)], user="alice", client_id="a", now_s=0) == 2000
    # bob has his own bucket, full.
    assert quotas.record(configs, [(PRODUCE, 100)], user="bob", client_id="a", now_s=0) == 0
    # alice's other client ids share her bucket: the quota is on the user.
    assert quotas.record(configs, [(PRODUCE, 0)], user="alice", client_id="b", now_s=1) == 1000


def test_a_client_id_quota_leaves_other_client_ids_alone() -> None:
    configs = QuotaConfigs()
    configs.set(QuotaEntity(None, "greedy"), PRODUCE, 1000)
    quotas = core()
    assert quotas.record(configs, [(PRODUCE, 5000)], user="u", client_id="greedy", now_s=0) > 0
    assert quotas.record(configs, [(PRODUCE, 5000)], user="u", client_id="polite", now_s=0) == 0


def test_throttle_is_capped_and_the_worst_kind_counts() -> None:
    configs = QuotaConfigs()
    entity = QuotaEntity("alice")
    configs.set(entity, PRODUCE, 1)
    configs.set(entity, QuotaKind.REQUEST_RATE, 1)
    quotas = core(throttle_ms_max=5000)
    charges = [(QuotaKind.REQUEST_RATE, 1), (PRODUCE, 1_000_000)]
    assert quotas.record(configs, charges, user="alice", client_id="", now_s=0) == 5000
    # Only the request-rate debt: 1 request short at 1/s.
    quotas = core()
    charges = [(QuotaKind.REQUEST_RATE, 2), (PRODUCE, 0)]
    assert quotas.record(configs, charges, user="alice", client_id="", now_s=0) == 1000


def test_buckets_are_bounded_least_recently_used_first() -> None:
    configs = QuotaConfigs()
    configs.set(QuotaEntity(DEFAULT), PRODUCE, 10)
    quotas = core(bucket_count_max=2)
    for user in ("a", "b", "c"):
        quotas.record(configs, [(PRODUCE, 20)], user=user, client_id="", now_s=0)
    assert quotas.bucket_count == 2
    # "a" was dropped (it would have refilled): it starts with a full bucket again.
    assert quotas.record(configs, [(PRODUCE, 10)], user="a", client_id="", now_s=0) == 0
    # "c" kept its debt.
    assert quotas.record(configs, [(PRODUCE, 0)], user="c", client_id="", now_s=0) == 1000


def test_a_changed_rate_applies_to_the_existing_bucket() -> None:
    configs = QuotaConfigs()
    configs.set(QuotaEntity("alice"), PRODUCE, 100)
    quotas = core()
    quotas.record(configs, [(PRODUCE, 200)], user="alice", client_id="", now_s=0)
    configs.set(QuotaEntity("alice"), PRODUCE, 1000)
    # The 100-token debt now clears at 1000/s.
    assert quotas.record(configs, [(PRODUCE, 0)], user="alice", client_id="", now_s=0) == 100


def test_bad_entities_keys_and_rates_are_named() -> None:
    with pytest.raises(QuotaError, match="user, a client id"):
        QuotaEntity(None, None)
    with pytest.raises(QuotaError, match="producer_byte_rate"):
        parse_kind("bytes")
    assert parse_kind("producer-byte-rate") is PRODUCE
    assert parse_kind("consumer.byte.rate") is QuotaKind.CONSUMER_BYTE_RATE
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(QuotaError, match="whole number"):
            check_rate(PRODUCE, bad)
