"""Dynamic batching against a real server: batched outputs equal unbatched ones per request for
every default ONNX model on ONNX Runtime, a cancelled member leaves the others intact, KServe's
ModelConfig says how a model batches, and heddle_batch_size counts the passes."""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    heddle_cache_dir,
    parse_test_config,
    running_server,
    scrape_metrics,
    wait_until,
)

from heddle.scheduler.specs import ModelSpec

WAIT_S = 30.0
# Every default (built-in) ONNX model but the LLM, which batches its decode steps its own way.
DEFAULT_MODELS = ("cnn", "backbone", "head_cls", "head_emb", "encoder", "text_cls")
# Rows of the requests sent together: one of two rows, so the split is by rows, not by request.
ROWS = (1, 2, 1, 1)
# The device holds its pass until exactly these rows are queued (a preferred size, a delay far
# longer than the test): the batch is formed by what was sent, not by how fast it arrived.
BATCH = sum(ROWS)
RTOL, ATOL = 1e-4, 1e-5


def config_text(names: tuple[str, ...], preferred: int, max_batch: int) -> str:
    models = "".join(f'''
[[models]]
name = "{name}"
path = "builtin:{name}"
max_batch = {max_batch}
preferred_batch_sizes = [{preferred}]
max_queue_delay_us = 5000000
''' for name in names)
    return f'''
[[devices]]
id = "cpu0"
kind = "cpu"
backend = "onnxruntime"
slots = 1
providers = ["CPUExecutionProvider"]
intra_op_threads = 1
{models}'''


@pytest.fixture(scope="module")
def batching(heddle_cache_dir: Path) -> Iterator[RunningServer]:
    with running_server(parse_test_config(config_text(DEFAULT_MODELS, BATCH, BATCH + 1),
                                          cache_dir=str(heddle_cache_dir))) as running:
        yield running


@pytest.fixture(scope="module")
def kserve(batching: RunningServer) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(batching.target)
    try:
        yield client
    finally:
        client.close()


def make_inputs(spec: ModelSpec, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs of `rows` rows (other dynamic dims 8): ids and masks as INT64 the encoder takes."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = (rows, *(8 if d < 0 else d for d in t.shape[1:]))
        if t.datatype == "INT64":
            out[t.name] = np.ones(shape, np.int64) if "mask" in t.name else rng.integers(0, 64, shape, np.int64)
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def reference(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The request run alone, by ONNX Runtime itself."""
    session = ort.InferenceSession(spec.artifact, providers=["CPUExecutionProvider"])
    names = [t.name for t in spec.outputs]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def send_together(client: tgrpc.InferenceServerClient, model: str, requests: list[dict[str, np.ndarray]],
                  spec: ModelSpec) -> list[Any]:
    """All requests in flight at once (async_infer), answers in request order."""
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for i, inputs in enumerate(requests):
        tensors = []
        for name, arr in inputs.items():
            tensor = tgrpc.InferInput(name, list(arr.shape), spec.input(name).datatype)
            tensor.set_data_from_numpy(arr)
            tensors.append(tensor)
        client.async_infer(model, tensors, callback=lambda result, error, i=i: answers.put((i, result, error)),
                           client_timeout=WAIT_S)
    got = dict((i, (result, error)) for i, result, error in (answers.get(timeout=WAIT_S) for _ in requests))
    return [got[i] for i in range(len(requests))]


def passes(server: RunningServer, model: str, bucket: str) -> float:
    return scrape_metrics(server.metrics_url).get(
        ("heddle_batch_size_bucket", frozenset({("model", model), ("device", "cpu0"), ("le", bucket)})), 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("model", DEFAULT_MODELS)
def test_batched_outputs_equal_each_request_run_alone(batching, kserve, model):
    """Four requests (five rows) of a default model run as one pass, and each gets exactly the
    outputs ONNX Runtime gives it run alone."""
    spec = batching.server.config.models[model]
    requests = [make_inputs(spec, rows, seed) for seed, rows in enumerate(ROWS)]
    before = passes(batching, model, "4.0"), passes(batching, model, "8.0")
    answers = send_together(kserve, model, requests, spec)
    for inputs, (result, error) in zip(requests, answers, strict=True):
        assert error is None, error
        for name, want in reference(spec, inputs).items():
            np.testing.assert_allclose(result.as_numpy(name), want, rtol=RTOL, atol=ATOL, err_msg=f"{model}.{name}")
    # One pass of five rows: it lands in the bucket up to 8, not the one up to 4.
    assert (passes(batching, model, "4.0"), passes(batching, model, "8.0")) == (before[0], before[1] + 1)


def test_model_config_reports_max_batch_size_and_dynamic_batching(kserve):
    """A batching model's ModelConfig reads as Triton's would: max_batch_size, dims without the
    batch dim, dynamic_batching with the preferred size and the queue delay."""
    config = kserve.get_model_config("cnn", as_json=True)["config"]
    assert int(config["max_batch_size"]) == BATCH + 1
    assert [list(map(int, i["dims"])) for i in config["input"]] == [[3, 64, 64]]
    assert config["dynamic_batching"]["preferred_batch_size"] == [BATCH]
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 5_000_000


def test_a_cancelled_member_leaves_the_others_results_intact(batching, kserve):
    """Of two requests queued in a forming batch, one is cancelled by its client: it ends
    CANCELLED and leaves the queue; three more (one of two rows) make the five rows the device
    waits for, and all four left get exactly their own outputs from the one pass."""
    spec = batching.server.config.models["head_cls"]
    requests = [make_inputs(spec, rows, 100 + i) for i, rows in enumerate((1, 1, 1, 1, 2))]
    core = batching.server.runtime.core
    wait_until(lambda: core.stats().queued["cpu0"] == 0, "an idle device")
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    calls = []
    for inputs in requests[:2]:
        tensor = tgrpc.InferInput("features", list(inputs["features"].shape), "FP32")
        tensor.set_data_from_numpy(inputs["features"])
        calls.append(kserve.async_infer("head_cls", [tensor], client_timeout=WAIT_S,
                                        callback=lambda result, error: answers.put((result, error))))
    wait_until(lambda: core.stats().queued["cpu0"] == 2, "two queued runs")
    before = passes(batching, "head_cls", "4.0"), passes(batching, "head_cls", "8.0")
    calls[0].cancel()
    cancelled = answers.get(timeout=WAIT_S)
    assert cancelled[1] is not None and "CANCELLED" in str(cancelled[1].status()), cancelled
    wait_until(lambda: core.stats().queued["cpu0"] == 1, "the cancelled run dropped")
    rest = send_together(kserve, "head_cls", requests[2:], spec)
    for inputs, (result, error) in [(requests[1], answers.get(timeout=WAIT_S)), *zip(requests[2:], rest, strict=True)]:
        assert error is None, error
        np.testing.assert_allclose(result.as_numpy("logits"), reference(spec, inputs)["logits"], rtol=RTOL, atol=ATOL)
    assert (passes(batching, "head_cls", "4.0"), passes(batching, "head_cls", "8.0")) == (before[0], before[1] + 1)


@pytest.mark.slow
def test_a_member_whose_input_fails_the_pass_fails_alone(batching, kserve):
    """An encoder request with a token id far outside the vocabulary fails the joined pass; the
    pass is run again member by member, so only that request fails and the other three get
    exactly their own outputs."""
    spec = batching.server.config.models["encoder"]
    requests = [make_inputs(spec, rows, 200 + i) for i, rows in enumerate(ROWS)]
    requests[2]["input_ids"][0, 3] = 10**9
    answers = send_together(kserve, "encoder", requests, spec)
    assert answers[2][1] is not None and "encoder" in str(answers[2][1]), answers[2]
    for inputs, (result, error) in [pair for i, pair in enumerate(zip(requests, answers, strict=True)) if i != 2]:
        assert error is None, error
        for name, want in reference(spec, inputs).items():
            np.testing.assert_allclose(result.as_numpy(name), want, rtol=RTOL, atol=ATOL, err_msg=name)
