"""Strict reading of the msgpack values the coordinators persist on their internal topics.

`__consumer_offsets` (offsets.py) and `__transaction_state` (broker/transactions/txn_records.py)
decode their values the same way: a versioned map whose every field must have exactly the type
written, since replaying a partition is only correct if what is read back is what was meant.
Anything else raises ValueError, which each decoder turns into its own corrupt-record error so
that the load stops loudly.
"""

from __future__ import annotations

from typing import Any


def check_version(fields: Any, version: int) -> dict[str, Any]:
    """`fields` if it is a map of value version `version`; ValueError otherwise."""
    if not isinstance(fields, dict):
        raise ValueError(f"expected a map, got {fields!r}")
    if fields.get("v") != version:
        raise ValueError(f"unknown value version {fields.get('v')!r}")
    return fields


def checked_int(value: Any) -> int:
    """`value` if it is an integer (a bool is not one, though Python says it is)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def checked_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value
