"""The OpenAI-compatible API on the HTTP port: /v1/models, /v1/completions and /v1/chat/completions
(with `stream: true` as server-sent events) over heddle's LLM pipelines. Requests run on the runtime
like any other (priority queues, deadline, memory limits, admission); refusals are 429 with
Retry-After and every error has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import numpy as np
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from heddle.clients.tensors import clipped
from heddle.server.frontends.http_common import (
    CallContext,
    error_body,
    json_response,
    read_body,
    run_until_disconnect,
)
from heddle.server.frontends.kserve_catalog import CatalogEntry
from heddle.server.frontends.openai_catalog import ChatModel, chat_models
from heddle.server.frontends.openai_request import OpenAIRequest, parse_body, parse_request
from heddle.server.frontends.openai_stream import Completion, error_doc, sse_events
from heddle.server.observe.logs import get_logger
from heddle.server.observe.tracing import RequestTracer, trace_request
from heddle.server.runtime.jobs import JobResult, TokenUpdate
from heddle.server.runtime.limits import RequestLimits
from heddle.server.runtime.runtime import Runtime
from heddle.server.runtime.status import RequestError, request_error

__all__ = ["OpenAIRoutes", "openai_routes"]

log = get_logger("heddle.openai")

def _openai_error(exc: RequestError) -> Response:
    return error_body(exc, error_doc)


class OpenAIRoutes:
    def __init__(self, runtime: Runtime, limits: RequestLimits, models: dict[str, ChatModel],
                 tracer: RequestTracer | None = None) -> None:
        self.runtime = runtime
        self.tracer = tracer
        self.limits = limits
        self.models = models
        self.settings = runtime.config.server
        self.created = int(time.time())

    def _model_doc(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "heddle"}

    async def list_models(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [self._model_doc(n) for n in self.models]})

    async def get_model(self, request: Request) -> Response:
        try:
            return json_response(self._model_doc(self._model(request.path_params["model"]).name))
        except RequestError as exc:
            return _openai_error(exc)

    def _model(self, name: Any) -> ChatModel:
        model = self.models.get(name) if isinstance(name, str) else None
        if model is None:
            self._observe_refused("<unknown>", "NOT_FOUND")
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {clipped(str(name))!r} does not exist; "
                                                          f"known: {sorted(self.models)}")
        return model

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    async def _serve(self, request: Request, *, chat: bool) -> Response:
        request_id = request.state.request_id
        try:
            doc = parse_body(await read_body(request, self.settings.max_message_bytes))
            model = self._model(doc.get("model"))
            try:
                parsed = parse_request(doc, request.headers, model, self.settings, chat=chat)
            except RequestError as exc:
                self._observe_refused(model.name, exc.code.name)
                raise
            completion = Completion(model, request_id, chat, len(parsed.prompt_ids), parsed.generation)
            if parsed.stream:
                return await self._stream(request, model, parsed, completion)
            result = await run_until_disconnect(request, self._run(model, parsed, request, None))
        except RequestError as exc:
            log.info("openai request refused", code=exc.code.name, error=exc.message)
            return _openai_error(exc)
        ids = [int(i) for i in result.outputs[model.output_name].reshape(-1)]
        return json_response(completion.whole(model.tokenizer.decode(ids), len(ids)))

    async def _stream(self, request: Request, model: ChatModel, parsed: OpenAIRequest,
                      completion: Completion) -> Response:
        """Wait for the first token (or the end) before answering, so a refusal is still a 429 and
        not an event inside a 200 stream; then stream the rest as server-sent events."""
        events: asyncio.Queue[TokenUpdate | None] = asyncio.Queue()

        def on_token(update: TokenUpdate) -> None:
            if update.stage == model.llm_stage:
                events.put_nowait(update)

        task = asyncio.ensure_future(self._run(model, parsed, request, on_token))
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            first = await run_until_disconnect(request, events.get())
        except BaseException:
            task.cancel()
            raise
        if first is None and task.exception() is not None:
            raise task.exception()
        return StreamingResponse(sse_events(completion, first, events, task, parsed.include_usage),
                                 media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def _run(self, model: ChatModel, parsed: OpenAIRequest, request: Request,
                   on_token: Callable[[TokenUpdate], None] | None) -> JobResult:
        """Admit and run on the runtime; a clashing request id gets a generated one (as on KServe)."""
        request_id = request.state.request_id
        inputs = {model.input_name: np.asarray([parsed.prompt_ids], dtype=np.int64)}
        try:
            held = self.limits.admit(model.pipeline, inputs, parsed.priority)
        except RequestError as exc:
            self._observe_refused(model.name, exc.code.name)
            raise
        try:
            run = self.runtime.run
            kwargs = dict(priority=parsed.priority, deadline_s=parsed.deadline_s, generation=parsed.generation,
                          on_token=on_token)
            try:
                result = await run(model.pipeline, inputs, request_id=request_id, **kwargs)
            except ValueError:  # the id is already in flight
                result = await run(model.pipeline, inputs, **kwargs)
        finally:
            held.release()
        error = request_error(result)
        trace_request(self.tracer, result, error, parsed.deadline_s, CallContext(tuple(request.headers.items())))
        if error is not None:
            raise error
        return result

    def _observe_refused(self, name: str, code: str) -> None:
        if self.runtime.metrics is not None:
            self.runtime.metrics.observe_refused(name, code)


def openai_routes(runtime: Runtime, limits: RequestLimits, catalog: Mapping[str, CatalogEntry],
                  tracer: RequestTracer | None = None) -> list[Route]:
    """The /v1 routes over the catalog's LLMs that take token ids (openai_catalog)."""
    r = OpenAIRoutes(runtime, limits, chat_models(catalog, runtime.config.models), tracer)
    return [
        Route("/v1/models", r.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", r.get_model, methods=["GET"]),
        Route("/v1/completions", r.completions, methods=["POST"]),
        Route("/v1/chat/completions", r.chat_completions, methods=["POST"]),
    ]
