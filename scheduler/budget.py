"""Deadline budgets: a request's end-to-end deadline split over its remaining critical path."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heddle.scheduler.dag import Pipeline
from heddle.scheduler.fanout_stats import work_factor
from heddle.scheduler.state import RunState, StageRun, device_of, started_s_of

if TYPE_CHECKING:
    from heddle.scheduler.view import CoreReads

__all__ = [
    "PathTimes", "StageBudget", "budget_run", "by_model", "critical_path_s", "path_times", "slack_s", "split_deadline",
]


@dataclass(frozen=True, slots=True)
class PathTimes:
    """Longest estimated paths through the stages still to run.

    up_s[s]: the longest chain of remaining stages ending with s, s included.
    down_s[s]: the longest chain of remaining stages after s, s excluded.
    Finished stages count zero, so these shrink as the request progresses.
    """

    up_s: Mapping[str, float]
    down_s: Mapping[str, float]
    critical_s: float


@dataclass(frozen=True, slots=True)
class StageBudget:
    """What one stage may spend: finish by sub_deadline_s to keep the request on schedule;
    latest_finish_s is the last moment it may finish with the rest still fitting."""

    sub_deadline_s: float
    latest_finish_s: float


def path_times(pipeline: Pipeline, remaining: Collection[str],
               estimate: Callable[[str], float]) -> PathTimes:
    """Longest remaining paths; `estimate(stage)` is called once per remaining stage."""
    est = {s.name: (estimate(s.name) if s.name in remaining else 0.0) for s in pipeline.stages}
    up: dict[str, float] = {}
    for stage in pipeline.stages:  # topological order: every upstream stage is already done
        up[stage.name] = est[stage.name] + max(
            (up[d] for d in pipeline.depends_on[stage.name]), default=0.0)
    down: dict[str, float] = {}
    for stage in reversed(pipeline.stages):
        down[stage.name] = max(
            (est[n] + down[n] for n in pipeline.dependents[stage.name]), default=0.0)
    return PathTimes(up, down, max(up.values(), default=0.0))


def by_model(pipeline: Pipeline, model_s: Callable[[str], float]) -> Callable[[str], float]:
    """A stage's time as its model's figure: the estimate critical_path_s takes, from a per-model one."""
    return lambda stage: model_s(pipeline.stage(stage).model)


def critical_path_s(pipeline: Pipeline, estimate: Callable[[str], float]) -> float:
    """The whole pipeline's critical path: its latency on an idle machine."""
    return path_times(pipeline, [s.name for s in pipeline.stages], estimate).critical_s


def split_deadline(pipeline: Pipeline, remaining: Collection[str],
                   estimate: Callable[[str], float], start_s: float,
                   deadline_s: float | None) -> dict[str, StageBudget]:
    """Budget every remaining stage in proportion to its estimated latency.

    The window (deadline_s - start_s) is split along the longest remaining path through
    each stage s: s must finish by start + window * up(s) / (up(s) + down(s)). On the
    critical path the shares add up to the whole window; off it a stage gets the same
    fraction of the window as its path position, which leaves it slack. A request with
    no deadline gets infinite budgets; one already late gets its deadline everywhere.
    """
    if deadline_s is None:
        return {s: StageBudget(math.inf, math.inf) for s in remaining}
    times = path_times(pipeline, remaining, estimate)
    window = max(0.0, deadline_s - start_s)
    budgets = {}
    for stage in remaining:
        up, down = times.up_s[stage], times.down_s[stage]
        share = up / (up + down) if up + down > 0 else 1.0
        budgets[stage] = StageBudget(start_s + window * share, deadline_s - down)
    return budgets


def budget_run(run: StageRun, now: float, view: CoreReads) -> None:
    """Set a run's sub-deadline and latest finish from its request's deadline and the stages
    still to run (a running one counts what is left of its estimate); the last stage gets all."""
    request = run.request
    if request.deadline_s is None:
        return

    def remaining_s(stage: str) -> float:
        other = request.runs[stage]
        if other.state is RunState.RUNNING:
            return max(0.0, started_s_of(other) + view.estimate_s(other.model, device_of(other)) - now)
        if stage in fanned:  # a map stage's element runs, a `when` not decided yet (fanout_stats.py)
            parallel = max(1, len(view.eligible_devices(other.model)))
            return view.best_estimate_s(other.model) * work_factor(other, view.fanout, parallel)
        return view.best_estimate_s(other.model)

    pipeline = request.pipeline
    fanned = (pipeline.maps.keys() | pipeline.whens.keys()) if pipeline.maps or pipeline.whens else ()

    # By stage: a map stage's element runs and its own run are one stage of the path.
    left = list(dict.fromkeys(r.stage for r in request.runs.values() if r.state < RunState.DONE))
    if left == [run.stage]:
        run.sub_deadline_s = run.latest_finish_s = request.deadline_s
        return
    budget = split_deadline(request.pipeline, left, remaining_s, now, request.deadline_s)[run.stage]
    run.sub_deadline_s, run.latest_finish_s = budget.sub_deadline_s, budget.latest_finish_s


def slack_s(sub_deadline_s: float, now: float, run_s: float) -> float:
    """Time to spare if the stage started now and took run_s: negative means it will be late."""
    return sub_deadline_s - now - run_s
