"""Shared builders for the power controller's tests: a core with PowerController and Admission
over CPU-like devices (CPU's power model, clocks per level), readings, and one control period."""

from __future__ import annotations

from dataclasses import dataclass

from sched_fixtures import chain, model, validated

from heddle.scheduler import Core, DeviceSpec, Request
from heddle.scheduler.admission import Admission
from heddle.scheduler.power import LevelPower, PowerController, PowerSettings
from heddle.scheduler.profiles import ConstantProfiles

__all__ = ["CLOCKS", "CPU", "SPEED", "TOP", "Reading", "busy_everywhere", "feed", "make_core", "readings", "submit"]

CPU = LevelPower(1.0, (6.0, 4.0, 2.5))
TOP = 4
CLOCKS = (1.0, 0.75, 0.5)  # each level's clock relative to level 0: lower levels run slower
SPEED = {"speed": {"level_clock": CLOCKS}}


@dataclass(frozen=True)
class Reading:
    device: str
    power_w: float
    source: str = "estimated"


def make_core(n_devices: int = 2, budget_w: float | None = 10.0, run_s: float = 0.05, clocks: bool = True,
              **settings):
    devices = [DeviceSpec(f"cpu{i}", "cpu", "onnxruntime", 1, SPEED if clocks else {}) for i in range(n_devices)]
    models = {"m": model("m")}
    power = PowerController(PowerSettings(budget_w=budget_w, **settings), {d.id: CPU for d in devices},
                            top_priority=TOP)
    core = Core(devices, models, "priority", ConstantProfiles(run_s), power=power,
                admission=Admission(power, TOP, queue_bound=settings.get("queue_bound", 64), check_latency=False))
    return core, validated(chain("p", ["m"]), models)


def readings(core, watts: dict[str, float]):
    return [Reading(d, w) for d, w in watts.items()]


def busy_everywhere(core):
    return {d: 1.0 for d in core.devices}


def feed(core, watts_per_device: float, now: float):
    """One control period in which every device drew `watts_per_device`, fully busy."""
    core.on_power_sample(readings(core, {d: watts_per_device for d in core.devices}), now, busy_everywhere(core))
    return core.schedule(now)


def submit(core, pipeline, rid: str, priority: int, now: float = 0.0, deadline_s: float | None = None):
    request = Request(rid, pipeline, priority, now, deadline_s)
    core.submit(request, now)
    return request
