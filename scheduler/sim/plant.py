"""The power plant of a simulated box: runs take the platform table's time at each device's DVFS
level, and at the end of each control period the box's power, as an estimate sensor would report
it, goes to the core's controller or to a plain throttling governor (governor.py).

The platform tables give each model's active power per device and level; idle power is not in
them, so it is ASSUMED here (IDLE_W per device kind, BASE_W for the always-on SoC and memory).
Power per period = base + idle + the energy of the runs in the period / its length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from heddle.scheduler.core import Core
from heddle.scheduler.plan import Dispatch
from heddle.scheduler.power import LevelPower
from heddle.scheduler.power_settings import PowerSource
from heddle.scheduler.profiles import ProfileEntry
from heddle.scheduler.sim.governor import ThrottlingGovernor
from heddle.scheduler.sim.platforms import Platform
from heddle.scheduler.sim.run_times import NoisyTable
from heddle.scheduler.specs import DeviceSpec

__all__ = ["BASE_W", "IDLE_W", "PowerPlant", "Reading", "ThrottlingGovernor", "device_power_models"]

IDLE_W = {"cpu": 0.5, "gpu": 1.0, "dla": 0.2}  # ASSUMED idle power of one device of each kind
BASE_W = 3.0  # ASSUMED: SoC, memory and I/O, always on (an Orin NX module idles at a few W)


@dataclass(frozen=True, slots=True)
class Reading:
    device: str
    power_w: float
    source: PowerSource = PowerSource.ESTIMATED


def device_power_models(platform: Platform, truth: Mapping[tuple[str, str, int], ProfileEntry]
                        ) -> tuple[dict[str, LevelPower], dict[str, int]]:
    """Each device's power model for the controller: idle (assumed) and, per level, the mean
    active power of the models it runs; and its number of levels."""
    models, counts = {}, {}
    for device in platform.devices:
        clocks = device.options["speed"]["level_clock"]
        active = []
        for level in range(len(clocks)):
            watts = [e.power_w for (m, d, lv), e in truth.items() if d == device.id and lv == level]
            active.append(IDLE_W[device.kind] + (sum(watts) / len(watts) if watts else 0.0))
        models[device.id] = LevelPower(IDLE_W[device.kind], tuple(active))
        counts[device.id] = len(clocks)
    return models, counts


class PowerPlant(NoisyTable):
    """NoisyTable's run times, plus a control period every period_s until horizon_s and then
    while requests are active: its box power goes to the core's controller (feed_core) or to
    `governor`; `periods` keeps (time, box W) of every period."""

    def __init__(self, devices: Sequence[DeviceSpec], table: Mapping[tuple[str, str, int], ProfileEntry],
                 cv: Mapping[str, float], seed: int, *, period_s: float, horizon_s: float,
                 governor: ThrottlingGovernor | None = None, feed_core: bool = False):
        super().__init__(table, cv, seed)
        self.kinds = {d.id: d.kind for d in devices}
        self.period_s, self.horizon_s, self.governor, self.feed_core = period_s, horizon_s, governor, feed_core
        self.periods: list[tuple[float, float]] = []
        self._running: dict[tuple[str, str], tuple[str, float, float]] = {}  # run -> (device, since, W)
        self._period_j = dict.fromkeys(self.kinds, 0.0)
        self._busy_s = dict.fromkeys(self.kinds, 0.0)
        self._last_tick_s = 0.0

    def start(self, core: Core, run: Dispatch, now: float) -> float:
        run_s, power_w = self.draw(core, run)
        self.energy_j += power_w * run_s
        self._running[(run.request_id, run.stage)] = (run.device, now, power_w)
        return run_s

    def finish(self, run: Dispatch, now: float) -> str:
        device, since, watts = self._running.pop((run.request_id, run.stage))
        self._period_j[device] += watts * (now - since)
        self._busy_s[device] += now - since
        return ""

    def first_tick_s(self) -> float | None:
        return self.period_s

    def tick(self, core: Core, now: float) -> float | None:
        dt = now - self._last_tick_s
        for key, (device, since, watts) in list(self._running.items()):  # runs still going: their share so far
            self._period_j[device] += watts * (now - since)
            self._busy_s[device] += now - since
            self._running[key] = (device, now, watts)
        readings = [Reading(d, IDLE_W[kind] + self._period_j[d] / dt) for d, kind in self.kinds.items()]
        box_w = BASE_W + sum(r.power_w for r in readings)
        self.periods.append((now, box_w))
        if self.feed_core:
            core.on_power_sample(readings + [Reading("rail:base", BASE_W)], now,
                                 {d: min(1.0, self._busy_s[d] / dt) for d in self._busy_s})
        elif self.governor is not None:
            levels = self.governor.decide(box_w, {d: core.level(d) for d in self.governor.counts})
            for device, level in levels.items():
                core.set_device_level(device, level)
        self._period_j = dict.fromkeys(self._period_j, 0.0)
        self._busy_s = dict.fromkeys(self._busy_s, 0.0)
        self._last_tick_s = now
        return now + self.period_s if now < self.horizon_s or core.stats().active_requests else None
