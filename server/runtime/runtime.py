"""The asyncio runtime: the only place that knows both the scheduler core and the backends.

This module is its request path (run, the step, dispatch, stage ends, results); the control half
(loading models, device health, drain, reload, policy, power) is server/runtime/control.py.

Events (a submit, a stage's end, a step, a timer, a health change) change the core and mark it
dirty; one step runs per event-loop turn (server/runtime/stepping.py), so completions that arrive
together share a step and no handler steps the core from inside another. Stages run through StageRunners
(server/runtime/stage_runner.py), which report back through the StageEvents methods below."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from heddle.backends.base import BackendError, BackendTimeout, DeviceUnavailable, Executor
from heddle.scheduler import Core, Dispatch, Finished, Outcome, Pipeline, Request
from heddle.server.config.load import Config
from heddle.server.observe.logs import get_logger
from heddle.server.power.energy import EnergyLedger
from heddle.server.runtime.control import LevelActuator, RuntimeControl, batching_models, live_profiles, stage_runners
from heddle.server.runtime.error_kind import ErrorKind, classify
from heddle.server.runtime.fanout_io import inputs_or_error, list_shapes, output_flags, store_outputs
from heddle.server.runtime.jobs import (
    Job,
    JobResult,
    StageTiming,
    TokenUpdate,
    job_result,
    record_plan_events,
    stage_timing,
)
from heddle.server.runtime.llm_runtime import LlmDriver
from heddle.server.runtime.recovery import DeviceLoader
from heddle.server.runtime.stage_runner import ExecutorRunner, StageFuture, Tensors
from heddle.server.runtime.stage_timeouts import OverrunWatch
from heddle.server.runtime.stepping import Stepper
from heddle.server.runtime.trace import open_trace
from heddle.server.runtime.versions import VersionRouter

if TYPE_CHECKING:
    from heddle.server.runtime.metrics import Metrics

__all__ = ["JobResult", "Runtime", "StageTiming"]

log = get_logger("heddle.runtime")


class Runtime(RuntimeControl):
    """Submits requests to the core, carries out its plans on executor pools, resolves futures
    (its control half, loading, health, drain, reload, policy and power: server/runtime/control.py)."""

    def __init__(self, config: Config, executors: Mapping[str, Executor], metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic, record_events: bool = False) -> None:
        """record_events: keep what the scheduler does to each request's queued stages (freezes,
        migrations, retries) for its trace (server/observe/tracing.py); off, the step skips it."""
        self.config = config
        self.record_events = record_events
        # Every model a request in flight may name: the config's, plus any a reload removed while
        # requests that arrived before it still run (server/runtime/reload.py). One dict, shared
        # with the stage runners, so a reload's models reach them all at once.
        self.models = dict(config.models)
        self.executors = dict(executors)
        self.metrics = metrics
        self.clock = clock
        self.core = Core(config.devices, config.models, config.server.policy, profiles=live_profiles(config))
        self._jobs: dict[str, Job] = {}
        # Ids for requests sent without one: 32 hex digits like a uuid4's, a random half per
        # server and a count (uuid4 read os.urandom for every request, which showed in profiles).
        self._id_prefix, self._id_count = uuid.uuid4().hex[:16], itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self.loader = DeviceLoader(self.executors, lambda device: self.set_device_health(device, True), metrics)
        self._stepper = Stepper(self._step, self.core.next_deadline_s, clock, lambda: self._loop)
        self.overruns = OverrunWatch(self._end_overrun, metrics)  # thread stages past their timeout
        self.llm = LlmDriver(self, config.models, self.executors, metrics)
        self._pool = ExecutorRunner(self, self.executors, self.models, self.overruns)
        self._runners = stage_runners(self, self.models, self.executors, self.llm, self._pool)
        # Models that batch requests (dynamic batching): the core needs the shapes their stages
        # read, to batch only equal ones; nobody pays for shapes when no model batches.
        self._batching = batching_models(self.models)
        self._distinct_runners = list({id(r): r for r in self._runners.values()}.values())
        self.versions = VersionRouter(config, metrics)  # canary splits among model versions
        self.trace = open_trace(config, clock)  # arrivals for `heddle simulate --trace`, or None
        # Power (server/power/loop.py attaches it): energy per stage, and where a DVFS level
        # from the plan goes to be applied to a device's actuator.
        self.energy = EnergyLedger()
        self._levels: LevelActuator | None = None

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    async def run(self, pipeline: Pipeline, inputs: Tensors, *, priority: int,
                  deadline_s: float | None = None, request_id: str = "",
                  on_stage: Callable[[StageTiming], None] | None = None,
                  generation: Mapping[str, object] | None = None,
                  on_token: Callable[[TokenUpdate], None] | None = None,
                  trace_headers: Mapping[str, str] | None = None,
                  parameters: Mapping[str, object] | None = None) -> JobResult:
        """Run one request to its end. deadline_s is relative to now. Cancelling the awaiting
        task cancels the request: its queued stages are dropped. generation overrides the LLM
        stages' GenerationConfig; on_token gets their tokens as they come."""
        self._loop = asyncio.get_running_loop()
        now = self.clock()
        rid = request_id or f"{self._id_prefix}{next(self._id_count):016x}"
        if rid in self._jobs:
            raise ValueError(f"request id {rid!r} is already in flight")
        request = Request(rid, pipeline, priority, now, None if deadline_s is None else now + deadline_s)
        if self._batching:
            request.shapes = {(None, k): v.shape for k, v in inputs.items()}
        job = Job(request, {(None, k): v for k, v in inputs.items()}, self._loop.create_future(), on_stage,
                   generation=generation, on_token=on_token, trace_headers=trace_headers, parameters=parameters)
        self.core.submit(request, now)  # first: it refuses an id an earlier request's stage still holds
        self._jobs[rid] = job
        if self.trace is not None:
            self.trace.arrival(request, inputs, parameters)
        if self._draining:  # ended through the core like any request, so metrics count it
            self.core.cancel(rid, now, Outcome.UNAVAILABLE, "server is shutting down")
        if len(self._jobs) == 1:  # alone: every device idle, its first stages start at once
            self._stepper.step_alone()
        else:
            self._stepper.mark_dirty()
        try:
            # Not shielded: a cancelled caller cancels job.done too, and _resolve, which cleans
            # up after every request whatever became of its future, then has no one to answer.
            return await job.done
        except asyncio.CancelledError:
            if self.core.cancel(rid, self.clock()):
                self._stepper.mark_dirty()
            raise

    # ---- carrying out plans -------------------------------------------------------------
    def _step(self) -> None:
        plan = self.core.schedule(self.clock())
        for level in plan.levels:
            if self._levels is not None:
                self._levels.apply_level(level)
        for d in plan.dispatches:
            self._dispatch(d)
        for r in plan.rejected:  # before _resolve: the refusal's hint goes into its result
            job = self._jobs.get(r.request_id)
            if job is not None:
                job.retry_after_s = r.retry_after_s
            if self.metrics is not None:
                self.metrics.power.observe_rejected(r.reason, r.priority)
        if self.metrics is not None and (plan.frozen or plan.migrated):
            self.metrics.power.observe_actions(len(plan.frozen), len(plan.migrated))
        if self.record_events:
            record_plan_events(self._jobs, plan, self.clock())
        for f in plan.finished:
            self._resolve(f)

    def _dispatch(self, d: Dispatch) -> None:
        if d.batch:
            self._dispatch_batch(d)
            return
        job = self._jobs[d.request_id]
        inputs, failed = inputs_or_error(job, job.request.runs[d.stage])
        if self.metrics is not None:
            self.metrics.device_started(d.device)
            if d.model in self._batching:
                self.metrics.observe_batch(d.model, d.device, d.rows)
        if self.trace is not None:
            self.trace.dispatched(d)
        self.energy.started(d.device, (d.request_id, d.stage), self.clock())
        if failed is not None:  # ends as a failed run, next turn, like any run's end
            self.loop.call_soon(self.stage_done, d, self._failed(failed))
            return
        self._runners[d.model].dispatch(d, job, inputs)

    def _failed(self, exc: BaseException) -> StageFuture:
        fut: asyncio.Future[tuple[Tensors, float]] = self.loop.create_future()
        fut.set_exception(exc)
        return fut

    def _dispatch_batch(self, d: Dispatch) -> None:
        """A batch (scheduler/batching.py) is one executor call holding one slot; each member
        is its own stage run for energy, traces and its request's timings."""
        now = self.clock()
        jobs, inputs, failed = [], [], None
        for i, m in enumerate(d.members):
            job = self._jobs[m.request_id]
            jobs.append(job)
            one, failed = inputs_or_error(job, job.request.runs[m.stage]) if failed is None else ({}, failed)
            inputs.append(one)
            if self.trace is not None:  # its pass's rows, and whether its time is the pass's own
                self.trace.dispatched(m, d.rows, i == 0)
            self.energy.started(d.device, (m.request_id, m.stage), now)
        if self.metrics is not None:
            self.metrics.device_started(d.device)
            self.metrics.observe_batch(d.model, d.device, d.rows)
        if failed is not None:  # a member's elements could not be joined: the pass cannot run
            self.loop.call_soon(self.batch_done, d, [self._failed(failed) for _ in d.members])
            return
        self._pool.dispatch_batch(d, jobs, inputs)

    def _end_overrun(self, request_id: str, error: str) -> None:
        if self.core.cancel(request_id, self.clock(), Outcome.DEADLINE_EXCEEDED, error):
            self._stepper.mark_dirty()

    # ---- StageEvents: what the runners report ------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the runtime has no loop before load_models or run"
        return self._loop

    def job(self, request_id: str) -> Job | None:
        return self._jobs.get(request_id)

    def batch_done(self, d: Dispatch, futures: Sequence[StageFuture]) -> None:
        """A batch's pass is over: each member ends on its own, as a stage run of its own; the
        device's busy time is the pass's, counted once."""
        for i, (member, fut) in enumerate(zip(d.members, futures, strict=True)):
            self.stage_done(member, fut, pass_owner=i == 0)

    def stage_done(self, d: Dispatch, fut: StageFuture, pass_owner: bool = True) -> None:
        """A bug while handling a completion must end its request INTERNAL, not leave it hanging
        until its deadline (or forever): log it with the request id and keep serving.
        pass_owner: False for a batch member other than the first (the device is counted once)."""
        try:
            self._on_done(d, fut, pass_owner)
        except Exception:
            log.exception("internal error handling a stage completion", request_id=d.request_id,
                          stage=d.stage, device=d.device)
            if self.core.cancel(d.request_id, self.clock(), Outcome.FAILED, "internal error in heddle"):
                self._stepper.mark_dirty()

    def _on_done(self, d: Dispatch, fut: StageFuture, pass_owner: bool = True) -> None:
        now = self.clock()
        job = self._jobs.get(d.request_id)
        energy_j, source = self.energy.finished((d.request_id, d.stage), now)
        if job is not None and source:  # a retried stage adds up the energy of every attempt
            job.energy[d.stage] = (job.energy.get(d.stage, (0.0, ""))[0] + energy_j, source)
        error, compute_s = "", 0.0
        outputs: Tensors = {}
        exc = fut.exception()
        if exc is None:
            outputs, compute_s = fut.result()
            if job is not None:
                try:
                    store_outputs(job, job.request.runs[d.stage], outputs)
                except BackendError as failed:
                    exc, outputs = failed, {}
        if exc is not None:
            kind, error = classify(exc)
            if isinstance(exc, BackendTimeout) and self.metrics is not None:
                self.metrics.observe_stage_timeout(d.model, d.device)
            if isinstance(exc, DeviceUnavailable):  # device health's business: control.py
                self.device_lost_during(d, job, error, now, pass_owner)
                return
            if job is not None and job.error_kind is None:
                job.error_kind = kind
            if kind is ErrorKind.INTERNAL:
                log.error("stage failed", request_id=d.request_id, stage=d.stage, device=d.device,
                          error=error)
        if self.metrics is not None and pass_owner:
            self.metrics.device_finished(d.device, compute_s)
        if self.trace is not None:  # every run, also of requests that ended while it ran
            self.trace.stage_done(d, compute_s, error)
        shapes = ({name: arr.shape for name, arr in outputs.items() if not isinstance(arr, list)}
                  if self._batching and outputs else None)
        flags = output_flags(job, job.request.runs[d.stage], outputs) if job is not None and outputs else None
        self.core.on_stage_done(d.request_id, d.stage, now, error, shapes, list_shapes(outputs), flags)
        if job is not None:
            job.compute_s[d.stage] = compute_s
            timing = stage_timing(job, d.stage, self.llm.stage_fields)
            if d.stage not in job.request.pipeline.maps and d.stage not in job.llm:  # final: job_result reuses it
                job.timings[d.stage] = timing
            if self.metrics is not None:  # by pipeline stage: a map stage's element runs are one series
                self.metrics.observe_stage(job.request.pipeline.name, job.request.runs[d.stage].stage, d.model,
                                           d.device, timing.status, timing.queue_s, compute_s)
            if job.on_stage is not None:
                job.on_stage(timing)
        self._stepper.mark_dirty()

    def _resolve(self, f: Finished) -> None:
        job = self._jobs.pop(f.request_id, None)
        if job is None:
            return
        for runner in self._distinct_runners:
            runner.release(job)
        req = job.request
        result = job_result(job, f.outcome, f.error, self.clock(), self.llm.stage_fields)
        self.core.forget(req.id)
        if self.metrics is not None:
            self.metrics.power.observe_energy(req.pipeline.name, req.priority, result.energy_j)
            self.metrics.observe_result(result)
            if result.deadline_missed or f.outcome is Outcome.DEADLINE_EXCEEDED:
                self.metrics.observe_deadline_missed(req.pipeline.name)
        if self.trace is not None:
            self.trace.end(result)
        if not job.done.done():  # cancelled with its caller
            job.done.set_result(result)
