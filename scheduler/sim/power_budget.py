"""Power budgets in simulation: a scenario on a platform under a box budget, either with heddle's
controller and admission (any policy) or with a plain throttling governor (DVFS only, every
device together), scored like `simulate` plus how well the budget held.

The platform tables give each model's active power per device and level; idle power is not in
them, so it is ASSUMED here (IDLE_W per device kind, BASE_W for the always-on SoC and memory).
Power per control period is what an estimate sensor would report: base + idle + the energy of
the runs in the period / its length. Pure, like the simulator it extends.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Sequence

from heddle.scheduler.admission import Admission
from heddle.scheduler.budget import critical_path_s
from heddle.scheduler.core import Core
from heddle.scheduler.policies import make_policy
from heddle.scheduler.power import LevelPower, PowerController, PowerSettings
from heddle.scheduler.profiles import ProfileTable
from heddle.scheduler.sim.platforms import Platform
from heddle.scheduler.sim.scoring import PolicyResult, score
from heddle.scheduler.sim.simulator import _noise, _submit
from heddle.scheduler.sim.workload import Scenario, build_pipelines, generate_arrivals

__all__ = ["BASE_W", "BASELINES", "IDLE_W", "BudgetResult", "ThrottlingGovernor", "budget_table", "simulate_budget"]

IDLE_W = {"cpu": 0.5, "gpu": 1.0, "dla": 0.2}  # ASSUMED idle power of one device of each kind
BASE_W = 3.0  # ASSUMED: SoC, memory and I/O, always on (an Orin NX module idles at a few W)
_ARRIVE, _DONE, _TICK = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Reading:
    device: str
    power_w: float
    source: str = "estimated"


@dataclass(frozen=True, slots=True)
class BudgetResult:
    control: str  # "heddle" (controller + admission) or "governor"
    budget_w: float | None
    result: PolicyResult
    mean_power_w: float
    within_budget: float  # share of control periods after settling at or under budget + 5%


class ThrottlingGovernor:
    """The baseline: smoothed box power over budget lowers every device one level, below 85% of
    it for `relax_periods` periods raises every device one level. No freezing, no admission."""

    def __init__(self, budget_w: float, counts: dict[str, int], smoothing: float = 0.5, relax_periods: int = 5):
        self.budget_w, self.counts, self.smoothing, self.relax_periods = budget_w, counts, smoothing, relax_periods
        self.smoothed_w: float | None = None
        self._calm = 0

    def step(self, box_w: float, core: Core) -> None:
        old_w = self.smoothed_w
        self.smoothed_w = box_w if old_w is None else old_w + self.smoothing * (box_w - old_w)
        move = 0
        if self.smoothed_w > 0.95 * self.budget_w:
            move, self._calm = 1, 0
        elif self.smoothed_w < 0.85 * self.budget_w:
            self._calm += 1
            if self._calm >= self.relax_periods:
                move, self._calm = -1, 0
        for device, count in self.counts.items():
            core.set_device_level(device, min(count - 1, max(0, core.level(device) + move)))


def _device_models(platform: Platform, truth) -> tuple[dict[str, LevelPower], dict[str, int]]:
    """Each device's power model for the controller: idle (assumed) and, per level, the mean
    active power of the models it runs."""
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


def simulate_budget(platform: Platform, scenario: Scenario, policy: str, budget_w: float | None,
                    control: str = "heddle", *, duration_s: float | None = None, seed: int = 1,
                    period_s: float = 0.1, settle_s: float = 2.0) -> BudgetResult:
    """Run the scenario under `policy` with a budget kept by `control` ("heddle" or "governor")."""
    duration_s = scenario.duration_s if duration_s is None else duration_s
    truth = platform.table()
    pipelines, models = build_pipelines([s.pipeline for s in scenario.sources],
                                        {m: platform.devices_of(m) for m in platform.models})
    profiles = ProfileTable(table=truth, ops={m: f.op_types for m, f in platform.models.items()})
    core = Core(platform.devices, models, make_policy(policy), profiles)
    device_models, counts = _device_models(platform, truth)
    governor = None
    if budget_w is not None and control == "heddle":
        top = max(s.priority for s in scenario.sources)
        core.power = PowerController(PowerSettings(budget_w=budget_w, period_s=period_s), device_models, counts, top)
        core.admission = Admission(core.power, top, queue_bound=64)
    elif budget_w is not None:
        governor = ThrottlingGovernor(budget_w, counts)

    def best_s(model: str) -> float:
        return min(truth[(model, d, 0)].latency_s for d in platform.devices_of(model))

    isolated = {n: critical_path_s(p, lambda s, p=p: best_s(p.stage(s).model)) for n, p in pipelines.items()}
    events = [(a.time_s, i, _ARRIVE, a) for i, a in enumerate(generate_arrivals(scenario.sources, duration_s, seed))]
    events.append((period_s, len(events), _TICK, None))
    heapq.heapify(events)
    records, counter, energy_j, migrations, freezes = {}, len(events), 0.0, 0, 0
    running: dict[tuple[str, str], tuple[str, float, float]] = {}  # key -> (device, since, W)
    period_j = {d.id: 0.0 for d in platform.devices}
    busy_s = {d.id: 0.0 for d in platform.devices}
    watts_trace: list[tuple[float, float]] = []
    last_tick = 0.0
    while events:
        now, _, kind, item = heapq.heappop(events)
        if kind == _ARRIVE:
            _submit(core, item, pipelines, isolated, records, now)
        elif kind == _DONE:
            device, since, watts = running.pop(item)
            period_j[device] += watts * (now - since)
            busy_s[device] += now - since
            core.on_stage_done(item[0], item[1], now)
        else:
            dt = now - last_tick
            for key, (device, since, watts) in list(running.items()):
                period_j[device] += watts * (now - since)
                busy_s[device] += now - since
                running[key] = (device, now, watts)
            readings = [Reading(d, IDLE_W[platform_kind] + period_j[d] / dt)
                        for d, platform_kind in ((d.id, d.kind) for d in platform.devices)]
            box_w = BASE_W + sum(r.power_w for r in readings)
            watts_trace.append((now, box_w))
            if core.power is not None:
                core.on_power_sample(readings + [Reading("rail:base", BASE_W)], now,
                                     {d: min(1.0, busy_s[d] / dt) for d in busy_s})
            elif governor is not None:
                governor.step(box_w, core)
            period_j = dict.fromkeys(period_j, 0.0)
            busy_s = dict.fromkeys(busy_s, 0.0)
            last_tick = now
            if now < duration_s or core.stats().active_requests:
                counter += 1
                heapq.heappush(events, (now + period_s, counter, _TICK, None))
        plan = core.schedule(now)
        for d in plan.dispatches:
            entry = truth[(d.model, d.device, core.level(d.device))]
            run_s = entry.latency_s * _noise(seed, d.request_id, d.stage, platform.models[d.model].cv)
            energy_j += entry.power_w * run_s
            running[(d.request_id, d.stage)] = (d.device, now, entry.power_w)
            counter += 1
            heapq.heappush(events, (now + run_s, counter, _DONE, (d.request_id, d.stage)))
        for f in plan.finished:
            record = records[f.request_id]
            assert not record.outcome, f"{f.request_id} ended twice"
            record.outcome, record.finish_s = f.outcome.value, now
            core.forget(f.request_id)
        migrations += len(plan.migrated)
        freezes += len(plan.frozen)
    assert all(r.outcome for r in records.values()), "a request never ended"
    settled = [w for t, w in watts_trace if settle_s <= t <= duration_s]
    within = sum(w <= 1.05 * budget_w for w in settled) / len(settled) if budget_w and settled else math.nan
    result = score(policy, list(records.values()), duration_s, energy_j, migrations, freezes)
    return BudgetResult(control, budget_w, result, sum(settled) / len(settled) if settled else math.nan, within)


BASELINES = ("fcfs", "priority", "edf", "least_slack", "sjf", "dream")


def budget_table(platform: Platform, scenario: Scenario, budgets: Sequence[float] = (10.0, 15.0, 20.0),
                 *, seed: int = 1, duration_s: float | None = None) -> list[BudgetResult]:
    """Per budget: twill with heddle's controller, the best baseline policy (lowest violation
    rate) under the throttling governor, and the two crossed (controller + that baseline,
    governor + twill) so the controller's and the policy's shares can be told apart."""
    top = max(s.priority for s in scenario.sources)
    run = lambda policy, budget, control: simulate_budget(  # noqa: E731
        platform, scenario, policy, budget, control, seed=seed, duration_s=duration_s)
    rows = [run("twill", None, "none")]
    for budget in budgets:
        governed = [run(p, budget, "governor") for p in BASELINES]
        best = min(governed, key=lambda r: (r.result.violation_rate, r.result.per_class[top].violation_rate))
        rows += [run("twill", budget, "heddle"), best, run(best.result.policy, budget, "heddle"),
                 run("twill", budget, "governor")]
    return rows
