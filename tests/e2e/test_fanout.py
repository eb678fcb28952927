"""Fan-out (#14) against a real gateway: a python stage returns a list, a `map` stage runs an ONNX
model once per element (or per map_batch of them) on any eligible device, and a gather stage
joins the per-element outputs, in order, into the pipeline's tensor output."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from server_fixtures import parse_test_document, running_server, scrape_metrics

from heddle.server.config.builder import (
    document,
    map_stage,
    onnx_device,
    onnx_model,
    pipeline,
    python_device,
    python_model,
    stage,
    tensor,
)
from heddle.server.config.schema import ConfigError

D, K = 4, 3
X = np.arange(8 * D, dtype=np.float32).reshape(8, D) / 10


def linear_onnx(path: Path) -> str:
    """y = x @ W + b, FP32 [n, 4] -> [n, 3], fixed weights: the per-element model."""
    import onnx

    rng = np.random.default_rng(14)
    w, b = rng.standard_normal((D, K)).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", D])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", K])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["xw"]), onnx.helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear", [x], [y], [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def fan_document(model_path: str, *, split: str = "stage_fns:rows_of", map_batch: int = 1,
                 devices: tuple[str, ...] = ("cpu0", "cpu1"), **lin_keys) -> dict:
    """split (python: a list of elements of x) -> lin (ONNX, a map stage) -> gather (python)."""
    return document(
        devices=[*(onnx_device(d, cores=[i % 2]) for i, d in enumerate(devices)), python_device("py0", slots=2)],
        models=[
            python_model("split", split, [tensor("x", shape=(-1, D)), tensor("count", "INT64", (1,))],
                         [{**tensor("parts", shape=(-1, D)), "list": True}]),
            onnx_model("lin", model_path, **lin_keys),
            python_model("gather", "stage_fns:gather_rows", [{**tensor("parts", shape=(-1, K)), "list": True}],
                         [tensor("y", shape=(-1, K))]),
        ],
        pipelines=[pipeline("fan", [tensor("x", shape=(-1, D)), tensor("count", "INT64", (1,))], {"y": "gather.y"}, [
            stage("split", "split", x="input:x", count="input:count"),
            map_stage("lin", "lin", "split.parts", map_batch=map_batch, x="split.parts"),
            stage("gather", "gather", parts="lin.y"),
        ])])


@pytest.fixture(scope="module")
def lin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return linear_onnx(tmp_path_factory.mktemp("fanout") / "lin.onnx")


@pytest.fixture(scope="module")
def fan(lin_path: str):
    with running_server(parse_test_document(fan_document(lin_path))) as running:
        yield running


def alone(lin_path: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(lin_path, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def infer(running, count: int, x: np.ndarray = X):
    with running.client() as client:
        return client.infer("fan", {"x": x, "count": np.array([count], np.int64)})


@pytest.mark.parametrize("count", [0, 1, 5])
def test_each_element_gets_the_model_run_on_it_alone_and_gathers_in_order(fan, lin_path, count):
    """With 0, 1 and 5 elements, the map stage runs once per element, each output equal to ONNX
    Runtime's on that element alone, gathered in list order; an empty list runs nothing."""
    result = infer(fan, count)
    want = np.concatenate([alone(lin_path, X[i:i + 1]) for i in range(count)]) if count else np.zeros((0, K))
    np.testing.assert_allclose(result.outputs["y"], want, rtol=1e-5, atol=1e-6)
    elements = [s for s in result.stages if s.stage.startswith("lin[")]
    assert [s.stage for s in elements] == [f"lin[{i}]" for i in range(count)]
    assert all(s.status == "OK" and s.device in ("cpu0", "cpu1") for s in elements)
    lin = next(s for s in result.stages if s.stage == "lin")
    assert lin.status == "OK" and lin.compute_ms == pytest.approx(sum(s.compute_ms for s in elements))


def test_elements_of_one_request_run_on_two_devices_at_once(fan):
    """The elements of one request are separate runs: both CPU devices take some, at the same time
    (the intervals of two element runs on different devices overlap)."""
    result = infer(fan, 6)
    elements = [s for s in result.stages if s.stage.startswith("lin[")]
    assert {s.device for s in elements} == {"cpu0", "cpu1"}
    assert any(a.device != b.device and a.start_offset_ms < b.end_offset_ms and b.start_offset_ms < a.end_offset_ms
               for a in elements for b in elements), [(s.device, s.start_offset_ms, s.end_offset_ms) for s in elements]


def test_map_batch_runs_elements_in_sub_batches_and_ragged_ones_stay_apart(lin_path):
    """map_batch = 2 over 5 elements makes 3 runs of 2, 2 and 1 elements, outputs as if each ran
    alone; over a ragged list (element i has i + 1 rows) each element keeps its own rows."""
    with running_server(parse_test_document(fan_document(lin_path, map_batch=2))) as running:
        result = infer(running, 5)
        np.testing.assert_allclose(result.outputs["y"], alone(lin_path, X[:5]), rtol=1e-5, atol=1e-6)
        assert [s.stage for s in result.stages if s.stage.startswith("lin[")] == ["lin[0]", "lin[1]", "lin[2]"]
    doc = fan_document(lin_path, split="stage_fns:ragged_rows_of")
    with running_server(parse_test_document(doc)) as running:
        result = infer(running, 3)
    want = np.concatenate([alone(lin_path, X[:i + 1]) for i in range(3)])
    np.testing.assert_allclose(result.outputs["y"], want, rtol=1e-5, atol=1e-6)


def test_elements_of_concurrent_requests_share_batches(lin_path):
    """With the map stage's model batching (one device holding its pass until 4 rows are queued),
    the 2 + 2 elements of two concurrent requests run as one pass of 4, and each request still
    gets its own elements' outputs."""
    doc = fan_document(lin_path, devices=("cpu0",), max_batch=4, preferred_batch_sizes=[4],
                       max_queue_delay_us=5_000_000)
    with running_server(parse_test_document(doc)) as running:
        xs = [X[:2], X[4:6]]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda x: infer(running, 2, x), xs))
        metrics = scrape_metrics(running.metrics_url)
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_allclose(result.outputs["y"], alone(lin_path, x), rtol=1e-5, atol=1e-6)
    labels = frozenset({("model", "lin"), ("device", "cpu0")})
    assert metrics[("heddle_batch_size_count", labels)] == 1
    assert metrics[("heddle_batch_size_sum", labels)] == 4


def test_a_stage_that_returns_no_list_for_a_list_output_fails_naming_it(lin_path):
    """A list output must be a list of arrays: an array instead fails the request naming the output."""
    doc = fan_document(lin_path, split="stage_fns:rows_as_array")
    with running_server(parse_test_document(doc)) as running, pytest.raises(
            Exception, match="output parts is declared a list, got ndarray"):
        infer(running, 2)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["pipelines"][0]["stages"][1].pop("map"),
     "stage 'lin', input 'x': 'split.parts' is a list; map over it"),
    (lambda d: d["pipelines"][0]["stages"][1].update(map="input:x"), "must name a stage's list output"),
    (lambda d: d["pipelines"][0].update(outputs={"y": "lin.y"}), "output 'y': 'lin.y' is a list"),
    (lambda d: d["models"][2]["inputs"][0].pop("list"), "stage 'gather', input 'parts': 'lin.y' is a list"),
    (lambda d: d["pipelines"][0]["stages"][2].update(map_batch=2), "map_batch is for a map stage"),
    (lambda d: d["pipelines"][0]["stages"][2].update(map_sort="split.parts"), "map_sort is for a map stage"),
    (lambda d: d["pipelines"][0]["stages"][1].update(map_sort="split.nope"), "stage 'split' has no output 'nope'"),
    (lambda d: d["pipelines"][0]["stages"][1].update(map_sort="split.parts"), "map_sort = 'split.parts' is a list"),
])
def test_list_wiring_mistakes_stop_the_start_naming_them(lin_path, change, message):
    """A list reaches a stage only as its mapped input or an input declared a list; pipeline
    outputs are tensors; map_batch needs map: each mistake is a config error naming the stage."""
    doc = fan_document(lin_path)
    change(doc)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_test_document(doc)


@pytest.mark.parametrize("count", [0, 4])
def test_a_list_output_gathered_by_declaration_is_one_tensor(lin_path, count):
    """outputs = { y = { from = "lin.y", gather = "concat" } }: no gather stage, the per-element
    outputs joined on their first dim (0 rows for no element); KServe's metadata says [-1, 3]."""
    doc = fan_document(lin_path)
    p = doc["pipelines"][0]
    p["stages"] = p["stages"][:2]
    p["outputs"] = {"y": {"from": "lin.y", "gather": "concat"}}
    with running_server(parse_test_document(doc)) as running:
        result = infer(running, count)
        shape = [list(t.shape) for t in running.server.runtime.config.pipelines["fan"].outputs]
    want = np.concatenate([alone(lin_path, X[i:i + 1]) for i in range(count)]) if count else np.zeros((0, K))
    np.testing.assert_allclose(result.outputs["y"], want, rtol=1e-5, atol=1e-6)
    assert shape == [[-1, K]]


def test_a_ragged_list_stacks_padded_with_the_declared_value(lin_path):
    """gather = "stack" with pad = -1 over elements of 1, 2 and 3 rows: [3, 3, 3], each element's
    rows first, then rows of -1."""
    doc = fan_document(lin_path, split="stage_fns:ragged_rows_of")
    p = doc["pipelines"][0]
    p["stages"] = p["stages"][:2]
    p["outputs"] = {"y": {"from": "lin.y", "gather": "stack", "pad": -1.0}}
    with running_server(parse_test_document(doc)) as running:
        y = infer(running, 3).outputs["y"]
    assert y.shape == (3, 3, K)
    for i in range(3):
        np.testing.assert_allclose(y[i, :i + 1], alone(lin_path, X[:i + 1]), rtol=1e-5, atol=1e-6)
        assert (y[i, i + 1:] == -1).all()


@pytest.mark.parametrize(("outputs", "message"), [
    ({"y": {"from": "gather.y", "gather": "concat"}}, "'gather.y' is a tensor already; gather is for a list"),
    ({"y": {"from": "gather.y", "pad": 1.0}}, "pad is for a gathered output"),
])
def test_gather_declaration_mistakes_are_said(lin_path, outputs, message):
    doc = fan_document(lin_path)
    doc["pipelines"][0]["outputs"] = outputs
    with pytest.raises(ConfigError, match=message):
        parse_test_document(doc)


def _sorted_doc(lin_path: str, sort: bool) -> dict:
    """by_width's elements (widths 4, 2, 4, 2) through a python map stage two at a time, in width
    order when `sort`, stacked into the output padded with 0."""
    doc = fan_document(lin_path, split="stage_fns:by_width")
    doc["models"][0]["outputs"] = [{**tensor("parts", shape=(-1, -1)), "list": True}, tensor("widths", "INT64", (-1,))]
    doc["models"].append(python_model("same", "stage_fns:same", [tensor("x", shape=(-1, -1))],
                                      [tensor("y", shape=(-1, -1))]))
    p = doc["pipelines"][0]
    p["stages"] = [p["stages"][0], {**map_stage("each", "same", "split.parts", map_batch=2, x="split.parts"),
                                    **({"map_sort": "split.widths"} if sort else {})}]
    p["outputs"] = {"y": {"from": "each.y", "gather": "stack"}}
    return doc


def test_map_sort_puts_elements_of_one_key_in_a_run_and_gathers_in_list_order(lin_path):
    """map_sort = "split.widths" with map_batch 2 over widths 4, 2, 4, 2: two runs of two rows,
    each of one width (without it the first run would join widths 4 and 2 and fail); the outputs
    come back in list order."""
    import stage_fns

    stage_fns.SAME_CALLS.clear()
    with running_server(parse_test_document(_sorted_doc(lin_path, sort=True))) as running:
        y = infer(running, 4).outputs["y"]
    assert stage_fns.SAME_CALLS == [2, 2]
    for i in range(4):
        width = 4 if i % 2 == 0 else 2
        np.testing.assert_array_equal(y[i, :, :width], X[i:i + 1, :width])
    with running_server(parse_test_document(_sorted_doc(lin_path, sort=False))) as running, pytest.raises(
            Exception, match="cannot share a run"):
        infer(running, 4)
