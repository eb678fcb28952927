"""Shared pytest setup: mark the tests that need a real tritonserver. (pyproject's `pythonpath` makes
the fixture modules here importable by name.)"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes the shared tritonserver is a triton test wherever it lives (the compose
    check runs its pipelines on one), so `-m "not triton"` never starts a server."""
    for item in items:
        if "triton_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.triton)
