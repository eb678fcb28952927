"""KServe v2 REST (Triton's HTTP endpoint, binary tensor data extension included) over the KServe
gRPC servicer: each route turns its JSON into the servicer's protobuf request, awaits the same
method the gRPC frontend runs (same catalog, checks, runtime, statistics and logs) and answers its
protobuf response as JSON, or its status as an HTTP status with `{"error": message}`."""

from __future__ import annotations

import json
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import service_pb2 as kpb

from heddle.server.frontends.http_common import (
    CallContext,
    error_body,
    json_response,
    read_body,
    run_until_disconnect,
)
from heddle.server.frontends.http_json import message_json
from heddle.server.frontends.http_tensors import BINARY_HEADER, infer_request, infer_response_body
from heddle.server.frontends.kserve import KServeServicer
from heddle.server.frontends.openai_request import DEADLINE_HEADER, PRIORITY_HEADER, deadline_s_of, priority_of
from heddle.server.runtime.status import RequestError

__all__ = ["kserve_routes"]

_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _kserve_error(exc: RequestError) -> Response:
    return error_body(exc, lambda e: {"error": e.message})


def _heddle_headers(message: kpb.ModelInferRequest, headers, settings) -> None:
    """x-heddle-priority (heddle's scale: higher is more urgent) and x-heddle-deadline-ms, as the OpenAI
    routes take them, for clients that speak heddle's vocabulary (the CLIs' HTTP targets): they become
    the KServe `priority` (which counts the other way) and `timeout` parameters; the body's own win."""
    if PRIORITY_HEADER in headers and "priority" not in message.parameters:
        level = priority_of({}, headers, settings)
        message.parameters["priority"].int64_param = settings.priority_levels - level + 1
    if DEADLINE_HEADER in headers and "timeout" not in message.parameters:
        deadline_s = deadline_s_of(headers)
        if deadline_s is not None:
            message.parameters["timeout"].int64_param = max(1, round(deadline_s * 1e6))


class KServeRoutes:
    """The REST routes, each a thin adapter onto one KServeServicer method."""

    def __init__(self, servicer: KServeServicer, max_body_bytes: int) -> None:
        self.servicer = servicer
        self.max_body_bytes = max_body_bytes

    async def _call(self, method, request_message, headers: tuple[tuple[str, str], ...] = ()) -> Any:
        return await method(request_message, CallContext(headers))

    async def live(self, request: Request) -> Response:
        live = (await self._call(self.servicer.ServerLive, kpb.ServerLiveRequest())).live
        return Response(status_code=200 if live else 503)

    async def ready(self, request: Request) -> Response:
        ready = (await self._call(self.servicer.ServerReady, kpb.ServerReadyRequest())).ready
        return Response(status_code=200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(message_json(await self._call(self.servicer.ServerMetadata,
                                                           kpb.ServerMetadataRequest())))

    @staticmethod
    def _model(request: Request) -> tuple[str, str]:
        return request.path_params["model"], request.path_params.get("version", "")

    async def model_ready(self, request: Request) -> Response:
        """Unknown model or version: 404 naming it; known but no healthy device: 503."""
        name, version = self._model(request)
        try:
            await self._call(self.servicer.ModelMetadata, kpb.ModelMetadataRequest(name=name, version=version))
        except RequestError as exc:
            return _kserve_error(exc)
        ready = await self._call(self.servicer.ModelReady, kpb.ModelReadyRequest(name=name, version=version))
        return Response(status_code=200 if ready.ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        name, version = self._model(request)
        try:
            meta = await self._call(self.servicer.ModelMetadata, kpb.ModelMetadataRequest(name=name, version=version))
        except RequestError as exc:
            return _kserve_error(exc)
        return json_response(message_json(meta))

    async def model_config(self, request: Request) -> Response:
        """The ModelConfig itself, as Triton's HTTP endpoint answers (not wrapped in `config`)."""
        name, version = self._model(request)
        try:
            config = await self._call(self.servicer.ModelConfig, kpb.ModelConfigRequest(name=name, version=version))
        except RequestError as exc:
            return _kserve_error(exc)
        return json_response(message_json(config.config))

    async def model_stats(self, request: Request) -> Response:
        name, version = request.path_params.get("model", ""), request.path_params.get("version", "")
        try:
            stats = await self._call(self.servicer.ModelStatistics,
                                     kpb.ModelStatisticsRequest(name=name, version=version))
        except RequestError as exc:
            return _kserve_error(exc)
        return json_response(message_json(stats))

    async def repository_index(self, request: Request) -> Response:
        try:
            body = json.loads(await read_body(request, self.max_body_bytes) or b"{}")
            ready = body.get("ready", False) if isinstance(body, dict) else None
            if not isinstance(ready, bool):
                raise RequestError(_INVALID, "the body must be a JSON object; 'ready' a boolean")
        except ValueError as exc:
            return _kserve_error(RequestError(_INVALID, f"the request's JSON is not valid: {exc}"))
        except RequestError as exc:
            return _kserve_error(exc)
        index = await self._call(self.servicer.RepositoryIndex, kpb.RepositoryIndexRequest(ready=ready))
        return json_response([message_json(m) for m in index.models])

    async def infer(self, request: Request) -> Response:
        """One inference; the client going away cancels it in the runtime, as a cancelled gRPC call does."""
        name, version = self._model(request)
        request_id = request.state.request_id
        try:
            body = await read_body(request, self.max_body_bytes)
            message, binary, echo = infer_request(body, request.headers.get(BINARY_HEADER), name, version,
                                                  request_id)
            del body
            _heddle_headers(message, request.headers, self.servicer.settings)
            response = await run_until_disconnect(
                request, self._call(self.servicer.ModelInfer, message, tuple(request.headers.items())))
        except RequestError as exc:
            return _kserve_error(exc)
        content, header_length = infer_response_body(response, binary, echo)
        headers = {"x-request-id": message.id}
        if header_length is None:
            return Response(content, media_type="application/json", headers=headers)
        headers["inference-header-content-length"] = str(header_length)
        return Response(content, media_type="application/octet-stream", headers=headers)

    async def shm_status(self, request: Request) -> Response:
        name = request.path_params.get("region", "")
        try:
            status = await self._call(self.servicer.SystemSharedMemoryStatus,
                                      kpb.SystemSharedMemoryStatusRequest(name=name))
        except RequestError as exc:
            return _kserve_error(exc)
        return json_response([message_json(status.regions[n]) for n in sorted(status.regions)])

    async def shm_register(self, request: Request) -> Response:
        """Body {"key": "/name", "offset": 0, "byte_size": N}, as tritonclient.http sends it."""
        try:
            body = json.loads(await read_body(request, self.max_body_bytes) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
            fields = {k: body.get(k, d) for k, d in (("key", ""), ("offset", 0), ("byte_size", 0))}
            if not isinstance(fields["key"], str) or not all(
                    isinstance(fields[k], int) and not isinstance(fields[k], bool) for k in ("offset", "byte_size")):
                raise ValueError("'key' must be a string, 'offset' and 'byte_size' integers")
            message = kpb.SystemSharedMemoryRegisterRequest(name=request.path_params["region"], **fields)
        except ValueError as exc:
            return _kserve_error(RequestError(_INVALID, f"the register body is not valid: {exc}"))
        except RequestError as exc:
            return _kserve_error(exc)
        return await self._shm_call(self.servicer.SystemSharedMemoryRegister, message)

    async def shm_unregister(self, request: Request) -> Response:
        message = kpb.SystemSharedMemoryUnregisterRequest(name=request.path_params.get("region", ""))
        return await self._shm_call(self.servicer.SystemSharedMemoryUnregister, message)

    async def _shm_call(self, method, message) -> Response:
        try:
            await self._call(method, message)
        except (RequestError, ValueError) as exc:  # ValueError: a protobuf field out of its range
            if isinstance(exc, ValueError):
                exc = RequestError(_INVALID, str(exc))
            return _kserve_error(exc)
        return Response(status_code=200)

    async def unsupported(self, request: Request) -> Response:
        """Shared memory, repository control, trace and log settings: what the gRPC frontend says."""
        return _kserve_error(RequestError(grpc.StatusCode.UNIMPLEMENTED, f"heddle does not serve "
                                          f"{request.url.path} over HTTP: send tensors in the request"))


def kserve_routes(servicer: KServeServicer, max_body_bytes: int) -> list[Route]:
    """Triton's REST paths; a model path takes an optional /versions/{version}."""
    r = KServeRoutes(servicer, max_body_bytes)
    routes = [
        Route("/v2/health/live", r.live, methods=["GET"]),
        Route("/v2/health/ready", r.ready, methods=["GET"]),
        Route("/v2", r.server_metadata, methods=["GET"]),
        Route("/v2/models/stats", r.model_stats, methods=["GET"]),
        Route("/v2/repository/index", r.repository_index, methods=["POST"]),
    ]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(base, r.model_metadata, methods=["GET"]),
            Route(f"{base}/ready", r.model_ready, methods=["GET"]),
            Route(f"{base}/config", r.model_config, methods=["GET"]),
            Route(f"{base}/stats", r.model_stats, methods=["GET"]),
            Route(f"{base}/infer", r.infer, methods=["POST"]),
        ]
    routes += [
        Route("/v2/systemsharedmemory/status", r.shm_status, methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/status", r.shm_status, methods=["GET"]),
        Route("/v2/systemsharedmemory/region/{region}/register", r.shm_register, methods=["POST"]),
        Route("/v2/systemsharedmemory/unregister", r.shm_unregister, methods=["POST"]),
        Route("/v2/systemsharedmemory/region/{region}/unregister", r.shm_unregister, methods=["POST"]),
    ]
    for path in ("/v2/cudasharedmemory{rest:path}",
                 "/v2/repository/models/{rest:path}", "/v2/trace/setting", "/v2/models/{model}/trace/setting",
                 "/v2/logging"):
        routes.append(Route(path, r.unsupported, methods=["GET", "POST"]))
    return routes
