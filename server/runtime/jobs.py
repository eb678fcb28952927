"""What a request is while it runs (Job), what it streams (TokenUpdate) and what it ends as
(JobResult, StageTiming per stage)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from numpy.typing import NDArray

from heddle.backends.base import numpy_dtype
from heddle.scheduler import Outcome, Request, RunState
from heddle.scheduler.plan import Migrate, Plan
from heddle.scheduler.power_settings import PowerSource
from heddle.scheduler.str_enum import StrEnum
from heddle.server.power.energy import combine_sources
from heddle.server.runtime.error_kind import ErrorKind
from heddle.server.runtime.gathering import gather_list

__all__ = ["Job", "JobResult", "StageStatus", "StageTiming", "TokenUpdate", "job_result", "record_plan_events",
           "stage_timing"]


@dataclass(frozen=True, slots=True)
class TokenUpdate:
    """Tokens an LLM stage just produced; index is the first one's position in its output."""

    request_id: str
    stage: str
    token_ids: tuple[int, ...]
    index: int
    offset_s: float  # from the request's arrival
    text: str = ""


class StageStatus(StrEnum):
    """How one stage of an ended request ended (heddle.v1's StageResult.Status by the same names)."""

    OK = "OK"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"  # never ran: an earlier stage failed or the request ended first


@dataclass(frozen=True, slots=True)
class StageTiming:
    """Where and how long one stage of a request ran; offsets are from the request's arrival."""

    stage: str
    model: str
    device: str
    status: StageStatus
    queue_s: float
    compute_s: float
    start_offset_s: float
    end_offset_s: float
    error: str = ""
    # LLM stages: tokens generated, time from the request's arrival to the first, mean between them.
    tokens: int = 0
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    # Joules charged to this run (server/power/energy.py) and whether measured or estimated.
    energy_j: float = 0.0
    energy_source: PowerSource = PowerSource.NONE


@dataclass(frozen=True, slots=True)
class JobResult:
    request_id: str
    pipeline: str
    outcome: Outcome
    error: str
    error_kind: ErrorKind | None  # why, when the outcome is FAILED (server/runtime/status.py maps both)
    outputs: dict[str, NDArray[Any]]
    stages: tuple[StageTiming, ...]
    total_s: float
    priority: int
    deadline_missed: bool
    energy_j: float = 0.0  # sum over stages
    energy_source: PowerSource = PowerSource.NONE  # over its stages: MIXED when they differ
    retry_after_s: float | None = None  # refused at admission: when a retry may succeed
    # What the scheduler did to its queued stages (freeze, unfreeze, migrate, retry), as
    # (offset from arrival in s, name, attributes); recorded only when tracing is on.
    events: tuple[tuple[float, str, Mapping[str, str]], ...] = ()


@dataclass(slots=True, eq=False)
class Job:
    """One request in flight: its tensors so far, the future its caller awaits, its callbacks."""

    request: Request
    tensors: dict[tuple[str | None, str], Any]  # arrays; lists of arrays for list outputs (fanout_io.py)
    done: asyncio.Future[JobResult]
    on_stage: Callable[[StageTiming], None] | None
    compute_s: dict[str, float] = field(default_factory=dict)
    error_kind: ErrorKind | None = None  # its first failed stage's kind
    generation: Mapping[str, object] | None = None  # GenerationConfig overrides for LLM stages
    on_token: Callable[[TokenUpdate], None] | None = None
    # stage -> its Generation (server/runtime/llm_gen.py, which imports this module: typed Any, not a cycle)
    llm: dict[str, Any] = field(default_factory=dict)
    energy: dict[str, tuple[float, PowerSource]] = field(default_factory=dict)  # stage -> (joules, source)
    retry_after_s: float | None = None
    events: list[tuple[float, str, Mapping[str, str]]] = field(default_factory=list)  # see JobResult.events
    trace_headers: Mapping[str, str] | None = None  # the caller's traceparent/tracestate, for Triton calls
    parameters: Mapping[str, Any] | None = None  # per-request parameters, for the python stages declaring them
    # A stage's timing taken as its run ended, which job_result reuses (an ended run's timing no
    # longer changes; not kept for a map stage's own entry, which sums its element runs, nor an LLM's).
    timings: dict[str, StageTiming] = field(default_factory=dict)


_STAGE_STATUS = {RunState.DONE: StageStatus.OK, RunState.FAILED: StageStatus.FAILED,
                 RunState.CANCELLED: StageStatus.CANCELLED}


def job_result(job: Job, outcome: Outcome, error: str, now: float,
               llm_fields: Callable[[Job, str], Mapping[str, Any]]) -> JobResult:
    """What an ended request answers: its outputs if OK, why if not, and every stage's timing
    (llm_fields: an LLM stage's tokens, TTFT and TPOT)."""
    req = job.request
    outputs = {}
    if outcome is Outcome.OK:  # an optional output of a skipped stage is left out (scheduler/conditions.py)
        outputs = {name: _output(job, name, w.stage, w.tensor) for name, w in req.pipeline.output_wires.items()
                   if w.stage is None or req.runs[w.stage].state is not RunState.SKIPPED}
    return JobResult(
        request_id=req.id, pipeline=req.pipeline.name, outcome=outcome, error=error,
        error_kind=(job.error_kind or ErrorKind.INTERNAL) if outcome is Outcome.FAILED else None,
        outputs=outputs, stages=tuple(job.timings.get(name) or stage_timing(job, name, llm_fields)
                                      for name in _run_names(req)),
        total_s=(req.finished_s or now) - req.arrival_s, priority=req.priority,
        deadline_missed=req.deadline_missed, energy_j=sum(j for j, _ in job.energy.values()),
        energy_source=combine_sources(src for _, src in job.energy.values()),
        retry_after_s=job.retry_after_s, events=tuple(job.events),
    )


def _output(job: Job, name: str, stage: str | None, tensor: str) -> Any:
    """A pipeline output: the stage's tensor, or a list made one as the pipeline declares (a map stage
    over an empty list ran nothing: its list is [])."""
    pipeline = job.request.pipeline
    if name not in pipeline.gathered_outputs:
        return job.tensors[(stage, tensor)]
    how, pad = pipeline.gathered_outputs[name]
    spec = next(t for t in pipeline.outputs if t.name == name)
    items = job.tensors.get((stage, tensor), [])
    return gather_list(items, how, pad, numpy_dtype(spec.datatype), spec.shape)


def _run_names(req: Request) -> list[str]:
    """Every stage in pipeline order, each map stage followed by its element runs in order."""
    names = []
    for s in req.pipeline.stages:
        names.append(s.name)
        if s.name in req.pipeline.maps:
            names += sorted((r.name for r in req.runs.values() if r.stage == s.name and r.element >= 0),
                            key=lambda n: req.runs[n].element)
    return names


def stage_timing(job: Job, stage: str, llm_fields: Callable[[Job, str], Mapping[str, Any]]) -> StageTiming:
    """Where and how long one stage (or element run, "STAGE[i]") of the request ran, so far. A map
    stage's own entry spans its element runs and adds up their compute and energy."""
    req = job.request
    run = req.runs[stage]
    started = run.started_s
    parts = ([r.name for r in req.runs.values() if r.stage == stage and r.element >= 0]
             if stage in req.pipeline.maps and run.element < 0 else [stage])
    energy_j = sum(job.energy.get(p, (0.0, PowerSource.NONE))[0] for p in parts)
    energy_source = combine_sources(job.energy[p][1] for p in parts if p in job.energy)
    timing = StageTiming(
        stage=stage, model=run.model, device=run.device or "", status=_STAGE_STATUS.get(run.state, StageStatus.SKIPPED),
        queue_s=(started - run.ready_s) if started is not None and run.ready_s is not None else 0.0,
        compute_s=sum(job.compute_s.get(p, 0.0) for p in parts),
        start_offset_s=(started - req.arrival_s) if started is not None else 0.0,
        end_offset_s=(run.finished_s - req.arrival_s) if run.finished_s is not None else 0.0,
        error=run.error, energy_j=energy_j, energy_source=energy_source,
    )
    extra = llm_fields(job, stage)
    return dataclasses.replace(timing, **extra) if extra else timing


def record_plan_events(jobs: Mapping[str, Job], plan: Plan, now: float) -> None:
    """What a plan did to each request's queued stages (freezes, migrations), for its trace."""
    for kind, actions in (("freeze", plan.frozen), ("unfreeze", plan.unfrozen), ("migrate", plan.migrated)):
        for a in actions:
            job = jobs.get(a.request_id)
            if job is not None:
                attributes = ({"heddle.stage": a.stage, "heddle.from_device": a.from_device,
                               "heddle.to_device": a.to_device} if isinstance(a, Migrate)
                              else {"heddle.stage": a.stage, "heddle.device": a.device})
                job.events.append((now - job.request.arrival_s, kind, attributes))
