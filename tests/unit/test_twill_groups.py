"""twill's grouped reading of a queue (scheduler/twill_groups.py) where its group order and its key
part: runs whose slack rounds to one value (the tails decide, against sub-deadline order),
hopeless runs, best-effort runs and other priorities. test_twill_forecast.py compares it with the
sort from scratch at every step of a simulated run; this builds the corner cases by hand."""

from __future__ import annotations

import bisect

from sched_fixtures import chain, devices, model, standard_models, validated

from heddle.scheduler import Core, Request
from heddle.scheduler.profiles import ProfileEntry, ProfileTable
from heddle.scheduler.state import RunState
from heddle.scheduler.twill import TwillPolicy
from heddle.scheduler.twill_groups import ExactSum, GroupedQueue


def _queue(policy: TwillPolicy | None = None) -> tuple[Core, TwillPolicy, dict[str, str]]:
    models = {**standard_models(), "other": model("other")}
    p, busy = validated(chain("c", ["m"]), models), validated(chain("b", ["other"]), models)
    # Typical 0.1 s (no run is hopeless by it), tail 4 s (the slack twill's key takes).
    table = {("m", "cpu0", 0): ProfileEntry(0.1, tail_s=4.0), ("other", "cpu0", 0): ProfileEntry(1.0)}
    policy = policy or TwillPolicy(freeze=False)
    core = Core(devices(1), models, policy, ProfileTable(table=table))
    core.submit(Request("busy", busy, 1, 0.0, None), 0.0)
    core.schedule(0.0)  # the one slot is taken: every run below waits in the queue
    late, soon = 1.0 + 2.0 ** -52, 1.0  # adjacent doubles: (x - 0.5) - 4.0 rounds to one value
    assert (late - 0.5) - 4.0 == (soon - 0.5) - 4.0
    names = {}
    for rid, priority, deadline in [("late", 3, late), ("soon", 3, soon), ("far", 3, 30.0), ("urgent", 9, 2.0),
                                    ("hopeless", 3, 0.55), ("hopeless9", 9, 0.52), ("background", 3, None),
                                    ("low", 1, 5.0), ("background9", 9, None)]:
        core.submit(Request(rid, p, priority, 0.0, deadline), 0.0)
        names[rid] = rid
    return core, policy, names


def _scratch(policy: TwillPolicy, core: Core, now: float) -> tuple[list, list, list]:
    ready = [q for q in core.queued("cpu0") if q.state is RunState.READY]
    entries = sorted((policy.key(q, now, core), core.estimate_s(q.model, "cpu0"), q) for q in ready)
    total, prefix = ExactSum(), [0.0]
    for _, work, _ in entries:
        total.add(work)
        prefix.append(total.value())
    return [k for k, _, _ in entries], prefix, [q for _, _, q in entries]


def test_grouped_order_and_waits_equal_the_sort_from_scratch_in_every_corner():
    core, policy, _ = _queue()
    now = 0.5
    keys, prefix, runs = _scratch(policy, core, now)
    grouped = GroupedQueue(core, "cpu0", now)
    assert [(run.request.id, work) for _, run, work in grouped.order()] == [
        (run.request.id, prefix[i]) for i, run in enumerate(runs)]
    # The tie: sub-deadline order puts "soon" first, the key (equal slack, then arrival) "late".
    order = [run.request.id for run in runs]
    assert order.index("late") < order.index("soon")
    assert order[-4:] == ["hopeless9", "background9", "hopeless", "background"]  # by priority, hopeless first
    for key in keys + [(0, -1e9, 0.0, 0, 0, 0), (1, -3, 0, 0.0, 0, 0, 0), (1, -1, 1, 9.0, 0, 0, 0)]:
        ahead = bisect.bisect_left(keys, key)
        assert grouped.before(key) == (ahead, prefix[ahead]), key


class _Holding(TwillPolicy):
    """twill's key and groups, holding what the test names (as the core freezes what hold() says)."""

    held: set = set()

    def hold(self, view, now):
        return set(self.held)


def test_a_frozen_run_leaves_the_grouped_order_and_comes_back():
    core, policy, _ = _queue(_Holding(freeze=False))
    run = next(q for q in core.queued("cpu0") if q.request.id == "urgent")
    policy.held = {run.key}
    core.schedule(0.5)  # the core's _apply_holds freezes it (the slot is still busy)
    assert run.state is RunState.FROZEN
    order = [r for _, r, _ in GroupedQueue(core, "cpu0", 0.5).order()]
    assert run not in order and order == _scratch(policy, core, 0.5)[2]
    policy.held = set()
    core.schedule(0.5)
    assert run.state is RunState.READY
    assert [r for _, r, _ in GroupedQueue(core, "cpu0", 0.5).order()] == _scratch(policy, core, 0.5)[2]


def test_exact_sums_do_not_depend_on_the_order_of_their_terms():
    values = [0.1, 0.2, 0.3, 1e-17, 1e16, -1e16, 0.7]
    forward, backward = ExactSum(), ExactSum()
    for v in values:
        forward.add(v)
    for v in reversed(values):
        backward.add(v)
    assert forward.value() == backward.value() == 1.3 + 1e-17
    many = ExactSum()
    many.add(0.1, 10)
    assert many.value() == 1.0
