"""Static descriptions the scheduler works from: tensors, models, devices, pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "DATATYPES",
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
    """A named tensor's datatype and shape; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

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
    """

    name: str
    model: str
    inputs: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A named DAG of stages, as written in config. `outputs` maps names to "STAGE.OUTPUT"."""

    name: str
    inputs: tuple[TensorSpec, ...]
    stages: tuple[StageSpec, ...]
    outputs: Mapping[str, str]
    description: str = ""
