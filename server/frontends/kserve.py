"""KServe v2 / Triton `inference.GRPCInferenceService` on heddle's runtime: every model and pipeline is a model.

The servicer is thin: it converts KServe messages (kserve_convert), answers from the catalog
(kserve_catalog), runs requests on the Runtime exactly as the heddle.v1 Gateway does, and keeps
Triton-style statistics (kserve_stats). Stubs come from the `tritonclient` package, not a copied proto.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import time

import grpc
import numpy as np
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
    kserve_deadline_ms,
    kserve_priority,
    parameter_values,
    refuse_sequence_parameters,
)
from heddle.server.frontends.kserve_shm import SharedMemoryIO, region_status
from heddle.server.frontends.kserve_stats import KServeStats, RequestTimes
from heddle.server.frontends.shm import SharedMemory
from heddle.server.frontends.validation import (
    MAX_REQUEST_ID_BYTES,
    RequestError,
    check_generation,
    check_parameters,
    check_request_id,
    effective_deadline_s,
)
from heddle.server.observe.logs import SampledLog, get_logger
from heddle.server.observe.tracing import RequestTracer, trace_headers_of, trace_request
from heddle.server.runtime.jobs import StageStatus, TokenUpdate
from heddle.server.runtime.limits import RequestLimits
from heddle.server.runtime.reload import NotServed, Reloader, ReloadError
from heddle.server.runtime.runtime import JobResult, Runtime
from heddle.server.runtime.status import RETRY_AFTER_KEY, request_error

__all__ = ["EXTENSIONS", "SERVICE_NAME", "KServeServicer"]

log = get_logger("heddle.kserve")

SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# Triton extension names heddle implements (ServerMetadata.extensions).
EXTENSIONS = ("model_configuration", "statistics", "parameters")
_NS = 1_000_000_000


def _server_version() -> str:
    try:
        return importlib.metadata.version("heddle")
    except importlib.metadata.PackageNotFoundError:  # running from a bare source tree
        return "0+unknown"


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
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

    def set_config(self, config) -> None:
        """A reloaded config (server/runtime/reload.py): its models and pipelines from the next call."""
        self.catalog = build_catalog(config)
        self.stats.add(self.catalog)
        self._visible_models = {n for n, e in self.catalog.items() if not e.is_pipeline}

    def add_to_server(self, server: grpc.aio.Server) -> None:
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
        with structlog.contextvars.bound_contextvars(request_id=_log_id(request)):
            try:
                return await self._infer(request, context)
            except RequestError as exc:
                exc.__traceback__ = None  # gRPC keeps the abort, which would keep the inputs (service.py)
                await context.abort(exc.code, exc.message, exc.trailing_metadata)

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests on one stream run concurrently; each gets one response, in completion order
        (match them by `id`). A failed request answers with error_message and the stream goes on."""
        responses: asyncio.Queue = asyncio.Queue()
        pump = asyncio.ensure_future(self._pump(request_iterator, context, responses))
        try:
            while (response := await responses.get()) is not None:
                yield response
            await pump
        finally:
            pump.cancel()

    async def _pump(self, request_iterator, context, responses: asyncio.Queue) -> None:
        """Start one task per incoming request; when the client half-closes, wait for them all."""
        tasks: set[asyncio.Task] = set()
        try:
            async for request in request_iterator:
                task = asyncio.ensure_future(self._stream_one(request, context, responses.put_nowait))
                task.add_done_callback(lambda t: t.cancelled() or responses.put_nowait(t.result()))
                tasks = {t for t in tasks if not t.done()}
                tasks.add(task)
            if tasks:
                await asyncio.wait(tasks)
        finally:
            for task in tasks:
                task.cancel()
            responses.put_nowait(None)

    async def _stream_one(self, request: kpb.ModelInferRequest, context,
                          emit=None) -> kpb.ModelStreamInferResponse:
        with structlog.contextvars.bound_contextvars(request_id=_log_id(request)):
            try:
                on_token = _token_responder(request, emit) if emit is not None else None
                response = await self._infer(request, context, on_token)
                if on_token is not None and self._has_llm(request.model_name):
                    # Like a decoupled Triton model: token responses first, then this final one.
                    response.parameters["triton_final_response"].bool_param = True
                return kpb.ModelStreamInferResponse(infer_response=response)
            except RequestError as exc:
                message = f"{exc.code.name}: {exc.message}"
                hint = dict(exc.trailing_metadata).get(RETRY_AFTER_KEY)
            except Exception as exc:  # a bug must not end the client's stream
                log.exception("stream request failed", model=request.model_name)
                message, hint = f"INTERNAL: {type(exc).__name__}: {exc}", None
        echo = kpb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                      id=request.id)
        if hint is not None:  # a stream has no trailers per request: the hint rides in parameters
            echo.parameters[RETRY_AFTER_KEY].int64_param = int(hint)
        return kpb.ModelStreamInferResponse(error_message=message, infer_response=echo)

    def _has_llm(self, name: str) -> bool:
        entry = self.catalog.get(name)
        models = self.runtime.config.models
        return entry is not None and any(models[s.model].kind == "llm" for s in entry.pipeline.stages)

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
            generation = check_generation(_generation(request.parameters), "parameter ")
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
        t1 = time.perf_counter_ns()
        try:
            result = await self._run(entry, inputs, priority, deadline_s, request.id, on_token, generation,
                                     context=context, parameters=parameters)
        except BaseException:  # failed, or cancelled by the client: Triton counts both as failures
            self.stats.record_failure(entry.name, time.perf_counter_ns() - t0)
            raise
        finally:
            held.release()
        t2 = time.perf_counter_ns()
        response = self._response(entry, request.id, result, wanted, shm_io)
        t3 = time.perf_counter_ns()
        self._record_success(entry, result, RequestTimes(
            total_ns=t3 - t0, queue_ns=int(sum(s.queue_s for s in result.stages) * _NS),
            compute_input_ns=t1 - t0, compute_infer_ns=int(sum(s.compute_s for s in result.stages) * _NS),
            compute_output_ns=t3 - t2))
        return response

    async def _run(self, entry: CatalogEntry, inputs, priority: int, deadline_s: float | None,
                   request_id: str, on_token=None, generation=None, context=None, parameters=None) -> JobResult:
        """Run on the runtime; KServe ids need not be unique, so a clash gets a generated id."""
        run = functools.partial(self.runtime.run, on_token=on_token, generation=generation,
                                trace_headers=trace_headers_of(context), parameters=parameters)
        pipeline = self.runtime.versions.pick(entry.pipeline)  # a canary split among model versions
        try:
            result = await run(pipeline, inputs, priority=priority, deadline_s=deadline_s,
                               request_id=request_id)
        except ValueError:  # the same id is already in flight
            result = await run(pipeline, inputs, priority=priority, deadline_s=deadline_s)
        error = request_error(result)  # the same status and retry hint heddle.v1 sends
        trace_request(self.tracer, result, error, deadline_s, context)
        if error is not None:
            raise error
        return result

    def _response(self, entry: CatalogEntry, request_id: str, result: JobResult,
                  wanted: list[str], shm_io: SharedMemoryIO | None = None) -> kpb.ModelInferResponse:
        response = kpb.ModelInferResponse(model_name=entry.name, model_version=MODEL_VERSION, id=request_id)
        for name in wanted:
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

    # ---- what heddle does not do --------------------------------------------------------
    async def _unsupported(self, context, what: str, instead: str) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"heddle does not support {what}: {instead}")

    def attach_reloader(self, reloader: Reloader) -> None:
        """RepositoryModelLoad/Unload go through the server's config reload (server/runtime/reload.py)."""
        self.reloader = reloader

    async def RepositoryModelLoad(self, request, context) -> kpb.RepositoryModelLoadResponse:
        """Reload the config file (models and pipelines; server/runtime/reload.py), with the model no
        longer left out if it was unloaded; NOT_FOUND when the file does not have it."""
        name = request.model_name
        await self._repository(context, lambda: self.reloader.load(name))
        if name not in self.catalog and not any(n.partition("@")[0] == name for n in self.catalog):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {clipped(name)!r} is not in the config file "
                                f"(heddle loads what its config names; add a [[models]] table)")
        return kpb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context) -> kpb.RepositoryModelUnloadResponse:
        """Stop serving a model (all its versions) or pipeline, and the pipelines that run it, until
        RepositoryModelLoad; requests already running finish."""
        name = request.model_name
        await self._repository(context, lambda: self.reloader.unload(name))
        return kpb.RepositoryModelUnloadResponse()

    async def _repository(self, context, change) -> None:
        if self.reloader is None:
            await self._unsupported(context, "repository changes", "this server was built without config reload")
        try:
            await change()
        except ReloadError as exc:
            code = grpc.StatusCode.FAILED_PRECONDITION if exc.fixed else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(grpc.StatusCode.NOT_FOUND if isinstance(exc, NotServed) else code, str(exc))

    # ---- system shared memory (server/frontends/shm.py) ----------------------------------
    async def SystemSharedMemoryStatus(self, request, context) -> kpb.SystemSharedMemoryStatusResponse:
        if request.name and request.name not in self.shm.regions:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no shared memory region {clipped(request.name)!r}")
        names = [request.name] if request.name else sorted(self.shm.regions)
        return region_status(self.shm.regions[n] for n in names)

    async def SystemSharedMemoryRegister(self, request, context) -> kpb.SystemSharedMemoryRegisterResponse:
        try:
            self.shm.register(request.name, request.key, request.offset, request.byte_size)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        return kpb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context) -> kpb.SystemSharedMemoryUnregisterResponse:
        try:
            self.shm.unregister(request.name)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        return kpb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request, context):
        await self._unsupported(context, "CUDA shared memory", _SEND_TENSORS)

    async def CudaSharedMemoryRegister(self, request, context):
        await self._unsupported(context, "CUDA shared memory", _SEND_TENSORS)

    async def CudaSharedMemoryUnregister(self, request, context):
        await self._unsupported(context, "CUDA shared memory", _SEND_TENSORS)

    async def TraceSetting(self, request, context):
        await self._unsupported(context, "TraceSetting", "per-stage timings are in heddle.v1 responses, "
                                "structured logs and Prometheus metrics")

    async def LogSettings(self, request, context):
        await self._unsupported(context, "LogSettings", "set [server] log_level in the config")


_SEND_TENSORS = "send tensors in the request (raw_input_contents or typed contents)"
# Request parameters that set an LLM stage's GenerationConfig, with the parameter type each takes.
_GENERATION_PARAMS = {"max_new_tokens": "int64_param", "temperature": "double_param", "top_k": "int64_param",
                      "top_p": "double_param", "seed": "int64_param"}


def _log_id(request: kpb.ModelInferRequest) -> str | None:
    """The id logs carry; one too long is cut (and the request refused in _infer)."""
    return clipped(request.id, MAX_REQUEST_ID_BYTES) or None


def _generation(params) -> dict | None:
    """GenerationConfig overrides from KServe request parameters (absent ones keep the model's)."""
    found = {}
    for key, kind in _GENERATION_PARAMS.items():
        if key in params:
            param = params[key]
            which = param.WhichOneof("parameter_choice")
            if which not in (kind, "int64_param", "uint64_param"):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"parameter {key!r} must be a number, got {which or 'nothing'}")
            found[key] = getattr(param, which)
    return found or None


def _token_responder(request: kpb.ModelInferRequest, emit):
    """on_token for a stream: each batch of tokens is a response of its own, matched by `id`,
    carrying them as `token_ids` INT64 [1, n], its stage and index in parameters."""
    def send(update: TokenUpdate) -> None:
        response = kpb.ModelInferResponse(model_name=request.model_name, model_version=MODEL_VERSION,
                                          id=request.id)
        meta, data = encode_output("token_ids", np.asarray([update.token_ids], dtype=np.int64))
        response.outputs.append(meta)
        response.raw_output_contents.append(data)
        params = response.parameters
        params["heddle_stage"].string_param = update.stage
        params["heddle_token_index"].int64_param = update.index
        params["triton_final_response"].bool_param = False
        emit(kpb.ModelStreamInferResponse(infer_response=response))
    return send
