"""Hostile requests for the decoder fuzz (tests/e2e/test_fuzz_decoders.py, bench/fuzz_decoders.py): a
config declaring every datatype, hypothesis strategies for heddle.v1 and KServe requests and raw
bytes, and what each case may be answered with. Callers live in fuzz_callers.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as kpb

from heddle.clients.tensors import DATATYPE_TO_NUMPY, to_tensor
from heddle.server.config.builder import (
    document,
    onnx_device,
    onnx_model,
    pipeline,
    python_device,
    python_model,
    stage,
    tensor,
)
from heddle.v1 import heddle_pb2 as pb

__all__ = ["ALLOWED_CODES", "Case", "FUZZ_CONFIG", "PIPELINES", "cases", "kserve_requests", "raw_cases", "v1_requests"]

# Status codes a hostile request may get; anything else (UNKNOWN, INTERNAL, ...) is a defect.
# UNIMPLEMENTED: KServe shared memory and classification, refused by design.
ALLOWED_CODES = frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                           "ALREADY_EXISTS", "UNIMPLEMENTED"})

# One echo pipeline per datatype (a python stage returning its input), and the demo LLM (vocabulary
# 512, 24 positions), so every decoder and the generation options reach a real stage.
DATATYPE_SHAPES = {"BOOL": (-1,), "UINT8": (-1, 4, 3), "INT8": (-1,), "UINT16": (-1,), "INT32": (2, -1),
                   "INT64": (-1,), "UINT64": (-1,), "FP16": (-1,), "BF16": (-1,), "FP32": (-1,),
                   "FP64": (-1,), "BYTES": (-1,)}
PIPELINES = {f"echo_{dt.lower()}": (dt, shape) for dt, shape in DATATYPE_SHAPES.items()}
PIPELINES["chat"] = ("INT64", (1, -1))


def _echo(name: str, datatype: str, shape: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A python echo of one tensor on py0, and the one-stage pipeline `name` over it."""
    model = python_model(f"m_{name}", "heddle.backends.zoo.ops:echo", [tensor("x", datatype, shape)],
                         [tensor("y", datatype, shape)], devices=["py0"])
    return model, pipeline(name, [tensor("x", datatype, shape)], {"y": "s.y"}, [stage("s", f"m_{name}", x="input:x")])


_ECHOES = [_echo(p, dt, shape) for p, (dt, shape) in PIPELINES.items() if p != "chat"]
FUZZ_CONFIG = document(
    devices=[python_device("py0", slots=4), onnx_device("cpu0", providers=["CPUExecutionProvider"])],
    models=[*(m for m, _ in _ECHOES), onnx_model("llm", "builtin:llm", kind="llm", devices=["cpu0"], max_new_tokens=2,
                                                 max_positions=24, max_batch=4)],
    pipelines=[*(p for _, p in _ECHOES), pipeline("chat", [tensor("input_ids", "INT64", (1, -1))],
                                                   {"output_ids": "llm.output_ids"},
                                                   [stage("llm", "llm", input_ids="input:input_ids")])])


@dataclass(frozen=True)
class Case:
    """One fuzz case: a heddle.v1 or KServe request message, or raw bytes for one of their methods."""

    frontend: str  # "v1" | "kserve"
    message: object = None
    raw: bytes | None = None
    grpc_timeout_s: float | None = None


# ---- values --------------------------------------------------------------------------------
DATATYPES = [*DATATYPE_SHAPES, "", "FP8", "fp32", "STRING", "é" * 3]
_DIE = st.integers(0, 2**16 - 1)


@st.composite
def mostly(draw, good: st.SearchStrategy, hostile: st.SearchStrategy, weight: int = 4):
    """`good` about weight times out of weight + 1, so a case fails on one field, not on every one.
    Chosen by a wide integer: hypothesis steers a small choice (one_of's branch) towards the branch
    with the most unseen values, which made nearly every pipeline name junk."""
    return draw(hostile if draw(_DIE) % (weight + 1) == weight else good)


junk_text = st.text(max_size=12) | st.sampled_from(["", "x", "input:x", "n" * 20_000, "\x00", "é" * 300])
int64s = st.sampled_from([0, 1, 2, 3, 4, 5, -1, 2**31 - 1, 2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
int32s = st.sampled_from([0, 1, 2, 3, 4, 5, -1, 2**31 - 1, -(2**31)]) | st.integers(-(2**31), 2**31 - 1)
floats = st.sampled_from([0.0, 0.001, 1.0, 50.0, 1e308, math.nan, math.inf, -math.inf, -1.0, 5e-324]) | st.floats()
deadlines_ms = st.sampled_from([0.0, 0.0, 0.001, 5.0, 30_000.0, 86_400_000.0, 86_400_001.0]) | floats
dims = st.sampled_from([0, 1, 2, 3, 4, -1, 2**31, 2**63 - 1]) | st.integers(-(2**63), 2**63 - 1)
absurd_shapes = st.lists(dims, max_size=10) | st.just([1] * 64)
grpc_timeouts = mostly(st.none(), st.sampled_from([0.0, -1.0, 0.0005, 0.05]) | st.floats(0.001, 30))
# Built once: hypothesis validates a strategy on first use, which costs more than the draw.
_small, _seed, _byte, _one_in_ten = st.integers(0, 4), st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 9)
_mutations = mostly(st.just([]), st.lists(st.sampled_from(["name", "datatype", "shape", "raw", "bit"]),
                                          min_size=1, max_size=3), 1)
_ONE_IN = {n: st.integers(0, n - 1) for n in (3, 4, 5, 6, 16, 21, 31)}
_datatypes = st.sampled_from(DATATYPES)
_short_binary = st.binary(max_size=16)


@st.composite
def _array(draw, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A well-formed array for a declared shape (-1 drawn as 0..4); prompts stay in the vocabulary."""
    concrete = tuple(draw(_small) if d == -1 else d for d in shape)
    rng = np.random.default_rng(draw(_seed))
    if datatype == "BYTES":
        return np.array([rng.bytes(int(rng.integers(0, 6))) for _ in range(math.prod(concrete))],
                        dtype=object).reshape(concrete)
    dtype = DATATYPE_TO_NUMPY[datatype]
    if datatype == "BOOL":
        return rng.random(concrete) < 0.5
    if dtype.kind in "iu":
        high = 600 if len(shape) == 2 and shape[0] == 1 else 1000  # chat: a few ids past 512
        return rng.integers(0, high, size=concrete).astype(dtype)
    return rng.standard_normal(concrete).astype(dtype)


@st.composite
def tensors(draw, pipeline: str) -> list[pb.Tensor]:
    """The pipeline's input, well-formed, then 0-3 mutations of name, datatype, shape or bytes,
    and sometimes dropped, doubled or joined by a stranger."""
    datatype, shape = PIPELINES.get(pipeline, ("FP32", (-1,)))
    name = "input_ids" if pipeline == "chat" else "x"
    t = to_tensor(name, draw(_array(datatype, shape)))
    for mutation in draw(_mutations):
        if mutation == "name":
            t.name = draw(junk_text)
        elif mutation == "datatype":
            t.datatype = draw(_datatypes)
        elif mutation == "shape":
            t.shape[:] = draw(absurd_shapes)
        elif mutation == "raw":
            t.raw_data = draw(st.binary(max_size=64) | st.just(t.raw_data[:-1]) | st.just(t.raw_data + b"\x02"))
        elif t.raw_data:  # flip one byte: BOOL 0/1, BYTES length prefixes, NaN floats
            i = draw(st.integers(0, len(t.raw_data) - 1))
            t.raw_data = t.raw_data[:i] + bytes([draw(_byte)]) + t.raw_data[i + 1:]
    out = [[t], [t], [t], [], [t, t]][draw(_small)]
    if draw(_one_in_ten) == 0:
        out.append(pb.Tensor(name=draw(junk_text), datatype=draw(_datatypes),
                             shape=draw(absurd_shapes), raw_data=draw(_short_binary)))
    return out


pipelines = mostly(st.sampled_from(sorted(PIPELINES)), junk_text, 8)
priorities = mostly(st.integers(0, 4), int32s)
good_deadlines = st.sampled_from([0.0, 0.0, 5.0, 30_000.0])


_max_new_tokens = st.sampled_from([0, 1, 2, 3, -1, 30, 2**31 - 1]) | int32s
_temperatures = st.sampled_from([0.0, 0.7, 1e-300, 0.01]) | floats
_top_ps = st.sampled_from([0.0, 0.9, 1.0]) | floats
_stop_ids = st.lists(int64s, max_size=3)
_ids = mostly(st.sampled_from(["", "a", "req-1"]), junk_text)
_output_names = mostly(st.sampled_from([[], ["y"], ["output_ids"]]), st.lists(junk_text, max_size=2))


@st.composite
def generation_options(draw) -> pb.GenerationOptions | None:
    if draw(_ONE_IN[3]):
        return None
    return pb.GenerationOptions(
        max_new_tokens=draw(_max_new_tokens), temperature=draw(_temperatures), top_k=draw(int32s),
        top_p=draw(_top_ps), seed=draw(int64s), stop_token_ids=draw(_stop_ids))


@st.composite
def v1_requests(draw) -> Case:
    pipeline = draw(pipelines)
    request = pb.InferRequest(
        pipeline=pipeline, inputs=draw(tensors(pipeline)), priority=draw(priorities),
        deadline_ms=draw(mostly(good_deadlines, deadlines_ms)),
        request_id=draw(_ids), outputs=draw(_output_names))
    generation = draw(generation_options())
    if generation is not None:
        request.generation.CopyFrom(generation)
    return Case("v1", request, grpc_timeout_s=draw(grpc_timeouts))


# ---- KServe ----------------------------------------------------------------------------------
_CONTENTS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
             "fp32_contents", "fp64_contents", "bytes_contents"]
_TYPED_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_FIELD_VALUES = {
    "bool_contents": st.booleans(), "int_contents": int32s, "int64_contents": int64s,
    "uint_contents": st.integers(0, 2**32 - 1), "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32), "fp64_contents": floats, "bytes_contents": st.binary(max_size=6)}
_FIELD_LISTS = {field: st.lists(values, max_size=6) for field, values in _FIELD_VALUES.items()}
_contents_fields = st.sampled_from(_CONTENTS)


def _typed_values(t: pb.Tensor) -> list | None:
    """The tensor's elements as a typed contents list, or None when it does not decode."""
    from heddle.clients.tensors import TensorError, from_tensor
    try:
        return from_tensor(t).ravel().tolist()
    except (TensorError, ValueError):
        return None


@st.composite
def _kserve_input(draw, t: pb.Tensor, typed: bool) -> kpb.ModelInferRequest.InferInputTensor:
    out = kpb.ModelInferRequest.InferInputTensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
    if typed:
        field = _TYPED_FIELD.get(t.datatype) or draw(_contents_fields)
        if draw(_ONE_IN[6]) == 0:
            field = draw(_contents_fields)
        values = _typed_values(t)
        if values is None or draw(_ONE_IN[6]) == 0:
            values = draw(_FIELD_LISTS[field])
        try:
            getattr(out.contents, field).extend(values)
        except (TypeError, ValueError):  # values of another field's type: send random ones of this
            getattr(out.contents, field).extend(draw(_FIELD_LISTS[field]))
    if draw(_ONE_IN[31]) == 0:
        out.parameters["shared_memory_region"].string_param = "region"
    return out


_PARAM_KINDS = {"int64_param": int64s, "uint64_param": st.integers(0, 2**64 - 1), "double_param": floats,
                "bool_param": st.booleans(), "string_param": junk_text}
_PARAM_KEYS = ["priority", "timeout", "sequence_id", "sequence_start", "max_new_tokens", "temperature",
               "top_k", "top_p", "seed", "binary_data_output"]
_param_keys = mostly(st.sampled_from([[], ["priority"], ["timeout"]]),
                     st.lists(st.sampled_from(_PARAM_KEYS) | junk_text, max_size=4, unique=True), 2)
_param_kinds = st.sampled_from(sorted(_PARAM_KINDS))
_timeouts_us = st.sampled_from([0, 5_000, 30_000_000])
_versions = mostly(st.sampled_from(["", "1"]), st.sampled_from(["2", "0"]) | junk_text)
_extra_raw = st.binary(max_size=8)


@st.composite
def kserve_parameters(draw, message) -> None:
    """Parameters of any kind and value, known keys and strangers, onto a message's `parameters`."""
    for key in draw(_param_keys):
        kind = draw(_param_kinds)
        if key in ("priority", "timeout") and draw(_ONE_IN[4]):
            kind, value = "int64_param", draw(_small if key == "priority" else _timeouts_us)
        else:
            value = draw(_PARAM_KINDS[kind])
        setattr(message.parameters[key], kind, value)


@st.composite
def kserve_requests(draw) -> Case:
    pipeline = draw(pipelines)
    inputs = draw(tensors(pipeline))
    typed = draw(_ONE_IN[4]) == 0
    request = kpb.ModelInferRequest(
        model_name=pipeline if draw(_ONE_IN[5]) else f"m_{pipeline}",  # the stage's model too
        model_version=draw(_versions), id=draw(_ids), inputs=[draw(_kserve_input(t, typed)) for t in inputs])
    if not typed:
        request.raw_input_contents.extend(t.raw_data for t in inputs)
        if draw(_ONE_IN[16]) == 0:
            request.raw_input_contents.append(draw(_extra_raw))
    for name in draw(_output_names):
        output = request.outputs.add(name=name)
        if draw(_ONE_IN[21]) == 0:
            output.parameters["classification"].int64_param = 2
    draw(kserve_parameters(request))
    return Case("kserve", request, grpc_timeout_s=draw(grpc_timeouts))


# ---- raw bytes ---------------------------------------------------------------------------------
_either_request = v1_requests() | kserve_requests()
_corruptions = st.sampled_from(["random", "cut", "flip", "append"])
_random_bytes, _tail_bytes = st.binary(max_size=128), st.binary(min_size=1, max_size=16)


@st.composite
def raw_cases(draw) -> Case:
    """Bytes for Infer or ModelInfer: random, or a real request's serialisation cut or corrupted."""
    base = draw(_either_request)
    data = base.message.SerializeToString()
    how = draw(_corruptions)
    if how == "random":
        data = draw(_random_bytes)
    elif how == "cut" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(_byte)]) + data[i + 1:]
    else:
        data += draw(_tail_bytes)
    return replace(base, message=None, raw=data)


def cases(raw: bool = True) -> st.SearchStrategy[Case]:
    """Every kind of case; raw bytes only where they can be sent (over gRPC)."""
    kinds = [v1_requests(), kserve_requests()]
    return st.one_of(*kinds, raw_cases()) if raw else st.one_of(*kinds)
