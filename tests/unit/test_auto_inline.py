"""AutoInline's decision from measured CPU and wall times alone (no server, no clock)."""

from __future__ import annotations

from heddle.server.runtime.auto_inline import BUDGET_S, HARD_S, WALL_BOUND_S, WINDOW, AutoInline

TINY = (BUDGET_S / 4, BUDGET_S / 2)  # (cpu, wall)


def test_a_stage_moves_to_the_loop_after_a_window_under_budget():
    auto = AutoInline()
    for _ in range(WINDOW - 1):
        auto.observe("m", "cpu0", *TINY)
    assert not auto.wanted("m", "cpu0")  # not measured enough yet
    auto.observe("m", "cpu0", *TINY)
    assert auto.wanted("m", "cpu0") and auto.inlined() == [("m", "cpu0")]
    assert not auto.wanted("m", "cpu1") and not auto.wanted("other", "cpu0")  # per (model, device)


def test_a_few_slow_runs_do_not_send_it_back():
    """Odd slow runs (a GC pause, a preempted run) are outliers: under half the window, the
    medians stay under their bounds."""
    auto = AutoInline()
    for _ in range(WINDOW):
        auto.observe("m", "cpu0", *TINY)
    for _ in range(WINDOW // 2 - 1):
        auto.observe("m", "cpu0", 0.001, 0.005)
    assert auto.wanted("m", "cpu0")
    auto.observe("m", "cpu0", 0.001, 0.005)  # now half the window is slow
    assert not auto.wanted("m", "cpu0")


def test_one_stall_sends_it_back_to_be_measured_afresh():
    auto = AutoInline()
    for _ in range(WINDOW):
        auto.observe("m", "cpu0", *TINY)
    auto.observe("m", "cpu0", BUDGET_S / 4, 2 * HARD_S)
    assert not auto.wanted("m", "cpu0")
    for _ in range(WINDOW - 1):
        auto.observe("m", "cpu0", *TINY)
    assert not auto.wanted("m", "cpu0")
    auto.observe("m", "cpu0", *TINY)
    assert auto.wanted("m", "cpu0")


def test_a_stage_over_budget_stays_on_its_worker():
    auto = AutoInline()
    for _ in range(4 * WINDOW):
        auto.observe("m", "cpu0", 1.5 * BUDGET_S, 1.5 * BUDGET_S)
    assert not auto.wanted("m", "cpu0") and auto.inlined() == []


def test_a_stage_that_waits_stays_on_its_worker():
    """Little CPU but a long wall time (a sleep, I/O, a GPU): it would hold the loop for the wait."""
    auto = AutoInline()
    for _ in range(4 * WINDOW):
        auto.observe("m", "cpu0", BUDGET_S / 10, 2 * WALL_BOUND_S)
    assert not auto.wanted("m", "cpu0")
