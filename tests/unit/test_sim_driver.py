"""The virtual-time driver: event order, run-time models, ticks, failures and follow-up arrivals."""

from __future__ import annotations

import pytest
from sched_fixtures import chain, devices, standard_models, validated

from heddle.scheduler import Core, DeviceSpec, Outcome, Request
from heddle.scheduler.profiles import ProfileEntry
from heddle.scheduler.sim.driver import Driver, TimedBy
from heddle.scheduler.sim.run_times import NoisyTable, noise

PIPE = validated(chain("c", ["m"]))
SPEED = {"speed": {"level_clock": (1.0, 0.5)}}


def request(rid: str, t: float, priority: int = 1, deadline_s: float | None = None) -> Request:
    return Request(rid, PIPE, priority, t, deadline_s)


def test_events_at_one_time_go_in_the_order_they_were_pushed():
    """Three arrivals at t=0 on one device under fcfs: they run in the order they were pushed,
    each 1 s, and end at 1, 2 and 3 s; the log has every run's start and end."""
    driver = Driver(Core(devices(1), standard_models(), "fcfs"), TimedBy(lambda m, d: 1.0), log_runs=True)
    for rid in ("b", "a", "c"):
        driver.arrive(0.0, request(rid, 0.0))
    driver.run()
    assert [(s, e, d.request_id) for s, e, d in driver.runs] == [(0.0, 1.0, "b"), (1.0, 2.0, "a"), (2.0, 3.0, "c")]
    assert driver.finished == {"b": (Outcome.OK, 1.0), "a": (Outcome.OK, 2.0), "c": (Outcome.OK, 3.0)}
    assert driver.placements == {"m": {"cpu0": 3}}


def test_make_request_builds_each_request_at_its_arrival_time():
    """Items other than Requests become one at the time they arrive (a relative deadline
    becomes absolute then); a request whose deadline passes while it waits is shed."""
    def make(item, now):
        rid, deadline_s = item
        return request(rid, now, deadline_s=now + deadline_s)

    driver = Driver(Core(devices(1), standard_models(), "fcfs"), TimedBy(lambda m, d: 1.0), make_request=make)
    driver.arrive(0.0, ("first", 5.0))
    driver.arrive(0.5, ("late", 0.25))
    driver.run()
    assert driver.finished["first"] == (Outcome.OK, 1.0)
    assert driver.finished["late"][0] is Outcome.DEADLINE_EXCEEDED


class _FailFirst(TimedBy):
    def finish(self, run, now):
        return "boom" if run.request_id == "r0" else ""


def test_a_run_the_model_fails_ends_its_request_failed():
    """finish() returning an error is the stage's error: that request FAILED, the other OK."""
    driver = Driver(Core(devices(1), standard_models(), "fcfs"), _FailFirst(lambda m, d: 1.0))
    driver.arrive(0.0, request("r0", 0.0))
    driver.arrive(0.0, request("r1", 0.0))
    driver.run()
    assert driver.finished == {"r0": (Outcome.FAILED, 1.0), "r1": (Outcome.OK, 2.0)}


class _SlowDownAtTwo(NoisyTable):
    """Ticks every second until 4 s; at the tick of 2 s it moves cpu0 to level 1 (half clock)."""

    def first_tick_s(self):
        return 1.0

    def tick(self, core, now):
        self.ticks.append(now)
        if now == 2.0:
            core.set_device_level("cpu0", 1)
        return now + 1.0 if now < 4.0 else None


def test_ticks_act_before_the_step_and_runs_take_the_table_time_at_the_level():
    """A tick at the same time as an arrival pushed before run() comes after it (the 2 s arrival
    runs at level 0: 1 s); a run dispatched after the 2 s tick takes the level-1 figure (2 s);
    ticks stop when the model says; energy adds up power x time of each run."""
    table = {("m", "cpu0", 0): ProfileEntry(1.0, power_w=2.0), ("m", "cpu0", 1): ProfileEntry(2.0, power_w=1.0)}
    model = _SlowDownAtTwo(table, {"m": 0.0}, seed=1)
    model.ticks = []
    cpu = [DeviceSpec("cpu0", "cpu", "onnxruntime", 1, SPEED)]
    driver = Driver(Core(cpu, standard_models(), "fcfs"), model, log_runs=True)
    driver.arrive(0.0, request("before", 0.0))
    driver.arrive(2.0, request("tie", 2.0))
    driver.arrive(2.5, request("later", 2.5))
    driver.run()
    assert [(s, e, d.request_id) for s, e, d in driver.runs] == [
        (0.0, 1.0, "before"), (2.0, 3.0, "tie"), (3.0, 5.0, "later")]
    assert model.ticks == [1.0, 2.0, 3.0, 4.0]
    assert model.energy_j == pytest.approx(2.0 * 1.0 + 2.0 * 1.0 + 1.0 * 2.0)


def test_on_finished_can_push_the_next_arrival():
    """A closed-loop client: each request's end sends the next one 0.5 s later, three in all."""
    driver = Driver(Core(devices(1), standard_models(), "fcfs"), TimedBy(lambda m, d: 1.0))

    def follow(finished, now):
        k = int(finished.request_id[1:])
        if k < 2:
            driver.arrive(now + 0.5, request(f"r{k + 1}", now + 0.5))

    driver.on_finished = follow
    driver.arrive(0.0, request("r0", 0.0))
    driver.run()
    assert driver.finished == {"r0": (Outcome.OK, 1.0), "r1": (Outcome.OK, 2.5), "r2": (Outcome.OK, 4.0)}


def test_the_same_inputs_give_the_same_run():
    """Two drivers over equal inputs and a noisy table give equal logs (a pure function of the seed)."""
    table = {("m", f"cpu{i}", 0): ProfileEntry(0.1) for i in range(2)}

    def once():
        d = Driver(Core(devices(2), standard_models(), "twill"), NoisyTable(table, {"m": 0.3}, seed=5), log_runs=True)
        for i in range(20):
            d.arrive(0.03 * i, request(f"r{i}", 0.03 * i, priority=1 + i % 3, deadline_s=0.03 * i + 0.3))
        return d.run().runs, d.finished

    assert once() == once()
    assert noise(5, "r1", "s0", 0.3) != noise(6, "r1", "s0", 0.3) and noise(5, "r1", "s0", 0.0) == 1.0


def test_a_model_without_ticks_gets_none():
    """The protocol's defaults: no first tick, runs succeed."""
    model = TimedBy(lambda m, d: 1.0)
    assert model.first_tick_s() is None and model.finish(None, 0.0) == ""
