"""Stage timeouts against a real server: ORT runs terminated, process-isolated python stages killed and
replaced, thread stages given up on (their slot held until they return), all counted in metrics."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import stage_fns
from onnx import TensorProto, helper, numpy_helper
from server_fixtures import (
    RunningServer,
    chain,
    parse_test_document,
    py_model,
    running_server,
    scrape_metrics,
    wait_until,
)

from heddle.server.config.builder import document, onnx_device, onnx_model, pipeline, python_device, stage, tensor
from heddle.server.config.load import ConfigError

WIDTH, DEPTH = 256, 2000
# A run over BIG_ROWS takes seconds (about 10 s on a small box's core), one over a single row
# about 10 ms: far on either side of TIMEOUT_MS, on a fast box or a loaded one.
BIG_ROWS, TIMEOUT_MS = 4096, 1000


def _matmul_chain(path: Path) -> Path:
    """x [n, WIDTH] -> DEPTH MatMuls by one shared weight -> y: time grows with n, the file stays small."""
    weight = numpy_helper.from_array(np.full((WIDTH, WIDTH), 1.0 / WIDTH, np.float32), "w")
    nodes, source = [], "x"
    for i in range(DEPTH):
        target = "y" if i == DEPTH - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [source, "w"], [target]))
        source = target
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _rows(n: int) -> dict[str, np.ndarray]:
    return {"x": np.ones((n, WIDTH), np.float32)}


def _config(onnx_path: Path) -> dict:
    wide = [tensor("x", "FP32", (-1, WIDTH))]
    return document(
        devices=[onnx_device("cpu0"), python_device("py0"), python_device("py1")],
        models=[onnx_model("chain", str(onnx_path), timeout_ms=TIMEOUT_MS), onnx_model("chain_free", str(onnx_path)),
                py_model("napper", "stage_fns:nap_then_pid", devices=["py0"], isolation="process", timeout_ms=1000),
                py_model("gated", "stage_fns:gate", devices=["py1"], timeout_ms=200)],
        pipelines=[pipeline("mm", wide, {"y": "s0.y"}, [stage("s0", "chain", x="input:x")]),
                   pipeline("mm_free", wide, {"y": "s0.y"}, [stage("s0", "chain_free", x="input:x")]),
                   chain("nap", ["napper"]), chain("gated", ["gated"])])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    onnx_path = _matmul_chain(tmp_path_factory.mktemp("chain") / "chain.onnx")
    with running_server(parse_test_document(_config(onnx_path))) as running:
        yield running


def _timeouts(server: RunningServer, model: str, device: str) -> float:
    key = ("heddle_stage_timeouts_total", frozenset({"model": model, "device": device}.items()))
    return scrape_metrics(server.metrics_url).get(key, 0.0)


def _overrunning(server: RunningServer, device: str) -> float:
    key = ("heddle_stage_threads_overrunning", frozenset({"device": device}.items()))
    return scrape_metrics(server.metrics_url).get(key, 0.0)


@pytest.mark.slow
def test_ort_run_past_timeout_ms_is_terminated_and_the_next_run_is_ok(server: RunningServer):
    """A run past its model's timeout_ms is terminated (DEADLINE_EXCEEDED, counted); the session
    and its one slot serve the next request."""
    with server.client() as client:
        with pytest.raises(grpc.RpcError) as info:
            client.infer("mm", _rows(BIG_ROWS), timeout_s=60)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
        assert f"terminated at its timeout of {TIMEOUT_MS} ms" in info.value.details()
        assert _timeouts(server, "chain", "cpu0") == 1
        result = client.infer("mm", _rows(1), timeout_s=60)
        assert result.outputs["y"].shape == (1, WIDTH)


@pytest.mark.slow
def test_ort_run_is_terminated_at_the_request_deadline(server: RunningServer):
    """With no timeout_ms, a run's limit is the time left to its request's deadline: it is
    terminated there (counted as a timeout) instead of running on past it."""
    with server.client() as client:
        with pytest.raises(grpc.RpcError) as info:
            client.infer("mm_free", _rows(BIG_ROWS), deadline_ms=TIMEOUT_MS, timeout_s=60)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
        assert _timeouts(server, "chain_free", "cpu0") == 1
        assert client.infer("mm_free", _rows(1), timeout_s=60).outputs["y"].shape == (1, WIDTH)


@pytest.mark.slow
def test_hung_process_stage_is_killed_and_its_worker_replaced(server: RunningServer):
    """A process-isolated stage that sleeps 10 s is killed at its 1 s timeout (DEADLINE_EXCEEDED);
    its worker process is gone, a new one serves the next request."""
    with server.client() as client:
        before = int(client.infer("nap", {"x": stage_fns.tagged(0)}, timeout_s=60).outputs["y"][0])
        assert before != os.getpid()  # it ran in a worker process, not in this (the server's) one
        with pytest.raises(grpc.RpcError) as info:
            client.infer("nap", {"x": stage_fns.tagged(10)}, timeout_s=60)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
        assert "killed and replaced" in info.value.details()
        with pytest.raises(ProcessLookupError):
            os.kill(before, 0)
        after = int(client.infer("nap", {"x": stage_fns.tagged(0)}, timeout_s=60).outputs["y"][0])
        assert after not in (before, os.getpid())
        assert _timeouts(server, "napper", "py0") == 1


@pytest.mark.slow
def test_thread_stage_past_its_timeout_ends_its_request_and_keeps_its_slot(server: RunningServer):
    """A thread stage past its timeout ends its request DEADLINE_EXCEEDED at once; the thread runs
    on holding its slot (gauge 1) until it returns, then the slot serves again."""
    stage_fns.reset()
    try:
        with server.client() as client:
            with pytest.raises(grpc.RpcError) as info:
                client.infer("gated", {"x": stage_fns.tagged(1)}, timeout_s=60)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
            assert "cannot be stopped" in info.value.details()
            assert "timeout_ms" in info.value.details()  # the model's limit, not the 60 s deadline
            assert _timeouts(server, "gated", "py1") == 1
            assert _overrunning(server, "py1") == 1
            assert next(d.running for d in client.list_devices() if d.id == "py1") == 1
            stage_fns.open_gate()
            wait_until(lambda: _overrunning(server, "py1") == 0, "the overrunning thread to return")
            assert client.infer("gated", {"x": stage_fns.tagged(2)}, timeout_s=60).outputs["y"][0] == 2
    finally:
        stage_fns.open_gate()


@pytest.mark.parametrize("extra, message", [
    ({"timeout_ms": 0}, "timeout_ms must be greater than 0, got 0"),
    ({"timeout_ms": math.nan}, "timeout_ms must be a finite number, got nan"),
    ({"timeout_ms": "1s"}, "timeout_ms must be a number, got '1s'"),
    ({"timeout_ms": 1e12}, "timeout_ms must be less than or equal to 86400000"),
    ({"isolation": "fiber"}, "unknown isolation 'fiber'; known: ['thread', 'process']"),
])
def test_config_refuses_bad_stage_limits(extra: dict[str, object], message: str):
    """timeout_ms must be a positive finite number of milliseconds (at most 24 h); isolation thread or process."""
    doc = document(devices=[python_device("py0")], models=[py_model("m", "stage_fns:tail", **extra)])
    with pytest.raises(ConfigError, match="model 'm'") as info:
        parse_test_document(doc)
    assert message in str(info.value)


def test_config_refuses_isolation_on_an_onnx_model(tmp_path: Path):
    """isolation is a python-stage key; on an ONNX model it is an unknown key, said with the backend it is for."""
    path = _matmul_chain(tmp_path / "chain.onnx")
    doc = document(devices=[onnx_device("cpu0")], models=[onnx_model("m", str(path), isolation="process")])
    said = "model 'm': unknown key 'isolation' (a key of python models; this model is onnxruntime)"
    with pytest.raises(ConfigError, match=re.escape(said)):
        parse_test_document(doc)
