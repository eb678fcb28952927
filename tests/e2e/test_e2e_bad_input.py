"""End-to-end refusals, failures and cancellations: each gets its code, and the gateway keeps serving."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import stage_fns
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    chain,
    heddle_cache_dir,
    py_model,
    scrape_metrics,
    serve_document,
    wait_until,
)

from heddle.clients.client import HeddleClient
from heddle.clients.tensors import to_tensor
from heddle.server.config.builder import document, onnx_device, onnx_model, pipeline, python_device, stage, tensor
from heddle.server.config.default import PREPROCESS
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 1 << 20
GOOD_TAG = 1000
IMAGE = np.zeros((1, 64, 64, 3), dtype=np.uint8)

IMAGE_U8 = tensor("image", "UINT8", (-1, 64, 64, 3))
CONFIG = document(
    server={"max_message_bytes": MAX_MESSAGE_BYTES},
    # Slow and gated stages get their own device, so they never hold up the light ones.
    devices=[onnx_device("cpu0", providers=["CPUExecutionProvider"]), python_device("py0", slots=2),
             python_device("pyslow", slots=2)],
    models=[onnx_model("cnn", "builtin:cnn"), {**PREPROCESS, "devices": ["py0"]},
            py_model("tail", "stage_fns:tail", devices=["py0"]), py_model("gate", "stage_fns:gate", devices=["pyslow"]),
            py_model("slow", "stage_fns:sleep_50ms", devices=["pyslow"]),
            py_model("boom", "stage_fns:boom", devices=["py0"])],
    pipelines=[pipeline("classify", [IMAGE_U8], {"logits": "cnn.logits"}, [
        stage("pre", "preprocess", image="input:image"), stage("cnn", "cnn", image="pre.image")]),
        chain("gated", ["gate"]), chain("slow_chain", ["slow", "tail"]), chain("boom_chain", ["boom", "tail"]),
        chain("tail_gate_tail", ["tail", "gate", "tail"])])


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
def stub(gateway: RunningServer) -> Iterator[pb_grpc.GatewayStub]:
    """The raw stub, for requests the client library would refuse to build."""
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.GatewayStub(channel)


@contextmanager
def while_good_request_runs(client: HeddleClient) -> Iterator[None]:
    """Hold a good request inside the gateway for the body; then it must succeed, and so must a new one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        good = pool.submit(client.infer, "gated", {"x": stage_fns.tagged(GOOD_TAG)})
        try:
            assert stage_fns.wait_for_call("gate", GOOD_TAG), "the good request never started"
            yield
        finally:
            stage_fns.open_gate()
        np.testing.assert_array_equal(good.result(timeout=30).outputs["y"], [GOOD_TAG])
    assert client.infer("classify", {"image": IMAGE}).outputs["logits"].shape == (1, 10)


def expect_error(call, code: grpc.StatusCode, *fragments: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == code, err.details()
    for fragment in fragments:
        assert fragment in err.details(), err.details()
    return err


BAD_REQUESTS = {
    "unknown pipeline": (
        pb.InferRequest(pipeline="nope", inputs=[to_tensor("image", IMAGE)]),
        grpc.StatusCode.NOT_FOUND, ["unknown pipeline 'nope'", "classify"]),
    "unknown input name": (
        pb.InferRequest(pipeline="classify", inputs=[to_tensor("img", IMAGE)]),
        grpc.StatusCode.INVALID_ARGUMENT, ["no input 'img'"]),
    "missing input": (
        pb.InferRequest(pipeline="classify"),
        grpc.StatusCode.INVALID_ARGUMENT, ["missing input(s) ['image']"]),
    "input given twice": (
        pb.InferRequest(pipeline="classify", inputs=[to_tensor("image", IMAGE)] * 2),
        grpc.StatusCode.INVALID_ARGUMENT, ["'image' is given twice"]),
    "wrong datatype": (
        pb.InferRequest(pipeline="classify", inputs=[to_tensor("image", IMAGE.astype(np.float32))]),
        grpc.StatusCode.INVALID_ARGUMENT, ["datatype FP32", "expects UINT8"]),
    "shape mismatch": (
        pb.InferRequest(pipeline="classify", inputs=[to_tensor("image", np.zeros((1, 32, 32, 3), np.uint8))]),
        grpc.StatusCode.INVALID_ARGUMENT, ["shape [1, 32, 32, 3]", "[-1, 64, 64, 3]"]),
    "raw byte length": (
        pb.InferRequest(pipeline="classify", inputs=[
            pb.Tensor(name="image", datatype="UINT8", shape=[1, 64, 64, 3], raw_data=bytes(100))]),
        grpc.StatusCode.INVALID_ARGUMENT, ["raw_data has 100 bytes", "needs 12288"]),
    "priority above range": (
        pb.InferRequest(pipeline="classify", inputs=[to_tensor("image", IMAGE)], priority=5),
        grpc.StatusCode.INVALID_ARGUMENT, ["priority 5 is outside 1..4"]),
    "negative priority": (
        pb.InferRequest(pipeline="classify", inputs=[to_tensor("image", IMAGE)], priority=-1),
        grpc.StatusCode.INVALID_ARGUMENT, ["priority -1 is outside 1..4"]),
    "negative deadline": (
        pb.InferRequest(pipeline="classify", inputs=[to_tensor("image", IMAGE)], deadline_ms=-5),
        grpc.StatusCode.INVALID_ARGUMENT, ["deadline_ms -5"]),
    "unknown output": (
        pb.InferRequest(pipeline="classify", inputs=[to_tensor("image", IMAGE)], outputs=["probs"]),
        grpc.StatusCode.INVALID_ARGUMENT, ["no output 'probs'"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_request_is_refused_with_its_code(case: str, client: HeddleClient, stub):
    """Each malformed request gets its status code and a message naming the problem."""
    request, code, fragments = BAD_REQUESTS[case]
    with while_good_request_runs(client):
        expect_error(lambda: stub.Infer(request, timeout=30), code, *fragments)


def test_stream_refusal_has_the_same_code(client: HeddleClient):
    """InferStream refuses an unknown pipeline with NOT_FOUND, as Infer does."""
    with while_good_request_runs(client):
        expect_error(lambda: list(client.infer_stream("nope", {"image": IMAGE}, timeout_s=30)),
                     grpc.StatusCode.NOT_FOUND, "unknown pipeline 'nope'")


def test_request_id_already_in_flight_is_refused(client: HeddleClient):
    """A second request reusing the id of one still in flight is ALREADY_EXISTS; the first still succeeds."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.infer, "gated", {"x": stage_fns.tagged(4)}, request_id="dup-id")
        try:
            assert stage_fns.wait_for_call("gate", 4)
            expect_error(lambda: client.infer("gated", {"x": stage_fns.tagged(5)}, request_id="dup-id",
                                              timeout_s=30),
                         grpc.StatusCode.ALREADY_EXISTS, "'dup-id'")
        finally:
            stage_fns.open_gate()
        assert first.result(timeout=30).request_id == "dup-id"


def test_message_over_the_maximum_is_resource_exhausted(client: HeddleClient):
    """A request larger than the configured max_message_bytes is RESOURCE_EXHAUSTED."""
    big = np.zeros((MAX_MESSAGE_BYTES // IMAGE.nbytes + 1, 64, 64, 3), dtype=np.uint8)
    with while_good_request_runs(client):
        expect_error(lambda: client.infer("classify", {"image": big}, timeout_s=30),
                     grpc.StatusCode.RESOURCE_EXHAUSTED, str(MAX_MESSAGE_BYTES))


def test_deadline_too_short_for_a_slow_stage_is_deadline_exceeded(client: HeddleClient):
    """deadline_ms shorter than a 50 ms stage ends DEADLINE_EXCEEDED, and its next stage never runs."""
    with while_good_request_runs(client):
        expect_error(lambda: client.infer("slow_chain", {"x": stage_fns.tagged(5)}, deadline_ms=10,
                                          timeout_s=30),
                     grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
    assert ("tail", 5) not in stage_fns.calls()


@pytest.mark.slow
def test_grpc_timeout_is_deadline_exceeded(client: HeddleClient, gateway: RunningServer):
    """A gRPC timeout that runs out while a stage is held gives DEADLINE_EXCEEDED; the server forgets it."""
    with while_good_request_runs(client):
        expect_error(lambda: client.infer("gated", {"x": stage_fns.tagged(6)}, timeout_s=0.3),
                     grpc.StatusCode.DEADLINE_EXCEEDED)
        # Only the good request is left in flight.
        wait_until(lambda: gateway.server.runtime.in_flight == 1, "the timed-out request to end")


def test_python_stage_that_raises_is_internal(client: HeddleClient):
    """A stage whose function raises ends the request INTERNAL with the exception in the message."""
    with while_good_request_runs(client):
        expect_error(lambda: client.infer("boom_chain", {"x": stage_fns.tagged(8)}, timeout_s=30),
                     grpc.StatusCode.INTERNAL, "ZeroDivisionError", "boom on tag 8")
    assert ("tail", 8) not in stage_fns.calls()


def cancelled_count(gateway: RunningServer, pipeline: str) -> float:
    key = ("heddle_requests_total", frozenset({"pipeline": pipeline, "status": "CANCELLED"}.items()))
    return scrape_metrics(gateway.metrics_url).get(key, 0.0)


def finish_after_cancel(client: HeddleClient, gateway: RunningServer, tag: int, before: float) -> None:
    """Wait for the server to drop the cancelled request, release its running stage, then prove a
    later request runs all its stages while the cancelled one never reached its last stage."""
    wait_until(lambda: gateway.server.runtime.in_flight == 0, "the server to drop the cancelled request")
    assert cancelled_count(gateway, "tail_gate_tail") == before + 1
    stage_fns.open_gate()
    # One slot behind the cancelled request's stage: if that request's last stage had been
    # queued it would have run before this request's, and the device runs these in order.
    client.infer("tail_gate_tail", {"x": stage_fns.tagged(tag + 1)}, timeout_s=30)
    tails = [t for name, t in stage_fns.calls() if name == "tail"]
    assert tails.count(tag) == 1 and tails.count(tag + 1) == 2, stage_fns.calls()


def test_cancelled_unary_call_drops_its_queued_stages(client: HeddleClient, stub, gateway: RunningServer):
    """call.cancel() on a unary Infer gives CANCELLED; the request's later stage never runs."""
    before = cancelled_count(gateway, "tail_gate_tail")
    call = stub.Infer.future(pb.InferRequest(pipeline="tail_gate_tail", inputs=[to_tensor("x", stage_fns.tagged(20))]))
    assert stage_fns.wait_for_call("gate", 20)
    assert call.cancel()
    assert call.code() == grpc.StatusCode.CANCELLED
    finish_after_cancel(client, gateway, 20, before)


def test_closed_stream_cancels_the_request(client: HeddleClient, gateway: RunningServer):
    """Closing an InferStream after its first event cancels the request; its later stages never run."""
    before = cancelled_count(gateway, "tail_gate_tail")
    events = client.infer_stream("tail_gate_tail", {"x": stage_fns.tagged(30)})
    first = next(events)
    assert first.stage == "s0" and first.status == "OK"
    assert stage_fns.wait_for_call("gate", 30)
    events.close()
    finish_after_cancel(client, gateway, 30, before)
