"""What the power controller is configured with and reads: the `[power]` settings, a device's
power per DVFS level, the readings it takes (a Protocol that backends' PowerSample meets) and
the snapshot it reports. Pure data; the control law is in scheduler/power.py."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from heddle.scheduler.str_enum import StrEnum

__all__ = ["BOARD", "LevelPower", "PowerReading", "PowerSettings", "PowerSnapshot", "PowerSource", "box_power_w"]

BOARD = "board"  # the domain of a whole-module reading (as backends.power_sensors.BOARD)


class PowerSource(StrEnum):
    """Where a power or energy figure comes from: read from hardware, from the power model, a sum
    of both, or nothing metered (NONE, "", falsy)."""

    MEASURED = "measured"
    ESTIMATED = "estimated"
    MIXED = "mixed"
    NONE = ""


class PowerReading(Protocol):
    """What the controller reads of a sample (backends.power_sensors.PowerSample has it)."""

    # Read-only properties, so frozen dataclasses (PowerSample, the simulator's Reading) match.
    @property
    def device(self) -> str: ...  # a device id, "+"-joined ids, BOARD or "rail:NAME"
    @property
    def power_w(self) -> float: ...
    @property
    def source(self) -> PowerSource: ...  # MEASURED | ESTIMATED


def box_power_w(readings: Sequence[PowerReading]) -> float:
    """The board reading when there is one (it includes every rail), else the sum of all."""
    board = [r.power_w for r in readings if r.device == BOARD]
    return sum(board) if board else sum(r.power_w for r in readings)


@dataclass(frozen=True, slots=True)
class PowerSettings:
    """The `[power]` table. Budgets in watts (None: no box budget); fractions of a budget for
    the hysteresis band: escalate while smoothed power > high x budget, undo a step only after
    `relax_periods` periods in a row below low x budget and if the step is predicted to keep
    power under the middle of the band."""

    budget_w: float | None = None
    device_budget_w: Mapping[str, float] = field(default_factory=dict)
    period_s: float = 0.1
    smoothing: float = 0.5  # EWMA weight of the newest reading
    high: float = 0.95
    low: float = 0.85
    relax_periods: int = 5
    peak_window_s: float = 5.0  # an undo must fit on top of the highest reading this far back
    admission: bool = True  # latency checks at admission (power refusals apply regardless)
    queue_bound: int = 64  # requests that may wait frozen at once before new ones are refused
    configured: bool = False  # a [power] table was given

    def __post_init__(self) -> None:
        budgets = ([] if self.budget_w is None else [("budget_w", self.budget_w)]) + [
            (f"devices.{d}", w) for d, w in self.device_budget_w.items()]
        for name, watts in budgets:
            if not (isinstance(watts, (int, float)) and watts > 0 and math.isfinite(watts)):
                raise ValueError(f"power {name} must be a positive number of watts, got {watts!r}")
        if not self.period_s > 0:
            raise ValueError(f"power period_s must be > 0, got {self.period_s!r}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"power smoothing must be in (0, 1], got {self.smoothing!r}")
        if not 0 < self.low < self.high <= 1:
            raise ValueError(f"power needs 0 < low < high <= 1, got low {self.low!r}, high {self.high!r}")
        if self.relax_periods < 1 or self.queue_bound < 0 or self.peak_window_s < 0:
            raise ValueError("power relax_periods must be >= 1, queue_bound and peak_window_s >= 0")


    @classmethod
    def from_table(cls, raw: Mapping[str, Any], device_ids: Sequence[str]) -> PowerSettings:
        """The `[power]` table of a config: `budget_w`, `devices = { id = watts }` and the
        tuning keys above; ValueError names an unknown key or device or a bad value."""
        raw = dict(raw)
        known = {"budget_w", "devices", "period_s", "smoothing", "high", "low", "relax_periods",
                 "peak_window_s", "admission", "queue_bound"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown [power] keys {unknown}; known: {sorted(known)}")
        devices = dict(raw.pop("devices", {}) or {})
        strangers = sorted(set(devices) - set(device_ids))
        if strangers:
            raise ValueError(f"[power] devices names unknown device(s) {strangers}; known: {list(device_ids)}")
        for key in ("relax_periods", "queue_bound"):
            if key in raw and not isinstance(raw[key], int):
                raise ValueError(f"[power] {key} must be an integer, got {raw[key]!r}")
        if "admission" in raw and not isinstance(raw["admission"], bool):
            raise ValueError(f"[power] admission must be true or false, got {raw['admission']!r}")
        return cls(device_budget_w=devices, configured=True, **raw)


@dataclass(frozen=True, slots=True)
class LevelPower:
    """A device's power model as the controller predicts with it: idle, and busy per level."""

    idle_w: float
    active_w: tuple[float, ...]

    def busy_w(self, level: int) -> float:
        return self.active_w[min(level, len(self.active_w) - 1)]

    def power_w(self, level: int, busy: float) -> float:
        return self.idle_w + min(1.0, max(0.0, busy)) * (self.busy_w(level) - self.idle_w)


@dataclass(frozen=True, slots=True)
class PowerSnapshot:
    """What GetPower and the metrics show of the controller."""

    budget_w: float | None
    device_budget_w: Mapping[str, float]
    box_w: float | None
    smoothed_w: float | None
    domain_w: Mapping[str, float]
    source: PowerSource  # NONE before the first reading
    levels: Mapping[str, int]
    freeze: Mapping[str, int]
    refuse: int
    state: str  # ok | dvfs | freeze | refuse_low
