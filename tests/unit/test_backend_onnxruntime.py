"""Tests for the executor seam (dtypes, pools, factory) and the ONNX Runtime backend on real sessions."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from heddle.backends.base import BackendError, InputError, datatype_of, make_pool, numpy_dtype
from heddle.backends.onnxruntime import OrtExecutor, read_io_spec, session_options, warm_inputs
from heddle.backends.python import PythonExecutor
from heddle.backends.zoo import MODEL_NAMES, build_default_models
from heddle.scheduler.specs import DeviceSpec, ModelSpec, TensorSpec
from heddle.server.runtime.executors import make_executor

CPU = DeviceSpec("cpu0", "cpu", "onnxruntime")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_default_models(tmp_path_factory.mktemp("zoo"))


def spec_of(name: str, path: Path) -> ModelSpec:
    inputs, outputs = read_io_spec(path)
    return ModelSpec(name, "onnxruntime", str(path), inputs, outputs)


@pytest.fixture(scope="module")
def executor(zoo: dict[str, Path]) -> Iterator[OrtExecutor]:
    ex = OrtExecutor(DeviceSpec("cpu0", "cpu", "onnxruntime", slots=2))
    for name, path in zoo.items():
        ex.load(spec_of(name, path))
    yield ex
    ex.close()


def sample_inputs(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for a zoo model: batch 2, sequence 5, a KV cache of 3 past positions."""
    rng = np.random.default_rng(seed)
    feed = {}
    for t in spec.inputs:
        if t.name.startswith("past_key_values."):
            shape = [2, t.shape[1], 3, t.shape[3]]
        else:
            shape = [2 if i == 0 else (5 if d < 0 else d) for i, d in enumerate(t.shape)]
        if t.datatype == "INT64":
            feed[t.name] = rng.integers(0, 100, shape).astype(np.int64)
        else:
            feed[t.name] = rng.standard_normal(shape).astype(np.float32)
    if "past_key_values.0.key" in feed:
        feed["attention_mask"] = np.ones((2, 3 + 5), np.int64)
        feed["position_ids"] = np.broadcast_to(np.arange(3, 8, dtype=np.int64), (2, 5)).copy()
    elif "attention_mask" in feed:
        feed["attention_mask"] = np.ones((2, 5), np.int64)
    return feed


# --- datatypes ---

def test_datatype_mapping_round_trips() -> None:
    """Every numeric KServe datatype maps to a numpy dtype and back; BYTES is an object array."""
    for name in ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                 "FP16", "FP32", "FP64", "BYTES", "BF16"):
        assert datatype_of(numpy_dtype(name)) == name
    assert numpy_dtype("BYTES") == np.dtype(object)
    assert numpy_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)
    assert datatype_of(np.array([b"ab"]).dtype) == "BYTES"


def test_unknown_datatypes_are_refused() -> None:
    """An unknown KServe name or a numpy dtype KServe cannot carry raises ValueError naming it."""
    with pytest.raises(ValueError, match="FP8"):
        numpy_dtype("FP8")
    with pytest.raises(ValueError, match="complex64"):
        datatype_of(np.complex64)


# --- pools and factory ---

def test_pool_threads_are_named_and_pinned() -> None:
    """With cpu_affinity, every pool thread runs on those cores only; the caller's affinity is untouched."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("thread pinning needs Linux sched_setaffinity")
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("needs two usable cores to tell pinned threads from unpinned ones")
    core = min(before)
    pool = make_pool(DeviceSpec("npu1", "npu", "python", slots=2, options={"cpu_affinity": [core]}))
    barrier = threading.Barrier(2)

    def where() -> tuple[str, set[int]]:
        barrier.wait(timeout=10)  # both slots busy at once, so both threads report
        return threading.current_thread().name, os.sched_getaffinity(0)

    try:
        results = [f.result() for f in [pool.submit(where) for _ in range(2)]]
    finally:
        pool.shutdown()
    assert len({name for name, _ in results}) == 2
    assert all(name.startswith("heddle-npu1") and cores == {core} for name, cores in results)
    assert os.sched_getaffinity(0) == before


def test_pool_refuses_cores_outside_the_process() -> None:
    """An affinity naming cores the process cannot use fails at construction, naming the device."""
    bad = max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(BackendError, match="gpu7"):
        make_pool(DeviceSpec("gpu7", "gpu", "onnxruntime", options={"cpu_affinity": [bad]}))


def test_make_executor_picks_by_backend() -> None:
    """The factory builds ORT and Python executors, and names triton and unknown backends in its errors."""
    ort_ex = make_executor(CPU)
    py_ex = make_executor(DeviceSpec("py", "cpu", "python"))
    try:
        assert isinstance(ort_ex, OrtExecutor) and isinstance(py_ex, PythonExecutor)
    finally:
        ort_ex.close()
        py_ex.close()
    with pytest.raises(BackendError, match="triton"):
        make_executor(DeviceSpec("t", "remote", "triton"))
    with pytest.raises(BackendError, match="tensorflow"):
        make_executor(DeviceSpec("x", "cpu", "tensorflow"))


# --- read_io_spec ---

def test_read_io_spec_reports_names_dtypes_and_dynamic_dims(zoo: dict[str, Path]) -> None:
    """Graph inputs/outputs become TensorSpecs with KServe datatypes and -1 for symbolic dims."""
    assert read_io_spec(zoo["cnn"]) == (
        (TensorSpec("image", "FP32", (-1, 3, 64, 64)),),
        (TensorSpec("logits", "FP32", (-1, 10)),),
    )
    inputs, outputs = read_io_spec(zoo["llm"])
    assert inputs[0] == TensorSpec("input_ids", "INT64", (-1, -1))
    assert inputs[3] == TensorSpec("past_key_values.0.key", "FP32", (-1, 4, -1, 32))
    assert outputs[0] == TensorSpec("logits", "FP32", (-1, -1, 512))
    assert [t.name for t in outputs[1:]] == [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]


def test_read_io_spec_skips_initializers_listed_as_inputs(tmp_path: Path) -> None:
    """Weights that an old exporter lists among graph inputs are not reported as inputs."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((2,), np.float32), "w")
    graph = h.make_graph(
        [h.make_node("Add", ["x", "w"], ["y"])], "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 2]),
         h.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 2])], [w])
    path = tmp_path / "old.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8), str(path))
    assert read_io_spec(path) == ((TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))


def test_read_io_spec_unreadable_file_raises(tmp_path: Path) -> None:
    """A file that is not ONNX raises BackendError naming the path."""
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\x00 not a model")
    with pytest.raises(BackendError, match="junk.onnx"):
        read_io_spec(path)


# --- the executor ---

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_executor_matches_plain_session(executor: OrtExecutor, zoo: dict[str, Path], name: str) -> None:
    """Running a zoo model through the executor's pool gives what a plain InferenceSession gives."""
    spec = spec_of(name, zoo[name])
    feed = sample_inputs(spec)
    got = executor.pool.submit(executor.run, name, feed).result()
    plain = ort.InferenceSession(str(zoo[name]), providers=["CPUExecutionProvider"])
    want = plain.run(None, feed)
    assert list(got) == [t.name for t in spec.outputs]
    for array, expected in zip(got.values(), want, strict=True):
        np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5)


def test_concurrent_runs_agree(executor: OrtExecutor, zoo: dict[str, Path]) -> None:
    """Runs submitted to both slots at once each return the result of their own inputs."""
    spec = spec_of("encoder", zoo["encoder"])
    feeds = [sample_inputs(spec, seed) for seed in range(6)]
    serial = [executor.run("encoder", f)["pooled"] for f in feeds]
    futures = [executor.pool.submit(executor.run, "encoder", f) for f in feeds]
    for future, expected in zip(futures, serial, strict=True):
        np.testing.assert_array_equal(future.result()["pooled"], expected)


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: {**f, "extra": f["image"]}, r"unknown input.*extra"),
    (lambda f: {}, r"missing input.*image"),
    (lambda f: {"image": f["image"].astype(np.float64)}, r"image expects FP32, got FP64"),
    (lambda f: {"image": f["image"][:, :, :32]}, r"image expects shape \[-1, 3, 64, 64\], got \[2, 3, 32, 64\]"),
    (lambda f: {"image": f["image"].tolist()}, r"image must be a numpy array"),
])
def test_bad_inputs_raise_input_error(executor: OrtExecutor, zoo: dict[str, Path], change, message: str) -> None:
    """Inputs that do not match the spec raise InputError naming the model, tensor and mismatch."""
    feed = sample_inputs(spec_of("cnn", zoo["cnn"]))
    with pytest.raises(InputError, match=message) as info:
        executor.run("cnn", change(feed))
    assert "model cnn" in str(info.value)


def test_unloaded_model_raises(executor: OrtExecutor) -> None:
    """Running a model never loaded on the device raises BackendError naming model and device."""
    with pytest.raises(BackendError, match="resnet.*cpu0"):
        executor.run("resnet", {})


def test_load_refuses_spec_missing_a_graph_input(zoo: dict[str, Path]) -> None:
    """A spec that omits one of the graph's inputs fails at load, naming that input."""
    full = spec_of("encoder", zoo["encoder"])
    partial = ModelSpec("encoder", "onnxruntime", full.artifact, full.inputs[:1], full.outputs)
    ex = OrtExecutor(CPU)
    try:
        with pytest.raises(BackendError, match="attention_mask"):
            ex.load(partial)
    finally:
        ex.close()


def test_warm_inputs_start_the_kv_cache_empty(zoo: dict[str, Path]) -> None:
    """Warm-up feeds use 1 for dynamic dims and a past length of 0 for the KV cache."""
    feed = warm_inputs(spec_of("llm", zoo["llm"]))
    assert feed["input_ids"].shape == (1, 1) and feed["attention_mask"].shape == (1, 1)
    assert feed["past_key_values.1.value"].shape == (1, 4, 0, 32)


# --- providers ---

def test_providers_reports_what_sessions_obtained(executor: OrtExecutor) -> None:
    """A CPU device reports the CPU provider, and a fresh executor probes before any load."""
    assert executor.providers() == ["CPUExecutionProvider"]
    fresh = OrtExecutor(CPU)
    try:
        assert fresh.providers() == ["CPUExecutionProvider"]
    finally:
        fresh.close()


def _unavailable_provider() -> str:
    for name in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider"):
        if name not in ort.get_available_providers():
            return name
    pytest.skip("every candidate provider is available here")


def test_requesting_an_unavailable_provider_raises() -> None:
    """Asking for a provider this onnxruntime lacks is an error, not a silent CPU fallback."""
    provider = _unavailable_provider()
    device = DeviceSpec("gpu0", "gpu", "onnxruntime",
                        options={"providers": [provider, "CPUExecutionProvider"],
                                 "provider_options": [{"device_id": 0}, {}]})
    with pytest.raises(BackendError, match=f"gpu0.*{provider}"):
        OrtExecutor(device)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_fallback_after_session_creation_raises(zoo: dict[str, Path], monkeypatch) -> None:
    """When ORT lists a provider but the session falls back to CPU (onnxruntime-gpu without CUDA), load fails."""
    provider = _unavailable_provider()
    # The narrowest seam: pretend the build lists the provider, as onnxruntime-gpu does without CUDA.
    listed = [provider, *ort.get_available_providers()]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    ex = OrtExecutor(DeviceSpec("gpu0", "gpu", "onnxruntime",
                                options={"providers": [provider, "CPUExecutionProvider"]}))
    try:
        with pytest.raises(BackendError, match=r"requested .*obtained \['CPUExecutionProvider'\]"):
            ex.load(spec_of("head_cls", zoo["head_cls"]))
    finally:
        ex.close()


def test_provider_options_must_match_providers() -> None:
    """provider_options with a different length than providers is refused at construction."""
    with pytest.raises(BackendError, match="provider_options"):
        OrtExecutor(DeviceSpec("cpu0", "cpu", "onnxruntime", options={"provider_options": [{}, {}]}))


def test_session_options_use_device_threads_and_no_spinning() -> None:
    """Sessions get the device's intra-op thread count and spinning switched off."""
    options = session_options(DeviceSpec("cpu0", "cpu", "onnxruntime", options={"intra_op_threads": 2}))
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert session_options(CPU).intra_op_num_threads == 1
