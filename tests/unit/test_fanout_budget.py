"""What the core learns of fan-out and conditional stages (scheduler/fanout_stats.py), and how
deadline budgets use it: a map stage costs its expected element runs spread over its devices, a
conditional stage its run rate; both learned per pipeline as EWMAs."""

from __future__ import annotations

import pytest

from heddle.scheduler import Core, DeviceSpec, ModelSpec, PipelineSpec, Request, StageSpec, TensorSpec
from heddle.scheduler.dag import validate_pipeline
from heddle.scheduler.fanout_stats import FanoutStats
from heddle.scheduler.plan import Dispatch
from heddle.scheduler.sim.driver import Driver, TimedBy

VEC = TensorSpec("x", "FP32", (-1, 8))
LISTED = TensorSpec("y", "FP32", (-1, 8), is_list=True)
MODELS = {
    "make": ModelSpec("make", "sim", "make", (VEC,), (LISTED,)),
    "each": ModelSpec("each", "sim", "each", (VEC,), (TensorSpec("y", "FP32", (-1, 8)),)),
    "join": ModelSpec("join", "sim", "join", (TensorSpec("x", "FP32", (-1, 8), is_list=True),),
                      (TensorSpec("y", "FP32", (-1, 8)),)),
}
DEVICES = [DeviceSpec(f"cpu{i}", "cpu", "sim") for i in range(2)]


def fan_pipeline(when: str = ""):
    """make (a list) -> each (a map stage, maybe with a `when` on the list) -> join."""
    stages = (StageSpec("make", "make", {"x": "input:x"}),
              StageSpec("each", "each", {"x": "make.y"}, map="make.y", when=when),
              StageSpec("join", "join", {"x": "each.y"}))
    return validate_pipeline(PipelineSpec("fan", (VEC,), stages, {"y": "join.y"},
                                          optional_outputs=("y",) if when else ()), MODELS)


def served(pipeline, elements: int, requests: int, flag: bool = True) -> Core:
    """A core (every run 1 s) that has served `requests` requests whose lists had `elements`."""
    core = Core(DEVICES, MODELS, "edf")
    driver = Driver(core, TimedBy(lambda m, d: 1.0, lambda d: elements, lambda d: flag))
    for i in range(requests):
        driver.arrive(10.0 * i, Request(f"r{i}", pipeline, 1, 10.0 * i, 10.0 * i + 100.0))
    driver.run()
    return core


def first_budget(core: Core, pipeline, now: float = 1000.0) -> float:
    """The sub-deadline a new request's first stage gets, of a 12 s window."""
    core.submit(Request("new", pipeline, 1, now, now + 12.0), now)
    return core.request("new").runs["make"].sub_deadline_s - now


def test_the_expected_elements_and_run_rate_are_ewmas_per_pipeline_and_stage():
    """4 then 8 elements: 4 + 0.2 x 4; a stage that ran then did not: 1 - 0.2; unseen ones 1."""
    stats = FanoutStats()
    stats.observe_elements("p", "s", 4)
    stats.observe_elements("p", "s", 8)
    stats.observe_ran("p", "w", True)
    stats.observe_ran("p", "w", False)
    assert stats.expected_elements("p", "s") == pytest.approx(4.8)
    assert stats.expected_run_rate("p", "w") == pytest.approx(0.8)
    assert stats.expected_elements("q", "s") == stats.expected_run_rate("p", "s") == 1.0


def test_a_map_stage_is_budgeted_as_its_learned_element_runs_over_its_devices():
    """Before any request, the map stage counts as one run (make gets 12 x 1/3 of the window);
    after requests of 6 elements each on 2 devices, as 3 runs back to back (12 x 1/5)."""
    pipeline = fan_pipeline()
    assert first_budget(served(pipeline, 6, 0), pipeline) == pytest.approx(4.0)
    learned = served(pipeline, 6, 12)
    assert learned.fanout.expected_elements("fan", "each") == pytest.approx(6.0)
    assert first_budget(learned, pipeline) == pytest.approx(12.0 / 5)


def test_a_conditional_stage_is_budgeted_at_its_learned_run_rate():
    """A `when` that was false for every request so far: the stage costs next to nothing in the
    budget (make gets 12 x 1/2, join still counted after it)."""
    pipeline = fan_pipeline(when="make.y")
    learned = served(pipeline, 2, 30, flag=False)
    assert learned.fanout.expected_run_rate("fan", "each") < 0.01
    assert first_budget(learned, pipeline) == pytest.approx(6.0, rel=0.01)


def test_dispatches_of_element_runs_name_them():
    """The driver sees each element run by its own name, STAGE[i]."""
    core = Core(DEVICES, MODELS, "fcfs")
    driver = Driver(core, TimedBy(lambda m, d: 1.0, lambda d: 3), log_runs=True)
    driver.arrive(0.0, Request("r", fan_pipeline(), 1, 0.0))
    driver.run()
    names = [d.stage for _, _, d in driver.runs]
    assert names == ["make", "each[0]", "each[1]", "each[2]", "join"]
    assert all(isinstance(d, Dispatch) for _, _, d in driver.runs)


def test_twill_counts_a_map_stage_downstream_as_its_expected_element_runs():
    """twill's longest chain after a stage (what it protects urgent work by): after requests of 6
    elements on 2 devices, the map stage after `make` counts 3 runs, the gather 1 (4 s, not 2)."""
    from heddle.scheduler.twill import _downstream_s

    pipeline = fan_pipeline()
    core = served(pipeline, 6, 12)
    core.submit(Request("new", pipeline, 1, 1000.0, 1012.0), 1000.0)
    assert _downstream_s(core, core.request("new").runs["make"], {}) == pytest.approx(4.0)
    unlearned = Core(DEVICES, MODELS, "twill")  # no request seen: the map stage counts one run
    assert _downstream_s(unlearned, core.request("new").runs["make"], {}) == pytest.approx(2.0)
