"""Deadline budgets: a request's deadline split over its remaining critical path."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_fixtures import chain, fork_join, standard_models, validated
from strategies import dags

from heddle.scheduler import Core, DeviceSpec, Request
from heddle.scheduler.budget import critical_path_s, path_times, slack_s, split_deadline
from heddle.scheduler.profiles import ProfileEntry, ProfileTable

CHAIN = validated(chain("c", ["m", "m", "m"]))
EST = {"s0": 1.0, "s1": 2.0, "s2": 1.0}


def test_chain_deadline_is_split_in_proportion_to_estimates():
    """Stages of 1, 2 and 1 s sharing an 8 s window must finish by 2, 6 and 8 s."""
    budgets = split_deadline(CHAIN, list(EST), EST.__getitem__, 0.0, 8.0)
    assert [budgets[s].sub_deadline_s for s in ("s0", "s1", "s2")] == [2.0, 6.0, 8.0]
    assert [budgets[s].latest_finish_s for s in ("s0", "s1", "s2")] == [5.0, 7.0, 8.0]


def test_finished_stages_drop_out_and_the_rest_share_what_is_left():
    """With s0 done at t=3, s1 and s2 split the remaining 5 s as 2:1."""
    budgets = split_deadline(CHAIN, ["s1", "s2"], EST.__getitem__, 3.0, 8.0)
    assert set(budgets) == {"s1", "s2"}
    assert budgets["s1"].sub_deadline_s == pytest.approx(3.0 + 5.0 * 2 / 3)
    assert budgets["s2"].sub_deadline_s == 8.0


def test_off_critical_branch_gets_slack():
    """In a fork/join whose branch c is shorter than b, c's sub-deadline leaves it slack."""
    est = {"a": 1.0, "b": 3.0, "c": 1.0, "j": 1.0}
    fj = validated(fork_join())
    budgets = split_deadline(fj, list(est), est.__getitem__, 0.0, 10.0)
    assert budgets["b"].sub_deadline_s == pytest.approx(8.0)
    assert budgets["c"].sub_deadline_s == pytest.approx(10.0 * 2 / 3)
    assert budgets["c"].latest_finish_s == budgets["b"].latest_finish_s == 9.0
    assert critical_path_s(fj, est.__getitem__) == 5.0


def test_no_deadline_gives_infinite_budgets_and_a_late_request_gets_its_deadline():
    """Without a deadline every budget is infinite; past it, every stage is due at the deadline."""
    budgets = split_deadline(CHAIN, list(EST), EST.__getitem__, 0.0, None)
    assert all(math.isinf(b.sub_deadline_s) for b in budgets.values())
    late = split_deadline(CHAIN, list(EST), EST.__getitem__, 9.0, 8.0)
    assert {b.sub_deadline_s for b in late.values()} == {9.0}
    assert slack_s(late["s0"].sub_deadline_s, 9.0, 1.0) == -1.0


@settings(max_examples=50, deadline=None)
@given(dag=dags(), data=st.data())
def test_budgets_grow_along_every_edge_and_sinks_on_the_critical_path_get_the_deadline(dag, data):
    """A stage's sub-deadline is never later than its dependents', and the critical path ends
    exactly at the deadline."""
    pipeline, _ = dag
    est = {s.name: data.draw(st.sampled_from([0.5, 1.0, 2.0])) for s in pipeline.stages}
    budgets = split_deadline(pipeline, list(est), est.__getitem__, 1.0, 11.0)
    for stage in pipeline.stages:
        for nxt in pipeline.dependents[stage.name]:
            assert budgets[stage.name].sub_deadline_s <= budgets[nxt].sub_deadline_s + 1e-9
    times = path_times(pipeline, list(est), est.__getitem__)
    ends = [s for s, up in times.up_s.items() if up == times.critical_s]
    assert all(budgets[s].sub_deadline_s == pytest.approx(11.0) for s in ends)


def test_core_gives_each_ready_stage_its_sub_deadline():
    """The core budgets a stage when it becomes ready, from the profile estimates."""
    profiles = ProfileTable(table={("m", "cpu0", 0): ProfileEntry(1.0)})
    core = Core([DeviceSpec("cpu0", "cpu", "onnxruntime")], standard_models(), "edf", profiles)
    core.submit(Request("r", CHAIN, 1, 0.0, 6.0), 0.0)
    assert core.request("r").runs["s0"].sub_deadline_s == pytest.approx(2.0)
    core.schedule(0.0)
    core.on_stage_done("r", "s0", 1.0)
    assert core.request("r").runs["s1"].sub_deadline_s == pytest.approx(1.0 + 5.0 / 2)
    assert math.isinf(core.request("r").runs["s2"].sub_deadline_s)  # not ready yet
