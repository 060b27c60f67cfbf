"""How `broker-cli consume` reads and prints records, for both of its readers: a consumer's
(consume.py) and a share group member's (share_groups.py). Holds the `Reader` that `consume`
polls and the format of the one stdout line per record.

Rules: a record prints as its value (or KEY<SEP>VALUE), or as one JSON object with `--json`.
Bytes that are not UTF-8 stay readable in text (backslash escapes) and lossless in JSON (base64).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from client.types import ConsumerRecord, ShareRecord

# How often `consume` wakes up to check --timeout when no records arrive.
CONSUME_POLL_MS = 200

# One record as one line (without the newline): `line(record, as_json, key_separator)`.
LineFormat = Callable[[Any, bool, str | None], str]


def record_fields(record: ConsumerRecord | ShareRecord) -> dict[str, Any]:
    """The JSON object of a record, before a reader adds what is its own."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": _json_bytes(record.key),
        "value": _json_bytes(record.value),
        "headers": {k: _json_bytes(v) for k, v in record.headers or ()},
    }


def record_text(record: ConsumerRecord | ShareRecord, key_separator: str | None) -> str:
    """A record as text: its value, or KEY<SEP>VALUE when `--key-separator` is given."""
    if key_separator is not None:
        return f"{_text(record.key) or ''}{key_separator}{_text(record.value) or ''}"
    return _text(record.value) or ""


def record_line(record: ConsumerRecord, as_json: bool, key_separator: str | None) -> str:
    """A consumer's record: the fields every record has, and nothing else."""
    return json.dumps(record_fields(record)) if as_json else record_text(record, key_separator)


@dataclasses.dataclass(frozen=True)
class Reader:
    """What `consume` reads with. `poll(wanted)` returns up to `wanted` records (None: any
    number), `printed(records)` is told once they are on stdout, and `line` formats each."""

    poll: Callable[[int | None], Sequence[Any]]
    printed: Callable[[Sequence[Any]], None]
    line: LineFormat = record_line


def print_records(
    records: Sequence[Any], line: LineFormat, *, as_json: bool, key_separator: str | None
) -> None:
    """One line per record on stdout, flushed, so a pipe sees each batch as it arrives."""
    out = sys.stdout
    for record in records:
        out.write(line(record, as_json, key_separator) + "\n")
    out.flush()


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "backslashreplace")


def _json_bytes(data: bytes | None) -> Any:
    # Text stays readable; anything that is not UTF-8 is carried losslessly as base64.
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}
