"""heddle.v1 servicers: thin adapters from proto to the runtime and back, with error mapping."""

from __future__ import annotations

import asyncio

import grpc
import structlog

from heddle.backends.power.sensors import box_power_w, domain_devices
from heddle.clients.tensors import clipped
from heddle.scheduler import POLICIES
from heddle.server.frontends.service_shm import RequestRegions, SharedMemoryRpcs
from heddle.server.frontends.shm import SharedMemory
from heddle.server.frontends.validation import (
    MAX_REQUEST_ID_BYTES,
    RequestError,
    check_generation,
    check_outputs_requested,
    check_parameters,
    check_request_id,
    decode_inputs,
    effective_deadline_s,
    pick_version,
    resolve_priority,
)
from heddle.server.observe.logs import SampledLog, get_logger
from heddle.server.observe.tracing import RequestTracer, trace_headers_of, trace_request
from heddle.server.power.loop import PowerLoop
from heddle.server.runtime.jobs import StageStatus, TokenUpdate
from heddle.server.runtime.limits import RequestLimits
from heddle.server.runtime.reload import Reloader, ReloadError
from heddle.server.runtime.runtime import JobResult, Runtime, StageTiming
from heddle.server.runtime.status import request_error
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

__all__ = ["AdminServicer", "GatewayServicer", "power_status"]

log = get_logger("heddle.service")

_STAGE_STATUS = {
    StageStatus.OK: pb.STAGE_STATUS_OK, StageStatus.FAILED: pb.STAGE_STATUS_FAILED,
    StageStatus.CANCELLED: pb.STAGE_STATUS_CANCELLED, StageStatus.SKIPPED: pb.STAGE_STATUS_SKIPPED,
}


def stage_to_proto(t: StageTiming) -> pb.StageResult:
    return pb.StageResult(
        stage=t.stage, model=t.model, device=t.device, status=_STAGE_STATUS[t.status],
        queue_ms=t.queue_s * 1e3, compute_ms=t.compute_s * 1e3,
        start_offset_ms=t.start_offset_s * 1e3, end_offset_ms=t.end_offset_s * 1e3, error=t.error,
        tokens=t.tokens, ttft_ms=t.ttft_s * 1e3, tpot_ms=t.tpot_s * 1e3,
        energy_j=t.energy_j, energy_source=t.energy_source,
    )


def _abort_args(exc: RequestError) -> tuple:
    """abort()'s arguments: a refusal carries its retry hint as trailing metadata.

    gRPC keeps the abort's exception, and so this one and its frames, after the call: without its
    traceback it no longer holds the request's decoded inputs (a refused 61 MB request did)."""
    exc.__traceback__ = None
    return exc.code, exc.message, exc.trailing_metadata


def tokens_to_proto(u: TokenUpdate) -> pb.TokenEvent:
    return pb.TokenEvent(stage=u.stage, token_ids=list(u.token_ids), text=u.text, index=u.index,
                         offset_ms=u.offset_s * 1e3)


def generation_overrides(request: pb.InferRequest) -> dict | None:
    """GenerationConfig overrides from a request's options; zeros mean the model's defaults,
    except temperature, where 0 is greedy (proto3 has no presence for scalars)."""
    if not request.HasField("generation"):
        return None
    g = request.generation
    return {"max_new_tokens": g.max_new_tokens or None, "temperature": g.temperature, "top_k": g.top_k,
            "top_p": g.top_p or None, "seed": g.seed or None,
            "stop_token_ids": tuple(g.stop_token_ids) or None}


def _tensor_info(t) -> pb.TensorInfo:
    return pb.TensorInfo(name=t.name, datatype=t.datatype, shape=list(t.shape))


class GatewayServicer(SharedMemoryRpcs, pb_grpc.GatewayServicer):
    def __init__(self, runtime: Runtime, limits: RequestLimits | None = None,
                 tracer: RequestTracer | None = None, shm: SharedMemory | None = None) -> None:
        self.runtime = runtime
        self.shm = shm if shm is not None else SharedMemory()  # app.py passes the KServe frontends' regions
        self.settings = runtime.config.server
        self.limits = limits or RequestLimits(runtime.config)  # app.py passes the shared one
        self.refusals = SampledLog(log)  # a line a second per pipeline and status: under overload, many
        self.tracer = tracer

    async def Infer(self, request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        rid = clipped(request.request_id, MAX_REQUEST_ID_BYTES) or None  # an id too long is refused in _run
        with structlog.contextvars.bound_contextvars(request_id=rid):
            regions = RequestRegions(self.shm)
            try:
                result, wanted = await self._run(request, context, regions, on_stage=None)
                return self._response(result, wanted, regions)
            except RequestError as exc:
                await context.abort(*_abort_args(exc))
            finally:
                regions.release()

    async def InferStream(self, request: pb.InferRequest, context: grpc.aio.ServicerContext):
        events: asyncio.Queue = asyncio.Queue()
        regions = RequestRegions(self.shm)
        task = asyncio.ensure_future(self._run(request, context, regions, on_stage=events.put_nowait,
                                               on_token=events.put_nowait))
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                if isinstance(event, TokenUpdate):
                    yield pb.InferEvent(tokens=tokens_to_proto(event))
                else:
                    yield pb.InferEvent(stage_done=stage_to_proto(event))
            try:
                result, wanted = await task
                response = self._response(result, wanted, regions)
            except RequestError as exc:
                await context.abort(*_abort_args(exc))
            yield pb.InferEvent(result=response)
        finally:
            task.cancel()
            regions.release()

    async def _run(self, request, context, regions: RequestRegions, on_stage,
                   on_token=None) -> tuple[JobResult, list[str]]:
        """Validate and run; a refusal or a non-OK outcome raises RequestError with its status."""
        pipeline = self.runtime.config.pipelines.get(request.pipeline)
        if pipeline is None:
            if self.runtime.metrics is not None:  # never the client's string as a label: unbounded
                self.runtime.metrics.observe_refused("<unknown>", "NOT_FOUND")
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown pipeline {clipped(request.pipeline)!r}; "
                               f"known: {sorted(self.runtime.config.pipelines)}")
        try:
            check_request_id(request.request_id)
            pipeline = pick_version(self.runtime.versions, pipeline, dict(request.model_versions))
            priority = resolve_priority(request.priority, self.settings)
            deadline_s = effective_deadline_s(request.deadline_ms, context.time_remaining())
            wanted = check_outputs_requested(pipeline, request.outputs)
            if request.output_shared_memory:  # returned whether `outputs` names them or not
                in_shm = sorted(request.output_shared_memory)
                wanted += [n for n in check_outputs_requested(pipeline, in_shm) if n not in wanted]
                regions.claim_outputs(request.output_shared_memory)
            generation = check_generation(generation_overrides(request), "generation.")
            inputs = decode_inputs(pipeline, regions.inputs(request.inputs))
            parameters = check_parameters(pipeline, self.runtime.models, request.parameters)
            held = self.limits.admit(pipeline, inputs, priority)  # released when the request ends
        except RequestError as exc:
            self.refusals.info((pipeline.name, exc.code), "request refused", pipeline=request.pipeline,
                          code=exc.code.name, error=exc.message)
            if self.runtime.metrics is not None:
                self.runtime.metrics.observe_refused(pipeline.name, exc.code.name)
            raise
        try:
            result = await self.runtime.run(pipeline, inputs, priority=priority, deadline_s=deadline_s,
                                            request_id=request.request_id, on_stage=on_stage,
                                            generation=generation, on_token=on_token,
                                            trace_headers=trace_headers_of(context), parameters=parameters)
        except ValueError as exc:  # the same request id is already in flight
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        finally:
            held.release()
        error = request_error(result)  # a refusal at admission carries when to try again
        trace_request(self.tracer, result, error, deadline_s, context)
        if error is not None:
            raise error
        return result, wanted

    def _response(self, result: JobResult, wanted: list[str], regions: RequestRegions) -> pb.InferResponse:
        return pb.InferResponse(
            request_id=result.request_id, pipeline=result.pipeline,
            # An optional output of a skipped stage (`when`) is not there: left out, as declared.
            outputs=[regions.tensor(name, result.outputs[name]) for name in wanted if name in result.outputs],
            stages=[stage_to_proto(t) for t in result.stages], total_ms=result.total_s * 1e3,
            priority=result.priority, deadline_missed=result.deadline_missed,
            energy_j=result.energy_j, energy_source=result.energy_source,
        )

    async def ListPipelines(self, request, context) -> pb.ListPipelinesResponse:
        return pb.ListPipelinesResponse(pipelines=[
            pb.PipelineInfo(
                name=p.name, description=p.description,
                inputs=[_tensor_info(t) for t in p.inputs], outputs=[_tensor_info(t) for t in p.outputs],
                stages=[pb.PipelineInfo.Stage(name=s.name, model=s.model, depends_on=p.depends_on[s.name])
                        for s in p.stages],
            )
            for p in self.runtime.config.pipelines.values()
        ])

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[
            pb.ModelInfo(name=m.name, backend=m.backend, kind=m.kind,
                         inputs=[_tensor_info(t) for t in m.inputs],
                         outputs=[_tensor_info(t) for t in m.outputs],
                         devices=self.runtime.core.eligible_devices(m.name))
            for m in self.runtime.config.models.values()
        ])

    async def ListDevices(self, request, context) -> pb.ListDevicesResponse:
        stats = self.runtime.core.stats()
        return pb.ListDevicesResponse(devices=[
            pb.DeviceInfo(id=d.id, kind=d.kind, backend=d.backend,
                          providers=self.runtime.executors[d.id].providers(), slots=d.slots,
                          running=stats.running[d.id], queued=stats.queued[d.id],
                          healthy=d.id in self.runtime.core.healthy_devices())
            for d in self.runtime.config.devices
        ])


class AdminServicer(pb_grpc.AdminServicer):
    """Operator RPCs; the AdminAuthInterceptor guards them when an admin token is configured."""

    def __init__(self, runtime: Runtime, power: PowerLoop | None = None, reloader: Reloader | None = None) -> None:
        self.runtime = runtime
        self.power = power
        self.reloader = reloader

    def _info(self) -> pb.PolicyInfo:
        return pb.PolicyInfo(policy=self.runtime.core.policy.name, available=sorted(POLICIES))

    async def GetPolicy(self, request, context) -> pb.PolicyInfo:
        return self._info()

    async def SetPolicy(self, request, context) -> pb.PolicyInfo:
        if request.policy not in POLICIES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown policy {clipped(request.policy)!r}; known: {sorted(POLICIES)}")
        self.runtime.set_policy(request.policy)
        log.info("policy changed", policy=request.policy)
        return self._info()

    async def ReloadConfig(self, request: pb.ReloadRequest, context) -> pb.ReloadStatus:
        """Models and pipelines added, changed or removed without a restart (server/runtime/reload.py).
        FAILED_PRECONDITION for what needs a restart, INVALID_ARGUMENT for a config that does not load."""
        if self.reloader is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server was built without config reload")
        try:
            diff, config, elapsed_s = await self.reloader.reload(request.config_path)
        except ReloadError as exc:
            log.warning("config reload refused", error=str(exc))
            code = grpc.StatusCode.FAILED_PRECONDITION if exc.fixed else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc))
        return pb.ReloadStatus(
            models_added=diff.models_added, models_changed=diff.models_changed, models_removed=diff.models_removed,
            pipelines_added=diff.pipelines_added, pipelines_changed=diff.pipelines_changed,
            pipelines_removed=diff.pipelines_removed, config_path=config.source, load_ms=elapsed_s * 1e3)

    async def GetPower(self, request, context) -> pb.PowerStatus:
        if self.power is None or self.power.controller is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "power sensing is not running on this server")
        return power_status(self.power)

    async def SetPowerBudget(self, request: pb.PowerBudget, context) -> pb.PowerStatus:
        """box_w 0 removes the box budget (proto3 has no unset double); device_w sets each
        device's own (the whole map is replaced)."""
        if self.power is None or self.power.controller is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "power sensing is not running on this server")
        try:
            self.power.set_budget(request.box_w or None, dict(request.device_w))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return power_status(self.power)


def power_status(power: PowerLoop) -> pb.PowerStatus:
    """GetPower's answer: budgets, the box and each device's last reading with its source and
    sensor, DVFS level and frozen stage runs, and the controller's state."""
    ctl = power.controller
    stats = power.runtime.core.stats()
    by_domain = {s.device: s for s in power.samples}
    devices = []
    for device in power.config.devices:
        sample = next((s for domain, s in by_domain.items() if device.id in domain_devices(domain)), None)
        devices.append(pb.DevicePower(
            device=device.id, power_w=sample.power_w if sample else 0.0, source=sample.source if sample else "",
            sensor=(sample.sensor if sample is None or sample.device == device.id
                    else f"{sample.sensor} ({sample.device})"),
            dvfs_level=stats.levels.get(device.id, 0), frozen_tasks=stats.frozen.get(device.id, 0)))
    devices += [pb.DevicePower(device=s.device, power_w=s.power_w, source=s.source, sensor=s.sensor)
                for s in power.samples if not domain_devices(s.device)]  # board and unassigned rails
    return pb.PowerStatus(
        budget=pb.PowerBudget(box_w=ctl.budget_w or 0.0, device_w=ctl.device_budget_w),
        box_power_w=box_power_w(power.samples), source=ctl.source, devices=devices,
        controller_state=ctl.state)
