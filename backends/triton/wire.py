"""What heddle's terms are in Triton's gRPC API: channel options, errors and priorities, a served
model's record, its IO read from the server and checked against the config (an LLM's ids
included), and the output tensors of a response.

Apart from executor.py, which owns running calls and streams: these are the translations both a
unary call and a stream need, and the health watch and the config resolver use the first few
without an executor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from heddle.backends.base import BackendError, BackendTimeout, DeviceUnavailable, numpy_dtype
from heddle.scheduler.specs import ModelSpec, TensorSpec, shapes_compatible

__all__ = [
    "LLM_INPUT", "LLM_OUTPUT", "RemoteModel", "channel_args", "check_declared", "llm_io", "map_error",
    "read_triton_io_spec", "response_outputs", "tensor_specs", "triton_priority", "with_io",
]

_MAX_MESSAGE_BYTES = 2**31 - 1
# Triton answers UNAVAILABLE for these although the server is fine: they are about the request.
_REQUEST_UNAVAILABLE = {"Request timeout expired": BackendTimeout}
# What a `kind = "llm"` model on Triton must serve: prompt ids in, each response's new ids out.
LLM_INPUT, LLM_OUTPUT = "input_ids", "output_ids"


def channel_args(max_reconnect_backoff_ms: int = 1000) -> list[tuple[str, Any]]:
    """gRPC channel options for Triton clients: no message cap, and a short reconnect backoff so a
    restarted server is reachable again within about a second (gRPC's default backoff grows to 120 s)."""
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", min(100, max_reconnect_backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, max_reconnect_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", max_reconnect_backoff_ms),
    ]


def map_error(exc: InferenceServerException, what: str) -> BackendError:
    """The heddle error for a tritonclient error: DeviceUnavailable when the server cannot be reached."""
    status, message = exc.status() or "", exc.message() or str(exc)
    text = f"{what}: {message}"
    if status == "StatusCode.UNAVAILABLE":
        return _REQUEST_UNAVAILABLE.get(message, DeviceUnavailable)(text)
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return BackendTimeout(text)
    return BackendError(text)


def triton_priority(priority: int, levels: int, triton_levels: int) -> int:
    """Triton's priority for heddle's: heddle has 1..levels with higher more urgent, Triton 1..triton_levels
    with 1 most urgent; both use 0 for "the default". Spread proportionally, most urgent to 1."""
    if not 0 <= priority <= levels:
        raise ValueError(f"priority {priority} is outside 0..{levels}")
    if priority == 0 or triton_levels <= 0:
        return 0
    return 1 + (levels - priority) * triton_levels // levels


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """A model as the Triton server serves it."""

    spec: ModelSpec
    name: str
    version: str
    outputs: tuple[str, ...]
    datatypes: Mapping[str, str]
    decoupled: bool
    priority_levels: int


def tensor_specs(tensors) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in tensors)


def read_triton_io_spec(url: str, model: str, version: str = "",
                        timeout_s: float = 10.0) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The (inputs, outputs) of a model on a Triton server, from its ModelMetadata (batch dim as -1)."""
    with tgrpc.InferenceServerClient(url, channel_args=channel_args()) as client:
        try:
            meta = client.get_model_metadata(model, version, client_timeout=timeout_s)
        except InferenceServerException as e:
            raise map_error(e, f"model {model} on Triton server {url}") from None
    return tensor_specs(meta.inputs), tensor_specs(meta.outputs)


def check_declared(model: ModelSpec, declared, served, kind: str, where: str) -> None:
    by_name = {t.name: t for t in served}
    for spec in declared:
        got = by_name.get(spec.name)
        if got is None:
            raise BackendError(f"model {model.name}: {kind} {spec.name} is not served by {where} "
                               f"(it has {sorted(by_name)})")
        if got.datatype != spec.datatype or not shapes_compatible(got.shape, spec.shape):
            raise BackendError(f"model {model.name}: {kind} {spec.name} is declared {spec.datatype} "
                               f"{list(spec.shape)} but {where} serves {got.datatype} {list(got.shape)}")


def llm_io(model: ModelSpec, inputs, outputs, decoupled: bool, where: str) -> ModelSpec:
    """An LLM on Triton, checked to be a decoupled model with INT64 input_ids and output_ids,
    and narrowed to them (its other inputs, if any, are optional ones heddle does not send)."""
    if not decoupled:
        raise BackendError(f"{where}: a kind = \"llm\" model on Triton must be decoupled "
                           f"(model_transaction_policy {{ decoupled: true }}): it streams its tokens")
    ids = {t.name: t for t in inputs}.get(LLM_INPUT)
    out = {t.name: t for t in outputs}.get(LLM_OUTPUT)
    for what, name, spec in (("input", LLM_INPUT, ids), ("output", LLM_OUTPUT, out)):
        if spec is None or spec.datatype != "INT64":
            raise BackendError(f"{where}: an LLM on Triton needs an INT64 {what} {name} "
                               f"(got {spec.datatype if spec else 'none'})")
    return with_io(model, (ids,), (out,))


def with_io(model: ModelSpec, inputs, outputs) -> ModelSpec:
    return ModelSpec(model.name, model.backend, model.artifact, inputs, outputs, model.kind,
                     model.devices, model.options)


def response_outputs(remote: RemoteModel, result: tgrpc.InferResult) -> dict[str, np.ndarray]:
    outputs = {}
    for name in remote.outputs:
        array = result.as_numpy(name)
        if array is None:
            continue  # a streamed response may carry only some outputs
        spec = remote.spec.output(name)
        if spec is not None and spec.datatype == "BF16":
            array = array.astype(numpy_dtype("BF16"))
        outputs[name] = array
    return outputs
