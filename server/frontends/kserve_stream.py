"""Triton's bidirectional ModelStreamInfer on the KServe servicer: concurrent requests per stream,
one response each, and LLM tokens as decoupled-model responses before the final one."""

from __future__ import annotations

import asyncio

import numpy as np
import structlog
from tritonclient.grpc import service_pb2 as kpb

from heddle.clients.tensors import clipped
from heddle.server.frontends.kserve_catalog import MODEL_VERSION
from heddle.server.frontends.kserve_convert import encode_output
from heddle.server.frontends.validation import MAX_REQUEST_ID_BYTES, RequestError
from heddle.server.observe.logs import get_logger
from heddle.server.runtime.jobs import TokenUpdate
from heddle.server.runtime.status import RETRY_AFTER_KEY

__all__ = ["KServeStreaming", "log_id"]

log = get_logger("heddle.kserve")


def log_id(request: kpb.ModelInferRequest) -> str | None:
    """The id logs carry; one too long is cut (and the request refused in _infer)."""
    return clipped(request.id, MAX_REQUEST_ID_BYTES) or None


class KServeStreaming:
    """Mixed into KServeServicer (kserve.py), whose `_infer`, `catalog` and `runtime` it uses."""

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
        with structlog.contextvars.bound_contextvars(request_id=log_id(request)):
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
