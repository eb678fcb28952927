"""The runtime's Stepper: one core step per event-loop turn however many events came, at once
when asked, and at the earliest deadline; a failing step does not stop later ones."""

from __future__ import annotations

import asyncio

from heddle.server.runtime.stepping import Stepper


class Counting:
    """A step that counts its calls, with an optional deadline to report and a failure to raise."""

    def __init__(self) -> None:
        self.steps = 0
        self.deadline_s: float | None = None
        self.fail = False

    def step(self) -> None:
        self.steps += 1
        if self.fail:
            self.fail = False
            raise RuntimeError("a bug in the step")


def _stepper(core: Counting, loop: asyncio.AbstractEventLoop | None) -> Stepper:
    return Stepper(core.step, lambda: core.deadline_s, lambda: 10.0, lambda: loop)


async def _turns(n: int = 3) -> None:
    for _ in range(n):  # let the loop run its ready callbacks; no time passes
        await asyncio.sleep(0)


def test_many_events_in_one_turn_make_one_step() -> None:
    """Ten events before the loop turns end in a single step, taken after the turn, not during it."""
    async def main() -> tuple[int, int]:
        core = Counting()
        stepper = _stepper(core, asyncio.get_running_loop())
        for _ in range(10):
            stepper.mark_dirty()
        during = core.steps
        await _turns()
        return during, core.steps
    assert asyncio.run(main()) == (0, 1)


def test_step_now_leaves_nothing_for_the_turn() -> None:
    """A step taken at once covers the events before it: the turn's pending step does nothing."""
    async def main() -> int:
        core = Counting()
        stepper = _stepper(core, asyncio.get_running_loop())
        stepper.mark_dirty()
        stepper.step_now()
        await _turns()
        return core.steps
    assert asyncio.run(main()) == 1


def test_without_a_loop_an_event_steps_at_once() -> None:
    """Before the runtime has a loop there is no turn to wait for."""
    core = Counting()
    _stepper(core, None).mark_dirty()
    assert core.steps == 1


def test_the_earliest_deadline_wakes_a_step() -> None:
    """A queued deadline with no other event coming still gets a step (here, one due now)."""
    async def main() -> int:
        core = Counting()
        core.deadline_s = 10.0  # the clock reads 10.0: due at once
        stepper = _stepper(core, asyncio.get_running_loop())
        stepper.step_now()
        core.deadline_s = None  # nothing queued after the timer's step
        await _turns()
        return core.steps
    assert asyncio.run(main()) == 2


def test_a_failing_step_does_not_stop_the_next() -> None:
    """A bug in one step is logged; the next event still gets its step."""
    async def main() -> int:
        core = Counting()
        core.fail = True
        stepper = _stepper(core, asyncio.get_running_loop())
        stepper.mark_dirty()
        await _turns()
        stepper.mark_dirty()
        await _turns()
        return core.steps
    assert asyncio.run(main()) == 2
