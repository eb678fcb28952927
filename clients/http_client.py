"""A heddle client over HTTP, for the CLIs' HTTP targets (`heddle infer/list/bench --protocol http` or
`--target http://HOST:PORT`): inference through KServe v2 REST (binary tensor data), streamed LLM
generation through the OpenAI API (`/v1/completions`, server-sent events), listings from KServe
metadata. The same methods as AsyncHeddleClient, so the load generator drives either.

Built on aiohttp (tritonclient.http.aio's library). A failed call raises HttpError, a grpc.RpcError
whose code() is the gRPC status the server mapped to its HTTP status, so callers that handle gRPC
errors handle these unchanged. heddle's priority scale and deadline travel as the x-heddle-priority
and x-heddle-deadline-ms headers (KServe's own `priority` counts the other way).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aiohttp
import grpc
import numpy as np

from heddle.clients.http_bodies import BINARY_HEADER, PIPELINE_PLATFORM, grpc_code, infer_body, infer_result
from heddle.clients.http_bodies import model_info as _model_info
from heddle.clients.http_bodies import pipeline_info as _pipeline_info
from heddle.clients.messages import InferResult, StageTiming, TokenEvent
from heddle.v1 import heddle_pb2

__all__ = ["DEFAULT_HTTP_TARGET", "AsyncHttpClient", "HttpError"]

DEFAULT_HTTP_TARGET = "127.0.0.1:8000"
_GENERATION_TO_OPENAI = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
                         "seed": "seed"}


class HttpError(grpc.RpcError):
    """A failed HTTP call: code() the gRPC status of its HTTP status, details() the server's message,
    retry_after_s the refusal's hint (heddle's retry-after-ms header, else Retry-After)."""

    def __init__(self, code: grpc.StatusCode, details: str, http_status: int = 0,
                 retry_after_s: float | None = None) -> None:
        self._code, self._details, self.http_status, self.retry_after_s = code, details, http_status, retry_after_s
        super().__init__(f"{code.name}: {details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")
    return str(error.get("message") if isinstance(error, dict) else error)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    for key, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return float(headers[key]) * scale
        except (KeyError, ValueError):
            continue
    return None


def _prompt(inputs: Mapping[str, Any]) -> str | list[int]:
    """An LLM pipeline's one input as an OpenAI prompt: text, or token ids."""
    if len(inputs) != 1:
        raise ValueError(f"streaming over HTTP (the OpenAI API) takes one prompt input, got {sorted(inputs)}")
    arr = np.asarray(next(iter(inputs.values())))
    if arr.dtype.kind in "OSU":
        first = arr.reshape(-1)[0]
        return first.decode() if isinstance(first, bytes) else str(first)
    return [int(t) for t in arr.reshape(-1)]


class AsyncHttpClient:
    """Asyncio client for a heddle server's HTTP port; `url` is http(s)://HOST:PORT. Use with `async with`."""

    def __init__(self, url: str, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        # No connection cap: a closed-loop bench keeps `concurrency` requests in flight on their own connections.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=ssl_context or True))

    async def __aenter__(self) -> AsyncHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _request(self, method: str, path: str, *, timeout_s: float | None = None,
                       **kwargs: Any) -> tuple[bytes, Mapping[str, str]]:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            async with self._session.request(method, self.url + path, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 300:
                    raise HttpError(grpc_code(resp.status), _error_message(body), resp.status,
                                    _retry_after_s(resp.headers))
                return body, resp.headers
        except aiohttp.ClientConnectionError as exc:
            raise HttpError(grpc.StatusCode.UNAVAILABLE, f"cannot reach {self.url}: {exc}") from None
        except asyncio.TimeoutError:
            raise HttpError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout_s} s") from None

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        body, _ = await self._request(method, path, **kwargs)
        return json.loads(body)

    @staticmethod
    def _heddle_headers(priority: int, deadline_ms: float | None, request_id: str | None) -> dict[str, str]:
        headers = {"x-heddle-priority": str(priority)} if priority else {}
        if deadline_ms:
            headers["x-heddle-deadline-ms"] = repr(float(deadline_ms))
        if request_id:
            headers["x-request-id"] = request_id
        return headers

    async def infer(self, pipeline: str, inputs: Mapping[str, Any], *, priority: int = 0,
                    deadline_ms: float | None = None, request_id: str | None = None,
                    outputs: Iterable[str] | None = None, timeout_s: float | None = None,
                    generation: Mapping[str, Any] | None = None) -> InferResult:
        """POST /v2/models/{pipeline}/infer; generation options go as KServe request parameters."""
        params = {k: v for k, v in (generation or {}).items() if v is not None}
        body, header_length = infer_body(inputs, request_id=request_id or "", outputs=outputs, parameters=params)
        headers = {**self._heddle_headers(priority, deadline_ms, request_id), BINARY_HEADER: str(header_length),
                   "content-type": "application/octet-stream"}
        data, response_headers = await self._request("POST", f"/v2/models/{pipeline}/infer", data=body,
                                                     headers=headers, timeout_s=timeout_s)
        return infer_result(data, response_headers.get(BINARY_HEADER), response_headers.get("x-request-id", ""))

    async def infer_stream(self, pipeline: str, inputs: Mapping[str, Any], *, priority: int = 0,
                           deadline_ms: float | None = None, request_id: str | None = None,
                           outputs: Iterable[str] | None = None, timeout_s: float | None = None,
                           generation: Mapping[str, Any] | None = None
                           ) -> AsyncIterator[TokenEvent | InferResult]:
        """POST /v1/completions with stream true (the pipeline is an OpenAI model): a TokenEvent per
        chunk (text only: the API sends no ids; offset_ms from the send, on this client's clock), then an
        InferResult whose one stage carries the usage's completion token count."""
        doc: dict[str, Any] = {"model": pipeline, "prompt": _prompt(inputs), "stream": True,
                               "stream_options": {"include_usage": True}}
        doc.update({_GENERATION_TO_OPENAI[k]: v for k, v in (generation or {}).items()
                    if k in _GENERATION_TO_OPENAI and v is not None})
        headers = self._heddle_headers(priority, deadline_ms, request_id)
        loop = asyncio.get_running_loop()
        t0, texts, tokens, rid = loop.time(), [], 0, request_id or ""
        try:
            async with self._session.post(self.url + "/v1/completions", json=doc, headers={**self._headers, **headers},
                                          timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status >= 300:
                    raise HttpError(grpc_code(resp.status), _error_message(await resp.read()), resp.status,
                                    _retry_after_s(resp.headers))
                rid = resp.headers.get("x-request-id", rid)
                async for line in resp.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:  # failed after the stream started: the status line is long gone
                        error = chunk["error"]
                        raise HttpError(grpc_code(int(error.get("code") or 500)), str(error.get("message")), 200)
                    tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
                    text = chunk["choices"][0].get("text") if chunk.get("choices") else ""
                    if text:
                        texts.append(text)
                        yield TokenEvent(stage="openai", token_ids=(), index=len(texts) - 1,
                                         offset_ms=(loop.time() - t0) * 1e3, text=text)
        except aiohttp.ClientConnectionError as exc:
            raise HttpError(grpc.StatusCode.UNAVAILABLE, f"cannot reach {self.url}: {exc}") from None
        except asyncio.TimeoutError:
            raise HttpError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout_s} s") from None
        elapsed_ms = (loop.time() - t0) * 1e3
        stage = StageTiming(stage="openai", model=pipeline, device="", status="OK", queue_ms=0.0, compute_ms=0.0,
                            start_offset_ms=0.0, end_offset_ms=elapsed_ms, tokens=tokens)
        text = np.array(["".join(texts).encode()], object)
        yield InferResult(request_id=rid, pipeline=pipeline, outputs={"text": text}, stages=[stage],
                          total_ms=elapsed_ms)

    async def _entries(self, timeout_s: float | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        index = await self._json("POST", "/v2/repository/index", json={}, timeout_s=timeout_s)
        names = [m["name"] for m in index]
        metas = await asyncio.gather(*(self._json("GET", f"/v2/models/{n}", timeout_s=timeout_s) for n in names))
        configs = await asyncio.gather(*(self._json("GET", f"/v2/models/{n}/config", timeout_s=timeout_s)
                                         for n in names))
        return list(zip(metas, configs, strict=True))

    async def list_pipelines(self, *, timeout_s: float | None = None) -> list[heddle_pb2.PipelineInfo]:
        """The server's pipelines, from KServe's repository index, metadata and configs."""
        return [_pipeline_info(m, c) for m, c in await self._entries(timeout_s)
                if c.get("platform") == PIPELINE_PLATFORM]

    async def list_models(self, *, timeout_s: float | None = None) -> list[heddle_pb2.ModelInfo]:
        """The server's models (a model a pipeline of the same name hides is not listed, as on KServe)."""
        return [_model_info(m, c) for m, c in await self._entries(timeout_s)
                if c.get("platform") != PIPELINE_PLATFORM]

    async def list_devices(self, *, timeout_s: float | None = None) -> list[heddle_pb2.DeviceInfo]:
        raise HttpError(grpc.StatusCode.UNIMPLEMENTED, "devices are listed by the gRPC API only (heddle.v1 "
                                                       "ListDevices): use --protocol grpc")
