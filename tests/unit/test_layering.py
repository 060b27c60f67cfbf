"""Layers read top to bottom: `wire` <- `broker`, `wire` <- `client`; no import cycles in client/.

Goal (issue 14): the broker never imports the SDK, the shared package `wire` imports neither side,
nothing below them imports the CLI or the benchmarks, and no two client modules import each
other, directly or round a longer loop. Imports are read
with `ast`, so every import counts: at module level, inside functions and under
`if TYPE_CHECKING:` alike (a type-only import is still a dependency a reader has to follow).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, as absolute dotted names (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from client.aio import group` imports the module client.aio.group.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules(package: str) -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, path in _modules(package).items()
        for name in sorted(_imports(path))
        if name.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("wire", ("broker", "client", "cli", "benchmarks")),
        ("broker", ("client", "cli", "benchmarks")),
        ("client", ("cli", "benchmarks")),
    ],
)
def test_lower_layers_do_not_import_higher_ones(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = _offenders(package, forbidden)
    assert not offenders, (
        f"{package}/ must not depend on {forbidden}; move the shared code into wire/: {offenders}"
    )


# The modules that run a broker in this process (for tests and notebooks) import it; nothing
# else in the SDK may, so a client-only install never needs the broker's code paths.
BROKER_RUNNERS = ("client.embedded", "client.embedded_cluster", "client.pytest_plugin")


def test_the_sdk_speaks_only_wire_to_the_broker() -> None:
    offenders = [
        line for line in _offenders("client", ("broker",)) if not line.startswith(BROKER_RUNNERS)
    ]
    assert not offenders, f"client/ must reach the broker's vocabulary through wire/: {offenders}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports. A package's `__init__` is left out
    as a target: importing `client.aio.group` runs `client/aio/__init__.py` first, but that is
    the package's public surface, not a dependency the importing module chose."""
    modules = _modules(package)
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    return {
        module: {name for name in _imports(path) if name in modules and name not in packages}
        - {module}
        for module, path in modules.items()
    }


def test_cycle_finder_sees_a_two_module_loop() -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]


def test_relative_imports_resolve_to_absolute_names() -> None:
    imports = _imports(ROOT / "broker" / "cluster" / "controller_client.py")
    assert "broker.cluster.controller_service" in imports
    assert "wire.connection" in imports


@pytest.mark.parametrize("package", ["client", "wire"])
def test_no_import_cycles(package: str) -> None:
    cycles = _cycles(_import_graph(package))
    assert not cycles, (
        f"import cycles in {package}/ (move the shared piece to the lower module, or declare "
        f"what the lower one needs as a Protocol): {cycles}"
    )
