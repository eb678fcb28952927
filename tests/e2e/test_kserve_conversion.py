"""The KServe v2 / Triton gRPC frontend's request fields as heddle reads them: priority and timeout
mapped onto heddle's levels and deadline, and datatypes no zoo model uses decoded and encoded."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from kserve_fixtures import (  # noqa: F401  (fixtures are found by name)
    client,
    image_input,
    random_image,
    status_of,
    stub,
)
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    default_config,
    default_server,
    heddle_cache_dir,
)
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from heddle.scheduler import ModelSpec, TensorSpec
from heddle.server.config.load import ServerSettings
from heddle.server.frontends.kserve_catalog import model_pipeline
from heddle.server.frontends.kserve_convert import (
    decode_kserve_inputs,
    encode_output,
    kserve_deadline_ms,
    kserve_priority,
)
from heddle.server.frontends.validation import RequestError

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
