"""KServe v2 REST on the HTTP port, against a real gateway: unmodified tritonclient.http gets the same
answers as the gRPC frontend for every default model and pipeline (binary and JSON tensors), the
metadata, config, statistics and index endpoints answer as Triton's, errors come as HTTP statuses with
`{"error": ...}` bodies (429 with Retry-After), and request ids go in and out."""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import stage_fns
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from http_fixtures import http_call, http_json
from pki_fixtures import Pki, pki  # noqa: F401  (fixtures are found by name)
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    REPO_ROOT,
    RunningServer,
    ServerProcess,
    chain,
    default_config,
    default_server,
    heddle_cache_dir,
    parse_test_document,
    py_model,
    running_server,
)

from heddle.server.config.builder import document, python_device, to_toml

PY0 = [python_device("py0", slots=2)]
TAIL = py_model("tail", "stage_fns:tail")


@pytest.fixture()
def hclient(default_server: RunningServer) -> Iterator[thttp.InferenceServerClient]:
    with thttp.InferenceServerClient(f"127.0.0.1:{default_server.server.http_port}") as client:
        yield client


@pytest.fixture()
def gclient(default_server: RunningServer) -> Iterator[tgrpc.InferenceServerClient]:
    with tgrpc.InferenceServerClient(default_server.target) as client:
        yield client


def example_inputs(metadata: dict) -> dict[str, np.ndarray]:
    """Inputs every default model accepts: a batch of 1, sequences of 6, ids within every vocabulary."""
    rng = np.random.default_rng(7)
    arrays = {}
    for t in metadata["inputs"]:
        shape = [d if d >= 0 else (1 if i == 0 else 6) for i, d in enumerate(t["shape"])]
        if t["datatype"] == "BYTES":
            arrays[t["name"]] = np.array([b"hello heddle"] * int(np.prod(shape)), dtype=object).reshape(shape)
        elif t["datatype"] == "INT64":
            arrays[t["name"]] = (np.ones(shape, np.int64) if "mask" in t["name"]
                                 else rng.integers(1, 250, shape).astype(np.int64))
        elif t["datatype"] == "UINT8":
            arrays[t["name"]] = rng.integers(0, 255, shape).astype(np.uint8)
        else:
            arrays[t["name"]] = rng.random(shape).astype(np.float32)
    return arrays


def http_inputs(arrays: dict[str, np.ndarray], binary: bool = True) -> list[thttp.InferInput]:
    inputs = []
    for name, arr in arrays.items():
        datatype = "BYTES" if arr.dtype == object else tgrpc.np_to_triton_dtype(arr.dtype)
        t = thttp.InferInput(name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(t)
    return inputs


def grpc_inputs(arrays: dict[str, np.ndarray]) -> list[tgrpc.InferInput]:
    inputs = []
    for name, arr in arrays.items():
        datatype = "BYTES" if arr.dtype == object else tgrpc.np_to_triton_dtype(arr.dtype)
        t = tgrpc.InferInput(name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return inputs


def assert_same_outputs(metadata: dict, http_result, grpc_result) -> None:
    for out in metadata["outputs"]:
        got, want = http_result.as_numpy(out["name"]), grpc_result.as_numpy(out["name"])
        if got.dtype == object:  # BYTES sent as JSON come back as str
            got = np.array([v.encode() if isinstance(v, str) else v for v in got.reshape(-1)],
                           dtype=object).reshape(got.shape)
        assert got.shape == want.shape and got.dtype == want.dtype, (metadata["name"], out["name"])
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{metadata['name']}.{out['name']}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{metadata['name']}.{out['name']}")


@pytest.mark.slow
def test_every_model_and_pipeline_answers_over_http_as_over_grpc(hclient, gclient) -> None:
    """tritonclient.http (binary tensors) infers every default model and pipeline, outputs equal the gRPC path's."""
    names = [m["name"] for m in hclient.get_model_repository_index()]
    assert {"classify", "multihead", "chat", "chat_text", "text_classify", "cnn", "llm"} <= set(names)
    for name in names:
        metadata = hclient.get_model_metadata(name)
        arrays = example_inputs(metadata)
        got = hclient.infer(name, http_inputs(arrays))
        want = gclient.infer(name, grpc_inputs(arrays))
        assert_same_outputs(metadata, got, want)
        assert got.get_response()["model_version"] == "1"


def test_json_tensors_in_and_out_equal_binary_ones(hclient) -> None:
    """Inputs and outputs as JSON `data` (UINT8 image, BYTES text) give what binary data gives."""
    for name in ("classify", "chat_text"):
        metadata = hclient.get_model_metadata(name)
        arrays = example_inputs(metadata)
        outputs = [thttp.InferRequestedOutput(o["name"], binary_data=False) for o in metadata["outputs"]]
        as_json = hclient.infer(name, http_inputs(arrays, binary=False), outputs=outputs)
        assert all("data" in o for o in as_json.get_response()["outputs"])
        assert_same_outputs(metadata, as_json, hclient.infer(name, http_inputs(arrays)))


def test_gzip_request_body_is_decompressed(hclient) -> None:
    """A gzip-compressed request (tritonclient's request_compression_algorithm) runs like a plain one."""
    arrays = example_inputs(hclient.get_model_metadata("cnn"))
    plain = hclient.infer("cnn", http_inputs(arrays))
    zipped = hclient.infer("cnn", http_inputs(arrays), request_compression_algorithm="gzip")
    np.testing.assert_array_equal(plain.as_numpy("logits"), zipped.as_numpy("logits"))


def test_health_metadata_config_and_stats_answer_as_triton(hclient, gclient) -> None:
    """Live, ready, server and model metadata, config (max_batch_size 0, full dims), statistics and the
    index say over HTTP what they say over gRPC."""
    assert hclient.is_server_live() and hclient.is_server_ready() and hclient.is_model_ready("classify")
    assert hclient.get_server_metadata()["name"] == "heddle"
    assert hclient.get_model_metadata("cnn") == gclient.get_model_metadata("cnn", as_json=True) | {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 64, 64]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}
    config = hclient.get_model_config("multihead")
    assert config["max_batch_size"] == 0 and config["platform"] == "heddle_pipeline"
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["backbone", "head_cls", "head_emb",
                                                                                 "join"]
    assert config["input"][0]["dims"] == [-1, 3, 64, 64]
    hclient.infer("cnn", http_inputs(example_inputs(hclient.get_model_metadata("cnn"))))
    stats = hclient.get_inference_statistics("cnn")["model_stats"][0]
    assert stats["inference_count"] >= 1 and stats["inference_stats"]["success"]["count"] >= 1
    assert isinstance(stats["inference_stats"]["queue"]["ns"], int)
    index = {m["name"]: m["state"] for m in hclient.get_model_repository_index()}
    assert index == {m.name: m.state for m in gclient.get_model_repository_index().models}


def test_priority_and_timeout_parameters_apply(hclient) -> None:
    """KServe priority 1 is heddle's top level, reported back in the response parameters."""
    arrays = example_inputs(hclient.get_model_metadata("cnn"))
    result = hclient.infer("cnn", http_inputs(arrays), priority=1, timeout=30_000_000)
    assert result.get_response()["parameters"]["heddle_priority_level"] == 4


# ---- raw requests: what curl sees -----------------------------------------------------------

def infer_doc(data=None, **extra) -> dict:
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 64, 64],
                        "data": data if data is not None else [0.0] * (3 * 64 * 64)}], **extra}


def test_unknown_model_and_route_are_404_with_an_error_body(default_server) -> None:
    """An unknown model, version or path answers 404 and {"error": ...} naming it."""
    reply = http_json(default_server, "/v2/models/nope/infer", infer_doc())
    assert reply.status == 404 and "unknown model 'nope'" in reply.json()["error"]
    reply = http_call(default_server, "GET", "/v2/models/cnn/versions/7")
    assert reply.status == 404 and "no version '7'" in reply.json()["error"]
    assert http_call(default_server, "GET", "/v2/models/nope/ready").status == 404
    reply = http_call(default_server, "GET", "/v3/anything")
    assert reply.status == 404 and "/v3/anything" in reply.json()["error"]


@pytest.mark.parametrize(("body", "needle"), [
    (b"{not json", "not valid"),
    (json.dumps(infer_doc(data=[0.0] * 5)).encode(), "image"),
    (json.dumps(infer_doc(parameters={"priority": 9})).encode(), "priority 9 is outside 1..4"),
    (json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": "big", "data": []}]}).encode(), "shape"),
    (json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 64, 64],
                             "parameters": {"binary_data_size": 99}}]}).encode(), "binary_data_size"),
    (json.dumps({"inputs": [{"name": "image", "datatype": "INT8", "shape": [1], "data": [300]}]}).encode(),
     "outside the INT8 range"),
])
def test_bad_requests_are_400_naming_what_was_wrong(default_server, body: bytes, needle: str) -> None:
    """Malformed JSON, a wrong element count, a bad priority, shape or binary size: 400 and the reason;
    the server goes on serving."""
    reply = http_call(default_server, "POST", "/v2/models/cnn/infer", body, {"content-type": "application/json"})
    assert reply.status == 400, reply.body
    assert needle in reply.json()["error"], reply.json()
    assert http_json(default_server, "/v2/models/cnn/infer", infer_doc()).status == 200


def test_request_ids_go_in_and_come_back(default_server) -> None:
    """x-request-id is echoed (and is the KServe id when the body has none); without one, one is made."""
    reply = http_json(default_server, "/v2/models/cnn/infer", infer_doc(), {"x-request-id": "req-42"})
    assert reply.status == 200 and reply.headers["x-request-id"] == "req-42" and "id" not in reply.json()
    reply = http_json(default_server, "/v2/models/cnn/infer", infer_doc(id="body-id"), {"x-request-id": "h"})
    assert reply.headers["x-request-id"] == "body-id" and reply.json()["id"] == "body-id"
    reply = http_call(default_server, "GET", "/v2/health/live")
    assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["x-request-id"])
    reply = http_json(default_server, "/v2/models/cnn/infer", infer_doc(), {"x-request-id": "x" * 300})
    assert reply.status == 400 and "256" in reply.json()["error"]


def test_unsupported_extensions_say_so(default_server) -> None:
    """CUDA shared memory and trace settings answer 501 with a reason, as UNIMPLEMENTED on gRPC."""
    reply = http_call(default_server, "POST", "/v2/cudasharedmemory/region/r/register", b"{}")
    assert reply.status == 501 and "heddle does not serve" in reply.json()["error"]


GATED = document(server={"max_inflight_bytes": 8 << 20, "max_request_bytes": 4 << 20,
                         "inflight_top_reserve_fraction": 0.2, "max_message_bytes": 2 << 20},
                 devices=PY0, models=[py_model("gate", "stage_fns:gate")], pipelines=[chain("gated", ["gate"])])


@pytest.mark.slow
def test_refusal_is_429_with_retry_after_and_a_big_body_413() -> None:
    """While a big request holds the in-flight budget, a second at a low priority is 429 with
    Retry-After (seconds) and retry-after-ms; a body over max_message_bytes is 413."""
    stage_fns.reset()
    big = np.zeros(300_000, np.float32)
    with running_server(parse_test_document(GATED)) as running, concurrent.futures.ThreadPoolExecutor(1) as pool, \
            thttp.InferenceServerClient(f"127.0.0.1:{running.server.http_port}", network_timeout=60) as client:
        held = pool.submit(client.infer, "gated", http_inputs({"x": big + 1}), priority=4)
        try:
            assert stage_fns.wait_for_call("gate", 1), "the held request never started"
            x = http_inputs({"x": big + 2})[0]
            body, json_size = thttp.InferenceServerClient.generate_request_body([x], priority=4)
            reply = http_call(running, "POST", "/v2/models/gated/infer", body,
                              {"inference-header-content-length": str(json_size)})
        finally:
            stage_fns.open_gate()
        assert reply.status == 429, reply.body
        assert "max_inflight_bytes" in reply.json()["error"]
        assert int(reply.headers["retry-after"]) >= 1 and int(reply.headers["retry-after-ms"]) >= 1
        assert held.result(timeout=60).as_numpy("y")[0] == 1
        reply = http_call(running, "POST", "/v2/models/gated/infer", b"x" * (3 << 20))
        assert reply.status == 413 and "max_message_bytes" in reply.json()["error"]


# ---- the port itself ------------------------------------------------------------------------

@pytest.mark.slow
def test_http_port_taken_refuses_to_start_naming_it(tmp_path: Path) -> None:
    """`heddle serve` with its HTTP port taken exits 2 with one line naming http_port."""
    config = tmp_path / "c.toml"
    config.write_text(to_toml(document(devices=PY0, models=[TAIL])))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        proc = ServerProcess(["--config", str(config), "--grpc-port", "0", "--metrics-port", "0",
                              "--http-port", str(held.getsockname()[1])])
        try:
            assert proc.proc.wait(60) == 2
        finally:
            proc.stop()
    assert "http_port" in "".join(proc.lines) and "already in use" in "".join(proc.lines)


@pytest.mark.slow
def test_tls_serves_http_over_tls_and_mutual_tls_wants_a_client_cert(pki: Pki) -> None:
    """With [server.tls], the HTTP port speaks HTTPS with the same certificate; with client_ca, a
    client without a certificate is refused during the handshake and one with it is served."""
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)}
    with running_server(parse_test_document(document(server={"tls": tls}, devices=PY0, models=[TAIL]))) as running:
        port = running.server.http_port
        anonymous = ssl.create_default_context(cafile=str(pki.ca))
        try:  # TLS 1.3 reports a refused client certificate on the first read, as an error or a close
            with socket.create_connection(("127.0.0.1", port)) as raw, \
                    anonymous.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                refused = tls.recv(100)
        except (ssl.SSLError, ConnectionError):
            refused = b""
        assert refused == b""
        known = ssl.create_default_context(cafile=str(pki.ca))
        known.load_cert_chain(pki.client_cert, pki.client_key)
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                known.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 200")


@pytest.mark.slow
def test_perf_analyzer_over_http_exits_0(default_server: RunningServer, tmp_path: Path) -> None:
    """perf_analyzer -i http (Triton's own load generator) runs against the HTTP port and exits 0."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import perf_analyzer as bench_pa
    finally:
        sys.path.pop(0)
    binary = Path.home() / ".cache" / "heddle" / f"perf_analyzer-{bench_pa.PA_VERSION}" / "bin" / "perf_analyzer"
    if not binary.exists():
        pytest.skip("perf_analyzer not fetched (bench/perf_analyzer.py fetches it)")
    pa = bench_pa.obtain_perf_analyzer(binary=binary)
    # A stability of 10000% takes any two windows as stable: the test asks for a clean run, not a figure.
    cmd = [str(pa.binary), "-i", "http", "-u", f"127.0.0.1:{default_server.server.http_port}", "-m", "cnn",
           "--shape", "image:1,3,64,64", "--concurrency-range", "1", "-p", "500", "--stability-percentage", "10000",
           "--max-trials", "10", "-f", str(tmp_path / "pa.csv")]
    done = subprocess.run(cmd, env=pa.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Throughput" in done.stdout
