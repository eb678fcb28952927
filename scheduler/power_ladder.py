"""The power controller's ladder (scheduler/power.py has the design): one rung up per escalation
(a device's DVFS level, then classes frozen device by device and refused at admission, then the
levels of the devices serving the top class), and its undo in reverse, each undo only where it
fits. Kept apart from the controller's sensing, smoothing and timing; it relies on the state
PowerController.__init__ sets up."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from heddle.scheduler.plan import PowerAction, PowerActionKind, SetLevel
from heddle.scheduler.power_settings import LevelPower, PowerSettings
from heddle.scheduler.profiles import device_speed
from heddle.scheduler.state import RunState

if TYPE_CHECKING:
    from heddle.scheduler.policies import CoreView

__all__ = ["PowerLadder", "Step"]

_MIN_SHARE = 0.05  # a share of a control period below this is not worth an action
_MAX_SHARE = 0.95  # past this the class is released whole, if that fits


class Step:
    """What one control step may read of the core, computed once and only when acting."""

    def __init__(self, view: CoreView, devices: Sequence[str], busy: Mapping[str, float], top: int,
                 recent_top: frozenset[str] = frozenset()) -> None:
        self.busy = busy
        self.speed = {d: device_speed(view.devices[d]) for d in devices}
        self.urgency: dict[str, int] = {}
        self.priorities: dict[str, list[int]] = {}
        for d in devices:
            running = [r.request.priority for r in view.running(d)]
            queued = [(r.request.priority, r.state is RunState.READY) for r in view.queued(d)]
            self.priorities[d] = running + [q for q, _ in queued]
            # Frozen work is not urgent: it waits for power whatever this device's level.
            self.urgency[d] = min(max(running + [q for q, ready in queued if ready], default=0), top)
            if d in recent_top:  # served the top class moments ago: an idle gap between frames
                self.urgency[d] = top
        self.queued = {d: bool(view.queued(d)) for d in devices}
        self.running_low = {d: [r.request.priority for r in view.running(d)] for d in devices}
        # Classes below the top with a request in flight (their work may reach any device next),
        # lowest first: the only ones freezing or refusing one by one can help.
        self.present = sorted({r.priority for r in view.active_requests() if r.priority < top})

    def low_share(self, device: str, p: int) -> float:
        """Share of the device's running work of priority <= p: what freezing p would save."""
        running = self.running_low[device]
        return sum(q <= p for q in running) / len(running) if running else 0.0

    def has_work(self, device: str, p: int) -> bool:
        return any(q <= p for q in self.priorities[device])

    def slows(self, device: str, level: int) -> bool:
        """Does `level` run slower than `level - 1` (the device's declared clocks)? Virtual
        DVFS with no clock table does not: lowering it costs no latency, raising gains none."""
        speed = self.speed[device]
        return speed.clock(level) < speed.clock(level - 1)


class PowerLadder:
    """Escalation and its undo: PowerController's actions."""

    settings: PowerSettings
    models: dict[str, LevelPower]
    devices: list[str]
    level_counts: dict[str, int]
    top: int
    budget_w: float | None
    device_budget_w: dict[str, float]
    levels: dict[str, int]
    freeze: dict[str, int]
    duty: dict[str, float]
    refuse: int
    smoothed_w: float | None
    smoothed_domain_w: dict[str, float]
    _order: dict[str, int]
    _recent: deque[tuple[float, float, dict[str, float]]]

    def _escalate(self, devices: list[str], step: Step, why: str, is_box: bool) -> list[SetLevel | PowerAction]:
        """One rung up; refusing classes with nothing in flight saves no power now, so it goes
        with the next rung in the same period instead of spending one. A class's share of a
        device's periods (the last undo) is the first thing cut, by half."""
        shared = [d for d in devices if self.duty[d] > 0]
        if shared:
            cut = max(shared, key=lambda d: (self._duty_w(d), -self._order[d]))
            half = self.duty[cut] / 2 if self.duty[cut] / 2 >= _MIN_SHARE else 0.0
            return [self._set_duty(cut, half, why + f"; priority <= {self.freeze[cut]} runs {half:.0%} of each period")]
        device = self._to_lower(devices, step, lambda d: step.urgency[d] < self.top
                                or not step.slows(d, self.levels[d] + 1))
        if device is not None:
            return [self._set_level(device, self.levels[device] + 1, step, why)]
        for p in step.present:
            # Freeze the class device by device (those running or holding it first); once every
            # device holds it, refuse its new requests too; then the next class up.
            candidates = [d for d in devices if self.freeze[d] < p]
            if candidates:
                device = min(candidates, key=lambda d: (not step.has_work(d, p), -self._freeze_saving_w(d, p, step),
                                                        step.urgency[d], self._order[d]))
                return [self._set_freeze(device, p, step, why)]
            if is_box and self.refuse < p:
                self.refuse = p
                return [PowerAction(PowerActionKind.REFUSE, "box", p, why)]
        actions: list[SetLevel | PowerAction] = []
        if is_box and self.refuse < self.top - 1:  # nothing below the top left to hold: refuse it all
            self.refuse = self.top - 1
            actions.append(PowerAction(PowerActionKind.REFUSE, "box", self.top - 1, why))
        device = self._to_lower(devices, step, lambda d: True)
        if device is not None:
            actions.append(self._set_level(device, self.levels[device] + 1, step, why))
        return actions

    def _relax(self, step: Step, why: str) -> list[SetLevel | PowerAction]:
        """Undo the last rung of the ladder: top-class devices' levels, then classes from the
        highest (readmit, then unfreeze device by device), then the other devices' levels."""
        # Only where the level really slowed the top class down; other raises come last.
        hurt = [d for d in self.devices
                if self.levels[d] and step.urgency[d] >= self.top and step.slows(d, self.levels[d])]
        raised = self._to_raise(hurt, step, why)
        if raised is not None:
            return [raised]
        # A raise that does not fit now would not fit with the class below released either (it
        # is checked as if busy throughout): holding that class back gains the top class nothing.
        thresholds = sorted({self.refuse, *self.freeze.values()} - {0}, reverse=True)
        if not thresholds:
            return _listed(self._to_raise(self.devices, step, why))
        # The highest class held: readmit it, then unfreeze it device by device.
        p = thresholds[0]
        below = max((c for c in step.present if c < p), default=0)
        if self.refuse >= p:
            self.refuse = below
            return [PowerAction(PowerActionKind.READMIT, "box", p, why)]
        held = [d for d in self.devices if self.freeze[d] >= p]
        for device in sorted(held, key=lambda d: (-step.urgency[d], self._order[d])):
            # The frozen backlog may keep the device busy throughout: its busy power at its level.
            full_w = self.models[device].busy_w(self.levels[device])
            if self._fits_at(device, full_w):
                return [self._set_freeze(device, below, step, why, full_w - self.models[device].idle_w)]
        # Busy at its own level none fits: release the class on a device slowed to a level where
        # it does (least urgent device first), both in one step, so that the next calm period
        # does not give the level back before the class ran. Without this a class stays frozen
        # for good wherever one device's full-speed busy power alone exceeds the room left (a
        # GPU under a budget below its busy draw), with the budget half unused.
        for device in sorted(held, key=lambda d: (step.urgency[d], self._order[d])):
            model = self.models[device]
            for slower in range(self.levels[device] + 1, self.level_counts[device]):
                full_w = model.busy_w(slower)
                if self._fits_at(device, full_w):
                    rise_w = full_w - self.models[device].idle_w
                    self.levels[device] = slower
                    return [SetLevel(device, slower, why + f"; slowed to release priority {p}"),
                            self._set_freeze(device, below, step, why, rise_w)]
        return _listed(self._share_more(held, step, p, why))  # in order: nothing below it is undone first

    def _share_more(self, held: list[str], step: Step, p: int, why: str) -> PowerAction | None:
        """Released whole the class fits on no device at any level: let it run a share of each
        control period on one (least urgent first), the share its busy power fits in the room
        left (the smoothed power under the middle of the band, the peak under the budget), so it
        is not frozen for good with the budget half unused. Raised again each calm dwell while
        the room lasts; halved first when power goes over."""
        for device in sorted(held, key=lambda d: (step.urgency[d], self._order[d])):
            rise_w = self._rise_w(device)
            if rise_w <= 0:
                continue
            share = min(_MAX_SHARE, self.duty[device] + self._room_w(device) / rise_w)
            if share >= self.duty[device] + _MIN_SHARE:
                return self._set_duty(device, share, why + f"; priority <= {p} runs {share:.0%} of each period")
        return None

    def _set_duty(self, device: str, share: float, why: str) -> PowerAction:
        self._feed_forward(device, (share - self.duty[device]) * self._rise_w(device))
        self.duty[device] = share
        return PowerAction(PowerActionKind.DUTY, device, self.freeze[device], why, share)

    def _rise_w(self, device: str) -> float:
        model = self.models[device]
        return model.busy_w(self.levels[device]) - model.idle_w

    def _duty_w(self, device: str) -> float:
        return self.duty[device] * self._rise_w(device)

    def _room_w(self, device: str) -> float:
        """What an undo may add and still fit (_fits): the least room over the budgets in force."""
        bar = (self.settings.low + self.settings.high) / 2
        rooms = []
        if self.budget_w is not None and self.smoothed_w is not None:
            peak = max(box for _, box, _ in self._recent) if self._recent else 0.0
            rooms += [bar * self.budget_w - self.smoothed_w, self.budget_w - peak]
        dev_budget, dev_w = self.device_budget_w.get(device), self.smoothed_domain_w.get(device)
        if dev_budget is not None and dev_w is not None:
            peak = max((d.get(device, 0.0) for _, _, d in self._recent), default=0.0)
            rooms += [bar * dev_budget - dev_w, dev_budget - peak]
        return min(rooms, default=0.0)

    def _to_lower(self, devices: list[str], step: Step, allowed: Callable[[str], bool]) -> str | None:
        candidates = [(step.urgency[d], -self._saving_w(d, step), self._order[d], d) for d in devices
                      if allowed(d) and self.levels[d] < self.level_counts[d] - 1 and self._saving_w(d, step) > 0]
        return min(candidates)[3] if candidates else None

    def _to_raise(self, devices: list[str], step: Step, why: str) -> SetLevel | None:
        for device in sorted((d for d in devices if self.levels[d] > 0),
                             key=lambda d: (-step.urgency[d], self._order[d])):
            model, level = self.models[device], self.levels[device]
            extra_w = model.busy_w(level - 1) - model.busy_w(level)  # as if busy throughout
            if self._fits(device, extra_w):
                return self._set_level(device, level - 1, step, why, extra_w)
        return None

    def _freeze_saving_w(self, device: str, p: int, step: Step) -> float:
        """What freezing class <= p on the device saves now: its busy power for the share of its
        running work of those classes."""
        model, level = self.models[device], self.levels[device]
        return step.busy[device] * (model.busy_w(level) - model.idle_w) * step.low_share(device, p)

    def _saving_w(self, device: str, step: Step) -> float:
        model, level = self.models[device], self.levels[device]
        return step.busy[device] * (model.busy_w(level) - model.busy_w(level + 1))

    def _fits_at(self, device: str, device_w: float) -> bool:
        """Would the device going from idle to device_w (its busy power at a level: a released
        backlog fills it) fit? As if on top of all the box draws now: what the device runs now
        may move to the others when the backlog takes it, at about the same power."""
        return self._fits(device, device_w - self.models[device].idle_w)

    def _fits(self, device: str, extra_w: float) -> bool:
        """Would an undo adding extra_w keep the smoothed power under the middle of the band,
        and the highest reading of the peak window under the budget itself? (Bursts of work
        that is never frozen, such as top-class frames, come back: leave room for them.)"""
        bar = (self.settings.low + self.settings.high) / 2
        checks = []
        if self.budget_w is not None and self.smoothed_w is not None:
            checks.append((self.smoothed_w, max(box for _, box, _ in self._recent) if self._recent else 0.0,
                           self.budget_w))
        dev_budget, dev_w = self.device_budget_w.get(device), self.smoothed_domain_w.get(device)
        if dev_budget is not None and dev_w is not None:
            checks.append((dev_w, max((d.get(device, 0.0) for _, _, d in self._recent), default=0.0), dev_budget))
        return all(smoothed + extra_w <= bar * budget and peak + extra_w <= budget
                   for smoothed, peak, budget in checks)

    def _set_level(self, device: str, level: int, step: Step, why: str, extra_w: float | None = None) -> SetLevel:
        if extra_w is None:  # lowering: what it saves
            extra_w = -self._saving_w(device, step)
        self.levels[device] = level
        self._feed_forward(device, extra_w)
        return SetLevel(device, level, why)

    def _set_freeze(self, device: str, p: int, step: Step, why: str, extra_w: float | None = None) -> PowerAction:
        if extra_w is None:
            extra_w = -self._freeze_saving_w(device, p, step)
        old = self.freeze[device]
        self.freeze[device] = p
        self.duty[device] = 0.0  # a share was of the class held before
        self._feed_forward(device, extra_w)
        return PowerAction(PowerActionKind.FREEZE, device, p, why) if p > old else PowerAction(
            PowerActionKind.UNFREEZE, device, old, why)

    def _feed_forward(self, device: str, extra_w: float) -> None:
        """Move the smoothed power by what an action is predicted to change at once, so the
        next step does not act again on a reading that predates this one (no windup)."""
        if self.smoothed_w is not None:
            self.smoothed_w = max(0.0, self.smoothed_w + extra_w)
        if device in self.smoothed_domain_w:
            self.smoothed_domain_w[device] = max(0.0, self.smoothed_domain_w[device] + extra_w)


def _listed(action: SetLevel | PowerAction | None) -> list[SetLevel | PowerAction]:
    return [] if action is None else [action]
