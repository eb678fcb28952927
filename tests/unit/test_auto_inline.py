"""AutoInline's decision from measured compute times alone (no server, no clock)."""

from __future__ import annotations

from heddle.server.runtime.auto_inline import BUDGET_S, WARM_RUNS, AutoInline


def test_a_stage_moves_to_the_loop_after_warm_runs_under_budget():
    auto = AutoInline()
    for _ in range(WARM_RUNS - 1):
        auto.observe("m", "cpu0", BUDGET_S / 4)
    assert not auto.wanted("m", "cpu0")  # not measured enough yet
    auto.observe("m", "cpu0", BUDGET_S / 4)
    assert auto.wanted("m", "cpu0") and auto.inlined() == [("m", "cpu0")]
    assert not auto.wanted("m", "cpu1") and not auto.wanted("other", "cpu0")  # per (model, device)


def test_one_slow_run_sends_it_back_to_be_measured_afresh():
    auto = AutoInline()
    for _ in range(WARM_RUNS):
        auto.observe("m", "cpu0", BUDGET_S / 4)
    auto.observe("m", "cpu0", 5 * BUDGET_S)
    assert not auto.wanted("m", "cpu0")
    for _ in range(WARM_RUNS):
        auto.observe("m", "cpu0", BUDGET_S / 4)
    assert auto.wanted("m", "cpu0")


def test_a_stage_averaging_over_budget_stays_on_its_worker():
    auto = AutoInline()
    for _ in range(4 * WARM_RUNS):
        auto.observe("m", "cpu0", 1.5 * BUDGET_S)  # each under the eviction bound, the mean over budget
    assert not auto.wanted("m", "cpu0") and auto.inlined() == []
