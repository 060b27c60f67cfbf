"""The share consumer's acknowledgement bookkeeping, without I/O: ranges on the wire, the implicit
and explicit mode rules, and the checks on what may be acknowledged."""

from __future__ import annotations

import pytest

from client.aio.share_consumer import (
    AcknowledgementsCore,
    AcknowledgementStateError,
    ack_type_code,
    acknowledgement_results,
    coalesce_acknowledgements,
)
from client.types import ShareRecord, TopicPartition
from wire import codec
from wire.config_error import ConfigError
from wire.error_codes import BrokerError, ErrorCode

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)
ACCEPT, RELEASE, REJECT, RENEW, GAP = (
    codec.ACK_ACCEPT, codec.ACK_RELEASE, codec.ACK_REJECT, codec.ACK_RENEW, codec.ACK_GAP,
)  # fmt: skip


def record(tp: TopicPartition, offset: int, delivery_count: int = 1) -> ShareRecord:
    return ShareRecord(tp.topic, tp.partition, offset, 0, None, b"v", None, delivery_count)


def ranges(acks: tuple[codec.ShareAcknowledgePartition, ...]) -> dict[tuple[str, int], list]:
    """The wire acknowledgements as {(topic, partition): [(first, last, type, delay), ...]}."""
    return {
        (p.topic, p.partition): [
            (b.first_offset, b.last_offset, b.ack_type, b.delay_ms) for b in p.batches
        ]
        for p in acks
    }


def core_with(mode: str, *records: ShareRecord) -> AcknowledgementsCore:
    core = AcknowledgementsCore(mode)
    core.start_poll()
    core.delivered(records)
    return core


# --- ranges ---------------------------------------------------------------------------------------


def test_a_poll_of_accepted_records_is_one_range_per_partition() -> None:
    pending = {T0: dict.fromkeys(range(100, 600), (ACCEPT, 0)), T1: {7: (ACCEPT, 0)}}
    assert ranges(coalesce_acknowledgements(pending)) == {
        ("t", 0): [(100, 599, ACCEPT, 0)],
        ("t", 1): [(7, 7, ACCEPT, 0)],
    }


def test_ranges_break_at_holes_type_changes_and_release_delays() -> None:
    pending = {
        T0: {
            5: (RELEASE, 100), 3: (ACCEPT, 0), 4: (ACCEPT, 0), 6: (RELEASE, 100),
            7: (RELEASE, 200), 9: (ACCEPT, 0), 10: (REJECT, 0),
        },
    }  # fmt: skip
    assert ranges(coalesce_acknowledgements(pending)) == {
        ("t", 0): [
            (3, 4, ACCEPT, 0),
            (5, 6, RELEASE, 100),
            (7, 7, RELEASE, 200),
            (9, 9, ACCEPT, 0),
            (10, 10, REJECT, 0),
        ]
    }


def test_partitions_without_acknowledgements_are_left_out() -> None:
    assert coalesce_acknowledgements({T0: {}, T1: {}}) == ()


# --- implicit mode --------------------------------------------------------------------------------


def test_implicit_mode_accepts_the_previous_poll_at_the_next() -> None:
    core = core_with("implicit", *(record(T0, o) for o in range(10, 20)))
    core.acknowledge(T0, 12, REJECT, 0)
    core.start_poll()
    assert ranges(core.take()) == {
        ("t", 0): [(10, 11, ACCEPT, 0), (12, 12, REJECT, 0), (13, 19, ACCEPT, 0)]
    }
    assert core.take() == ()  # taken once
    with pytest.raises(AcknowledgementStateError, match="not returned by the latest poll"):
        core.acknowledge(T0, 13, ACCEPT, 0)


def test_commit_accepts_what_the_application_left_once() -> None:
    core = core_with("implicit", record(T0, 1), record(T0, 2))
    core.acknowledge(T0, 1, RELEASE, 0)
    core.accept_unacknowledged()
    assert ranges(core.take()) == {("t", 0): [(1, 1, RELEASE, 0), (2, 2, ACCEPT, 0)]}
    with pytest.raises(AcknowledgementStateError, match="already acknowledged"):
        core.acknowledge(T0, 2, REJECT, 0)
    core.start_poll()
    assert core.take() == ()  # nothing accepted twice


# --- explicit mode --------------------------------------------------------------------------------


def test_explicit_mode_refuses_a_poll_with_unacknowledged_records() -> None:
    core = core_with("explicit", record(T0, 1), record(T0, 2), record(T1, 9))
    core.acknowledge(T0, 1, ACCEPT, 0)
    with pytest.raises(AcknowledgementStateError, match=r"2 record\(s\).*t/0@2, t/1@9"):
        core.start_poll()
    # Nothing changed: the records can still be acknowledged, then the poll goes ahead.
    core.acknowledge(T0, 2, REJECT, 0)
    core.acknowledge(T1, 9, RELEASE, 500)
    core.start_poll()
    assert ranges(core.take()) == {
        ("t", 0): [(1, 1, ACCEPT, 0), (2, 2, REJECT, 0)],
        ("t", 1): [(9, 9, RELEASE, 500)],
    }


def test_explicit_mode_commit_sends_only_what_was_acknowledged() -> None:
    core = core_with("explicit", record(T0, 1), record(T0, 2))
    core.acknowledge(T0, 2, ACCEPT, 0)
    core.accept_unacknowledged()
    assert ranges(core.take()) == {("t", 0): [(2, 2, ACCEPT, 0)]}
    with pytest.raises(AcknowledgementStateError, match=r"^1 record\(s\).*\(t/0@1\)"):
        core.start_poll()


def test_renew_extends_the_lock_but_the_record_still_needs_an_acknowledgement() -> None:
    core = core_with("explicit", record(T0, 4))
    core.acknowledge(T0, 4, RENEW, 0)
    core.acknowledge(T0, 4, RENEW, 0)  # renewing again is allowed
    assert ranges(core.take()) == {("t", 0): [(4, 4, RENEW, 0)]}
    with pytest.raises(AcknowledgementStateError):
        core.start_poll()
    core.acknowledge(T0, 4, ACCEPT, 0)
    core.start_poll()
    assert ranges(core.take()) == {("t", 0): [(4, 4, ACCEPT, 0)]}


def test_a_later_acknowledgement_replaces_a_pending_renew() -> None:
    core = core_with("implicit", record(T0, 4))
    core.acknowledge(T0, 4, RENEW, 0)
    core.acknowledge(T0, 4, REJECT, 0)
    assert ranges(core.take()) == {("t", 0): [(4, 4, REJECT, 0)]}


# --- what may be acknowledged ---------------------------------------------------------------------


def test_acknowledging_twice_or_a_record_of_no_poll_is_refused() -> None:
    core = core_with("implicit", record(T0, 1))
    core.acknowledge(T0, 1, ACCEPT, 0)
    with pytest.raises(AcknowledgementStateError, match="t/0@1 is already acknowledged"):
        core.acknowledge(T0, 1, ACCEPT, 0)
    with pytest.raises(AcknowledgementStateError, match="t/1@1 was not returned"):
        core.acknowledge(T1, 1, ACCEPT, 0)
    assert ranges(core.take()) == {("t", 0): [(1, 1, ACCEPT, 0)]}


@pytest.mark.parametrize(
    ("name", "delay_ms", "message"),
    [
        ("acept", 0, "must be one of"),
        ("accept", 10, "applies to 'release' only"),
        ("renew", 10, "applies to 'release' only"),
        ("release", -1, "must be >= 0"),
    ],
)
def test_bad_types_and_delays_are_value_errors(name: str, delay_ms: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ack_type_code(name, delay_ms)


def test_type_names_map_to_the_wire_values() -> None:
    assert [ack_type_code(n, 0) for n in ("accept", "release", "reject", "renew")] == [
        ACCEPT, RELEASE, REJECT, RENEW,
    ]  # fmt: skip
    assert ack_type_code("release", 1_000) == RELEASE


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="acknowledgement_mode"):
        AcknowledgementsCore("manual")


# --- gaps, failed requests, outcomes --------------------------------------------------------------


def test_gaps_are_acknowledged_with_the_next_request_in_either_mode() -> None:
    core = core_with("explicit")
    core.add_gaps(T0, [5, 6, 7])
    core.start_poll()  # gaps are no records: nothing for the application to acknowledge
    assert ranges(core.take()) == {("t", 0): [(5, 7, GAP, 0)]}


def test_restored_acknowledgements_go_again_but_newer_ones_win() -> None:
    core = core_with("implicit", record(T0, 1), record(T0, 2), record(T0, 3))
    core.acknowledge(T0, 3, RENEW, 0)
    core.acknowledge(T0, 1, RELEASE, 50)
    sent = core.take()
    core.acknowledge(T0, 3, REJECT, 0)  # made while the failed request was in flight
    core.restore(sent)
    assert ranges(core.take()) == {("t", 0): [(1, 1, RELEASE, 50), (3, 3, REJECT, 0)]}


def test_results_name_each_acknowledged_partition() -> None:
    sent = coalesce_acknowledgements(
        {T0: {1: (ACCEPT, 0)}, T1: {2: (ACCEPT, 0)}, TopicPartition("u", 0): {3: (ACCEPT, 0)}}
    )
    answered = {
        T0: (ErrorCode.NONE, ""),
        T1: (ErrorCode.INVALID_RECORD_STATE, "offset 2 is not acquired by this member"),
        TopicPartition("x", 0): (ErrorCode.NONE, ""),  # acknowledged nothing: not a result
    }
    results = acknowledgement_results(sent, answered)
    assert list(results) == [T0, T1, TopicPartition("u", 0)]
    assert results[T0] is None
    failed = results[T1]
    assert isinstance(failed, BrokerError) and failed.code is ErrorCode.INVALID_RECORD_STATE
    assert "t/1" in failed.message and "not acquired" in failed.message
    missing = results[TopicPartition("u", 0)]
    assert isinstance(missing, BrokerError) and "did not answer" in missing.message
