"""The power-budget controller, pure, on a fake clock: the ladder, hysteresis, budgets, undo
(test_power_plant.py and test_power_box.py run it against simulated machines)."""

from __future__ import annotations

import itertools

import pytest
from power_fixtures import TOP, Reading, busy_everywhere, feed, make_core, readings, submit

from heddle.scheduler import Core, Outcome, RunState
from heddle.scheduler.plan import SetLevel
from heddle.scheduler.power import PowerSettings, box_power_w
from heddle.scheduler.profiles import ConstantProfiles

# ---- the ladder ---------------------------------------------------------------------------

def test_box_power_prefers_the_board_reading():
    """A board reading replaces the sum of domains (it already includes them)."""
    assert box_power_w([Reading("cpu0", 2.0), Reading("cpu1", 3.0)]) == 5.0
    assert box_power_w([Reading("cpu0", 2.0), Reading("board", 9.0)]) == 9.0


def test_first_lowers_the_level_of_the_device_without_top_class_work():
    """Over budget, the first step slows the device running low-priority work, not the one
    serving the top class."""
    core, pipe = make_core()
    submit(core, pipe, "high", TOP)
    submit(core, pipe, "low", 1)
    plan = core.schedule(0.0)
    on = {d.request_id: d.device for d in plan.dispatches}
    plan = feed(core, 6.0, 0.1)
    assert plan.levels == (SetLevel(on["low"], 1, plan.levels[0].reason),)
    assert core.level(on["low"]) == 1 and core.level(on["high"]) == 0
    assert "box" in plan.levels[0].reason


def test_levels_that_cost_no_speed_go_first_and_come_back_last():
    """Without a clock table (virtual DVFS: the model's power changes, the speed does not),
    slowing a device serving the top class costs nothing, so it is done before any freeze, and
    its level is not raised back before frozen work is released."""
    core, pipe = make_core(n_devices=1, budget_w=3.0, clocks=False, relax_periods=1, peak_window_s=0.0)
    submit(core, pipe, "high", TOP)
    core.schedule(0.0)
    submit(core, pipe, "low", 1)
    now, steps = 0.0, []
    for _ in range(3):
        now += 0.1
        plan = feed(core, 6.0, now)
        steps += [("level", a.level) for a in plan.levels] + [(a.kind, a.priority) for a in plan.power]
    assert steps == [("level", 1), ("level", 2), ("freeze", 1)]
    core.power.set_budget(100.0)  # "high" still runs: its device serves the top class throughout
    for _ in range(3):
        now += 0.1
        core.on_power_sample([Reading("cpu0", 1.0)], now, {"cpu0": 1.0})
        plan = core.schedule(now)
        steps += [("level", a.level) for a in plan.levels] + [(a.kind, a.priority) for a in plan.power]
    assert steps[3:] == [("unfreeze", 1), ("level", 1), ("level", 0)]


def test_hysteresis_band_holds_still():
    """Between low and high x budget the controller takes no step either way."""
    core, pipe = make_core(budget_w=10.0)
    submit(core, pipe, "low", 1)
    core.schedule(0.0)
    for k in range(20):
        plan = feed(core, 4.5, 0.1 * (k + 1))  # 9 W: 0.9 x budget, inside [0.85, 0.95]
        assert not plan.levels and not plan.power
    assert core.power.state == "ok"


def test_freezes_lowest_class_then_refuses_it_when_dvfs_is_spent():
    """With every level at its lowest, low-priority work is frozen in its queue (top-class work
    still runs), and once none runs unfrozen new requests of its class are refused."""
    core, pipe = make_core(n_devices=1, budget_w=3.0)
    submit(core, pipe, "low0", 1)
    core.schedule(0.0)
    for i in range(1, 4):
        submit(core, pipe, f"low{i}", 1)
    kinds = []
    now = 0.0
    for _ in range(4):
        now += 0.1
        plan = feed(core, 6.0, now)
        kinds += [("level", a.level) for a in plan.levels] + [(a.kind, a.priority) for a in plan.power]
    assert kinds == [("level", 1), ("level", 2), ("freeze", 1), ("refuse", 1)]
    assert all(r.state is RunState.FROZEN for r in core.queued("cpu0"))
    high = submit(core, pipe, "high", TOP, now)
    refused = submit(core, pipe, "low-new", 1, now)
    plan = core.schedule(now)
    assert refused.outcome is Outcome.REJECTED and high.outcome is None
    (reject,) = plan.rejected
    assert reject.reason == "power" and reject.retry_after_s > 0
    core.on_stage_done("low0", "s0", now)
    plan = core.schedule(now)
    assert [d.request_id for d in plan.dispatches] == ["high"]  # frozen low work stays put


def test_top_class_is_never_frozen_or_refused():
    """However far over budget, requests of the top class are admitted and dispatched."""
    core, pipe = make_core(n_devices=1, budget_w=3.0)
    now = 0.0
    for _ in range(30):
        now += 0.1
        feed(core, 50.0, now)
    assert core.power.refuse == TOP - 1 and core.power.freeze["cpu0"] == 0  # nothing of class <= 3 ran
    request = submit(core, pipe, "high", TOP, now)
    plan = core.schedule(now)
    assert request.outcome is None and [d.request_id for d in plan.dispatches] == ["high"]


def test_relaxes_in_reverse_order_only_after_the_dwell():
    """Calm periods undo one step each dwell: readmit, then unfreeze, then raise levels."""
    core, pipe = make_core(n_devices=1, budget_w=3.0, relax_periods=3)
    submit(core, pipe, "low0", 1)
    core.schedule(0.0)
    submit(core, pipe, "low1", 1)
    now = 0.0
    for _ in range(4):
        now += 0.1
        feed(core, 6.0, now)
    assert (core.power.levels["cpu0"], core.power.freeze["cpu0"], core.power.refuse) == (2, 1, 1)
    core.power.set_budget(10.0)  # room for every undo step
    core.on_stage_done("low0", "s0", now)
    core.schedule(now)
    undone, periods = [], 0
    while core.power.state != "ok" and periods < 100:
        now += 0.1
        periods += 1
        core.on_power_sample([Reading("cpu0", 1.0)], now, {"cpu0": 0.0})
        plan = core.schedule(now)
        undone += [(a.kind, a.priority, periods) for a in plan.power]
        undone += [("level", a.level, periods) for a in plan.levels]
    assert [u[:2] for u in undone] == [("readmit", 1), ("unfreeze", 1), ("level", 1), ("level", 0)]
    assert all(b[2] - a[2] >= 3 for a, b in itertools.pairwise([("", 0, 0), *undone]))  # one step per dwell


def test_no_relax_step_that_would_overshoot():
    """An undo predicted to push power past the middle of the band is not taken."""
    core, pipe = make_core(n_devices=1, budget_w=3.0, relax_periods=1)
    submit(core, pipe, "low0", 1)
    core.schedule(0.0)
    now = 0.0
    for _ in range(3):
        now += 0.1
        feed(core, 6.0, now)
    assert core.power.levels["cpu0"] == 2
    for _ in range(10):  # 2.5 W < 0.85 x 3 W, but level 1 (4 W busy) would be far over
        now += 0.1
        core.on_power_sample([Reading("cpu0", 2.5)], now, {"cpu0": 1.0})
        assert not core.schedule(now).levels
    assert core.power.levels["cpu0"] == 2


def test_device_budget_acts_on_that_device_only():
    """A device over its own budget is slowed even when the box is within budget."""
    core, pipe = make_core(budget_w=None, device_budget_w={"cpu1": 3.0})
    plan_levels = []
    for k in range(3):
        core.on_power_sample([Reading("cpu0", 6.0), Reading("cpu1", 6.0)], 0.1 * (k + 1), busy_everywhere(core))
        plan_levels += core.schedule(0.1 * (k + 1)).levels
    assert [(a.device, a.level) for a in plan_levels] == [("cpu1", 1), ("cpu1", 2)]
    assert core.level("cpu0") == 0


def test_budgets_change_at_run_time_and_are_validated():
    """set_budget takes new watts; unknown devices and non-positive watts are refused."""
    core, _ = make_core()
    core.set_power_budget(5.0, {"cpu0": 2.0})
    assert core.power.budget_w == 5.0 and core.power.device_budget_w == {"cpu0": 2.0}
    with pytest.raises(ValueError, match="unknown device"):
        core.set_power_budget(5.0, {"gpu9": 1.0})
    with pytest.raises(ValueError, match="positive"):
        core.set_power_budget(-1.0)
    with pytest.raises(ValueError, match="low < high"):
        PowerSettings(low=0.9, high=0.8)


def test_lost_knob_pins_the_level():
    """A device whose actuator refused a level (a core event) keeps its level and is never lowered again."""
    core, pipe = make_core(n_devices=1, budget_w=3.0)
    core.on_level_refused("cpu0", 0, level_count=1)
    submit(core, pipe, "low0", 1)
    core.schedule(0.0)
    submit(core, pipe, "low1", 1)
    plan = feed(core, 6.0, 0.1)
    assert not plan.levels and [a.kind for a in plan.power] == ["freeze"]


def test_refused_level_is_the_truth_for_controller_and_core():
    """After a refusal the controller and the core's estimates both hold the actuator's level."""
    core, _ = make_core(n_devices=2)
    core.on_level_refused("cpu0", 2, level_count=3)
    assert (core.power.levels["cpu0"], core.power.level_counts["cpu0"], core.level("cpu0")) == (2, 3, 2)


def test_a_shared_knob_moves_its_other_devices():
    """A device on the same DVFS knob as one the plan moved runs at that level, in controller and core."""
    core, _ = make_core(n_devices=2)
    counts = dict(core.power.level_counts)
    core.on_level_shared("cpu1", 1)
    assert (core.power.levels["cpu1"], core.level("cpu1"), core.power.level_counts) == (1, 1, counts)


def test_power_attached_after_construction():
    """attach_power gives a core built without power its controller and admission."""
    plain, _ = make_core(n_devices=1)
    core = Core(list(plain.devices.values()), plain.models, "priority", ConstantProfiles(0.05))
    assert core.power is None and core.admission is None
    core.attach_power(plain.power, plain.admission)
    assert (core.power, core.admission) == (plain.power, plain.admission)


def test_work_frozen_on_one_device_runs_on_another_where_its_class_is_released():
    """The low class is frozen on cpu0 but not on cpu1: a low run queued (frozen) on cpu0 is
    taken by cpu1 when cpu1 frees, instead of waiting for cpu0's release however long cpu1
    stands idle."""
    core, pipe = make_core(n_devices=2, budget_w=100.0)
    core.power.freeze["cpu0"] = 1
    submit(core, pipe, "top0", TOP)
    submit(core, pipe, "top1", TOP)
    assert [(d.request_id, d.device) for d in core.schedule(0.0).dispatches] == [("top0", "cpu0"), ("top1", "cpu1")]
    low = submit(core, pipe, "low", 1)
    core.schedule(0.0)
    assert (low.runs["s0"].device, low.runs["s0"].state) == ("cpu0", RunState.FROZEN)
    core.on_stage_done("top1", "s0", 0.01)
    plan = core.schedule(0.01)
    assert [(d.request_id, d.device) for d in plan.dispatches] == [("low", "cpu1")]
    assert [(m.from_device, m.to_device) for m in plan.migrated] == [("cpu0", "cpu1")]
    assert core.footprint()["frozen"] == 0  # the core's count of frozen runs follows it out


def test_a_share_of_each_period_is_granted_spent_and_halved_when_over():
    """Calm at 8 W of a 10 W budget with the low class frozen: released whole it adds 5 W busy at
    level 0 and 1.5 W at its lowest level, over the 1 W of room under the band's middle. The
    controller grants it a share of each period instead (a DUTY action, 1 W / 5 W); the core
    starts frozen runs only while they fit in what is left of the period's share; over the
    budget again, the share is halved first."""
    core, pipeline = make_core(n_devices=1, budget_w=10.0, run_s=0.015)
    power = core.power
    for i in range(20):
        submit(core, pipeline, f"low{i}", 1)
    power.freeze["cpu0"] = 1  # frozen before any started
    assert not core.schedule(0.0).dispatches
    now, plan = 0.0, core.schedule(0.0)
    while not plan.power and now < 1.0:  # calm for the dwell (5 periods)
        now += 0.1
        core.on_power_sample(readings(core, {"cpu0": 8.0}), now, {"cpu0": 0.0})
        plan = core.schedule(now)
    assert [(a.kind, a.share) for a in plan.power] == [("duty", pytest.approx(0.2))] and power.freeze["cpu0"] == 1
    assert [d.request_id for d in plan.dispatches] == ["low0"]  # 15 ms of the period's 20
    core.on_stage_done("low0", "s0", now + 0.015)
    assert not core.schedule(now + 0.015).dispatches  # 5 ms left: the next run does not fit
    core.on_power_sample(readings(core, {"cpu0": 8.0}), now + 0.1, {"cpu0": 0.15})
    assert [d.request_id for d in core.schedule(now + 0.1).dispatches] == ["low1"]  # a new period
    shares = []
    for k in range(3):  # over: the share is halved first, one rung a period, then withdrawn
        core.on_power_sample(readings(core, {"cpu0": 12.0}), now + 0.2 + 0.1 * k, {"cpu0": 0.15})
        shares.append(power.duty["cpu0"])
    assert shares == [pytest.approx(0.1), pytest.approx(0.05), 0.0] and power.freeze["cpu0"] == 1
