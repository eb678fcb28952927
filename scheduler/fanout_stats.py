"""What the core learns online about fan-out and conditional stages, per (pipeline, stage): how
many elements a map stage gets and how often a conditional stage runs, as EWMAs. Deadline budgets
read them to estimate a stage not yet expanded or decided (scheduler/budget.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from heddle.scheduler.dag import Pipeline
from heddle.scheduler.state import RunState, StageRun

__all__ = ["FanoutStats", "expected_factor", "work_factor"]

ALPHA = 0.2  # weight of the newest observation: about the last ten requests count


@dataclass(slots=True)
class FanoutStats:
    """EWMAs by (pipeline name, stage): elements per map stage (1 until one is seen), and the
    share of requests in which a conditional stage ran (1 until one is decided)."""

    alpha: float = ALPHA
    elements: dict[tuple[str, str], float] = field(default_factory=dict)
    run_rate: dict[tuple[str, str], float] = field(default_factory=dict)

    def observe_elements(self, pipeline: str, stage: str, count: int) -> None:
        self.elements[(pipeline, stage)] = _ewma(self.elements.get((pipeline, stage)), float(count), self.alpha)

    def observe_ran(self, pipeline: str, stage: str, ran: bool) -> None:
        self.run_rate[(pipeline, stage)] = _ewma(self.run_rate.get((pipeline, stage)), float(ran), self.alpha)

    def expected_elements(self, pipeline: str, stage: str) -> float:
        return self.elements.get((pipeline, stage), 1.0)

    def expected_run_rate(self, pipeline: str, stage: str) -> float:
        return self.run_rate.get((pipeline, stage), 1.0)


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else old + alpha * (new - old)


def _spread(runs: float, parallel: int) -> float:
    """Passes of one run's length that `runs` runs take over `parallel` devices."""
    return runs / parallel if runs > parallel else min(runs, 1.0)


def expected_factor(pipeline: Pipeline, stage: str, stats: FanoutStats, parallel: int) -> float:
    """How many of its model's runs, back to back, a stage not started yet is expected to cost: 1
    for a plain stage; a map stage's expected element runs spread over `parallel` devices; times
    the run rate of a conditional stage."""
    factor = 1.0
    if stage in pipeline.maps:
        factor = _spread(stats.expected_elements(pipeline.name, stage) / pipeline.stage(stage).map_batch, parallel)
    if stage in pipeline.whens:
        factor *= stats.expected_run_rate(pipeline.name, stage)
    return factor


def work_factor(group: StageRun, stats: FanoutStats, parallel: int) -> float:
    """expected_factor for a stage of a request: once a map stage has expanded, its element runs
    still to finish (its `when`, if any, held)."""
    if group.state is RunState.MAPPED:
        return _spread(float(group.deps_left), parallel)
    return expected_factor(group.request.pipeline, group.stage, stats, parallel)
