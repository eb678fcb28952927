"""Estimates of the memory a request costs: per model from its graph or declared tensors, per pipeline, per machine.

Every estimate is taken at *reference shapes*: a dynamic first dim is 1 (one item of a batch), any
other dynamic dim is REFERENCE_DIM, a BYTES element is REFERENCE_STRING_BYTES long. A request is then
costed linearly in the bytes of its inputs, relative to the pipeline's inputs at those shapes. That
is exact for batch and for ops linear in a sequence; attention-like ops grow faster with sequence
length, which is why models also carry element limits (server/runtime/limits.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heddle.scheduler import ModelSpec, Pipeline, TensorSpec

__all__ = [
    "REFERENCE_DIM", "REFERENCE_STRING_BYTES", "ModelCost", "PipelineCost", "array_bytes", "machine_memory_bytes",
    "memory_budgets", "model_cost", "pipeline_cost", "reference_elements",
]

REFERENCE_DIM = 128
REFERENCE_STRING_BYTES = 128
_ITEM_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
               "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
               "BYTES": REFERENCE_STRING_BYTES}


@dataclass(frozen=True, slots=True)
class ModelCost:
    """One run of a model at the reference shapes."""

    model: str
    run_bytes: float  # tensors alive at its peak: inputs, intermediates, outputs (not weights)
    input_elements: int  # all its inputs together
    batched: bool  # every input has a dynamic first dim, read as the batch
    scales: bool  # False for LLM stages: their memory is bounded by their positions, not the prompt


@dataclass(frozen=True, slots=True)
class PipelineCost:
    """A request's estimated memory: fixed_bytes + bytes_per_input_byte x the bytes of its inputs."""

    fixed_bytes: float
    bytes_per_input_byte: float

    def estimate(self, input_bytes: int) -> int:
        return int(self.fixed_bytes + self.bytes_per_input_byte * input_bytes)


def reference_elements(spec: TensorSpec) -> int:
    """Elements of a tensor at its reference shape."""
    return math.prod(d if d >= 0 else (1 if i == 0 else REFERENCE_DIM) for i, d in enumerate(spec.shape))


def _spec_bytes(specs) -> float:
    return float(sum(reference_elements(t) * _ITEM_BYTES.get(t.datatype, 8) for t in specs))


def _graph_dims(model: ModelSpec) -> dict[str, int]:
    """Symbolic dim names of an ONNX graph's inputs pinned to the reference: first dims 1, others REFERENCE_DIM."""
    import onnx

    dims: dict[str, int] = {}
    graph = onnx.load(model.artifact, load_external_data=False).graph
    for value in graph.input:
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            if d.dim_param and d.dim_param not in dims:
                dims[d.dim_param] = 1 if i == 0 else REFERENCE_DIM
    return dims


def model_cost(model: ModelSpec) -> ModelCost:
    """ONNX models (not on Triton) from their graph's peak live tensors; others from their declared
    inputs and outputs, which this process holds while they run."""
    run_bytes = _spec_bytes(model.inputs) + _spec_bytes(model.outputs)
    if model.backend == "onnxruntime":
        from heddle.backends.graph_summary import peak_live_bytes_file

        run_bytes = max(run_bytes, peak_live_bytes_file(Path(model.artifact), _graph_dims(model)))
    elements = sum(reference_elements(t) for t in model.inputs)
    batched = bool(model.inputs) and all(t.shape and t.shape[0] < 0 for t in model.inputs)
    return ModelCost(model.name, run_bytes, elements, batched, scales=model.kind != "llm")


def pipeline_cost(pipeline: Pipeline, costs: dict[str, ModelCost]) -> PipelineCost:
    """Sum of its stages' reference runs (all may hold memory at once: a DAG's branches overlap and
    a request keeps every stage's outputs to its end), per byte of the pipeline's reference inputs;
    plus 1 for the request's own bytes, which gRPC and the decoded inputs hold throughout."""
    stage_costs = [costs[s.model] for s in pipeline.stages]
    scaled = sum(c.run_bytes for c in stage_costs if c.scales)
    fixed = sum(c.run_bytes for c in stage_costs if not c.scales)
    reference_in = max(_spec_bytes(pipeline.inputs), 1.0)
    return PipelineCost(fixed, 1.0 + scaled / reference_in)


def array_bytes(arr: np.ndarray) -> int:
    """Bytes a decoded input holds; a BYTES (object) array counts its strings, not its pointers."""
    if arr.dtype != object:
        return int(arr.nbytes)
    return int(arr.nbytes) + sum(len(x) for x in arr.flat if isinstance(x, (bytes, str)))


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when one is set lower (a container)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def memory_budgets(max_inflight_bytes: int, max_request_bytes: int, top_reserve_fraction: float,
                   machine_bytes: Callable[[], int] = machine_memory_bytes) -> tuple[int, int]:
    """(max_inflight_bytes, max_request_bytes) with 0 meaning the default: a quarter of the machine's
    memory, and a quarter of that. ValueError when they cannot work together."""
    if max_inflight_bytes < 0 or max_request_bytes < 0:
        raise ValueError("max_inflight_bytes and max_request_bytes must be >= 0 (0 = derived)")
    if not 0.0 <= top_reserve_fraction < 1.0:
        raise ValueError(f"inflight_top_reserve_fraction {top_reserve_fraction} is outside [0, 1)")
    inflight = max_inflight_bytes or machine_bytes() // 4
    per_request = max_request_bytes or inflight // 4
    lower = int(inflight * (1.0 - top_reserve_fraction))
    if per_request > lower:  # it could never be admitted below the top class, even on an idle server
        raise ValueError(f"max_request_bytes {per_request} is over the {lower} bytes of max_inflight_bytes "
                         f"that classes below the top may use (1 - inflight_top_reserve_fraction)")
    return inflight, per_request
