"""What a hostile client sends (absurd deadlines, huge ids, names and shapes, out-of-range options)
gets a precise status against a real server, and leaves the server working and holding nothing."""

from __future__ import annotations

import asyncio
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import stage_fns
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    chain,
    default_config,
    default_server,
    heddle_cache_dir,
    py_model,
    serve_document,
    wait_until,
)
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from heddle.clients.client import HeddleClient
from heddle.clients.tensors import to_tensor
from heddle.server.config.builder import document, python_device
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

# Its own server: on code without these fixes, a NaN deadline disables shedding for the server's life.
CONFIG = document(
    devices=[python_device("py0", slots=2), python_device("pyslow", slots=2)],
    models=[py_model("tail", "stage_fns:tail", devices=["py0"]),
            py_model("slow", "stage_fns:sleep_50ms", devices=["pyslow"]),
            py_model("gate", "stage_fns:gate", devices=["pyslow"])],
    pipelines=[chain("fast", ["tail"]), chain("slow_chain", ["slow", "tail"]), chain("gated", ["gate"])])


@pytest.fixture(scope="module")
def gateway(heddle_cache_dir: Path) -> Iterator[RunningServer]:
    with serve_document(CONFIG, cache_dir=str(heddle_cache_dir)) as running:
        yield running


@pytest.fixture()
def client(gateway: RunningServer) -> Iterator[HeddleClient]:
    stage_fns.reset()
    with gateway.client() as c:
        try:
            yield c
        finally:
            stage_fns.open_gate()  # never leave a stage blocked into the next test


@pytest.fixture()
def channel(gateway: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.target) as ch:
        yield ch


def code_of(call) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call ends with (OK and "" when it succeeds)."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def fast_request(**fields) -> pb.InferRequest:
    return pb.InferRequest(pipeline="fast", inputs=[to_tensor("x", stage_fns.tagged(1))], **fields)


def kserve_request(**params) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name="fast", raw_input_contents=[stage_fns.tagged(1).tobytes()],
                                    inputs=[kpb.ModelInferRequest.InferInputTensor(
                                        name="x", datatype="FP32", shape=[1])])
    for key, (kind, value) in params.items():
        setattr(request.parameters[key], kind, value)
    return request


def assert_sheds(client: HeddleClient) -> None:
    """A 3 ms deadline on a 50 ms first stage still ends DEADLINE_EXCEEDED; its next stage never runs."""
    code, details = code_of(lambda: client.infer("slow_chain", {"x": stage_fns.tagged(7)}, deadline_ms=3,
                                                 timeout_s=30))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert ("tail", 7) not in stage_fns.calls()


# ---- deadlines -----------------------------------------------------------------------------

@pytest.mark.parametrize("deadline_ms", [math.nan, math.inf, -math.inf, 1e308, 86_400_001.0, -5.0])
def test_absurd_deadline_is_invalid_and_shedding_keeps_working(client, channel, deadline_ms: float):
    """NaN, inf, huge or negative deadline_ms is INVALID_ARGUMENT naming the field; afterwards a
    request with a 3 ms deadline on a slow stage is still shed (a NaN once stopped all shedding)."""
    stub = pb_grpc.GatewayStub(channel)
    refused = code_of(lambda: stub.Infer(fast_request(deadline_ms=deadline_ms), timeout=30))
    assert_sheds(client)
    assert refused[0] == grpc.StatusCode.INVALID_ARGUMENT, refused
    assert "deadline_ms" in refused[1] and "24 h" in refused[1], refused[1]


@pytest.mark.parametrize(("kind", "timeout_us"), [
    ("uint64_param", 2**64 - 1), ("int64_param", 2**63 - 1), ("int64_param", 86_400_000_001),
    ("int64_param", -1)])
def test_absurd_kserve_timeout_is_invalid(client, channel, kind: str, timeout_us: int):
    """A KServe `timeout` of 2**64-1 us, or any beyond 24 h, or negative, is INVALID_ARGUMENT naming it."""
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    code, details = code_of(lambda: stub.ModelInfer(kserve_request(timeout=(kind, timeout_us)), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'timeout'" in details, (code, details)
    assert_sheds(client)


def test_a_day_is_still_a_deadline(client, channel):
    """The longest allowed deadline (24 h) is served like any other, on both frontends."""
    assert client.infer("fast", {"x": stage_fns.tagged(2)}, deadline_ms=86_400_000).outputs["y"][0] == 2
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    stub.ModelInfer(kserve_request(timeout=("uint64_param", 86_400_000_000)), timeout=30)


# ---- request ids and what the core keeps -------------------------------------------------------

def rss_bytes() -> int:
    """Resident set size of this process, which runs the server."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def core_footprint(gateway: RunningServer) -> dict[str, int]:
    """The core's per-request structures, read on the loop that owns the core."""
    async def read():
        return gateway.server.runtime.core.footprint()
    return asyncio.run_coroutine_threadsafe(read(), gateway.loop).result(30)


def test_request_id_past_256_bytes_is_invalid(client, channel):
    """An id over 256 bytes (UTF-8) is INVALID_ARGUMENT naming the limit on both frontends; 256 is fine."""
    ok = "é" * 128  # 256 bytes
    assert client.infer("fast", {"x": stage_fns.tagged(3)}, request_id=ok).request_id == ok
    code, details = code_of(lambda: client.infer("fast", {"x": stage_fns.tagged(3)}, request_id=ok + "x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "request_id is 257 bytes" in details, details
    assert "256 bytes" in details
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    request = kserve_request()
    request.id = "k" * 100_000
    code, details = code_of(lambda: stub.ModelInfer(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "id is 100000 bytes" in details, details
    assert len(details) < 200


@pytest.mark.slow
def test_finished_requests_leave_the_core_empty(client, gateway):
    """1,000 requests with 256-byte ids and a 1 h deadline leave nothing in the core once answered
    (the deadline heap used to keep each request, id and all, until its deadline passed)."""
    for i in range(1000):
        rid = f"{i:06d}".ljust(256, "r")
        assert client.infer("fast", {"x": stage_fns.tagged(i)}, request_id=rid,
                            deadline_ms=3_600_000).request_id == rid
    assert core_footprint(gateway) == dict.fromkeys(core_footprint(gateway), 0)


def test_id_of_a_cancelled_request_is_taken_while_its_stage_runs(client, channel, gateway):
    """A client cancels a request while its stage runs and reuses the id at once: ALREADY_EXISTS
    until that stage returns (the new request was handed the old stage's completion, which then
    found no request and never freed its slot); then the id serves again, the core left empty."""
    call = pb_grpc.GatewayStub(channel).Infer.future(pb.InferRequest(
        pipeline="gated", request_id="reused", inputs=[to_tensor("x", stage_fns.tagged(40))]))
    assert stage_fns.wait_for_call("gate", 40)
    assert call.cancel()
    wait_until(lambda: gateway.server.runtime.in_flight == 0, "the cancelled request to end")
    code, details = code_of(lambda: client.infer("fast", {"x": stage_fns.tagged(41)}, request_id="reused",
                                                 timeout_s=30))
    stage_fns.open_gate()
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'reused'" in details, (code, details)
    wait_until(lambda: core_footprint(gateway)["running"] == 0, "the cancelled request's stage to return")
    assert client.infer("fast", {"x": stage_fns.tagged(42)}, request_id="reused").outputs["y"][0] == 42
    assert not any(core_footprint(gateway).values()), core_footprint(gateway)


@pytest.mark.slow
def test_huge_request_ids_cost_no_memory(client):
    """1,000 requests with 100 KB ids and a 1 h deadline are refused and grow the server's memory by
    far less than the 100 MB their ids add up to (they were once all kept until the deadline)."""
    base = "i" * 100_000

    def send(n: int) -> None:
        for i in range(n):
            code, _ = code_of(functools.partial(client.infer, "fast", {"x": stage_fns.tagged(i)},
                                                request_id=f"{base}{i}", deadline_ms=3_600_000))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
    send(100)  # the allocator's first growth for 100 KB messages (about 8 MB) is not what is measured
    before = rss_bytes()
    send(1000)
    assert rss_bytes() - before < 20 << 20


# ---- shapes, generation options and names --------------------------------------------------------

# Each with the raw bytes its shape would need: only the shape is wrong.
ABSURD_SHAPES = {"zero times 2**63-1": ([0, 2**63 - 1], 0), "64 dimensions": ([1] * 64, 4),
                 "2**20 * 2**20 * 2**20": ([2**20] * 3, 0)}


@pytest.mark.parametrize("case", list(ABSURD_SHAPES))
def test_absurd_shape_is_invalid_on_both_frontends(case: str, client, channel):
    """A shape numpy cannot hold ([0, 2**63-1], 64 dimensions, 2**60 elements) is INVALID_ARGUMENT
    naming the tensor on heddle.v1 and KServe (it was UNKNOWN "array is too big"), briefly."""
    shape, nbytes = ABSURD_SHAPES[case]
    tensor = pb.Tensor(name="x", datatype="FP32", shape=shape, raw_data=bytes(nbytes))
    v1 = code_of(lambda: pb_grpc.GatewayStub(channel).Infer(
        pb.InferRequest(pipeline="fast", inputs=[tensor]), timeout=30))
    request = kserve_request()
    request.raw_input_contents[0] = bytes(nbytes)
    request.inputs[0].shape[:] = shape
    kserve = code_of(lambda: kpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30))
    for code, details in (v1, kserve):
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "tensor 'x'" in details, (code, details)
        assert len(details) < 300
    assert client.infer("fast", {"x": stage_fns.tagged(4)}).outputs["y"][0] == 4


def chat_request(**options) -> pb.InferRequest:
    ids = np.array([[1, 2]], dtype=np.int64)
    return pb.InferRequest(pipeline="chat", inputs=[to_tensor("input_ids", ids)],
                           generation=pb.GenerationOptions(**{"max_new_tokens": 2, **options}))


@pytest.mark.parametrize(("options", "field"), [
    ({"seed": -1}, "generation.seed"), ({"temperature": 1e-300}, "generation.temperature"),
    ({"temperature": math.nan}, "generation.temperature"), ({"temperature": math.inf}, "generation.temperature"),
    ({"top_p": math.nan}, "generation.top_p"), ({"top_k": -1}, "generation.top_k"),
    ({"max_new_tokens": -3}, "generation.max_new_tokens")])
def test_out_of_range_generation_option_is_invalid(default_server: RunningServer, options, field):
    """A generation option out of range (seed -1 was INTERNAL from numpy) is INVALID_ARGUMENT naming it."""
    with grpc.insecure_channel(default_server.target) as ch:
        stub = pb_grpc.GatewayStub(ch)
        code, details = code_of(lambda: stub.Infer(chat_request(**options), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, (code, details)
        assert len(stub.Infer(chat_request(seed=7), timeout=30).outputs) == 1


@pytest.mark.parametrize(("param", "kind", "value"), [
    ("seed", "int64_param", -1), ("temperature", "double_param", math.nan),
    ("temperature", "double_param", 1e-300), ("max_new_tokens", "uint64_param", 2**64 - 1),
    ("top_k", "int64_param", -5), ("top_p", "double_param", 0.0)])
def test_out_of_range_kserve_generation_parameter_is_invalid(default_server: RunningServer, param, kind, value):
    """The same options as KServe parameters: INVALID_ARGUMENT naming the parameter."""
    request = kpb.ModelInferRequest(model_name="chat", raw_input_contents=[np.array([[1, 2]], np.int64).tobytes()],
                                    inputs=[kpb.ModelInferRequest.InferInputTensor(
                                        name="input_ids", datatype="INT64", shape=[1, 2])])
    request.parameters["max_new_tokens"].int64_param = 2
    setattr(request.parameters[param], kind, value)
    with grpc.insecure_channel(default_server.target) as ch:
        code, details = code_of(lambda: kpb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"parameter {param}" in details, (code, details)


HUGE = "n" * 16_384


def huge_name_requests() -> dict[str, tuple[str, object, grpc.StatusCode]]:
    """Requests that each carry a 16 KB client string the refusal would echo."""
    x = to_tensor("x", stage_fns.tagged(1))
    bad_input = kserve_request()
    bad_input.inputs[0].name = HUGE
    bad_model = kserve_request()
    bad_model.model_name = HUGE
    return {
        "pipeline": ("v1", pb.InferRequest(pipeline=HUGE, inputs=[x]), grpc.StatusCode.NOT_FOUND),
        "input name": ("v1", pb.InferRequest(pipeline="fast", inputs=[to_tensor(HUGE, stage_fns.tagged(1))]),
                       grpc.StatusCode.INVALID_ARGUMENT),
        "datatype": ("v1", pb.InferRequest(pipeline="fast", inputs=[
            pb.Tensor(name="x", datatype=HUGE, shape=[1], raw_data=bytes(4))]), grpc.StatusCode.INVALID_ARGUMENT),
        "output name": ("v1", pb.InferRequest(pipeline="fast", inputs=[x], outputs=[HUGE]),
                        grpc.StatusCode.INVALID_ARGUMENT),
        "kserve model": ("kserve", bad_model, grpc.StatusCode.NOT_FOUND),
        "kserve input name": ("kserve", bad_input, grpc.StatusCode.INVALID_ARGUMENT),
    }


@pytest.mark.parametrize("case", list(huge_name_requests()))
def test_huge_client_names_are_cut_in_messages(case: str, client, channel):
    """A 16 KB name is refused with its own code and a message that shows only its start (echoed
    whole, the message passed gRPC's metadata limit and the client got no status of ours)."""
    frontend, request, expected = huge_name_requests()[case]
    if frontend == "v1":
        call = lambda: pb_grpc.GatewayStub(channel).Infer(request, timeout=30)  # noqa: E731
    else:
        call = lambda: kpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)  # noqa: E731
    code, details = code_of(call)
    assert code == expected, (code, details[:200])
    assert "n" * 64 + "…" in details and len(details) < 1000, details[:200]
    assert client.infer("fast", {"x": stage_fns.tagged(5)}).outputs["y"][0] == 5
