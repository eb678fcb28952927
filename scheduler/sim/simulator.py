"""Simulating a shipped platform and scenario: the scenario's arrivals through the real Core on
the driver, run times from the platform's profile table with seeded noise, and the policy's score.

Pure: no wall clock and no I/O; `heddle simulate` (server/tools/simulate_cmd.py) prints the tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from heddle.scheduler.budget import by_model, critical_path_s
from heddle.scheduler.core import Core
from heddle.scheduler.dag import Pipeline
from heddle.scheduler.policies import make_policy
from heddle.scheduler.profiles import ProfileEntry, ProfileTable
from heddle.scheduler.sim.driver import Driver, RunTimeModel
from heddle.scheduler.sim.fanout_sim import FanoutDraws, scenario_draws
from heddle.scheduler.sim.platforms import Platform
from heddle.scheduler.sim.run_times import NoisyTable
from heddle.scheduler.sim.scoring import (
    PolicyResult,
    RequestRecord,
    ended_records,
    score,
    sorted_placements,
    utilisation,
)
from heddle.scheduler.sim.workload import Arrival, Scenario, build_pipelines, generate_arrivals
from heddle.scheduler.specs import ModelSpec
from heddle.scheduler.state import Request

__all__ = ["ScenarioSetup", "SimRun", "run_scenario", "scenario_setup", "simulate", "simulate_run"]


@dataclass(frozen=True, slots=True)
class ScenarioSetup:
    """What a scenario on a platform needs before the first arrival."""

    truth: Mapping[tuple[str, str, int], ProfileEntry]  # the platform's table: what runs really take
    cv: Mapping[str, float]  # per model: run-to-run variation
    pipelines: Mapping[str, Pipeline]
    models: Mapping[str, ModelSpec]
    profiles: ProfileTable  # what the core plans with (here: the truth)
    isolated_s: Mapping[str, float]  # per pipeline: its critical path on the fastest devices


def scenario_setup(platform: Platform, scenario: Scenario) -> ScenarioSetup:
    truth = platform.table()
    pipelines, models = build_pipelines([s.pipeline for s in scenario.sources],
                                        {m: platform.devices_of(m) for m in platform.models})
    profiles = ProfileTable(table=truth, ops={m: f.op_types for m, f in platform.models.items()})

    def best_s(model: str) -> float:
        return min(truth[(model, d, 0)].latency_s for d in platform.devices_of(model))

    isolated = {name: critical_path_s(p, by_model(p, best_s)) for name, p in pipelines.items()}
    return ScenarioSetup(truth, {m: f.cv for m, f in platform.models.items()}, pipelines, models, profiles, isolated)


def simulate(platform: Platform, scenario: Scenario, policy: str, *, duration_s: float | None = None,
             seed: int = 1, policy_options: Mapping[str, Any] | None = None,
             model_options: Mapping[str, Any] | None = None) -> PolicyResult:
    """Run the scenario's arrivals through a Core under `policy` until every request ends."""
    return simulate_run(platform, scenario, policy, duration_s=duration_s, seed=seed,
                        policy_options=policy_options, model_options=model_options).result


@dataclass(frozen=True, slots=True)
class SimRun:
    """One simulation: the policy's figures, and every request as it ended (for files and checks)."""

    result: PolicyResult
    records: Sequence[RequestRecord]


def simulate_run(platform: Platform, scenario: Scenario, policy: str, *, duration_s: float | None = None,
                 seed: int = 1, policy_options: Mapping[str, Any] | None = None,
                 model_options: Mapping[str, Any] | None = None) -> SimRun:
    """`simulate`, keeping the per-request records; the result carries per-device utilisation.
    model_options go to every model (dynamic batching: max_batch, max_queue_delay_us; a batch
    then takes the platform's one-row time on the default batch axis, run_times.NoisyTable)."""
    duration_s = scenario.duration_s if duration_s is None else duration_s
    setup = scenario_setup(platform, scenario)
    models = {name: replace(spec, options={**spec.options, **model_options}) for name, spec in setup.models.items()
              } if model_options else setup.models
    core = Core(platform.devices, models, make_policy(policy, **dict(policy_options or {})), setup.profiles)
    run_times = NoisyTable(setup.truth, setup.cv, seed)
    # Map stages' element counts and `when` outcomes, drawn per request from the scenario's means.
    draws = FanoutDraws(run_times, *scenario_draws([s.pipeline for s in scenario.sources], seed))
    driver, records = run_scenario(core, draws, setup, generate_arrivals(scenario.sources, duration_s, seed),
                                   log_runs=True)
    result = score(policy, records, duration_s, run_times.energy_j, driver.migrations, driver.freezes)
    busy = utilisation(((start, end, d.device) for start, end, d in driver.runs),
                       {d.id: d.slots for d in platform.devices})
    return SimRun(replace(result, placements=sorted_placements(driver.placements), utilisation=busy), records)


def run_scenario(core: Core, run_times: RunTimeModel, setup: ScenarioSetup,
                 arrivals: Iterable[Arrival], *, log_runs: bool = False) -> tuple[Driver, list[RequestRecord]]:
    """Drive `core` through the arrivals; returns the driver and one ended record per arrival."""
    records: dict[str, RequestRecord] = {}

    def submit(arrival: Arrival, now: float) -> Request:
        isolated_s = setup.isolated_s[arrival.pipeline]
        deadline = arrival.deadline_s
        if arrival.deadline_factor is not None:
            deadline = arrival.deadline_factor * isolated_s
        absolute = None if deadline is None else now + deadline
        records[arrival.request_id] = RequestRecord(arrival.request_id, arrival.source, arrival.priority,
                                                    now, absolute, isolated_s)
        return Request(arrival.request_id, setup.pipelines[arrival.pipeline], arrival.priority, now, absolute)

    driver = Driver(core, run_times, make_request=submit, log_runs=log_runs)
    for arrival in arrivals:
        driver.arrive(arrival.time_s, arrival)
    driver.run()
    return driver, ended_records(records, driver.finished)
