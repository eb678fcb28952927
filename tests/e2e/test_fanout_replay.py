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
