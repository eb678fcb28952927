"""Scheduling policies on the pure core: ordering, aging bound, estimates, and twill's mapping,
migration and freezing, all on a virtual clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_fixtures import chain, model, validated

from heddle.scheduler import Core, DeviceSpec, Request
from heddle.scheduler.policies import POLICIES, PriorityPolicy, make_policy
from heddle.scheduler.profiles import ProfileEntry, ProfileTable
from heddle.scheduler.sim.driver import Driver, TimedBy

ALL_POLICIES = sorted(POLICIES)


def drive(core, arrivals, run_s):
    """Arrivals are (time, Request); run_s(model, device) gives each run's time.
    Returns every plan with its time, and the requests by id."""
    plans = []
    driver = Driver(core, TimedBy(run_s), forget=False, after_step=lambda now, plan: plans.append((now, plan)))
    for t, r in arrivals:
        driver.arrive(t, r)
    driver.run()
    return plans, {r.id: r for _, r in arrivals}


def order(plans):
    return [d.request_id for _, p in plans for d in p.dispatches]


def table(**latency_s):
    """ProfileTable from keyword 'model__device=seconds'."""
    return ProfileTable(table={(k.split("__")[0], k.split("__")[1], 0): ProfileEntry(v) for k, v in latency_s.items()})


def one_stage(name="m", devices=()):
    m = model(name, devices=devices)
    return validated(chain(name, [name]), {name: m}), {name: m}


# ---- names and options -----------------------------------------------------------------

def test_make_policy_builds_every_listed_policy_and_rejects_unknown_names():
    """Every name in POLICIES builds a policy of that name; an unknown name lists the known ones."""
    for name in ALL_POLICIES:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="known:.*twill"):
        make_policy("round_robin")


def test_priority_ages_by_default_and_options_reach_the_policy():
    """priority has a finite aging bound by default; max_wait_s passed by name overrides it."""
    assert make_policy("priority").max_wait_s == PriorityPolicy.DEFAULT_MAX_WAIT_S
    assert make_policy("priority", max_wait_s=0.25).max_wait_s == 0.25
    assert make_policy("fcfs").max_wait_s is None
    with pytest.raises(ValueError):
        make_policy("edf", max_wait_s=-1)


# ---- aging -------------------------------------------------------------------------------

def _saturated(n_dev, slots, run_s, lows, periods=20):
    """n_dev * slots high-priority streams, each a request every run_s (the devices never idle),
    plus low-priority requests at the given times."""
    pipeline, models = one_stage()
    devices = [DeviceSpec(f"cpu{i}", "cpu", "onnxruntime", slots) for i in range(n_dev)]
    arrivals = [(k * run_s, Request(f"h{s}-{k}", pipeline, 9, k * run_s))
                for k in range(periods) for s in range(n_dev * slots)]
    arrivals += [(t, Request(f"low{i}", pipeline, 1, t)) for i, t in enumerate(lows)]
    return devices, models, sorted(arrivals, key=lambda a: a[0])


def test_strict_priority_without_aging_starves_low_priority_until_the_stream_ends():
    """With no bound, a low-priority request behind a saturating stream waits for all of it."""
    devices, models, arrivals = _saturated(1, 1, 1.0, lows=[0.5])
    plans, reqs = drive(Core(devices, models, make_policy("priority", max_wait_s=None)), arrivals, lambda m, d: 1.0)
    assert order(plans)[-1] == "low0" and reqs["low0"].runs["s0"].started_s == 20.0


@pytest.mark.parametrize("policy", ALL_POLICIES)
@settings(max_examples=15, deadline=None)
@given(n_dev=st.integers(1, 3), slots=st.integers(1, 2), run_s=st.sampled_from([0.25, 0.5, 1.0]),
       bound_runs=st.sampled_from([1.0, 1.5, 3.0]), data=st.data())
def test_aging_bounds_every_wait_under_a_saturating_stream(policy, n_dev, slots, run_s, bound_runs, data):
    """With max_wait_s set, no ready stage waits longer than the bound plus one run time, even
    with every slot saturated by higher-priority work."""
    lows = data.draw(st.lists(st.sampled_from([x * run_s / 4 for x in range(40)]), min_size=1,
                              max_size=n_dev * slots))
    devices, models, arrivals = _saturated(n_dev, slots, run_s, lows)
    bound_s = bound_runs * run_s
    core = Core(devices, models, make_policy(policy, max_wait_s=bound_s))
    _, reqs = drive(core, arrivals, lambda m, d: run_s)
    for req in reqs.values():
        run = req.runs["s0"]
        assert run.started_s - run.ready_s <= bound_s + run_s + 1e-9, f"{req.id} waited too long"


# ---- estimate-based ordering ---------------------------------------------------------------

def _queued_behind_blocker(policy, profiles, requests):
    """One device busy with a blocker at t=0; `requests` (id, priority, deadline, model) queue
    behind it; returns the order they run in."""
    models = {m: model(m) for m in ("block", "short", "long")}
    pipes = {m: validated(chain(m, [m]), models) for m in models}
    arrivals = [(0.0, Request("blocker", pipes["block"], 1, 0.0))]
    arrivals += [(0.0, Request(rid, pipes[m], prio, 0.0, dl)) for rid, prio, dl, m in requests]
    core = Core([DeviceSpec("cpu0", "cpu", "onnxruntime")], models, policy, profiles)
    plans, _ = drive(core, arrivals, lambda m, d: profiles.estimate(m, core.devices[d]).mean_s)
    return [r for r in order(plans) if r != "blocker"]


PROFILES = table(block__cpu0=1.0, short__cpu0=0.5, long__cpu0=4.0)
REQUESTS = [("a", 1, 20.0, "long"), ("b", 9, 30.0, "short"), ("c", 3, 10.0, "long"), ("d", 1, None, "short")]


def test_edf_runs_the_earliest_deadline_first_and_no_deadline_last():
    """edf orders by sub-deadline: c (10 s), a (20 s), b (30 s), then d with none."""
    assert _queued_behind_blocker("edf", PROFILES, REQUESTS) == ["c", "a", "b", "d"]


def test_least_slack_weighs_the_estimate_against_the_deadline():
    """A long run due later can have less slack than a short one due sooner."""
    reqs = [("tight", 1, 6.0, "long"), ("early", 1, 5.5, "short")]  # slack 1 s vs 4 s at t=1
    assert _queued_behind_blocker("least_slack", PROFILES, reqs) == ["tight", "early"]
    assert _queued_behind_blocker("edf", PROFILES, reqs) == ["early", "tight"]


def test_sjf_runs_the_shortest_estimated_run_first():
    """sjf puts short runs (0.5 s) before long ones (4 s), arrival order among equals."""
    assert _queued_behind_blocker("sjf", PROFILES, REQUESTS) == ["b", "d", "a", "c"]


def test_priority_ignores_deadlines_and_dream_weighs_urgency_and_fairness():
    """priority runs b (9) first. DREAM: of equal runs, the one nearer its deadline first; a
    short run that has waited outranks a long one (waiting time / its own run time)."""
    assert _queued_behind_blocker("priority", PROFILES, REQUESTS)[0] == "b"
    urgent = [("late", 1, 20.0, "long"), ("soon", 1, 10.0, "long")]
    assert _queued_behind_blocker("dream", PROFILES, urgent) == ["soon", "late"]
    starved = [("big", 1, None, "long"), ("small", 1, None, "short")]
    assert _queued_behind_blocker("dream", PROFILES, starved) == ["small", "big"]


def test_policy_can_be_switched_while_requests_are_queued():
    """set_policy changes the order of work already queued."""
    pipeline, models = one_stage()
    core = Core([DeviceSpec("cpu0", "cpu", "onnxruntime")], models, "fcfs")
    for i, prio in enumerate([1, 1, 9]):
        core.submit(Request(f"r{i}", pipeline, prio, 0.0), 0.0)
    assert core.schedule(0.0).dispatches[0].request_id == "r0"
    core.set_policy("priority")
    core.on_stage_done("r0", "s0", 1.0)
    assert core.schedule(1.0).dispatches[0].request_id == "r2"


# ---- twill ---------------------------------------------------------------------------------

GPU_CPU = [DeviceSpec("cpu0", "cpu", "onnxruntime"), DeviceSpec("gpu0", "gpu", "onnxruntime"),
           DeviceSpec("dla0", "dla", "onnxruntime", options={"unsupported_ops": ("LayerNormalization",)})]


def _first_device(deadline_s, profiles, name="m"):
    pipeline, models = one_stage(name)
    core = Core(GPU_CPU, models, "twill", profiles)
    core.submit(Request("r", pipeline, 3, 0.0, deadline_s), 0.0)
    return core.schedule(0.0).dispatches[0].device


def test_twill_maps_to_the_slowest_device_that_still_meets_the_deadline():
    """With slack, the run goes to the slowest device that meets its deadline, leaving the fast
    ones free; with none on time or no deadline, to the device that finishes first."""
    profiles = table(m__cpu0=2.0, m__gpu0=0.1, m__dla0=0.4)
    assert _first_device(5.0, profiles) == "cpu0"
    assert _first_device(1.0, profiles) == "dla0"
    assert _first_device(0.2, profiles) == "gpu0"
    assert _first_device(0.05, profiles) == "gpu0"
    assert _first_device(None, profiles) == "gpu0"


def test_twill_ranks_devices_by_their_full_speed_not_their_power_level():
    """A GPU the power controller slowed below the DLA's speed is still the GPU: work that
    the DLA runs on time goes to the DLA, not into the throttled GPU's queue."""
    devices = [DeviceSpec("gpu0", "gpu", "onnxruntime", options={"speed": {"level_clock": (1.0, 0.33)}}),
               DeviceSpec("dla0", "dla", "onnxruntime")]
    pipeline, models = one_stage()
    core = Core(devices, models, "twill", table(m__gpu0=0.1, m__dla0=0.2))
    core.set_device_level("gpu0", 1)
    assert core.estimate_s("m", "gpu0") > core.estimate_s("m", "dla0")  # ~0.3 s against 0.2 s now
    core.submit(Request("r", pipeline, 3, 0.0, 1.0), 0.0)
    assert core.schedule(0.0).dispatches[0].device == "dla0"


def test_twill_never_maps_a_model_to_a_device_that_lacks_its_ops():
    """A model with LayerNormalization never goes to the DLA, however fast the DLA would be."""
    profiles = table(m__cpu0=2.0, m__gpu0=0.5, m__dla0=0.01)
    profiles.ops = {"m": frozenset({"MatMul", "LayerNormalization"})}
    assert _first_device(0.6, profiles) == "gpu0"
    pipeline, models = one_stage()
    assert "dla0" not in Core(GPU_CPU, models, "fcfs", profiles).eligible_devices("m")


def test_twill_migrates_a_queued_run_to_a_device_that_frees_up_earlier():
    """A run queued behind a long job moves to a device that became free and finishes it sooner."""
    models = {"slow": model("slow", devices=["cpu0"]), "fast": model("fast", devices=["gpu0"]), "m": model("m")}
    profiles = table(slow__cpu0=3.0, fast__gpu0=1.0, m__cpu0=0.5, m__gpu0=0.1)
    core = Core(GPU_CPU[:2], models, "twill", profiles)
    pipe = {m: validated(chain(m, [m]), models) for m in models}
    core.submit(Request("a", pipe["fast"], 1, 0.0), 0.0)
    core.submit(Request("b", pipe["slow"], 1, 0.0), 0.0)
    assert {d.device for d in core.schedule(0.0).dispatches} == {"cpu0", "gpu0"}
    core.submit(Request("r", pipe["m"], 9, 0.0, 1.05), 0.0)  # late anywhere: gpu0 soonest, at 1.1
    assert core.request("r").runs["s0"].device == "gpu0" and not core.schedule(0.0).dispatches
    core.on_stage_done("b", "s0", 0.2)  # cpu0 frees early: r there finishes at 0.7
    plan = core.schedule(0.2)
    assert [(d.request_id, d.device) for d in plan.dispatches] == [("r", "cpu0")]
    assert [(m.from_device, m.to_device) for m in plan.migrated] == [("gpu0", "cpu0")]


def _freeze_setup(policy):
    """H: prep (cpu only, 0.5 s) -> infer (gpu only, 0.1 s), due at 0.7 s. L: a 1 s low-priority
    gpu run queued while H's prep is running."""
    models = {"prep": model("prep", devices=["cpu0"]), "infer": model("infer", devices=["gpu0"]),
              "bg": model("bg", devices=["gpu0"])}
    profiles = table(prep__cpu0=0.5, infer__gpu0=0.1, bg__gpu0=1.0)
    high = validated(chain("h", ["prep", "infer"]), models)
    low = validated(chain("l", ["bg"]), models)
    core = Core(GPU_CPU[:2], models, policy, profiles)
    arrivals = [(0.0, Request("H", high, 9, 0.0, 0.7)), (0.01, Request("L", low, 1, 0.01, 10.0))]
    return core, arrivals, lambda m, d: profiles.estimate(m, core.devices[d]).mean_s


def test_twill_freezes_low_priority_work_that_would_make_urgent_work_late_then_unfreezes_it():
    """L is held while H's next stage is imminent, so H meets its deadline; L runs right after."""
    core, arrivals, run_s = _freeze_setup("twill")
    plans, reqs = drive(core, arrivals, run_s)
    assert reqs["H"].finished_s <= 0.7 and reqs["L"].finished_s is not None
    frozen = [(t, f.request_id) for t, p in plans for f in p.frozen]
    unfrozen = [(t, u.request_id) for t, p in plans for u in p.unfrozen]
    assert frozen == [(0.01, "L")] and unfrozen == [(0.5, "L")]
    assert reqs["L"].runs["s0"].started_s == pytest.approx(0.6)


def test_without_freezing_the_same_low_priority_work_makes_urgent_work_late():
    """fcfs (and twill with freezing off) start L at once, and H misses its deadline."""
    for policy in ("fcfs", make_policy("twill", freeze=False)):
        core, arrivals, run_s = _freeze_setup(policy)
        _, reqs = drive(core, arrivals, run_s)
        assert reqs["H"].deadline_missed


def test_aging_bound_beats_freezing():
    """A frozen run that waits past the aging bound is released and runs."""
    core, arrivals, run_s = _freeze_setup(make_policy("twill", max_wait_s=0.2))
    pipeline, models = one_stage("tick", devices=["cpu0"])
    core.models.update(models)
    core.profiles.table[("tick", "cpu0", 0)] = ProfileEntry(0.01)
    arrivals.append((0.3, Request("tick", pipeline, 1, 0.3)))  # an event after L has aged
    plans, reqs = drive(core, arrivals, run_s)
    assert [(t, u.request_id) for t, p in plans for u in p.unfrozen] == [(0.3, "L")]
    assert reqs["L"].runs["s0"].started_s == 0.3


def _next_after_busy(waiting):
    """One device busy until 1.0 s; `waiting` (request id, priority, deadline) queued at 0.01 s:
    which one twill starts when the device frees. m takes 0.5 s, so a deadline of 1.3 s is
    still ahead at 1.0 s but can no longer be met (hopeless)."""
    pipeline, models = one_stage("m", devices=["cpu0"])
    core = Core(GPU_CPU[:1], models, "twill", table(m__cpu0=0.5))
    core.submit(Request("busy", pipeline, 1, 0.0), 0.0)
    assert [d.request_id for d in core.schedule(0.0).dispatches] == ["busy"]
    for rid, priority, deadline_s in waiting:
        core.submit(Request(rid, pipeline, priority, 0.01, deadline_s), 0.01)
    core.schedule(0.01)
    core.on_stage_done("busy", "s0", 1.0)
    return [d.request_id for d in core.schedule(1.0).dispatches]


def test_twill_runs_a_hopeless_urgent_run_before_lower_priority_best_effort_work():
    """A priority-9 run that can no longer make its deadline still goes before priority-1 work
    with no deadline (estimates are noisy: it may yet make it), but a hopeless priority-1 run
    does not go before priority-9 best-effort work."""
    assert _next_after_busy([("bg", 1, None), ("late", 9, 1.3)]) == ["late"]
    assert _next_after_busy([("late", 1, 1.3), ("bg", 9, None)]) == ["bg"]
    assert _next_after_busy([("bg", 9, None), ("late", 9, 1.3)]) == ["late"]
    assert _next_after_busy([("late", 9, 1.3), ("ok", 1, 5.0)]) == ["ok"]  # feasible first
