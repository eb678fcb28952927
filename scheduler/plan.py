"""What one scheduling step decides: the plan the runtime (or the simulator) carries out."""

from __future__ import annotations

from dataclasses import dataclass, field

from heddle.scheduler.state import Outcome

__all__ = ["CoreStats", "Dispatch", "Finished", "Plan"]


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run `stage` of `request_id` (model `model`) on `device` now."""

    request_id: str
    stage: str
    model: str
    device: str


@dataclass(frozen=True, slots=True)
class Finished:
    """A request ended; nothing of it runs any more unless already in flight."""

    request_id: str
    outcome: Outcome
    error: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    dispatches: tuple[Dispatch, ...] = ()
    finished: tuple[Finished, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dispatches or self.finished)


@dataclass(frozen=True, slots=True)
class CoreStats:
    """A frozen snapshot for metrics and the ListDevices RPC."""

    queued: dict[str, int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    active_requests: int = 0
