"""How `broker-cli` turns records into lines and lines into records: the `Reader` that `consume`
polls (a consumer's, consume.py, or a share group member's, share_groups.py), the `--format` of
the one stdout line per record, and the JSON lines that `produce --format json` reads.

Rules: a record prints as its value (`value`, optionally KEY<SEP>VALUE and a headers prefix), as
one JSON object (`json`), or through a kcat-style template (`%k=%s %p:%o`). Bytes that are not
UTF-8 stay readable in text (backslash escapes) and lossless in JSON (`{"base64": ...}`), and
`produce --format json` reads back exactly what `consume --format json` prints.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from client.types import ConsumerRecord, ShareRecord

# How often `consume` wakes up to check --timeout when no records arrive.
CONSUME_POLL_MS = 200

# Kafka's console consumer prints headers (print.headers=true) as `k1:v1,k2:v2`, or this.
NO_HEADERS = "NO_HEADERS"

# Fields `consume --format json` prints that a producer cannot set: `produce --format json`
# accepts and ignores them, so consume's output can be fed back to produce.
_OUTPUT_ONLY_FIELDS = frozenset({"topic", "offset", "delivery_count"})
_INPUT_FIELDS = frozenset({"key", "value", "headers", "partition", "timestamp"})


class FormatKind(enum.StrEnum):
    """The named `--format` choices; any other value is a template."""

    value = "value"
    json = "json"
    template = "template"


# kcat's `-f` placeholders, each a field of the record as text.
_PLACEHOLDERS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "t": ("topic", lambda r: r.topic),
    "p": ("partition", lambda r: str(r.partition)),
    "o": ("offset", lambda r: str(r.offset)),
    "T": ("timestamp (ms)", lambda r: str(r.timestamp)),
    "k": ("key", lambda r: _text(r.key) or ""),
    "s": ("value", lambda r: _text(r.value) or ""),
    "K": ("key length (-1: null)", lambda r: str(-1 if r.key is None else len(r.key))),
    "S": ("value length (-1: null)", lambda r: str(-1 if r.value is None else len(r.value))),
    "h": ("headers as k=v,k=v", lambda r: ",".join(f"{k}={_text(v)}" for k, v in r.headers or ())),
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
# A template is placeholders (`%x`), escapes (`\n`) and literal text; a lone `\` is literal.
_TEMPLATE_TOKEN = re.compile(r"%(.?)|\\([ntr\\])|[^%\\]+|\\", re.DOTALL)
PLACEHOLDER_HELP = ", ".join(f"%{c} {name}" for c, (name, _) in _PLACEHOLDERS.items()) + ", %% %"


@dataclasses.dataclass(frozen=True)
class RecordFormat:
    """How `consume` prints one record as one line (without the newline).

    `template` holds the compiled template (literal strings and field functions) when `kind`
    is `template`; `key_separator` and `print_headers` shape the `value` kind.
    """

    kind: FormatKind = FormatKind.value
    key_separator: str | None = None
    print_headers: bool = False
    template: tuple[str | Callable[[Any], str], ...] = ()

    @classmethod
    def parse(
        cls, spec: str, *, key_separator: str | None = None, print_headers: bool = False
    ) -> RecordFormat:
        """`--format SPEC`: `value`, `json` or a template; ValueError says what is wrong."""
        if spec in (FormatKind.value, FormatKind.json):
            return cls(FormatKind(spec), key_separator, print_headers)
        if key_separator is not None or print_headers:
            raise ValueError(
                "--key-separator and --print-headers shape the value format; in a template "
                "write the key (%k) and headers (%h) where you want them"
            )
        return cls(FormatKind.template, template=_compile(spec))

    def line(self, record: ConsumerRecord | ShareRecord, **extra: Any) -> str:
        """The record's line; `extra` fields (a share group's delivery count) go into JSON."""
        if self.kind is FormatKind.json:
            return json.dumps({**record_fields(record), **extra})
        if self.kind is FormatKind.template:
            return "".join(p if isinstance(p, str) else p(record) for p in self.template)
        text = record_text(record, self.key_separator)
        return f"{_headers_text(record)}\t{text}" if self.print_headers else text


def _compile(spec: str) -> tuple[str | Callable[[Any], str], ...]:
    # A trailing newline is what kcat templates end with; consume ends every line itself.
    parts: list[str | Callable[[Any], str]] = []
    literal: list[str] = []
    for match in _TEMPLATE_TOKEN.finditer(spec.removesuffix("\\n")):
        placeholder, escape = match.groups()
        if placeholder is None:
            literal.append(_ESCAPES[escape] if escape is not None else match.group(0))
        elif placeholder == "%":
            literal.append("%")
        elif placeholder in _PLACEHOLDERS:
            parts += ["".join(literal), _PLACEHOLDERS[placeholder][1]]
            literal = []
        else:
            raise ValueError(
                f"unknown placeholder %{placeholder} in template {spec!r}; "
                f"known: {PLACEHOLDER_HELP}"
            )
    if not any(callable(p) for p in parts):
        raise ValueError(
            f"{spec!r} is neither 'value', 'json' nor a template with a placeholder "
            f"({PLACEHOLDER_HELP})"
        )
    parts.append("".join(literal))
    return tuple(p for p in parts if p != "")


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


def record_line(record: ConsumerRecord, fmt: RecordFormat) -> str:
    """A consumer's record: the fields every record has, and nothing else."""
    return fmt.line(record)


# One record as one line (without the newline).
LineFormat = Callable[[Any, RecordFormat], str]


@dataclasses.dataclass(frozen=True)
class Reader:
    """What `consume` reads with. `poll(wanted)` returns up to `wanted` records (None: any
    number), `printed(records)` is told once they are on stdout, and `line` formats each."""

    poll: Callable[[int | None], Sequence[Any]]
    printed: Callable[[Sequence[Any]], None]
    line: LineFormat = record_line


def print_records(records: Sequence[Any], line: LineFormat, fmt: RecordFormat) -> None:
    """One line per record on stdout, flushed, so a pipe sees each batch as it arrives."""
    out = sys.stdout
    for record in records:
        out.write(line(record, fmt) + "\n")
    out.flush()


@dataclasses.dataclass(frozen=True)
class InputRecord:
    """One record `produce` sends: what a line of stdin says (None: the default applies)."""

    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None
    timestamp_ms: int | None = None


def parse_json_record(line: bytes) -> InputRecord:
    """A `produce --format json` line: `{"key": .., "value": .., "headers": .., "partition": ..,
    "timestamp": ..}`; `value` is required (null for a tombstone). ValueError says what is wrong."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _INPUT_FIELDS - _OUTPUT_ONLY_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {_known_fields()}")
    if "value" not in data:
        raise ValueError('no "value" field (write "value": null for a tombstone)')
    partition = data.get("partition")
    if partition is not None and (not _is_int(partition) or partition < 0):
        raise ValueError(f'"partition" must be an integer >= 0, got {partition!r}')
    timestamp = data.get("timestamp")
    if timestamp is not None and (not _is_int(timestamp) or timestamp < 0):
        raise ValueError(f'"timestamp" must be milliseconds since the epoch, got {timestamp!r}')
    return InputRecord(
        value=_input_bytes(data["value"], "value"),
        key=_input_bytes(data.get("key"), "key"),
        headers=_input_headers(data.get("headers")),
        partition=partition,
        timestamp_ms=timestamp,
    )


def parse_header(item: str) -> tuple[str, bytes]:
    """`--header KEY=VALUE` as a record header; ValueError if there is no `=` or no key."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{item!r} is not KEY=VALUE")
    return key, value.encode()


def _known_fields() -> str:
    return (
        ", ".join(sorted(_INPUT_FIELDS))
        + " (ignored: "
        + ", ".join(sorted(_OUTPUT_ONLY_FIELDS))
        + ")"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _input_headers(data: Any) -> tuple[tuple[str, bytes], ...]:
    # An object (what consume prints) or a list of [key, value] pairs (keys may repeat).
    if data is None:
        return ()
    if isinstance(data, dict):
        pairs: list[Any] = list(data.items())
    elif isinstance(data, list):
        pairs = data
    else:
        raise ValueError('"headers" must be an object or a list of [key, value] pairs')
    headers = []
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(
                f"a header must be a [key, value] pair with a string key, got {pair!r}"
            )
        # Kafka allows a null header value; this broker stores it as empty bytes.
        headers.append((pair[0], _input_bytes(pair[1], f"header {pair[0]!r}") or b""))
    return tuple(headers)


def _input_bytes(data: Any, field: str) -> bytes | None:
    # The inverse of _json_bytes: a string (UTF-8), null, or {"base64": "..."}.
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, dict) and set(data) == {"base64"} and isinstance(data["base64"], str):
        try:
            return base64.b64decode(data["base64"], validate=True)
        except binascii.Error:
            raise ValueError(f"{field}: {data['base64']!r} is not base64") from None
    raise ValueError(f'{field} must be a string, null or {{"base64": "..."}}, got {data!r}')


def _headers_text(record: ConsumerRecord | ShareRecord) -> str:
    if not record.headers:
        return NO_HEADERS
    return ",".join(f"{k}:{_text(v)}" for k, v in record.headers)


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
