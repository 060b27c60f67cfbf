"""Raft messages on the broker-to-broker wire: msgpack headers, record batches as raw payload.

A peer link reuses the client framing of `wire/framing.py` (`u32 length | header | payload`).
This module only maps messages to and from `(header, payload)`; it does no I/O (pure).

Frames (the header's `api`):
    handshake        first frame each way: {link: "raft", node_id, cluster_id[, error]}
    raft             one message of one group: {group, type, fields: [...]} (+ entry_count for an
                     AppendRequest, whose entries' batch bytes ARE the payload, concatenated, and
                     snapshot data for an InstallSnapshot)
    raft_heartbeats  every Heartbeat and HeartbeatResponse one broker has for another, for all the
                     groups they share (redpanda's heartbeat_manager): {source, target,
                     heartbeats: [[group, term, commit_index, quiesce]...],
                     responses: [[group, term]...]}

Rules:
- Decoding is strict: every field is type- and range-checked, batches are CRC-checked, entries
  must be contiguous; anything else raises `WireFormatError` (a `RemoteProtocolError`: the peer is
  broken, close the link). Nothing a peer sends may reach the core as an assertion failure.
- Batch bytes never go through msgpack; a single-entry AppendRequest's payload is the entry's own
  bytes object (no copy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final

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
    entry_from_batch,
)
from wire import batch as batch_codec
from wire.framing import HANDSHAKE_API, PROTOCOL_VERSION, RemoteProtocolError

RAFT_API: Final = "raft"
HEARTBEATS_API: Final = "raft_heartbeats"
# The handshake's `link` field: tells the broker's client listener this connection is a Raft peer.
LINK_RAFT: Final = "raft"
# A group name is a partition name ("topic-0") or "__controller"; bounded so a header stays small.
GROUP_NAME_BYTES_MAX: Final = 255
CLUSTER_ID_BYTES_MAX: Final = 255
# Per-message overhead assumed when a transport bounds its queue by bytes (header, framing).
MESSAGE_OVERHEAD_BYTES: Final = 128

_I64_MAX: Final = 2**63 - 1
_I32_MAX: Final = 2**31 - 1


class WireFormatError(RemoteProtocolError):
    """A peer's Raft frame is malformed: wrong types, out-of-range values, bad batches."""


# --- encoding -------------------------------------------------------------------------------------

# Per message type: its wire name and the scalar fields sent positionally, in this order. The kind
# of each field ("node", "index", "term", "bool") drives the strict range checks on decode.
_SCALARS: Final[dict[type, tuple[str, tuple[tuple[str, str], ...]]]] = {
    VoteRequest: (
        "vote_request",
        (
            ("source", "node"),
            ("target", "node"),
            ("term", "term"),
            ("last_index", "index"),
            ("last_term", "term"),
            ("pre_vote", "bool"),
            ("transfer", "bool"),
        ),
    ),
    VoteResponse: (
        "vote_response",
        (
            ("source", "node"),
            ("target", "node"),
            ("term", "term"),
            ("granted", "bool"),
            ("pre_vote", "bool"),
        ),
    ),
    AppendRequest: (
        "append_request",
        (
            ("source", "node"),
            ("target", "node"),
            ("term", "term"),
            ("prev_index", "index"),
            ("prev_term", "term"),
            ("commit_index", "index"),
        ),
    ),
    AppendResponse: (
        "append_response",
        (
            ("source", "node"),
            ("target", "node"),
            ("term", "term"),
            ("success", "bool"),
            ("match_index", "index"),
            ("hint_index", "index"),
            ("hint_term", "term"),
        ),
    ),
    Heartbeat: (
        "heartbeat",
        (
            ("source", "node"),
            ("target", "node"),
            ("term", "term"),
            ("commit_index", "index"),
            ("quiesce", "bool"),
        ),
    ),
    HeartbeatResponse: (
        "heartbeat_response",
        (("source", "node"), ("target", "node"), ("term", "term")),
    ),
    InstallSnapshot: (
        "install_snapshot",
        (("source", "node"), ("target", "node"), ("term", "term")),
    ),
    TimeoutNow: ("timeout_now", (("source", "node"), ("target", "node"), ("term", "term"))),
}
_BY_NAME: Final = {name: (cls, fields) for cls, (name, fields) in _SCALARS.items()}


def encode_message(
    group: str, message: Message, *, correlation_id: int = 0
) -> tuple[dict[str, Any], bytes]:
    """The header and raw payload of a `raft` frame carrying `message` for `group`."""
    name, fields = _SCALARS[type(message)]
    header: dict[str, Any] = {
        "api": RAFT_API,
        "correlation_id": correlation_id,
        "group": group,
        "type": name,
        "fields": [getattr(message, field) for field, _ in fields],
    }
    payload = b""
    if isinstance(message, AppendRequest):
        header["entry_count"] = len(message.entries)
        if len(message.entries) == 1:
            payload = message.entries[0].data  # the common case: no copy at all
        elif message.entries:
            payload = b"".join(entry.data for entry in message.entries)
    elif isinstance(message, InstallSnapshot):
        snapshot = message.snapshot
        configuration = snapshot.configuration
        header["snapshot"] = [
            snapshot.index,
            snapshot.term,
            list(configuration.voters),
            list(configuration.learners),
        ]
        payload = snapshot.data
    return header, payload


def encode_heartbeats(
    source: int,
    target: int,
    items: Sequence[tuple[str, Heartbeat | HeartbeatResponse]],
    *,
    correlation_id: int = 0,
) -> dict[str, Any]:
    """The header of one `raft_heartbeats` frame (no payload) for every item, in order.

    All items go from `source` to `target`: one frame per broker pair, whatever the group count.
    """
    heartbeats: list[list[Any]] = []
    responses: list[list[Any]] = []
    for group, message in items:
        assert (message.source, message.target) == (source, target), (message, source, target)
        if isinstance(message, Heartbeat):
            heartbeats.append([group, message.term, message.commit_index, message.quiesce])
        else:
            responses.append([group, message.term])
    return {
        "api": HEARTBEATS_API,
        "correlation_id": correlation_id,
        "source": source,
        "target": target,
        "heartbeats": heartbeats,
        "responses": responses,
    }


@dataclasses.dataclass(frozen=True, slots=True)
class PeerHandshake:
    """What a peer says about itself on connect; `error` is empty unless it refused us."""

    node_id: int
    cluster_id: str
    error: str = ""


def encode_handshake(node_id: int, cluster_id: str, *, error: str = "") -> dict[str, Any]:
    header: dict[str, Any] = {
        "api": HANDSHAKE_API,
        "correlation_id": 0,
        "protocol_version": PROTOCOL_VERSION,
        "link": LINK_RAFT,
        "node_id": node_id,
        "cluster_id": cluster_id,
    }
    if error:
        header["error"] = error
    return header


def is_raft_handshake(header: dict[str, Any]) -> bool:
    """Whether a connection's first frame is a Raft peer's (the broker's listener hands it off)."""
    return header.get("api") == HANDSHAKE_API and header.get("link") == LINK_RAFT


def decode_handshake(header: dict[str, Any]) -> PeerHandshake:
    if not is_raft_handshake(header):
        raise WireFormatError(f"expected a raft peer handshake, got {header.get('api')!r}")
    if header.get("protocol_version") != PROTOCOL_VERSION:
        raise WireFormatError(
            f"peer speaks protocol version {header.get('protocol_version')!r}, "
            f"this node {PROTOCOL_VERSION}"
        )
    error = header.get("error", "")
    if not isinstance(error, str):
        raise WireFormatError(f"handshake error must be a string, got {error!r}")
    return PeerHandshake(
        node_id=_check("node_id", header.get("node_id"), "node"),
        cluster_id=_check_name("cluster_id", header.get("cluster_id"), CLUSTER_ID_BYTES_MAX),
        error=error,
    )


# --- decoding -------------------------------------------------------------------------------------


def decode_frame(header: dict[str, Any], payload: bytes) -> list[tuple[str, Message]]:
    """Every (group, message) a `raft` or `raft_heartbeats` frame carries (strict, see above)."""
    api = header.get("api")
    if api == RAFT_API:
        return [_decode_message(header, payload)]
    if api == HEARTBEATS_API:
        if payload:
            raise WireFormatError(f"a heartbeats frame has no payload, got {len(payload)} bytes")
        return _decode_heartbeats(header)
    raise WireFormatError(f"unknown raft frame api {api!r}")


def _decode_message(header: dict[str, Any], payload: bytes) -> tuple[str, Message]:
    group = _check_name("group", header.get("group"), GROUP_NAME_BYTES_MAX)
    name = header.get("type")
    if not isinstance(name, str) or name not in _BY_NAME:
        raise WireFormatError(f"unknown raft message type {name!r}")
    cls, fields = _BY_NAME[name]
    values = header.get("fields")
    if not isinstance(values, list) or len(values) != len(fields):
        raise WireFormatError(f"{name}: expected {len(fields)} fields, got {values!r}")
    kwargs = {
        field: _check(f"{name}.{field}", value, kind)
        for (field, kind), value in zip(fields, values, strict=True)
    }
    if cls is AppendRequest:
        kwargs["entries"] = _decode_entries(header.get("entry_count"), payload, kwargs["term"])
    elif cls is InstallSnapshot:
        kwargs["snapshot"] = _decode_snapshot(header.get("snapshot"), payload)
    elif payload:
        raise WireFormatError(f"{name} carries no payload, got {len(payload)} bytes")
    return group, cls(**kwargs)


def _decode_entries(count: object, payload: bytes, term: int) -> tuple[Entry, ...]:
    expected = _check("append_request.entry_count", count, "count")
    entries: list[Entry] = []
    try:
        # CRC-checked here, on receipt (STYLE §7.4: check on read AND on write); the log checks
        # again when it appends.
        batches = list(batch_codec.iter_batches(payload, max_batch_bytes=max(len(payload), 1)))
    except batch_codec.InvalidBatchError as exc:
        raise WireFormatError(f"append_request: bad batch in payload: {exc}") from exc
    if len(batches) != expected:
        raise WireFormatError(f"append_request: entry_count {expected}, payload has {len(batches)}")
    for position, batch_header in batches:
        try:
            entry = entry_from_batch(payload[position : position + batch_header.size_bytes])
        except Exception as exc:  # a control batch whose record does not decode
            raise WireFormatError(f"append_request: undecodable entry: {exc!r}") from exc
        if entry.base_index < 0 or not 1 <= entry.term <= term:
            raise WireFormatError(
                f"append_request: entry {entry.index}@{entry.term} out of range for term {term}"
            )
        if entries and (entry.base_index != entries[-1].index + 1 or entry.term < entries[-1].term):
            raise WireFormatError(
                f"append_request: entry {entry.base_index}..{entry.index}@{entry.term} does not "
                f"follow {entries[-1].index}@{entries[-1].term}"
            )
        entries.append(entry)
    return tuple(entries)


def _decode_snapshot(raw: object, payload: bytes) -> Snapshot:
    if not isinstance(raw, list) or len(raw) != 4:
        raise WireFormatError(
            f"install_snapshot: expected [index, term, voters, learners], got {raw!r}"
        )
    index = _check("install_snapshot.index", raw[0], "index")
    term = _check("install_snapshot.term", raw[1], "term")
    voters = _check_nodes("install_snapshot.voters", raw[2])
    learners = _check_nodes("install_snapshot.learners", raw[3])
    if not voters or set(voters) & set(learners):
        raise WireFormatError(f"install_snapshot: bad configuration {voters} / {learners}")
    return Snapshot(index, term, Configuration(voters, learners), payload)


def _decode_heartbeats(header: dict[str, Any]) -> list[tuple[str, Message]]:
    source = _check("heartbeats.source", header.get("source"), "node")
    target = _check("heartbeats.target", header.get("target"), "node")
    heartbeats = header.get("heartbeats")
    responses = header.get("responses")
    if not isinstance(heartbeats, list) or not isinstance(responses, list):
        raise WireFormatError("heartbeats frame needs 'heartbeats' and 'responses' lists")
    result: list[tuple[str, Message]] = []
    for item in heartbeats:
        if not isinstance(item, list) or len(item) != 4:
            raise WireFormatError(
                f"heartbeat item must be [group, term, commit, quiesce], got {item!r}"
            )
        group = _check_name("heartbeat.group", item[0], GROUP_NAME_BYTES_MAX)
        term = _check("heartbeat.term", item[1], "term")
        commit = _check("heartbeat.commit_index", item[2], "index")
        quiesce = _check("heartbeat.quiesce", item[3], "bool")
        result.append((group, Heartbeat(source, target, term, commit, quiesce)))
    for item in responses:
        if not isinstance(item, list) or len(item) != 2:
            raise WireFormatError(f"heartbeat response must be [group, term], got {item!r}")
        group = _check_name("heartbeat_response.group", item[0], GROUP_NAME_BYTES_MAX)
        term = _check("heartbeat_response.term", item[1], "term")
        result.append((group, HeartbeatResponse(source, target, term)))
    return result


# --- strict field checks --------------------------------------------------------------------------

# Inclusive bounds per field kind. Indexes start at -1 ("before the first entry", "no hint");
# node ids at 1 on the wire (0 means "none" only inside a node, never as a message's address).
_BOUNDS: Final = {
    "node": (1, _I32_MAX),
    "term": (0, _I32_MAX),  # a batch's leader_epoch is an i32
    "index": (-1, _I64_MAX),
    "count": (0, _I32_MAX),
}


def _check(path: str, value: object, kind: str) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise WireFormatError(f"{path}: expected a bool, got {value!r}")
        return value
    low, high = _BOUNDS[kind]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise WireFormatError(f"{path}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def _check_name(path: str, value: object, bytes_max: int) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > bytes_max:
        raise WireFormatError(f"{path}: expected a non-empty string of at most {bytes_max} bytes")
    return value


def _check_nodes(path: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise WireFormatError(f"{path}: expected a list of node ids, got {value!r}")
    nodes = tuple(_check(path, node, "node") for node in value)
    if list(nodes) != sorted(set(nodes)):
        raise WireFormatError(f"{path}: node ids must be sorted and unique, got {nodes}")
    return nodes


def message_size_bytes(message: Message) -> int:
    """Bytes `message` will take on the wire, roughly: what a bounded queue counts."""
    if isinstance(message, AppendRequest):
        return MESSAGE_OVERHEAD_BYTES + sum(entry.size_bytes for entry in message.entries)
    if isinstance(message, InstallSnapshot):
        return MESSAGE_OVERHEAD_BYTES + len(message.snapshot.data)
    return MESSAGE_OVERHEAD_BYTES
