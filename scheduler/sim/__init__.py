"""Simulation over virtual time: one driver (driver.py) runs the real Core on an event heap of
arrivals, run completions and control-period ticks; run times come from a pluggable model (a
profile table with seeded noise, runs measured live, a power plant). On it: `simulate` (shipped
platforms and scenarios), `simulate_budget` (power budgets) and `replay` (a live server's trace).
Pure like the rest of scheduler/: `heddle simulate` (server/tools/simulate_cmd.py) does the I/O."""

from heddle.scheduler.sim.driver import Driver, RunTimeModel, TimedBy
from heddle.scheduler.sim.plant import PowerPlant
from heddle.scheduler.sim.platforms import PLATFORMS, SCENARIOS, Platform
from heddle.scheduler.sim.power_budget import BudgetResult, budget_table, simulate_budget
from heddle.scheduler.sim.replay import recorded, replay
from heddle.scheduler.sim.run_times import MeasuredRuns, NoisyTable
from heddle.scheduler.sim.scoring import PolicyResult, mean_result
from heddle.scheduler.sim.simulator import simulate
from heddle.scheduler.sim.tracefile import TraceError, parse_profile, parse_trace

__all__ = [
    "PLATFORMS", "SCENARIOS", "BudgetResult", "Driver", "MeasuredRuns", "NoisyTable", "Platform", "PolicyResult",
    "PowerPlant", "RunTimeModel", "TimedBy", "TraceError", "budget_table", "mean_result", "parse_profile",
    "parse_trace", "recorded", "replay", "simulate", "simulate_budget",
]
