"""The runtime's control half: loading models, device health, draining, reloads, the policy and
power. Kept apart from the request path (server/runtime/runtime.py: run, step, dispatch, stage
ends, results) so that each reads on its own; Runtime is both (RuntimeControl is its base), as
the scheduler's Core is CoreReads plus its event/step half."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from heddle.backends.base import Executor
from heddle.backends.graph_summary import summarize_file
from heddle.scheduler import Core, Dispatch, Outcome
from heddle.scheduler.admission import Admission
from heddle.scheduler.plan import SetLevel
from heddle.scheduler.power import PowerController
from heddle.scheduler.profiles import ProfileTable
from heddle.server.config.load import Config
from heddle.server.observe.logs import get_logger
from heddle.server.power.energy import EnergyLedger
from heddle.server.runtime.error_kind import ErrorKind
from heddle.server.runtime.jobs import Job, TokenUpdate
from heddle.server.runtime.llm_runtime import LlmDriver
from heddle.server.runtime.llm_triton import TritonLlmStreams
from heddle.server.runtime.recovery import DeviceLoader
from heddle.server.runtime.stage_runner import StageEvents, StageRunner
from heddle.server.runtime.stepping import Stepper
from heddle.server.runtime.trace import TraceWriter
from heddle.server.runtime.versions import VersionRouter

if TYPE_CHECKING:
    from heddle.scheduler.power_settings import PowerReading
    from heddle.scheduler.profiles import GraphSummary
    from heddle.scheduler.specs import ModelSpec
    from heddle.server.runtime.metrics import Metrics
    from heddle.server.runtime.reload import ConfigDiff

__all__ = ["LevelActuator", "RuntimeControl", "batching_models", "graph_summary", "live_profiles", "stage_runners"]

log = get_logger("heddle.runtime")


class LevelActuator(Protocol):
    """Where the runtime sends the plan's DVFS levels (the power loop's actuators)."""

    def apply_level(self, action: SetLevel) -> None: ...


class RuntimeControl:
    """The control half of Runtime; it relies on the state Runtime.__init__ sets up."""

    config: Config
    models: dict[str, ModelSpec]
    executors: dict[str, Executor]
    metrics: Metrics | None
    clock: Callable[[], float]
    core: Core
    loader: DeviceLoader
    llm: LlmDriver
    versions: VersionRouter
    trace: TraceWriter | None
    _jobs: dict[str, Job]
    _loop: asyncio.AbstractEventLoop | None
    _draining: bool
    _stepper: Stepper
    _runners: dict[str, StageRunner]
    _batching: set[str]
    _levels: LevelActuator | None
    record_events: bool
    energy: EnergyLedger

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

    # ---- StageEvents a one-shot stage never calls: an LLM's steps and tokens, a lost device --------
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

    def device_lost_during(self, d: Dispatch, job: Job | None, error: str, now: float, pass_owner: bool) -> None:
        """A stage's device stopped answering under it: out of rotation, and the stage retried
        once elsewhere if its deadline allows; else its request ends UNAVAILABLE (DEVICE_LOST)."""
        self.set_device_health(d.device, False)
        if self.metrics is not None and pass_owner:
            self.metrics.device_finished(d.device, 0.0)
        if self.core.retry_stage(d.request_id, d.stage, now, error):
            log.warning("stage retried elsewhere", request_id=d.request_id, stage=d.stage,
                        device=d.device, error=error)
            if self.record_events and job is not None:
                job.events.append((now - job.request.arrival_s, "retry",
                                   {"heddle.stage": d.stage, "heddle.device": d.device, "heddle.error": error}))
        elif job is not None:
            job.error_kind = ErrorKind.DEVICE_LOST
        self._stepper.mark_dirty()

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
        summary = graph_summary(model)
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
            summary = graph_summary(spec)
            if summary is not None and isinstance(self.core.profiles, ProfileTable):
                self.core.profiles.set_summary(name, summary)  # measured runs are kept
        self.core.update_models(specs)
        self.versions.set_config(config)
        self._batching = batching_models(self.models)
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

    def on_power_sample(self, samples: Iterable[PowerReading], busy: Mapping[str, float] | None = None) -> None:
        """A control period's power readings (server/power/loop.py): the controller decides,
        and this step carries out its levels and holds."""
        self.core.on_power_sample(samples, self.clock(), busy)
        self._stepper.step_now()  # the period's levels reach the actuators before the loop charges energy

    def _publish_gauges(self) -> None:
        """The state gauges, set when a scrape asks (on the loop's thread), not on every step."""
        assert self.metrics is not None
        stats = self.core.stats()
        for device, n in stats.queued.items():
            self.metrics.set_queue_length(device, n)
        self.metrics.set_in_flight(len(self._jobs))
        self.metrics.power.set_frozen_tasks(sum(stats.frozen.values()))


def graph_summary(model: ModelSpec) -> GraphSummary | None:
    if model.backend != "onnxruntime":
        return None
    try:
        return summarize_file(model.artifact)
    except Exception as exc:  # an estimate is an aid; never a reason not to serve
        log.warning("no graph summary for model", model=model.name, error=str(exc))
        return None


def live_profiles(config: Config) -> ProfileTable:
    """Live estimates: a prior from each ONNX graph, refined by every measured run."""
    summaries = {name: s for name, m in config.models.items() if (s := graph_summary(m)) is not None}
    return ProfileTable(summaries=summaries)


def stage_runners(events: StageEvents, models: Mapping[str, ModelSpec], executors: Mapping[str, Executor],
                  llm: LlmDriver, pool: StageRunner) -> dict[str, StageRunner]:
    """Each model's StageRunner: LLMs step locally or stream from Triton; every other stage
    (ONNX Runtime, Python, Triton unary) is one call of its device's executor (`pool`, also the ""
    entry: what a model added by a reload runs with)."""
    streams = TritonLlmStreams(events, llm, models, executors)
    runners: dict[str, StageRunner] = {name: (streams if m.backend == "triton" else llm) if m.kind == "llm" else pool
                                       for name, m in models.items()}
    runners[""] = pool
    return runners


def batching_models(models: Mapping[str, ModelSpec]) -> set[str]:
    """The models that batch requests (dynamic batching; an LLM's max_batch is its own)."""
    return {name for name, m in models.items() if m.kind != "llm" and m.batching.enabled}
