"""KServe v2 / Triton `inference.GRPCInferenceService` on heddle's runtime: every model and pipeline is a model.

The servicer is thin: it converts KServe messages (kserve_convert), answers from the catalog
(kserve_catalog), runs requests on the Runtime exactly as the heddle.v1 Gateway does, and keeps
Triton-style statistics (kserve_stats). Stubs come from the `tritonclient` package, not a copied proto.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Coroutine
from typing import Any

import grpc
import structlog
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from heddle.clients.tensors import clipped
from heddle.server.frontends.kserve_catalog import (
    MODEL_VERSION,
    CatalogEntry,
    build_catalog,
    model_config,
    model_metadata,
)
from heddle.server.frontends.kserve_convert import (
    check_requested_outputs,
    decode_kserve_inputs,
    encode_output,
    generation_overrides,
    kserve_deadline_ms,
    kserve_priority,
    parameter_values,
    refuse_sequence_parameters,
)
from heddle.server.frontends.kserve_extensions import KServeExtensions
from heddle.server.frontends.kserve_shm import SharedMemoryIO
from heddle.server.frontends.kserve_stats import KServeStats, RequestTimes
from heddle.server.frontends.kserve_stream import KServeStreaming, log_id
from heddle.server.frontends.shm import SharedMemory
from heddle.server.frontends.validation import (
    RequestError,
    check_generation,
    check_parameters,
    check_request_id,
    effective_deadline_s,
)
from heddle.server.observe.logs import SampledLog, get_logger
from heddle.server.observe.tracing import RequestTracer, trace_headers_of, trace_request
from heddle.server.runtime.inflight import Reservation
from heddle.server.runtime.jobs import StageStatus
from heddle.server.runtime.limits import RequestLimits
from heddle.server.runtime.reload import Reloader
from heddle.server.runtime.runtime import JobResult, Runtime
from heddle.server.runtime.status import request_error

__all__ = ["EXTENSIONS", "SERVICE_NAME", "KServeServicer"]

log = get_logger("heddle.kserve")

SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Triton extension names heddle implements (ServerMetadata.extensions).
EXTENSIONS = ("model_configuration", "statistics", "parameters")
_NS = 1_000_000_000


def _has_triton(config) -> bool:
    return any(d.backend == "triton" for d in config.devices)


def _server_version() -> str:
    try:
        return importlib.metadata.version("heddle")
    except importlib.metadata.PackageNotFoundError:  # running from a bare source tree
        return "0+unknown"


class KServeServicer(KServeStreaming, KServeExtensions, kpb_grpc.GRPCInferenceServiceServicer):
    """Models are the config's models (each wrapped in a one-stage pipeline) and pipelines; a
    pipeline that shares a model's name hides that model. Every model is version "1"."""

    def __init__(self, runtime: Runtime, limits: RequestLimits | None = None,
                 tracer: RequestTracer | None = None) -> None:
        self.runtime = runtime
        self.settings = runtime.config.server
        self.limits = limits or RequestLimits(runtime.config)  # app.py passes the shared one
        self.tracer = tracer
        self.shm = SharedMemory()  # regions clients register (the shared-memory extension)
        self.reloader: Reloader | None = None  # attach_reloader
        self.catalog: dict[str, CatalogEntry] = build_catalog(runtime.config)
        self.stats = KServeStats(self.catalog)
        # Models that count stage runs of pipelines in their statistics (not hidden by a pipeline).
        self._visible_models = {n for n, e in self.catalog.items() if not e.is_pipeline}
        self._serving = True
        self._version = _server_version()
        self.refusals = SampledLog(log)  # a line a second per model and status: under overload, many
        # Whether a caller's trace context is read from each call: only Triton devices pass it on.
        self._propagate = _has_triton(runtime.config)

    def set_config(self, config) -> None:
        """A reloaded config (server/runtime/reload.py): its models and pipelines from the next call."""
        self.catalog = build_catalog(config)
        self.stats.add(self.catalog)
        self._visible_models = {n for n, e in self.catalog.items() if not e.is_pipeline}
        self._propagate = _has_triton(config)

    def add_to_server(self, server: Any) -> None:  # a grpc.aio.Server, or DecodeGuard's registry of one
        kpb_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    def set_serving(self, serving: bool) -> None:
        """ServerReady answers False once the server starts shutting down."""
        self._serving = serving

    # ---- lookups ------------------------------------------------------------------------
    def _entry(self, name: str, version: str) -> CatalogEntry:
        # A versioned model is served as NAME@VERSION; Triton's clients name it by both fields.
        entry = self.catalog.get(f"{name}@{version}") if version else None
        if entry is not None:
            return entry
        entry = self.catalog.get(name)
        if entry is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"unknown model {clipped(name)!r}; known: {sorted(self.catalog)}")
        if version not in ("", MODEL_VERSION):
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {clipped(version)!r}; "
                                                          f"heddle serves every model as version {MODEL_VERSION}")
        return entry

    async def _lookup(self, name: str, version: str, context) -> CatalogEntry:
        try:
            return self._entry(name, version)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)

    def _is_ready(self, entry: CatalogEntry) -> bool:
        """Every stage's model has at least one healthy device that may run it."""
        return all(self.runtime.core.eligible_devices(s.model) for s in entry.pipeline.stages)

    # ---- health and metadata ------------------------------------------------------------
    async def ServerLive(self, request, context) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> kpb.ServerReadyResponse:
        ready = self._serving and all(self._is_ready(e) for e in self.catalog.values())
        return kpb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request, context) -> kpb.ModelReadyResponse:
        """Like Triton, an unknown model (or version) is simply not ready, not an error."""
        try:
            entry = self._entry(request.name, request.version)
        except RequestError:
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=self._serving and self._is_ready(entry))

    async def ServerMetadata(self, request, context) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name="heddle", version=self._version, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context) -> kpb.ModelMetadataResponse:
        return model_metadata(await self._lookup(request.name, request.version, context))

    async def ModelConfig(self, request, context) -> kpb.ModelConfigResponse:
        entry = await self._lookup(request.name, request.version, context)
        return kpb.ModelConfigResponse(config=model_config(entry, self.runtime.core.eligible_devices))

    async def ModelStatistics(self, request, context) -> kpb.ModelStatisticsResponse:
        """All models when no name is given, as Triton does."""
        if request.name:
            names = [(await self._lookup(request.name, request.version, context)).name]
        else:
            names = sorted(self.catalog)
        return kpb.ModelStatisticsResponse(model_stats=[self.stats.proto(n, MODEL_VERSION) for n in names])

    async def RepositoryIndex(self, request, context) -> kpb.RepositoryIndexResponse:
        models = []
        for name in sorted(self.catalog):
            ready = self._is_ready(self.catalog[name])
            if request.ready and not ready:
                continue
            models.append(kpb.RepositoryIndexResponse.ModelIndex(
                name=name, version=MODEL_VERSION, state="READY" if ready else "UNAVAILABLE",
                reason="" if ready else "no healthy device can run one of its stages"))
        return kpb.RepositoryIndexResponse(models=models)

    # ---- inference ----------------------------------------------------------------------
    async def ModelInfer(self, request: kpb.ModelInferRequest, context) -> kpb.ModelInferResponse:
        # bind and reset, not bound_contextvars: that context manager copies the whole context
        # to save what it rebinds, a generator and a copy per request that showed in profiles.
        tokens = structlog.contextvars.bind_contextvars(request_id=log_id(request))
        shm_io = SharedMemoryIO(self.shm)
        try:
            try:
                return await self._infer_with(request, context, None, shm_io)
            finally:
                shm_io.release()
        except RequestError as exc:
            exc.__traceback__ = None  # gRPC keeps the abort, which would keep the inputs (service.py)
            await context.abort(exc.code, exc.message, exc.trailing_metadata)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _infer(self, request: kpb.ModelInferRequest, context, on_token=None) -> kpb.ModelInferResponse:
        """Validate, run and answer one request; a refusal or failure raises RequestError. The shared
        memory regions it reads or writes are held until it ends."""
        shm_io = SharedMemoryIO(self.shm)
        try:
            return await self._infer_with(request, context, on_token, shm_io)
        finally:
            shm_io.release()

    async def _infer_with(self, request: kpb.ModelInferRequest, context, on_token,
                          shm_io: SharedMemoryIO) -> kpb.ModelInferResponse:
        t0 = time.perf_counter_ns()
        entry, wanted, run, held, deadline_s = self._checked(request, context, on_token, shm_io, t0)
        t1 = time.perf_counter_ns()
        try:
            # Awaited here, not in a helper coroutine: each await level is a coroutine per request.
            result = await run
        except BaseException:  # failed, or cancelled by the client: Triton counts both as failures
            self.stats.record_failure(entry.name, time.perf_counter_ns() - t0)
            raise
        finally:
            held.release()
        error = request_error(result)  # the same status and retry hint heddle.v1 sends
        trace_request(self.tracer, result, error, deadline_s, context)
        if error is not None:
            self.stats.record_failure(entry.name, time.perf_counter_ns() - t0)
            raise error
        t2 = time.perf_counter_ns()
        response = self._response(entry, request.id, result, wanted, shm_io)
        t3 = time.perf_counter_ns()
        self._record_success(entry, result, RequestTimes(
            total_ns=t3 - t0, queue_ns=int(sum(s.queue_s for s in result.stages) * _NS),
            compute_input_ns=t1 - t0, compute_infer_ns=int(sum(s.compute_s for s in result.stages) * _NS),
            compute_output_ns=t3 - t2))
        return response

    def _checked(self, request: kpb.ModelInferRequest, context, on_token, shm_io: SharedMemoryIO,
                 t0: int) -> tuple[CatalogEntry, list[str], Coroutine[Any, Any, JobResult], Reservation,
                                   float | None]:
        """The request checked and decoded, admitted by the memory limits, and its run on the
        runtime (not started until awaited); a refusal raises RequestError, counted."""
        try:
            entry = self._entry(request.model_name, request.model_version)
        except RequestError:
            self._observe_refused("<unknown>", "NOT_FOUND")  # never the client's string as a label
            raise
        try:
            check_request_id(request.id, "id")
            wanted = check_requested_outputs(entry.pipeline, request, shm_io)
            priority = kserve_priority(request.parameters, self.settings)
            deadline_s = effective_deadline_s(kserve_deadline_ms(request.parameters), context.time_remaining())
            refuse_sequence_parameters(request.parameters)
            generation = check_generation(generation_overrides(request.parameters), "parameter ")
            inputs = decode_kserve_inputs(entry.pipeline, request, shm_io)
            # Stage parameters among the request's parameters; the rest are KServe's or heddle's own.
            parameters = check_parameters(entry.pipeline, self.runtime.models, parameter_values(request.parameters),
                                          ignore_unknown=True)
            held = self.limits.admit(entry.pipeline, inputs, priority)  # released when the request ends
        except RequestError as exc:
            self.refusals.info((entry.name, exc.code), "request refused", model=entry.name, code=exc.code.name,
                               error=exc.message)
            self._observe_refused(entry.name, exc.code.name)
            self.stats.record_failure(entry.name, time.perf_counter_ns() - t0)
            raise
        # KServe ids need not be unique: one already in flight runs under a generated id.
        rid = request.id if self.runtime.job(request.id) is None else ""
        pipeline = self.runtime.versions.pick(entry.pipeline)  # a canary split among model versions
        coro = self.runtime.run(pipeline, inputs, priority=priority, deadline_s=deadline_s, request_id=rid,
                                on_token=on_token, generation=generation, parameters=parameters,
                                trace_headers=trace_headers_of(context) if self._propagate else None)
        return entry, wanted, coro, held, deadline_s

    def _response(self, entry: CatalogEntry, request_id: str, result: JobResult,
                  wanted: list[str], shm_io: SharedMemoryIO | None = None) -> kpb.ModelInferResponse:
        response = kpb.ModelInferResponse(model_name=entry.name, model_version=MODEL_VERSION, id=request_id)
        for name in (n for n in wanted if n in result.outputs):  # an optional one of a skipped stage is not
            meta, data = encode_output(name, result.outputs[name])
            if shm_io is not None and shm_io.write(meta, data):
                data = b""  # in the client's region; the entry keeps later outputs at their index
            response.outputs.append(meta)
            response.raw_output_contents.append(data)
        # What heddle did with the request, which Triton responses cannot say (server#6692).
        params = response.parameters
        params["heddle_priority_level"].int64_param = result.priority
        params["heddle_total_us"].int64_param = int(result.total_s * 1e6)
        params["heddle_deadline_missed"].bool_param = result.deadline_missed
        return response

    def _record_success(self, entry: CatalogEntry, result: JobResult, times: RequestTimes) -> None:
        self.stats.record_success(entry.name, times)
        if entry.is_pipeline:
            for stage in result.stages:
                if stage.status is StageStatus.OK and stage.model in self._visible_models:
                    self.stats.record_stage(stage.model, stage.queue_s, stage.compute_s)

    def _observe_refused(self, name: str, code: str) -> None:
        if self.runtime.metrics is not None:
            self.runtime.metrics.observe_refused(name, code)
