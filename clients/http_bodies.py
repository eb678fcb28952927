"""The bodies the HTTP client sends and reads, without I/O: a KServe v2 REST inference request with
Triton's binary tensor data extension (the JSON header, then each input's raw bytes), its response
decoded into an InferResult, KServe metadata and config as heddle.v1 listings, and an HTTP error as
the gRPC status the server mapped to it (server/frontends/http_status.py, inverted)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import numpy as np

from heddle.clients.messages import InferResult
from heddle.clients.tensors import DATATYPE_TO_NUMPY, from_tensor, numpy_to_datatype, to_tensor
from heddle.v1 import heddle_pb2

__all__ = [
    "BINARY_HEADER", "PIPELINE_PLATFORM", "grpc_code", "infer_body", "infer_result", "model_info", "pipeline_info",
]

BINARY_HEADER = "inference-header-content-length"
PIPELINE_PLATFORM = "heddle_pipeline"  # what a heddle pipeline reports as its KServe platform
_C = grpc.StatusCode
# HTTP status -> the gRPC status a heddle server answers with it (400 is also FAILED_PRECONDITION,
# 409 also ABORTED, 500 also UNKNOWN/DATA_LOSS: the commonest is kept).
_CODES: Mapping[int, grpc.StatusCode] = {
    400: _C.INVALID_ARGUMENT, 401: _C.UNAUTHENTICATED, 403: _C.PERMISSION_DENIED, 404: _C.NOT_FOUND,
    409: _C.ALREADY_EXISTS, 413: _C.RESOURCE_EXHAUSTED, 429: _C.RESOURCE_EXHAUSTED, 499: _C.CANCELLED,
    500: _C.INTERNAL, 501: _C.UNIMPLEMENTED, 502: _C.UNAVAILABLE, 503: _C.UNAVAILABLE, 504: _C.DEADLINE_EXCEEDED,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    return _CODES.get(http_status, _C.UNKNOWN)


def _raw(name: str, array: Any) -> tuple[str, tuple[int, ...], bytes]:
    arr = np.asarray(array)
    datatype = numpy_to_datatype(arr.dtype)
    if datatype == "BYTES" or arr.dtype.byteorder == ">":
        return datatype, arr.shape, to_tensor(name, arr).raw_data
    return datatype, arr.shape, arr.tobytes()


def infer_body(inputs: Mapping[str, Any], *, request_id: str = "", outputs: Iterable[str] | None = None,
               parameters: Mapping[str, Any] | None = None) -> tuple[bytes, int]:
    """The request body and its JSON header's length (the Inference-Header-Content-Length value):
    every input as binary data, every output asked back as binary data."""
    entries, chunks = [], []
    for name, array in inputs.items():
        datatype, shape, data = _raw(name, array)
        entries.append({"name": name, "datatype": datatype, "shape": list(shape),
                        "parameters": {"binary_data_size": len(data)}})
        chunks.append(data)
    doc: dict[str, Any] = {"inputs": entries, "parameters": {"binary_data_output": True, **(parameters or {})}}
    if request_id:
        doc["id"] = request_id
    if outputs:
        doc["outputs"] = [{"name": o, "parameters": {"binary_data": True}} for o in outputs]
    header = json.dumps(doc, separators=(",", ":")).encode()
    return b"".join([header, *chunks]), len(header)


class _Raw:
    """An output as from_tensor reads a Tensor."""

    __slots__ = ("datatype", "name", "raw_data", "shape")

    def __init__(self, name: str, datatype: str, shape: tuple[int, ...], raw_data: Any) -> None:
        self.name, self.datatype, self.shape, self.raw_data = name, datatype, shape, raw_data


def _output(out: Mapping[str, Any], binary: memoryview, at: int) -> tuple[np.ndarray, int]:
    name, datatype, shape = out["name"], out["datatype"], tuple(out["shape"])
    size = (out.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        return from_tensor(_Raw(name, datatype, shape, binary[at:at + size])), at + size  # type: ignore[arg-type]
    data = out.get("data", [])
    if datatype == "BYTES":
        return np.array([str(v).encode() for v in data], dtype=object).reshape(shape), at
    return np.asarray(data, dtype=DATATYPE_TO_NUMPY[datatype]).reshape(shape), at


def infer_result(body: bytes, header_length: str | None, request_id: str) -> InferResult:
    """A KServe REST inference response as an InferResult (no per-stage timings: KServe has none)."""
    split = int(header_length) if header_length is not None else len(body)
    doc = json.loads(body[:split])
    binary, at, outputs = memoryview(body)[split:], 0, {}
    for out in doc.get("outputs", []):
        outputs[out["name"]], at = _output(out, binary, at)
    params = doc.get("parameters") or {}
    return InferResult(request_id=doc.get("id") or request_id, pipeline=doc.get("model_name", ""),
                       outputs=outputs, total_ms=params.get("heddle_total_us", 0) / 1e3,
                       priority=params.get("heddle_priority_level", 0),
                       deadline_missed=bool(params.get("heddle_deadline_missed", False)))


def _tensors(entries: Iterable[Mapping[str, Any]]) -> list[heddle_pb2.TensorInfo]:
    return [heddle_pb2.TensorInfo(name=t["name"], datatype=t.get("datatype", ""), shape=t.get("shape", []))
            for t in entries]


def _param(config: Mapping[str, Any], key: str) -> str:
    return ((config.get("parameters") or {}).get(key) or {}).get("string_value", "")


def pipeline_info(meta: Mapping[str, Any], config: Mapping[str, Any]) -> heddle_pb2.PipelineInfo:
    """A pipeline's KServe metadata and config as ListPipelines describes it (its ensemble steps as stages)."""
    steps = (config.get("ensemble_scheduling") or {}).get("step", [])
    return heddle_pb2.PipelineInfo(
        name=meta["name"], description=_param(config, "heddle_description"),
        inputs=_tensors(meta.get("inputs", [])), outputs=_tensors(meta.get("outputs", [])),
        stages=[heddle_pb2.PipelineInfo.Stage(name=s.get("model_name", ""), model=s.get("model_name", ""))
                for s in steps])


def model_info(meta: Mapping[str, Any], config: Mapping[str, Any]) -> heddle_pb2.ModelInfo:
    """A model's KServe metadata and config as ListModels describes it."""
    devices = _param(config, "heddle_devices")
    return heddle_pb2.ModelInfo(
        name=meta["name"], backend=config.get("backend", ""), kind=_param(config, "heddle_kind"),
        inputs=_tensors(meta.get("inputs", [])), outputs=_tensors(meta.get("outputs", [])),
        devices=devices.split(",") if devices else [])
