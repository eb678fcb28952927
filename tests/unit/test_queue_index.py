"""The queue index (scheduler/queues.py): a pick through it is the pick of the full ranking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_fixtures import chain, devices, model, standard_models, validated
from strategies import Workload, workloads

from heddle.scheduler import Core, Request
from heddle.scheduler.policies import (
    DreamPolicy,
    EdfPolicy,
    FcfsPolicy,
    LeastSlackPolicy,
    PriorityPolicy,
    SjfPolicy,
    fixed_group_order,
)
from heddle.scheduler.profiles import ProfileEntry, ProfileTable
from heddle.scheduler.sim.driver import Driver, TimedBy
from heddle.scheduler.twill import TwillPolicy

INDEXED = [FcfsPolicy, PriorityPolicy, EdfPolicy, LeastSlackPolicy, SjfPolicy]


def _unindexed(cls: type) -> type:
    """The same policy with `key` overridden (to itself): the core then ranks every queued run."""
    def key(self, run, now, view):
        return cls.key(self, run, now, view)

    return type(f"Unindexed{cls.__name__}", (cls,), {"key": key})


def _log(w: Workload, policy, switch_to=None):
    """The dispatch log of the workload under `policy`; with switch_to, the policy changes to that
    one at the middle arrival (queued runs then follow the new policy's order)."""
    core = Core(w.devices, w.models, policy, w.profiles())
    middle = w.arrivals[len(w.arrivals) // 2][0]
    switched = []

    def before_step(now: float) -> None:
        if switch_to is not None and not switched and now >= middle:
            switched.append(now)
            core.set_policy(switch_to)

    def make_request(item, now: float) -> Request:
        rid, index, priority, deadline = item
        return Request(rid, w.pipelines[index], priority, now, deadline)

    driver = Driver(core, TimedBy(w.run_time_s), make_request=make_request, log_runs=True, before_step=before_step)
    for t, *item in w.arrivals:
        driver.arrive(t, item)
    driver.run()
    return driver.runs, {rid: outcome for rid, (outcome, _) in driver.finished.items()}


@pytest.mark.parametrize("cls", INDEXED)
@settings(max_examples=25, deadline=None)
@given(w=workloads(max_requests=14), bound=st.sampled_from([None, 0.0, 0.5, 1.5]))
def test_indexed_pick_is_the_full_rankings_pick(cls, w, bound):
    """Every policy with a fixed group order dispatches exactly what ranking every run would,
    with and without an aging bound."""
    assert fixed_group_order(cls(bound)) is not None
    assert fixed_group_order(_unindexed(cls)(bound)) is None
    assert _log(w, cls(bound)) == _log(w, _unindexed(cls)(bound))


@pytest.mark.parametrize("first, then", [(TwillPolicy, EdfPolicy), (EdfPolicy, LeastSlackPolicy),
                                         (PriorityPolicy, DreamPolicy), (FcfsPolicy, PriorityPolicy)])
@settings(max_examples=10, deadline=None)
@given(w=workloads(max_requests=14))
def test_a_policy_switch_reorders_the_queued_runs(first, then, w):
    """set_policy mid-run: the runs already queued are picked in the new policy's order."""
    unindexed = _unindexed(then) if fixed_group_order(then()) is not None else then
    assert _log(w, first(), switch_to=then()) == _log(w, first(), switch_to=unindexed())


def test_policies_that_move_with_now_or_steal_have_no_fixed_order():
    """dream's and twill's keys move with the clock; a subclass with its own key, stealing or
    holding falls back to the full ranking too."""
    assert fixed_group_order(DreamPolicy()) is None
    assert fixed_group_order(TwillPolicy()) is None
    stealing = type("Stealing", (EdfPolicy,), {"steal_when_busy": True})
    assert fixed_group_order(stealing()) is None
    holding = type("Holding", (FcfsPolicy,), {"hold": lambda self, view, now: set()})
    assert fixed_group_order(holding()) is None
    assert fixed_group_order(LeastSlackPolicy())[1] is True  # keys from `now` may tie: ranked on


def test_least_slack_keys_that_round_equal_fall_to_the_earlier_arrival():
    """Two queued runs whose sub-deadlines differ by one rounding step but whose slack rounds to
    one value: the full ranking takes the earlier arrival (its tail), and so does the index,
    though its order puts the other (smaller sub-deadline) first."""
    models = {**standard_models(), "other": model("other")}
    p, busy = validated(chain("c", ["m"]), models), validated(chain("b", ["other"]), models)
    core = Core(devices(1), models, LeastSlackPolicy(), ProfileTable(table={("m", "cpu0", 0): ProfileEntry(4.0)}))
    core.submit(Request("busy", busy, 1, 0.0, None), 0.0)  # another model: m's estimate stays 4 s
    core.schedule(0.0)
    late, soon = 1.0 + 2.0 ** -52, 1.0  # adjacent doubles: the later arrival's is the smaller
    core.submit(Request("first", p, 1, 0.0, late), 0.0)
    core.submit(Request("second", p, 1, 0.0, soon), 0.0)
    assert (late - 0.5) - 4.0 == (soon - 0.5) - 4.0  # the slack at 0.5 rounds to one value
    core.on_stage_done("busy", "s0", 0.5)
    assert [d.request_id for d in core.schedule(0.5).dispatches] == ["first"]
