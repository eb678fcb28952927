"""Small builders for scheduler tests: devices, models and pipelines without any I/O."""

from __future__ import annotations

from heddle.scheduler import DeviceSpec, ModelSpec, PipelineSpec, StageSpec, TensorSpec, validate_pipeline

VEC = (-1, 8)


def tensor(name: str, datatype: str = "FP32", shape=VEC) -> TensorSpec:
    return TensorSpec(name, datatype, tuple(shape))


def model(name: str, inputs=("x",), outputs=("y",), backend="onnxruntime", devices=()) -> ModelSpec:
    return ModelSpec(
        name=name, backend=backend, artifact=f"{name}.onnx",
        inputs=tuple(tensor(n) for n in inputs), outputs=tuple(tensor(n) for n in outputs),
        devices=tuple(devices),
    )


def devices(n: int, slots: int = 1) -> list[DeviceSpec]:
    return [DeviceSpec(f"cpu{i}", "cpu", "onnxruntime", slots) for i in range(n)]


def chain(name: str, models: list[str]):
    """A linear pipeline input -> m0 -> m1 -> ... -> output."""
    stages, src = [], "input:x"
    for i, m in enumerate(models):
        stages.append(StageSpec(f"s{i}", m, {"x": src}))
        src = f"s{i}.y"
    return PipelineSpec(name, (tensor("x"),), tuple(stages), {"y": src})


def fork_join(name: str = "fj"):
    """input -> a -> (b, c) -> j: b and c can run at the same time."""
    return PipelineSpec(
        name, (tensor("x"),),
        (
            StageSpec("a", "m", {"x": "input:x"}),
            StageSpec("b", "m", {"x": "a.y"}),
            StageSpec("c", "m", {"x": "a.y"}),
            StageSpec("j", "join", {"x1": "b.y", "x2": "c.y"}),
        ),
        {"y": "j.y"},
    )


def standard_models() -> dict[str, ModelSpec]:
    return {"m": model("m"), "join": model("join", inputs=("x1", "x2"))}


def validated(spec, models=None):
    return validate_pipeline(spec, models or standard_models())
