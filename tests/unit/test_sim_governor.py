"""The plain throttling governor (scheduler/sim/governor.py), the baseline of the simulated and the live
power benchmarks: every device one level down over 95% of the budget, one up after calm periods."""

from __future__ import annotations

from heddle.scheduler.sim.governor import ThrottlingGovernor


def test_over_the_budget_every_device_goes_one_level_down_and_stops_at_its_last():
    """Smoothed power above 95% of the budget lowers each device a level, never past its ladder's end."""
    governor = ThrottlingGovernor(10.0, {"a": 3, "b": 2}, smoothing=1.0)
    levels = governor.decide(12.0, {"a": 0, "b": 0})
    assert levels == {"a": 1, "b": 1}
    assert governor.decide(12.0, levels) == {"a": 2, "b": 1}


def test_under_85_percent_for_the_relax_periods_every_device_goes_one_level_up():
    """Calm periods in a row (not fewer) raise each device a level; the band between holds."""
    governor = ThrottlingGovernor(10.0, {"a": 3}, smoothing=1.0, relax_periods=2)
    assert governor.decide(9.0, {"a": 2}) == {"a": 2}  # in the band: hold
    assert governor.decide(5.0, {"a": 2}) == {"a": 2}  # one calm period
    assert governor.decide(5.0, {"a": 2}) == {"a": 1}


def test_power_is_smoothed_so_one_spike_under_a_calm_average_does_not_throttle():
    """With smoothing 0.5, a single 11 W reading after 5 W periods averages 8 W: under 95% of 10 W."""
    governor = ThrottlingGovernor(10.0, {"a": 2}, smoothing=0.5)
    governor.decide(5.0, {"a": 0})
    assert governor.decide(11.0, {"a": 0}) == {"a": 0}
