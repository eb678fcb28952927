"""Admission refusals' retry hints end to end: a real gateway under a power budget below its idle
power refuses low priority RESOURCE_EXHAUSTED with `retry-after-ms`, which the heddle clients
expose as HeddleError.retry_after_s, the load generator records, and KServe sends as well."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from server_fixtures import RunningServer, heddle_cache_dir  # noqa: F401  (fixtures are found by name)
from test_e2e_power import TOP, power_server, wait_for_state  # noqa: F401  (power_server is a fixture)
from test_loadgen import _run
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.client import HeddleClient, HeddleError
from heddle.clients.report import summarize
from heddle.clients.scenarios import App, Scenario
from heddle.v1 import heddle_pb2_grpc as pb_grpc

IMAGE = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def refusing(power_server: RunningServer) -> RunningServer:  # noqa: F811
    """The power gateway once its controller refuses priority 1 (the class these tests send refused)."""
    with grpc.insecure_channel(power_server.target) as channel:
        wait_for_state(pb_grpc.AdminStub(channel), "refuse_low")
    return power_server


def test_sync_client_error_carries_the_hint(refusing: RunningServer) -> None:
    """A refused request raises HeddleError RESOURCE_EXHAUSTED whose retry_after_s is the trailer's
    milliseconds in seconds; the top class is still served."""
    with HeddleClient(refusing.target) as client:
        with pytest.raises(HeddleError) as err:
            client.infer("classify", {"image": IMAGE}, priority=1)
        assert client.infer("classify", {"image": IMAGE}, priority=TOP).energy_source == "estimated"
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "power budget" in err.value.details()
    hint_ms = dict(err.value.trailing_metadata())["retry-after-ms"]
    assert err.value.retry_after_s == int(hint_ms) / 1e3 > 0


def test_async_client_and_stream_errors_carry_the_hint(refusing: RunningServer) -> None:
    """The asyncio client's unary and streamed refusals both carry retry_after_s."""
    async def scenario() -> list[HeddleError]:
        errors = []
        async with AsyncHeddleClient(refusing.target) as client:
            try:
                await client.infer("classify", {"image": IMAGE}, priority=1)
            except HeddleError as err:
                errors.append(err)
            try:
                async for _ in client.infer_stream("classify", {"image": IMAGE}, priority=1):
                    pass
            except HeddleError as err:
                errors.append(err)
        return errors

    errors = asyncio.run(scenario())
    assert [e.code() for e in errors] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert all(e.retry_after_s is not None and e.retry_after_s > 0 for e in errors)


@pytest.mark.slow
def test_loadgen_records_hints_and_the_report_counts_them(refusing: RunningServer) -> None:
    """Refused records carry retry_after_ms; the summary counts them by status with their hints."""
    low = App("low", "classify", "poisson", priority=1, rate_hz=20.0)
    top = App("top", "classify", "poisson", priority=TOP, rate_hz=5.0)
    scenario = Scenario("s", (low, top))

    result = asyncio.run(_run(refusing.target, scenario, 0.5, seed=1))
    refused = [r for r in result.records if r.app == "low"]
    assert refused and all(r.status == "RESOURCE_EXHAUSTED" and r.retry_after_ms > 0 for r in refused)
    served = [r for r in result.records if r.app == "top"]
    assert all(r.status == "OK" and r.retry_after_ms is None for r in served)
    s = summarize(result.records, result.window_s, ["low", "top"])
    rejections = s["apps"]["low"]["rejections"]["RESOURCE_EXHAUSTED"]
    assert rejections["count"] == rejections["with_retry_hint"] == len(refused)
    assert rejections["retry_after_ms"]["max"] == max(r.retry_after_ms for r in refused)
    assert s["apps"]["top"]["energy"]["label"] == "estimated"


KSERVE_LOW, KSERVE_TOP = TOP, 1  # KServe counts 1 as the most urgent: 4 is heddle's level 1


def _kserve_request(priority: int) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name="classify", id="k1")
    request.inputs.add(name="image", datatype="UINT8", shape=list(IMAGE.shape))
    request.raw_input_contents.append(IMAGE.tobytes())
    request.parameters["priority"].int64_param = priority
    return request


def test_kserve_refusal_sends_the_same_trailer(refusing: RunningServer) -> None:
    """ModelInfer refused at admission ends RESOURCE_EXHAUSTED with retry-after-ms, as heddle.v1 does;
    the top class is answered."""
    with grpc.insecure_channel(refusing.target) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(_kserve_request(KSERVE_LOW), timeout=10)
        assert stub.ModelInfer(_kserve_request(KSERVE_TOP), timeout=10).id == "k1"
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(err.value.trailing_metadata())["retry-after-ms"]) > 0


def test_kserve_stream_refusal_carries_the_hint_in_parameters(refusing: RunningServer) -> None:
    """On ModelStreamInfer, a refused request's error response carries retry-after-ms as a parameter."""
    answers: queue.Queue = queue.Queue()
    client = tgrpc.InferenceServerClient(refusing.target)
    image = tgrpc.InferInput("image", list(IMAGE.shape), "UINT8")
    image.set_data_from_numpy(IMAGE)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("classify", [image], request_id="s1", priority=KSERVE_LOW)
        result, error = answers.get(timeout=20)
    finally:
        client.stop_stream()
        client.close()
    assert result is None and "RESOURCE_EXHAUSTED" in str(error)
    # tritonclient keeps only the message of an error response; read the raw stream for the rest.
    with grpc.insecure_channel(refusing.target) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        (response,) = list(stub.ModelStreamInfer(iter([_kserve_request(KSERVE_LOW)]), timeout=10))
    assert response.error_message.startswith("RESOURCE_EXHAUSTED")
    assert response.infer_response.parameters["retry-after-ms"].int64_param > 0
