"""Fuzz of the request decoders and validators, heddle.v1 and KServe: every hypothesis-made request
(tensors, shapes, dtypes, parameters, raw bytes, priorities, deadlines, ids, generation options)
gets an allowed status code, the server keeps serving, and its core holds nothing afterwards.
bench/fuzz_decoders.py runs the same cases by the hundred thousand."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fuzz_callers import ErrorLog, InProcess, OverGrpc
from fuzz_requests import ALLOWED_CODES, FUZZ_CONFIG, Case, cases
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_fixtures import RunningServer, heddle_cache_dir, serve_document  # noqa: F401

FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
st_streams = st.integers(0, 3).map(lambda n: n == 0)  # one case in four on a stream


@pytest.fixture(scope="module")
def gateway(heddle_cache_dir: Path) -> Iterator[RunningServer]:
    with serve_document(FUZZ_CONFIG, cache_dir=str(heddle_cache_dir)) as running:
        yield running


@pytest.fixture(scope="module")
def wire(gateway: RunningServer) -> Iterator[OverGrpc]:
    caller = OverGrpc(gateway.target)
    yield caller
    caller.close()


def serving_and_empty(gateway: RunningServer) -> None:
    """The server answers its health check SERVING and its core holds no request."""
    with grpc.insecure_channel(gateway.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    async def footprint():
        return gateway.server.runtime.core.footprint()
    held = asyncio.run_coroutine_threadsafe(footprint(), gateway.loop).result(30)
    assert not any(held.values()), held


@pytest.mark.slow
def test_in_process_cases_get_allowed_codes(gateway: RunningServer):
    """300 requests through the real servicers, validators, scheduler and stages, without the
    transport: each answered with an allowed code, never a crash, and no error in the server's log."""
    caller = InProcess(gateway.server, gateway.loop)

    @settings(FUZZ, max_examples=300)
    @given(case=cases(raw=False))
    def check(case: Case) -> None:
        answer = caller.answer(case)
        assert answer in ALLOWED_CODES, (answer, case)
    with ErrorLog() as errors:
        check()
    assert not errors.messages
    serving_and_empty(gateway)


@pytest.mark.slow
def test_wire_cases_get_allowed_codes(gateway: RunningServer, wire: OverGrpc):
    """200 requests and raw byte strings over gRPC (unary, and on InferStream / ModelStreamInfer
    one time in four): allowed codes only, no error in the server's log, still SERVING after."""
    @settings(FUZZ, max_examples=200)
    @given(case=cases(), stream=st_streams)
    def check(case: Case, stream: bool) -> None:
        answer = wire.answer(case, stream=stream and case.raw is None)
        assert answer in ALLOWED_CODES, (answer, case)
    with ErrorLog() as errors:
        check()
    assert not errors.messages
    serving_and_empty(gateway)


@pytest.mark.parametrize("method", ["/heddle.v1.Gateway/Infer", "/heddle.v1.Gateway/InferStream",
                                    "/inference.GRPCInferenceService/ModelInfer",
                                    "/inference.GRPCInferenceService/ModelStreamInfer"])
def test_junk_bytes_are_invalid_argument(gateway: RunningServer, method: str):
    """Bytes that are no protobuf message are INVALID_ARGUMENT naming the method, on unary and
    streaming methods (grpc answered UNKNOWN "Unexpected DecodeError" and logged a traceback)."""
    with grpc.insecure_channel(gateway.target) as channel:
        if method.endswith("ModelStreamInfer"):
            call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
            send = lambda: list(call(iter([b"\xff\xff\xff"]), timeout=30))  # noqa: E731
        else:
            streaming = method.endswith("InferStream")
            call = (channel.unary_stream if streaming else channel.unary_unary)(
                method, request_serializer=None, response_deserializer=None)
            send = (lambda: list(call(b"\x0a\x02\xc3\x28", timeout=30))) if streaming else (  # noqa: E731
                lambda: call(b"\x12\x80\x80\x80\x80\x10", timeout=30))
        with pytest.raises(grpc.RpcError) as err:
            send()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert method in err.value.details()
    serving_and_empty(gateway)
