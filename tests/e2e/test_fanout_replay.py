"""Trace replay of fan-out (#14): a real gateway serving map and conditional stages records them in
its trace (a map stage's source, a `when`), and `heddle simulate --trace` replays each request with
the element count and `when` outcome it had live."""

from __future__ import annotations

import numpy as np
import pytest
from server_fixtures import parse_test_document, running_server
from test_conditional_stages import cond_document
from test_fanout import X, linear_onnx

from heddle.scheduler.sim.replay import replay
from heddle.scheduler.sim.tracefile import parse_profile, parse_trace
from heddle.server.tools.profile_cmd import profile_from_trace


@pytest.mark.slow
def test_the_replay_runs_each_request_with_its_live_element_count_and_when(tmp_path):
    """Requests of 0, 3 and 5 elements through a real gateway: the trace's header names the map
    stage's source and the conditional stage's `when`; the replay under any policy runs the map
    stage's model once per live element run plus once per live run of the conditional stage (its
    `when` false for the request of 0), and every request ends."""
    doc = cond_document(linear_onnx(tmp_path / "lin.onnx"))
    doc["server"] = {"policy": "fcfs", "trace_file": str(tmp_path / "trace.jsonl")}
    with running_server(parse_test_document(doc)) as running, running.client() as client:
        for count in (0, 3, 5):
            client.infer("fan", {"x": X, "count": np.array([count], np.int64)})
    text = (tmp_path / "trace.jsonl").read_text()
    trace = parse_trace(text)
    stages = {s.name: s for s in trace.pipelines["fan"].stages}
    assert (stages["lin"].map_over, stages["check"].when) == ("split", "split")
    live_lin_runs = sum(1 for r in trace.stage_runs if r.model == "lin")
    assert live_lin_runs == 3 + 5 + 2  # the elements, and check where its when held
    profile = parse_profile(profile_from_trace(text, "trace.jsonl", min_runs=1))
    for policy in ("fcfs", "twill"):
        result = replay(trace, profile, policy)
        assert result.completed == result.requests == 3
        assert sum(result.placements["lin"].values()) == live_lin_runs


@pytest.mark.slow
def test_a_batch_is_traced_once_as_a_pass_and_replayed_batching(tmp_path):
    """Two concurrent requests of 2 elements on a model batching 4 rows a pass: the trace's header
    says how the model batches, its 4 stage lines say rows 4, one of them the pass's owner; the
    profile from the trace has that pass once, as a 4-row point of the model's batch curve; the
    replay runs the 4 element runs."""
    import concurrent.futures

    from test_fanout import fan_document, infer

    doc = fan_document(linear_onnx(tmp_path / "lin.onnx"), devices=("cpu0",), max_batch=4,
                       preferred_batch_sizes=[4], max_queue_delay_us=5_000_000)
    doc["server"] = {"policy": "fcfs", "trace_file": str(tmp_path / "trace.jsonl")}
    with running_server(parse_test_document(doc)) as running, concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda x: infer(running, 2, x), [X[:2], X[4:6]]))
    text = (tmp_path / "trace.jsonl").read_text()
    trace = parse_trace(text)
    assert trace.batching["lin"] == {"max_batch": 4, "preferred_batch_sizes": [4], "max_queue_delay_us": 5e6}
    lin = [r for r in trace.stage_runs if r.model == "lin"]
    assert [r.rows for r in lin] == [4] * 4 and sum(r.pass_owner for r in lin) == 1
    profile_doc = profile_from_trace(text, "trace.jsonl", min_runs=1)
    assert [(e["batch"], e["runs"]) for e in profile_doc["entries"] if e["model"] == "lin"] == [(4, 1)]
    result = replay(trace, parse_profile({**profile_doc, "entries": [
        *profile_doc["entries"], {**next(e for e in profile_doc["entries"] if e["model"] == "lin"), "batch": 1}]}),
        "fcfs")
    assert result.completed == 2 and sum(result.placements["lin"].values()) == 4
