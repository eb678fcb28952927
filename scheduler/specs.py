"""Static descriptions the scheduler works from: tensors, models, devices, pipeline stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DATATYPES",
    "BatchOptions",
    "DeviceSpec",
    "ModelSpec",
    "PipelineSpec",
    "StageSpec",
    "TensorSpec",
    "shapes_compatible",
]

# KServe v2 datatype names: the one vocabulary for tensors everywhere in heddle.
DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "BF16", "FP32", "FP64", "BYTES",
)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor's datatype and shape; -1 marks a dynamic dimension. is_list: a python
    stage's input or output that is a list of such tensors (a ragged list: one dtype and rank,
    shapes free where -1), as a `map` stage fans out over and a gather stage takes in."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    is_list: bool = False

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """True when a concrete shape fits this spec (same rank, fixed dims equal)."""
        return len(shape) == len(self.shape) and all(
            want < 0 or want == got for want, got in zip(self.shape, shape, strict=True)
        )


def shapes_compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Two declared shapes can carry the same tensor: same rank, fixed dims agree."""
    return len(a) == len(b) and all(x < 0 or y < 0 or x == y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the gateway can run.

    backend: "onnxruntime" (artifact = .onnx path), "python" (artifact = "module:function"),
    or "triton" (artifact = model name on the Triton server).
    devices: ids of the devices allowed to run it; empty means every device of its backend.
    """

    name: str
    backend: str
    artifact: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kind: str = "dnn"
    devices: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    @property
    def batching(self) -> BatchOptions:
        """Dynamic batching across requests (options max_batch, preferred_batch_sizes,
        max_queue_delay_us); off (max_batch 1) unless set. LLMs batch their decode steps with
        the same max_batch their own way (Core._batch_riders), never through these options."""
        return BatchOptions.of(self.options)


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How runs of one model may share a pass. Sizes count rows (the first dim summed over the
    members), as Triton's max_batch_size does; a request of one row adds one."""

    max_batch: int = 1
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0  # how long a run may wait in a forming batch, at most

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> BatchOptions:
        """From a model's options; ValueError naming the option that is out of range."""
        max_batch = int(options.get("max_batch", 1))
        preferred = tuple(sorted({int(p) for p in options.get("preferred_batch_sizes", ())}))
        delay_us = float(options.get("max_queue_delay_us", 0))
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        if any(not 1 <= p <= max_batch for p in preferred):
            raise ValueError(f"preferred_batch_sizes {list(preferred)} must lie in [1, max_batch = {max_batch}]")
        if not 0 <= delay_us < float("inf"):
            raise ValueError(f"max_queue_delay_us must be a finite number >= 0, not {delay_us}")
        return cls(max_batch, preferred, delay_us * 1e-6)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One schedulable execution resource.

    kind: cpu | gpu | dla | npu | remote. backend: onnxruntime | python | triton.
    options hold backend settings: for onnxruntime `providers` (list of EP names),
    `provider_options` (list of dicts, one per provider), `intra_op_threads`, `cpu_affinity`
    (list of core ids the device's worker threads are pinned to); for triton `url`.
    """

    id: str
    kind: str
    backend: str
    slots: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StageSpec:
    """A pipeline stage: runs `model`, wiring each model input from a source.

    A source is "input:NAME" (a request input) or "STAGE.OUTPUT" (another stage's output).
    map: "STAGE.OUTPUT" of a list the stage fans out over (scheduler/fanout.py): it runs once per
    `map_batch` elements, the input wired to that source getting them, and its outputs are lists;
    with map_sort, the elements go to runs in the order of that output's keys (similar ones together).
    when: "STAGE.OUTPUT" that must be non-empty / true for the stage to run; else it is skipped, and
    every stage after it too (scheduler/conditions.py).
    """

    name: str
    model: str
    inputs: Mapping[str, str]
    map: str = ""
    map_batch: int = 1
    when: str = ""
    map_sort: str = ""  # "STAGE.OUTPUT": one key per element; runs take elements in key order


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A named DAG of stages, as written in config. `outputs` maps names to "STAGE.OUTPUT";
    `optional_outputs` name those left out of a response when their stage was skipped (`when`);
    `gathered_outputs` those made of a list, name -> (how, pad value): "concat" joins the elements
    on their first dim, "stack" on a new one, each padded with the value to the largest element."""

    name: str
    inputs: tuple[TensorSpec, ...]
    stages: tuple[StageSpec, ...]
    outputs: Mapping[str, str]
    description: str = ""
    optional_outputs: tuple[str, ...] = ()
    gathered_outputs: Mapping[str, tuple[str, float]] = field(default_factory=dict)
