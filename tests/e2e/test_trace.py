"""Arrival traces: a real gateway records its requests as JSON lines that the replay can read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from server_fixtures import chain, parse_test_document, py_model, running_server

from heddle.scheduler.sim.tracefile import TRACE_FORMAT, parse_trace
from heddle.server.config.builder import document, python_device, to_toml
from heddle.server.config.load import load_config
from heddle.server.runtime.trace import TraceWriter, pipeline_record

ECHO = "heddle.backends.zoo.ops:echo"


def _doc(server: dict | None = None) -> dict:
    return document(server=server, devices=[python_device("py0", slots=2, kind="cpu")],
                    models=[py_model("echo", ECHO)], pipelines=[chain("two", ["echo", "echo"])])


def _config(trace_path):
    return parse_test_document(_doc({"policy": "fcfs", "trace_file": str(trace_path)}))


def _events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_serving_gateway_records_arrivals_stages_ends_and_policy_switches(tmp_path):
    """Two requests and a policy switch through a real server: the trace has a header with the
    pipeline's stages, one arrival per request (id, priority, relative deadline, input shapes),
    each stage with its device, each end with its outcome, and the switch between them."""
    trace = tmp_path / "trace.jsonl"
    config = _config(trace)
    with running_server(config) as running, running.client() as client:
        client.infer("two", {"x": np.ones(3, np.float32)}, priority=3, deadline_ms=5000, request_id="first")
        client.set_policy("twill")
        client.infer("two", {"x": np.ones(5, np.float32)}, request_id="second")
    events = _events(trace)
    header = events[0]
    assert header["event"] == "header" and header["format"] == TRACE_FORMAT and header["policy"] == "fcfs"
    assert header["pipelines"]["two"]["stages"] == [
        {"name": "s0", "model": "echo", "after": []}, {"name": "s1", "model": "echo", "after": ["s0"]}]
    assert [d["id"] for d in header["devices"]] == ["py0"]
    kinds = [e["event"] for e in events[1:]]
    assert kinds == ["arrival", "stage", "stage", "end", "policy", "arrival", "stage", "stage", "end"]
    first, second = (e for e in events if e["event"] == "arrival")
    assert (first["request_id"], first["pipeline"], first["priority"]) == ("first", "two", 3)
    assert first["deadline_s"] == pytest.approx(5.0) and first["shapes"] == {"x": [3]}
    assert second["deadline_s"] is None and second["priority"] == config.server.default_priority
    assert second["t_s"] > first["t_s"] >= 0
    stage = next(e for e in events if e["event"] == "stage")
    assert stage["device"] == "py0" and stage["run_s"] >= stage["compute_s"] >= 0
    end = next(e for e in events if e["event"] == "end")
    assert end["request_id"] == "first" and end["outcome"] == "OK" and not end["deadline_missed"]
    assert next(e for e in events if e["event"] == "policy")["policy"] == "twill"


@pytest.mark.slow
def test_the_replay_reads_what_the_gateway_wrote(tmp_path):
    """parse_trace turns a recorded trace into pipelines, arrivals tagged with the live policy,
    stage runs and ends."""
    trace = tmp_path / "trace.jsonl"
    with running_server(_config(trace)) as running, running.client() as client:
        client.infer("two", {"x": np.ones(3, np.float32)}, request_id="a")
        client.set_policy("edf")
        client.infer("two", {"x": np.ones(3, np.float32)}, request_id="b")
    parsed = parse_trace(trace.read_text())
    assert [(s.name, s.model, s.after) for s in parsed.pipelines["two"].stages] == [
        ("s0", "echo", ()), ("s1", "echo", ("s0",))]
    assert [(a.request_id, a.policy) for a in parsed.arrivals] == [("a", "fcfs"), ("b", "edf")]
    assert len(parsed.stage_runs) == 4 and set(parsed.ends) == {"a", "b"}
    assert [a.request_id for a in parsed.segment("edf").arrivals] == ["b"]
    assert {r.request_id for r in parsed.segment("edf").stage_runs} == {"b"}


def test_tracing_is_off_unless_configured_and_the_flag_reaches_the_settings(tmp_path):
    """No trace_file: no writer; `heddle serve --trace FILE` arrives as settings.trace_file."""
    config = parse_test_document(_doc())
    assert config.server.trace_file == ""
    path = tmp_path / "c.toml"
    path.write_text(to_toml(_doc()))
    assert load_config(path, trace_file=str(tmp_path / "t.jsonl")).server.trace_file == str(tmp_path / "t.jsonl")


def test_writer_truncates_an_old_trace_and_drops_writes_after_close(tmp_path):
    """A new writer starts the file afresh (one trace per server run); after close, events are
    dropped rather than raising in a draining server."""
    trace = tmp_path / "sub" / "trace.jsonl"
    trace.parent.mkdir()
    trace.write_text("old line\n")
    config = _config(trace)
    clock = iter([10.0, 10.5, 11.0]).__next__
    writer = TraceWriter(trace, config, clock)
    writer.policy("edf")
    writer.close()
    writer.policy("sjf")
    assert writer.closed
    events = _events(trace)
    assert [e["event"] for e in events] == ["header", "policy"] and events[1]["t_s"] == pytest.approx(0.5)
    assert pipeline_record(config.pipelines["two"])["stages"][1]["after"] == ["s0"]
