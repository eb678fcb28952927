"""What may import what (DESIGN.md §1, CONTRIBUTING.md): each folder imports only the layers below
it, clients need neither the server, the backends nor a runtime, and no two packages import each
other. scheduler/'s own rule (itself and the standard library) is in test_simulator.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Folder -> import name, as pyproject's package-dir maps them.
FOLDERS = {"scheduler": "heddle.scheduler", "backends": "heddle.backends", "server": "heddle.server",
           "clients": "heddle.clients"}
# The heddle layers each folder may import (its own included); server/ may import everything.
MAY_IMPORT = {
    "scheduler": {"heddle.scheduler"},
    "backends": {"heddle.backends", "heddle.scheduler"},
    "clients": {"heddle.clients", "heddle.v1"},
}
# Outside heddle: what an application installing the client must not need.
NOT_FOR_CLIENTS = ("onnxruntime", "onnx", "tritonclient")


def _imports(folder: str) -> list[tuple[str, str, str]]:
    """(file, its package, imported module) for every absolute import in the folder, those inside
    functions and under TYPE_CHECKING included."""
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        package = ".".join([FOLDERS[folder], *path.relative_to(REPO / folder).parent.parts])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            found += [(f"{folder}/{path.relative_to(REPO / folder).as_posix()}", package, n) for n in names]
    return found


def _layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_each_folder_imports_only_the_layers_below_it() -> None:
    """backends/ imports scheduler/ and itself; clients/ imports heddle.v1 and itself; no folder but
    server/ imports server/."""
    wrong = [(file, module) for folder, allowed in MAY_IMPORT.items() for file, _, module in _imports(folder)
             if module.startswith("heddle.") and _layer(module) not in allowed]
    assert wrong == []


def test_clients_import_no_runtime() -> None:
    """No module of clients/ imports onnxruntime, onnx or tritonclient (an application installing
    the client library needs none of them)."""
    wrong = [(file, module) for file, _, module in _imports("clients") if module.split(".")[0] in NOT_FOR_CLIENTS]
    assert wrong == []


@pytest.mark.slow
def test_importing_every_client_module_loads_no_server_backend_or_runtime() -> None:
    """The same, as Python sees it: after importing all of heddle.clients (transitive imports too),
    no server, backend, scheduler, ONNX Runtime or tritonclient module is loaded."""
    modules = sorted(f"heddle.clients.{p.stem}" for p in (REPO / "clients").glob("*.py") if p.stem != "__init__")
    probe = ("import importlib, sys\n"
             f"for name in {modules!r}:\n    importlib.import_module(name)\n"
             "print('\\n'.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            timeout=60).stdout.split()
    assert len(modules) > 10 and "heddle.clients.client" in loaded
    forbidden = [m for m in loaded if m.split(".")[0] in NOT_FOR_CLIENTS
                 or _layer(m) in ("heddle.server", "heddle.backends", "heddle.scheduler")]
    assert forbidden == []


@pytest.mark.slow
def test_no_two_packages_import_each_other() -> None:
    """The graph of imports between packages (scheduler.sim and backends.zoo count as their own)
    has no cycle, lazy imports included: a cycle would make the layers one."""
    edges: dict[str, set[str]] = {}
    known = {package for folder in FOLDERS for _, package, _ in _imports(folder)}
    for folder in FOLDERS:
        for _, package, module in _imports(folder):
            target = max((k for k in known if module == k or module.startswith(k + ".")), key=len, default=None)
            if target is not None and target != package:
                edges.setdefault(package, set()).add(target)
    assert "heddle.scheduler.sim" in known and "heddle.scheduler" in edges["heddle.backends"]
    cycles = []

    def visit(package: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(package, ())):
            if nxt in path:
                cycles.append([*path[path.index(nxt):], nxt])
            else:
                visit(nxt, [*path, nxt])

    for package in sorted(edges):
        visit(package, [package])
    assert cycles == []
