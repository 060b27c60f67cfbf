"""Goal: every sans-I/O core stays pure (ARCHITECTURE principle 1, STYLE §7.1).

One scan for the whole project: a pure module imports no trio, sockets, clock, randomness, files
or LMDB, and calls neither `open`/`print`/`input` nor `hash` (whose value for a str changes per
process, so a core depending on it would not be deterministic). Time comes in as ticks or
`now_ms`, randomness as an injected `random.Random`.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN_MODULES = {
    "trio", "anyio", "asyncio", "socket", "ssl", "select", "selectors", "time", "datetime",
    "random", "secrets", "os", "io", "pathlib", "shutil", "tempfile", "subprocess", "threading",
    "multiprocessing", "mmap", "lmdb", "uuid",
}  # fmt: skip
FORBIDDEN_CALLS = {"open", "print", "input", "hash"}
# The trio shells are the modules allowed to do I/O; everything else in these packages is a core.
SHELLS = {"broker/raft/driver.py", "broker/raft/transport.py", "broker/raft/log_storage.py",
          "broker/raft/store_sync.py", "broker/consumer_groups/service.py"}  # fmt: skip
PURE_PACKAGES = ["broker/raft", "broker/consumer_groups", "broker/controller"]
PURE_FILES = ["wire/batch.py", "broker/log/index.py", "wire/framing.py", "wire/assignors.py",
              "wire/codec.py", "wire/scram.py",
              "broker/transactions/producer_state.py", "broker/transactions/coordinator.py",
              "broker/transactions/txn_records.py", "broker/transactions/txn_events.py",
              "broker/transactions/txn_actions.py",
              "broker/transactions/txn_config.py", "broker/share_groups/share_partition.py",
              "broker/share_groups/coordinator.py", "broker/share_groups/share_records.py",
              "broker/share_groups/share_events.py", "broker/share_groups/share_actions.py",
              "broker/share_groups/share_config.py",
              "broker/security/acl.py", "broker/security/quota.py", "broker/security/rules.py",
              "broker/security/state.py"]  # fmt: skip


def _pure_modules() -> list[str]:
    found = list(PURE_FILES)
    for package in PURE_PACKAGES:
        found += [
            path.relative_to(ROOT).as_posix()
            for path in sorted((ROOT / package).glob("*.py"))
            if path.relative_to(ROOT).as_posix() not in SHELLS
        ]
    return sorted(found)


def _violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            found.append(f"{node.func.id}()")
    return sorted(
        {name for name in found if name.endswith("()") or name.split(".")[0] in FORBIDDEN_MODULES}
    )


def test_the_scan_covers_the_cores() -> None:
    modules = _pure_modules()
    for expected in ["broker/raft/core.py", "broker/consumer_groups/coordinator.py",
                     "broker/controller/state.py", "wire/batch.py"]:  # fmt: skip
        assert expected in modules


@pytest.mark.parametrize("module", _pure_modules())
def test_module_is_pure(module: str) -> None:
    bad = _violations((ROOT / module).read_text())
    assert not bad, f"{module} uses {bad}: cores are sans-I/O (take ticks, now_ms, an rng)"


def test_the_scan_catches_violations() -> None:
    source = "import time\nfrom os import path\nfrom broker import errors\nx = hash('a')\n"
    assert _violations(source) == ["hash()", "os", "time"]


def test_asserts_are_live() -> None:
    with pytest.raises(AssertionError):
        assert False  # noqa: B011 - the suite must never run under python -O
