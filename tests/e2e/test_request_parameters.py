"""Per-request parameters (#14): python stages declare them in the config (typed, defaulted), a
request's `parameters` reach the stages that declare them (heddle.v1 and KServe), undeclared or
mistyped ones are INVALID_ARGUMENT naming them, and they are recorded in traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from server_fixtures import chain, parse_test_document, running_server

from heddle.clients.client import build_request
from heddle.server.config.builder import document, python_device, python_model, tensor
from heddle.server.config.schema import ConfigError
from heddle.v1 import heddle_pb2_grpc

X = np.array([0.1, 0.5, 0.9], np.float32)
PARAMS = {"threshold": {"type": "float"}, "keep_above": {"type": "bool", "default": True}}


def _config(params=PARAMS, **server):
    return parse_test_document(document(
        server=server or None, devices=[python_device("py0")],
        models=[python_model("t", "stage_fns:thresholded", [tensor("x")], [tensor("y")], parameters=params)],
        pipelines=[chain("p", ["t"])]))


def _infer(running, parameters):
    import grpc

    request = build_request("p", {"x": X})
    request.parameters.update(parameters)
    with grpc.insecure_channel(running.target) as channel:
        return heddle_pb2_grpc.GatewayStub(channel).Infer(request, timeout=30)


def test_parameters_reach_the_stage_typed_with_defaults(tmp_path: Path) -> None:
    from heddle.clients.tensors import from_tensor

    trace = tmp_path / "trace.jsonl"
    with running_server(_config(trace_file=str(trace))) as running:
        y = from_tensor(_infer(running, {"threshold": "0.4"}).outputs[0])
        assert y.tolist() == [0.0, 1.0, 1.0]  # keep_above defaulted to true
        with running.client() as client:  # the client library types them as text for the server
            y = client.infer("p", {"x": X}, parameters={"threshold": 0.4, "keep_above": False}).outputs["y"]
        assert y.tolist() == [1.0, 0.0, 0.0]
    arrivals = [json.loads(line) for line in trace.read_text().splitlines() if '"arrival"' in line]
    assert arrivals[0]["parameters"] == {"threshold": 0.4}
    assert arrivals[1]["parameters"] == {"threshold": 0.4, "keep_above": False}


@pytest.mark.parametrize(("parameters", "message"), [
    ({}, "parameter 'threshold' is required (stage 's0' of pipeline 'p' has no default for it)"),
    ({"threshold": "high"}, "parameter 'threshold' must be a float, got 'high'"),
    ({"threshold": "nan"}, "parameter 'threshold' must be a float"),
    ({"threshold": "0.5", "keep_above": "maybe"}, "parameter 'keep_above' must be a bool"),
    ({"threshold": "0.5", "treshold": "1"},
     "unknown parameter 'treshold'; pipeline 'p' takes ['keep_above', 'threshold']"),
])
def test_bad_parameters_are_invalid_argument_naming_them(parameters, message) -> None:
    import grpc

    with running_server(_config()) as running:
        with pytest.raises(grpc.RpcError) as err:
            _infer(running, parameters)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        assert _infer(running, {"threshold": "0.0"}).outputs  # the server keeps serving


def test_kserve_request_parameters_reach_the_stage() -> None:
    tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
    with running_server(_config()) as running:
        client = tritonclient_grpc.InferenceServerClient(running.target)
        x = tritonclient_grpc.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(X)
        y = client.infer("p", [x], parameters={"threshold": 0.8, "keep_above": False}).as_numpy("y")
        assert y.tolist() == [1.0, 1.0, 0.0]


def test_a_default_of_the_wrong_type_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="default 'high' is no float"):
        _config({"threshold": {"type": "float", "default": "high"}})
