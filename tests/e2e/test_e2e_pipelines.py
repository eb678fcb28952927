"""End-to-end pipeline runs against a real gateway: results, parallel branches, priority order."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import stage_fns
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    chain,
    default_client,
    default_config,
    default_server,
    heddle_cache_dir,
    py_model,
    serve_document,
    wait_until,
)

from heddle.backends.zoo import ops
from heddle.clients.client import HeddleClient, InferResult
from heddle.server.config.builder import document, pipeline, python_device, stage, tensor
from heddle.server.config.load import Config

RTOL, ATOL = 1e-4, 1e-5


def ort_run(config: Config, model: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the ONNX file the config points at with a plain InferenceSession, outputs by name."""
    session = ort.InferenceSession(str(Path(config.models[model].artifact)),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def assert_outputs(result: InferResult, expected: dict[str, np.ndarray]) -> None:
    assert sorted(result.outputs) == sorted(expected)
    for name, want in expected.items():
        got = result.outputs[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_classify_matches_direct_onnxruntime(default_client: HeddleClient, default_config: Config):
    """classify on a batch of 3 equals preprocess -> cnn session -> postprocess run in the test."""
    image = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    logits = ort_run(default_config, "cnn", {"image": ops.preprocess(image)["image"]})["logits"]
    result = default_client.infer("classify", {"image": image})
    assert_outputs(result, ops.postprocess(logits))
    assert [s.stage for s in result.stages] == ["pre", "cnn", "post"]
    assert result.priority == 2  # 0 in the request means the server's default level
    assert all(s.status == "OK" for s in result.stages)


def test_multihead_matches_direct_onnxruntime(default_client: HeddleClient, default_config: Config):
    """multihead on a batch of 2 equals backbone -> (head_cls, head_emb) -> join run in the test."""
    image = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    features = ort_run(default_config, "backbone", {"image": image})["features"]
    logits = ort_run(default_config, "head_cls", {"features": features})["logits"]
    embedding = ort_run(default_config, "head_emb", {"features": features})["embedding"]
    result = default_client.infer("multihead", {"image": image})
    assert_outputs(result, ops.join(logits, embedding))


def test_text_classify_matches_direct_onnxruntime(default_client: HeddleClient, default_config: Config):
    """text_classify on padded token ids equals encoder -> text_cls run in the test."""
    rng = np.random.default_rng(2)
    ids = rng.integers(1, 1000, (2, 12), dtype=np.int64)
    mask = np.ones((2, 12), dtype=np.int64)
    mask[1, 7:] = 0  # the second sequence is padded
    pooled = ort_run(default_config, "encoder", {"input_ids": ids, "attention_mask": mask})["pooled"]
    expected = ort_run(default_config, "text_cls", {"pooled": pooled})
    result = default_client.infer("text_classify", {"input_ids": ids, "attention_mask": mask})
    assert_outputs(result, expected)


def test_stream_reports_each_stage_then_the_result(default_client: HeddleClient):
    """InferStream yields one stage event per stage, then a result equal to the unary call's."""
    image = np.random.default_rng(3).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    events = list(default_client.infer_stream("classify", {"image": image}))
    *stage_events, final = events
    assert sorted(e.stage for e in stage_events) == ["cnn", "post", "pre"]
    assert isinstance(final, InferResult)
    unary = default_client.infer("classify", {"image": image})
    np.testing.assert_array_equal(final.outputs["label"], unary.outputs["label"])
    np.testing.assert_allclose(final.outputs["probs"], unary.outputs["probs"], rtol=RTOL, atol=ATOL)


def overlap(a, b) -> bool:
    return a.start_offset_ms < b.end_offset_ms and b.start_offset_ms < a.end_offset_ms


def test_multihead_heads_run_on_two_devices_at_once(default_client: HeddleClient, default_config: Config):
    """The default multihead DAG runs its cls and emb heads on different devices in overlapping intervals."""
    if sum(d.backend == "onnxruntime" for d in default_config.devices) < 2:
        pytest.skip("the default config has one ONNX Runtime device on a one-core machine")
    image = np.zeros((1, 3, 64, 64), dtype=np.float32)
    stages = {s.stage: s for s in default_client.infer("multihead", {"image": image}).stages}
    assert stages["cls"].device != stages["emb"].device
    assert overlap(stages["cls"], stages["emb"])
    assert stages["join"].start_offset_ms >= max(stages["cls"].end_offset_ms, stages["emb"].end_offset_ms)


FORK_JOIN = document(
    devices=[python_device("py0"), python_device("py1")],
    models=[py_model("src", "stage_fns:tail"), py_model("branch", "stage_fns:barrier_branch"),
            py_model("join", "stage_fns:join2", inputs=("x1", "x2"))],
    pipelines=[pipeline("fork_join", [tensor("x")], {"y": "j.y"}, [
        stage("s", "src", x="input:x"), stage("a", "branch", x="s.y"), stage("b", "branch", x="s.y"),
        stage("j", "join", x1="a.y", x2="b.y")])])


@pytest.mark.slow
def test_fork_join_branches_run_concurrently_on_two_devices():
    """Both branches wait on one two-party barrier, so the request succeeds only if they truly overlap."""
    stage_fns.reset()
    with serve_document(FORK_JOIN) as running, running.client() as client:
        result = client.infer("fork_join", {"x": stage_fns.tagged(7)})
    np.testing.assert_array_equal(result.outputs["y"], [14.0])
    stages = {s.stage: s for s in result.stages}
    assert {stages["a"].device, stages["b"].device} == {"py0", "py1"}
    assert overlap(stages["a"], stages["b"])


def one_slot_config(policy: str) -> dict[str, Any]:
    return document(server={"policy": policy}, devices=[python_device("py0")],
                    models=[py_model("gate", "stage_fns:gate")], pipelines=[chain("gated", ["gate"])])


def queued_on(client: HeddleClient, device: str) -> int:
    return next(d.queued for d in client.list_devices() if d.id == device)


LOW_TAGS, HIGH_TAG = (2, 3, 4, 5, 6), 100


def run_behind_a_queue(policy: str) -> list[int]:
    """Tag 1 holds the one slot, tags 2..6 (priority 1) queue, then tag 100 (priority 4) arrives;
    returns the order in which the stage started for each tag."""
    stage_fns.reset()
    with serve_document(one_slot_config(policy)) as running, running.client() as client, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        def submit(tag: int, priority: int):
            return pool.submit(client.infer, "gated", {"x": stage_fns.tagged(tag)}, priority=priority)
        try:
            futures = [submit(1, 1)]
            assert stage_fns.wait_for_call("gate", 1), "the first request never started"
            futures += [submit(tag, 1) for tag in LOW_TAGS]
            wait_until(lambda: queued_on(client, "py0") == len(LOW_TAGS), "the low requests to queue")
            futures.append(submit(HIGH_TAG, 4))
            wait_until(lambda: queued_on(client, "py0") == len(LOW_TAGS) + 1, "the high request to queue")
        finally:
            stage_fns.open_gate()
        results = [f.result() for f in futures]
    assert [r.priority for r in results] == [1] * 6 + [4]
    return [tag for name, tag in stage_fns.calls() if name == "gate"]


@pytest.mark.slow
def test_priority_policy_runs_a_late_urgent_request_before_queued_low_ones():
    """Under the priority policy, a priority-4 request overtakes every low request queued before it."""
    order = run_behind_a_queue("priority")
    assert order[:2] == [1, HIGH_TAG], order


@pytest.mark.slow
def test_fcfs_policy_runs_the_urgent_request_last():
    """Under fcfs the same arrival sequence runs the priority-4 request after every queued low one."""
    order = run_behind_a_queue("fcfs")
    assert order[0] == 1 and order[-1] == HIGH_TAG, order
