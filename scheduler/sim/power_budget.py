"""Power budgets in simulation: a scenario on a platform under a box budget, either with heddle's
controller and admission (any policy) or with a plain throttling governor (DVFS only, every
device together), scored like `simulate` plus how well the budget held. The plant (power per
control period, the governor) is plant.py. Pure, like the simulator it extends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from heddle.scheduler.admission import Admission
from heddle.scheduler.core import Core
from heddle.scheduler.policies import make_policy
from heddle.scheduler.power import PowerController, PowerSettings
from heddle.scheduler.sim.plant import PowerPlant, ThrottlingGovernor, device_power_models
from heddle.scheduler.sim.platforms import Platform
from heddle.scheduler.sim.scoring import PolicyResult, score
from heddle.scheduler.sim.simulator import run_scenario, scenario_setup
from heddle.scheduler.sim.workload import Scenario, generate_arrivals

__all__ = ["BASELINES", "BudgetResult", "budget_table", "simulate_budget"]

BASELINES = ("fcfs", "priority", "edf", "least_slack", "sjf", "dream")


@dataclass(frozen=True, slots=True)
class BudgetResult:
    control: str  # "heddle" (controller + admission) or "governor"
    budget_w: float | None
    result: PolicyResult
    mean_power_w: float
    within_budget: float  # share of control periods after settling at or under budget + 5%


def simulate_budget(platform: Platform, scenario: Scenario, policy: str, budget_w: float | None,
                    control: str = "heddle", *, duration_s: float | None = None, seed: int = 1,
                    period_s: float = 0.1, settle_s: float = 2.0) -> BudgetResult:
    """Run the scenario under `policy` with a budget kept by `control` ("heddle" or "governor")."""
    duration_s = scenario.duration_s if duration_s is None else duration_s
    setup = scenario_setup(platform, scenario)
    core = Core(platform.devices, setup.models, make_policy(policy), setup.profiles)
    power_models, counts = device_power_models(platform, setup.truth)
    controlled = budget_w is not None and control == "heddle"
    if controlled:
        top = max(s.priority for s in scenario.sources)
        power = PowerController(PowerSettings(budget_w=budget_w, period_s=period_s), power_models, counts, top)
        core.attach_power(power, Admission(power, top, queue_bound=64))
    governor = ThrottlingGovernor(budget_w, counts) if budget_w is not None and not controlled else None
    plant = PowerPlant(platform.devices, setup.truth, setup.cv, seed, period_s=period_s, horizon_s=duration_s,
                       governor=governor, feed_core=controlled)
    driver, records = run_scenario(core, plant, setup, generate_arrivals(scenario.sources, duration_s, seed))
    settled = [w for t, w in plant.periods if settle_s <= t <= duration_s]
    within = sum(w <= 1.05 * budget_w for w in settled) / len(settled) if budget_w and settled else math.nan
    result = score(policy, records, duration_s, plant.energy_j, driver.migrations, driver.freezes)
    return BudgetResult(control, budget_w, result, sum(settled) / len(settled) if settled else math.nan, within)


def budget_table(platform: Platform, scenario: Scenario, budgets: Sequence[float] = (10.0, 15.0, 20.0),
                 *, seed: int = 1, duration_s: float | None = None) -> list[BudgetResult]:
    """Per budget: twill with heddle's controller, the best baseline policy (lowest violation
    rate) under the throttling governor, and the two crossed (controller + that baseline,
    governor + twill) so the controller's and the policy's shares can be told apart."""
    top = max(s.priority for s in scenario.sources)

    def run(policy: str, budget: float | None, control: str) -> BudgetResult:
        return simulate_budget(platform, scenario, policy, budget, control, seed=seed, duration_s=duration_s)

    rows = [run("twill", None, "none")]
    for budget in budgets:
        governed = [run(p, budget, "governor") for p in BASELINES]
        best = min(governed, key=lambda r: (r.result.violation_rate, r.result.per_class[top].violation_rate))
        rows += [run("twill", budget, "heddle"), best, run(best.result.policy, budget, "heddle"),
                 run("twill", budget, "governor")]
    return rows
