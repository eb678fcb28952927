"""Requests whose bytes are no valid message: INVALID_ARGUMENT and a rate-limited one-line warning.

Left to grpc, a request that does not parse (junk bytes, a truncated field, invalid UTF-8 in a
string) ends UNKNOWN "Unexpected DecodeError" and logs a 2 KB traceback each time, so a client can
fill the log at line rate. DecodeGuard gives every method a deserializer that returns an
`Undecodable` marker instead of raising, and a behaviour that answers the marker INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from heddle.server.observe.logs import get_logger

__all__ = ["DecodeGuard", "Undecodable"]

log = get_logger("heddle.decode")


class Undecodable:
    """What the guarded deserializer returns for bytes that do not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError; whatever a parser raises, the bytes are the client's
            return Undecodable(f"{type(exc).__name__}: {str(exc)[:200]}")
    return parse


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once (cached by method) so undecodable requests get
    INVALID_ARGUMENT; logs at most one warning per `log_every_s`, with how many it left out."""

    def __init__(self, log_every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._log_every_s = log_every_s
        self._clock = clock
        self._next_log_s = float("-inf")
        self._unlogged = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._handlers[method] = (handler, self._wrap(method, handler))
        return cached[1]

    async def refuse(self, method: str, bad: Undecodable, context: grpc.aio.ServicerContext) -> None:
        """Abort the call INVALID_ARGUMENT naming the method; log it unless a line went out less
        than `log_every_s` ago (then counted, and the next line says how many were left out)."""
        now = self._clock()
        if now >= self._next_log_s:
            log.warning("undecodable request", method=method, error=bad.error, left_out=self._unlogged)
            self._next_log_s, self._unlogged = now + self._log_every_s, 0
        else:
            self._unlogged += 1
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message "
                                                              f"for {method}: {bad.error}")

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        factory, behaviour = {
            (False, False): (grpc.unary_unary_rpc_method_handler, handler.unary_unary),
            (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream),
            (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary),
            (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream),
        }[kind]
        return factory(self._guarded(method, behaviour, handler.request_streaming),
                       request_deserializer=_lenient(handler.request_deserializer),
                       response_serializer=handler.response_serializer)

    def _guarded(self, method: str, behaviour, request_streaming: bool):
        """`behaviour` with its request checked first, of the same kind (grpc tells an async
        generator from a coroutine by its function)."""
        async def admit(request, context):
            if request_streaming:
                return self._checked(method, request, context)
            if isinstance(request, Undecodable):
                await self.refuse(method, request, context)
            return request

        if inspect.isasyncgenfunction(behaviour):
            async def stream(request, context):
                async for response in behaviour(await admit(request, context), context):
                    yield response
            return stream

        async def call(request, context):  # a coroutine (unary, or writing with context.write)
            return await behaviour(await admit(request, context), context)
        return call

    async def _checked(self, method: str, requests: AsyncIterator[Any], context) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Undecodable):
                await self.refuse(method, request, context)
            yield request
