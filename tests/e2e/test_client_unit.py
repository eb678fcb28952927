"""Tests for the heddle clients and `heddle infer`/`heddle list` against a small real gRPC server.

The server here implements heddle.v1 Gateway and Admin in a few lines: it computes its outputs
from the inputs (floats doubled, ints plus one, bools negated, bytes reversed) so every decoded
value proves the round trip, and it records the metadata and deadline it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.client import HeddleClient, InferResult, StageEvent, StageTiming
from heddle.clients.infer_cli import add_infer_parser, add_list_parser, generate_input
from heddle.clients.tensors import from_tensor, to_tensor
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc

TOKEN = "s3cret"
TensorInfo = pb.TensorInfo
PIPELINE = pb.PipelineInfo(
    name="compute",
    inputs=[TensorInfo(name="x", datatype="FP32", shape=[-1, 4]),
            TensorInfo(name="ids", datatype="INT64", shape=[-1, -1]),
            TensorInfo(name="flag", datatype="BOOL", shape=[3]),
            TensorInfo(name="text", datatype="BYTES", shape=[-1])],
    outputs=[TensorInfo(name="x", datatype="FP32", shape=[-1, 4])],
    stages=[pb.PipelineInfo.Stage(name="s_x", model="m")],
)


def _compute(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:
        return np.array([v[::-1] for v in array.flat], dtype=object).reshape(array.shape)
    if array.dtype == bool:
        return ~array
    return array * 2 if array.dtype.kind == "f" else array + 1


class FakeGateway(heddle_pb2_grpc.GatewayServicer, heddle_pb2_grpc.AdminServicer):
    """Gateway + Admin whose answers are computed from each request."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.time_remaining_s: list[float | None] = []
        self.stream_cancelled = threading.Event()
        self.policy = "fcfs"

    def _record(self, context: grpc.ServicerContext) -> None:
        self.metadata.append(dict(context.invocation_metadata()))
        self.time_remaining_s.append(context.time_remaining())

    def _respond(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        if request.pipeline != PIPELINE.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown pipeline {request.pipeline!r}")
        wanted = set(request.outputs)
        outputs = [to_tensor(t.name, _compute(from_tensor(t))) for t in request.inputs
                   if not wanted or t.name in wanted]
        stages = [pb.StageResult(stage=f"s_{t.name}", model="m", device="cpu0",
                                 status=pb.STAGE_STATUS_OK, queue_ms=i + 0.5, compute_ms=2.0,
                                 start_offset_ms=i, end_offset_ms=i + 2.5)
                  for i, t in enumerate(request.inputs)]
        stages.append(pb.StageResult(stage="post", model="m", device="cpu0",
                                     status=pb.STAGE_STATUS_FAILED, error="post exploded"))
        return pb.InferResponse(
            request_id=request.request_id or "generated-1", pipeline=request.pipeline,
            outputs=outputs, stages=stages, total_ms=request.deadline_ms + 1.0,
            priority=request.priority,
            deadline_missed=0 < request.deadline_ms < 1.0,
        )

    def Infer(self, request, context):
        self._record(context)
        return self._respond(request, context)

    def InferStream(self, request, context):
        self._record(context)
        context.add_callback(self.stream_cancelled.set)
        response = self._respond(request, context)
        for stage in response.stages:
            yield pb.InferEvent(stage_done=stage)
            if request.request_id == "hang":
                self.stream_cancelled.wait(10)  # held open until the client cancels
                return
        yield pb.InferEvent(result=response)

    def ListPipelines(self, request, context):
        self._record(context)
        return pb.ListPipelinesResponse(pipelines=[PIPELINE])

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(
            name="m", backend="python", kind="python", inputs=PIPELINE.inputs[:1],
            outputs=PIPELINE.outputs, devices=["cpu0"])])

    def ListDevices(self, request, context):
        return pb.ListDevicesResponse(devices=[pb.DeviceInfo(
            id="cpu0", kind="cpu", backend="onnxruntime", providers=["CPUExecutionProvider"],
            slots=2, running=1, queued=3, healthy=True)])

    def _check_token(self, context: grpc.ServicerContext) -> None:
        self._record(context)
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin token missing or wrong")

    def GetPolicy(self, request, context):
        self._check_token(context)
        return pb.PolicyInfo(policy=self.policy, available=["fcfs", "edf"])

    def SetPolicy(self, request, context):
        self._check_token(context)
        self.policy = request.policy
        return pb.PolicyInfo(policy=self.policy, available=["fcfs", "edf"])


def _start(servicer: FakeGateway, port_spec: str = "127.0.0.1:0",
           creds: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    heddle_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    heddle_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    port = server.add_secure_port(port_spec, creds) if creds else server.add_insecure_port(port_spec)
    server.start()
    return server, port


@pytest.fixture
def gateway() -> Iterator[tuple[str, FakeGateway]]:
    servicer = FakeGateway()
    server, port = _start(servicer)
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


INPUTS = {
    "x": np.arange(8, dtype=np.float32).reshape(2, 4),
    "ids": np.array([[1, 2, 3]], dtype=np.int64),
    "flag": np.array([True, False, True]),
    "text": np.array([b"abc", b""], dtype=object),
}


def _check_result(result: InferResult, *, priority: int) -> None:
    assert result.pipeline == "compute" and result.priority == priority
    np.testing.assert_array_equal(result.outputs["x"], INPUTS["x"] * 2)
    assert result.outputs["x"].dtype == np.float32
    np.testing.assert_array_equal(result.outputs["ids"], [[2, 3, 4]])
    assert result.outputs["flag"].tolist() == [False, True, False]
    assert result.outputs["text"].tolist() == [b"cba", b""]
    assert result.stages[0] == StageTiming("s_x", "m", "cpu0", "OK", 0.5, 2.0, 0.0, 2.5, "")
    assert (result.stages[-1].status, result.stages[-1].error) == ("FAILED", "post exploded")


class TestSyncClient:
    def test_infer_decodes_outputs_and_stages(self, gateway) -> None:
        """infer sends every field and decodes outputs, stage timings and the request summary."""
        target, _ = gateway
        with HeddleClient(target) as client:
            result = client.infer("compute", INPUTS, priority=3, deadline_ms=0.5, request_id="r1")
        _check_result(result, priority=3)
        assert (result.request_id, result.total_ms, result.deadline_missed) == ("r1", 1.5, True)

    def test_outputs_filter_and_timeout(self, gateway) -> None:
        """`outputs` limits what comes back and `timeout_s` becomes the call's gRPC deadline."""
        target, servicer = gateway
        with HeddleClient(target) as client:
            result = client.infer("compute", INPUTS, outputs=["ids"], timeout_s=30)
        assert list(result.outputs) == ["ids"] and result.request_id == "generated-1"
        # The deadline arrived (not none); its precision is gRPC's: under load the server's
        # figure was seen 0.1 s over the 30 s sent, so allow a second rather than flake.
        assert 0 < servicer.time_remaining_s[-1] <= 31

    def test_stream_yields_stages_then_result(self, gateway) -> None:
        """infer_stream yields one StageEvent per stage, in order, then the InferResult."""
        target, _ = gateway
        with HeddleClient(target) as client:
            events = list(client.infer_stream("compute", INPUTS, priority=1))
        assert [type(e) for e in events] == [StageEvent] * 5 + [InferResult]
        assert [e.stage for e in events[:-1]] == ["s_x", "s_ids", "s_flag", "s_text", "post"]
        _check_result(events[-1], priority=1)

    def test_closing_the_stream_cancels_the_call(self, gateway) -> None:
        """Closing the iterator after the first event cancels the RPC on the server."""
        target, servicer = gateway
        with HeddleClient(target) as client:
            stream = client.infer_stream("compute", INPUTS, request_id="hang")
            assert isinstance(next(stream), StageEvent)
            stream.close()
            assert servicer.stream_cancelled.wait(10)

    def test_errors_propagate_as_rpc_errors(self, gateway) -> None:
        """A server error surfaces as grpc.RpcError with the server's code and details."""
        target, _ = gateway
        with HeddleClient(target) as client, pytest.raises(grpc.RpcError) as err:
            client.infer("nope", INPUTS)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "unknown pipeline 'nope'"

    def test_max_message_bytes_limits_requests(self, gateway) -> None:
        """A request larger than max_message_bytes fails with RESOURCE_EXHAUSTED."""
        target, _ = gateway
        with HeddleClient(target, max_message_bytes=1024) as client, pytest.raises(grpc.RpcError) as err:
            client.infer("compute", {"x": np.zeros((512, 4), np.float32)})
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    def test_lists(self, gateway) -> None:
        """The list methods return the server's PipelineInfo, ModelInfo and DeviceInfo messages."""
        target, _ = gateway
        with HeddleClient(target) as client:
            assert client.list_pipelines() == [PIPELINE]
            assert [m.name for m in client.list_models()] == ["m"]
            assert client.list_devices()[0].providers == ["CPUExecutionProvider"]

    def test_admin_calls_send_the_token(self, gateway) -> None:
        """With a token, admin calls carry `authorization: Bearer <token>` and succeed."""
        target, servicer = gateway
        with HeddleClient(target, token=TOKEN) as client:
            assert client.get_policy().policy == "fcfs"
            assert client.set_policy("edf").policy == "edf"
        assert servicer.metadata[-1]["authorization"] == f"Bearer {TOKEN}"
        assert servicer.policy == "edf"

    def test_admin_without_token_is_unauthenticated(self, gateway) -> None:
        """Without a token no authorization metadata is sent, so the admin call is refused."""
        target, servicer = gateway
        with HeddleClient(target) as client, pytest.raises(grpc.RpcError) as err:
            client.get_policy()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" not in servicer.metadata[-1]

    def test_half_a_client_certificate_is_refused(self) -> None:
        """A private key without a certificate chain (or the reverse) raises ValueError."""
        with pytest.raises(ValueError, match="both private_key and certificate_chain"):
            HeddleClient("127.0.0.1:1", private_key=b"key")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_root_certificates(tmp_path: Path) -> None:
    """With root_certificates the client speaks TLS and trusts only that root."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, port = _start(FakeGateway(), "127.0.0.1:0", creds)
    try:
        with HeddleClient(f"localhost:{port}", root_certificates=cert.read_bytes()) as client:
            assert client.list_pipelines() == [PIPELINE]
    finally:
        server.stop(None)


class TestAsyncClient:
    def test_infer_stream_lists_and_admin(self, gateway) -> None:
        """The asyncio client decodes infer and stream results, lists, and sends the admin token."""
        target, servicer = gateway

        async def scenario() -> tuple:
            async with AsyncHeddleClient(target, token=TOKEN) as client:
                result = await client.infer("compute", INPUTS, priority=2, request_id="a1")
                events = [e async for e in client.infer_stream("compute", INPUTS, priority=2)]
                lists = (await client.list_pipelines(), await client.list_models(),
                         await client.list_devices())
                policy = await client.set_policy("edf")
                return result, events, lists, policy

        result, events, lists, policy = asyncio.run(scenario())
        _check_result(result, priority=2)
        assert result.request_id == "a1"
        assert [type(e) for e in events] == [StageEvent] * 5 + [InferResult]
        _check_result(events[-1], priority=2)
        assert lists[0] == [PIPELINE] and lists[1][0].name == "m" and lists[2][0].id == "cpu0"
        assert policy.policy == "edf" and servicer.metadata[-1]["authorization"] == f"Bearer {TOKEN}"

    def test_errors_and_stream_cancellation(self, gateway) -> None:
        """Async errors carry the server's code, and closing a stream early cancels the call."""
        target, servicer = gateway

        async def scenario() -> grpc.StatusCode:
            async with AsyncHeddleClient(target) as client:
                stream = client.infer_stream("compute", INPUTS, request_id="hang")
                assert isinstance(await anext(stream), StageEvent)
                await stream.aclose()
                try:
                    await client.get_policy()
                except grpc.RpcError as err:
                    return err.code()
            raise AssertionError("get_policy without a token succeeded")

        assert asyncio.run(scenario()) == grpc.StatusCode.UNAUTHENTICATED
        assert servicer.stream_cancelled.wait(10)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="heddle")
    sub = parser.add_subparsers(dest="command", required=True)
    add_infer_parser(sub)
    add_list_parser(sub)
    return parser.parse_args(argv)


def _run(argv: list[str]) -> int:
    args = _parse(argv)
    return args.func(args)


class TestInferCli:
    def test_generated_inputs_table(self, gateway, capsys) -> None:
        """Without --input, every declared input is generated and the outputs and stages are tabled."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--priority", "2"]) == 0
        out = capsys.readouterr().out
        assert "pipeline compute  request generated-1  priority 2" in out
        lines = out.splitlines()
        assert any(line.split()[:4] == ["x", "FP32", "[1,", "4]"] for line in lines)
        assert any(line.split()[:4] == ["ids", "INT64", "[1,", "16]"] for line in lines)
        assert any(line.split()[:3] == ["flag", "BOOL", "[3]"] for line in lines)
        assert any(line.split()[:3] == ["text", "BYTES", "[1]"] for line in lines)
        assert "stage   model  device  status  queue ms  compute ms  start ms  end ms  error" in out
        assert any(line.split()[:4] == ["post", "m", "cpu0", "FAILED"] for line in lines)
        assert lines[-1] == "total 1.000 ms"

    def test_json_matches_the_seeded_generator(self, gateway, capsys) -> None:
        """--json prints one document whose outputs are the server's function of the seeded inputs."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--json", "--seed", "5"]) == 0
        doc = json.loads(capsys.readouterr().out)
        rng = np.random.default_rng(5)
        expected = {t.name: generate_input(t, rng) for t in PIPELINE.inputs}
        outputs = {o["name"]: o for o in doc["outputs"]}
        assert outputs["x"]["shape"] == [1, 4] and outputs["ids"]["shape"] == [1, 16]
        np.testing.assert_allclose(outputs["x"]["values"], (expected["x"] * 2).ravel(), rtol=1e-6)
        assert all(1 <= v <= 100 for v in outputs["ids"]["values"])
        assert outputs["ids"]["values"] == (expected["ids"] + 1).ravel().tolist()
        assert doc["stages"][-1]["error"] == "post exploded" and doc["priority"] == 0

    def test_explicit_inputs(self, gateway, capsys, tmp_path: Path) -> None:
        """JSON literals take the declared datatype, and .npy files are sent as saved."""
        target, _ = gateway
        np.save(tmp_path / "ids.npy", np.array([[7, 8]], dtype=np.int64))
        argv = ["infer", "compute", "--target", target, "--json", "--input", "x=[[1, 2, 3, 4]]",
                "--input", f"ids={tmp_path / 'ids.npy'}", "--input", 'text=["hi"]',
                "--output", "x", "--output", "ids", "--output", "text"]
        assert _run(argv) == 0
        outputs = {o["name"]: o for o in json.loads(capsys.readouterr().out)["outputs"]}
        assert (outputs["x"]["datatype"], outputs["x"]["values"]) == ("FP32", [2, 4, 6, 8])
        assert outputs["ids"]["values"] == [8, 9] and outputs["text"]["values"] == ["ih"]

    def test_stream_prints_each_stage(self, gateway, capsys) -> None:
        """--stream prints a line per finished stage before the result table."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--stream"]) == 0
        lines = capsys.readouterr().out.splitlines()
        stage_lines = [i for i, line in enumerate(lines) if line.startswith("stage done: ")]
        assert len(stage_lines) == 5 and stage_lines == list(range(5))
        assert "error=post exploded" in lines[4]
        assert lines[6].startswith("pipeline compute")

    def test_stream_json_lines(self, gateway, capsys) -> None:
        """--stream --json prints one JSON object per event, the result last."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--stream", "--json"]) == 0
        docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [d["event"] for d in docs] == ["stage_done"] * 5 + ["result"]

    def test_rpc_error(self, gateway, capsys) -> None:
        """An RPC error prints `error: CODE: details` to stderr and returns 1."""
        target, _ = gateway
        assert _run(["infer", "nope", "--target", target]) == 1
        assert capsys.readouterr().err == "error: NOT_FOUND: unknown pipeline 'nope'\n"

    def test_bad_input_argument(self, gateway, capsys) -> None:
        """An --input that is neither NAME=FILE.npy nor NAME=JSON returns 2 with a message."""
        target, _ = gateway
        assert _run(["infer", "compute", "--target", target, "--input", "x=[1,"]) == 2
        assert capsys.readouterr().err.startswith("error: --input x: '[1,' is neither")

    def test_list(self, gateway, capsys) -> None:
        """`list` prints a table, or JSON with integer shapes."""
        target, _ = gateway
        assert _run(["list", "devices", "--target", target]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["device", "kind", "backend", "providers", "slots", "running",
                                    "queued", "healthy"]
        assert lines[1].split() == ["cpu0", "cpu", "onnxruntime", "CPUExecutionProvider", "2", "1",
                                    "3", "True"]
        assert _run(["list", "pipelines", "--target", target, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["pipelines"][0]["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}


def test_energy_and_llm_stage_fields_are_decoded():
    """Energy per stage and request, and LLM token stats, reach the client's dataclasses."""
    from heddle.clients.client import result_from_proto
    from heddle.v1 import heddle_pb2 as pb

    msg = pb.InferResponse(
        request_id="r", pipeline="p", energy_j=1.5, energy_source="estimated",
        stages=[pb.StageResult(stage="s", energy_j=0.5, energy_source="estimated", tokens=7,
                               ttft_ms=3.0, tpot_ms=1.25)],
    )
    result = result_from_proto(msg)
    assert (result.energy_j, result.energy_source) == (1.5, "estimated")
    stage = result.stages[0]
    assert (stage.energy_j, stage.energy_source, stage.tokens, stage.ttft_ms, stage.tpot_ms) == (
        0.5, "estimated", 7, 3.0, 1.25)


def test_retry_hint_is_read_only_when_the_server_gave_a_readable_one():
    """retry-after-ms in ms (str or bytes) becomes seconds; absent, garbage or negative is None."""
    from heddle.clients.errors import retry_after_s

    assert retry_after_s([("other", "1"), ("retry-after-ms", "250")]) == 0.25
    assert retry_after_s([("retry-after-ms", b"1500")]) == 1.5
    assert retry_after_s([("retry-after-ms", "soon")]) is None
    assert retry_after_s([("retry-after-ms", "-5")]) is None
    assert retry_after_s([]) is None
