"""Resolving a validated model table into the ModelSpec the scheduler uses: one resolver per backend.

This is where a config touches the world: ONNX files are read for their inputs and outputs,
built-in models are built into the cache dir, Triton servers are asked for undeclared IO. The
tables come from config_schema already checked for keys and types, so a resolver only says what
the world answered (a missing file, an unreachable server, a graph that is no decoder).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heddle.scheduler.specs import DeviceSpec, ModelSpec, TensorSpec
from heddle.server.config.models import OnnxLlmTable, PythonModelTable, TritonLlmTable
from heddle.server.config.schema import ConfigError
from heddle.server.config.tables import TensorTable

__all__ = ["RESOLVERS", "Resolving", "resolve_model"]

# Keys that make the ModelSpec's own fields; every other key set in a table is a backend option.
_SPEC_KEYS = {"name", "backend", "kind", "devices", "inputs", "outputs", "path", "function", "triton_model"}
IoSpec = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


@dataclass(frozen=True, slots=True)
class Resolving:
    """What a resolver needs besides the table: where to say errors, where files are."""

    where: str  # "config.toml: model 'encoder'"
    base_dir: Path  # model paths are relative to the config file's folder
    cache_dir: Path  # built-in models are built under it
    candidates: tuple[DeviceSpec, ...]  # the devices the model may run on


def resolve_model(table: Any, ctx: Resolving) -> ModelSpec:
    return RESOLVERS[table.backend](table, ctx)


def _spec(table: Any, artifact: str, io: IoSpec, ctx: Resolving | None = None) -> ModelSpec:
    options = table.model_dump(exclude_unset=True, exclude=_SPEC_KEYS)
    if getattr(table, "inline", None) == "auto":
        options["inline"] = "auto" if ctx is not None and _may_run_on_loop(table, ctx) else False
    return ModelSpec(table.name, table.backend, artifact, io[0], io[1], table.kind, tuple(table.devices), options)


def _may_run_on_loop(table: Any, ctx: Resolving) -> bool:
    """Where `inline = "auto"` stays off: a python stage in a worker process, and a model that may
    run on a CPU-bandwidth-capped device (the loop's thread is in no device's cgroup)."""
    if getattr(table, "isolation", None) == "process":
        return False
    return not any(d.backend == table.backend and isinstance(d.options.get("dvfs"), dict)
                   and d.options["dvfs"].get("kind") == "cgroup" for d in ctx.candidates)


def _tensors(tables: list[TensorTable]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape), getattr(t, "list_", False)) for t in tables)


def resolve_onnxruntime(table: Any, ctx: Resolving) -> ModelSpec:
    """The ONNX file (or the built-in model, built now) and the IO its graph declares; an LLM's
    graph checked to be a KV-cache decoder, and its pipeline IO prompt ids in, tokens out."""
    from heddle.backends.base import BackendError
    from heddle.backends.onnxruntime import read_io_spec

    artifact = _onnx_path(ctx, table.path)
    try:
        spec = _spec(table, str(artifact), read_io_spec(artifact), ctx)
    except BackendError as exc:  # not ONNX, truncated: a config problem, said as one
        raise ConfigError(f"{ctx.where}: {exc}") from None
    if isinstance(table, OnnxLlmTable):
        from heddle.backends.llm import DecoderLayout

        _check(ctx, lambda: DecoderLayout.from_spec(spec))
        spec = _llm(ctx, spec)
    return _batchable(ctx, spec)


def resolve_python(table: PythonModelTable, ctx: Resolving) -> ModelSpec:
    """A function's spec; a stage class's carries its constructor options (backends/python.py)."""
    from dataclasses import replace

    spec = _spec(table, table.function or table.class_ or "", (_tensors(table.inputs), _tensors(table.outputs)), ctx)
    options = {k: v for k, v in spec.options.items() if k not in ("class_", "options", "parameters")}
    if table.parameters:
        options["parameters"] = {n: {"type": p.type, "default": p.default} for n, p in table.parameters.items()}
    if table.class_ is not None:
        options.update(stage_class=True, class_options=dict(table.options or {}))
    return replace(spec, options=options)


def resolve_triton(table: Any, ctx: Resolving) -> ModelSpec:
    """A Triton model: its declared IO, else the ModelMetadata of the first of its servers that
    answers. A Triton LLM is checked (decoupled, INT64 ids) when it loads, not here."""
    artifact = table.triton_model or table.name
    if isinstance(table, TritonLlmTable):
        return _llm(ctx, _spec(table, artifact, ((), ())))
    declared = (_tensors(table.inputs), _tensors(table.outputs))
    if declared[0] and declared[1]:
        return _batchable(ctx, _spec(table, artifact, declared))
    served = _triton_io(ctx, artifact, "" if table.triton_version is None else str(table.triton_version))
    return _batchable(ctx, _spec(table, artifact, (declared[0] or served[0], declared[1] or served[1])))


def _batchable(ctx: Resolving, spec: ModelSpec) -> ModelSpec:
    """A model that batches (max_batch > 1) must take and give its batch on a dynamic first dim
    of every tensor: that is the axis heddle joins requests on and splits outputs by."""
    if spec.kind == "llm" or not spec.batching.enabled:
        return spec
    for tensor in (*spec.inputs, *spec.outputs):
        if not tensor.shape or tensor.shape[0] >= 0:
            raise ConfigError(f"{ctx.where}: max_batch {spec.batching.max_batch} needs a dynamic first (batch) "
                              f"dim on every input and output, but {tensor.name!r} has shape {list(tensor.shape)}")
    return spec


RESOLVERS: dict[str, Callable[[Any, Resolving], ModelSpec]] = {
    "onnxruntime": resolve_onnxruntime, "python": resolve_python, "triton": resolve_triton,
}


def _llm(ctx: Resolving, spec: ModelSpec) -> ModelSpec:
    """An LLM stage, once its generation defaults are valid: prompt ids in, generated ids out."""
    from dataclasses import replace

    from heddle.backends.llm import GenerationConfig, stage_io

    _check(ctx, lambda: GenerationConfig.from_options(spec.options))
    inputs, outputs = stage_io()
    return replace(spec, inputs=inputs, outputs=outputs)


def _check(ctx: Resolving, check: Callable[[], object]) -> None:
    from heddle.backends.base import BackendError

    try:
        check()
    except (BackendError, TypeError, ValueError) as exc:
        raise ConfigError(f"{ctx.where}: {exc}") from None


def _triton_io(ctx: Resolving, model: str, version: str) -> IoSpec:
    from heddle.backends.base import BackendError
    from heddle.backends.triton.executor import read_triton_io_spec

    errors = []
    for dev in ctx.candidates:
        if dev.backend != "triton":
            continue
        try:
            return read_triton_io_spec(str(dev.options.get("url", "")), model, version, timeout_s=5.0)
        except BackendError as exc:
            errors.append(f"device {dev.id}: {exc}")
    raise ConfigError(f"{ctx.where}: declare inputs and outputs, or make one of its Triton servers reachable "
                      f"({'; '.join(errors)})")


def _onnx_path(ctx: Resolving, path: str) -> Path:
    if path.startswith("builtin:"):
        from heddle.backends.zoo.build import MODEL_NAMES, build_model

        builtin = path.removeprefix("builtin:")
        if builtin not in MODEL_NAMES:
            raise ConfigError(f"{ctx.where}: unknown builtin model {builtin!r}; known: {list(MODEL_NAMES)}")
        return build_model(builtin, ctx.cache_dir / "models")
    resolved = (ctx.base_dir / os.path.expanduser(path)).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{ctx.where}: model file {resolved} does not exist")
    return resolved

