"""KServe v2 tensors and request parameters <-> numpy and heddle's priority/deadline vocabulary."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb

from heddle.clients.tensors import (
    DATATYPE_TO_NUMPY,
    TensorError,
    check_shape,
    clipped,
    numpy_to_datatype,
    to_tensor,
)
from heddle.scheduler import Pipeline
from heddle.scheduler.specs import DATATYPES
from heddle.server.config.load import ServerSettings
from heddle.server.frontends.kserve_shm import SharedMemoryIO
from heddle.server.frontends.validation import MAX_DEADLINE_MS, RequestError, check_outputs_requested, decode_inputs

__all__ = [
    "RawTensor",
    "check_requested_outputs",
    "decode_kserve_inputs",
    "encode_output",
    "generation_overrides",
    "kserve_deadline_ms",
    "kserve_priority",
    "parameter_values",
    "refuse_sequence_parameters",
]

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
_LEN = struct.Struct("<I")
_MAX_TIMEOUT_US = int(MAX_DEADLINE_MS) * 1000

# Which typed `contents` field carries each datatype (KServe v2 / Triton rule). FP16 and BF16 have
# none: those travel only as raw_input_contents.
_CONTENTS_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


@dataclass(frozen=True, slots=True)
class RawTensor:
    """A KServe input as the attributes validation.decode_inputs reads from a heddle Tensor, so both
    frontends share one set of checks (datatype, shape, byte length, BOOL and BYTES encoding)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw_data: bytes


def parameter_values(params) -> dict[str, object]:
    """A request's parameters as Python values (bool, int, float, str), set ones only."""
    values = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            values[key] = getattr(param, which)
    return values


def _int_param(params, key: str) -> int | None:
    """An integer request parameter, or None when absent; any other parameter type is refused."""
    if key not in params:
        return None
    param = params[key]
    which = param.WhichOneof("parameter_choice")
    if which not in ("int64_param", "uint64_param"):
        raise RequestError(_INVALID, f"parameter {key!r} must be an integer, got {which or 'nothing'}")
    return getattr(param, which)


def kserve_priority(params, settings: ServerSettings) -> int:
    """The heddle priority level for a KServe `priority` parameter.

    KServe/Triton count 1 as the most urgent and 0 (or no parameter) as "the default"; heddle counts
    1..priority_levels with the highest number most urgent. So p in 1..levels maps to
    heddle level = levels - p + 1 (1 -> levels, levels -> 1) and 0 maps to the configured default
    level. Anything else is INVALID_ARGUMENT, never clamped (Triton silently uses the default).
    """
    p = _int_param(params, "priority")
    if not p:
        return settings.default_priority
    levels = settings.priority_levels
    if not 1 <= p <= levels:
        raise RequestError(_INVALID, f"priority {p} is outside 1..{levels} "
                                     f"(KServe: 1 = highest, {levels} = lowest, 0 = default)")
    return levels - p + 1


def kserve_deadline_ms(params) -> float:
    """The KServe `timeout` parameter (microseconds, 0 = none) as heddle's deadline_ms (0 = none)."""
    timeout_us = _int_param(params, "timeout")
    if timeout_us is None:
        return 0.0
    if not 0 <= timeout_us <= _MAX_TIMEOUT_US:  # 2**64-1 us as a uint64 is someone's "forever"
        raise RequestError(_INVALID, f"parameter 'timeout' {timeout_us} us is not a deadline: give 0 "
                                     f"(none) or a number of microseconds up to {_MAX_TIMEOUT_US} (24 h)")
    return timeout_us / 1000.0


def _refuse_shared_memory(what: str, params) -> None:
    if "shared_memory_region" in params:
        raise RequestError(_UNIMPLEMENTED, f"{what} uses shared memory; heddle supports only tensors "
                                           "sent in the request (raw_input_contents or contents)")


def _typed_to_raw(t, shape: tuple[int, ...]) -> bytes:
    """Typed `contents` re-encoded as KServe raw bytes; field, element count and range are checked."""
    if t.datatype not in DATATYPES or any(d < 0 for d in shape):
        return b""  # decode_inputs names the bad datatype or dimension
    field = _CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise RequestError(_INVALID, f"input {clipped(t.name)!r}: datatype {t.datatype} has no typed contents "
                                     "field; send it in raw_input_contents")
    for used, _ in t.contents.ListFields():
        if used.name != field:
            raise RequestError(_INVALID, f"input {clipped(t.name)!r}: datatype {t.datatype} goes in "
                                         f"contents.{field}, not contents.{used.name}")
    values = getattr(t.contents, field)
    if len(values) != math.prod(shape):
        raise RequestError(_INVALID, f"input {clipped(t.name)!r}: contents.{field} holds {len(values)} "
                                     f"elements, shape {list(shape)} needs {math.prod(shape)}")
    if t.datatype == "BYTES":
        return b"".join(_LEN.pack(len(v)) + v for v in values)
    dtype = DATATYPE_TO_NUMPY[t.datatype]
    if dtype.kind in "iu" and len(values):
        info = np.iinfo(dtype)
        if min(values) < info.min or max(values) > info.max:
            raise RequestError(_INVALID, f"input {clipped(t.name)!r}: contents.{field} holds values outside "
                                         f"the {t.datatype} range [{info.min}, {info.max}]")
    return np.asarray(values, dtype=dtype).tobytes()


def decode_kserve_inputs(pipeline: Pipeline, request: kpb.ModelInferRequest,
                         shm_io: SharedMemoryIO | None = None) -> dict[str, np.ndarray]:
    """Decode a ModelInferRequest's inputs (raw, typed, or in shared memory when shm_io serves it)
    and check them against the pipeline.

    As in Triton, raw_input_contents, when used, holds exactly one entry per input not in shared
    memory, in order, and then no input may also carry typed contents.
    """
    raw = request.raw_input_contents
    shared = [_shared_input(t, shm_io) for t in request.inputs]
    n_raw, n_plain = len(raw), sum(s is None for s in shared)
    if n_raw and n_raw != n_plain:
        raise RequestError(_INVALID, f"raw_input_contents has {n_raw} entries for "
                                     f"{n_plain} inputs not in shared memory; it must hold one per input")
    tensors = []
    raw_at = iter(raw)
    for t, in_shm in zip(request.inputs, shared, strict=True):
        shape = tuple(t.shape)
        try:  # first: the typed contents' checks below multiply the shape out
            check_shape(t.name, shape)
        except TensorError as exc:
            raise RequestError(_INVALID, str(exc)) from None
        has_typed = t.HasField("contents")
        if (n_raw or in_shm is not None) and has_typed:
            raise RequestError(_INVALID, f"input {clipped(t.name)!r} has typed contents while the request uses "
                                         "raw_input_contents or shared memory; use one or the other")
        if in_shm is not None:
            data = in_shm  # a view of the region: the arrays the backends get share its memory
        elif n_raw:
            data = next(raw_at)
        elif has_typed:
            data = _typed_to_raw(t, shape)
        elif 0 in shape:
            data = b""  # no elements: nothing to send
        else:
            raise RequestError(_INVALID, f"input {clipped(t.name)!r} carries no data (neither contents nor "
                                         "raw_input_contents)")
        tensors.append(RawTensor(t.name, t.datatype, shape, data))
    return decode_inputs(pipeline, tensors)


def _shared_input(t, shm_io: SharedMemoryIO | None):
    """The bytes of an input in shared memory (a view), None when it is not; refused without shm_io."""
    if shm_io is None:
        _refuse_shared_memory(f"input {clipped(t.name)!r}", t.parameters)
        return None
    return shm_io.input_data(t)


def check_requested_outputs(pipeline: Pipeline, request: kpb.ModelInferRequest,
                            shm_io: SharedMemoryIO | None = None) -> list[str]:
    """The output names to answer with, in request order (all outputs when none are named); outputs
    that name a shared memory region are claimed in shm_io (refused without it)."""
    for o in request.outputs:
        if shm_io is None:
            _refuse_shared_memory(f"requested output {clipped(o.name)!r}", o.parameters)
        else:
            shm_io.claim_output(o)
        if "classification" in o.parameters:
            raise RequestError(_UNIMPLEMENTED, f"requested output {clipped(o.name)!r} asks for classification; "
                                               "heddle returns the tensors themselves")
    return check_outputs_requested(pipeline, [o.name for o in request.outputs])


def encode_output(name: str, array: np.ndarray) -> tuple[kpb.ModelInferResponse.InferOutputTensor, bytes]:
    """An output's metadata and its raw bytes (little-endian; BYTES length-prefixed), copied once."""
    arr = np.asarray(array)
    try:
        datatype = numpy_to_datatype(arr.dtype)
        if datatype == "BYTES":
            data = to_tensor(name, arr).raw_data
        else:
            data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    except TensorError as exc:
        raise RequestError(grpc.StatusCode.INTERNAL, f"output {name!r}: {exc}") from None
    meta = kpb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=arr.shape)
    return meta, data


def refuse_sequence_parameters(params) -> None:
    """heddle models are stateless: a request that belongs to a Triton sequence cannot be honoured."""
    for key in ("sequence_id", "sequence_start", "sequence_end"):
        if key in params:
            param = params[key]
            which = param.WhichOneof("parameter_choice")
            if which is not None and getattr(param, which):
                raise RequestError(_INVALID, f"parameter {key!r}: heddle models are stateless and "
                                             "take no sequence parameters")


# Request parameters that set an LLM stage's GenerationConfig, with the parameter type each takes.
_GENERATION_PARAMS = {"max_new_tokens": "int64_param", "temperature": "double_param", "top_k": "int64_param",
                      "top_p": "double_param", "seed": "int64_param"}


def generation_overrides(params) -> dict | None:
    """GenerationConfig overrides from KServe request parameters (absent ones keep the model's)."""
    found = {}
    for key, kind in _GENERATION_PARAMS.items():
        if key in params:
            param = params[key]
            which = param.WhichOneof("parameter_choice")
            if which not in (kind, "int64_param", "uint64_param"):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"parameter {key!r} must be a number, got {which or 'nothing'}")
            found[key] = getattr(param, which)
    return found or None
