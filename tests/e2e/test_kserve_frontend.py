"""The KServe v2 / Triton gRPC frontend, driven by unmodified tritonclient (sync and aio) against a real gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    chain_toml,
    default_config,
    default_server,
    heddle_cache_dir,
    py_model_toml,
    serve_toml,
)
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from heddle.backends.zoo import ops
from heddle.scheduler import ModelSpec, TensorSpec
from heddle.server.config.load import Config, ServerSettings
from heddle.server.frontends.kserve_catalog import model_pipeline
from heddle.server.frontends.kserve_convert import (
    decode_kserve_inputs,
    encode_output,
    kserve_deadline_ms,
    kserve_priority,
)
from heddle.server.frontends.validation import RequestError

RTOL, ATOL = 1e-4, 1e-5
# The fan-out demo's crop and gather stages take or make lists: they run inside detect_classify only.
MODELS_AND_PIPELINES = {"backbone", "chat", "chat_text", "detokenize", "llm", "tokenize", "classify", "cnn", "encoder",
                        "head_cls", "head_emb", "join", "multihead", "postprocess", "preprocess", "text_classify",
                        "text_cls", "detector", "detect_classify"}


@pytest.fixture()
def client(default_server: RunningServer) -> Iterator[tgrpc.InferenceServerClient]:
    c = tgrpc.InferenceServerClient(default_server.target)
    yield c
    c.close()


@pytest.fixture()
def stub(default_server: RunningServer) -> Iterator[kpb_grpc.GRPCInferenceServiceStub]:
    """The raw generated stub, for requests tritonclient cannot build (typed contents, odd parameters)."""
    with grpc.insecure_channel(default_server.target) as channel:
        yield kpb_grpc.GRPCInferenceServiceStub(channel)


def in_loop(running: RunningServer, fn: Callable[[], Any]) -> Any:
    """Run fn on the server's loop thread, where its state lives, and return its result."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), running.loop).result(20.0)


def ort_run(config: Config, model: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(Path(config.models[model].artifact)), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def multihead_direct(config: Config, image: np.ndarray) -> dict[str, np.ndarray]:
    features = ort_run(config, "backbone", {"image": image})["features"]
    logits = ort_run(config, "head_cls", {"features": features})["logits"]
    embedding = ort_run(config, "head_emb", {"features": features})["embedding"]
    return ops.join(logits, embedding)


def image_input(image: np.ndarray, name: str = "image", datatype: str = "FP32") -> tgrpc.InferInput:
    i = tgrpc.InferInput(name, list(image.shape), datatype)
    i.set_data_from_numpy(image)
    return i


def assert_result(result, expected: dict[str, np.ndarray]) -> None:
    assert sorted(o.name for o in result.get_response().outputs) == sorted(expected)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def status_of(exc: InferenceServerException) -> str:
    return exc.status().removeprefix("StatusCode.")


def random_image(seed: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 64, 64)).astype(np.float32)


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


# ---- inference ----------------------------------------------------------------------------

def test_infer_model_equals_onnxruntime(client, default_config: Config) -> None:
    """ModelInfer on the cnn model returns what an InferenceSession on its ONNX file returns, id echoed."""
    image = random_image(0)
    result = client.infer("cnn", [image_input(image)], request_id="req-7")
    assert result.get_response().id == "req-7" and result.get_response().model_version == "1"
    assert_result(result, ort_run(default_config, "cnn", {"image": image}))


def test_infer_pipeline_equals_running_its_stages(client, default_config: Config) -> None:
    """ModelInfer on the multihead pipeline equals backbone -> two heads -> join run directly."""
    image = random_image(1)
    result = client.infer("multihead", [image_input(image)])
    assert_result(result, multihead_direct(default_config, image))


def test_requested_outputs_are_a_subset_in_request_order(client, default_config: Config) -> None:
    """Only the requested outputs come back, in the requested order."""
    image = random_image(2)
    wanted = [tgrpc.InferRequestedOutput("label"), tgrpc.InferRequestedOutput("probs")]
    result = client.infer("multihead", [image_input(image)], outputs=wanted)
    assert [o.name for o in result.get_response().outputs] == ["label", "probs"]
    expected = multihead_direct(default_config, image)
    assert_result(result, {"label": expected["label"], "probs": expected["probs"]})


def test_typed_contents_give_the_same_answer_as_raw(stub, client) -> None:
    """FP32 in contents.fp32_contents gives the same outputs as the same tensor in raw_input_contents."""
    image = random_image(3, batch=1)
    typed = kpb.ModelInferRequest(model_name="cnn", inputs=[kpb.ModelInferRequest.InferInputTensor(
        name="image", datatype="FP32", shape=image.shape,
        contents=kpb.InferTensorContents(fp32_contents=image.ravel().tolist()))])
    response = stub.ModelInfer(typed)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(response.outputs[0].shape)
    raw = client.infer("cnn", [image_input(image)]).as_numpy("logits")
    np.testing.assert_array_equal(got, raw)


def test_typed_uint8_contents_run_the_classify_pipeline(stub, default_config: Config) -> None:
    """UINT8 in contents.uint_contents drives classify: preprocess -> cnn -> postprocess, as run directly."""
    image = np.random.default_rng(4).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    request = kpb.ModelInferRequest(model_name="classify", inputs=[kpb.ModelInferRequest.InferInputTensor(
        name="image", datatype="UINT8", shape=image.shape,
        contents=kpb.InferTensorContents(uint_contents=image.ravel().tolist()))])
    response = stub.ModelInfer(request)
    outputs = {o.name: np.frombuffer(raw, dtype="<f4" if o.datatype == "FP32" else "<i8").reshape(o.shape)
               for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)}
    logits = ort_run(default_config, "cnn", {"image": ops.preprocess(image)["image"]})["logits"]
    expected = ops.postprocess(logits)
    np.testing.assert_allclose(outputs["probs"], expected["probs"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(outputs["label"], expected["label"])


@pytest.mark.parametrize(("contents", "needle"), [
    (kpb.InferTensorContents(fp32_contents=[1.0, 2.0]), "holds 2 elements"),
    (kpb.InferTensorContents(int_contents=[1] * 4), "goes in contents.fp32_contents"),
])
def test_bad_typed_contents_are_invalid_argument(stub, contents, needle: str) -> None:
    """Typed contents in the wrong field or with the wrong element count are refused, naming the tensor."""
    request = kpb.ModelInferRequest(model_name="postprocess", inputs=[kpb.ModelInferRequest.InferInputTensor(
        name="logits", datatype="FP32", shape=[1, 4], contents=contents)])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'logits'" in err.value.details() and needle in err.value.details()


def test_raw_and_typed_contents_together_are_invalid_argument(stub) -> None:
    """A request using raw_input_contents may not also carry typed contents."""
    x = np.zeros((1, 10), np.float32)
    request = kpb.ModelInferRequest(
        model_name="postprocess", raw_input_contents=[x.tobytes()],
        inputs=[kpb.ModelInferRequest.InferInputTensor(
            name="logits", datatype="FP32", shape=[1, 10],
            contents=kpb.InferTensorContents(fp32_contents=x.ravel().tolist()))])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one or the other" in err.value.details()


def test_malformed_tensor_is_invalid_argument_naming_it(client, stub) -> None:
    """A wrong shape or a raw byte length that does not fit the shape is INVALID_ARGUMENT naming the tensor."""
    with pytest.raises(InferenceServerException) as err:
        client.infer("cnn", [image_input(np.zeros((1, 3, 32, 32), np.float32))])
    assert status_of(err.value) == "INVALID_ARGUMENT" and "'image'" in err.value.message()
    short = kpb.ModelInferRequest(model_name="cnn", raw_input_contents=[bytes(100)], inputs=[
        kpb.ModelInferRequest.InferInputTensor(name="image", datatype="FP32", shape=[1, 3, 64, 64])])
    with pytest.raises(grpc.RpcError) as rpc_err:
        stub.ModelInfer(short)
    assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'image'" in rpc_err.value.details() and "raw_data has 100 bytes" in rpc_err.value.details()


# ---- conversion of datatypes no zoo model uses ----------------------------------------------

def _odd_pipeline():
    spec = ModelSpec("odd", "python", "mod:fn", inputs=(
        TensorSpec("s", "BYTES", (-1,)), TensorSpec("b", "BOOL", (2,)), TensorSpec("i", "INT8", (2,))),
        outputs=(TensorSpec("o", "FP32", (1,)),))
    return model_pipeline(spec, {"odd": spec})


def _typed(name: str, datatype: str, shape, **contents) -> kpb.ModelInferRequest.InferInputTensor:
    return kpb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape,
                                                  contents=kpb.InferTensorContents(**contents))


def test_typed_bytes_bool_and_int8_decode() -> None:
    """BYTES, BOOL and INT8 typed contents decode to the arrays they describe."""
    request = kpb.ModelInferRequest(inputs=[
        _typed("s", "BYTES", [2], bytes_contents=[b"ab", b""]), _typed("b", "BOOL", [2], bool_contents=[True, False]),
        _typed("i", "INT8", [2], int_contents=[-128, 127])])
    arrays = decode_kserve_inputs(_odd_pipeline(), request)
    assert list(arrays["s"]) == [b"ab", b""] and arrays["b"].tolist() == [True, False]
    assert arrays["i"].dtype == np.int8 and arrays["i"].tolist() == [-128, 127]


def test_typed_int_out_of_range_is_refused() -> None:
    """An INT8 typed value outside -128..127 is INVALID_ARGUMENT, not wrapped around."""
    request = kpb.ModelInferRequest(inputs=[
        _typed("s", "BYTES", [0]), _typed("b", "BOOL", [2], bool_contents=[True, False]),
        _typed("i", "INT8", [2], int_contents=[1, 300])])
    with pytest.raises(RequestError, match="outside the INT8 range") as err:
        decode_kserve_inputs(_odd_pipeline(), request)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_bytes_output_is_length_prefixed_as_tritonclient_reads_it() -> None:
    """A BYTES output encodes so that tritonclient's own deserializer gets the elements back."""
    meta, data = encode_output("o", np.array([b"x", b"yz"], dtype=object))
    assert (meta.datatype, list(meta.shape)) == ("BYTES", [2])
    assert list(deserialize_bytes_tensor(data)) == [b"x", b"yz"]


# ---- parameters: priority and timeout -----------------------------------------------------

@pytest.mark.parametrize(("kserve", "heddle"), [(1, 4), (2, 3), (4, 1), (0, 2)])
def test_priority_maps_onto_heddle_levels(client, kserve: int, heddle: int) -> None:
    """KServe priority 1 (highest) .. 4 map to heddle levels 4 .. 1; 0 means the default level 2."""
    result = client.infer("postprocess", [image_input(np.zeros((1, 10), np.float32), "logits")], priority=kserve)
    assert result.get_response().parameters["heddle_priority_level"].int64_param == heddle


@pytest.mark.parametrize("priority", [5, 2**40])
def test_priority_out_of_range_is_invalid_argument(client, priority: int) -> None:
    """A priority beyond the configured levels is refused, not clamped."""
    with pytest.raises(InferenceServerException) as err:
        client.infer("cnn", [image_input(random_image(5, 1))], priority=priority)
    assert status_of(err.value) == "INVALID_ARGUMENT" and f"priority {priority} is outside 1..4" in err.value.message()


def test_priority_of_the_wrong_type_is_invalid_argument(stub) -> None:
    """A priority parameter that is not an integer is refused."""
    request = kpb.ModelInferRequest(model_name="postprocess", raw_input_contents=[bytes(40)], inputs=[
        kpb.ModelInferRequest.InferInputTensor(name="logits", datatype="FP32", shape=[1, 10])])
    request.parameters["priority"].string_param = "high"
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'priority'" in err.value.details()


def test_priority_and_timeout_conversion() -> None:
    """The mapping functions: levels - p + 1, 0 -> default, timeout microseconds -> milliseconds."""
    settings = ServerSettings(priority_levels=3, default_priority=1)
    params = kpb.ModelInferRequest().parameters
    assert kserve_priority(params, settings) == 1 and kserve_deadline_ms(params) == 0.0
    params["priority"].uint64_param = 1
    params["timeout"].int64_param = 2500
    assert kserve_priority(params, settings) == 3 and kserve_deadline_ms(params) == 2.5
    for kind, absurd in [("int64_param", -1), ("uint64_param", 2**64 - 1), ("int64_param", 86_400_000_001)]:
        setattr(params["timeout"], kind, absurd)
        with pytest.raises(RequestError, match=f"'timeout' {absurd} us is not a deadline"):
            kserve_deadline_ms(params)


def test_generous_timeout_is_met(client) -> None:
    """A timeout far beyond the work lets the request complete without a missed deadline."""
    result = client.infer("postprocess", [image_input(np.zeros((1, 10), np.float32), "logits")],
                          timeout=60_000_000)
    assert result.get_response().parameters["heddle_deadline_missed"].bool_param is False


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


# ---- the asyncio client -------------------------------------------------------------------

def test_aio_client_sees_the_same_server(default_server: RunningServer, default_config: Config) -> None:
    """tritonclient.grpc.aio: readiness, metadata, config, infer on a model and a pipeline, and statistics."""
    image = random_image(10)

    async def scenario():
        client = tgrpc_aio.InferenceServerClient(default_server.target)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("multihead")
            assert (await client.get_model_metadata("multihead")).platform == "heddle_pipeline"
            # The default config batches its demo models (max_batch 8): reported as Triton would.
            assert (await client.get_model_config("cnn")).config.max_batch_size == 8
            cnn, multihead = await asyncio.gather(client.infer("cnn", [image_input(image)]),
                                                  client.infer("multihead", [image_input(image)], priority=1))
            stats = await client.get_inference_statistics("multihead")
            return cnn, multihead, stats
        finally:
            await client.close()

    cnn, multihead, stats = asyncio.run(scenario())
    assert_result(cnn, ort_run(default_config, "cnn", {"image": image}))
    assert_result(multihead, multihead_direct(default_config, image))
    assert stats.model_stats[0].inference_stats.success.count >= 1


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
