"""Conditional stages (#14) against a real gateway: a stage with `when = "STAGE.OUTPUT"` runs only
if that output is non-empty / true; else it and every stage after it are skipped, take no device
time, and the pipeline's optional outputs from them are left out of the response."""

from __future__ import annotations

import numpy as np
import pytest
import stage_fns
from server_fixtures import parse_test_document, running_server, scrape_metrics
from test_fanout import D, K, X, alone, fan_document, infer, linear_onnx

from heddle.server.config.builder import python_model, stage, tensor
from heddle.server.config.schema import ConfigError


def cond_document(lin_path: str, when: str = "split.parts") -> dict:
    """The fan pipeline plus a branch: check (ONNX lin on all of x, `when` the split made any
    element) -> after (python), whose output is optional."""
    doc = fan_document(lin_path)
    doc["models"].append(python_model("same", "stage_fns:same", [tensor("x", shape=(-1, K))],
                                      [tensor("y", shape=(-1, K))]))
    p = doc["pipelines"][0]
    p["stages"] += [{**stage("check", "lin", x="input:x"), "when": when}, stage("after", "same", x="check.y")]
    p["outputs"]["z"] = {"from": "after.y", "optional": True}
    return doc


@pytest.fixture(scope="module")
def lin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return linear_onnx(tmp_path_factory.mktemp("cond") / "lin.onnx")


@pytest.fixture(scope="module")
def cond(lin_path: str):
    with running_server(parse_test_document(cond_document(lin_path))) as running:
        yield running


def busy_s(running) -> float:
    metrics = scrape_metrics(running.metrics_url)
    return sum(metrics.get(("heddle_device_busy_seconds_total", frozenset({("device", d)})), 0.0)
               for d in ("cpu0", "cpu1"))


def test_a_true_when_runs_the_branch(cond, lin_path):
    """Two elements: the branch runs, and its optional output is there."""
    result = infer(cond, 2)
    np.testing.assert_allclose(result.outputs["z"], alone(lin_path, X), rtol=1e-5, atol=1e-6)
    assert {s.stage: s.status for s in result.stages}["after"] == "OK"


def test_a_false_when_skips_the_branch_and_its_dependants_with_no_device_time(cond):
    """No element: check (false `when`) and after (its dependant) are SKIPPED, never called, on no
    device; the CPU devices' busy time does not move; the optional output is left out; the
    request still succeeds with its other output (an empty gather)."""
    stage_fns.SAME_CALLS.clear()
    before = busy_s(cond)
    result = infer(cond, 0)
    assert busy_s(cond) == before
    stages = {s.stage: s for s in result.stages}
    for name in ("check", "after"):
        assert (stages[name].status, stages[name].device, stages[name].compute_ms) == ("SKIPPED", "", 0.0)
    assert stage_fns.SAME_CALLS == []
    assert set(result.outputs) == {"y"} and result.outputs["y"].shape == (0, K)


def test_when_reads_a_tensor_too(lin_path):
    """A `when` on a tensor output: the count input copied by a stage, 0 is false, 3 is true."""
    doc = cond_document(lin_path, when="flag.y")
    doc["models"].append(python_model("flag", "stage_fns:same", [tensor("x", "INT64", (1,))],
                                      [tensor("y", "INT64", (1,))]))
    doc["pipelines"][0]["stages"].append(stage("flag", "flag", x="input:count"))
    with running_server(parse_test_document(doc)) as running:
        skipped, ran = infer(running, 0), infer(running, 3)
    assert "z" not in skipped.outputs and ran.outputs["z"].shape == (len(X), K)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["pipelines"][0]["outputs"].update(z="after.y"),
     "output 'z': stage 'after' may be skipped (a `when` on it or before it), so declare the output optional"),
    (lambda d: d["pipelines"][0]["stages"][3].update(when="input:x"), "when = 'input:x' must name another stage's"),
    (lambda d: d["pipelines"][0]["stages"][3].update(when="check.y"), "when = 'check.y' must name another stage's"),
])
def test_when_mistakes_stop_the_start_naming_them(lin_path, change, message):
    """An output of a stage that may be skipped must be optional; `when` names another stage's output."""
    doc = cond_document(lin_path)
    change(doc)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_test_document(doc)


assert D  # the shapes test_fanout's pipeline is built on
