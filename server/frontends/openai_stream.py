"""OpenAI response bodies for one completion: whole (`chat.completion`, `text_completion`) or as
server-sent events of chunks, ending with the finish reason, the usage when asked, and `[DONE]`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from heddle.server.frontends.http_status import http_status
from heddle.server.frontends.openai_catalog import ChatModel
from heddle.server.observe.logs import get_logger
from heddle.server.runtime.jobs import JobResult, TokenUpdate
from heddle.server.runtime.status import RequestError

__all__ = ["Completion", "error_doc", "sse_events"]

log = get_logger("heddle.openai")

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
                504: "timeout_error"}


def error_doc(exc: RequestError) -> dict[str, Any]:
    """OpenAI's error body; `code` is the gRPC status heddle would answer, in lower case."""
    status = http_status(exc.code)
    code = "model_not_found" if exc.code is grpc.StatusCode.NOT_FOUND else exc.code.name.lower()
    return {"error": {"message": exc.message, "type": _ERROR_TYPES.get(status, "server_error"), "param": None,
                      "code": code}}


class Completion:
    """The fixed parts of one answer (id, model, creation time) and how to build its bodies."""

    def __init__(self, model: ChatModel, request_id: str, chat: bool, prompt_tokens: int,
                 generation: Mapping[str, object] | None) -> None:
        self.model = model
        self.request_id = request_id
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = int((generation or {}).get("max_new_tokens") or model.max_new_tokens)
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        self.created = int(time.time())

    def finish_reason(self, completion_tokens: int) -> str:
        """"length" when generation stopped at max_tokens, "stop" when a stop token ended it first."""
        return "length" if completion_tokens >= self.max_new_tokens else "stop"

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model.name, "choices": choices}

    def whole(self, text: str, completion_tokens: int) -> dict[str, Any]:
        finish = self.finish_reason(completion_tokens)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        doc = self.envelope("chat.completion" if self.chat else "text_completion", [choice])
        doc["usage"] = self.usage(completion_tokens)
        return doc

    def chunk(self, text: str | None, finish: str | None, *, first: bool = False) -> dict[str, Any]:
        """One streamed piece: text (None for the closing chunk) and, on the last, the finish reason."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return self.envelope("chat.completion.chunk", [choice])
        return self.envelope("text_completion", [{"index": 0, "text": text or "", "logprobs": None,
                                                   "finish_reason": finish}])


def _event(doc: Any) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


async def sse_events(completion: Completion, first: TokenUpdate | None, events: asyncio.Queue,
                     task: asyncio.Future[JobResult], include_usage: bool) -> AsyncIterator[bytes]:
    """Chunks as tokens come; a failure after the stream started is an `error` event (the status
    line is long gone). Leaving early (the client went away) cancels the request."""
    tokens = 0
    try:
        update, is_first = first, True
        while update is not None:
            tokens += len(update.token_ids)
            yield _event(completion.chunk(update.text, None, first=is_first))
            update, is_first = await events.get(), False
        try:
            result = await task
        except RequestError as exc:
            log.info("openai stream failed", code=exc.code.name, error=exc.message)
            yield _event(error_doc(exc))
            yield b"data: [DONE]\n\n"
            return
        ids = result.outputs[completion.model.output_name].reshape(-1)
        tokens = int(ids.size)
        yield _event(completion.chunk(None, completion.finish_reason(tokens)))
        if include_usage:
            doc = completion.envelope("chat.completion.chunk" if completion.chat else "text_completion", [])
            doc["usage"] = completion.usage(tokens)
            yield _event(doc)
        yield b"data: [DONE]\n\n"
    finally:
        task.cancel()
