"""Checks on an incoming request before it reaches the scheduler; each failure names the problem."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import numpy as np

from heddle.clients.tensors import TensorError, clipped, from_tensor
from heddle.scheduler import Pipeline
from heddle.server.config.tables import ServerSettings

# RequestError lives with the rest of the gRPC status vocabulary (runtime/status.py), so the
# runtime's memory limits can raise it without importing a frontend; it is this module's too.
from heddle.server.runtime.status import RequestError

__all__ = [
    "MAX_DEADLINE_MS", "MAX_REQUEST_ID_BYTES", "RequestError", "check_generation", "check_outputs_requested",
    "check_parameters", "check_request_id", "declared_parameters", "decode_inputs", "effective_deadline_s",
    "pick_version", "resolve_priority",
]

# The longest deadline a request may ask for: 24 h. A live inference request takes seconds (a long
# LLM generation, minutes), so a day leaves three orders of magnitude of room, while anything past
# it is a unit mistake (microseconds sent as ms) or a hostile value (NaN, inf, 1e308, 2**64-1 us)
# that the scheduler's deadline arithmetic has no use for.
MAX_DEADLINE_MS = 24 * 3600 * 1000.0
# A request id is the client's own label, logged with every line of its request and held while it
# runs: 256 bytes fits any UUID, trace id or "app/session/seq" scheme, and a megabyte id is refused
# instead of being copied into logs, metrics of refusals and the scheduler's state.
MAX_REQUEST_ID_BYTES = 256
_INT32_MAX = 2**31 - 1
# The values each generation option may take, checked here so that a bad one is INVALID_ARGUMENT
# naming it, not an INTERNAL error from deep in the sampler (numpy refuses a negative seed; a
# temperature of 1e-300 overflows the scaled logits to inf and the draw to NaN).
_GENERATION_RULES: Mapping[str, tuple[Callable[[float], bool], str]] = {
    "max_new_tokens": (lambda v: 1 <= v <= _INT32_MAX, f"must be in 1..{_INT32_MAX}"),
    "temperature": (lambda v: v == 0 or 0.01 <= v < math.inf, "must be 0 (greedy) or a finite number >= 0.01"),
    "top_k": (lambda v: 0 <= v <= _INT32_MAX, f"must be in 0..{_INT32_MAX} (0 = no top-k cut)"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "seed": (lambda v: 0 <= v < 2**64, "must be in 0..2**64-1"),
}

def resolve_priority(priority: int, settings: ServerSettings) -> int:
    """0 means the default level; anything outside 1..levels is refused, never clamped."""
    if priority == 0:
        return settings.default_priority
    if not 1 <= priority <= settings.priority_levels:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"priority {priority} is outside 1..{settings.priority_levels} (0 = default)",
        )
    return priority

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def declared_parameters(pipeline: Pipeline, models: Mapping[str, Any]) -> dict[str, tuple[str, Any, str]]:
    """name -> (type, default, stage) of every per-request parameter the pipeline's stages take."""
    out: dict[str, tuple[str, Any, str]] = {}
    for stage in pipeline.stages:
        model = models.get(stage.model)
        for name, p in ((model.options.get("parameters") or {}) if model is not None else {}).items():
            out.setdefault(name, (p["type"], p["default"], stage.name))
    return out


def _typed(name: str, kind: str, value: Any) -> Any:
    """A parameter's value as its declared type; text (heddle.v1) is parsed, typed values
    (KServe) are checked. RequestError naming the parameter when it does not fit."""
    try:
        if kind == "string":
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in _TRUE + _FALSE:
                raise ValueError
            return text in _TRUE
        if isinstance(value, bool):
            raise ValueError
        number = int(value) if kind == "int" else float(value)
        if kind == "float" and not math.isfinite(number):
            raise ValueError
        return number
    except (TypeError, ValueError):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"parameter {clipped(name)!r} must be {'an' if kind == 'int' else 'a'} {kind}, "
                           f"got {clipped(str(value))!r}") from None


def check_parameters(pipeline: Pipeline, models: Mapping[str, Any], given: Mapping[str, Any], *,
                     ignore_unknown: bool = False) -> dict[str, Any] | None:
    """A request's per-request parameters, typed; every required one present. An undeclared name
    is INVALID_ARGUMENT (ignore_unknown: left out, as KServe's other request parameters are)."""
    declared = declared_parameters(pipeline, models)
    if not declared and (ignore_unknown or not given):
        return None
    values = {}
    for name, value in given.items():
        if name not in declared:
            if ignore_unknown:
                continue
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"unknown parameter {clipped(name)!r}; pipeline {pipeline.name!r} takes "
                               f"{sorted(declared) or 'none'}")
        values[name] = _typed(name, declared[name][0], value)
    missing = sorted(n for n, (_, default, _) in declared.items() if default is None and n not in values)
    if missing:
        stage = declared[missing[0]][2]
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"parameter {missing[0]!r} is required (stage {stage!r} of pipeline {pipeline.name!r} "
                           f"has no default for it)")
    return values or None


def pick_version(router, pipeline: Pipeline, pins: Mapping[str, str]) -> Pipeline:
    """The variant of the pipeline this request runs (server/runtime/versions.py): the versions it
    pins, else a canary split's weighted pick; a pin no variant satisfies is INVALID_ARGUMENT."""
    try:
        return router.pick(pipeline, {clipped(k): clipped(v) for k, v in pins.items()})
    except ValueError as exc:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def check_request_id(request_id: str, field: str = "request_id") -> str:
    """The client's request id (field: its name in the request), refused past MAX_REQUEST_ID_BYTES."""
    if len(request_id) * 4 > MAX_REQUEST_ID_BYTES:  # UTF-8 takes at most 4 bytes a character
        size = len(request_id.encode())
        if size > MAX_REQUEST_ID_BYTES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{field} is {size} bytes long; the limit is {MAX_REQUEST_ID_BYTES} bytes")
    return request_id


def check_generation(overrides: Mapping[str, object] | None, prefix: str) -> Mapping[str, object] | None:
    """Generation overrides (None = the model's own value) checked against _GENERATION_RULES;
    prefix names where the options came from in messages ("generation." or "parameter ")."""
    for key, value in (overrides or {}).items():
        rule = _GENERATION_RULES.get(key)
        if rule is not None and value is not None and not rule[0](value):  # NaN fails every rule
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{prefix}{key} {value!r} is out of range: it {rule[1]}")
    return overrides


def effective_deadline_s(deadline_ms: float, grpc_remaining_s: float | None) -> float | None:
    """The earlier of the request's own deadline (0 = none) and the gRPC deadline, relative to now.

    deadline_ms must be a number in [0, MAX_DEADLINE_MS]: NaN, inf, negative or longer than 24 h is
    INVALID_ARGUMENT (the comparison is written so that NaN fails it)."""
    if not 0 <= deadline_ms <= MAX_DEADLINE_MS:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"deadline_ms {deadline_ms} is not a deadline: give 0 (none) or a number of "
                           f"milliseconds up to {MAX_DEADLINE_MS:.0f} (24 h)")
    candidates = [s for s in (deadline_ms / 1000.0 if deadline_ms else None, grpc_remaining_s) if s is not None]
    if not candidates:
        return None
    deadline_s = min(candidates)
    if deadline_s <= 0:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline has already passed")
    return deadline_s

def decode_inputs(pipeline: Pipeline, tensors) -> dict[str, np.ndarray]:
    """Decode proto tensors and check them against the pipeline's declared inputs."""
    arrays: dict[str, np.ndarray] = {}
    for t in tensors:
        spec = pipeline.input(t.name)
        if spec is None:
            known = [i.name for i in pipeline.inputs]
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"pipeline {pipeline.name!r} has no input {clipped(t.name)!r}; inputs: {known}")
        if t.name in arrays:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {clipped(t.name)!r} is given twice")
        if t.datatype != spec.datatype:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {clipped(t.name)!r} has datatype {clipped(t.datatype)}, pipeline "
                               f"{pipeline.name!r} expects {spec.datatype}")
        try:
            arr = from_tensor(t)
        except TensorError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if not spec.accepts_shape(tuple(arr.shape)):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {clipped(t.name)!r} has shape {list(arr.shape)}, pipeline "
                               f"{pipeline.name!r} expects {list(spec.shape)} (-1 = any)")
        arrays[t.name] = arr
    missing = [i.name for i in pipeline.inputs if i.name not in arrays]
    if missing:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"pipeline {pipeline.name!r} is missing input(s) {missing}")
    return arrays

def check_outputs_requested(pipeline: Pipeline, names) -> list[str]:
    """Requested output names must exist; empty means all."""
    known = [o.name for o in pipeline.outputs]
    for n in names:
        if n not in known:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"pipeline {pipeline.name!r} has no output {clipped(n)!r}; outputs: {known}")
    return list(names) or known

