"""The runtime seam stays narrow: the runtime's modules import each other without a cycle, and
none reads another object's private members (each talks to the others through their public
methods and the StageRunner / StageEvents protocols)."""

from __future__ import annotations

import ast
from pathlib import Path

import heddle.server.runtime

RUNTIME = Path(next(iter(heddle.server.runtime.__path__)))
# Every module of server/runtime/: the runtime, its stage runners, what they report and the
# limits and bookkeeping around them.
SEAM = tuple(sorted(p.stem for p in RUNTIME.glob("*.py") if p.stem != "__init__"))
PREFIX = "heddle.server.runtime."


def _tree(name: str) -> ast.Module:
    return ast.parse((RUNTIME / f"{name}.py").read_text())


def _imports(name: str) -> set[str]:
    """The seam modules `name` imports, TYPE_CHECKING imports included (a cycle there is one too)."""
    found = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PREFIX):
            found.add(node.module.removeprefix(PREFIX))
    return found & set(SEAM)


def _private_reads(name: str, tree: ast.Module | None = None) -> list[str]:
    """`x._name` where x is not self or cls, and `from ... import _name`: another object's privates."""
    reads = []
    for node in ast.walk(tree or _tree(name)):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            reads.append(f"{name}.py:{node.lineno} {ast.unparse(node)}")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("heddle."):
            reads += [f"{name}.py:{node.lineno} import {a.name}" for a in node.names if a.name.startswith("_")]
    return reads


def test_no_import_cycle_between_the_runtime_modules() -> None:
    """Walking the import graph of the seam's modules from any of them never comes back to it."""
    assert {"runtime", "stage_runner", "stepping", "status"} <= set(SEAM)
    graph = {name: _imports(name) for name in SEAM}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name not in done:
            for other in sorted(graph[name]):
                visit(other, path + (name,))
            done.add(name)

    for name in SEAM:
        visit(name, ())


def test_no_module_reads_another_objects_private_members() -> None:
    """No seam module touches a private member of anything but itself."""
    assert [read for name in SEAM for read in _private_reads(name)] == []


def test_the_check_sees_a_private_read() -> None:
    """The private-read check finds what it looks for (it would pass vacuously otherwise)."""
    tree = ast.parse("from heddle.server.runtime.jobs import _Job\n"
                     "def f(self, rt):\n    rt._step()\n    self.rt._loop.call_soon(self._ok, x.__class__)\n")
    assert sorted(_private_reads("m", tree)) == ["m.py:1 import _Job", "m.py:3 rt._step", "m.py:4 self.rt._loop"]
