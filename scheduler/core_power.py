"""The power half of Core's events: the controller's samples and DVFS levels, budgets, and power
control attached after the core is built. Kept apart so the request/step half stays readable; it
relies on the state Core.__init__ sets up."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, cast

from heddle.scheduler.plan import PowerAction, SetLevel
from heddle.scheduler.specs import DeviceSpec

if TYPE_CHECKING:
    from heddle.scheduler.admission import Admission
    from heddle.scheduler.policies import CoreView
    from heddle.scheduler.power import PowerController
    from heddle.scheduler.power_settings import PowerReading

__all__ = ["CorePowerEvents"]


class CorePowerEvents:
    """Power samples, budgets and levels: Core's events that only the power loop sends."""

    devices: dict[str, DeviceSpec]
    power: PowerController | None
    admission: Admission | None
    version: int
    estimates_version: int
    _levels: dict[str, int]
    _best_s: dict[str, float]
    _log_levels: list[SetLevel]
    _log_power: list[PowerAction]

    def on_power_sample(self, samples: Iterable[PowerReading], now: float,
                        busy: Mapping[str, float] | None = None) -> None:
        """A control period's power readings: the controller's level changes show in the next
        plan (for the driver to apply), its freezes and refusals take effect from then on."""
        if self.power is None:
            return
        for action in self.power.step(samples, now, cast("CoreView", self), busy):  # Core is one
            if isinstance(action, SetLevel):
                self.set_device_level(action.device, action.level)
                self._log_levels.append(action)
            else:
                self._log_power.append(action)
                self.version += 1

    def attach_power(self, power: PowerController, admission: Admission | None = None) -> None:
        """Power control and admission for a core built before its sensors were known: a server
        detects its DVFS actuators (and so each device's level count) at start, after the core
        exists. The one way besides the constructor to give them."""
        self.power, self.admission = power, admission
        self.version += 1

    def set_power_budget(self, budget_w: float | None, device_budget_w: Mapping[str, float] | None = None) -> None:
        """New power budgets (the admin RPC): the controller acts on them from its next sample.
        ValueError for unknown devices or bad watts, or when the core has no power control."""
        if self.power is None:
            raise ValueError("this core has no power controller")
        self.power.set_budget(budget_w, device_budget_w)

    def on_level_refused(self, device: str, level: int, level_count: int) -> None:
        """The device's actuator did not take the plan's level: it holds `level` and offers
        `level_count` levels from now on (a knob that was lost). The controller and the
        estimates take the actuator's word; the controller plans from there."""
        if self.power is not None:
            self.power.pin_level(device, level, level_count)
        self.set_device_level(device, level)

    def on_level_shared(self, device: str, level: int) -> None:
        """The device shares its DVFS knob with one the plan moved: it runs at `level` too."""
        if self.power is not None:
            self.power.levels[device] = level
        self.set_device_level(device, level)

    def set_device_level(self, device: str, level: int) -> None:
        """The device now runs at DVFS level `level` (0 = fastest); estimates follow."""
        if device not in self.devices:
            raise KeyError(f"unknown device {device!r}")
        self._levels[device] = level
        self._best_s.clear()
        self.version += 1
        self.estimates_version += 1
