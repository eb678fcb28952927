"""DecodeGuard: an undecodable request is INVALID_ARGUMENT, logged one line at most every period."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from structlog.testing import capture_logs

from heddle.server.frontends.decode_guard import DecodeGuard, Undecodable


class _Refused(Exception):
    pass


class _Context:
    """abort() as grpc's raises: the handler goes no further."""

    def __init__(self) -> None:
        self.aborts: list[tuple[grpc.StatusCode, str]] = []

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborts.append((code, details))
        raise _Refused


def test_refusals_are_logged_once_a_period_with_a_count():
    """Five junk requests in one period give one warning; the next period's names the four left out."""
    now = [0.0]
    guard = DecodeGuard(log_every_s=10.0, clock=lambda: now[0])
    context = _Context()

    async def refuse_at(t: float) -> None:
        now[0] = t
        with pytest.raises(_Refused):
            await guard.refuse("/m", Undecodable("DecodeError: junk"), context)

    with capture_logs() as logs:
        for t in (0.0, 1.0, 2.0, 3.0, 9.9, 10.0):
            asyncio.run(refuse_at(t))
    warnings = [e for e in logs if e["event"] == "undecodable request"]
    assert [(w["left_out"], w["method"]) for w in warnings] == [(0, "/m"), (4, "/m")]
    assert {code for code, _ in context.aborts} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all("not a valid message for /m: DecodeError: junk" in d for _, d in context.aborts)


def test_handlers_registered_through_the_registry_are_guarded():
    """A real grpc.aio server, no interceptor: junk bytes to a method registered as a registered
    method (the generated add_*_to_server's way) and to one served only by a generic handler
    both end INVALID_ARGUMENT naming the method; a valid message still reaches the servicer."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    async def scenario() -> list[tuple[grpc.StatusCode, str]]:
        server = grpc.aio.server()
        registry = DecodeGuard().registry(server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), registry)
        echo = grpc.unary_unary_rpc_method_handler(
            lambda request, context: _echo(request), request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckRequest.SerializeToString)
        registry.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", {"Echo": echo}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        seen = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for method in ("/grpc.health.v1.Health/Check", "/t.Echo/Echo"):
                    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
                    try:
                        await call(b"\xff\xff\xff", timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        seen.append((exc.code(), exc.details()))
                check = channel.unary_unary("/t.Echo/Echo", request_serializer=None, response_deserializer=None)
                good = health_pb2.HealthCheckRequest(service="x").SerializeToString()
                assert await check(good, timeout=10) == good
        finally:
            await server.stop(None)
        return seen

    seen = asyncio.run(scenario())
    assert [code for code, _ in seen] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert "for /grpc.health.v1.Health/Check" in seen[0][1] and "for /t.Echo/Echo" in seen[1][1]


async def _echo(request):
    return request
