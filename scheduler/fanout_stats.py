"""What the core learns online about fan-out and conditional stages, per (pipeline, stage): how
many elements a map stage gets and how often a conditional stage runs, as EWMAs. Deadline budgets
read them to estimate a stage not yet expanded or decided (scheduler/budget.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from heddle.scheduler.state import RunState, StageRun

__all__ = ["FanoutStats", "work_factor"]

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


def work_factor(group: StageRun, stats: FanoutStats, parallel: int) -> float:
    """How many of its model's runs, back to back, a stage is expected to cost: 1 for a plain
    stage; a map stage's element runs spread over `parallel` devices (its runs still to finish
    once expanded, else the expected element count); times the run rate of a `when` not yet
    decided."""
    request = group.request
    pipeline = request.pipeline
    factor = 1.0
    if group.stage in pipeline.maps:
        if group.state is RunState.MAPPED:
            runs = float(group.deps_left)
        else:
            runs = stats.expected_elements(pipeline.name, group.stage) / pipeline.stage(group.stage).map_batch
        factor = runs / parallel if runs > parallel else min(runs, 1.0)
    if group.stage in pipeline.whens and group.state is RunState.WAITING:
        factor *= stats.expected_run_rate(pipeline.name, group.stage)
    return factor
