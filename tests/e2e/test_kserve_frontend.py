"""The KServe v2 / Triton gRPC frontend's inference, driven by unmodified tritonclient (sync and aio)
against a real gateway: models and pipelines answer as running them directly does, in raw or typed
contents (discovery and status: test_kserve_discovery.py; priority, timeout and datatypes:
test_kserve_conversion.py)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from kserve_fixtures import (  # noqa: F401  (fixtures are found by name)
    ATOL,
    RTOL,
    assert_result,
    client,
    image_input,
    multihead_direct,
    ort_run,
    random_image,
    status_of,
    stub,
)
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    default_config,
    default_server,
    heddle_cache_dir,
)
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.utils import InferenceServerException

from heddle.backends.zoo import ops
from heddle.server.config.load import Config

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
