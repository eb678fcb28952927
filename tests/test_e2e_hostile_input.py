"""What a hostile client sends (absurd deadlines, huge ids, names and shapes, out-of-range options)
gets a precise status against a real server, and leaves the server working and holding nothing."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

import stage_fns
from heddle.clients.client import HeddleClient
from heddle.clients.tensors import to_tensor
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer, chain_toml, heddle_cache_dir, py_model_toml, serve_toml,
)

# Its own server: on code without these fixes, a NaN deadline disables shedding for the server's life.
CONFIG = f"""
[[devices]]
id = "py0"
backend = "python"
slots = 2

[[devices]]
id = "pyslow"
backend = "python"
slots = 2

{py_model_toml("tail", "stage_fns:tail", devices=["py0"])}
{py_model_toml("slow", "stage_fns:sleep_50ms", devices=["pyslow"])}
{chain_toml("fast", ["tail"])}
{chain_toml("slow_chain", ["slow", "tail"])}
"""


@pytest.fixture(scope="module")
def gateway(heddle_cache_dir: Path) -> Iterator[RunningServer]:
    with serve_toml(CONFIG, cache_dir=str(heddle_cache_dir)) as running:
        yield running


@pytest.fixture()
def client(gateway: RunningServer) -> Iterator[HeddleClient]:
    stage_fns.reset()
    with gateway.client() as c:
        yield c


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


def test_finished_requests_leave_the_core_empty(client, gateway):
    """1,000 requests with 256-byte ids and a 1 h deadline leave nothing in the core once answered
    (the deadline heap used to keep each request, id and all, until its deadline passed)."""
    for i in range(1000):
        rid = f"{i:06d}".ljust(256, "r")
        assert client.infer("fast", {"x": stage_fns.tagged(i)}, request_id=rid,
                            deadline_ms=3_600_000).request_id == rid
    assert core_footprint(gateway) == dict.fromkeys(core_footprint(gateway), 0)


def test_huge_request_ids_cost_no_memory(client):
    """1,000 requests with 100 KB ids and a 1 h deadline are refused and grow the server's memory by
    far less than the 100 MB their ids add up to (they were once all kept until the deadline)."""
    base = "i" * 100_000

    def send(n: int) -> None:
        for i in range(n):
            code, _ = code_of(lambda: client.infer("fast", {"x": stage_fns.tagged(i)},
                                                   request_id=f"{base}{i}", deadline_ms=3_600_000))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
    send(100)  # the allocator's first growth for 100 KB messages (about 8 MB) is not what is measured
    before = rss_bytes()
    send(1000)
    assert rss_bytes() - before < 20 << 20
