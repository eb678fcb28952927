"""Invariants of the core under every policy, over random DAGs, device sets and workloads."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings, strategies as st

from heddle.scheduler import Core, Request, RunState
from heddle.scheduler.policies import POLICIES, make_policy, tail
from heddle.scheduler.sim.driver import Driver, TimedBy
from strategies import Workload, workloads

ALL_POLICIES = sorted(POLICIES)


def run(w: Workload, policy: str, max_wait_s: float | None = None, twin_check: bool = False):
    """Drive a fresh core through the workload on the virtual-time driver; returns what happened.

    Checks along the way: each plan equals the plan of a deep copy of the core taken just
    before the step (twin_check), and aged runs are overtaken only by older aged runs.
    """
    options = {} if max_wait_s is None else {"max_wait_s": max_wait_s}
    core = Core(w.devices, w.models, make_policy(policy, **options), w.profiles())
    requests, before = {}, {}

    def make_request(item, now: float) -> Request:
        rid, index, priority, deadline = item
        requests[rid] = Request(rid, w.pipelines[index], priority, now, deadline)
        return requests[rid]

    def before_step(now: float) -> None:
        before["twin"] = copy.deepcopy(core) if twin_check else None
        before["waiting"] = [r for d in core.devices for r in core.queued(d)]

    def after_step(now: float, plan) -> None:
        if before["twin"] is not None:
            assert before["twin"].schedule(now) == plan, "same state, different plan"
        if max_wait_s is not None:
            _check_aging(core, plan, before["waiting"], now)
        for d in core.devices:
            assert not any(r.state is RunState.FROZEN and core.aged(r, now) for r in core.queued(d))

    driver = Driver(core, TimedBy(w.run_time_s), make_request=make_request, forget=False, log_runs=True,
                    before_step=before_step, after_step=after_step)
    for t, *item in w.arrivals:
        driver.arrive(t, item)
    driver.run()
    return core, driver.runs, {rid: outcome for rid, (outcome, _) in driver.finished.items()}, requests


def _check_aging(core: Core, plan, waiting, now: float) -> None:
    """A run waiting past the bound is overtaken, on any device that can run it, only by a run
    that became ready before it."""
    left = {r.key: r for r in waiting if r.state is not RunState.CANCELLED}  # not shed this step
    for d in plan.dispatches:
        started = left.pop((d.request_id, d.stage))
        for other in left.values():
            if core.aged(other, now) and d.device in core.eligible_devices(other.model):
                assert core.aged(started, now), f"{started.key} overtook aged {other.key}"
                assert (started.ready_s, *tail(started)) <= (other.ready_s, *tail(other))


def _check_outcomes(w: Workload, core: Core, log, finished, requests) -> None:
    assert set(finished) == {a[1] for a in w.arrivals}, "a request never ended"
    assert core.stats().active_requests == 0
    for req in requests.values():
        for r in req.runs.values():
            assert r.state >= RunState.DONE, f"{r.key} left {r.state.name}"
            for dep in req.pipeline.depends_on[r.stage]:
                if r.started_s is not None:
                    assert req.runs[dep].state is RunState.DONE
                    assert req.runs[dep].finished_s <= r.started_s, "ran before its inputs existed"
    slots = {d.id: d.slots for d in w.devices}
    for start, _, d in log:
        busy = sum(1 for s, e, o in log if o.device == d.device and s <= start < e)
        assert busy <= slots[d.device], f"{d.device} ran {busy} stages on {slots[d.device]} slots"


@pytest.mark.parametrize("policy", ALL_POLICIES)
@settings(max_examples=15, deadline=None)
@given(w=workloads())
def test_every_request_ends_once_inputs_first_slots_respected(policy, w):
    """Under every policy: each request ends exactly once, no stage starts before its inputs
    exist, no device runs more stages than its slots, and no transformer stage runs on a DLA."""
    core, log, finished, requests = run(w, policy)
    _check_outcomes(w, core, log, finished, requests)
    for _, _, d in log:
        assert not (d.device.startswith("dla") and d.model.startswith("tfm")), "op-incompatible mapping"


@pytest.mark.parametrize("policy", ALL_POLICIES)
@settings(max_examples=12, deadline=None)
@given(w=workloads(), bound=st.sampled_from([0.0, 0.5, 1.5]))
def test_aged_runs_are_overtaken_only_by_older_ones(policy, w, bound):
    """With an aging bound, a run that waited past it goes before any run that did not, on
    every device that can run it, in the order the runs became ready."""
    core, log, finished, requests = run(w, policy, max_wait_s=bound)
    _check_outcomes(w, core, log, finished, requests)


@pytest.mark.parametrize("policy", ALL_POLICIES)
@settings(max_examples=6, deadline=None)
@given(w=workloads(max_requests=6))
def test_plan_is_a_deterministic_function_of_the_state(policy, w):
    """A deep copy of the core taken before any step plans exactly what the core plans, and a
    second run of the same workload gives the same dispatch log."""
    first = run(w, policy, twin_check=True)[1]
    assert run(w, policy)[1] == first
