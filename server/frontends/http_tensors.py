"""KServe v2 REST bodies (JSON, with Triton's binary tensor data extension) <-> the KServe protobuf
messages the gRPC frontend already serves, so both transports share one set of checks and one path.

A request body is a JSON header, then (when `Inference-Header-Content-Length` says where the JSON
ends) the raw bytes of the inputs whose `parameters.binary_data_size` is set, in input order. Every
input becomes one `raw_input_contents` entry: binary ones as sent, JSON `data` encoded once here.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb

from heddle.clients.tensors import DATATYPE_TO_NUMPY, clipped
from heddle.server.runtime.status import RequestError

__all__ = ["BINARY_HEADER", "infer_request", "infer_response_body", "proto_parameters_to_json"]

BINARY_HEADER = "inference-header-content-length"
_LEN = struct.Struct("<I")
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _bad(message: str) -> RequestError:
    return RequestError(_INVALID, message)


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header (an object) and the binary rest of a body."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > size:
            raise _bad(f"Inference-Header-Content-Length {clipped(header_length)!r} is not a length within the "
                       f"body's {size} bytes")
        size = int(header_length)
    try:
        header = json.loads(bytes(memoryview(body)[:size]))
    except ValueError as exc:  # UnicodeDecodeError included
        raise _bad(f"the request's JSON is not valid: {exc}") from None
    if not isinstance(header, dict):
        raise _bad("the request's JSON must be an object with 'inputs'")
    return header, memoryview(body)[size:]


def _parameter(key: str, value: Any, target: kpb.InferParameter) -> None:
    """One JSON parameter as its InferParameter (bool before int: JSON true is a Python int too)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise _bad(f"parameter {clipped(key)!r} {value} does not fit 64 bits")
        if value < 2**63:
            target.int64_param = value
        else:
            target.uint64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise _bad(f"parameter {clipped(key)!r} must be a boolean, number or string, got {type(value).__name__}")


def _parameters(raw: Any, where: str, into) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise _bad(f"{where} 'parameters' must be an object")
    for key, value in raw.items():
        _parameter(key, value, into[key])


def _json_data(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON `data` (flat or nested, row-major) as the raw little-endian bytes of its datatype; the
    element count, shape and byte length are checked afterwards by the shared decoder."""
    if datatype == "BYTES":
        try:
            flat = np.asarray(data, dtype=object).reshape(-1)
        except ValueError as exc:
            raise _bad(f"input {clipped(name)!r}: data is not a regular array of strings: {exc}") from None
        if not all(isinstance(v, str) for v in flat):
            raise _bad(f"input {clipped(name)!r}: BYTES data must be strings")
        return b"".join(_LEN.pack(len(b)) + b for b in (v.encode() for v in flat))
    dtype = DATATYPE_TO_NUMPY.get(datatype)
    if dtype is None:
        return b""  # the shared decoder names the unknown datatype
    try:
        arr = np.asarray(data)
    except (ValueError, OverflowError) as exc:
        raise _bad(f"input {clipped(name)!r}: data is not a regular array of numbers: {exc}") from None
    if arr.size == 0:
        return b""
    kinds = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[np.dtype(dtype).kind]
    if arr.dtype.kind not in kinds:
        raise _bad(f"input {clipped(name)!r}: {datatype} data must be "
                   f"{'booleans' if kinds == 'b' else 'integers' if kinds == 'iu' else 'numbers'}")
    if kinds == "iu":
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise _bad(f"input {clipped(name)!r}: data holds values outside the {datatype} range "
                       f"[{info.min}, {info.max}]")
    return arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def _input(t: Any, i: int, binary: memoryview, offset: int, request: kpb.ModelInferRequest) -> int:
    """Add input i to the request; the offset into the binary data after it."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("datatype"), str):
        raise _bad(f"inputs[{i}] must be an object with a string 'name' and 'datatype'")
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise _bad(f"input {clipped(t['name'])!r}: 'shape' must be a list of integers")
    if any(not -(2**63) <= d < 2**63 for d in shape):
        raise _bad(f"input {clipped(t['name'])!r}: a dimension of 'shape' does not fit 64 bits")
    tensor = request.inputs.add(name=t["name"], datatype=t["datatype"], shape=shape)
    params = t.get("parameters") or {}
    _parameters(params, f"input {clipped(t['name'])!r}", tensor.parameters)
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if "shared_memory_region" in params:
        return offset  # its bytes are in the region; the KServe decoder reads them there
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary) - offset:
            raise _bad(f"input {clipped(t['name'])!r}: binary_data_size {size!r} is not within the "
                       f"{len(binary) - offset} bytes of binary data left")
        del tensor.parameters["binary_data_size"]
        request.raw_input_contents.append(binary[offset:offset + size].tobytes())
        return offset + size
    if "data" not in t:
        raise _bad(f"input {clipped(t['name'])!r} has neither 'data' nor parameters.binary_data_size")
    request.raw_input_contents.append(_json_data(t["name"], t["datatype"], shape, t["data"]))
    return offset


def infer_request(body: bytes, header_length: str | None, model: str, version: str,
                  request_id: str) -> tuple[kpb.ModelInferRequest, set[str] | None, bool]:
    """The ModelInferRequest of a REST infer body; the outputs asked for as binary (None: all,
    when binary_data_output is set), and whether the client gave the id (else request_id is used)."""
    header, binary = _split_body(body, header_length)
    request = kpb.ModelInferRequest(model_name=model, model_version=version)
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _bad("'id' must be a string")
    request.id = rid or request_id
    _parameters(header.get("parameters"), "the request's", request.parameters)
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise _bad("the request needs 'inputs', a list of tensors")
    offset = 0
    for i, t in enumerate(inputs):
        offset = _input(t, i, binary, offset, request)
    if offset != len(binary):
        raise _bad(f"the body has {len(binary) - offset} bytes of binary data no input's binary_data_size claims")
    binary_all = bool((header.get("parameters") or {}).get("binary_data_output", False))
    wanted_binary: set[str] | None = None if binary_all else set()
    for o in header.get("outputs") or []:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise _bad("each of 'outputs' must be an object with a string 'name'")
        out = request.outputs.add(name=o["name"])
        params = dict(o.get("parameters") or {})
        if params.pop("binary_data", binary_all) and wanted_binary is not None:
            wanted_binary.add(o["name"])
        _parameters(params, f"requested output {clipped(o['name'])!r}", out.parameters)
    return request, wanted_binary, bool(rid)


def proto_parameters_to_json(params) -> dict[str, Any]:
    """A protobuf parameter map (InferParameter values) as plain JSON values."""
    out = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


def _json_values(datatype: str, shape, data: bytes) -> list[Any]:
    if datatype == "BYTES":
        values, at = [], 0
        while at < len(data):
            (n,) = _LEN.unpack_from(data, at)
            values.append(data[at + 4:at + 4 + n].decode("utf-8", errors="replace"))
            at += 4 + n
        return values
    return np.frombuffer(data, dtype=np.dtype(DATATYPE_TO_NUMPY[datatype]).newbyteorder("<")).tolist()


def infer_response_body(response: kpb.ModelInferResponse, binary: set[str] | None,
                        echo_id: bool) -> tuple[bytes, int | None]:
    """The REST body of a ModelInferResponse and its JSON header's length (None: all JSON).
    binary: the outputs to send as binary data (None = all); the others go as flat JSON `data`."""
    outputs, chunks = [], []
    for meta, data in zip(response.outputs, response.raw_output_contents, strict=True):
        out: dict[str, Any] = {"name": meta.name, "datatype": meta.datatype, "shape": list(meta.shape)}
        if "shared_memory_region" in meta.parameters:  # written into the client's region
            out["parameters"] = proto_parameters_to_json(meta.parameters)
        elif binary is None or meta.name in binary:
            out["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            out["data"] = _json_values(meta.datatype, meta.shape, data)
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if echo_id:
        doc["id"] = response.id
    doc["parameters"] = proto_parameters_to_json(response.parameters)
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
