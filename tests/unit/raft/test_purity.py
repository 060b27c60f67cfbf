"""Goal: the Raft core modules stay pure (STYLE §7.1): no trio, socket, clock, random, I/O."""

from __future__ import annotations

import ast
import pathlib

import pytest

import broker.raft

PURE_MODULES = [
    "core.py",
    "messages.py",
    "progress.py",
    "quorum.py",
    "raft_log.py",
    "storage.py",
    "config.py",
    "errors.py",
    "ready.py",
    "membership.py",
]
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
FORBIDDEN_CALLS = {"open", "print", "input"}
RAFT_DIR = pathlib.Path(broker.raft.__file__).parent


@pytest.mark.parametrize("name", PURE_MODULES)
def test_module_is_pure(name: str) -> None:
    tree = ast.parse((RAFT_DIR / name).read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.append(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{name} calls {node.func.id}()"
    bad = sorted({module for module in imported if module.split(".")[0] in FORBIDDEN_MODULES})
    assert not bad, f"{name} imports {bad}: cores are sans-I/O (take ticks, now_ms, an rng)"


def test_scan_sees_a_forbidden_import(tmp_path: pathlib.Path) -> None:
    """Goal: the scan above is not vacuous."""
    tree = ast.parse("import time\nfrom os import path\n")
    names = [n.names[0].name if isinstance(n, ast.Import) else n.module for n in tree.body]
    assert [name for name in names if name and name.split(".")[0] in FORBIDDEN_MODULES] == [
        "time",
        "os",
    ]
