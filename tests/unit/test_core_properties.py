"""Invariants of the core under every policy, over random DAGs, device sets and workloads."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import Workload, workloads

from heddle.scheduler import Core, Outcome, Request, RunState
from heddle.scheduler.policies import POLICIES, make_policy, tail
from heddle.scheduler.sim.driver import Driver, TimedBy

ALL_POLICIES = sorted(POLICIES)


# Dynamic batching for every model (the workloads' runs take 0.1-2 s): passes of up to 3 runs,
# a device waiting up to 0.3 s for company.
BATCHING = {"max_batch": 3, "max_queue_delay_us": 300_000}


def run(w: Workload, policy: str, max_wait_s: float | None = None, twin_check: bool = False,
        batching: bool = False):
    """Drive a fresh core through the workload on the virtual-time driver; returns what happened.

    Checks along the way: each plan equals the plan of a deep copy of the core taken just
    before the step (twin_check), aged runs are overtaken only by older aged runs, and with
    batching a device left idle beside ready runs holds them only as a forming batch may.
    """
    options = {} if max_wait_s is None else {"max_wait_s": max_wait_s}
    models = {n: dataclasses.replace(m, options=BATCHING) for n, m in w.models.items()} if batching else w.models
    core = Core(w.devices, models, make_policy(policy, **options), w.profiles())
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
        if batching:
            _check_batch_waits(core, now)

    timed = TimedBy(w.run_time_s, w.list_length, w.flag if w.flags else None)
    driver = Driver(core, timed, make_request=make_request, forget=False, log_runs=True,
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
        for member in d.members[1:]:  # they ride in the first member's slot
            left.pop((member.request_id, member.stage))
        started = left.pop((d.request_id, d.stage))
        for other in left.values():
            if core.aged(other, now) and d.device in core.eligible_devices(other.model):
                assert core.aged(started, now), f"{started.key} overtook aged {other.key}"
                assert (started.ready_s, *tail(started)) <= (other.ready_s, *tail(other))


def _check_batch_waits(core: Core, now: float) -> None:
    """A healthy device with a free slot and ready runs queued is waiting for a fuller batch of
    some model (its lead may be a run it steals): its own ready runs of that model are within
    their queue delay with a sub-deadline that still covers a full pass, and its other ready runs
    are of a lower priority than the best ready run of that model it could take, and not aged."""
    delay_s = BATCHING["max_queue_delay_us"] * 1e-6
    for device in core.devices:
        ready = [r for r in core.queued(device) if r.state is RunState.READY]
        if not ready or not core.is_healthy(device) or core.free_slots(device) <= 0:
            continue
        assert core.next_batch_wake_s() is not None and core.next_batch_wake_s() > now
        takeable = [r for d in core.devices for r in core.queued(d)
                    if r.state is RunState.READY and device in core.eligible_devices(r.model)]

        def waits_for(model: str) -> bool:
            pass_s = core.estimate_s(model, device, BATCHING["max_batch"])  # noqa: B023
            top = max(r.request.priority for r in takeable if r.model == model)  # noqa: B023
            return (all(r.ready_s + delay_s > now and r.sub_deadline_s - pass_s > now
                        for r in ready if r.model == model)  # noqa: B023
                    and all(r.request.priority < top and not core.aged(r, now)
                            for r in ready if r.model != model))  # noqa: B023

        assert any(waits_for(m) for m in {r.model for r in takeable}), (
            f"{device} idle at {now} beside {[(r.key, r.model, r.ready_s, r.sub_deadline_s) for r in ready]}")


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
    for rid, req in requests.items():
        _check_fan_out(req, w.list_length_of(rid) if w.lengths is not None else 0)
        _check_skips(req, (w.flags or {}).get(rid, True))


def _check_skips(req, flag: bool) -> None:
    """A stage is skipped exactly when its `when` is false or a stage it needs was skipped; a
    skipped stage never started, nor did any element run of it."""
    for run in req.runs.values():
        group = req.runs[run.stage]
        if group.state is RunState.SKIPPED:
            assert run.started_s is None and (run is group or run.state is RunState.CANCELLED)
        if req.outcome is Outcome.OK and run is group:
            after_skip = any(req.runs[d].state is RunState.SKIPPED for d in req.pipeline.depends_on[run.stage])
            assert (run.state is RunState.SKIPPED) == (after_skip or (run.stage in req.pipeline.whens and not flag))


def _check_fan_out(req, length: int) -> None:
    """A map stage of a request that ended OK ran one element run per map_batch elements, each
    once, and was done (its dependants free to start) only when the last of them was."""
    if req.outcome is not Outcome.OK:
        return
    for stage, _ in req.pipeline.maps.items():
        if req.runs[stage].state is RunState.SKIPPED:
            assert not [r for r in req.runs.values() if r.stage == stage and r.element >= 0]
            continue
        batch = req.pipeline.stage(stage).map_batch
        runs = [r for r in req.runs.values() if r.stage == stage and r.element >= 0]
        assert sorted(r.element for r in runs) == list(range(-(-length // batch))), f"{req.id} {stage}"
        group = req.runs[stage]
        assert group.state is RunState.DONE
        assert all(r.state is RunState.DONE and r.finished_s <= group.finished_s for r in runs)


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


@pytest.mark.parametrize("policy", ALL_POLICIES)
@settings(max_examples=15, deadline=None)
@given(w=workloads(), bound=st.sampled_from([None, 1.5]))
def test_with_batching_every_request_ends_once_and_waits_only_as_a_forming_batch_may(policy, w, bound):
    """With every model batching, under every policy (with and without an aging bound): each
    request ends exactly once, inputs come first, a pass holds one slot whatever its members,
    and a device idles beside ready runs only while they may wait for a fuller batch."""
    core, log, finished, requests = run(w, policy, max_wait_s=bound, batching=True)
    _check_outcomes(w, core, log, finished, requests)
    assert all(len(d.members) <= BATCHING["max_batch"] for _, _, d in log)


@pytest.mark.parametrize("policy", ALL_POLICIES)
@settings(max_examples=6, deadline=None)
@given(w=workloads(max_requests=6))
def test_with_batching_the_plan_is_a_deterministic_function_of_the_state(policy, w):
    """With batching on, a deep copy of the core plans exactly what the core plans, and a rerun
    of the workload gives the same dispatch log."""
    first = run(w, policy, twin_check=True, batching=True)[1]
    assert run(w, policy, batching=True)[1] == first


@pytest.mark.parametrize("policy", ALL_POLICIES)
@settings(max_examples=12, deadline=None)
@given(w=workloads(maps=True), batching=st.booleans(), bound=st.sampled_from([None, 1.5]))
def test_map_pipelines_fan_out_and_gather_under_every_policy(policy, w, batching, bound):
    """With pipelines that fan out over lists of 0-5 elements (chained map stages, map_batch
    1-3, a gather, maybe a `when`), under every policy, with and without batching and an aging
    bound: each request ends exactly once, no run starts before its inputs exist (a gather after
    the last element run), slots hold, an OK request's map stage ran exactly its element runs, and
    a stage is skipped exactly when its `when` is false or a stage before it was skipped."""
    core, log, finished, requests = run(w, policy, max_wait_s=bound, batching=batching)
    _check_outcomes(w, core, log, finished, requests)
    assert core.footprint() == dict.fromkeys(core.footprint(), 0) | {"requests": len(requests)}


@pytest.mark.parametrize("policy", ALL_POLICIES)
@settings(max_examples=4, deadline=None)
@given(w=workloads(max_requests=6, maps=True))
def test_map_pipelines_plan_is_a_deterministic_function_of_the_state(policy, w):
    """With map pipelines, a deep copy of the core plans exactly what the core plans, and a rerun
    gives the same dispatch log."""
    first = run(w, policy, twin_check=True, batching=True)[1]
    assert run(w, policy, batching=True)[1] == first
