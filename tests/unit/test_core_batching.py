"""Dynamic batching in the core, driven with a fake clock: which runs share a pass, how long a
device waits for more, and what a wait may never hold."""

from __future__ import annotations

import dataclasses

import pytest
from sched_fixtures import chain, devices, model, tensor, validate_pipeline

from heddle.scheduler import Core, Outcome, PipelineSpec, Request, RunState, StageSpec
from heddle.scheduler.batching import shape_signature
from heddle.scheduler.policies import BasePolicy
from heddle.scheduler.profiles import ConstantProfiles, ProfileEntry, ProfileTable, batch_scale
from heddle.scheduler.sim.driver import Driver, TimedBy

RUN_S = 0.1  # every one-row pass (ConstantProfiles); a pass of b rows takes RUN_S * batch_scale(b)


def batching_model(name: str = "m", **options) -> object:
    spec = model(name)
    return dataclasses.replace(spec, options={"max_batch": 4, **options},
                               inputs=(tensor("x", shape=(-1, -1)),), outputs=(tensor("y", shape=(-1, -1)),))


def make_core(policy: str = "fcfs", slots: int = 1, **options) -> tuple[Core, dict]:
    """One device; model m batches (max_batch 4 unless given), model k does not."""
    models = {"m": batching_model(**options), "k": model("k")}
    pipelines = {name: validate_pipeline(chain(name, [name]), models) for name in models}
    return Core(devices(1, slots), models, policy, ConstantProfiles(RUN_S)), pipelines


def request(rid: str, pipeline, now: float, priority: int = 1, deadline_s=None, rows: int = 1, width: int = 8):
    return Request(rid, pipeline, priority, now, deadline_s, shapes={(None, "x"): (rows, width)})


def members(dispatch) -> list[str]:
    return [m.request_id for m in dispatch.members]


def test_queued_runs_of_one_model_start_as_one_pass_holding_one_slot():
    """Three runs queued behind a busy device start together when it frees, as one Dispatch that
    names all three, in arrival order, and hold one slot between them."""
    core, p = make_core()
    core.submit(request("busy", p["k"], 0.0), 0.0)
    assert [d.request_id for d in core.schedule(0.0).dispatches] == ["busy"]
    for i in range(3):
        core.submit(request(f"r{i}", p["m"], 0.01 * i), 0.01 * i)
    assert not core.schedule(0.05).dispatches
    core.on_stage_done("busy", "s0", 0.1)
    (batch,) = core.schedule(0.1).dispatches
    assert members(batch) == ["r0", "r1", "r2"] and batch.rows == 3
    assert core.free_slots("cpu0") == 0 and core.stats().running == {"cpu0": 1}
    for m in batch.members:
        core.on_stage_done(m.request_id, m.stage, 0.3)
    assert {f.request_id: f.outcome for f in core.schedule(0.3).finished} == dict.fromkeys(
        ["r0", "r1", "r2"], Outcome.OK)
    assert core.free_slots("cpu0") == 1


def test_a_batch_never_takes_more_than_max_batch_rows():
    """Six one-row runs and max_batch 4: a pass of four, then one of two; a run of three rows
    goes in the pass it fits."""
    core, p = make_core()
    core.submit(request("busy", p["k"], 0.0), 0.0)
    core.schedule(0.0)
    for i, rows in enumerate([1, 1, 3, 1, 1, 1]):
        core.submit(request(f"r{i}", p["m"], 0.0, rows=rows), 0.0)
    core.on_stage_done("busy", "s0", 0.1)
    (first,) = core.schedule(0.1).dispatches
    assert members(first) == ["r0", "r1", "r3", "r4"] and first.rows == 4


def test_a_lone_run_waits_for_company_at_most_max_queue_delay():
    """An idle device holds a lone run of a batching model until max_queue_delay_us has passed
    since it became ready (no deadline), and says when to step again."""
    core, p = make_core(max_queue_delay_us=5000)
    core.submit(request("r0", p["m"], 0.0), 0.0)
    assert not core.schedule(0.0).dispatches
    assert core.next_deadline_s() == pytest.approx(0.005)
    core.submit(request("r1", p["m"], 0.002), 0.002)
    assert not core.schedule(0.002).dispatches
    assert core.next_deadline_s() == pytest.approx(0.005)  # counted from the oldest member
    (batch,) = core.schedule(0.005).dispatches
    assert members(batch) == ["r0", "r1"]
    assert core.next_deadline_s() is None


def test_a_full_batch_or_a_preferred_size_goes_at_once():
    """With room to wait, a batch that reaches a preferred size (2) starts without waiting."""
    core, p = make_core(max_queue_delay_us=1e6, preferred_batch_sizes=[2])
    core.submit(request("r0", p["m"], 0.0), 0.0)
    assert not core.schedule(0.0).dispatches
    core.submit(request("r1", p["m"], 0.001), 0.001)
    (batch,) = core.schedule(0.001).dispatches
    assert members(batch) == ["r0", "r1"]


def test_a_run_never_waits_in_a_forming_batch_beyond_its_slack():
    """A deadline 0.5 s away and a full pass estimated at 0.25 s: the run waits no longer than
    0.25 s (its slack), though max_queue_delay_us would allow a second, and a later member with
    less slack cuts the wait short for all."""
    core, p = make_core(max_queue_delay_us=1e6)
    full_pass_s = RUN_S * batch_scale(4)
    core.submit(request("r0", p["m"], 0.0, deadline_s=0.5), 0.0)
    assert not core.schedule(0.0).dispatches
    assert core.next_deadline_s() == pytest.approx(0.5 - full_pass_s)
    core.submit(request("r1", p["m"], 0.1, deadline_s=0.4), 0.1)
    assert not core.schedule(0.1).dispatches
    wake_s = core.next_deadline_s()
    assert wake_s == pytest.approx(0.4 - full_pass_s)
    assert not core.schedule(wake_s - 1e-9).dispatches
    (batch,) = core.schedule(wake_s).dispatches
    assert members(batch) == ["r0", "r1"]
    assert wake_s + RUN_S * batch_scale(batch.rows) <= 0.4  # the pass ends within every member's budget


def test_a_run_with_no_slack_left_starts_at_once():
    """A run whose deadline leaves less than a full pass does not wait at all."""
    core, p = make_core(max_queue_delay_us=1e6)
    core.submit(request("r0", p["m"], 0.0, deadline_s=0.2), 0.0)
    (alone,) = core.schedule(0.0).dispatches
    assert members(alone) == ["r0"] and not alone.batch


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_a_higher_priority_arrival_is_not_held_by_a_forming_lower_priority_batch(policy):
    """A device waiting to fill a batch of priority-1 runs keeps waiting beside a priority-0 run of
    another model, and stops when a priority-3 one arrives: under fcfs the batch goes at once,
    under priority the urgent run does."""
    core, p = make_core(policy, max_queue_delay_us=1e6)
    core.submit(request("low", p["m"], 0.0, priority=1), 0.0)
    assert not core.schedule(0.0).dispatches
    core.submit(request("lower", p["k"], 0.01, priority=0), 0.01)  # less urgent: still waiting
    assert not core.schedule(0.01).dispatches
    core.submit(request("high", p["k"], 0.02, priority=3), 0.02)
    (started,) = core.schedule(0.02).dispatches
    assert started.request_id == ("low" if policy == "fcfs" else "high")


def test_a_higher_priority_run_of_the_model_joins_the_batch():
    """An urgent run of the batching model is a member, not held: with it the batch fills."""
    core, p = make_core("priority", max_queue_delay_us=1e6, max_batch=2)
    core.submit(request("low", p["m"], 0.0, priority=1), 0.0)
    assert not core.schedule(0.0).dispatches
    core.submit(request("high", p["m"], 0.01, priority=3), 0.01)
    (batch,) = core.schedule(0.01).dispatches
    assert members(batch) == ["high", "low"]


def test_runs_whose_shapes_differ_never_share_a_pass():
    """Widths 8 and 16 past the first dim go in separate passes; rows may differ within one."""
    core, p = make_core()
    core.submit(request("busy", p["k"], 0.0), 0.0)
    core.schedule(0.0)
    core.submit(request("a", p["m"], 0.0, width=8), 0.0)
    core.submit(request("b", p["m"], 0.0, width=16), 0.0)
    core.submit(request("c", p["m"], 0.0, width=8, rows=2), 0.0)
    core.on_stage_done("busy", "s0", 0.1)
    (first,) = core.schedule(0.1).dispatches
    assert members(first) == ["a", "c"] and first.rows == 3
    core.on_stage_done("a", "s0", 0.2)
    core.on_stage_done("c", "s0", 0.2)
    (second,) = core.schedule(0.2).dispatches
    assert members(second) == ["b"] and not second.batch


def test_a_later_stage_batches_by_the_shapes_its_producer_reported():
    """A stage fed by another stage takes its signature from the shapes on_stage_done reported:
    equal shapes share a pass, different ones do not."""
    models = {"k": model("k", devices=["cpu0"]), "m": dataclasses.replace(batching_model(max_queue_delay_us=1e6),
                                                                          devices=("cpu1",))}
    two = validate_pipeline(PipelineSpec("two", (tensor("x"),), (
        StageSpec("pre", "k", {"x": "input:x"}), StageSpec("post", "m", {"x": "pre.y"})), {"y": "post.y"}), models)
    core = Core(devices(2), models, "fcfs", ConstantProfiles(RUN_S))
    for rid in ("a", "b", "c"):  # b less urgent, so the wait for a fuller batch may hold it
        core.submit(request(rid, two, 0.0, priority=0 if rid == "b" else 1), 0.0)
    widths = {"a": 4, "b": 6, "c": 4}
    now = 0.0
    for _ in range(3):
        (d,) = core.schedule(now).dispatches
        assert d.stage == "pre"
        now += RUN_S
        core.on_stage_done(d.request_id, d.stage, now, output_shapes={"y": (1, widths[d.request_id])})
    assert shape_signature(core.request("a").runs["post"]) == (((2, 4),), 1)
    assert not core.schedule(now).dispatches  # waiting: room for two more rows
    (first,) = core.schedule(core.next_deadline_s()).dispatches
    assert members(first) == ["a", "c"]


def test_cancelling_a_member_before_dispatch_leaves_the_others():
    """Of three runs waiting in a forming batch, the cancelled one is dropped; the other two
    start as one pass at the wake time and end OK."""
    core, p = make_core(max_queue_delay_us=5000)
    for i in range(3):
        core.submit(request(f"r{i}", p["m"], 0.0), 0.0)
        assert not core.schedule(0.0).dispatches
    assert core.cancel("r1", 0.001)
    assert [f.request_id for f in core.schedule(0.001).finished] == ["r1"]
    (batch,) = core.schedule(0.005).dispatches
    assert members(batch) == ["r0", "r2"]
    for m in batch.members:
        core.on_stage_done(m.request_id, m.stage, 0.2)
    assert {f.request_id: f.outcome for f in core.schedule(0.2).finished} == {"r0": Outcome.OK, "r2": Outcome.OK}
    assert core.request("r1").runs["s0"].state is RunState.CANCELLED


def test_cancelling_a_member_while_its_pass_runs_leaves_the_others():
    """A member cancelled mid-pass ends CANCELLED; the pass's other members still end OK when it
    returns, and the slot is free once every member is back."""
    core, p = make_core()
    core.submit(request("busy", p["k"], 0.0), 0.0)
    core.schedule(0.0)
    for i in range(3):
        core.submit(request(f"r{i}", p["m"], 0.0), 0.0)
    core.on_stage_done("busy", "s0", 0.1)
    (batch,) = core.schedule(0.1).dispatches
    assert core.cancel("r0", 0.15)  # the member that holds the slot
    assert [f.outcome for f in core.schedule(0.15).finished] == [Outcome.CANCELLED]
    for m in batch.members:
        core.on_stage_done(m.request_id, m.stage, 0.3)
    assert {f.request_id: f.outcome for f in core.schedule(0.3).finished} == {"r1": Outcome.OK, "r2": Outcome.OK}
    assert core.free_slots("cpu0") == 1
    for rid in ("busy", "r0", "r1", "r2"):
        core.forget(rid)
    assert not any(core.footprint().values())


def test_the_pass_is_observed_once_on_the_batch_axis():
    """A pass of three rows is one measurement at batch 3, not three at batch 1."""
    seen = []

    class Recording(ConstantProfiles):
        def observe(self, model, device, level, run_s, batch=1):
            seen.append((model, round(run_s, 6), batch))

    core, p = make_core()
    core = Core(core.devices.values(), core.models, "fcfs", Recording(RUN_S))
    for i in range(3):
        core.submit(request(f"r{i}", p["m"], 0.0), 0.0)
    (batch,) = core.schedule(0.0).dispatches
    for m in batch.members:
        core.on_stage_done(m.request_id, m.stage, 0.2)
    assert seen == [("m", 0.2, 3)]


def test_the_virtual_time_driver_runs_a_batch_as_one_pass_on_the_batch_axis():
    """Four runs arriving together on an idle device with max_queue_delay: one pass of four,
    timed as the batch axis says, every request ending then."""
    core, p = make_core(max_queue_delay_us=2000)
    driver = Driver(core, TimedBy(lambda m, d: RUN_S), log_runs=True)
    for i in range(4):
        driver.arrive(0.0, request(f"r{i}", p["m"], 0.0))
    driver.run()
    ((start, end, d),) = driver.runs
    assert (start, d.rows) == (0.0, 4) and end == pytest.approx(RUN_S * batch_scale(4))
    assert {o for o, _ in driver.finished.values()} == {Outcome.OK}


def test_bad_batch_options_are_refused_naming_the_option():
    """Out-of-range batching options stop the core from being built, with a message naming them."""
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        make_core(preferred_batch_sizes=[8])
    with pytest.raises(ValueError, match="max_queue_delay_us"):
        make_core(max_queue_delay_us=-1)


def test_a_device_does_not_idle_for_a_batch_beside_a_run_as_urgent():
    """A run of another model with the batch's priority is not held: the batch goes at once."""
    core, p = make_core(max_queue_delay_us=1e6)
    core.submit(request("other", p["k"], 0.0, priority=1), 0.0)
    core.submit(request("m0", p["m"], 0.0, priority=1), 0.0)
    core.submit(request("busy", p["k"], 0.0, priority=1), 0.0)
    assert [d.request_id for d in core.schedule(0.0).dispatches] == ["other"]
    core.on_stage_done("other", "s0", 0.1)
    (started,) = core.schedule(0.1).dispatches
    assert started.request_id == "m0"


def test_a_reload_that_turns_batching_on_takes_effect_for_runs_made_ready_after_it():
    """update_models (a config reload) giving model k max_batch: k's next runs share a pass."""
    core, p = make_core()
    core.update_models({"k": dataclasses.replace(batching_model("k"), name="k")})
    core.submit(request("busy", p["m"], 0.0), 0.0)
    core.schedule(0.0)
    for i in range(3):
        core.submit(request(f"k{i}", p["k"], 0.0), 0.0)
    core.on_stage_done("busy", "s0", 0.1)
    (batch,) = core.schedule(0.1).dispatches
    assert members(batch) == ["k0", "k1", "k2"]


class _StealsTheUrgent(BasePolicy):
    """First come first served; the low class queues on cpu0, the rest on cpu1; cpu0 (and only
    cpu0) also takes priority-3 runs queued on cpu1, even while it has work of its own (as twill
    does, whose slack order can rank a low run of a batch ahead of an urgent one)."""

    name = "steals_the_urgent"
    steal_when_busy = True

    def place(self, run, devices, view, now):
        return "cpu0" if run.request.priority < 3 else "cpu1"

    def may_steal(self, run, device, view, now):
        return device == "cpu0" and run.request.priority >= 3


def test_a_device_waiting_for_a_batch_fills_again_when_a_member_it_waited_with_starts_elsewhere():
    """cpu0 waits to fill a batch of its low run with an urgent one queued on cpu1, and may hold
    its other low run for it (an urgent member outranks it). cpu1, later in the step, starts the
    urgent run itself (too slow to wait: its deadline). Then cpu0 fills again in the same step:
    waiting now would hold a run as urgent as its batch (the low tfm run), so it starts. (Before,
    only the loss of the batch's first run made a device fill again, and cpu0 stood idle beside
    two ready runs until its batch's wake time.)"""
    models = {"m": batching_model(max_queue_delay_us=1_000_000), "k": model("k")}
    low = validate_pipeline(PipelineSpec("low", (tensor("x", shape=(-1, -1)),), (
        StageSpec("a", "m", {"x": "input:x"}), StageSpec("b", "k", {"x": "input:x"})), {"y": "a.y", "z": "b.y"}),
        models)
    urgent = validate_pipeline(chain("urgent", ["m"]), models)
    table = ProfileTable(table={("m", "cpu0", 0): ProfileEntry(0.01), ("m", "cpu1", 0): ProfileEntry(0.5),
                                ("k", "cpu0", 0): ProfileEntry(0.01), ("k", "cpu1", 0): ProfileEntry(0.01)})
    core = Core(devices(2), models, _StealsTheUrgent(), table)
    core.submit(request("lo", low, 0.0), 0.0)
    core.submit(request("hi", urgent, 0.001, priority=3, deadline_s=0.6), 0.001)
    plan = core.schedule(0.001)
    started = sorted((d.request_id, d.stage, d.device) for d in plan.dispatches)
    assert started == [("hi", "s0", "cpu1"), ("lo", "a", "cpu0")]
