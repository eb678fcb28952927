"""Fan-out in simulation (#14): a workload's map stage runs once per region (Poisson per request,
the scenario's mean), a `when` stage runs for its run_rate share of requests, both drawn the same
under every policy; the workload file's fan-out keys and their mistakes."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from server_fixtures import REPO_ROOT

from heddle.scheduler.sim.fanout_sim import scenario_draws
from heddle.scheduler.sim.simulator import scenario_setup, simulate_run
from heddle.scheduler.sim.workload import generate_arrivals
from heddle.scheduler.sim.workload_file import parse_workload
from heddle.server.tools.sim_files import load_platform, load_workload

EXAMPLES = REPO_ROOT / "docs" / "sim"


@pytest.fixture(scope="module")
def platform():
    return load_platform(str(EXAMPLES / "platform.toml"))


@pytest.mark.parametrize("policy", ["fcfs", pytest.param("twill", marks=pytest.mark.slow)])  # twill: ~3 s
def test_each_region_is_a_classifier_run_and_the_alarm_runs_as_drawn(platform, policy):
    """docs/sim/fanout.toml: the classifier runs exactly once per drawn region of every camera frame
    plus once per alarm whose `when` held; the draws average near the scenario's means (4 regions,
    a quarter of the alarms) and are the same under every policy."""
    shipped = load_workload(EXAMPLES / "fanout.toml", platform)
    # Deadlines far off: no request is shed part-way, so every drawn run happens.
    scenario = replace(shipped, sources=tuple(replace(s, deadline_s=100.0) for s in shipped.sources))
    run = simulate_run(platform, scenario, policy, seed=3)
    arrivals = generate_arrivals(scenario.sources, scenario.duration_s, 3)
    count, ran = scenario_draws([s.pipeline for s in scenario.sources], 3)
    pipelines = scenario_setup(platform, scenario).pipelines
    regions = [count(a.request_id, pipelines[a.pipeline], "cls") for a in arrivals if a.pipeline == "detect_regions"]
    alarms = [ran(a.request_id, pipelines[a.pipeline], "check") for a in arrivals if a.pipeline == "alarm"]
    assert sum(run.result.placements["classifier"].values()) == sum(regions) + sum(alarms)
    assert sum(run.result.placements["postprocess"].values()) == len(regions)  # every frame gathers, 0 regions too
    assert 3.5 < sum(regions) / len(regions) < 4.5 and 0.1 < sum(alarms) / len(alarms) < 0.4
    assert run.result.completed == run.result.requests == len(arrivals)


def test_a_when_that_never_holds_runs_nothing_and_an_empty_list_maps_to_no_run(platform):
    """run_rate 0: the conditional stage never runs; elements 0: the map stage never runs, the gather does."""
    doc = {"duration_s": 2, "pipelines": [
        {"name": "fan", "stages": [{"name": "det", "model": "detector"},
                                   {"name": "cls", "model": "classifier", "map": "det", "elements": 0},
                                   {"name": "g", "model": "postprocess", "inputs": {"x": "cls.y"}}]},
        {"name": "cond", "stages": [{"name": "det", "model": "detector"},
                                    {"name": "c", "model": "encoder", "when": "det", "run_rate": 0,
                                     "inputs": {"x": "input:x"}}]}],
        "apps": [{"name": "a", "pipeline": "fan", "rate_hz": 5}, {"name": "b", "pipeline": "cond", "rate_hz": 5}]}
    result = simulate_run(platform, parse_workload(doc, platform.models), "edf").result
    assert "classifier" not in result.placements and "encoder" not in result.placements
    assert sum(result.placements["postprocess"].values()) > 0 and result.completed == result.requests


@pytest.mark.parametrize(("stage", "message"), [
    ({"name": "c", "model": "classifier", "map": "later"}, "map = 'later' names no earlier stage"),
    ({"name": "c", "model": "classifier", "elements": 3}, "elements is for a stage with map"),
    ({"name": "c", "model": "classifier", "when": "det", "run_rate": 2}, "run_rate is a share of requests"),
    ({"name": "c", "model": "classifier", "map": "det", "mapp": 1}, "unknown key(s) ['mapp']"),
])
def test_fan_out_mistakes_in_a_workload_are_said(platform, stage, message):
    doc = {"pipelines": [{"name": "p", "stages": [{"name": "det", "model": "detector"}, stage]}],
           "apps": [{"name": "a", "pipeline": "p", "rate_hz": 1}]}
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_workload(doc, platform.models)
