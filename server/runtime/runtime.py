"""The asyncio runtime: the only place that knows both the scheduler core and the backends.

Events (a submit, a stage's end, a step, a timer, a health change) change the core and mark it
dirty; one step runs per event-loop turn (server/runtime/stepping.py), so completions that arrive
together share a step and no handler steps the core from inside another. Stages run through StageRunners
(server/runtime/stage_runner.py), which report back through the StageEvents methods below."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from heddle.backends.base import BackendError, BackendTimeout, DeviceUnavailable, Executor
from heddle.backends.graph_summary import summarize_file
from heddle.scheduler import Core, Dispatch, Finished, Outcome, Pipeline, Request
from heddle.scheduler.admission import Admission
from heddle.scheduler.plan import Migrate, Plan, SetLevel
from heddle.scheduler.power import PowerController
from heddle.scheduler.profiles import ProfileTable
from heddle.server.config.load import Config
from heddle.server.observe.logs import get_logger
from heddle.server.power.energy import EnergyLedger
from heddle.server.runtime.error_kind import ErrorKind, classify
from heddle.server.runtime.fanout_io import list_shapes, output_flags, run_inputs, store_outputs
from heddle.server.runtime.jobs import Job, JobResult, StageTiming, TokenUpdate, job_result, stage_timing
from heddle.server.runtime.llm_runtime import LlmDriver
from heddle.server.runtime.llm_triton import TritonLlmStreams
from heddle.server.runtime.recovery import DeviceLoader
from heddle.server.runtime.stage_runner import ExecutorRunner, StageFuture, StageRunner, Tensors
from heddle.server.runtime.stage_timeouts import OverrunWatch
from heddle.server.runtime.stepping import Stepper
from heddle.server.runtime.trace import open_trace
from heddle.server.runtime.versions import VersionRouter

if TYPE_CHECKING:
    from heddle.scheduler.power_settings import PowerReading
    from heddle.scheduler.profiles import GraphSummary
    from heddle.scheduler.specs import ModelSpec
    from heddle.server.runtime.metrics import Metrics
    from heddle.server.runtime.reload import ConfigDiff

__all__ = ["JobResult", "LevelActuator", "Runtime", "StageTiming"]

log = get_logger("heddle.runtime")


class LevelActuator(Protocol):
    """Where the runtime sends the plan's DVFS levels (the power loop's actuators)."""

    def apply_level(self, action: SetLevel) -> None: ...


class Runtime:
    """Submits requests to the core, carries out its plans on executor pools, resolves futures."""

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
        self.core = Core(config.devices, config.models, config.server.policy, profiles=_profiles(config))
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
        self._runners = _runners(self, self.models, self.executors, self.llm, self._pool)
        # Models that batch requests (dynamic batching): the core needs the shapes their stages
        # read, to batch only equal ones; nobody pays for shapes when no model batches.
        self._batching = _batching(self.models)
        self._distinct_runners = list({id(r): r for r in self._runners.values()}.values())
        self.versions = VersionRouter(config, metrics)  # canary splits among model versions
        self.trace = open_trace(config, clock)  # arrivals for `heddle simulate --trace`, or None
        # Power (server/power/loop.py attaches it): energy per stage, and where a DVFS level
        # from the plan goes to be applied to a device's actuator.
        self.energy = EnergyLedger()
        self._levels: LevelActuator | None = None

    async def load_models(self) -> None:
        """Load (and warm) every model on every device allowed to run it, off the event loop.

        A remote device that cannot be reached (a Triton server that is down) does not stop the
        gateway: it starts unhealthy and its models load when it comes back (server/runtime/recovery.py)."""
        self._loop = asyncio.get_running_loop()
        if self.metrics is not None:
            self.metrics.refresh_on_scrape(self._loop, self._publish_gauges)
        pending: dict[str, list[ModelSpec]] = {}
        for model in self.config.models.values():
            for device in self.core.eligible_devices(model.name):
                pending.setdefault(device, []).append(self.llm.executor_spec(model))
        loaded = await asyncio.gather(*(self.loader.load(dev, models) for dev, models in pending.items()))
        for device, ok in zip(pending, loaded, strict=True):
            if not ok:
                self.set_device_health(device, False)

    def set_device_health(self, device: str, healthy: bool) -> None:
        """Take a device out of rotation (its queue moves to peers) or bring it back."""
        if device in self.loader.pending:
            if healthy:  # models must load before the device takes work; on_loaded brings it back
                self.loader.start(device)
                return
            self.loader.stop(device)
        if self.core.is_healthy(device) == healthy:
            return
        log.warning("device health changed", device=device, healthy=healthy)
        self.core.set_device_health(device, healthy, self.clock())
        self._stepper.mark_dirty()

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

    async def drain(self, grace_s: float) -> int:
        """Wait up to grace_s for in-flight requests; then end the rest UNAVAILABLE. Returns how many.

        From the call on, new requests end UNAVAILABLE at once."""
        self._draining = True
        self.loader.close()
        pending = [j.done for j in self._jobs.values()]
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        left = [rid for rid, j in self._jobs.items() if not j.done.done()]
        now = self.clock()
        for rid in left:
            self.core.cancel(rid, now, Outcome.UNAVAILABLE, "server is shutting down")
        if left:
            self._stepper.step_now()  # now, not next turn: the trace closes below
        if self.trace is not None:
            self.trace.close()
        return len(left)

    def op_types(self, model: ModelSpec) -> frozenset[str]:
        """The op types of a model's graph (its ONNX file's, for a model not loaded yet)."""
        if model.name in self.models and self.models[model.name] == model:
            return self.core.profiles.op_types(model.name)
        summary = _summary(model)
        return summary.op_types if summary is not None else frozenset()

    def models_in_flight(self) -> set[str]:
        """The models the stages of the requests now in flight run."""
        return {stage.model for job in self._jobs.values() for stage in job.request.pipeline.stages}

    def swap_config(self, config: Config, diff: ConfigDiff) -> None:
        """Serve `config` from now on (a reload whose new models are loaded): new requests see its
        pipelines; requests in flight finish on theirs. Non-LLM model changes only (reload.py)."""
        specs = {name: config.models[name] for name in diff.to_load}
        self.models.update(specs)
        for name, spec in specs.items():
            self._runners.setdefault(name, self._runners[""])
            summary = _summary(spec)
            if summary is not None and isinstance(self.core.profiles, ProfileTable):
                self.core.profiles.set_summary(name, summary)  # measured runs are kept
        self.core.update_models(specs)
        self.versions.set_config(config)
        self._batching = _batching(self.models)
        self.config = config
        self._stepper.mark_dirty()

    def set_policy(self, name: str) -> None:
        self.core.set_policy(name)
        if self.trace is not None:
            self.trace.policy(self.core.policy.name)
        self._stepper.mark_dirty()

    def attach_power(self, levels: LevelActuator, controller: PowerController,
                     admission: Admission | None = None) -> None:
        """Power control from start (server/power/loop.py): the core gets the controller and
        admission, and the plan's DVFS levels go to `levels`."""
        self._levels = levels
        self.core.attach_power(controller, admission)

    # ---- carrying out plans -------------------------------------------------------------
    def on_power_sample(self, samples: Iterable[PowerReading], busy: Mapping[str, float] | None = None) -> None:
        """A control period's power readings (server/power/loop.py): the controller decides,
        and this step carries out its levels and holds."""
        self.core.on_power_sample(samples, self.clock(), busy)
        self._stepper.step_now()  # the period's levels reach the actuators before the loop charges energy

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
            self._record_events(plan)
        for f in plan.finished:
            self._resolve(f)

    def _record_events(self, plan: Plan) -> None:
        now = self.clock()
        for kind, actions in (("freeze", plan.frozen), ("unfreeze", plan.unfrozen), ("migrate", plan.migrated)):
            for a in actions:
                job = self._jobs.get(a.request_id)
                if job is not None:
                    attributes = ({"heddle.stage": a.stage, "heddle.from_device": a.from_device,
                                   "heddle.to_device": a.to_device} if isinstance(a, Migrate)
                                  else {"heddle.stage": a.stage, "heddle.device": a.device})
                    job.events.append((now - job.request.arrival_s, kind, attributes))

    def _publish_gauges(self) -> None:
        """The state gauges, set when a scrape asks (on the loop's thread), not on every step."""
        assert self.metrics is not None
        stats = self.core.stats()
        for device, n in stats.queued.items():
            self.metrics.set_queue_length(device, n)
        self.metrics.set_in_flight(len(self._jobs))
        self.metrics.power.set_frozen_tasks(sum(stats.frozen.values()))

    def _dispatch(self, d: Dispatch) -> None:
        if d.batch:
            self._dispatch_batch(d)
            return
        job = self._jobs[d.request_id]
        inputs, failed = _inputs(job, d)
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
            one, failed = _inputs(job, m) if failed is None else ({}, failed)
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

    def tokens(self, update: TokenUpdate) -> None:
        job = self._jobs.get(update.request_id)
        if job is not None and job.on_token is not None:
            job.on_token(update)

    def device_lost(self, device: str) -> None:
        self.set_device_health(device, False)

    def step_done(self, d: Dispatch, compute_s: float) -> bool:
        """An LLM step is over and its stage re-queues for the next; False if its request ended."""
        now = self.clock()
        # Between steps the stage holds no device: stop charging it energy until the next one.
        self.energy.stopped((d.request_id, d.stage), now)
        if self.metrics is not None:
            self.metrics.device_finished(d.device, compute_s)
        going_on = self.core.on_stage_step(d.request_id, d.stage, now)
        self._stepper.mark_dirty()
        return going_on

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
            if isinstance(exc, DeviceUnavailable):
                self.set_device_health(d.device, False)
                if self.metrics is not None and pass_owner:
                    self.metrics.device_finished(d.device, 0.0)
                # One retry elsewhere if the deadline allows; else the request ends UNAVAILABLE.
                if self.core.retry_stage(d.request_id, d.stage, now, error):
                    log.warning("stage retried elsewhere", request_id=d.request_id, stage=d.stage,
                                device=d.device, error=error)
                    if self.record_events and job is not None:
                        job.events.append((now - job.request.arrival_s, "retry",
                                           {"heddle.stage": d.stage, "heddle.device": d.device, "heddle.error": error}))
                    self._stepper.mark_dirty()
                    return
                if job is not None:
                    job.error_kind = ErrorKind.DEVICE_LOST
                self._stepper.mark_dirty()
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


def _inputs(job: Job, d: Dispatch) -> tuple[dict[str, Any], BackendError | None]:
    """A dispatched run's inputs, or why they cannot be made (a map_batch run's elements that
    cannot be joined: server/runtime/fanout_io.py)."""
    try:
        return run_inputs(job, job.request.runs[d.stage]), None
    except BackendError as exc:
        return {}, exc


def _summary(model: ModelSpec) -> GraphSummary | None:
    if model.backend != "onnxruntime":
        return None
    try:
        return summarize_file(model.artifact)
    except Exception as exc:  # an estimate is an aid; never a reason not to serve
        log.warning("no graph summary for model", model=model.name, error=str(exc))
        return None


def _profiles(config: Config) -> ProfileTable:
    """Live estimates: a prior from each ONNX graph, refined by every measured run."""
    summaries = {name: s for name, m in config.models.items() if (s := _summary(m)) is not None}
    return ProfileTable(summaries=summaries)


def _runners(events: Runtime, models: Mapping[str, ModelSpec], executors: Mapping[str, Executor],
             llm: LlmDriver, pool: ExecutorRunner) -> dict[str, StageRunner]:
    """Each model's StageRunner: LLMs step locally or stream from Triton; every other stage
    (ONNX Runtime, Python, Triton unary) is one call of its device's executor (`pool`, also the ""
    entry: what a model added by a reload runs with)."""
    streams = TritonLlmStreams(events, llm, models, executors)
    runners: dict[str, StageRunner] = {name: (streams if m.backend == "triton" else llm) if m.kind == "llm" else pool
                                       for name, m in models.items()}
    runners[""] = pool
    return runners


def _batching(models: Mapping[str, ModelSpec]) -> set[str]:
    """The models that batch requests (dynamic batching; an LLM's max_batch is its own)."""
    return {name for name, m in models.items() if m.kind != "llm" and m.batching.enabled}
