"""heddle.v1 servicers: thin adapters from proto to the runtime and back, with error mapping."""

from __future__ import annotations

import asyncio

import grpc
import structlog

from heddle.clients.tensors import to_tensor
from heddle.scheduler import POLICIES
from heddle.server.logs import get_logger
from heddle.server.runtime import JobResult, Runtime, StageTiming
from heddle.server.validation import (
    RequestError, check_outputs_requested, decode_inputs, effective_deadline_s, resolve_priority,
)
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

__all__ = ["AdminServicer", "GatewayServicer"]

log = get_logger("heddle.service")

_STAGE_STATUS = {
    "OK": pb.STAGE_STATUS_OK, "FAILED": pb.STAGE_STATUS_FAILED,
    "CANCELLED": pb.STAGE_STATUS_CANCELLED, "SKIPPED": pb.STAGE_STATUS_SKIPPED,
}


def stage_to_proto(t: StageTiming) -> pb.StageResult:
    return pb.StageResult(
        stage=t.stage, model=t.model, device=t.device, status=_STAGE_STATUS[t.status],
        queue_ms=t.queue_s * 1e3, compute_ms=t.compute_s * 1e3,
        start_offset_ms=t.start_offset_s * 1e3, end_offset_ms=t.end_offset_s * 1e3, error=t.error,
    )


def _tensor_info(t) -> pb.TensorInfo:
    return pb.TensorInfo(name=t.name, datatype=t.datatype, shape=list(t.shape))


class GatewayServicer(pb_grpc.GatewayServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.config.server

    async def Infer(self, request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        with structlog.contextvars.bound_contextvars(request_id=request.request_id or None):
            try:
                result, wanted = await self._run(request, context, on_stage=None)
            except RequestError as exc:
                await context.abort(exc.code, exc.message)
            return self._response(result, wanted)

    async def InferStream(self, request: pb.InferRequest, context: grpc.aio.ServicerContext):
        events: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(self._run(request, context, on_stage=events.put_nowait))
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (timing := await events.get()) is not None:
                yield pb.InferEvent(stage_done=stage_to_proto(timing))
            try:
                result, wanted = await task
            except RequestError as exc:
                await context.abort(exc.code, exc.message)
            yield pb.InferEvent(result=self._response(result, wanted))
        finally:
            task.cancel()

    async def _run(self, request, context, on_stage) -> tuple[JobResult, list[str]]:
        """Validate and run; a refusal or a non-OK outcome raises RequestError with its status."""
        pipeline = self.runtime.config.pipelines.get(request.pipeline)
        if pipeline is None:
            if self.runtime.metrics is not None:  # never the client's string as a label: unbounded
                self.runtime.metrics.observe_refused("<unknown>", "NOT_FOUND")
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown pipeline {request.pipeline!r}; "
                               f"known: {sorted(self.runtime.config.pipelines)}")
        try:
            priority = resolve_priority(request.priority, self.settings)
            deadline_s = effective_deadline_s(request.deadline_ms, context.time_remaining())
            wanted = check_outputs_requested(pipeline, request.outputs)
            inputs = decode_inputs(pipeline, request.inputs)
        except RequestError as exc:
            log.info("request refused", pipeline=request.pipeline, code=exc.code.name, error=exc.message)
            if self.runtime.metrics is not None:
                self.runtime.metrics.observe_refused(pipeline.name, exc.code.name)
            raise
        try:
            result = await self.runtime.run(pipeline, inputs, priority=priority, deadline_s=deadline_s,
                                            request_id=request.request_id, on_stage=on_stage)
        except ValueError as exc:  # the same request id is already in flight
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        if result.status_code != "OK":
            raise RequestError(getattr(grpc.StatusCode, result.status_code),
                               f"request {result.request_id}: {result.error}")
        return result, wanted

    def _response(self, result: JobResult, wanted: list[str]) -> pb.InferResponse:
        return pb.InferResponse(
            request_id=result.request_id, pipeline=result.pipeline,
            outputs=[to_tensor(name, result.outputs[name]) for name in wanted],
            stages=[stage_to_proto(t) for t in result.stages], total_ms=result.total_s * 1e3,
            priority=result.priority, deadline_missed=result.deadline_missed,
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

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _info(self) -> pb.PolicyInfo:
        return pb.PolicyInfo(policy=self.runtime.core.policy.name, available=sorted(POLICIES))

    async def GetPolicy(self, request, context) -> pb.PolicyInfo:
        return self._info()

    async def SetPolicy(self, request, context) -> pb.PolicyInfo:
        if request.policy not in POLICIES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown policy {request.policy!r}; known: {sorted(POLICIES)}")
        self.runtime.set_policy(request.policy)
        log.info("policy changed", policy=request.policy)
        return self._info()
