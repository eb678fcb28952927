"""Admission control, pure, on a fake clock: accept, queue or reject by priority class, with a
reason and a retry hint; the top class only when its deadline is out of reach; nothing lost."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_fixtures import chain, model, validated
from strategies import Workload, workloads

from heddle.scheduler import Core, DeviceSpec, Outcome, Request
from heddle.scheduler.admission import ACCEPT, QUEUE, REJECT, Admission, predicted_latency_s
from heddle.scheduler.power import LevelPower, PowerController, PowerSettings
from heddle.scheduler.profiles import ConstantProfiles
from heddle.scheduler.sim.driver import Driver, TimedBy

TOP = 4
CPU = LevelPower(1.0, (6.0, 4.0, 2.5))


@dataclass(frozen=True)
class Reading:
    device: str
    power_w: float
    source: str = "estimated"


def make_core(n_devices: int = 1, run_s: float = 0.1, budget_w: float | None = 3.0, queue_bound: int = 64,
              check_latency: bool = True):
    devices = [DeviceSpec(f"cpu{i}", "cpu", "onnxruntime", 1) for i in range(n_devices)]
    models = {"m": model("m")}
    power = PowerController(PowerSettings(budget_w=budget_w), {d.id: CPU for d in devices}, top_priority=TOP)
    core = Core(devices, models, "priority", ConstantProfiles(run_s), power=power,
                admission=Admission(power, TOP, queue_bound, check_latency))
    return core, validated(chain("p2", ["m", "m"]), models)


def submit(core, pipe, rid, priority, now=0.0, deadline_s=None):
    request = Request(rid, pipe, priority, now, None if deadline_s is None else now + deadline_s)
    core.submit(request, now)
    return request


def test_accepts_what_fits_and_predicts_its_latency():
    """On an idle box a request with room to spare is accepted; its predicted latency is the
    critical path of its stages."""
    core, pipe = make_core()
    request = Request("a", pipe, 1, 0.0, 1.0)
    decision = core.admission.decide(request, core, 0.0)
    assert decision.action == ACCEPT and abs(decision.predicted_s - 0.2) < 1e-9


def test_low_class_refused_when_the_load_would_make_it_late():
    """A low-priority request whose deadline the queue ahead makes unreachable is rejected as
    overload, with a retry hint of how much it is short by; the request ends REJECTED."""
    core, pipe = make_core()
    for i in range(5):
        submit(core, pipe, f"busy{i}", 3)
    core.schedule(0.0)
    late = submit(core, pipe, "late", 1, deadline_s=0.5)
    plan = core.schedule(0.0)
    (reject,) = plan.rejected
    assert (reject.request_id, reject.reason) == ("late", "overload")
    assert late.outcome is Outcome.REJECTED and "predicted latency" in late.error
    predicted = predicted_latency_s(Request("x", pipe, 1, 0.0, None), core, 0.0)
    assert abs(reject.retry_after_s - (predicted - 0.5)) < 1e-9
    assert [f.request_id for f in plan.finished] == ["late"]


def test_top_class_rejected_only_when_no_idle_box_could_make_it():
    """The top class is admitted behind any load; only a deadline shorter than its best-case
    latency is refused, as DEADLINE_EXCEEDED with no retry hint."""
    core, pipe = make_core()
    for i in range(5):
        submit(core, pipe, f"busy{i}", 3)
    core.schedule(0.0)
    core.power.refuse = TOP - 1  # even with every lower class refused
    ok = submit(core, pipe, "ok", TOP, deadline_s=0.25)
    hopeless = submit(core, pipe, "hopeless", TOP, deadline_s=0.15)
    plan = core.schedule(0.0)
    assert ok.outcome is None
    assert hopeless.outcome is Outcome.DEADLINE_EXCEEDED
    assert [(r.request_id, r.reason, r.retry_after_s) for r in plan.rejected] == [("hopeless", "deadline", None)]


def test_refused_class_gets_the_controllers_retry_hint():
    """A class the controller refuses is rejected for power with the controller's hint."""
    core, pipe = make_core()
    core.power.refuse = 2
    refused = submit(core, pipe, "r", 2)
    admitted = submit(core, pipe, "a", 3)
    plan = core.schedule(0.0)
    assert refused.outcome is Outcome.REJECTED and admitted.outcome is None
    assert plan.rejected[0].retry_after_s == core.power.retry_after_s(2) > 0


def test_frozen_class_is_queued_up_to_the_bound():
    """While its class is frozen a request is admitted to wait (queued) until the bound; past
    it, requests are rejected as queue_full. A request that ends frees its place."""
    core, pipe = make_core(n_devices=2, queue_bound=2, budget_w=None)
    core.power.freeze["cpu0"] = 1
    first = submit(core, pipe, "q0", 1)
    decision = core.admission.decide(Request("probe", pipe, 1, 0.0, None), core, 0.0)
    core.admission.forget("probe")
    assert decision.action == QUEUE
    submit(core, pipe, "q1", 1)
    full = submit(core, pipe, "q2", 1)
    assert full.outcome is Outcome.REJECTED
    assert core.schedule(0.0).rejected[0].reason == "queue_full"
    core.cancel(first.id, 0.0)
    assert submit(core, pipe, "q3", 1).outcome is None


def test_frozen_class_refused_when_it_would_wake_an_idle_device_past_the_budget():
    """With its class frozen somewhere and the box near its budget, a request that would start
    an idle device (adding its busy power) is rejected for power; the added power is reported."""
    core, pipe = make_core(n_devices=2, budget_w=3.0)
    core.power.freeze["cpu0"] = 1
    core.on_power_sample([Reading("cpu0", 1.0), Reading("cpu1", 1.0)], 0.1, {"cpu0": 0.0, "cpu1": 0.0})
    request = Request("w", pipe, 1, 0.1, None)
    decision = core.admission.decide(request, core, 0.1)
    assert decision.action == REJECT and decision.reason == "power"
    assert decision.added_power_w == CPU.busy_w(0) - CPU.idle_w


def test_frozen_everywhere_with_a_deadline_is_refused_for_power():
    """A request whose class is frozen on every device it could use cannot start before its
    deadline is at risk: rejected for power, not queued."""
    core, pipe = make_core(budget_w=None)
    core.power.freeze["cpu0"] = 1
    request = submit(core, pipe, "d", 1, deadline_s=2.0)
    assert request.outcome is Outcome.REJECTED
    assert core.schedule(0.0).rejected[0].reason == "power"


def test_without_latency_checks_only_power_rules_apply():
    """check_latency=False (no [power] table, budget set at run time) admits late and hopeless
    requests as before; the core sheds them at their deadline."""
    core, pipe = make_core(check_latency=False)
    for i in range(5):
        submit(core, pipe, f"busy{i}", 3)
    late = submit(core, pipe, "late", 1, deadline_s=0.05)
    core.schedule(0.0)
    assert late.outcome is None


# ---- nothing is lost ----------------------------------------------------------------------

class _Sampled(TimedBy):
    """The workload's run times; a control period every 0.1 s up to 11.9 s, each feeding the
    controller one box reading from `watts` (cycled), split evenly over the devices."""

    def __init__(self, w: Workload, watts: list[float]) -> None:
        super().__init__(w.run_time_s)
        self.devices, self.watts, self.period = [d.id for d in w.devices], watts, 1

    def first_tick_s(self) -> float:
        return 0.1

    def tick(self, core, now: float) -> float | None:
        box_w = self.watts[self.period % len(self.watts)]
        core.on_power_sample([Reading(d, box_w / len(self.devices)) for d in self.devices], now)
        self.period += 1
        return 0.1 * self.period if self.period < 120 else None


def drive(w: Workload, budget_w: float, watts: list[float], queue_bound: int):
    """Run a random workload through a core with admission and a controller fed one reading
    per 0.1 s from `watts` (cycled); returns the finished outcomes and the rejections."""
    models = {d.id: CPU for d in w.devices}
    power = PowerController(PowerSettings(budget_w=budget_w, relax_periods=2), models, top_priority=TOP)
    core = Core(w.devices, w.models, "priority", w.profiles(), power=power,
                admission=Admission(power, TOP, queue_bound))
    requests, rejected = {}, {}

    def make_request(item, now: float) -> Request:
        rid, index, priority, deadline = item
        requests[rid] = Request(rid, w.pipelines[index], priority, now, deadline)
        return requests[rid]

    def after_step(now: float, plan) -> None:
        rejected.update((r.request_id, r) for r in plan.rejected)

    driver = Driver(core, _Sampled(w, watts), make_request=make_request, forget=False, after_step=after_step)
    for t, *item in w.arrivals:
        driver.arrive(t, item)
    driver.run()
    return core, requests, {rid: outcome for rid, (outcome, _) in driver.finished.items()}, rejected


@settings(max_examples=60, deadline=None)
@given(w=workloads(max_requests=12), budget_w=st.floats(1.0, 20.0),
       watts=st.lists(st.floats(0.0, 40.0), min_size=1, max_size=8), queue_bound=st.integers(0, 4))
@pytest.mark.slow
def test_every_request_ends_exactly_once(w, budget_w, watts, queue_bound):
    """Whatever the load, budget and readings: every request ends once; a rejection is always
    in the plan with a reason; the top class is never rejected but for an unreachable deadline
    (and then its best-case latency really exceeds it); frozen work is only ever below it."""
    core, requests, finished, rejected = drive(w, budget_w, watts, queue_bound)
    left = [rid for rid, r in requests.items() if r.outcome is None]
    for rid in left:  # held for power with no deadline: they wait for it; end them here
        assert core.cancel(rid, 99.0)
    for f in core.schedule(99.0).finished:
        assert f.request_id not in finished, f"{f.request_id} ended twice"
        finished[f.request_id] = f.outcome
    assert set(finished) == set(requests)
    for rid, reject in rejected.items():
        assert finished[rid] is (Outcome.DEADLINE_EXCEEDED if reject.reason == "deadline" else Outcome.REJECTED)
        if reject.reason != "deadline":
            assert requests[rid].priority < TOP and reject.retry_after_s is not None
    for rid, outcome in finished.items():
        assert outcome is not Outcome.REJECTED or rid in rejected


def test_predicted_wait_counts_batched_passes_not_one_row_runs():
    """Runs of a model that batches share passes: 8 queued rows of max_batch 8 cost one pass of 8
    rows (t1 x 4.5 on the default axis), not 8 one-row runs; and a running batch holds its device
    for its whole pass, not a one-row run's time."""
    import dataclasses

    from heddle.scheduler.profiles import batch_scale

    run_s = 0.1
    models = {"m": model("m"), "mb": dataclasses.replace(model("mb"), options={"max_batch": 8})}
    one, batched = validated(chain("p1", ["m"]), models), validated(chain("pb", ["mb"]), models)
    core = Core([DeviceSpec("cpu0", "cpu", "onnxruntime", 1)], models, "priority", ConstantProfiles(run_s))
    submit(core, one, "busy", 3)
    core.schedule(0.0)  # "busy" holds the one slot
    for i in range(8):
        submit(core, batched, f"b{i}", 3)
    core.schedule(0.0)  # they queue behind it
    new = Request("x", batched, 1, 0.0, None)
    pass_s = run_s * batch_scale(8)
    assert predicted_latency_s(new, core, 0.0) == pytest.approx(run_s + pass_s + run_s)

    core = Core([DeviceSpec("cpu0", "cpu", "onnxruntime", 1)], models, "priority", ConstantProfiles(run_s))
    for i in range(8):
        submit(core, batched, f"b{i}", 3)
    (dispatch,) = core.schedule(0.0).dispatches
    assert len(dispatch.batch) == 8
    assert predicted_latency_s(new, core, 0.0) == pytest.approx(pass_s + run_s)
