"""bench/sched_cost.py's timed core still drives the simulator's core: its wrapper must take
whatever the driver passes (the fan-out keywords once broke it with a TypeError, unseen until the
benchmark was next run). A few decisions per policy, no timing asserted."""

from __future__ import annotations

import pytest

from bench.sched_cost import depth_run


@pytest.mark.parametrize("policy", ["fcfs", "edf", "twill"])
def test_the_timed_core_makes_its_decisions(policy):
    row = depth_run(policy, depth=10, warmup=10, decisions=20, seed=1)
    assert row["policy"] == policy and row["decisions"] >= 20
    assert row["core_calls"] > 0 and row["core_s"] > 0
