"""Goal: GroupConfig validates like the broker's configs, and the group core stays pure
(STYLE §7.1: no trio, sockets, clock, randomness or I/O in any module of the package)."""

from __future__ import annotations

import ast
import pathlib

import pytest

import broker.consumer_groups
from broker.config import ConfigError
from broker.consumer_groups.config import GroupConfig

PACKAGE_DIR = pathlib.Path(broker.consumer_groups.__file__).parent
FORBIDDEN_MODULES = {
    "trio",
    "anyio",
    "asyncio",
    "socket",
    "ssl",
    "select",
    "selectors",
    "time",
    "datetime",
    "random",
    "secrets",
    "os",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "subprocess",
    "threading",
    "multiprocessing",
    "mmap",
    "lmdb",
    "uuid",
}
FORBIDDEN_CALLS = {"open", "print", "input", "hash"}
# service.py (the trio shell, next step) is the one module allowed to do I/O.
PURE_MODULES = sorted(p.name for p in PACKAGE_DIR.glob("*.py") if p.name != "service.py")


def test_the_package_has_the_modules_the_scan_expects() -> None:
    assert {"coordinator.py", "membership.py", "assignors.py", "offsets.py"} <= set(PURE_MODULES)


@pytest.mark.parametrize("name", PURE_MODULES)
def test_module_is_pure(name: str) -> None:
    tree = ast.parse((PACKAGE_DIR / name).read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.append(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            # hash() of a str changes per process: a core must never depend on it.
            assert node.func.id not in FORBIDDEN_CALLS, f"{name} calls {node.func.id}()"
    bad = sorted({module for module in imported if module.split(".")[0] in FORBIDDEN_MODULES})
    assert not bad, f"{name} imports {bad}: cores are sans-I/O (time comes in as now_ms)"


def test_defaults_are_valid_and_kafka_keys_map() -> None:
    GroupConfig().validate()
    config = GroupConfig.from_mapping({"group.max.size": "10", "offsets.retention.ms": -1})
    assert config.group_size_max == 10 and config.offsets_retention_ms == -1


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"session_timeout_ms_min": 0}, "session_timeout_ms_min"),
        ({"session_timeout_ms_max": 5, "session_timeout_ms_min": 6}, "session_timeout_ms_max"),
        ({"group_size_max": 0}, "group_size_max"),
        ({"offsets_retention_ms": 0}, "offsets_retention_ms"),
        ({"initial_rebalance_delay_ms": -1}, "initial_rebalance_delay_ms"),
        ({"pending_commit_writes_max": 0}, "pending_commit_writes_max"),
        ({"rebalance_timeout_ms_default": "x"}, "rebalance_timeout_ms_default"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_bad_values_name_their_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        GroupConfig.from_mapping(changes)
    assert info.value.key == key


def test_asserts_are_live() -> None:
    with pytest.raises(AssertionError):
        assert False  # noqa: B011 - the suite must never run under python -O
