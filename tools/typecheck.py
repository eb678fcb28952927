"""Run mypy on heddle's packages as they import (`heddle.scheduler`, ...), not as the folders are named.

setuptools maps `heddle.scheduler` to scheduler/ (package-dir), which mypy cannot follow; so this
lays a tree of links, build/typecheck/heddle/<package> -> ../../../<folder>, runs mypy on the
packages [tool.mypy] names with that tree on its path, and prints the findings with the repository's
own paths (scheduler/core.py, not build/typecheck/heddle/scheduler/core.py).
Usage: python tools/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / "build" / "typecheck"
# The import name of each folder, as pyproject's [tool.setuptools] package-dir has it.
FOLDERS = {"scheduler": "scheduler", "server": "server", "backends": "backends", "clients": "clients",
           "v1": "proto/heddle/v1"}


def lay_tree() -> None:
    """build/typecheck/heddle/<name> -> the folder, relative so a moved checkout still works."""
    package = TREE / "heddle"
    package.mkdir(parents=True, exist_ok=True)
    for name, folder in FOLDERS.items():
        link = package / name
        target = os.path.relpath(REPO / folder, package)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)


def repo_paths(text: str) -> str:
    """mypy names files by the path it found them under; give them back their folders' names."""
    for name, folder in FOLDERS.items():
        text = text.replace(f"build/typecheck/heddle/{name}/", f"{folder}/")
    return text


def main(argv: list[str]) -> int:
    from mypy import api  # here, so --help and lay_tree work without mypy installed

    lay_tree()
    os.chdir(REPO)  # [tool.mypy]'s paths are relative to the repository
    stdout, stderr, status = api.run(argv)
    sys.stdout.write(repo_paths(stdout))
    sys.stderr.write(repo_paths(stderr))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
