"""The error every configuration check raises, the broker's and the SDK's alike.

It lives in `wire` because both sides validate options with it and the CLI reports both the same
way (one line naming the key): a client that raised its own class would make every caller catch two.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"invalid config {key!r}: {message}")
        self.key = key
