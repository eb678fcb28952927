"""The power-budget controller: smoothed power against budgets, turned into DVFS levels, priority
classes frozen per device and classes refused at admission, with hysteresis both ways.

Pure: readings and `now` come in, SetLevel/PowerAction records go out (docs/POWER.md has the
design). One step per control period, along a ladder ordered by cost; undone in reverse:
  1. lower the DVFS level of the least urgent device that serves no top-class work (or whose
     lower level costs no speed: no clock table, as with virtual DVFS);
  2. for each class p from the lowest, while requests of p are in flight: freeze p device by
     device (least urgent first); then refuse new requests of p at admission;
  3. lower the levels of the devices left (those serving the top class).
The top class is never frozen or refused by power. An undo must fit: predicted power after
it under the middle of the band, and the highest recent reading plus it under the budget; a
class that fits nowhere at the devices' levels is released on a device slowed until it does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from heddle.scheduler.plan import PowerAction, SetLevel
from heddle.scheduler.power_ladder import PowerLadder, Step
from heddle.scheduler.power_settings import (
    BOARD,
    LevelPower,
    PowerReading,
    PowerSettings,
    PowerSnapshot,
    PowerSource,
    box_power_w,
)
from heddle.scheduler.state import RunState

if TYPE_CHECKING:
    from heddle.scheduler.policies import CoreView

__all__ = [
    "BOARD", "LevelPower", "PowerController", "PowerReading", "PowerSettings", "PowerSnapshot",
    "box_power_w",
]

_MAX_DWELL_FACTOR = 16  # the relax dwell backs off at most to this many times its setting
# A reading past budget x this escalates at once, whatever the smoothed power says: a burst of
# work that is never frozen (top-class frames) must not make the limit a habit.
_HARD_LIMIT = 1.05
_TOP_MEMORY_S = 2.0  # a device that ran top-class work this recently still counts as serving it


class PowerController(PowerLadder):
    """One step per control period; budgets can change at run time (`set_budget`)."""

    def __init__(self, settings: PowerSettings, models: Mapping[str, LevelPower],
                 level_counts: Mapping[str, int] | None = None, top_priority: int = 4) -> None:
        self.settings = settings
        self.models = dict(models)
        self.devices = list(models)
        self._order = {d: i for i, d in enumerate(self.devices)}
        counts = level_counts or {}
        self.level_counts = {d: max(1, int(counts.get(d, len(m.active_w)))) for d, m in models.items()}
        self.top = top_priority
        self.budget_w: float | None = None
        self.device_budget_w: dict[str, float] = {}
        self.set_budget(settings.budget_w, settings.device_budget_w)
        self.levels = {d: 0 for d in self.devices}
        self.freeze = {d: 0 for d in self.devices}  # requests of priority <= this are held there
        # Share of each control period the class frozen on a device may still run there (a release
        # in part, where releasing it whole does not fit), and the run time spent of it so far.
        self.duty = {d: 0.0 for d in self.devices}
        self._duty_spent_s = {d: 0.0 for d in self.devices}
        self.refuse = 0  # requests of priority <= this are refused at admission
        self.box_w: float | None = None
        self.smoothed_w: float | None = None
        self.domain_w: dict[str, float] = {}
        self.smoothed_domain_w: dict[str, float] = {}
        self.source = PowerSource.NONE
        self._recent: deque[tuple[float, float, dict[str, float]]] = deque()  # (t, box, domains)
        self._top_seen: dict[str, float] = {}  # device -> last step it ran or queued top-class work
        self._now = -math.inf
        self._calm = 0  # control periods in a row below the relax threshold
        self._steady = 0  # control periods since the last action
        self._dwell = settings.relax_periods
        self._last_relax_s = -math.inf
        self._last_escalate_s = -math.inf

    # ---- configuration --------------------------------------------------------------
    def set_budget(self, budget_w: float | None, device_budget_w: Mapping[str, float] | None = None) -> None:
        """New budgets (None / empty: none); ValueError for unknown devices or non-positive watts."""
        device_budget_w = dict(device_budget_w or {})
        unknown = sorted(set(device_budget_w) - set(self.models))
        if unknown:
            raise ValueError(f"power budget for unknown device(s) {unknown}; known: {self.devices}")
        PowerSettings(budget_w=budget_w, device_budget_w=device_budget_w)  # validates the watts
        self.budget_w, self.device_budget_w = budget_w, device_budget_w
        self._calm = 0

    def pin_level(self, device: str, level: int, count: int = 1) -> None:
        """The device's actuator holds `level` and offers `count` levels (a knob that was lost)."""
        self.levels[device] = level
        self.level_counts[device] = max(1, count)

    # ---- what admission and the core read ------------------------------------------
    def refuses(self, priority: int) -> bool:
        return priority < self.top and priority <= self.refuse

    def freeze_max(self, device: str) -> int:
        return self.freeze.get(device, 0)

    def duty_left_s(self, device: str) -> float:
        """Run time the class frozen on the device may still start there this control period."""
        return self.duty.get(device, 0.0) * self.settings.period_s - self._duty_spent_s.get(device, 0.0)

    def spend_duty(self, device: str, run_s: float) -> None:
        """A run of the class frozen on the device started there, expected to take run_s."""
        self._duty_spent_s[device] += run_s

    def frozen_anywhere(self, priority: int) -> bool:
        return priority < self.top and any(priority <= f for f in self.freeze.values())

    @property
    def freezing(self) -> bool:
        return any(self.freeze.values())

    @property
    def state(self) -> str:
        if self.refuse:
            return "refuse_low"
        if self.freezing:
            return "freeze"
        return "dvfs" if any(self.levels.values()) else "ok"

    def retry_after_s(self, priority: int) -> float:
        """When `priority` could be admitted again at the earliest: the undo steps ahead of its
        readmission (higher classes first), each at least one calm dwell after the last."""
        steps = 1 + max(0, self.refuse - priority) + sum(max(0, f - priority) for f in self.freeze.values())
        return steps * self._dwell * self.settings.period_s

    def snapshot(self) -> PowerSnapshot:
        return PowerSnapshot(self.budget_w, dict(self.device_budget_w), self.box_w, self.smoothed_w,
                             dict(self.domain_w), self.source, dict(self.levels), dict(self.freeze),
                             self.refuse, self.state)

    # ---- the step -------------------------------------------------------------------
    def step(self, readings: Iterable[PowerReading], now: float, view: CoreView,
             busy: Mapping[str, float] | None = None) -> list[SetLevel | PowerAction]:
        """Fold in this period's readings and take at most one step per budget that is over
        (or one undo step when all are calm). `busy`: each device's busy fraction over the
        period; by default 1 for a device running something, else 0."""
        self._observe(list(readings), now)
        self._duty_spent_s = dict.fromkeys(self.devices, 0.0)  # a new period, its share unspent
        for d in self.devices:
            if any(r.request.priority >= self.top for r in view.running(d)) or any(
                    r.request.priority >= self.top and r.state is RunState.READY for r in view.queued(d)):
                self._top_seen[d] = now
        self._now = now
        over = [scope for scope in self._scopes() if scope[2] is not None and (
            scope[2] > self.settings.high * scope[1] or scope[4] > _HARD_LIMIT * scope[1])]
        if not over:
            return self._maybe_relax(now, view, busy)
        self._calm = self._steady = 0
        if now - self._last_relax_s < 2 * self._dwell * self.settings.period_s:  # undone too soon
            self._dwell = min(2 * self._dwell, _MAX_DWELL_FACTOR * self.settings.relax_periods)
        self._last_escalate_s = now
        step = self._context(view, busy)
        actions: list[SetLevel | PowerAction] = []
        for devices, budget_w, power_w, name, raw_w in over:
            assert power_w is not None  # `over` holds measured scopes only
            why = (f"{name} {power_w:.2f} W > {self.settings.high:g} x budget {budget_w:g} W"
                   if power_w > self.settings.high * budget_w else
                   f"{name} read {raw_w:.2f} W > {_HARD_LIMIT:g} x budget {budget_w:g} W")
            actions += self._escalate(devices, step, why, is_box=name == "box")
        return actions

    def _maybe_relax(self, now: float, view: CoreView,
                     busy: Mapping[str, float] | None) -> list[SetLevel | PowerAction]:
        calm = all(power_w is None or power_w < self.settings.low * budget_w
                   for _, budget_w, power_w, _, _ in self._scopes())
        self._calm = self._calm + 1 if calm else 0
        self._steady += 1
        if not calm and self._steady >= self._dwell and any(self.levels.values()):
            self._steady = 0
            return self._rebalance(self._context(view, busy))
        if self._calm < self._dwell or self.state == "ok":
            return []
        if now - self._last_escalate_s > 20 * self._dwell * self.settings.period_s:
            self._dwell = max(self.settings.relax_periods, self._dwell // 2)  # stable again: back off less
        actions = self._relax(self._context(view, busy), "power below the relax threshold")
        if actions:
            self._calm = self._steady = 0
            self._last_relax_s = now
        return actions

    def _rebalance(self, step: Step) -> list[SetLevel | PowerAction]:
        """Between the thresholds: when work moved, give a level back to a device now serving
        the top class, taken from one that does not, if that does not add power."""
        slowed = [d for d in self.devices if self.levels[d] > 0 and step.urgency[d] >= self.top
                  and step.slows(d, self.levels[d])]
        donors = [d for d in self.devices if step.urgency[d] < self.top and self._saving_w(d, step) > 0
                  and self.levels[d] < self.level_counts[d] - 1]
        if not slowed or not donors:
            return []
        up = min(slowed, key=lambda d: (-self.levels[d], self._order[d]))
        down = min(donors, key=lambda d: (step.urgency[d], -self._saving_w(d, step), self._order[d]))
        model, level = self.models[up], self.levels[up]
        demand = 1.0 if step.queued[up] else step.busy[up]
        extra_w = demand * (model.busy_w(level - 1) - model.busy_w(level))
        if extra_w > self._saving_w(down, step):
            return []
        why = f"rebalance: {up} serves priority {self.top}, {down} does not"
        return [self._set_level(down, self.levels[down] + 1, step, why),
                self._set_level(up, level - 1, step, why, extra_w)]

    def _observe(self, readings: list[PowerReading], now: float) -> None:
        if not readings:
            return
        alpha = self.settings.smoothing
        self.box_w = box_power_w(readings)
        self._recent.append((now, self.box_w, {r.device: r.power_w for r in readings}))
        while self._recent and self._recent[0][0] < now - self.settings.peak_window_s:
            self._recent.popleft()
        old_w = self.smoothed_w
        self.smoothed_w = self.box_w if old_w is None else old_w + alpha * (self.box_w - old_w)
        for r in readings:
            self.domain_w[r.device] = r.power_w
            old = self.smoothed_domain_w.get(r.device)
            self.smoothed_domain_w[r.device] = r.power_w if old is None else old + alpha * (r.power_w - old)
        sources = {r.source for r in readings}
        self.source = sources.pop() if len(sources) == 1 else PowerSource.MIXED

    def _scopes(self) -> list[tuple[list[str], float, float | None, str, float]]:
        """(devices, budget, smoothed power, name, last reading) of every budget in force. A
        device budget needs a reading of that device alone (a shared rail cannot be split)."""
        scopes = []
        if self.budget_w is not None:
            scopes.append((self.devices, self.budget_w, self.smoothed_w, "box", self.box_w or 0.0))
        for device, budget_w in self.device_budget_w.items():
            scopes.append(([device], budget_w, self.smoothed_domain_w.get(device), device,
                           self.domain_w.get(device, 0.0)))
        return scopes

    def _context(self, view: CoreView, busy: Mapping[str, float] | None) -> Step:
        if busy is None:
            busy = {d: 1.0 if any(True for _ in view.running(d)) else 0.0 for d in self.devices}
        recent = frozenset(d for d, t in self._top_seen.items() if self._now - t <= _TOP_MEMORY_S)
        return Step(view, self.devices, {d: busy.get(d, 0.0) for d in self.devices}, self.top, recent)
