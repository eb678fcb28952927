"""Trace replay: recorded arrivals through the real core with measured run times, under any policy."""

from __future__ import annotations

import json

import pytest

from heddle.scheduler.profiles import ProfileEntry
from heddle.scheduler.sim.replay import ReplayLog, closed_loop_links, recorded, replay
from heddle.scheduler.sim.tracefile import (
    PROFILE_FORMAT,
    TRACE_FORMAT,
    TraceError,
    dispatch_gaps,
    parse_profile,
    parse_trace,
)
from heddle.server.cli import main

ONE_STAGE = {"stages": [{"name": "s", "model": "m", "after": []}]}


def _trace(arrivals, ends=(), pipelines=None, devices=None, policy="fcfs", started=100.0) -> str:
    """A trace text: header, then arrivals (t, id, pipeline, priority, deadline) and ends (t, id, latency)."""
    header = {"event": "header", "format": TRACE_FORMAT, "policy": policy, "started_unix_s": started,
              "devices": devices or [{"id": "d0", "kind": "cpu", "backend": "onnxruntime", "slots": 1}],
              "pipelines": pipelines or {"p": ONE_STAGE}}
    lines = [header]
    lines += [{"event": "arrival", "t_s": t, "request_id": rid, "pipeline": p, "priority": prio, "deadline_s": dl,
               "shapes": {"x": [1, 8]}} for t, rid, p, prio, dl in arrivals]
    lines += [{"event": "end", "t_s": t, "request_id": rid, "outcome": "OK", "latency_s": lat,
               "deadline_missed": False} for t, rid, lat in ends]
    return "\n".join(json.dumps(line) for line in lines) + "\n"


def _profile(run_s: dict[tuple[str, str], float], devices=None) -> dict:
    """A profile document whose every measured run of (model, device) took exactly run_s."""
    return {"format": PROFILE_FORMAT,
            "devices": devices or [{"id": "d0", "kind": "cpu", "backend": "onnxruntime", "slots": 1}],
            "models": {m: {"op_types": ["MatMul"]} for m, _ in run_s},
            "entries": [{"model": m, "device": d, "level": 0, "latency_s": s, "tail_s": s, "samples_s": [s] * 4}
                        for (m, d), s in run_s.items()]}


# A 10 ms job holds the device; then a relaxed low-priority request and an urgent one queue behind it.
URGENT = _trace([(0.000, "busy", "p", 2, None), (0.001, "low", "p", 1, 0.100), (0.002, "high", "p", 4, 0.025)])


def test_fcfs_makes_the_urgent_request_late_and_priority_aware_policies_do_not():
    """Replayed with 10 ms runs: fcfs serves `low` first and `high` ends at 30 ms, past its 27 ms
    deadline (DVR 1/2 over the two requests with deadlines); priority and twill serve it first."""
    trace, profile = parse_trace(URGENT), parse_profile(_profile({("m", "d0"): 0.010}))
    fcfs = replay(trace, profile, "fcfs")
    assert fcfs.requests == 3 and fcfs.completed == 3
    assert fcfs.violation_rate == pytest.approx(0.5)
    for policy in ("priority", "twill", "edf"):
        assert replay(trace, profile, policy).violation_rate == 0.0, policy
    assert fcfs.placements == {"m": {"d0": 3}}
    assert replay(trace, profile, "fcfs") == fcfs  # a pure function of trace, profile and seed


def test_a_replay_log_holds_every_run_and_request_on_the_replay_clock():
    """fcfs with 10 ms runs: `busy` 0-10 ms, `low` 10-20, `high` 20-30, each a request record with its arrival."""
    log = ReplayLog()
    result = replay(parse_trace(URGENT), parse_profile(_profile({("m", "d0"): 0.010})), "fcfs", log=log)
    assert [(round(start, 3), round(end, 3), d.request_id) for start, end, d in log.runs] == [
        (0.0, 0.01, "busy"), (0.01, 0.02, "low"), (0.02, 0.03, "high")]
    assert [(r.request_id, r.arrival_s) for r in log.requests] == [("busy", 0.0), ("low", 0.001), ("high", 0.002)]
    assert replay(parse_trace(URGENT), parse_profile(_profile({("m", "d0"): 0.010})), "fcfs") == result


def test_run_times_are_drawn_from_the_measured_samples():
    """With every measured run at 40 ms, the urgent request is shed at its deadline (27 ms, still
    queued behind the first run) and `low` runs from 40 to 80 ms."""
    trace, profile = parse_trace(URGENT), parse_profile(_profile({("m", "d0"): 0.040}))
    result = replay(trace, profile, "twill")
    assert result.per_class[4].violation_rate == 1.0 and result.completed == 2
    assert result.per_class[1].p50_ms == pytest.approx(79.0)


def test_segment_keeps_only_what_arrived_under_one_live_policy():
    """A policy line splits the trace: each segment replays its own arrivals."""
    later = {"event": "arrival", "t_s": 1.5, "request_id": "later", "pipeline": "p", "priority": 1, "deadline_s": None}
    text = URGENT + json.dumps({"event": "policy", "t_s": 1.0, "policy": "edf"}) + "\n" + json.dumps(later) + "\n"
    trace = parse_trace(text)
    assert [a.request_id for a in trace.segment("edf").arrivals] == ["later"]
    assert len(trace.segment("fcfs").arrivals) == 3
    result = replay(trace.segment("edf"), parse_profile(_profile({("m", "d0"): 0.01})), "fcfs")
    assert result.requests == 1


# Two closed-loop clients on one device with 10 ms runs, each sending again as its last request
# ends: c0 and c1 at 0; c_k (k >= 2) arrives at 10(k-1) ms, as c_(k-2) ends, and ends at 10(k+1) ms.
CLOSED = _trace([(0.0, "c0", "p", 1, None), (0.0, "c1", "p", 1, None)]
                + [(0.010 * (k - 1), f"c{k}", "p", 1, None) for k in range(2, 10)],
                ends=[(0.010 * (k + 1), f"c{k}", 0.010 * (k + 1) - (0.0 if k < 2 else 0.010 * (k - 1)))
                      for k in range(10)])


def test_local_window_draws_runs_from_the_same_moment_of_the_trace():
    """Runs recorded at 10 ms early in the trace and 40 ms late: with a window, a request early
    in the replay takes 10 ms and one late takes 40 ms; a profile of another trace is refused."""
    trace = parse_trace(_trace([(0.0, "early", "p", 1, None), (10.0, "late", "p", 2, None)]))
    doc = _profile({("m", "d0"): 0.025})
    doc["trace_started_unix_s"] = 100.0
    doc["entries"][0].update(samples_s=[0.010] * 5 + [0.040] * 5,
                             sample_t_s=[0.1 * i for i in range(5)] + [10.0 + 0.1 * i for i in range(5)])
    result = replay(trace, parse_profile(doc), "fcfs", local_window_s=1.0)
    assert result.per_class[1].p50_ms == pytest.approx(10.0) and result.per_class[2].p50_ms == pytest.approx(40.0)
    doc["trace_started_unix_s"] = 999.0
    with pytest.raises(TraceError, match="made from this very trace"):
        replay(trace, parse_profile(doc), "fcfs", local_window_s=1.0)


def test_closed_loop_links_follow_each_arrival_to_the_end_it_came_after():
    """c2 followed c0's end at 10 ms with no gap; the first two followed nothing."""
    links = closed_loop_links(parse_trace(CLOSED), ["p"])
    assert "c0" not in links and "c1" not in links
    assert links["c2"] == ("c0", pytest.approx(0.0)) and links["c3"] == ("c1", pytest.approx(0.0))


def test_closed_loop_replay_keeps_the_clients_in_flight_bound_when_runs_are_slower():
    """Replayed with runs twice as long as recorded, open-loop arrivals pile up behind each other;
    as closed-loop clients, at most two are in flight, so no request waits more than one run."""
    trace, profile = parse_trace(CLOSED), parse_profile(_profile({("m", "d0"): 0.020}))
    open_loop = replay(trace, profile, "fcfs")
    closed = replay(trace, profile, "fcfs", closed=["p"])
    assert closed.per_class[1].p99_ms == pytest.approx(40.0)
    assert open_loop.per_class[1].p99_ms > 100.0


def test_closed_loop_replay_needs_the_ends_of_the_requests():
    """Without end lines the client structure cannot be recovered: a TraceError says so."""
    with pytest.raises(TraceError, match="needs the end of every request"):
        replay(parse_trace(URGENT), parse_profile(_profile({("m", "d0"): 0.01})), "fcfs", closed=["p"])


def test_recorded_scores_what_really_happened_like_a_replay():
    """The end lines give the live row: latencies and deadline verdicts as recorded."""
    text = _trace([(0.0, "a", "p", 4, 0.020), (0.0, "b", "p", 4, 0.020)],
                  ends=[(0.010, "a", 0.010), (0.030, "b", 0.030)])
    live = recorded(parse_trace(text), parse_profile(_profile({("m", "d0"): 0.01})), "live")
    assert live.policy == "live" and live.violation_rate == pytest.approx(0.5)
    assert live.per_class[4].p99_ms == pytest.approx(30.0)
    assert recorded(parse_trace(URGENT), parse_profile(_profile({("m", "d0"): 0.01}))) is None


def test_malformed_traces_and_profiles_are_refused_with_a_reason():
    """No header, an unknown pipeline, a bad line, a model the profile lacks: each a TraceError."""
    with pytest.raises(TraceError, match="no header"):
        parse_trace('{"event": "arrival", "t_s": 0, "request_id": "a", "pipeline": "p", "priority": 1}\n')
    with pytest.raises(TraceError, match="pipelines its header lacks"):
        parse_trace(_trace([(0.0, "a", "nope", 1, None)]))
    with pytest.raises(TraceError, match="line 2"):
        parse_trace(_trace([]) + "{not json\n")
    with pytest.raises(TraceError, match="profile format"):
        parse_profile({"format": "other"})
    with pytest.raises(TraceError, match=r"no figures for models \['m'\]"):
        replay(parse_trace(URGENT), parse_profile(_profile({("other", "d0"): 0.01})), "fcfs")


def test_a_parsed_profile_is_a_table_the_core_plans_with():
    """Entries become ProfileTable figures, and op types reach compatibility checks."""
    profile = parse_profile(_profile({("m", "d0"): 0.012}))
    table = profile.table()
    assert table.table[("m", "d0", 0)] == ProfileEntry(0.012, 0.0, 0.012)
    assert table.op_types("m") == frozenset({"MatMul"})


def test_heddle_simulate_replays_a_trace_file_and_shows_the_recorded_row(tmp_path, capsys):
    """`heddle simulate --trace --profile --platform local` prints one row per policy plus what
    really happened, and writes the JSON; without --profile it refuses with exit status 2."""
    trace, profile, out = tmp_path / "t.jsonl", tmp_path / "p.json", tmp_path / "r.json"
    trace.write_text(_trace([(0.0, "a", "p", 4, 0.020), (0.001, "b", "p", 1, None)],
                            ends=[(0.010, "a", 0.010), (0.020, "b", 0.019)]))
    profile.write_text(json.dumps(_profile({("m", "d0"): 0.010})))
    assert main(["simulate", "--trace", str(trace), "--profile", str(profile), "--platform", "local",
                 "--policy", "fcfs", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fcfs" in printed and "recorded (live)" in printed and "2 arrivals" in printed
    report = json.loads(out.read_text())
    assert report["platform"] == "local" and report["results"][0]["requests"] == 2
    assert report["recorded"]["violation_rate"] == 0.0
    assert main(["simulate", "--trace", str(trace), "--platform", "local"]) == 2
    assert "--profile" in capsys.readouterr().err


TWO_STAGES = {"stages": [{"name": "a", "model": "m", "after": []}, {"name": "b", "model": "m", "after": ["a"]}]}


def _stage(t, rid, stage, run_s, device="d0"):
    return json.dumps({"event": "stage", "t_s": t, "request_id": rid, "stage": stage, "model": "m",
                       "device": device, "status": "OK", "run_s": run_s, "compute_s": run_s})


def test_dispatch_gaps_are_the_live_schedulers_reaction_time_on_a_free_device():
    """r1: ready at 0, dispatched at 1 ms; its stage b ready at 11 ms, dispatched at 12 ms. r2
    arrives at 5 ms while r1 holds the only slot: its wait counts from the moment the slot was
    free for it (r1's stage b ending at 22 ms), not from its arrival, so it reacted in 0 ms; its
    stage b waits 2 ms on a free device. Gaps 0, 1, 1, 2 ms: the median is 1 ms. A replay adds
    it to every run."""
    text = _trace([(0.0, "r1", "p", 1, None), (0.005, "r2", "p", 1, None)], pipelines={"p": TWO_STAGES})
    text += "\n".join([_stage(0.011, "r1", "a", 0.010), _stage(0.022, "r1", "b", 0.010),
                       _stage(0.033, "r2", "a", 0.011), _stage(0.045, "r2", "b", 0.010)]) + "\n"
    trace = parse_trace(text)
    assert dispatch_gaps(trace) == {"d0": pytest.approx(0.001)}
    assert dispatch_gaps(trace, min_runs=5) == {}  # too few gaps: not measured
    doc = _profile({("m", "d0"): 0.010})
    plain = replay(parse_trace(_trace([(0.0, "r", "p", 1, None)], pipelines={"p": TWO_STAGES})),
                   parse_profile(doc), "fcfs")
    gapped = replay(parse_trace(_trace([(0.0, "r", "p", 1, None)], pipelines={"p": TWO_STAGES})),
                    parse_profile({**doc, "dispatch_gap_s": {"d0": 0.001}}), "fcfs")
    assert plain.per_class[1].p50_ms == pytest.approx(20.0)
    assert gapped.per_class[1].p50_ms == pytest.approx(22.0)
