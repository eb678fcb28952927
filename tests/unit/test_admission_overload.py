"""Overload admission, pure, on a fake clock: the in-flight bound shared out by priority class
(lower classes refused first, the top class last), its retry hint, latency refusals without a
power budget (the embedded default), and the [admission] settings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_fixtures import chain, model, validated

from heddle.scheduler import Core, DeviceSpec, Outcome, Request
from heddle.scheduler.admission import ACCEPT, REJECT, Admission
from heddle.scheduler.admission_settings import AdmissionSettings, class_limit
from heddle.scheduler.power import LevelPower, PowerController, PowerSettings
from heddle.scheduler.profiles import ConstantProfiles, ProfileTable

TOP = 4


def make_core(max_in_flight: int | None = 8, run_s: float = 0.1, slots: int = 1):
    """A one-device core wired as `heddle serve` wires it with no [power] table: a controller
    with no budget, latency checks and the in-flight bound on."""
    devices = [DeviceSpec("cpu0", "cpu", "onnxruntime", slots)]
    models = {"m": model("m")}
    power = PowerController(PowerSettings(), {"cpu0": LevelPower(1.0, (6.0,))}, top_priority=TOP)
    core = Core(devices, models, "priority", ConstantProfiles(run_s), power=power,
                admission=Admission(power, TOP, check_latency=True, max_in_flight=max_in_flight))
    return core, validated(chain("p", ["m"]), models)


def submit(core, pipe, rid, priority, now=0.0, deadline_s=None):
    request = Request(rid, pipe, priority, now, None if deadline_s is None else now + deadline_s)
    core.submit(request, now)
    return request


def probe(core, pipe, priority, now=0.0, deadline_s=None):
    """Admission's verdict for a request of `priority` now, without keeping it."""
    request = Request(f"probe{priority}", pipe, priority, now, None if deadline_s is None else now + deadline_s)
    decision = core.admission.decide(request, core, now)
    core.admission.forget(request.id)
    return decision


def test_class_limits_give_the_top_class_the_whole_bound():
    """Class p of 4 may fill p/4 of the bound (at least one request); the top class all of it."""
    assert [class_limit(256, p, TOP) for p in (1, 2, 3, 4, 9)] == [64, 128, 192, 256, 256]
    assert class_limit(2, 1, TOP) == 1


def test_lower_classes_are_refused_first_as_the_box_fills():
    """With a bound of 8, requests without deadlines fill the box: priority 1 is refused from 2 in
    flight, 2 from 4, 3 from 6, the top class only from 8; each refusal is queue_full, ends
    REJECTED and carries a positive retry hint."""
    core, pipe = make_core(max_in_flight=8)
    for i in range(2):
        submit(core, pipe, f"a{i}", 4)
    assert probe(core, pipe, 1).reason == "queue_full" and probe(core, pipe, 2).action == ACCEPT
    for i in range(2):
        submit(core, pipe, f"b{i}", 4)
    assert probe(core, pipe, 2).reason == "queue_full" and probe(core, pipe, 3).action == ACCEPT
    for i in range(2):
        submit(core, pipe, f"c{i}", 4)
    assert probe(core, pipe, 3).reason == "queue_full" and probe(core, pipe, 4).action == ACCEPT
    submit(core, pipe, "d0", 4)
    last = submit(core, pipe, "d1", 4)
    refused = submit(core, pipe, "d2", 4)
    plan = core.schedule(0.0)
    assert last.outcome is None and refused.outcome is Outcome.REJECTED
    (reject,) = plan.rejected
    assert (reject.request_id, reject.reason) == ("d2", "queue_full") and reject.retry_after_s > 0
    assert "max_in_flight 8" in refused.error


def test_queue_full_hint_is_the_predicted_drain_time():
    """The hint for a full class is its predicted latency behind the work queued ahead (one
    running, five queued at 0.1 s each, then its own run: 0.7 s)."""
    core, pipe = make_core(max_in_flight=8)
    for i in range(6):
        submit(core, pipe, f"w{i}", 4)
    core.schedule(0.0)
    decision = probe(core, pipe, 1)
    assert decision.action == REJECT and decision.reason == "queue_full"
    assert decision.retry_after_s == pytest.approx(0.7)


def test_an_ended_request_frees_its_place():
    """Room comes back when a request ends (done or cancelled), so nothing stays refused."""
    core, pipe = make_core(max_in_flight=4)
    first = submit(core, pipe, "x0", 1)
    assert submit(core, pipe, "x1", 1).outcome is Outcome.REJECTED
    core.cancel(first.id, 0.0)
    assert submit(core, pipe, "x2", 1).outcome is None
    core.schedule(0.0)
    core.on_stage_done("x2", "s0", 0.1)
    assert core.admission.in_flight == 0 and submit(core, pipe, "x3", 1).outcome is None


def test_no_bound_admits_everything_without_a_deadline():
    """max_in_flight=None ([admission] enabled = false, or 0): nothing is refused for room."""
    core, pipe = make_core(max_in_flight=None)
    assert all(submit(core, pipe, f"n{i}", 1).outcome is None for i in range(50))


def test_lower_class_refused_for_latency_without_a_power_budget():
    """On the embedded default (no [power] table, no budget) a low-priority request whose
    deadline the queue ahead makes unreachable is refused as overload, hint = the excess; the top
    class behind the same queue is admitted."""
    core, pipe = make_core(max_in_flight=None)
    for i in range(5):
        submit(core, pipe, f"busy{i}", 3)
    core.schedule(0.0)
    late = submit(core, pipe, "late", 2, deadline_s=0.3)
    top = submit(core, pipe, "top", 4, deadline_s=0.3)
    plan = core.schedule(0.0)
    assert late.outcome is Outcome.REJECTED and top.outcome is None
    (reject,) = plan.rejected
    assert reject.reason == "overload" and reject.retry_after_s == pytest.approx(0.6 - 0.3)


def test_no_healthy_device_is_unavailable_not_a_refusal():
    """A request with a deadline whose stage no healthy device can run is not refused (for power
    or load: no retry would help): the core ends it UNAVAILABLE."""
    core, pipe = make_core()
    core.set_device_health("cpu0", False, 0.0)
    request = submit(core, pipe, "orphan", 2, deadline_s=1.0)
    assert request.outcome is Outcome.UNAVAILABLE and not core.schedule(0.0).rejected


def test_one_slow_run_does_not_lock_a_pipeline_out():
    """After one stalled run (0.3 s where runs take 5 ms) the estimate says 0.3 s. A request with a
    0.1 s deadline is still admitted when nothing of its pipeline is in flight, even with other
    work keeping the device busy: it runs and the estimate comes down. A second one while the
    first is in flight is refused (best case 0.3 s); so is the next one once it is corrected less."""
    devices = [DeviceSpec("cpu0", "cpu", "onnxruntime", 1)]
    models = {"m": model("m"), "bg": model("bg")}
    core = Core(devices, models, "priority", ProfileTable())
    core.power = PowerController(PowerSettings(), {"cpu0": LevelPower(1.0, (6.0,))}, top_priority=TOP)
    core.admission = Admission(core.power, TOP, check_latency=True, max_in_flight=8)
    pipe, background = validated(chain("p", ["m"]), models), validated(chain("q", ["bg"]), models)
    submit(core, pipe, "stall", TOP, 0.0)
    core.schedule(0.0)
    core.on_stage_done("stall", "s0", 0.3)
    submit(core, background, "bg", 1, 1.0)
    core.schedule(1.0)  # the device is busy with lower-priority work
    probe = submit(core, pipe, "probe", TOP, 1.0, deadline_s=0.1)
    second = submit(core, pipe, "second", 2, 1.0, deadline_s=0.1)
    assert probe.outcome is None and second.outcome is Outcome.DEADLINE_EXCEEDED
    assert [r.reason for r in core.schedule(1.0).rejected] == ["deadline"]
    core.on_stage_done("bg", "s0", 1.01)
    (dispatch,) = core.schedule(1.01).dispatches
    core.on_stage_done(dispatch.request_id, dispatch.stage, 1.015)
    assert probe.outcome is Outcome.OK and core.estimate_s("m", "cpu0") < 0.3


def test_settings_from_table():
    """The [admission] table: defaults on with a bound of 256; unknown keys and bad values are refused."""
    assert AdmissionSettings.from_table({}) == AdmissionSettings(True, 256)
    assert AdmissionSettings.from_table({"enabled": False}).bound is None
    assert AdmissionSettings.from_table({"max_in_flight": 0}).bound is None
    assert AdmissionSettings.from_table({"max_in_flight": 16}).bound == 16
    for bad in ({"enabeld": True}, {"enabled": 1}, {"max_in_flight": -1}, {"max_in_flight": 2.5},
                {"max_in_flight": True}):
        with pytest.raises(ValueError, match=r"\[admission\]"):
            AdmissionSettings.from_table(bad)


# ---- the top class keeps headroom -----------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(1, TOP), st.booleans()),
    st.tuples(st.just("end"), st.integers(0, 10_000)),
    st.tuples(st.just("step"), st.floats(0.0, 0.5)),
), max_size=80)


@settings(max_examples=150, deadline=None)
@given(bound=st.integers(1, 24), slots=st.integers(1, 3), steps=ops)
def test_top_class_is_never_refused_while_a_lower_class_has_room(bound, slots, steps):
    """Whatever arrives and ends: requests in flight never exceed the bound; whenever some lower
    class would be admitted, the top class would be too (it is refused for room only once every
    class below it is); and a class is admitted whenever a lower one is."""
    core, pipe = make_core(max_in_flight=bound, slots=slots)
    now, live, n = 0.0, [], 0
    for op in steps:
        if op[0] == "submit":
            n += 1
            request = submit(core, pipe, f"r{n}", op[1], now, 1.0 if op[2] else None)
            if request.outcome is None:
                live.append(request)
        elif op[0] == "end" and live:
            core.cancel(live.pop(op[1] % len(live)).id, now)
        elif op[0] == "step":
            now += op[1]
            for d in core.schedule(now).dispatches:
                core.on_stage_done(d.request_id, d.stage, now)
        live = [r for r in live if r.outcome is None]
        assert core.admission.in_flight <= bound
        admitted = [probe(core, pipe, p, now).action == ACCEPT for p in range(1, TOP + 1)]
        assert admitted == sorted(admitted), admitted  # never a higher class refused below an admitted one
