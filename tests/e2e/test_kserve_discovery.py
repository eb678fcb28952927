"""The KServe v2 / Triton gRPC frontend's discovery and status, through unmodified tritonclient against
a real gateway: health, model metadata and config, errors for what it does not serve, statistics,
and readiness that follows device health."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from kserve_fixtures import (  # noqa: F401  (fixtures are found by name)
    client,
    image_input,
    in_loop,
    random_image,
    status_of,
)
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    chain_toml,
    default_config,
    default_server,
    heddle_cache_dir,
    py_model_toml,
    serve_toml,
)
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

# The fan-out demo's crop and gather stages take or make lists: they run inside detect_classify only.
MODELS_AND_PIPELINES = {"backbone", "chat", "chat_text", "detokenize", "llm", "tokenize", "classify", "cnn", "encoder",
                        "head_cls", "head_emb", "join", "multihead", "postprocess", "preprocess", "text_classify",
                        "text_cls", "detector", "detect_classify"}


# ---- health, metadata, config -------------------------------------------------------------

def test_server_is_live_ready_and_says_it_is_heddle(client: tgrpc.InferenceServerClient) -> None:
    """ServerLive/ServerReady are true and ServerMetadata names heddle, its version and its extensions."""
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "heddle" and meta.version == "0.1.0"
    assert {"model_configuration", "statistics", "parameters"} <= set(meta.extensions)


def test_every_model_and_pipeline_is_a_ready_model(client: tgrpc.InferenceServerClient) -> None:
    """RepositoryIndex lists every config model and pipeline as READY version 1, and each is ModelReady."""
    index = client.get_model_repository_index()
    assert {m.name for m in index.models} == MODELS_AND_PIPELINES
    assert {(m.version, m.state) for m in index.models} == {("1", "READY")}
    assert all(client.is_model_ready(name) for name in MODELS_AND_PIPELINES)
    assert client.is_model_ready("cnn", "1")
    assert not client.is_model_ready("no_such_model") and not client.is_model_ready("cnn", "2")


def test_model_metadata_gives_the_onnx_io(client: tgrpc.InferenceServerClient) -> None:
    """A model's metadata: version 1, platform onnxruntime_onnx, its ONNX inputs and outputs with -1 dims."""
    meta = client.get_model_metadata("cnn")
    assert (meta.name, list(meta.versions), meta.platform) == ("cnn", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "FP32", [-1, 3, 64, 64])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("logits", "FP32", [-1, 10])]
    assert client.get_model_metadata("join").platform == "python"


def test_model_config_keeps_full_dims_without_batching(client: tgrpc.InferenceServerClient) -> None:
    """ModelConfig of a model: max_batch_size 0, full dims with -1, TYPE_* datatypes, platform and backend."""
    config = client.get_model_config("postprocess").config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "postprocess", "python", "python", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("logits", mc.TYPE_FP32, [-1, 10])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("probs", mc.TYPE_FP32, [-1, 10]), ("label", mc.TYPE_INT64, [-1])]
    cnn = client.get_model_config("cnn").config
    assert (cnn.platform, cnn.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert not cnn.HasField("ensemble_scheduling")


def test_pipeline_metadata_and_config_describe_the_dag(client: tgrpc.InferenceServerClient) -> None:
    """A pipeline is platform heddle_pipeline; its config lists its stages as ensemble steps wired by tensor name."""
    meta = client.get_model_metadata("multihead")
    assert meta.platform == "heddle_pipeline"
    assert [t.name for t in meta.outputs] == ["probs", "label", "embedding"]
    config = client.get_model_config("multihead").config
    steps = {s.model_name: s for s in config.ensemble_scheduling.step}
    assert list(steps) == ["backbone", "head_cls", "head_emb", "join"]
    assert dict(steps["backbone"].input_map) == {"image": "image"}
    assert dict(steps["head_cls"].input_map) == {"features": dict(steps["backbone"].output_map)["features"]}
    assert dict(steps["join"].input_map) == {"logits": dict(steps["head_cls"].output_map)["logits"],
                                             "embedding": dict(steps["head_emb"].output_map)["embedding"]}
    assert dict(steps["join"].output_map) == {"probs": "probs", "label": "label", "embedding": "embedding"}
    assert all(s.model_version == -1 for s in steps.values()) and config.max_batch_size == 0

# ---- errors -------------------------------------------------------------------------------

def test_unknown_model_is_not_found_everywhere(client) -> None:
    """Infer, metadata, config and statistics of an unknown model or version answer NOT_FOUND."""
    calls = [
        lambda: client.infer("nope", [image_input(random_image(6, 1))]),
        lambda: client.get_model_metadata("nope"),
        lambda: client.get_model_config("nope"),
        lambda: client.get_inference_statistics("nope"),
        lambda: client.get_model_metadata("cnn", "3"),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException) as err:
            call()
        assert status_of(err.value) == "NOT_FOUND"


def test_unsupported_rpcs_are_unimplemented_with_a_reason(client) -> None:
    """CUDA shared memory, trace and log settings answer UNIMPLEMENTED with a message (repository load
    and unload go through config reload: test_reload.py; system shared memory: test_shared_memory.py)."""
    calls = [
        lambda: client.unregister_cuda_shared_memory(),
        lambda: client.get_cuda_shared_memory_status(),
        lambda: client.update_trace_settings(settings={"trace_rate": "1"}),
        lambda: client.update_log_settings({"log_info": True}),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException) as err:
            call()
        assert status_of(err.value) == "UNIMPLEMENTED" and "heddle does not support" in err.value.message()

# ---- statistics ---------------------------------------------------------------------------

def _stats(client, name: str):
    (s,) = client.get_inference_statistics(name).model_stats
    return s


def test_statistics_count_requests_and_composing_models(client) -> None:
    """Successes, failures and Triton's duration split add up per model; a pipeline also counts its stages' models."""
    before = {n: _stats(client, n) for n in ("cnn", "multihead", "head_emb")}
    for seed in range(2):
        client.infer("cnn", [image_input(random_image(seed, 1))])
    client.infer("multihead", [image_input(random_image(9, 1))])
    with pytest.raises(InferenceServerException):
        client.infer("cnn", [image_input(np.zeros((1, 3, 8, 8), np.float32))])
    after = {n: _stats(client, n) for n in before}
    def delta(n: str, field: str) -> int:
        return getattr(after[n].inference_stats, field).count - getattr(before[n].inference_stats, field).count

    assert (delta("cnn", "success"), delta("cnn", "fail"), delta("multihead", "success"),
            delta("head_emb", "success")) == (2, 1, 1, 1)
    assert after["cnn"].inference_count - before["cnn"].inference_count == 2
    assert after["cnn"].execution_count - before["cnn"].execution_count == 2
    s = after["cnn"].inference_stats
    assert s.success.count == s.queue.count == s.compute_input.count == s.compute_infer.count == s.compute_output.count
    assert s.success.ns > s.compute_infer.ns > 0 and after["cnn"].last_inference > 0
    everything = client.get_inference_statistics().model_stats
    assert {m.name for m in everything} == MODELS_AND_PIPELINES and {m.version for m in everything} == {"1"}

# ---- readiness follows device health; a pipeline hides a model of its name --------------------

HEALTH_TOML = (
    '[[devices]]\nid = "py0"\nkind = "cpu"\nbackend = "python"\n\n'
    '[[devices]]\nid = "py1"\nkind = "cpu"\nbackend = "python"\n\n'
    + py_model_toml("tail", "stage_fns:tail", devices=["py0"])
    + py_model_toml("lonely", "stage_fns:tail", devices=["py1"])
    + py_model_toml("solo", "stage_fns:tail", devices=["py0"])
    + chain_toml("both", ["tail", "lonely"])
    + chain_toml("tail", ["lonely"])
)


@pytest.mark.slow
def test_readiness_follows_device_health_and_pipelines_hide_models() -> None:
    """A model whose only device is unhealthy, and every pipeline using it, stop being ready; so does the server."""
    with serve_toml(HEALTH_TOML) as running:
        client = tgrpc.InferenceServerClient(running.target)
        try:
            assert client.get_model_metadata("tail").platform == "heddle_pipeline"  # the pipeline wins
            assert client.is_server_ready() and client.is_model_ready("both")
            core = running.server.runtime.core
            in_loop(running, lambda: core.set_device_health("py1", False, 0.0))
            assert [client.is_model_ready(n) for n in ("lonely", "both", "tail")] == [False, False, False]
            assert not client.is_server_ready()
            index = {m.name: m.state for m in client.get_model_repository_index().models}
            assert index == {"lonely": "UNAVAILABLE", "both": "UNAVAILABLE", "tail": "UNAVAILABLE", "solo": "READY"}
            assert client.is_model_ready("solo")
            in_loop(running, lambda: core.set_device_health("py1", True, 0.0))
            assert client.is_server_ready()
            in_loop(running, lambda: running.server.kserve.set_serving(False))
            assert not client.is_server_ready() and client.is_server_live()
        finally:
            client.close()
