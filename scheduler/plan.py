"""What one scheduling step decides: the plan the runtime (or the simulator) carries out."""

from __future__ import annotations

from dataclasses import dataclass, field

from heddle.scheduler.state import Outcome
from heddle.scheduler.str_enum import StrEnum

__all__ = [
    "CoreStats", "Dispatch", "Finished", "Freeze", "Migrate", "Plan", "PowerAction", "PowerActionKind", "Reject",
    "SetLevel", "Unfreeze",
]


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run `stage` of `request_id` (model `model`) on `device` now.

    A batch (dynamic batching) is one Dispatch for one pass over several runs: `batch` names every
    member's (request_id, stage), this one's first, and `rows` their rows in all. Each member
    still ends on its own (Core.on_stage_done per member). Empty for a run of its own."""

    request_id: str
    stage: str
    model: str
    device: str
    batch: tuple[tuple[str, str], ...] = ()
    rows: int = 1

    def __repr__(self) -> str:
        # A single run's repr as before batching existed: recorded plan hashes stay valid.
        extra = f", batch={self.batch!r}, rows={self.rows!r}" if self.batch else ""
        return (f"Dispatch(request_id={self.request_id!r}, stage={self.stage!r}, model={self.model!r}, "
                f"device={self.device!r}{extra})")

    @property
    def members(self) -> tuple[Dispatch, ...]:
        """One single-run Dispatch per run this one carries: itself when it is not a batch."""
        if not self.batch:
            return (self,)
        return tuple(Dispatch(rid, stage, self.model, self.device) for rid, stage in self.batch)


@dataclass(frozen=True, slots=True)
class Finished:
    """A request ended; nothing of it runs any more unless already in flight."""

    request_id: str
    outcome: Outcome
    error: str = ""


@dataclass(frozen=True, slots=True)
class Freeze:
    """A queued, not-yet-started stage is held back so more urgent work gets its device."""

    request_id: str
    stage: str
    device: str


@dataclass(frozen=True, slots=True)
class Unfreeze:
    """A held stage may run again (the urgent work went, or it waited its aging bound)."""

    request_id: str
    stage: str
    device: str


@dataclass(frozen=True, slots=True)
class Migrate:
    """A queued stage moved to another device's queue (or was started there) before it ran."""

    request_id: str
    stage: str
    from_device: str
    to_device: str


@dataclass(frozen=True, slots=True)
class SetLevel:
    """The power controller moved `device` to DVFS level `level` (0 = fastest): the runtime
    applies it through the device's actuator (the simulator through its profile table)."""

    device: str
    level: int
    reason: str = ""


class PowerActionKind(StrEnum):
    """What a PowerAction does (its value is what metrics and traces show)."""

    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    REFUSE = "refuse"
    READMIT = "readmit"
    DUTY = "duty"


@dataclass(frozen=True, slots=True)
class PowerAction:
    """A power-controller step other than DVFS, for metrics and traces: kind is FREEZE /
    UNFREEZE (requests of priority <= `priority` held on `device`, or no longer), REFUSE
    / READMIT (new requests of priority <= `priority` refused at admission, device "box") or
    DUTY (the class frozen on `device` runs there for `share` of each control period)."""

    kind: PowerActionKind
    device: str
    priority: int
    reason: str = ""
    share: float = 0.0


@dataclass(frozen=True, slots=True)
class Reject:
    """Admission refused a request (it also appears in `finished`): why, and when a retry
    may succeed (None: a retry cannot help, e.g. a deadline no device could meet)."""

    request_id: str
    reason: str  # power | queue_full | overload | deadline
    priority: int
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """One step's decisions. Only dispatches and finished need carrying out; frozen, unfrozen
    and migrated report what the core did to queued work, for metrics and traces."""

    dispatches: tuple[Dispatch, ...] = ()
    finished: tuple[Finished, ...] = ()
    frozen: tuple[Freeze, ...] = ()
    unfrozen: tuple[Unfreeze, ...] = ()
    migrated: tuple[Migrate, ...] = ()
    # From the power controller and admission (scheduler/power.py, admission.py): levels
    # need carrying out; rejected requests are also in `finished`; power is for reports.
    levels: tuple[SetLevel, ...] = ()
    rejected: tuple[Reject, ...] = ()
    power: tuple[PowerAction, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dispatches or self.finished or self.levels)


@dataclass(frozen=True, slots=True)
class CoreStats:
    """A frozen snapshot for metrics and the ListDevices RPC."""

    queued: dict[str, int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    active_requests: int = 0
    frozen: dict[str, int] = field(default_factory=dict)
    levels: dict[str, int] = field(default_factory=dict)
