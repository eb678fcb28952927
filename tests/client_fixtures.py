"""A small real heddle.v1 server for the client tests (tests/e2e/test_client_unit.py,
test_infer_cli.py): Gateway and Admin in a few lines, computing its outputs from the inputs (floats
doubled, ints plus one, bools negated, bytes reversed) so every decoded value proves the round trip,
and recording the metadata and deadline it saw."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from heddle.clients.client import InferResult, StageTiming
from heddle.clients.tensors import from_tensor, to_tensor
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc

__all__ = ["INPUTS", "PIPELINE", "TOKEN", "FakeGateway", "check_result", "compute", "gateway", "start_gateway"]

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


def compute(array: np.ndarray) -> np.ndarray:
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
        outputs = [to_tensor(t.name, compute(from_tensor(t))) for t in request.inputs
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


def start_gateway(servicer: FakeGateway, port_spec: str = "127.0.0.1:0",
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
    server, port = start_gateway(servicer)
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


def check_result(result: InferResult, *, priority: int) -> None:
    assert result.pipeline == "compute" and result.priority == priority
    np.testing.assert_array_equal(result.outputs["x"], INPUTS["x"] * 2)
    assert result.outputs["x"].dtype == np.float32
    np.testing.assert_array_equal(result.outputs["ids"], [[2, 3, 4]])
    assert result.outputs["flag"].tolist() == [False, True, False]
    assert result.outputs["text"].tolist() == [b"cba", b""]
    assert result.stages[0] == StageTiming("s_x", "m", "cpu0", "OK", 0.5, 2.0, 0.0, 2.5, "")
    assert (result.stages[-1].status, result.stages[-1].error) == ("FAILED", "post exploded")
