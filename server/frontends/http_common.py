"""What both HTTP frontends share: request ids in and out, bodies read within the size limit, a
gRPC-shaped call context for the servicers they adapt, a client going away as a cancellation, and
RequestError as an HTTP status with the retry hint as Retry-After."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heddle.clients.tensors import clipped
from heddle.server.frontends.http_status import error_headers, http_status
from heddle.server.frontends.validation import MAX_REQUEST_ID_BYTES
from heddle.server.runtime.status import RequestError

__all__ = [
    "REQUEST_ID_HEADER", "BodyTooLarge", "CallContext", "RequestIds", "error_body", "json_response", "read_body",
    "run_until_disconnect",
]

REQUEST_ID_HEADER = "x-request-id"
T = TypeVar("T")
# Content-Encoding -> zlib's wbits (tritonclient compresses requests with either).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class RequestIds:
    """ASGI middleware: the request id is the client's `x-request-id` (clipped to 256 bytes for the
    logs; a frontend refuses one that long) or a fresh one; it is bound to the logs while the request
    runs and sent back as `x-request-id` unless the route already set it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Fresh ids: 32 hex digits like a uuid4's, a random half per server and a count, as the runtime
        # makes its own: uuid4 read os.urandom for every request, 4% of the HTTP path's CPU in a profile.
        self._id_prefix, self._id_count = uuid.uuid4().hex[:16], itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode())
        rid = given.decode("latin-1") if given else f"{self._id_prefix}{next(self._id_count):016x}"
        scope.setdefault("state", {})["request_id"] = rid
        out = clipped(rid, MAX_REQUEST_ID_BYTES).encode("latin-1", errors="replace")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == REQUEST_ID_HEADER.encode() for k, _ in headers):
                    headers.append((REQUEST_ID_HEADER.encode(), out))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=clipped(rid, MAX_REQUEST_ID_BYTES)):
            await self.app(scope, receive, send_with_id)


class CallContext:
    """What the KServe servicer reads of a grpc.aio ServicerContext, for a call that came over HTTP:
    no transport deadline (HTTP has none; the request's own timeout parameter still applies), and
    abort raising the RequestError the HTTP route answers with; the HTTP headers stand for the gRPC
    metadata (a W3C `traceparent` header parents the request's trace span, as gRPC metadata does)."""

    def __init__(self, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._headers = headers

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._headers

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, message: str = "",
                    trailing_metadata: tuple[tuple[str, str], ...] = ()) -> None:
        raise RequestError(code, message, tuple(trailing_metadata))


class BodyTooLarge(RequestError):
    """A body over max_message_bytes: RESOURCE_EXHAUSTED as on gRPC, but HTTP's own 413, since a
    retry of the same body never succeeds (429 would invite one)."""

    def __init__(self, limit: int) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request body is over max_message_bytes "
                                                             f"({limit} bytes)")


def _too_large(limit: int) -> RequestError:
    return BodyTooLarge(limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, decompressed when Content-Encoding says gzip or deflate; over `limit` bytes
    (before or after decompressing) is RESOURCE_EXHAUSTED, as gRPC refuses a message over the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(grpc.StatusCode.CANCELLED, "the client went away while sending") from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _WBITS:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"Content-Encoding {clipped(encoding)!r} is not "
                                                             "supported: send gzip, deflate or none")
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        body = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the {encoding} body does not decompress: {exc}") from None
    if len(body) > limit:
        raise _too_large(limit)
    return body


async def run_until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await work; if the client disconnects first, cancel it (its queued stages are dropped) and
    raise CANCELLED. The body must have been read: after it, receive() reports only the disconnect."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise RequestError(grpc.StatusCode.CANCELLED, "the client went away")
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


def error_body(exc: RequestError, shape: Callable[[RequestError], Any]) -> Response:
    """A RequestError as its HTTP status, Retry-After when it carries a retry hint, and the body
    `shape(exc)` (the frontend's error format)."""
    exc.__traceback__ = None  # the frames hold the request's tensors
    status = 413 if isinstance(exc, BodyTooLarge) else http_status(exc.code)
    return json_response(shape(exc), status, error_headers(exc))
