"""The linters as part of the suite, so a full run before landing catches what CI's `make lint` would:
ruff finds nothing, and mypy (strict) finds nothing in scheduler/ and the runtime seam."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing() -> None:
    """`ruff check .` with pyproject's rules is clean (private members, bugbear, pyupgrade, ...)."""
    result = _run("-m", "ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_finds_nothing_in_the_scheduler_and_the_runtime_seam() -> None:
    """tools/typecheck.py (mypy, strict on heddle.scheduler and the runtime seam modules) is clean."""
    result = _run("tools/typecheck.py")
    assert result.returncode == 0, result.stdout + result.stderr
