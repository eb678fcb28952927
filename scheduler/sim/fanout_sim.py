"""Fan-out and conditional stages in simulation and trace replay: which synthetic tensors are lists
(a map stage's source and outputs), and a run-time model wrapper that tells the core, per
request, how long each list is and whether each `when` holds: drawn from a scenario's means
(`elements`, `run_rate` on a stage) or read from what a live trace recorded.

Pure: no wall clock and no I/O; draws are hashes of (seed, request, stage), the same under every
policy, as run times are (run_times.noise)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from heddle.scheduler.core import Core
from heddle.scheduler.dag import Pipeline, Wire
from heddle.scheduler.plan import Dispatch
from heddle.scheduler.sim.driver import RunTimeModel

if TYPE_CHECKING:  # workload.py builds its pipelines with list_roles
    from heddle.scheduler.sim.workload import PipelineDef

__all__ = ["FanoutDraws", "list_roles", "scenario_draws", "trace_draws"]

# (request id, pipeline, map stage) -> elements; (request id, pipeline, conditional stage) -> ran
Count = Callable[[str, Pipeline, str], int]
Ran = Callable[[str, Pipeline, str], bool]


def list_roles(defs: Iterable[PipelineDef], fan_in: Mapping[str, int]) -> tuple[set[str], set[tuple[str, int]]]:
    """The synthetic models whose output "y" is a list (some stage maps over it), and the (model,
    input index) pairs that take a list (a gather: a list source it does not map over). A model
    input used both ways is a ValueError naming it: its spec serves every pipeline of the scenario
    (other misuse, a list read by a plain input, is the pipeline check's to say)."""
    defs = list(defs)
    out_list = {s.model for d in defs for s in d.stages for m in d.stages if m.map_over == s.name}
    listed: dict[tuple[str, int], bool] = {}
    for d in defs:
        models = {s.name: s.model for s in d.stages}
        mapping = {s.name for s in d.stages if s.map_over}
        for s in d.stages:
            for i, source in enumerate(s.after):
                is_list = (source in mapping or models[source] in out_list) and source != s.map_over
                if listed.setdefault((s.model, i), is_list) != is_list:
                    raise ValueError(f"pipeline {d.name!r}, stage {s.name!r}: model {s.model!r} takes a list on "
                                     f"input {i} here and a tensor elsewhere; give the two uses their own models")
    return out_list, {k for k, v in listed.items() if v}


def _uniform(seed: int | str, request_id: str, stage: str) -> float:
    digest = hashlib.blake2b(f"{seed}/{request_id}/{stage}/fanout".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _poisson(mean: float, u: float) -> int:
    """The Poisson(mean) count whose CDF first reaches u (inversion: one uniform, one count)."""
    k, p = 0, math.exp(-mean)
    cdf = p
    while cdf < u and k < 10_000:
        k += 1
        p *= mean / k
        cdf += p
    return k


def scenario_draws(defs: Iterable[PipelineDef], seed: int) -> tuple[Count, Ran]:
    """Per request: a map stage's element count ~ Poisson(its `elements`), a conditional stage
    runs with probability its `run_rate`."""
    stages = {(d.name, s.name): s for d in defs for s in d.stages}

    def count(request_id: str, pipeline: Pipeline, stage: str) -> int:
        return _poisson(stages[(pipeline.name, stage)].elements, _uniform(seed, request_id, stage))

    def ran(request_id: str, pipeline: Pipeline, stage: str) -> bool:
        return _uniform(seed, request_id, f"{stage}/when") < stages[(pipeline.name, stage)].run_rate

    return count, ran


def trace_draws(runs: Iterable[tuple[str, str]]) -> tuple[Count, Ran]:
    """What a live trace recorded, from its (request id, run name) stage records: a map stage's
    element count is its element runs times its map_batch; a conditional stage ran if a run of
    it was recorded. A request with no record of the stage (it failed first): none / ran."""
    element_runs: dict[tuple[str, str], int] = {}
    seen: set[tuple[str, str]] = set()
    for request_id, name in runs:
        stage = name.partition("[")[0]
        seen.add((request_id, stage))
        if name != stage:
            element_runs[(request_id, stage)] = element_runs.get((request_id, stage), 0) + 1

    def count(request_id: str, pipeline: Pipeline, stage: str) -> int:
        return element_runs.get((request_id, stage), 0) * pipeline.stage(stage).map_batch

    def ran(request_id: str, pipeline: Pipeline, stage: str) -> bool:
        return (request_id, stage) in seen

    return count, ran


class FanoutDraws(RunTimeModel):
    """`inner`'s run times and control loop, plus the list lengths and `when` flags of each run's
    outputs from `count` and `ran`."""

    def __init__(self, inner: RunTimeModel, count: Count, ran: Ran) -> None:
        self.inner, self.count, self.ran = inner, count, ran

    def start(self, core: Core, run: Dispatch, now: float) -> float:
        return self.inner.start(core, run, now)

    def finish(self, run: Dispatch, now: float) -> str:
        return self.inner.finish(run, now)

    def first_tick_s(self) -> float | None:
        return self.inner.first_tick_s()

    def tick(self, core: Core, now: float) -> float | None:
        return self.inner.tick(core, now)

    def list_lengths(self, core: Core, run: Dispatch) -> dict[str, int]:
        pipeline = _pipeline(core, run)
        if pipeline is None:
            return {}
        return {w.tensor: self.count(run.request_id, pipeline, stage) for stage, w in _reading(pipeline.maps, run)}

    def flags(self, core: Core, run: Dispatch) -> dict[str, bool]:
        pipeline = _pipeline(core, run)
        if pipeline is None:
            return {}
        return {w.tensor: self.ran(run.request_id, pipeline, stage) for stage, w in _reading(pipeline.whens, run)}


def _pipeline(core: Core, run: Dispatch) -> Pipeline | None:
    request = core.request(run.request_id)
    return None if request is None else request.pipeline


def _reading(wires: Mapping[str, Wire], run: Dispatch) -> Sequence[tuple[str, Wire]]:
    """The (stage, wire) of map stages (or conditional ones) reading an output of this run's stage."""
    return [(stage, w) for stage, w in wires.items() if w.stage == run.stage]
