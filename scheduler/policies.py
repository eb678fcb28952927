"""Scheduling policies: each gives a total, deterministic order over ready stage runs."""

from __future__ import annotations

from typing import Callable, Protocol

from heddle.scheduler.state import StageRun

__all__ = ["POLICIES", "Policy", "make_policy", "FcfsPolicy", "PriorityPolicy"]


class Policy(Protocol):
    """Orders ready stage runs: the smallest key runs first. `now` lets keys age."""

    name: str

    def key(self, run: StageRun, now: float) -> tuple: ...


def _tail(run: StageRun) -> tuple:
    # Arrival, then arrival counter, then topological index: a total order, so plans are
    # a deterministic function of the state.
    return (run.request.arrival_s, run.request.seq, run.index)


class FcfsPolicy:
    """First come, first served across requests, whatever their priority."""

    name = "fcfs"

    def key(self, run: StageRun, now: float) -> tuple:
        return _tail(run)


class PriorityPolicy:
    """Strict priority (higher level first), then arrival."""

    name = "priority"

    def key(self, run: StageRun, now: float) -> tuple:
        return (-run.request.priority, *_tail(run))


POLICIES: dict[str, Callable[[], Policy]] = {
    "fcfs": FcfsPolicy,
    "priority": PriorityPolicy,
}


def make_policy(name: str) -> Policy:
    """Build a policy by name; ValueError lists the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None
