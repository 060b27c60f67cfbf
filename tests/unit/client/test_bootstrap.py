"""Bootstrap strings and lists parse the same way everywhere; mistakes name the fix."""

from __future__ import annotations

import pytest

from client._bootstrap import parse_bootstrap
from wire.config_error import ConfigError


def test_forms() -> None:
    assert parse_bootstrap("a:1") == [("a", 1)]
    assert parse_bootstrap("a:1, b:2") == [("a", 1), ("b", 2)]
    assert parse_bootstrap(["a:1", "b:2"]) == [("a", 1), ("b", 2)]
    assert parse_bootstrap("[::1]:9092") == [("::1", 9092)]


def test_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_BOOTSTRAP", raising=False)
    assert parse_bootstrap(None) == [("127.0.0.1", 9092)]
    monkeypatch.setenv("BROKER_BOOTSTRAP", "h:7")
    assert parse_bootstrap(None) == [("h", 7)]


@pytest.mark.parametrize("bad", ["", "host", "host:x", "host:0", ":9092", []])
def test_bad(bad: str | list[str]) -> None:
    with pytest.raises(ConfigError, match="bootstrap"):
        parse_bootstrap(bad)
