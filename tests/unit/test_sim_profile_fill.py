"""Filling an under-load profile's blind pairs from an isolated one (scheduler/sim/profile_fill.py),
and a replay that can then use the device the load never put the model on."""

from __future__ import annotations

import json

import pytest
from test_replay import URGENT, _profile

from heddle.scheduler.sim.profile_fill import fill_missing, load_factors
from heddle.scheduler.sim.replay import replay
from heddle.scheduler.sim.tracefile import parse_profile, parse_trace

TWO = [{"id": d, "kind": "cpu", "backend": "onnxruntime", "slots": 1} for d in ("d0", "d1")]


def test_missing_pairs_come_from_the_isolated_profile_slowed_by_the_device_load_factor():
    """d0 ran `a` 2x slower under load than alone (10 -> 20 ms, and `b` 1 -> 2 ms): the missing (c, d0)
    is 3 ms alone, so 6 ms, samples alike; a device with nothing in common keeps factor 1."""
    under = parse_profile(_profile({("a", "d0"): 0.020, ("b", "d0"): 0.002}, TWO))
    alone = parse_profile(_profile({("a", "d0"): 0.010, ("b", "d0"): 0.001, ("c", "d0"): 0.003,
                                    ("c", "d1"): 0.004}, TWO))
    assert load_factors(under, alone) == {"d0": pytest.approx(2.0), "d1": 1.0}
    filled = fill_missing(under, alone)
    assert filled.entries[("c", "d0", 0)].latency_s == pytest.approx(0.006)
    assert filled.samples[("c", "d0", 0)] == pytest.approx((0.006,) * 4)
    assert filled.entries[("c", "d1", 0)].latency_s == pytest.approx(0.004)
    assert filled.entries[("a", "d0", 0)] == under.entries[("a", "d0", 0)]  # measured pairs untouched


def test_a_replay_with_the_filled_profile_uses_the_device_the_load_never_used():
    """Under load only d0 ran `m`; alone it also ran on d1: filled, the replay sends work to d1 too and
    the urgent request is served in time."""
    trace = parse_trace(URGENT.replace('"devices": [{"id": "d0", "kind": "cpu", "backend": "onnxruntime", '
                                       '"slots": 1}]', '"devices": ' + str(TWO).replace("'", '"')))
    under = parse_profile(_profile({("m", "d0"): 0.010}, TWO))
    blind = replay(trace, under, "fcfs")
    assert blind.placements == {"m": {"d0": 3}}
    filled = replay(trace, fill_missing(under, parse_profile(_profile({("m", "d0"): 0.010, ("m", "d1"): 0.010},
                                                                      TWO))), "fcfs")
    assert filled.placements["m"].get("d1", 0) >= 1 and filled.violation_rate < blind.violation_rate


def test_a_short_run_on_a_saturated_capped_device_waits_for_the_next_period():
    """d0 at 25% of a 10 ms period, its measured runs filling the whole 40 ms window (utilisation 1): a
    missing 1 ms run (within the 2.5 ms quota) gets the 7.5 ms wait; a 10 ms one (throttled alone too)
    a quarter of it."""
    doc = {**_profile({("a", "d0"): 0.010}), "method": "under_load", "duration_s": 0.040}
    under = parse_profile(doc)
    alone = parse_profile(_profile({("a", "d0"): 0.010, ("c", "d0"): 0.001, ("e", "d0"): 0.010}))
    filled = fill_missing(under, alone, {"d0": (0.25, 0.010)})
    assert filled.entries[("c", "d0", 0)].latency_s == pytest.approx(0.0085)
    assert filled.entries[("e", "d0", 0)].latency_s == pytest.approx(0.011875)
    assert fill_missing(under, alone).entries[("c", "d0", 0)].latency_s == pytest.approx(0.001)  # uncapped


def test_the_trace_header_says_which_devices_are_under_a_bandwidth_cap():
    """A device with dvfs kind cgroup: its level-0 share and period; the others are not listed."""
    devices = [{"id": "d0", "kind": "dla", "backend": "onnxruntime", "slots": 1,
                "options": {"dvfs": {"kind": "cgroup", "values": [58, 29], "period_us": 20000}}},
               {"id": "d1", "kind": "cpu", "backend": "onnxruntime", "slots": 1, "options": {"dvfs": {"kind": "auto"}}}]
    trace = parse_trace(URGENT.replace('"devices": [{"id": "d0", "kind": "cpu", "backend": "onnxruntime", '
                                       '"slots": 1}]', '"devices": ' + json.dumps(devices)))
    assert trace.bandwidth == {"d0": (0.58, 0.02)}


def test_a_filled_pair_gets_the_wider_spread_the_load_gave_the_device():
    """Under load d0's model `a` had a 20 ms mean and a 40 ms tail (spread 20 ms) against 10 / 11 ms alone
    (spread 1 ms): the missing `c` (mean 2 ms, a 3 ms run) is slowed 2x and its 1 ms distance from the mean
    widens 20x: 4 + 20 = 24 ms; a run below the mean is never faster than alone."""
    under = parse_profile({**_profile({("a", "d0"): 0.020}), "entries": [
        {"model": "a", "device": "d0", "level": 0, "latency_s": 0.020, "tail_s": 0.040, "samples_s": [0.02] * 4}]})
    alone = parse_profile({**_profile({("a", "d0"): 0.010}), "entries": [
        {"model": "a", "device": "d0", "level": 0, "latency_s": 0.010, "tail_s": 0.011, "samples_s": [0.01] * 4},
        {"model": "c", "device": "d0", "level": 0, "latency_s": 0.002, "tail_s": 0.003,
         "samples_s": [0.001, 0.002, 0.003]}]})
    filled = fill_missing(under, alone)
    assert filled.entries[("c", "d0", 0)].latency_s == pytest.approx(0.004)
    assert filled.entries[("c", "d0", 0)].tail_s == pytest.approx(0.024)
    assert filled.samples[("c", "d0", 0)] == pytest.approx((0.001, 0.004, 0.024))
