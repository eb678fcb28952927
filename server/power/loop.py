"""The power loop: sensors and DVFS actuators detected at start, read every control period on
the event loop, fed to the core's controller; its levels applied through the actuators, energy
rates handed to the runtime's ledger, and every period kept for reports."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from heddle.backends.power.dvfs import Applied, detect_actuators
from heddle.backends.power.estimate import power_model_of
from heddle.backends.power.sensors import ESTIMATED, PowerSample, box_power_w, detect_sensors, domain_devices
from heddle.scheduler.admission import Admission
from heddle.scheduler.plan import SetLevel
from heddle.scheduler.power import LevelPower, PowerController
from heddle.scheduler.power_settings import PowerSource
from heddle.server.observe.logs import get_logger

__all__ = ["Governor", "PeriodRecord", "PowerLoop"]

log = get_logger("heddle.power")


class Governor(Protocol):
    """A baseline that sets DVFS levels from the box's power alone (scheduler/sim/governor.py)."""

    def decide(self, box_w: float, levels: Mapping[str, int]) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True)
class PeriodRecord:
    """One control period as it happened: for benchmarks and plots."""

    t_s: float  # the runtime's clock
    box_w: float
    smoothed_w: float | None
    budget_w: float | None
    source: PowerSource
    state: str
    levels: Mapping[str, int]
    frozen_tasks: int
    events: tuple[str, ...]  # what the controller changed this period, e.g. "level cpu0 1", "freeze cpu1 <=1"


class PowerLoop:
    """Owns sensors and actuators for one server; `start()` on the running loop, `stop()` at the end."""

    def __init__(self, runtime, metrics=None, *, sysfs_root: str | Path = "/", nvml_module: Any = None,
                 history_periods: int = 36_000) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.settings = runtime.config.power
        self.metrics = metrics
        self.sysfs_root = sysfs_root
        self.nvml_module = nvml_module
        self.sensors: list = []
        self.actuators: dict = {}
        self.unavailable: list = []
        self.controller: PowerController | None = None
        self.samples: list[PowerSample] = []
        self.history: deque[PeriodRecord] = deque(maxlen=history_periods)
        self._busy: dict[str, float] = {}
        self._last_s: float | None = None
        self._task: asyncio.Task | None = None
        self.governor: Governor | None = None

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Detect, attach the controller and admission to the core, read once, start ticking."""
        devices = self.config.devices
        self.actuators, dvfs_notes = detect_actuators(devices, self.sysfs_root, self.nvml_module)
        self.sensors, sensor_notes = detect_sensors(devices, self.sysfs_root, self.nvml_module,
                                                    busy_fraction=self._busy_of, level_of=self._level_of)
        self.unavailable = sensor_notes + dvfs_notes
        models = {}
        for device in devices:
            model, _ = power_model_of(device)
            if model is not None:
                models[device.id] = LevelPower(model.idle_w, model.active_w)
        counts = {d: (1 if a.kind == "none" else len(a.levels())) for d, a in self.actuators.items()}
        top = self.config.server.priority_levels
        self.controller = PowerController(self.settings, models, counts, top_priority=top)
        # Overload admission is on by default ([admission] enabled): lower classes are refused
        # first, by predicted latency and by their share of the in-flight bound.
        overload = self.config.admission
        admission = Admission(self.controller, top, self.settings.queue_bound,
                              check_latency=overload.enabled and self.settings.admission,
                              max_in_flight=overload.bound)
        self.runtime.attach_power(self, self.controller, admission)
        log.info("power sensing", sensors=[s.name for s in self.sensors],
                 actuators={d: a.kind for d, a in self.actuators.items()}, budget_w=self.settings.budget_w,
                 device_budget_w=dict(self.settings.device_budget_w), period_s=self.settings.period_s,
                 not_used=[note.what for note in self.unavailable])
        for note in self.unavailable:  # a line each is too many for every start: reasons at debug
            log.debug("power: not used", what=note.what, reason=note.reason)
        self._publish_budgets()
        self.tick()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for sensor in self.sensors:
            sensor.close()
        for actuator in {id(a): a for a in self.actuators.values()}.values():
            actuator.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period_s = self.settings.period_s
        next_s = loop.time() + period_s
        while True:
            await asyncio.sleep(max(0.0, next_s - loop.time()))
            next_s += period_s
            if next_s < loop.time():  # fell behind (a long GC, a busy loop): skip, never burst
                next_s = loop.time() + period_s
            try:
                self.tick()
            except Exception:  # a sensor or controller bug must not stop serving
                log.exception("power tick failed")

    # ---- one period -----------------------------------------------------------------
    def tick(self) -> None:
        """Read every sensor, step the controller (through the runtime), charge energy rates."""
        now = self.runtime.clock()
        window_s = self.settings.period_s if self._last_s is None else max(1e-3, now - self._last_s)
        self._last_s = now
        self._busy = self.metrics.busy_fractions(window_s) if self.metrics is not None else {}
        self.samples = [s for sensor in self.sensors for s in sensor.read(now)]
        ctl = self.controller
        before = (dict(ctl.levels), dict(ctl.freeze), ctl.refuse, dict(ctl.duty))
        self.runtime.on_power_sample(self.samples, self._busy)
        governed = self._govern() if self.governor is not None else ()
        self._charge(now)
        self._export()
        stats = self.runtime.core.stats()
        levels = {d: self._level_of(d) for d in self.actuators} if self.governor is not None else dict(ctl.levels)
        self.history.append(PeriodRecord(
            now, box_power_w(self.samples), ctl.smoothed_w, ctl.budget_w, ctl.source, ctl.state,
            levels, sum(stats.frozen.values()), _events(before, ctl) + governed))

    def use_governor(self, governor: Governor | None) -> None:
        """Hand the devices' levels to `governor` from the next period (a benchmark's baseline; the
        controller should then have no budget), or take them back (None: every device to level 0)."""
        self.governor = governor
        if governor is None:
            for device in self.actuators:
                if self._level_of(device) != 0:
                    self._set(device, 0, "governor off")

    def _govern(self) -> tuple[str, ...]:
        assert self.governor is not None
        current = {d: self._level_of(d) for d in self.actuators}
        events = []
        for device, level in self.governor.decide(box_power_w(self.samples), current).items():
            if device in current and level != current[device]:
                self._set(device, level, "governor")
                events.append(f"level {device} {level}")
        return tuple(events)

    def _set(self, device: str, level: int, reason: str) -> None:
        """A level from outside the controller: the knob, and the core's estimates for that level."""
        self.apply_level(SetLevel(device, level, reason))
        self.runtime.core.set_device_level(device, self._level_of(device))

    def _charge(self, now: float) -> None:
        """Each domain's power while busy, for the ledger: the estimate's busy power at the level
        in effect, or the measured reading (an average over the period, idle time included)."""
        ledger = self.runtime.energy
        for s in self.samples:
            devices = domain_devices(s.device)
            for device in devices:
                ledger.assign(device, s.device)
            rate_w = s.power_w
            if s.source is ESTIMATED and len(devices) == 1 and devices[0] in self.controller.models:
                rate_w = self.controller.models[devices[0]].busy_w(self._level_of(devices[0]))
            ledger.set_rate(s.device, rate_w, s.source, now)

    def _export(self) -> None:
        if self.metrics is None:
            return
        for s in self.samples:
            self.metrics.power.set_power(s.device, s.source, s.power_w)
        self.metrics.power.set_levels({d: self._level_of(d) for d in self.actuators})

    # ---- DVFS and budgets -----------------------------------------------------------
    def apply_level(self, action: SetLevel) -> None:
        """Carry a level from the plan to the device's knob (LevelActuator, for the runtime); a
        refusal, and a knob shared with other devices, are reported to the core as events."""
        actuator = self.actuators.get(action.device)
        if actuator is None:
            return
        result = actuator.set_level(min(action.level, len(actuator.levels()) - 1))
        if isinstance(result, Applied):
            log.debug("dvfs level applied", device=action.device, level=result.level, value=result.value,
                      reason=action.reason)
        else:
            log.warning("dvfs level not applied", device=action.device, level=action.level,
                        result=type(result).__name__, reason=result.reason)
            count = 1 if actuator.kind == "none" else len(actuator.levels())
            self.runtime.core.on_level_refused(action.device, result.level, count)
        for other, shared in self.actuators.items():  # devices on the same knob follow it
            if shared is actuator and other != action.device:
                self.runtime.core.on_level_shared(other, actuator.level())

    def set_budget(self, budget_w: float | None, device_budget_w: Mapping[str, float] | None = None) -> None:
        """New budgets at run time (the admin RPC); ValueError for unknown devices or bad watts."""
        self.runtime.core.set_power_budget(budget_w, device_budget_w)
        self._publish_budgets()
        log.info("power budget changed", budget_w=budget_w, device_budget_w=dict(device_budget_w or {}))

    def _publish_budgets(self) -> None:
        if self.metrics is not None:
            self.metrics.power.set_budgets(self.controller.budget_w, self.controller.device_budget_w)

    def _busy_of(self, device: str) -> float:
        return self._busy.get(device, 0.0)

    def _level_of(self, device: str) -> int:
        actuator = self.actuators.get(device)
        return actuator.level() if actuator is not None else 0


def _events(before: tuple, ctl: PowerController) -> tuple[str, ...]:
    """What changed in the controller's state during one period, in words for plots."""
    levels, freeze, refuse, duty = before
    events = [f"level {d} {ctl.levels[d]}" for d in ctl.levels if ctl.levels[d] != levels.get(d)]
    for d in ctl.freeze:
        old, new = freeze.get(d, 0), ctl.freeze[d]
        if new != old:
            events.append(f"{'freeze' if new > old else 'unfreeze'} {d} <={max(new, old)}")
    events += [f"duty {d} <={ctl.freeze[d]} {ctl.duty[d]:.0%}" for d in ctl.duty if ctl.duty[d] != duty.get(d, 0.0)]
    if ctl.refuse != refuse:
        events.append(f"{'refuse' if ctl.refuse > refuse else 'readmit'} <={max(ctl.refuse, refuse)}")
    return tuple(events)
