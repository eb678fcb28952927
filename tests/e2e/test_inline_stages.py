"""`inline = true` models run on the gateway's event loop instead of a device worker thread, answer
as they would there, and fail as precisely, the server serving on."""

from __future__ import annotations

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import stage_fns
from onnx import TensorProto, helper, numpy_helper
from server_fixtures import chain_toml, py_model_toml, serve_toml

from heddle.clients.errors import HeddleError

PY = '[[devices]]\nid = "py0"\nbackend = "python"\nslots = 2\n\n'


def _mlp(path) -> str:
    """x FP32 [N,4] -> relu(x @ W + b) FP32 [N,3]."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
                     numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_an_inline_python_stage_runs_on_the_loop_thread_and_another_in_a_worker():
    """The inline stage records the gateway's loop thread (running_server names it heddle-test-loop),
    the same function without inline a py0 worker; both answer their input."""
    stage_fns.reset()
    config = (PY + py_model_toml("on_loop", "stage_fns:thread_name", inline=True)
              + py_model_toml("in_worker", "stage_fns:thread_name")
              + chain_toml("loop_p", ["on_loop"]) + chain_toml("worker_p", ["in_worker"]))
    with serve_toml(config) as running, running.client() as client:
        out_loop = client.infer("loop_p", {"x": stage_fns.tagged(1)})
        out_worker = client.infer("worker_p", {"x": stage_fns.tagged(2)})
    assert out_loop.outputs["y"].tolist() == [1.0] and out_worker.outputs["y"].tolist() == [2.0]
    (loop_call,), (worker_call,) = ([c for c in stage_fns.calls() if c[1] == tag] for tag in (1, 2))
    assert loop_call[0] == "thread:heddle-test-loop"
    assert worker_call[0].startswith("thread:heddle-py0")


def test_a_failing_inline_stage_ends_its_request_internal_and_the_server_serves_on():
    """An inline stage that raises answers INTERNAL naming the stage's error; the next request is served."""
    stage_fns.reset()
    config = (PY + py_model_toml("boom", "stage_fns:boom", inline=True)
              + py_model_toml("tail", "stage_fns:tail", inline=True)
              + chain_toml("bad", ["boom"]) + chain_toml("good", ["tail"]))
    with serve_toml(config) as running, running.client() as client:
        with pytest.raises(HeddleError) as info:
            client.infer("bad", {"x": stage_fns.tagged(7)})
        after = client.infer("good", {"x": stage_fns.tagged(8)})
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert "ZeroDivisionError: boom on tag 7" in info.value.details()
    assert after.outputs["y"].tolist() == [8.0]


def test_an_inline_onnx_model_answers_what_onnx_runtime_computes(tmp_path):
    """A small ONNX model with inline = true gives ONNX Runtime's own answer, batch of 2."""
    path = _mlp(tmp_path / "mlp.onnx")
    config = ('[[devices]]\nid = "cpu0"\nbackend = "onnxruntime"\n\n'
              f'[[models]]\nname = "mlp"\npath = "{path}"\ninline = true\n\n'
              '[[pipelines]]\nname = "p"\ninputs = [{ name = "x", datatype = "FP32", shape = [-1, 4] }]\n'
              'outputs = { y = "m.y" }\nstages = [{ name = "m", model = "mlp", inputs = { x = "input:x" } }]\n')
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3.0
    expected = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with serve_toml(config) as running, running.client() as client:
        got = client.infer("p", {"x": x}).outputs["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def _threads(client, pipeline: str, calls: int, stop_on_loop: bool) -> list[str]:
    """The thread each of up to `calls` sequential requests ran its stage on, in order."""
    names = []
    for tag in range(100, 100 + calls):
        client.infer(pipeline, {"x": stage_fns.tagged(tag)})
        names.append(next(c[0] for c in stage_fns.calls() if c[1] == tag))
        if stop_on_loop and names[-1] == "thread:heddle-test-loop":
            break
    return names


def test_a_tiny_stage_moves_to_the_loop_by_default_once_measured():
    """No `inline` key (the default "auto"): the first WINDOW runs are on a py0 worker, measured;
    a stage of a few microseconds then runs on the loop. `inline = false` keeps it on workers."""
    from heddle.server.runtime.auto_inline import WINDOW

    stage_fns.reset()
    config = (PY + py_model_toml("auto", "stage_fns:thread_name")
              + py_model_toml("pinned", "stage_fns:thread_name", inline=False)
              + chain_toml("auto_p", ["auto"]) + chain_toml("pinned_p", ["pinned"]))
    with serve_toml(config) as running, running.client() as client:
        auto = _threads(client, "auto_p", 400, stop_on_loop=True)  # a busy box may evict it a few times
        stage_fns.reset()
        pinned = _threads(client, "pinned_p", 3 * WINDOW, stop_on_loop=False)
    assert all(name.startswith("thread:heddle-py0") for name in auto[:WINDOW])
    assert auto[-1] == "thread:heddle-test-loop"
    assert all(name.startswith("thread:heddle-py0") for name in pinned)


def test_a_slow_stage_stays_on_its_worker():
    """A 2 ms stage (40 budgets) is never moved to the loop, however many runs it has."""
    from heddle.server.runtime.auto_inline import WINDOW

    stage_fns.reset()
    config = PY + py_model_toml("slow", "stage_fns:slow_thread_name") + chain_toml("slow_p", ["slow"])
    with serve_toml(config) as running, running.client() as client:
        names = _threads(client, "slow_p", 2 * WINDOW, stop_on_loop=False)
    assert len(names) == 2 * WINDOW
    assert all(name.startswith("thread:heddle-py0") for name in names)


def test_auto_stays_off_where_the_loop_would_escape_isolation_or_a_bandwidth_cap():
    """"auto" resolves to off for a python stage in a worker process and for a model that may run
    on a cgroup-capped device; on for the rest; an explicit value is kept."""
    from server_fixtures import parse_test_document, py_model

    from heddle.server.config.builder import document, python_device

    capped = python_device("capped", dvfs={"kind": "cgroup"})
    config = parse_test_document(document(
        devices=[python_device("py0"), capped],
        models=[py_model("free", "stage_fns:tail", devices=["py0"]),
                py_model("isolated", "stage_fns:tail", devices=["py0"], isolation="process"),
                py_model("maybe_capped", "stage_fns:tail"),
                py_model("off", "stage_fns:tail", devices=["py0"], inline=False)]))
    inline = {name: m.options["inline"] for name, m in config.models.items()}
    assert inline == {"free": "auto", "isolated": False, "maybe_capped": False, "off": False}
