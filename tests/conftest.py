"""Shared pytest setup: make the tests folder importable for its helper modules, and mark the tests
that need a real tritonserver."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes the shared tritonserver is a triton test wherever it lives (the compose
    check runs its pipelines on one), so `-m "not triton"` never starts a server."""
    for item in items:
        if "triton_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.triton)
