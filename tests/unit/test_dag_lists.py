"""List wiring checked at load (scheduler/dag_lists.py), on specs alone; the config-level mistakes
are said through a real server's config in tests/e2e/test_fanout.py."""

from __future__ import annotations

import dataclasses

import pytest

from heddle.scheduler import ModelSpec, PipelineError, PipelineSpec, StageSpec, TensorSpec, validate_pipeline

VEC = TensorSpec("x", "FP32", (-1, 8))
MODELS = {
    "make": ModelSpec("make", "python", "m:f", (VEC,), (TensorSpec("y", "FP32", (-1, 8), is_list=True),)),
    "each": ModelSpec("each", "onnxruntime", "e.onnx", (VEC,), (TensorSpec("y", "FP32", (-1, 8)),)),
    "gen": ModelSpec("gen", "onnxruntime", "g.onnx", (VEC,), (TensorSpec("y", "FP32", (-1, 8)),), kind="llm"),
    "join": ModelSpec("join", "python", "m:g", (TensorSpec("x", "FP32", (-1, 8), is_list=True),),
                      (TensorSpec("y", "FP32", (-1, 8)),)),
}


def spec(model: str = "each", **keys) -> PipelineSpec:
    stages = (StageSpec("make", "make", {"x": "input:x"}),
              StageSpec("each", model, {"x": "make.y"}, map="make.y", **keys),
              StageSpec("join", "join", {"x": "each.y"}))
    return PipelineSpec("p", (VEC,), stages, {"y": "join.y"})


def test_a_map_stage_fans_out_over_its_list_and_its_outputs_are_lists():
    pipeline = validate_pipeline(spec(map_batch=2), MODELS)
    assert (pipeline.maps["each"].stage, pipeline.maps["each"].tensor) == ("make", "y")
    assert pipeline.depends_on["each"] == ("make",)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: spec("gen"), "a map stage cannot run an LLM (model 'gen')"),
    (lambda s: spec(map_batch=0), "map_batch must be >= 1, not 0"),
    (lambda s: dataclasses.replace(s, inputs=(dataclasses.replace(VEC, is_list=True),)),
     "input 'x' cannot be a list"),
    (lambda s: dataclasses.replace(s, stages=(*s.stages[:1], dataclasses.replace(s.stages[1], map="make.z"),
                                              *s.stages[2:])), "map = 'make.z' is not a list"),
])
def test_list_mistakes_are_refused_naming_the_stage(change, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_pipeline(change(spec()), MODELS)
