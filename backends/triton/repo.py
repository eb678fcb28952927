"""Writes Triton model repositories: config.pbtxt text and python-backend models that run ONNX files
(their model.py sources are in triton_model_code.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from heddle.backends.triton.model_code import HOLD_PY, LLM_MODEL_PY, ONNX_MODEL_PY
from heddle.scheduler.specs import TensorSpec

__all__ = [
    "HOLD_PY", "LLM_MODEL_PY", "ONNX_MODEL_PY", "model_config_text", "write_llm_python_model",
    "write_onnx_python_model", "write_python_model",
]

# Triton config names of the KServe datatypes (BYTES is TYPE_STRING in config.pbtxt).
_CONFIG_TYPE = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "BF16": "TYPE_BF16", "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING",
}

# Triton lets a request's `timeout` only shorten the queue policy's default, and a default of 0
# means "no timeout" (so nothing could shorten it): the default is an hour instead.
_QUEUE_TIMEOUT_US = 3600 * 1_000_000

def _dims(spec: TensorSpec, batching: bool) -> list[int]:
    if not batching:
        return list(spec.shape)
    if not spec.shape or spec.shape[0] != -1:
        raise ValueError(f"tensor {spec.name}: with max_batch_size > 0 its first dim must be the "
                         f"dynamic batch dim (-1), got shape {list(spec.shape)}")
    # Triton's config leaves the batch dim out; ModelMetadata puts it back as -1.
    return list(spec.shape[1:])


def _tensors(kind: str, specs: Sequence[TensorSpec], batching: bool) -> str:
    items = []
    for spec in specs:
        if spec.datatype not in _CONFIG_TYPE:
            raise ValueError(f"tensor {spec.name}: unknown datatype {spec.datatype!r}")
        dims = ", ".join(str(d) for d in _dims(spec, batching))
        items.append(f'  {{ name: "{spec.name}" data_type: {_CONFIG_TYPE[spec.datatype]} dims: [ {dims} ] }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _batcher(priority_levels: int, request_timeouts: bool, max_queue_delay_us: int) -> str:
    fields = []
    if max_queue_delay_us > 0:
        fields.append(f"max_queue_delay_microseconds: {max_queue_delay_us}")
    if priority_levels > 0:
        fields.append(f"priority_levels: {priority_levels} default_priority_level: {priority_levels}")
    if request_timeouts:
        fields.append("default_queue_policy { timeout_action: REJECT allow_timeout_override: true "
                      f"default_timeout_microseconds: {_QUEUE_TIMEOUT_US} }}")
    return "dynamic_batching { " + " ".join(fields) + " }\n"


def model_config_text(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                      max_batch_size: int = 0, priority_levels: int = 0, request_timeouts: bool = False,
                      decoupled: bool = False, instances: int = 1,
                      parameters: Mapping[str, str] | None = None, max_queue_delay_us: int = 0) -> str:
    """config.pbtxt for a python-backend model. Shapes in `inputs`/`outputs` include the batch dim
    (-1) when max_batch_size > 0, as in heddle's TensorSpecs and Triton's ModelMetadata.

    Batching models get a dynamic batcher. priority_levels > 0 gives it priority queues
    (default: the lowest level); request_timeouts makes it reject a request that waited in its
    queue longer than the request's `timeout` parameter. Both are off by default because, measured
    on Triton 2.51 with one python-backend instance, either one makes the batcher sometimes sleep
    its full 500 ms idle wait while requests are queued (p99 ~0.5 s at 4-8 concurrent clients).
    """
    batching = max_batch_size > 0
    text = f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
    text += _tensors("input", inputs, batching) + _tensors("output", outputs, batching)
    text += f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
    if decoupled:
        text += "model_transaction_policy { decoupled: true }\n"
    elif batching or priority_levels > 0 or request_timeouts:
        # Without batching the batcher is only a queue: worth having for priorities and timeouts.
        text += _batcher(priority_levels, request_timeouts, max_queue_delay_us)
    for key, value in (parameters or {}).items():
        text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    return text


def write_python_model(repository: str | os.PathLike, name: str, model_py: str, config_text: str,
                       files: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write repository/name/{config.pbtxt, 1/model.py} (+ files copied into 1/); returns the model dir."""
    folder = Path(repository) / name
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config_text)
    (version / "model.py").write_text(model_py)
    for dest, src in (files or {}).items():
        shutil.copy2(src, version / dest)
    return folder


def write_onnx_python_model(repository: str | os.PathLike, name: str, onnx_path: str | os.PathLike,
                            inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                            max_batch_size: int = 64, priority_levels: int = 0, request_timeouts: bool = False,
                            instances: int = 1) -> Path:
    """A python-backend model `name` that runs the ONNX file with onnxruntime; returns its dir.

    `inputs`/`outputs` are the ONNX graph's specs (e.g. from backends.onnxruntime.read_io_spec).
    """
    config = model_config_text(name, inputs, outputs, max_batch_size=max_batch_size,
                               priority_levels=priority_levels, request_timeouts=request_timeouts,
                               instances=instances,
                               parameters={"onnx_file": "model.onnx"})
    return write_python_model(repository, name, ONNX_MODEL_PY, config, {"model.onnx": onnx_path})


def write_llm_python_model(repository: str | os.PathLike, name: str, onnx_path: str | os.PathLike, *,
                           token_delay_s: float = 0.0) -> Path:
    """A decoupled python-backend model `name` that generates from a KV-cache decoder ONNX file
    (LLM_MODEL_PY): input_ids INT64 [1, -1] in, one output_ids INT64 [1, 1] response per token.
    token_delay_s sleeps after each token (a slow model, for tests that act mid-generation)."""
    t = TensorSpec
    config = model_config_text(name, [t("input_ids", "INT64", (1, -1))], [t("output_ids", "INT64", (1, -1))],
                               decoupled=True,
                               parameters={"onnx_file": "model.onnx", "token_delay_s": str(token_delay_s)})
    return write_python_model(repository, name, LLM_MODEL_PY, config, {"model.onnx": onnx_path})
