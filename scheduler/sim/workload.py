"""Simulated workloads: pipelines of profiled models and the request sources that feed them."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from heddle.scheduler.dag import Pipeline, validate_pipeline
from heddle.scheduler.sim.fanout_sim import list_roles
from heddle.scheduler.specs import ModelSpec, PipelineSpec, StageSpec, TensorSpec

__all__ = [
    "Arrival", "LlmSource", "Periodic", "PipelineDef", "Poisson", "Scenario", "Source", "StageDef",
    "build_pipelines", "chain", "generate_arrivals", "llm_pipeline",
]

_VEC = TensorSpec("x", "FP32", (-1, 8))


@dataclass(frozen=True, slots=True)
class StageDef:
    """A stage of a simulated pipeline. Fan-out (scheduler/sim/fanout_sim.py): map_over names the
    stage whose output list it maps over (map_batch elements a run; `elements` per request on
    average, drawn Poisson); `when` the stage whose output decides whether it runs (true for a
    `run_rate` share of requests)."""

    name: str
    model: str
    after: tuple[str, ...] = ()
    map_over: str = ""
    map_batch: int = 1
    elements: float = 1.0
    when: str = ""
    run_rate: float = 1.0


@dataclass(frozen=True, slots=True)
class PipelineDef:
    """A DAG of profiled models; tensors are synthetic (the simulator moves no data)."""

    name: str
    stages: tuple[StageDef, ...]


def chain(name: str, *models: str) -> PipelineDef:
    """model0 -> model1 -> ...; stage names are the model names (numbered if repeated)."""
    stages: list[StageDef] = []
    prev: tuple[str, ...] = ()
    for i, model in enumerate(models):
        stage = model if models.count(model) == 1 else f"{model}{i}"
        stages.append(StageDef(stage, model, prev))
        prev = (stage,)
    return PipelineDef(name, tuple(stages))


def llm_pipeline(name: str, steps: int, prefill: str = "llm_prefill", decode: str = "llm_decode") -> PipelineDef:
    """An LLM request as prefill then `steps` decode steps: each step a schedulable unit, so
    the request can be held between steps (tokens per step live in the profile table)."""
    return chain(name, prefill, *([decode] * steps))


@dataclass(frozen=True, slots=True)
class Periodic:
    """A frame-rate stream: one request every 1/fps s (plus up to jitter_s late), each due
    deadline_s after its arrival."""

    name: str
    pipeline: PipelineDef
    fps: float
    deadline_s: float
    priority: int
    jitter_s: float = 0.0
    phase_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Poisson:
    """Poisson arrivals at rate_hz. The deadline is deadline_s, or (Sparse-DySta style)
    deadline_factor x the pipeline's isolated latency."""

    name: str
    pipeline: PipelineDef
    rate_hz: float
    priority: int
    deadline_s: float | None = None
    deadline_factor: float | None = None


@dataclass(frozen=True, slots=True)
class LlmSource:
    """LLM requests (Poisson): prefill plus decode steps, due deadline_factor x isolated."""

    name: str
    rate_hz: float
    steps: int
    priority: int
    deadline_factor: float | None = None

    @property
    def pipeline(self) -> PipelineDef:
        return llm_pipeline(self.name, self.steps)


Source = Periodic | Poisson | LlmSource


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    sources: tuple[Source, ...]
    duration_s: float = 20.0


@dataclass(frozen=True, slots=True)
class Arrival:
    time_s: float
    request_id: str
    source: str
    pipeline: str
    priority: int
    deadline_s: float | None  # relative to time_s
    deadline_factor: float | None = None  # resolved by the simulator against isolated latency
    index: int = field(default=0)


def build_pipelines(defs: Sequence[PipelineDef], devices_of: Mapping[str, tuple[str, ...]]
                    ) -> tuple[dict[str, Pipeline], dict[str, ModelSpec]]:
    """Validated pipelines and synthetic model specs; `devices_of[model]`: devices with a profile."""
    fan_in: dict[str, int] = {}
    for d in defs:
        for s in d.stages:
            fan_in[s.model] = max(fan_in.get(s.model, 1), len(s.after))
    out_list, in_list = list_roles(defs, fan_in)  # which synthetic tensors are lists (map stages)
    models = {
        name: ModelSpec(name, "sim", name,
                        tuple(TensorSpec(f"x{i}", "FP32", (-1, 8), (name, i) in in_list) for i in range(k)),
                        (TensorSpec("y", "FP32", (-1, 8), name in out_list),), devices=tuple(devices_of.get(name, ())))
        for name, k in fan_in.items()
    }
    pipelines = {}
    for d in defs:
        stages = []
        for s in d.stages:
            sources = [f"{a}.y" for a in s.after] + ["input:x"] * (fan_in[s.model] - len(s.after))
            stages.append(StageSpec(s.name, s.model, {f"x{i}": src for i, src in enumerate(sources)},
                                    f"{s.map_over}.y" if s.map_over else "", s.map_batch,
                                    f"{s.when}.y" if s.when else ""))
        last = d.stages[-1].name
        optional = ("y",) if any(s.when for s in d.stages) else ()  # its last stage may be skipped
        spec = PipelineSpec(d.name, (_VEC,), tuple(stages), {"y": f"{last}.y"}, optional_outputs=optional)
        pipelines[d.name] = validate_pipeline(spec, models)
    return pipelines, models


def generate_arrivals(sources: Sequence[Source], duration_s: float, seed: int) -> list[Arrival]:
    """Every arrival in [0, duration_s), sorted by time then source order: a pure function of
    its arguments (one random stream per source, so adding a source leaves others alone)."""
    arrivals: list[tuple[float, int, Arrival]] = []
    for order, source in enumerate(sources):
        rng = random.Random(f"{seed}/{source.name}")
        for k, t in enumerate(_times(source, duration_s, rng)):
            deadline_s = getattr(source, "deadline_s", None)
            arrivals.append((t, order, Arrival(t, f"{source.name}-{k}", source.name, source.pipeline.name,
                                               source.priority, deadline_s,
                                               getattr(source, "deadline_factor", None), k)))
    arrivals.sort(key=lambda a: (a[0], a[1], a[2].index))
    return [a for _, _, a in arrivals]


def _times(source: Source, duration_s: float, rng: random.Random) -> list[float]:
    if isinstance(source, Periodic):
        period = 1.0 / source.fps
        n = math.ceil((duration_s - source.phase_s) / period)
        times = [source.phase_s + k * period + rng.uniform(0.0, source.jitter_s) for k in range(max(n, 0))]
        return [t for t in times if t < duration_s]
    times, t = [], rng.expovariate(source.rate_hz)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(source.rate_hz)
    return times
