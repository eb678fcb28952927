"""Pipeline validation: good DAGs are ordered, bad ones are refused with a precise message."""

from __future__ import annotations

import pytest
from sched_fixtures import fork_join, model, standard_models, tensor, validated

from heddle.scheduler import PipelineError, PipelineSpec, StageSpec, validate_pipeline


def test_fork_join_is_ordered_and_wired():
    """A fork/join DAG validates into topological order with dependencies both ways."""
    p = validated(fork_join())
    names = [s.name for s in p.stages]
    assert names.index("a") < names.index("b") < names.index("j")
    assert p.depends_on["j"] == ("b", "c")
    assert p.dependents["a"] == ("b", "c")
    assert p.outputs[0].name == "y" and p.outputs[0].datatype == "FP32"


X_INPUT = (tensor("x"),)


def _spec(stages, outputs=None, inputs=X_INPUT):
    return PipelineSpec("p", inputs, tuple(stages), outputs or {"y": f"{stages[-1].name}.y"})


@pytest.mark.parametrize(
    "stages, outputs, message",
    [
        ([StageSpec("a", "m", {"x": "b.y"}), StageSpec("b", "m", {"x": "a.y"})], None, "cycle"),
        ([StageSpec("a", "m", {"x": "ghost.y"})], None, "unknown stage 'ghost'"),
        ([StageSpec("a", "nope", {"x": "input:x"})], None, "unknown model 'nope'"),
        ([StageSpec("a", "m", {})], None, "input 'x' of model 'm' is not wired"),
        ([StageSpec("a", "m", {"x": "input:zzz"})], None, "no pipeline input named 'zzz'"),
        ([StageSpec("a", "m", {"x": "input:x", "q": "input:x"})], None, "has no input 'q'"),
        ([StageSpec("a", "m", {"x": "input:x"})], {"y": "a.nope"}, "has no output 'nope'"),
        ([StageSpec("a", "m", {"x": "input:x"})], {"y": "input:x"}, "must come from a stage"),
        ([StageSpec("a", "m", {"x": "a.y"})], None, "wired to the stage itself"),
        ([StageSpec("a", "m", {"x": "garbage"})], None, "neither 'input:NAME'"),
    ],
)
def test_bad_pipelines_are_refused_with_names(stages, outputs, message):
    """Each structural mistake raises PipelineError whose message names the culprit."""
    with pytest.raises(PipelineError, match=message):
        validate_pipeline(_spec(stages, outputs), standard_models())


def test_dtype_and_shape_mismatch_name_the_tensor():
    """A wire joining different datatypes or shapes is refused naming stage and input."""
    models = {"m": model("m"), "i": model("i")}
    models["i"] = models["i"].__class__(
        name="i", backend="onnxruntime", artifact="i.onnx",
        inputs=(tensor("x", "INT64"),), outputs=(tensor("y"),),
    )
    with pytest.raises(PipelineError, match=r"stage 'b'.*input 'x'.*INT64"):
        validate_pipeline(_spec([StageSpec("a", "m", {"x": "input:x"}),
                                 StageSpec("b", "i", {"x": "a.y"})]), models)
    wrong_shape = _spec([StageSpec("a", "m", {"x": "input:x"})], inputs=(tensor("x", shape=(-1, 9)),))
    with pytest.raises(PipelineError, match=r"shape \[-1, 9\]"):
        validate_pipeline(wrong_shape, models)
