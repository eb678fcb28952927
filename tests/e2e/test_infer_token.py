"""[server] infer_token (#16 item 3) against a real gateway: inference on heddle.v1, KServe gRPC and
HTTP needs the bearer token (UNAUTHENTICATED / 401 without, PERMISSION_DENIED / 403 with another);
health checks stay open; the token may come from HEDDLE_INFER_TOKEN."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import chain, parse_test_document, py_model, running_server

from heddle.clients.errors import HeddleError
from heddle.server.config.builder import document, python_device

TOKEN = "s3cret-infer-token"
X = np.ones(4, np.float32)


def _config(**server):
    return parse_test_document(document(server=server or None, devices=[python_device("py0")],
                                        models=[py_model("a", "stage_fns:tail")], pipelines=[chain("p", ["a"])]))


def _http(running, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(f"http://127.0.0.1:{running.server.http_port}{path}", headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_grpc_inference_needs_the_token_and_health_stays_open() -> None:
    with running_server(_config(infer_token=TOKEN)) as running:
        with running.client() as client, pytest.raises(HeddleError) as missing:
            client.infer("p", {"x": X})
        with running.client(token="wrong") as client, pytest.raises(HeddleError) as wrong:
            client.infer("p", {"x": X})
        with running.client(token=TOKEN) as client:
            assert client.infer("p", {"x": X}).outputs["y"].tolist() == X.tolist()
        assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "inference RPCs need 'authorization: Bearer <token>'" in missing.value.details()
        assert wrong.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with grpc.insecure_channel(running.target) as channel:
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
        kserve = tritonclient_grpc.InferenceServerClient(running.target)
        assert kserve.is_server_ready() and kserve.is_model_ready("p")  # probes need no secret
        x = tritonclient_grpc.InferInput("x", [4], "FP32")
        x.set_data_from_numpy(X)
        with pytest.raises(Exception, match="inference RPCs need"):
            kserve.infer("p", [x])
        assert kserve.infer("p", [x], headers={"authorization": f"Bearer {TOKEN}"}).as_numpy("y").tolist() == X.tolist()


def test_http_inference_needs_the_token_in_each_apis_error_shape() -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": X.tolist()}]}
    with running_server(_config(infer_token=TOKEN)) as running:
        assert _http(running, "/v2/health/ready")[0] == 200
        status, doc = _http(running, "/v2/models/p/infer", body)
        assert status == 401 and "infer_token" in doc["error"]
        assert _http(running, "/v2/models/p/infer", body, token="wrong")[0] == 403
        status, doc = _http(running, "/v2/models/p/infer", body, token=TOKEN)
        assert status == 200 and doc["outputs"][0]["data"] == X.tolist()
        status, doc = _http(running, "/v1/models")
        assert status == 401 and doc["error"]["type"] == "authentication_error"


def test_the_token_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEDDLE_INFER_TOKEN", TOKEN)
    config = _config()
    assert config.server.infer_token == TOKEN
    with running_server(config) as running, running.client() as client, pytest.raises(HeddleError) as missing:
        client.infer("p", {"x": X})
    assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
