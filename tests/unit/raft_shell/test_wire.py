"""wire.py: every Raft message survives encode -> msgpack -> decode exactly, heartbeats coalesce
into one frame per broker pair, and malformed input raises WireFormatError, never anything else.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.raft import wire
from broker.raft.messages import (
    AppendRequest,
    AppendResponse,
    Configuration,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Snapshot,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    assign_entry,
)
from wire import batch as batch_codec
from wire.framing import RemoteProtocolError

nodes = st.integers(1, 2**31 - 1)
terms = st.integers(1, 2**31 - 1)
indexes = st.integers(-1, 2**62)
groups = st.text(min_size=1, max_size=40)


def _over_the_wire(header: dict[str, Any]) -> dict[str, Any]:
    # What the receiving FrameConnection hands back: the same msgpack options as protocol.py.
    packed = msgpack.packb(header, use_bin_type=True)
    return msgpack.unpackb(packed, raw=False, strict_map_key=True, use_list=True)


def _roundtrip(group: str, message: Message) -> tuple[str, Message]:
    header, payload = wire.encode_message(group, message)
    decoded = wire.decode_frame(_over_the_wire(header), bytes(payload))
    assert len(decoded) == 1
    return decoded[0]


@st.composite
def entry_runs(draw: st.DrawFn, term: int) -> tuple[Entry, ...]:
    base = draw(st.integers(0, 2**40))
    entry_term = draw(st.integers(1, term))
    entries = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            values = draw(st.lists(st.binary(max_size=50), min_size=1, max_size=4))
            raw = batch_codec.build_batch([(1_000, None, value, None) for value in values])
        else:
            configuration = Configuration.of(
                draw(st.lists(nodes, min_size=1, max_size=3, unique=True))
            )
            raw = batch_codec.build_control_batch(
                batch_codec.ControlType.RAFT_CONFIGURATION,
                configuration.encode(),
                timestamp_ms=1_000,
            )
        entry_term = draw(st.integers(entry_term, term))
        entry = assign_entry(raw, base_index=base, term=entry_term)
        entries.append(entry)
        base = entry.index + 1
    return tuple(entries)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    source, target, term = draw(nodes), draw(nodes), draw(terms)
    kind = draw(st.sampled_from(range(8)))
    if kind == 0:
        return VoteRequest(
            source,
            target,
            term,
            draw(indexes),
            draw(terms),
            draw(st.booleans()),
            draw(st.booleans()),
        )
    if kind == 1:
        return VoteResponse(source, target, term, draw(st.booleans()), draw(st.booleans()))
    if kind == 2:
        return AppendRequest(
            source, target, term, draw(indexes), draw(terms), draw(entry_runs(term)), draw(indexes)
        )
    if kind == 3:
        return AppendResponse(
            source, target, term, draw(st.booleans()), draw(indexes), draw(indexes), draw(terms)
        )
    if kind == 4:
        return Heartbeat(source, target, term, draw(indexes))
    if kind == 5:
        return HeartbeatResponse(source, target, term)
    if kind == 6:
        voters = sorted(draw(st.lists(nodes, min_size=1, max_size=5, unique=True)))
        learners = sorted(
            draw(st.lists(nodes.filter(lambda n: n not in voters), max_size=2, unique=True))
        )
        snapshot = Snapshot(
            draw(indexes),
            draw(terms),
            Configuration(tuple(voters), tuple(learners)),
            draw(st.binary(max_size=200)),
        )
        return InstallSnapshot(source, target, term, snapshot)
    return TimeoutNow(source, target, term)


@given(groups, messages())
@settings(max_examples=300, deadline=None)
def test_every_message_type_roundtrips(group: str, message: Message) -> None:
    assert _roundtrip(group, message) == (group, message)


def test_every_message_type_is_covered() -> None:
    assert set(wire._SCALARS) == {
        VoteRequest,
        VoteResponse,
        AppendRequest,
        AppendResponse,
        Heartbeat,
        HeartbeatResponse,
        InstallSnapshot,
        TimeoutNow,
    }


def test_single_entry_payload_is_the_batch_itself() -> None:
    # Batch bytes never go through msgpack, and one entry is not even copied.
    entry = assign_entry(
        batch_codec.build_batch([(1, None, b"x" * 100, None)]), base_index=5, term=2
    )
    header, payload = wire.encode_message("t-0", AppendRequest(1, 2, 2, 4, 1, (entry,), 3))
    assert payload is entry.data
    assert b"x" * 100 not in msgpack.packb(header)


@given(st.lists(st.tuples(groups, st.booleans(), terms, indexes), max_size=50))
def test_heartbeats_of_many_groups_travel_in_one_frame(
    items: list[tuple[str, bool, int, int]],
) -> None:
    messages_: list[tuple[str, Heartbeat | HeartbeatResponse]] = [
        (group, HeartbeatResponse(3, 1, term) if response else Heartbeat(3, 1, term, commit))
        for group, response, term, commit in items
    ]
    header = wire.encode_heartbeats(3, 1, messages_)
    decoded = wire.decode_frame(_over_the_wire(header), b"")
    # Heartbeats first, then responses, each in their original order.
    expected = [item for item in messages_ if isinstance(item[1], Heartbeat)] + [
        item for item in messages_ if isinstance(item[1], HeartbeatResponse)
    ]
    assert decoded == expected


def test_handshake_roundtrip_and_error() -> None:
    header = _over_the_wire(wire.encode_handshake(7, "prod", error="no"))
    assert wire.is_raft_handshake(header)
    assert wire.decode_handshake(header) == wire.PeerHandshake(7, "prod", "no")
    assert not wire.is_raft_handshake({"api": "handshake", "correlation_id": 0})


# --- malformed input ------------------------------------------------------------------------------


def _append_frame() -> tuple[dict[str, Any], bytes]:
    entries = []
    base = 10
    for value in (b"a", b"b"):
        entry = assign_entry(
            batch_codec.build_batch([(1, None, value, None)]), base_index=base, term=3
        )
        entries.append(entry)
        base = entry.index + 1
    header, payload = wire.encode_message("t-0", AppendRequest(1, 2, 3, 9, 2, tuple(entries), 9))
    return _over_the_wire(header), payload


def _mutations() -> list[tuple[str, dict[str, Any], bytes]]:
    header, payload = _append_frame()
    cases: list[tuple[str, dict[str, Any], bytes]] = []

    def case(name: str, changes: dict[str, Any], new_payload: bytes = payload) -> None:
        cases.append((name, {**header, **changes}, new_payload))

    case("unknown api", {"api": "rafty"})
    case("unknown type", {"type": "append_everything"})
    case("missing group", {"group": None})
    case("empty group", {"group": ""})
    case("group too long", {"group": "g" * 256})
    case("fields not a list", {"fields": {"source": 1}})
    case("too few fields", {"fields": header["fields"][:-1]})
    case("too many fields", {"fields": [*header["fields"], 1]})
    case("node id zero", {"fields": [0, *header["fields"][1:]]})
    case("bool as int", {"fields": [True, *header["fields"][1:]]})
    case("str as int", {"fields": ["1", *header["fields"][1:]]})
    case("index below -1", {"fields": [*header["fields"][:3], -2, *header["fields"][4:]]})
    case("term beyond i32", {"fields": [1, 2, 2**31, *header["fields"][3:]]})
    case("count mismatch", {"entry_count": 3})
    case("count missing", {"entry_count": None})
    case("truncated payload", {}, payload[:-1])
    flipped = bytearray(payload)
    flipped[70] ^= 0xFF  # inside the first batch's CRC-covered region
    case("crc mismatch", {}, bytes(flipped))
    second = payload[len(payload) // 2 :]
    case("not contiguous", {"entry_count": 2}, second + second)
    case("entry term above message term", {"fields": [1, 2, 2, *header["fields"][3:]]})
    vote, _ = wire.encode_message("t-0", VoteResponse(1, 2, 3, True))
    cases.append(("payload on a vote", _over_the_wire(vote), b"x"))
    cases.append(("pre_vote not bool", {**_over_the_wire(vote), "fields": [1, 2, 3, 1, 0]}, b""))
    snapshot, data = wire.encode_message(
        "t-0", InstallSnapshot(1, 2, 3, Snapshot(5, 2, Configuration.of([1, 2])))
    )
    snapshot = _over_the_wire(snapshot)
    cases.append(("unsorted voters", {**snapshot, "snapshot": [5, 2, [2, 1], []]}, data))
    cases.append(("no voters", {**snapshot, "snapshot": [5, 2, [], []]}, data))
    cases.append(("voter is learner", {**snapshot, "snapshot": [5, 2, [1, 2], [2]]}, data))
    cases.append(("snapshot not a list", {**snapshot, "snapshot": 5}, data))
    beats = _over_the_wire(wire.encode_heartbeats(1, 2, [("t-0", Heartbeat(1, 2, 3, 4))]))
    cases.append(("heartbeat item short", {**beats, "heartbeats": [["t-0", 3]]}, b""))
    cases.append(("heartbeats not a list", {**beats, "heartbeats": None}, b""))
    cases.append(("heartbeat payload", beats, b"x"))
    cases.append(("heartbeat source zero", {**beats, "source": 0}, b""))
    return cases


@pytest.mark.parametrize(
    ("name", "header", "payload"), _mutations(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_malformed_frames_raise_wire_format_error(
    name: str, header: dict[str, Any], payload: bytes
) -> None:
    with pytest.raises(wire.WireFormatError):
        wire.decode_frame(header, payload)


def test_wire_format_error_is_a_remote_protocol_error() -> None:
    # The link shell closes the connection on any RemoteProtocolError: a broken peer, not a bug.
    assert issubclass(wire.WireFormatError, RemoteProtocolError)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {
            "api": st.sampled_from([wire.RAFT_API, wire.HEARTBEATS_API, "x"]),
            "type": st.sampled_from([*wire._BY_NAME, "x"]),
        },
        optional={
            "group": json_values,
            "fields": json_values,
            "entry_count": json_values,
            "snapshot": json_values,
            "source": json_values,
            "target": json_values,
            "heartbeats": json_values,
            "responses": json_values,
        },
    ),
    st.binary(max_size=100),
)
@settings(max_examples=500, deadline=None)
def test_random_headers_never_raise_anything_but_wire_format_error(
    header: dict[str, Any], payload: bytes
) -> None:
    with contextlib.suppress(wire.WireFormatError):
        wire.decode_frame(header, payload)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_random_handshakes_never_raise_anything_but_wire_format_error(
    header: dict[str, Any],
) -> None:
    header = {"api": "handshake", "link": "raft", **header}
    with contextlib.suppress(wire.WireFormatError):
        wire.decode_handshake(header)
